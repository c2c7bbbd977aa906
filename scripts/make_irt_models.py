"""Fit the IRT models shipped in irt_models/ for the shipped benchmarks, from real responses.

    .venv/bin/python scripts/make_irt_models.py --zoo runs/zoo/tiny-lm --n-merges 60

1. builds (or reuses) the response matrix of the tiny-lm zoo: base, endpoints and N seeded
   random merges scored on every item of arith, lang and seq (`evo-merge responses build`);
2. fits one IRT model per family on its sub-skill scenarios and stores it with 20 kmeans-irt
   anchors per scenario in irt_models/<family>/ (what a campaign's `estimator.irt_model` reads);
3. prints `irt validate --overall` per family, as a campaign uses it: the model fitted on its
   sub-skill scenarios, n anchors per scenario (5 is 20-25 per family), the error of the family's
   accuracy estimate on held-out subjects, against random anchors per scenario with a plain
   mean; then the same on the whole matrix with one scenario per family (n anchors per family,
   against plain random sampling).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from evo_merge.irt import IRTModel, select_anchors, validate, validate_responses
from evo_merge.search.responses import build_responses
from evo_merge.tasks.registry import resolve_task
from evo_merge.zoo.manifest import finished_zoo

FAMILIES = ("arith", "lang", "seq")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--zoo", type=Path, default=Path("runs/zoo/tiny-lm"))
    parser.add_argument("--n-merges", type=int, default=60)
    parser.add_argument("--responses", type=Path, default=Path("runs/responses/tiny-lm.csv"))
    parser.add_argument("--out", type=Path, default=Path("irt_models"))
    parser.add_argument("--budgets", default="2,5,12", help="anchors per sub-skill scenario (step 3)")
    parser.add_argument("--family-budgets", default="10,20,50", help="anchors per family (step 3, last table)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="anchor draws averaged per validation row")
    args = parser.parse_args()

    if not args.responses.exists():
        endpoints = [args.zoo / m for m in finished_zoo(args.zoo).endpoints]
        tasks = {f: resolve_task(f) for f in FAMILIES}
        table = build_responses(args.zoo / "base", endpoints, tasks, args.n_merges, seed=args.seed,
                                scenario="subskill",
                                progress=lambda done, total: print(f"scored {done}/{total} subjects", flush=True))
        args.responses.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.responses, index=False)
    table = pd.read_csv(args.responses)
    print(f"responses: {table.subject.nunique()} subjects x {table.item.nunique()} items")

    endpoints = sorted(s for s in table.subject.unique() if s.startswith("endpoint-"))
    tables = []
    for family in FAMILIES:  # each family on its sub-skill scenarios
        rows = table[table.task == family].assign(scenario=lambda t: t.scenario.str.split(":").str[1])
        responses = validate_responses(rows[["subject", "item", "score", "scenario"]], family)
        model = IRTModel.fit(responses, dims="auto", seed=args.seed)
        model.save(args.out / family)
        select_anchors(model, 20, "kmeans-irt", seed=args.seed).save(args.out / family, overwrite=True)  # a new model
        print(
            f"{family}: D={model.dims}, {len(model.item_ids)} items, scenarios {model.scenarios} -> {args.out / family}"
        )
        result = validate(
            responses,
            budgets=[int(b) for b in args.budgets.split(",")],
            seed=args.seed,
            endpoints=endpoints,
            overall=True,
            repeats=args.repeats,
        )
        tables.append(result.assign(family=family, per_family=result["items"]))
    print("\nfamily accuracy from n anchors per sub-skill scenario: MAE on held-out subjects")
    print(
        pd.concat(tables)
        .pivot_table(index=["method", "estimator", "budget"], columns="family", values=["per_family", "mae"])
        .round(4)
        .to_markdown()
    )

    per_family = table.assign(scenario=table.task)[["subject", "item", "score", "scenario"]]
    result = validate(
        validate_responses(per_family, "responses"),
        budgets=[int(b) for b in args.family_budgets.split(",")],
        seed=args.seed,
        endpoints=endpoints,
        repeats=args.repeats,
    )
    print("\none scenario per family, n anchors per family: MAE on held-out subjects")
    print(result.round(4).to_markdown(index=False))


if __name__ == "__main__":
    main()
