"""Model card of a MASS folder: it says plainly that the folder needs evo-merge to run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import yaml

from evo_merge.mass.routing import RoutingConfig
from evo_merge.report.card import scores_section


def mass_card(
    tasks: Sequence[str],
    models: Sequence[str],
    base: str,
    routing: RoutingConfig,
    scores: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """README.md text: YAML front matter (base, merged models, routing, scores), then how to run it."""
    front = {
        "base_model": base,
        "library_name": "evo-merge",
        "tags": ["merge", "evo-merge", "mass"],
        "merge_method": "mass",
        "merged_models": list(models),
        "mass_tasks": list(tasks),
        "mass_routing": routing.model_dump(),
    }
    if scores:
        front["evo_merge_scores"] = {kind: dict(values) for kind, values in scores.items()}
    return "\n".join([
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        "# MASS model (needs evo-merge to run)",
        "",
        "This folder is **not** a plain transformers model: it holds a base model and the task",
        f"singular-vector factors of {len(tasks)} fine-tuned models ({', '.join(tasks)}). For each input,",
        "[evo-merge](https://pypi.org/project/evo-merge/) routes the hidden state entering block",
        f"{routing.layer}'s MLP",
        "to the tasks whose subspaces explain it best and answers with the TSV-M merge of those tasks",
        f"(threshold {routing.threshold}, at most {routing.max_tasks} tasks, token: {routing.token}).",
        "",
        *scores_section(scores),
        "## Use",
        "",
        "```python",
        "from evo_merge.mass import load_mass",
        "model, tokenizer = load_mass('THIS_FOLDER')  # forward() and generate() as an HF causal LM",
        "```",
        "",
        "```bash",
        "evo-merge eval --model THIS_FOLDER --task arith --out scores.csv",
        "```",
        "",
        "lm-eval: `import evo_merge.mass.lmeval` registers the model type `evo-merge-mass`",
        "(`model_args='path=THIS_FOLDER'`).",
        "",
    ])
