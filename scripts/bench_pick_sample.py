"""How many items does choosing a task's best finalist need? The race's last sample, on small tasks.

    PYTHONPATH=. .venv/bin/python scripts/bench_pick_sample.py runs/b16-s0-new/full-16x8 [RUN ...] \
        [--task-items 200] [--finalists 10] [--among 30] [--draws 400]

With `final.measure_whole: picks` the picks are chosen among the race's survivors on its last
sample (25% of each task's search items by default), which is a few dozen items for a task of a
few hundred (an lm-eval task with `limit: 200`). This takes the candidates of finished
full-evaluation runs (`bench_campaign.py`'s `full-*` folders, every candidate measured on every
search item; opened as they are, never run again), draws a task of `--task-items` of each task's
search items (stratified by scenario), and `--finalists` among its `--among` best candidates; the
pick is the finalist best on the race's nested stratified sample (`RaceSample`) at 12.5%, 25%
and 50% of the task. It prints the regret, in accuracy points: the best finalist's score on the
task minus the pick's, mean over `--draws` draws. `--among` equal to `--finalists` makes every
finalist a close competitor of the best.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from evo_merge.config import Campaign
from evo_merge.search.campaign import CampaignRunner
from evo_merge.search.race import RaceSample

FRACTIONS = (0.125, 0.25, 0.5)


def regrets(full_run: Path, task_items: int, finalists: int, among: int, draws: int) -> list[str]:
    """Table rows for one full run: per task, the mean regret at each sample fraction."""
    runner = CampaignRunner.open(Campaign.load(full_run / "campaign.yaml"), full_run, full_run)
    store, rng = runner.workspace.store, np.random.default_rng(0)
    scored = [e for e in store.evaluations() if e.status == "ok" and e.measured]
    if finalists > min(among, len(scored)):
        raise SystemExit(f"{full_run}: --finalists {finalists} is more than --among {among} or its {len(scored)} "
                         "measured candidates")
    rows = []
    for task, fitness in runner.tasks.items():
        items = runner.scoring.search_ids(task)
        scores = np.array([[s[task][i] for i in items] for s in (store.item_scores(e.key, task) for e in scored)])
        scenario = fitness.scenarios or {}
        out = {f: [] for f in FRACTIONS}
        for draw in range(draws):
            # a task of `task_items` items, each scenario in its share, then the race's sample on it
            picked = RaceSample({task: items}, {task: scenario}, seed=draw).items(task_items / len(items))[task]
            column = {item: k for k, item in enumerate(items)}
            sub = scores[:, [column[i] for i in picked]]
            truth = sub.mean(axis=1)
            field = rng.choice(np.argsort(-truth)[:among], finalists, replace=False)
            sample = RaceSample({task: picked}, {task: scenario}, seed=10_000 + draw)
            for fraction in FRACTIONS:
                on_sample = [sample.score({task: dict(zip(picked, sub[k]))}, fraction)[task] for k in field]
                out[fraction].append(truth[field].max() - truth[field[int(np.argmax(on_sample))]])
        cells = " | ".join(f"{round(f * task_items)} items: {100 * np.mean(out[f]):.2f}" for f in FRACTIONS)
        rows.append(f"| {full_run.parent.name} | {task} | {cells} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("runs", nargs="+", type=Path, help="full-evaluation run folders")
    parser.add_argument("--task-items", type=int, default=200)
    parser.add_argument("--finalists", type=int, default=10)
    parser.add_argument("--among", type=int, default=30)
    parser.add_argument("--draws", type=int, default=400)
    args = parser.parse_args()
    print(f"regret of the pick (accuracy points) on a task of {args.task_items} items; {args.finalists} finalists "
          f"among the {args.among} best, {args.draws} draws")
    print("| run | task | " + " | ".join(f"{f:g} of the task" for f in FRACTIONS) + " |")
    print("|---|---|" + "---|" * len(FRACTIONS))
    for run in args.runs:
        print("\n".join(regrets(run, args.task_items, args.finalists, args.among, args.draws)))


if __name__ == "__main__":
    main()
