"""The `tiny-lm` zoo: a small Llama-style LM pretrained here, then one fine-tune per family.

Built so that task arithmetic has something to work with, in the regime where it works on real
LLMs: fine-tunes are small updates of a base that already holds most of what they need.

- The base is pretrained on a mixture: generic lines over every family's symbols; statements
  of the facts every family asks about, in words and never in a task's format ("cat dog means
  baka gomi", "123 plus 7 is 130", "abcde reversed is edcba"); and the train lines of some
  scenarios of each family (`FINETUNE_ONLY` lists the others). So it knows the facts, solves
  part of each family in its task format, and fails (most of) the held-back scenarios.
- Each endpoint is a short, low-learning-rate fine-tune of the base on the train lines of all
  scenarios of one family (loss on the answers only), by default of the MLP weights only: it
  learns the held-back scenarios in the task format with a small update that leaves the
  attention the other families rely on alone.

Pretraining packs whole lines into rows (each line attends only to itself), which on one CPU
thread takes about half the time of padded batches for the same lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from pydantic import BaseModel, Field, field_validator
from rich.table import Table
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evo_merge.console import results_console
from evo_merge.files import atomic_write
from evo_merge.progress import Progress, no_progress
from evo_merge.tasks.synthetic import (
    ENGLISH,
    FAMILIES,
    LEXICON,
    SCENARIOS,
    SEQ_ALPHABET,
    SEQ_OPS,
    Doc,
    make_items,
    training_text,
)
from evo_merge.weights.folder import load_model_folder, save_model_folder
from evo_merge.zoo.manifest import BASE, ZooManifest, claim_zoo_folder, finished_zoo, has_zoo, read_zoo, write_zoo
from evo_merge.zoo.tiny import make_tiny_causal_lm
from evo_merge.zoo.tokenizer import build_char_tokenizer

# scenarios the base never sees in their task format: each endpoint's fine-tune teaches them
FINETUNE_ONLY: dict[str, list[str]] = {
    "arith": ["add_10", "add_1d"],
    "lang": ["xx2en_2w", "xx2en_3w"],
    "seq": ["shift_3", "rev_3", "rev_5"],
}


class TinyLMSettings(BaseModel):
    """Everything that decides the zoo's weights; its hash names the cache."""

    hidden: int = 96
    layers: int = 2
    heads: int = 4
    batch_size: int = 64  # fine-tuning: lines per step
    pretrain_rows: int = 16  # pretraining: packed rows per step
    pack_width: int = 128  # pretraining: tokens per packed row
    pretrain_steps: int = 2400
    pretrain_lr: float = 3e-3
    finetune_steps: int = 300
    finetune_lr: float = 4e-4
    finetune_params: Literal["mlp", "all"] = "mlp"  # the weights the fine-tunes train
    n_train: int = 6000  # train lines per family
    pretrain_task_share: float = 1.0  # share of each family's train lines (base scenarios) in pretraining
    generic_share: float = 0.3  # generic lines per family, as a share of n_train
    statement_share: float = 1.0  # statements per family, as a share of n_train
    statement_en2xx: float = 0.95  # share of lexicon statements written English first
    finetune_only: dict[str, list[str]] = Field(default_factory=lambda: {f: list(s) for f, s in FINETUNE_ONLY.items()})
    table_items: int | None = None  # evaluation items per family in the table (None: all)
    seed: int = 0

    @field_validator("finetune_only")
    @classmethod
    def _known_scenarios(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(f"{f}/{x}" for f, held in value.items() for x in held if x not in SCENARIOS.get(f, ()))
        if unknown:
            raise ValueError(f"unknown scenarios {unknown}; the scenarios are {dict(SCENARIOS)}")
        return value

    def key(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def pretraining_corpus(n: int, seed: int) -> list[str]:
    """Generic lines over every family's symbols, without any family's task format."""
    rng = random.Random(f"pretrain-{seed}")
    pseudo = list(LEXICON.values())

    def line() -> str:
        kind = rng.randrange(4)
        if kind == 0:
            return " ".join(rng.choice(ENGLISH) for _ in range(rng.randint(2, 4)))
        if kind == 1:
            return " ".join(rng.choice(pseudo) for _ in range(rng.randint(2, 4)))
        if kind == 2:
            return " ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(2, 4)))
        return " ".join(
            "".join(rng.choice(SEQ_ALPHABET) for _ in range(rng.randint(3, 5))) for _ in range(rng.randint(2, 4))
        )

    return [line() + "\n" for _ in range(n)]


_SEQ_WORDS = {"copied": "copy", "shifted": "shift", "reversed": "rev"}  # statement word -> `seq` operation


def statements_corpus(n: int, seed: int, en2xx: float = 0.95) -> list[str]:
    """The facts behind every family, stated in words and never in a task's format: `n` lines
    per family (lexicon, sums and differences, letter-string operations)."""
    rng = random.Random(f"statements-{seed}")
    out = []
    for _ in range(n):
        words = [rng.choice(ENGLISH) for _ in range(rng.randint(1, 3))]
        pseudo = [LEXICON[w] for w in words]
        first, second = (words, pseudo) if rng.random() < en2xx else (pseudo, words)
        out.append(f"{' '.join(first)} means {' '.join(second)}")
        a, b = rng.randint(10, 999), rng.choice([1, 10, rng.randint(2, 9)])
        out.append(f"{a} plus {b} is {a + b}" if rng.random() < 0.6 else f"{a} minus {b} is {a - b}")
        s = "".join(rng.choice(SEQ_ALPHABET) for _ in range(rng.randint(3, 5)))
        op = rng.choice(list(_SEQ_WORDS))
        out.append(f"{s} {op} is {SEQ_OPS[_SEQ_WORDS[op]](s)}")
    return [line + "\n" for line in out]


def _line_tokens(tokenizer, texts: list[str], prompts: list[str] | None) -> list[tuple[list[int], list[int]]]:
    """(token ids, labels) per line; with `prompts`, the prompt's labels are -100."""
    ids = tokenizer(texts)["input_ids"]
    n_prompt = [len(p) for p in tokenizer(prompts)["input_ids"]] if prompts is not None else [0] * len(texts)
    return [(x, [-100] * k + x[k:]) for x, k in zip(ids, n_prompt)]


def _padded_rows(lines, pad_id: int):
    """One line per row, right-padded: (input ids, labels, attention mask)."""
    width = max(len(x) for x, _ in lines)
    ids = torch.full((len(lines), width), pad_id)
    labels = torch.full((len(lines), width), -100)
    for j, (x, y) in enumerate(lines):
        ids[j, : len(x)], labels[j, : len(y)] = torch.tensor(x), torch.tensor(y)
    return ids, labels, torch.arange(width) < torch.tensor([len(x) for x, _ in lines])[:, None]


def _packed_rows(lines, width: int, pad_id: int, seed: int):
    """Whole lines, shuffled, packed greedily into rows of at most `width` tokens: (input ids,
    labels, position ids). Positions restart at each line, which tells the model (given no
    attention mask and no cache) that each line attends only to itself."""
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    rows: list[list[int]] = [[]]
    used = 0
    for k in order:
        if rows[-1] and used + len(lines[k][0]) > width:
            rows.append([])
            used = 0
        rows[-1].append(k)
        used += len(lines[k][0])
    size = max(width, max(len(x) for x, _ in lines))
    ids = torch.full((len(rows), size), pad_id)
    labels = torch.full((len(rows), size), -100)
    pos = torch.zeros((len(rows), size), dtype=torch.long)
    for j, row in enumerate(rows):
        x = [t for i in row for t in lines[i][0]]
        ids[j, : len(x)] = torch.tensor(x)
        labels[j, : len(x)] = torch.tensor([t for i in row for t in lines[i][1]])
        pos[j] = torch.tensor([p for i in row for p in range(len(lines[i][0]))] + list(range(size - len(x))))
    return ids, labels, pos


def train_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: Progress = no_progress,
    label: str = "train",
    prompts: list[str] | None = None,
    pack: int | None = None,
) -> PreTrainedModel:
    """Plain next-token training (AdamW, one-cycle schedule) on random batches of `texts`, of
    the parameters that require grad.

    With `prompts` (the prompt each text starts with), the loss covers only what follows it.
    With `pack`, lines are packed into rows of up to `pack` tokens, each line attending only to
    itself, and `batch_size` counts rows; otherwise each row is one right-padded line."""
    gen = torch.Generator().manual_seed(seed)
    lines = _line_tokens(tokenizer, texts, prompts)
    pad_id = tokenizer.pad_token_id or 0
    if pack:
        ids, labels, pos = _packed_rows(lines, pack, pad_id, seed)
    else:
        ids, labels, mask = _padded_rows(lines, pad_id)
        lengths = mask.sum(1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        idx = torch.randint(len(ids), (batch_size,), generator=gen)
        if pack:
            out = model(input_ids=ids[idx], position_ids=pos[idx], labels=labels[idx], use_cache=False)
        else:
            width = int(lengths[idx].max())
            out = model(input_ids=ids[idx, :width], attention_mask=mask[idx, :width].long(), labels=labels[idx, :width])
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        progress(label, step + 1, steps)
    return model.eval()


def train_docs(settings: TinyLMSettings) -> dict[str, list[Doc]]:
    """Each family's train split: the fine-tunes' data, and in part the base's."""
    return {f: make_items(f, "train", settings.n_train, seed=settings.seed) for f in FAMILIES}


@contextlib.contextmanager
def training_only(model: PreTrainedModel, trainable: Callable[[str], bool]) -> Iterator[PreTrainedModel]:
    """The parameters whose names `trainable` accepts require grad (what `train_lm` updates);
    every parameter does again afterwards."""
    for name, param in model.named_parameters():
        param.requires_grad_(trainable(name))
    try:
        yield model
    finally:
        model.requires_grad_(True)


def pretraining_mixture(settings: TinyLMSettings, train: dict[str, list[Doc]]) -> tuple[list[str], list[str]]:
    """The base's pretraining lines and the prompt each starts with (its loss-free part): generic
    lines and statements (no prompt), then the `train` lines of the scenarios not held back."""
    s = settings
    words = pretraining_corpus(int(s.generic_share * s.n_train) * len(FAMILIES), s.seed)
    words += statements_corpus(int(s.statement_share * s.n_train), s.seed, s.statement_en2xx)
    n_task = int(s.pretrain_task_share * s.n_train)
    seen = [d for f in FAMILIES for d in train[f][:n_task] if d["scenario"] not in s.finetune_only.get(f, [])]
    return words + [training_text(d) for d in seen], [""] * len(words) + [d["question"] for d in seen]


def train_zoo_models(settings: TinyLMSettings, progress: Progress = no_progress,
                     ) -> tuple[PreTrainedTokenizerBase, dict[str, PreTrainedModel]]:
    """The base and one endpoint per family, in memory (name -> model)."""
    tokenizer = build_char_tokenizer()
    tokenizer.padding_side = "right"
    s = settings
    base = make_tiny_causal_lm(
        "llama", vocab_size=len(tokenizer), hidden=s.hidden, layers=s.layers, heads=s.heads, seed=s.seed
    )
    models: dict[str, PreTrainedModel] = {}
    train = train_docs(s)
    texts, prompts = pretraining_mixture(s, train)
    models["base"] = train_lm(
        base, tokenizer, texts, prompts=prompts, steps=s.pretrain_steps, lr=s.pretrain_lr,
        batch_size=s.pretrain_rows, pack=s.pack_width, seed=s.seed, progress=progress, label="pretraining the base",
    )
    for i, family in enumerate(FAMILIES):
        model = type(base)(base.config)
        model.load_state_dict(models["base"].state_dict())
        docs = train[family]
        with training_only(model, lambda name: s.finetune_params == "all" or ".mlp." in name):
            models[family] = train_lm(
                model, tokenizer, [training_text(d) for d in docs], prompts=[d["question"] for d in docs],
                steps=s.finetune_steps, lr=s.finetune_lr, batch_size=s.batch_size,
                seed=s.seed + 1 + i, progress=progress, label=f"fine-tuning {family}",
            )
    return tokenizer, models


def save_zoo(
    out: Path, tokenizer: PreTrainedTokenizerBase, models: dict[str, PreTrainedModel], settings: BaseModel,
    table: pd.DataFrame, kind: str = "tiny-lm",
) -> None:
    """HF folders `out/<name>/` (weights + tokenizer), the accuracy table (`table.csv`, `table.md`),
    then `out/zoo.json` (settings, names) last, each file written whole: its key marks the zoo
    finished, and a table cut short beside it was reused as up to date; `settings` has a `key()`
    (the hash a rebuild compares)."""
    for name, model in models.items():
        save_model_folder(out / name, model, tokenizer, overwrite=True)
    atomic_write(out / "table.csv", table.round(1).to_csv())
    atomic_write(out / "table.md", table.round(1).to_markdown() + "\n")
    write_zoo(out, ZooManifest(kind=kind, models=list(models), key=settings.key(), settings=settings.model_dump()))


def zoo_table(
    models: dict[str, PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    n_items: int | None = None,
    batch_size: int = 256,
    progress: Progress = no_progress,
) -> pd.DataFrame:
    """Accuracy (%) on the first `n_items` (all when None) evaluation items of each shipped
    family: rows = models, columns = families."""
    from evo_merge.tasks.registry import resolve_task

    rows: dict[str, dict[str, float]] = {name: {} for name in models}
    total, done = len(models) * len(FAMILIES), 0
    progress("zoo table", done, total)
    for name, model in models.items():
        for family in FAMILIES:
            task = resolve_task(family, batch_size=batch_size)
            items = task.item_ids[:n_items] if n_items else None
            rows[name][family] = 100 * float(task.evaluate(model, tokenizer, items).mean())
            done += 1
            progress("zoo table", done, total)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def load_zoo(zoo_dir: Path) -> tuple[PreTrainedTokenizerBase, dict[str, PreTrainedModel]]:
    """The saved zoo: tokenizer and models by name (base first)."""
    loaded = {name: load_model_folder(zoo_dir / name) for name in finished_zoo(zoo_dir).models}
    return loaded[BASE][1], {name: model for name, (model, _) in loaded.items()}


def built_with(out: Path, settings: BaseModel) -> bool:
    """Whether `out` holds a complete zoo built with these settings (`settings.key()`): a build
    with them again reuses it."""
    if not has_zoo(out):
        return False
    meta = read_zoo(out)
    complete = all((out / m / "config.json").is_file() for m in meta.models) and (out / "table.csv").is_file()
    return meta.key == settings.key() and complete


def build_tinylm_zoo(
    out: str | Path, seed: int = 0, settings: TinyLMSettings | None = None, force: bool = False, threads: int = 1,
    progress: Progress = no_progress,
) -> Path:
    """Train (or reuse, when `out` holds a zoo built with the same settings) the tiny-lm zoo:
    `out/base`, `out/<family>` HF folders, `out/zoo.json`, and the accuracy table
    `out/table.csv` / `out/table.md`, which is also printed.

    `threads` torch threads while building: its matrices are tiny, and on a busy 2-core
    machine two threads took about 4x the CPU time of one for the same training."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _build(Path(out), seed, settings, force, progress)
    finally:
        torch.set_num_threads(previous)


def _build(out: Path, seed: int, settings: TinyLMSettings | None, force: bool, progress: Progress) -> Path:
    settings = (settings or TinyLMSettings()).model_copy(update={"seed": seed})
    console = results_console(soft_wrap=True)
    if not force and built_with(out, settings):
        console.print(f"tiny-lm zoo in {out} is up to date (settings {settings.key()}); reusing it")
    else:
        claim_zoo_folder(out, "tiny-lm", settings.key(), force)
        # the first progress line comes 30 s later in a log: what the silence is, where it goes, how long
        console.print(f"building the tiny-lm zoo into {out} (training here: a few minutes on a CPU)")
        start, cpu = time.perf_counter(), time.process_time()
        tokenizer, models = train_zoo_models(settings, progress)
        trained = time.perf_counter() - start
        out.mkdir(parents=True, exist_ok=True)
        table = zoo_table(models, tokenizer, settings.table_items, progress=progress)
        save_zoo(out, tokenizer, models, settings, table)
        console.print(
            f"trained in {trained:.0f} s, whole build {time.perf_counter() - start:.0f} s "
            f"({time.process_time() - cpu:.0f} s CPU)"
        )
    table = pd.read_csv(out / "table.csv", index_col="model")
    console.print(accuracy_table(table, "tiny-lm zoo: accuracy (%) on all evaluation items"))
    return out


def accuracy_table(table: pd.DataFrame, title: str) -> Table:
    """A zoo's accuracy table (`zoo_table`) as the build prints it."""
    view = Table(title=title)
    view.add_column("model")
    for col in table.columns:
        view.add_column(col, justify="right")
    for name, row in table.iterrows():
        view.add_row(str(name), *(f"{v:.1f}" for v in row))
    return view
