"""Model-card text for merged models: YAML front matter the Hugging Face Hub reads, then prose."""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from evo_merge.merge.recipe import Recipe


def scores_section(scores: Mapping[str, Mapping[str, float]] | None) -> list[str]:
    """Markdown lines of a `## Scores` table: a row per task, a column per score kind."""
    if not scores:
        return []
    tasks = sorted({t for values in scores.values() for t in values})
    kinds = list(scores)
    lines = ["## Scores", "", "| task | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for task in tasks:
        cells = [f"{scores[k][task]:.4f}" if task in scores[k] else "—" for k in kinds]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def model_card(
    recipe: Recipe,
    *,
    title: str = "Merged model",
    scores: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """A README.md for a merged model folder.

    `scores` maps a score kind ("estimated", "measured") to {task: value}. The front matter
    uses `library_name: transformers` (the folder is a plain transformers model; the Hub uses that
    field to show how to load it) and tags the merge `merge` and `evo-merge`.
    """
    base = recipe.base_model
    merged = [m for m in recipe.references() if m != base]
    entries = recipe.models or [src for out in recipe.slices for src in out.sources]
    front = {
        "base_model": base or merged[0],
        "library_name": "transformers",
        "tags": ["merge", "evo-merge"],
        "merge_method": recipe.merge_method,
        "merged_models": merged,
        "merge_parameters": {
            "global": recipe.parameters,
            "models": {m.model: m.parameters for m in entries},
        },
    }
    if scores:
        front["evo_merge_scores"] = {kind: dict(values) for kind, values in scores.items()}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {title}",
        "",
        f"Built with [evo-merge](https://pypi.org/project/evo-merge/) using **{recipe.merge_method}**"
        + (f" over base `{base}`." if base else "."),
        "",
        "## Merged models",
        "",
        *[f"- `{m.model}`" + (f" layers {list(m.layer_range)}" if hasattr(m, "layer_range") else "")
          + f" — parameters: {m.parameters or 'defaults'}" for m in entries],
        "",
    ]
    lines += scores_section(scores)
    lines += [
        "## Reproduce",
        "",
        "`merge_recipe.yaml` in this folder rebuilds these weights bit for bit:",
        "",
        "```bash",
        "evo-merge merge merge_recipe.yaml --out merged",
        "```",
        "",
    ]
    return "\n".join(lines)
