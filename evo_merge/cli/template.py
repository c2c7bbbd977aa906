"""The commented example campaign that `evo-merge init` writes and `evo-merge demo` runs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from evo_merge.config import EvaluatorSpec, FinalSpec
from evo_merge.irt.kinds import MIN_CLUSTER_SUBJECTS
from evo_merge.markup import shell

TEMPLATE = """\
# evo-merge campaign: `{command}`
# Relative paths are taken against this file's folder.
name: {name}

# The base model and the models fine-tuned from it (HF folders with safetensors).
base_model: {base}
models:
{models}

# One objective per task: a shipped benchmark (arith, lang, seq), an lm-eval task name,
# a local lm-eval YAML/folder, or a `module:attribute` plugin (options: its keyword arguments).
tasks:
{tasks}

# The merge methods the optimiser chooses among, with search ranges for their
# hyperparameters ({{}}: the method's own default ranges).
methods:
  task_arithmetic: {{}}
  ties: {{density: [0.1, 1.0]}}
  dare_ties: {{density: [0.2, 1.0]}}
  tsv: {{}}

# Range of the per-model coefficients; granularity: model (one per endpoint), blocks:N (one per
# endpoint per group of N transformer blocks, plus one for the rest) or layer.
coefficients: {{low: 0.0, high: 1.5, granularity: model}}

# Candidates are scored on `anchors` items per task scenario, on average (the shipped benchmarks
# have 4-5 scenarios each: 5 anchors is about 20 items per task) and their full score is
# estimated with IRT. With no irt_model, the base, the endpoints and `warmup_merges` merges (the
# standard merges first: they compete measured; then random ones) are evaluated on every item
# first and an IRT model is fitted on those responses.
# kind: anchor | pirt | gpirt | mpirt | gmpirt | adaptive (items chosen per candidate until
# the standard error is below target_se) | full (score every item: the costly baseline)
estimator:
  kind: gpirt
  anchors: {anchors}
  anchor_method: auto      # stratified-irt from {cluster_subjects} calibration subjects, stratified below
  anchor_allocation: neyman  # where they cut the task's error most (equal: `anchors` in each)
  anchor_balance: 200      # of 200 stratified draws, the one that estimates the calibration subjects best
  warmup_merges: {warmup}
  backend: torch
  dims: auto

# NSGA-II over the mixed genome (or nsga3 | smsemoa; ga | cmaes with objective: {{weights: ...}});
# population x generations candidates at most.
# The first generation starts from each endpoint alone and task arithmetic, TIES and TSV-M with
# weight 1 each (seed_standard_merges: false for random merges only).
algorithm: {{name: nsga2, population: {population}, generations: {generations}, seed: 0}}

# In this process; or {{kind: dask, n_workers: 2}} / {{kind: dask, address: tcp://host:8786}}
# (pip install 'evo-merge[distributed]'): workers load the models once, the driver keeps the store.
# sequence_tokens (default {sequence_tokens}): your tasks' longest prompt and continuation, for `evo-merge plan`.
# score_cache: FILE keeps item scores for later campaigns on the same models and tasks (local only).
evaluator: {{kind: local, batch_size: {batch_size}}}

# After the search: each pick's top_k candidates by estimate (default {top_k}) and evaluate_top
# front members (each task's best, then those whose estimates add the most hypervolume: front_choice)
# are finalists. They race (race, default {race}): scored on these fractions of the search items;
# a finalist leaves when another is, with confidence, at most race_tolerance ({race_tolerance}) below
# it on every task. The best model per task and the best
# balanced one are chosen among the rest on the same sampled items, measured on every item
# (measure_whole: picks; `survivors` measures every one; race: [] measures every finalist) and
# exported to models/ in the run folder (`run`'s --out). holdout (default auto: {holdout:.0%} of the
# items of tasks with {holdout_from}+ items) keeps items from calibration and search for honest scores.
final: {{evaluate_top: {top}, export: [best_per_task, balanced]}}

# The evaluation module's dtype, and the exported picks': auto = the base's own (bfloat16 for a
# bfloat16 model; float32 here); or float32 | bfloat16 | float16.
dtype: auto
device: auto
"""


def scalar(text: str) -> str:
    """`text` as a YAML value that reads back as this very string: as it is where it does, quoted
    otherwise (`init --out 2024.yaml` wrote `name: 2024`, a number; a zoo under `z #1` was cut at
    the comment)."""
    try:
        if yaml.safe_load(f"key: {text}") == {"key": text}:
            return text
    except yaml.YAMLError:
        pass
    return json.dumps(text)  # a JSON string is a YAML double-quoted one


def run_command(campaign_file: Path | str, run_dir: Path | str) -> str:
    """The command that runs a campaign file into its run folder, as the file's first line gives it."""
    return shell("evo-merge", "run", campaign_file, "--out", run_dir)


def campaign_text(zoo: Path | str, families: list[str], *, name: str = "demo", command: str | None = None,
                  anchors: int = 5, warmup: int = 4, population: int = 10, generations: int = 4, top: int = 3) -> str:
    """The example campaign; its first line names `command` (default: `name`.yaml into runs/`name`)."""
    models = "\n".join(f"  - {scalar(f'{zoo}/{family}')}" for family in families)
    tasks = "\n".join(f"  - {{task: {scalar(family)}}}" for family in families)
    command = command or run_command(f"{name}.yaml", f"runs/{name}")
    return TEMPLATE.format(name=scalar(name), command=command, base=scalar(f"{zoo}/base"), models=models, tasks=tasks,
                           anchors=anchors, warmup=warmup, population=population, generations=generations, top=top,
                           **_defaults())


def _defaults() -> dict[str, object]:
    """The defaults the comments name, read where they are defined: written out, they drifted from
    the schema when one changed."""
    from evo_merge.search.holdout import AUTO_FRACTION, AUTO_MIN_ITEMS

    final = FinalSpec()
    return {"batch_size": EvaluatorSpec().batch_size, "sequence_tokens": EvaluatorSpec().sequence_tokens,
            "top_k": final.top_k, "race": json.dumps(final.race),
            "race_tolerance": final.race_tolerance, "holdout": AUTO_FRACTION, "holdout_from": AUTO_MIN_ITEMS,
            "cluster_subjects": MIN_CLUSTER_SUBJECTS}
