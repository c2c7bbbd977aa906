"""Same zoo, same budget: evo-merge against mergekit-evolve, where mergekit-evolve is installed.

    .venv/bin/python scripts/bench_peer.py --zoo runs/zoo/tiny-lm --budget 48 --seeds 0 1 2

evo-merge: NSGA-II over task arithmetic, TIES, DARE-TIES and TSV-M, scored with gp-IRT on
anchors, searching `--search-items` items per task (stratified by scenario, fixed by the seed);
every other item is held out (`final.holdout`), and each figure is given on both parts.

mergekit-evolve (CMA-ES over task arithmetic, lm-eval's hf backend) runs only where
`mergekit-evolve` is on PATH; install it in its own venv, it pins its own torch and lm-eval. It
is given the same search items (written as local lm-eval tasks), `--max-fevals` = the budget,
and its `best_config.yaml` is merged by `evo-merge merge` and scored by the same tasks as
evo-merge's picks, on the search and held-out items. Where it is missing, the script says so,
writes the configuration and prints the command: it never reports a figure it did not measure.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from evo_merge.cli.template import campaign_text
from evo_merge.config import Campaign
from evo_merge.search.campaign import CampaignRunner
from evo_merge.search.candidate import reference_candidates
from evo_merge.search.holdout import held_out_scores
from evo_merge.tasks.registry import shipped_benchmarks


def run_evo_merge(zoo: Path, families: list[str], seed: int, budget: int, population: int, search_items: int,
                  out: Path) -> tuple[CampaignRunner, dict[str, int], float]:
    """One campaign: (its runner, picks name -> evaluation id, wall seconds)."""
    config = yaml.safe_load(campaign_text(zoo.resolve(), families, name=f"evo-seed{seed}", population=population,
                                          generations=max(budget // population, 1)))
    config["algorithm"]["seed"] = seed
    n_items = min(sum(1 for _ in (shipped_benchmarks()[f] / "test.jsonl").open()) for f in families)
    config["final"] = {"holdout": n_items - search_items, "export": ["best_per_task", "balanced"]}
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    runner = CampaignRunner.open(Campaign.model_validate(config), zoo, out)
    _, exported = runner.run()
    return runner, {name: eid for name, (eid, _) in exported.items()}, time.perf_counter() - start


def scores_of(runner: CampaignRunner, key: str) -> tuple[dict[str, float], dict[str, float]]:
    """(search-items scores, held-out scores) of a stored, measured evaluation."""
    evaluation = runner.workspace.store.get(key)
    return evaluation.measured, held_out_scores(runner.workspace.store, key, runner.holdout) or {}


def peer_tasks(runner: CampaignRunner, out: Path) -> Path:
    """The campaign's search items of each shipped task as a local lm-eval task (`<name>_search`)."""
    for name, items in runner.scoring.search_items().items():
        source = shipped_benchmarks()[name]
        spec = yaml.safe_load(next(source.glob("*.yaml")).read_text())
        keep = set(items)
        lines = [line for line in (source / "test.jsonl").read_text().splitlines() if json.loads(line)["id"] in keep]
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
        spec["task"] = f"{spec['task']}_search"
        (folder / f"{spec['task']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def peer_command(runner: CampaignRunner, budget: int, out: Path) -> list[str]:
    """Write mergekit-evolve's genome and tasks for this campaign; the command that runs it."""
    ws = runner.workspace
    config = {"genome": {"models": [str(m) for m in ws.models], "merge_method": "task_arithmetic",
                         "base_model": str(ws.base), "allow_negative_weights": True},
              "tasks": [{"name": f"evo_{task.label}_search", "metric": "acc,none"} for task in ws.campaign.tasks]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "evolve.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return ["mergekit-evolve", str(out / "evolve.yaml"), "--storage-path", str(out / "storage"),
            "--task-search-path", str(peer_tasks(runner, out / "tasks")), "--max-fevals", str(budget),
            "--batch-size", "64"]


def score_folder(runner: CampaignRunner, folder: Path) -> tuple[dict[str, float], dict[str, float]]:
    """A merged model folder scored by the campaign's tasks: (search items, held-out items)."""
    from evo_merge.weights import load_model_folder

    model, tokenizer = load_model_folder(folder)
    search, held = {}, {}
    for name, task in runner.tasks.items():
        search[name] = float(task.evaluate(model, tokenizer, runner.scoring.search_items()[name]).mean())
        held[name] = float(task.evaluate(model, tokenizer, runner.holdout[name]).mean())
    return search, held


def run_peer(runner: CampaignRunner, budget: int, out: Path, timeout: float,
             executable: str | None) -> tuple[str, dict | None]:
    """(what happened, scores of mergekit-evolve's best merge on the same items or None)."""
    command = peer_command(runner, budget, out)
    if executable is None:
        return "not installed: " + " ".join(command), None
    command[0] = executable
    probe = subprocess.run([executable, "--help"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:  # e.g. an lm-eval it was not released against
        return f"mergekit-evolve does not start: {(probe.stderr.strip().splitlines() or ['?'])[-1][:120]}", None
    start = time.perf_counter()
    try:
        subprocess.run(command, check=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # it runs until --max-fevals is "generously exceeded"
        pass
    except subprocess.CalledProcessError as exc:
        return f"mergekit-evolve failed (exit {exc.returncode})", None
    wall = time.perf_counter() - start
    best = out / "storage" / "best_config.yaml"
    if not best.is_file():
        return "mergekit-evolve wrote no best_config.yaml", None
    merged = out / "best-merged"
    result = subprocess.run([sys.executable, "-m", "evo_merge", "merge", str(best), "--out", str(merged)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return f"its best recipe does not merge with evo-merge: {result.stderr.strip().splitlines()[-1]}", None
    search, held = score_folder(runner, merged)
    return f"measured ({wall:.0f} s wall)", {"search": search, "held": held}


def fmt(scores: dict[str, float], tasks: list[str]) -> str:
    return " / ".join(f"{scores[t]:.3f}" if t in scores else "—" for t in tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--zoo", type=Path, default=Path("runs/zoo/tiny-lm"))
    parser.add_argument("--budget", type=int, default=48, help="candidates per campaign (both tools)")
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--search-items", type=int, default=120,
                        help="items per task the search sees (the rest is held out)")
    parser.add_argument("--peer-timeout", type=float, default=3600)
    parser.add_argument("--mergekit-evolve", default=shutil.which("mergekit-evolve"),
                        help="mergekit-evolve executable (default: the one on PATH)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-peer"))
    args = parser.parse_args()
    families = [m for m in json.loads((args.zoo / "zoo.json").read_text())["models"] if m != "base"]

    ratios, rows = [], []
    for seed in args.seeds:
        runner, picks, wall = run_evo_merge(
            args.zoo, families, seed, args.budget, args.population, args.search_items, args.out / f"evo-seed{seed}"
        )
        tasks = list(runner.objectives.names)
        endpoints = dict(
            zip(tasks, [c for label, c in reference_candidates(runner.workspace.endpoint_labels()) if label != "base"])
        )
        items = runner.workspace.store.items_evaluated(measured=True)
        rows.append(f"| {seed} | evo-merge | {items:,} item evaluations, {wall:.0f} s | | |")
        for name, eid in picks.items():
            key = next(e.key for e in runner.workspace.store.evaluations() if e.id == eid)
            search, held = scores_of(runner, key)
            rows.append(f"| {seed} | evo-merge {name} | {fmt(search, tasks)} | {fmt(held, tasks)} | |")
            task = name.removeprefix("best-")
            if task in endpoints:
                own = scores_of(runner, endpoints[task].key)
                ratios.append((search[task] / own[0][task], held[task] / own[1][task]))
        for task, candidate in endpoints.items():
            search, held = scores_of(runner, candidate.key)
            rows.append(f"| {seed} | endpoint {task} | {fmt(search, tasks)} | {fmt(held, tasks)} | |")
        status, peer = run_peer(runner, args.budget, args.out / f"mergekit-seed{seed}", args.peer_timeout,
                                args.mergekit_evolve)
        rows.append(
            f"| {seed} | mergekit-evolve best | {fmt(peer['search'], tasks) if peer else '—'} "
            f"| {fmt(peer['held'], tasks) if peer else '—'} | {status} |"
        )
        runner.close()

    print(
        f"\ntasks: {' / '.join(tasks)}; search items: {args.search_items} per task; budget {args.budget} candidates; "
        f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB\n"
    )
    print("| seed | model | search items | held-out items | note |\n|---|---|---|---|---|")
    print("\n".join(rows))
    mean = np.mean(ratios, axis=0)
    print(
        f"\nbest-per-task pick / endpoint on its own task, mean over seeds and tasks: "
        f"{mean[0]:.3f} (search items), {mean[1]:.3f} (held-out items)"
    )


if __name__ == "__main__":
    main()
