"""Model card of a MASS folder: it says plainly that the folder needs evo-merge to run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from evo_merge.markup import md
from evo_merge.mass.routing import RoutingConfig
from evo_merge.merge.card import chosen_section, front_matter, inputs_section, scores_section
from evo_merge.merge.card_inputs import CardInput, model_refs
from evo_merge.merge.licenses import CardLicense, card_license


def mass_inputs(base: str, models: Sequence[str]) -> list[CardInput]:
    """The base, then the models, as the card names them."""
    refs = model_refs([base, *models])
    return [refs[m] for m in [base, *models]]


def mass_card(
    tasks: Sequence[str],
    models: Sequence[str],
    base: str,
    routing: RoutingConfig,
    scores: Mapping[str, Mapping[str, float]] | None = None,
    chosen_as: Sequence[str] = (),
    licenses: CardLicense | None = None,
    scores_note: str | None = None,
    errors: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """README.md text: YAML front matter (base, merged models, routing), then how to run it.

    Inputs are named as on a merged model's card (Hub id or folder name, never a machine path);
    a MASS folder has no `model-index`: the Hub cannot run it, so its scores stay in the prose.
    `licenses`: the inputs' (`card_license` of `mass_inputs`), read here when not given; `scores_note`
    says what the scores were measured on where that is not this folder bit for bit; `errors`, their
    standard errors (`score_errors`)."""
    refs = mass_inputs(base, models)
    hub_ids = list(dict.fromkeys(r.hub_id for r in refs if r.hub_id))
    licenses = licenses or card_license(refs)  # inherited as a merged model's card inherits it
    front = {
        **licenses.keys,
        **({"base_model": hub_ids, "base_model_relation": "merge"} if hub_ids else {}),
        "library_name": "evo-merge",
        "tags": ["merge", "evo-merge", "mass"],
        "merge_method": "mass",
        "merged_models": [r.display for r in refs[1:]],
        "mass_tasks": list(tasks),
        "mass_routing": routing.model_dump(),
    }
    return "\n".join(
        [
            *front_matter(front),
            "# MASS model (needs evo-merge to run)",
            "",
            "This folder is **not** a plain transformers model: it holds a base model and the task",
            f"singular-vector factors of {len(tasks)} fine-tuned models ({', '.join(md(t) for t in tasks)}). "
            "For each input,",
            "evo-merge routes the hidden state entering block",
            f"{routing.layer}'s MLP",
            "to the tasks whose subspaces explain it best and answers with the TSV-M merge of those tasks",
            f"(threshold {routing.threshold}, at most {routing.max_tasks} tasks, token: {routing.token}).",
            "",
            *chosen_section(chosen_as),
            *inputs_section(refs, refs[0], licenses),
            *scores_section(scores, errors, scores_note, published=False),
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
        ]
    )
