"""What the score cache saves: the same campaign run three times and a follow-up of another seed.

    .venv/bin/python scripts/bench_score_cache.py --zoo runs/zoo/tiny-lm --out runs/bench-cache [--size 8x4]
    .venv/bin/python scripts/bench_score_cache.py --campaign scripts/smollm2_campaign.yaml --out runs/bench-cache-135m \
        --runs cold,warm,seed1

Runs the example campaign (`evo-merge init`'s, at `--size` population x generations) over the zoo,
or the campaign file `--campaign` names (its models read from its own folder), the runs `--runs`
lists of these: (1) without the cache; (2) with `evaluator.score_cache`, which starts empty (it hashes the
models' files and keeps every score); (3) again with the cache, in a new folder; (4) with the
cache and another `algorithm.seed`, which reads the calibration's base and endpoints; (5) that
seed without the cache. Prints each run's wall time, the ratio to its cacheless twin, how many
item scores the cache answered, and whether each cached run's store holds exactly its twin's
evaluations and item scores (what the cache must never change). One process, one run at a time:
the load of the machine is printed beside the times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import yaml
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.cli.template import campaign_text
from evo_merge.search.store import FROM_CACHE_META, CampaignStore

# run -> (algorithm.seed, with the cache), in the order they run; each cached run's twins, the first run
# compared with it (`cold`, the cache empty, scores what `plain` does)
RUNS = {"plain": (0, False), "cold": (0, True), "warm": (0, True), "seed1": (1, True), "seed1-plain": (1, False)}
TWINS = {"cold": ("plain",), "warm": ("plain", "cold"), "seed1": ("seed1-plain",)}
COLUMNS = "key, phase, generation, method, status, estimates, estimate_se, measured, items_evaluated, items_measured"


def template(zoo: Path, size: str) -> dict:
    """The example campaign over `zoo` at `size` (population x generations)."""
    population, generations = map(int, size.split("x"))
    families = sorted(p.name for p in zoo.iterdir() if p.is_dir() and p.name != "base")
    return yaml.safe_load(campaign_text(zoo.resolve(), families, name="bench", population=population,
                                        generations=generations))


def own_file(path: Path) -> dict:
    """A campaign file with its models' paths made absolute (they are read from its own folder)."""
    config = yaml.safe_load(path.read_text())
    config["base_model"] = os.path.abspath(path.parent / config["base_model"])
    config["models"] = [os.path.abspath(path.parent / model) for model in config["models"]]
    return config


def campaign(out: Path, base: dict, name: str, *, seed: int, cache: bool) -> Path:
    config = {**base, "name": name, "algorithm": {**base["algorithm"], "seed": seed}}
    if cache:
        config["evaluator"] = {**config.get("evaluator", {}), "score_cache": "scores.sqlite"}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(config: Path, folder: Path) -> tuple[float, int]:
    """(wall seconds, item scores the cache answered)."""
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(folder)])
    seconds = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"{config}: exit {result.exit_code}\n{result.output[-3000:]}")
    with closing(CampaignStore(folder)) as store:
        return seconds, store.get_meta(FROM_CACHE_META, 0)


def stored(folder: Path) -> tuple[list, list]:
    with closing(sqlite3.connect(folder / "state.sqlite")) as db:
        return (db.execute(f"SELECT {COLUMNS} FROM evaluations ORDER BY id").fetchall(),
                db.execute("SELECT e.key, s.task, s.item, s.score FROM item_scores s JOIN evaluations e "
                           "ON s.evaluation_id = e.id ORDER BY e.id, s.task, s.item").fetchall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--zoo", type=Path, help="a zoo folder: the example campaign over it")
    where.add_argument("--campaign", type=Path, help="a campaign file to run instead (its seed and cache set here)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", default="8x4", help="population x generations of the example campaign")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"which of {', '.join(RUNS)}, in that order")
    args = parser.parse_args()
    chosen = args.runs.split(",")
    if unknown := set(chosen) - set(RUNS):
        parser.error(f"--runs: unknown {', '.join(sorted(unknown))} (known: {', '.join(RUNS)})")
    base = template(args.zoo, args.size) if args.zoo else own_file(args.campaign)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    results = {}
    for name in (name for name in RUNS if name in chosen):
        seed, cache = RUNS[name]
        load = os.getloadavg()[0]
        seconds, answered = run(campaign(args.out, base, name, seed=seed, cache=cache), args.out / name)
        results[name] = (seconds, answered, load)
        print(f"{name:12s} {seconds:7.1f} s  (load {load:.2f})  {answered:,} item scores from the cache", flush=True)
    print("\n| run | wall s | vs its twin | item scores from the cache | store equal to the twin's |")
    print("|---|---|---|---|---|")
    for name, twins in TWINS.items():
        if name not in results:
            continue
        seconds, answered, load = results[name]
        evaluations, scores = stored(args.out / name)
        if (twin := next((twin for twin in twins if twin in results), None)) is not None:
            same = "yes" if (evaluations, scores) == stored(args.out / twin) else "NO"
            ratio = f"{seconds / results[twin][0]:.2f}x {twin}"
        else:
            same = ratio = "(not run)"
        print(f"| {name} | {seconds:.1f} | {ratio} | {answered:,} of {len(scores):,} | {same} |")


if __name__ == "__main__":
    main()
