"""Model-card text for merged models: YAML front matter the Hugging Face Hub reads, then prose.

The card lives with the merge engine (it is written with the weights) and knows nothing of
campaigns: callers hand it plain values. What the Hub and leaderboards read is in the front
matter: `base_model` (Hub ids only: the Hub rejects anything else there) with
`base_model_relation: merge`, the inherited `license`, `tags`, and a `model-index` holding only
scores MEASURED on all items. Estimates are reported in the prose, never in `model-index`,
because a leaderboard would take them for measurements. Inputs that are not from the Hub are named
by folder name with a note: a machine path says nothing to a reader and reveals this machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import yaml

from evo_merge.markup import md
from evo_merge.merge.card_inputs import CardInput, model_refs
from evo_merge.merge.licenses import MIXED_FILE, CardLicense, card_license
from evo_merge.merge.recipe import Recipe
from evo_merge.merge.registry import ENTRY_POINT_GROUP, get_method, method_origin
from evo_merge.merge.results import mean_and_stderr
from evo_merge.tasks.meta import TaskMeta

Scores = Mapping[str, Mapping[str, float]]
# a score kind's column in a card's table (`search.export.card_scores` names the kinds)
SCORE_HEADERS = {"measured_search_items": "measured (search items)", "measured_all_items": "measured (all items)"}


def _measured_on(meta: TaskMeta) -> str:
    """The metric's name with the items behind its value: all of them, or the held-out ones, and of
    how many in the data where a `limit` kept the first ones only (a score on 30 of 1,200 items read
    as one on the whole task)."""
    if not meta.n_items:
        return meta.metric if meta.held_out is None else f"{meta.metric} ({meta.held_out} held-out items)"
    limited = meta.dataset_items is not None and meta.dataset_items > meta.n_items
    task = f"the first {meta.n_items} of {meta.dataset_items} items, its limit" if limited else str(meta.n_items)
    if meta.held_out is not None:
        return f"{meta.metric} ({meta.held_out} held-out items of {task})"
    return f"{meta.metric} ({task})" if limited else f"{meta.metric} (all {meta.n_items} items)"


def model_index(title: str, measured: Mapping[str, float], tasks: Mapping[str, TaskMeta]) -> list[dict]:
    """The Hub's `model-index` block: one result per measured task, `verified: false`."""
    results = []
    for name, value in measured.items():
        meta = tasks.get(name) or TaskMeta(name=name, dataset=name)
        dataset = {"name": meta.dataset, "type": meta.dataset}
        dataset.update({k: v for k, v in (("config", meta.dataset_config), ("split", meta.split)) if v})
        if meta.num_fewshot is not None:
            dataset["args"] = {"num_few_shot": meta.num_fewshot}
        results.append({
            "task": {"type": "text-generation", "name": name},
            "dataset": dataset,
            "metrics": [{"type": meta.metric, "value": float(value),
                         "name": _measured_on(meta),
                         "verified": False}],
        })
    return [{"name": title, "results": results}] if results else []


def score_errors(item_scores: Mapping[str, Mapping[str, float]] | None,
                 estimate_se: Mapping[str, float] | None = None) -> dict[str, dict[str, float]]:
    """The standard errors a card's scores carry, by score kind: a measured score's over its items
    (`mean_and_stderr`, as lm-eval reports it), an estimate's as its estimator gave it (an
    estimate shown bare read as sure as a measurement)."""
    measured = {task: se for task, values in (item_scores or {}).items()
                if (se := mean_and_stderr(values)[1]) is not None}
    kinds = (("measured", measured), ("estimated", dict(estimate_se or {})))
    return {kind: errors for kind, errors in kinds if errors}


def scores_section(scores: Scores | None, errors: Scores | None = None, note: str | None = None,
                   published: bool = True) -> list[str]:
    """Markdown lines of a `## Scores` table: a row per task, a column per score kind; a value
    carries its standard error where `errors` (kind -> task -> SE, `score_errors`) has one; `note`
    says what they were measured on where that is not these weights bit for bit. `published`: the
    measured scores are in the card's `model-index` (a MASS folder has none: the Hub cannot run it)."""
    if not scores:
        return []
    errors = errors or {}
    tasks = sorted({t for values in scores.values() for t in values})
    kinds = list(scores)

    def cell(kind: str, task: str) -> str:
        if task not in scores[kind]:
            return "—"
        se = errors.get(kind, {}).get(task)
        return f"{scores[kind][task]:.4f}" + (f" ± {se:.4f}" if se is not None else "")

    held_out = "measured_search_items" in scores  # then `measured` is on the held-out items alone
    headers = {**SCORE_HEADERS, **({"measured": "measured (held-out items)"} if held_out else {})}
    lines = ["## Scores", "", "| task | " + " | ".join(md(headers.get(k, k)) for k in kinds) + " |",
             "|---" * (len(kinds) + 1) + "|"]
    lines += [f"| {md(task)} | " + " | ".join(cell(k, task) for k in kinds) + " |" for task in tasks]
    lines.append("")
    if "estimated" in scores:
        se = ", with the estimate's standard error" if errors.get("estimated") else ""
        index = ("; only measured scores are in the `model-index` metadata, each named with the items it was "
                 "measured on") if published else ""
        # an adaptive test's items are chosen per candidate, not anchors (the sentence said anchors of both, audit 144)
        lines += [f"Estimated scores come from part of each task's items (anchor items, or those an adaptive test "
                  f"chose) and an IRT model{se}{index}.", ""]
    if held_out:
        where = "published (`model-index`; " if published else "to quote ("
        score = f"their score is the one {where}a task too small to hold items out gives its score on all its items)"
        lines += [(f"The held-out items are those the search never chose on: {score}. Scored on all items, as "
                   "lm-eval scores a task, the model gets the all-items column."), ""]
    if note:
        lines += [note[0].upper() + note[1:] + ".", ""]  # the caller's own sentence, not a user's string
    return lines


def chosen_section(chosen_as: Sequence[str]) -> list[str]:
    """Which of its campaign's picks the model is: a candidate that several picks chose is
    exported once, and its card names every one of them."""
    if not chosen_as:
        return []
    names = [md(name) for name in chosen_as]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
    return [f"Chosen by its evo-merge campaign as {listed}.", ""]


def front_matter(front: Mapping) -> list[str]:
    """YAML front matter lines; `safe_dump` quotes user strings, so no value can end the block."""
    text = yaml.safe_dump(dict(front), sort_keys=False, allow_unicode=True, width=10**6).rstrip()
    return ["---", text, "---", ""]


def inputs_section(inputs: Sequence[CardInput], base: CardInput | None, licenses: CardLicense) -> list[str]:
    """Each input with its role and license; a warning when they do not share one."""
    def label(key: str) -> str:
        return md(lic.label) if (lic := licenses.per_input.get(key)) is not None else "unknown"

    def line(ref: CardInput) -> str:
        role = " (base)" if base is not None and ref == base else ""
        where = (
            f"[{md(ref.hub_id)}](https://huggingface.co/{ref.hub_id})"
            + (f" at revision {md(ref.revision)}" if ref.revision else "")
            if ref.hub_id
            else f"{md(ref.label)}: a local folder, not a Hub model"
        )
        adapter = f", with LoRA adapter {md(ref.adapter)} (its license: {label(f'LoRA {ref.adapter}')})" \
            if ref.adapter else ""
        return f"- {where}{role}{adapter}; license: {label(ref.display)}"

    mixed = [f"The inputs do not share one license (see the list above and {MIXED_FILE}): check each before use.",
             ""]
    return ["## Merged models", "", *[line(ref) for ref in inputs], "", *(mixed if licenses.mixed else [])]


def model_card(
    recipe: Recipe,
    *,
    title: str = "Merged model",
    scores: Scores | None = None,
    tasks: Mapping[str, TaskMeta] | None = None,
    errors: Scores | None = None,
    chosen_as: Sequence[str] = (),
    device: str = "cpu",
    on_host: Sequence[str] = (),
    scores_note: str | None = None,
    licenses: CardLicense | None = None,
    pickled: bool = False,
) -> str:
    """A README.md for a merged model folder, built on `device` but for the tensors `on_host`,
    which the device had no memory for (its Reproduce section says how to rebuild it).

    `scores` maps a score kind ("estimated", "measured") to {task: value}; `tasks` describes each
    task for `model-index`; `errors`, the scores' standard errors (`score_errors`); `chosen_as`, the
    campaign picks it is (`chosen_section`). Inputs are named
    from the recipe's model strings (Hub ids as `org/name@revision`, see `model_ref`). `licenses`:
    the recipe's (`recipe_license`), read here when not given. `pickled`: an input is a pickle
    checkpoint, which the rebuild reads only with `--allow-pickle`."""
    named = _named(recipe)
    base, merged = _split(recipe, named)
    entries = recipe.models or [source for out in recipe.slices for source in out.sources]
    inputs = ([base] if base else []) + merged
    licenses = licenses or card_license(inputs)
    # a LoRA adapter's repo too: its weights are in the merge, and the Hub's model tree links what is listed here
    hub_ids = list(dict.fromkeys(hub_id for ref in inputs for hub_id in (ref.hub_id, ref.adapter_hub_id) if hub_id))
    front: dict = {**licenses.keys}
    if hub_ids:
        front.update(base_model=hub_ids, base_model_relation="merge")
    front.update(
        {
            "library_name": "transformers",
            "tags": list(dict.fromkeys(["merge", "evo-merge", recipe.merge_method])),
            "merge_method": recipe.merge_method,
            "merged_models": [ref.display for ref in merged],
            "merge_parameters": {
                "global": recipe.parameters,
                "models": [
                    {
                        "model": named[e.model].display,
                        "parameters": e.parameters,
                        **({"layer_range": list(e.layer_range)} if hasattr(e, "layer_range") else {}),
                    }
                    for e in entries
                ],
            },
        }
    )
    if index := model_index(title, (scores or {}).get("measured", {}), tasks or {}):
        front["model-index"] = index
    over = _over_base(base)
    lines = [
        *front_matter(front),
        f"# {md(title)}",
        "",
        f"Built with evo-merge using **{md(recipe.merge_method)}**{over}.",
        "",
        *chosen_section(chosen_as),
    ]
    lines += inputs_section(inputs, base, licenses)
    lines += scores_section(scores, errors, scores_note)
    lines += [
        "## Reproduce",
        "",
        *reproduce_lines(device, torch.get_num_threads() if get_method(recipe.merge_method).threaded else None,
                         on_host, pickled),
        "",
        *local_inputs_lines(inputs),
        *plugin_lines(recipe.merge_method),
    ]
    return "\n".join(lines)


def _over_base(base: CardInput | None) -> str:
    """The headline's base: a Hub model by its id; a local folder said to be one (the demo's folder
    `base` read "over the base model base")."""
    if base is None:
        return ""
    name = md(base.display)
    return f" over the base model {name}" if base.hub_id else f" over a local base model ({name})"


def card_inputs(recipe: Recipe) -> tuple[CardInput | None, list[CardInput]]:
    """(the base, the merged models) as the card names them (`model_refs`)."""
    return _split(recipe, _named(recipe))


def _split(recipe: Recipe, refs: Mapping[str, CardInput]) -> tuple[CardInput | None, list[CardInput]]:
    base = refs[recipe.base_model] if recipe.base_model else None
    return base, [refs[m] for m in recipe.references() if m != recipe.base_model]


def _named(recipe: Recipe) -> dict[str, CardInput]:
    return model_refs([*([recipe.base_model] if recipe.base_model else []), *recipe.references()])


def recipe_license(recipe: Recipe) -> CardLicense:
    """The license of the recipe's merge (`card_license`): the card's keys, and the files its link
    names, written beside it. An export reads it once for both."""
    base, merged = card_inputs(recipe)
    return card_license(([base] if base else []) + merged)


def reproduce_lines(device: str, threads: int | None = None, on_host: Sequence[str] = (),
                    pickled: bool = False) -> list[str]:
    """How to rebuild the folder: bit for bit on the device type it was merged on; elsewhere equal
    to rounding, except the entries DARE and DELLA drop, which each device type's generator draws.
    `threads`: the CPU threads a method whose last bits follow them (`MergeMethod.threaded`: an SVD
    sums in another order on another count) was merged with, and the rebuild needs again.
    `on_host`: tensors a full device sent to the CPU; no one device rebuilds those and the rest alike.
    `pickled`: an input is a pickle checkpoint, which the command refused without `--allow-pickle`
    (audit 126): the flag is in the command, and a line says why."""
    lines = _reproduce(device, threads, on_host)
    if not pickled:
        return lines
    command = next(i for i, line in enumerate(lines) if "evo-merge merge" in line)
    lines[command] += " --allow-pickle"
    return [*lines, "", "An input is a pickle checkpoint (`pytorch_model.bin`), which can run code when loaded: "
            "`--allow-pickle` reads it, for inputs you trust."]


def _reproduce(device: str, threads: int | None, on_host: Sequence[str]) -> list[str]:
    if on_host and device != "cpu":
        return [f"`merge_recipe.yaml` in this folder rebuilds these weights equal to rounding (DARE and DELLA draw "
                f"other drops on each device type): they were merged on a {device} device, except "
                f"{len(on_host)} tensor{'s' * (len(on_host) != 1)} it had no memory for ({md(on_host[0])}"
                f"{', ...' if len(on_host) > 1 else ''}), merged on the CPU, so no one device rebuilds them bit for "
                "bit:", "", "```bash", f"evo-merge merge merge_recipe.yaml --out merged --device {device}", "```"]
    if device == "cpu":
        if threads is None:
            return ["`merge_recipe.yaml` in this folder rebuilds these weights bit for bit:", "",
                    "```bash", "evo-merge merge merge_recipe.yaml --out merged", "```"]
        return [f"`merge_recipe.yaml` in this folder rebuilds these weights bit for bit with {threads} CPU "
                f"thread{'s' * (threads != 1)}, as they were merged (with another count, or another torch build, "
                "equal to float32 rounding: the method's matrix decompositions sum in another order):", "",
                "```bash", f"OMP_NUM_THREADS={threads} evo-merge merge merge_recipe.yaml --out merged", "```"]
    return [f"`merge_recipe.yaml` in this folder rebuilds these weights bit for bit on a {device} device of the "
            "kind they were merged on (on another device, equal to rounding; DARE and DELLA draw other drops):",
            "", "```bash", f"evo-merge merge merge_recipe.yaml --out merged --device {device}", "```"]


def local_inputs_lines(inputs: Sequence[CardInput]) -> list[str]:
    """A recipe naming local folders rebuilds the weights only where those models are: said, with
    the way to rebuild elsewhere (the card claimed "bit for bit" of a recipe no Hub reader could run)."""
    if all(ref.hub_id and not ref.adapter_local for ref in inputs):
        return []
    return ["The recipe names some of its models (or their LoRA adapters) by the folders they were merged from: "
            "elsewhere, put their Hub ids or your copies of them in their place.", ""]


def plugin_lines(method: str) -> list[str]:
    """A method of your own is not in evo-merge: whoever rebuilds the merge needs its plugin."""
    if (origin := method_origin(method)) is None:
        return []
    if origin == "the module __main__":  # registered by a notebook or script, not by a package
        return [f"`{method}` is not one of evo-merge's methods: it was defined in the Python session that built "
                "this merge (a notebook or a script), in no package; the command above rebuilds the merge only "
                "where that code is registered again (an installed package's entry point in the group "
                f"`{ENTRY_POINT_GROUP}`).", ""]
    return [f"`{method}` is not one of evo-merge's methods: it comes from {md(origin)}, which must be installed "
            f"(its entry point in the group `{ENTRY_POINT_GROUP}` registers the method) before the command above.", ""]
