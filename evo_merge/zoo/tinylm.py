"""The `tiny-lm` zoo: a small Llama-style LM pretrained here, then one fine-tune per family.

The base is pretrained on a mixture: generic lines over every family's symbols (English and
pseudo-words, numbers, letter strings) plus a small share of each family's train lines, so it
has seen every format but masters no skill; each endpoint is fine-tuned from the base on the
train split of one shipped family (`evo_merge.tasks.synthetic`).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import pandas as pd
import torch
from pydantic import BaseModel
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evo_merge.tasks.synthetic import ENGLISH, FAMILIES, LEXICON, make_items, training_text
from evo_merge.zoo.tiny import make_tiny_causal_lm
from evo_merge.zoo.tokenizer import build_char_tokenizer


class TinyLMSettings(BaseModel):
    """Everything that decides the zoo's weights; its hash names the cache."""

    hidden: int = 64
    layers: int = 4
    heads: int = 4
    batch_size: int = 64
    pretrain_steps: int = 800
    pretrain_lr: float = 3e-3
    finetune_steps: int = 400
    finetune_lr: float = 1e-3
    n_train: int = 6000
    pretrain_task_share: float = 0.15  # share of family train lines in the pretraining mixture
    table_items: int | None = None  # evaluation items per family in the table (None: all)
    seed: int = 0

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
            "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 5))) for _ in range(rng.randint(2, 4))
        )

    return [line() + "\n" for _ in range(n)]


def train_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: Progress | None = None,
    label: str = "train",
) -> PreTrainedModel:
    """Plain next-token training (AdamW, cosine decay) on random batches of `texts`."""
    gen = torch.Generator().manual_seed(seed)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    task = progress.add_task(label, total=steps) if progress else None
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(texts), (batch_size,), generator=gen)
        width = int(mask[idx].sum(1).max())
        out = model(input_ids=ids[idx, :width], attention_mask=mask[idx, :width], labels=labels[idx, :width])
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress:
            progress.update(task, advance=1, description=f"{label} loss {out.loss.item():.3f}")
    return model.eval()


def train_zoo_models(settings: TinyLMSettings) -> tuple[PreTrainedTokenizerBase, dict[str, PreTrainedModel]]:
    """The base and one endpoint per family, in memory (name -> model)."""
    tokenizer = build_char_tokenizer()
    tokenizer.padding_side = "right"
    s = settings
    base = make_tiny_causal_lm(
        "llama", vocab_size=len(tokenizer), hidden=s.hidden, layers=s.layers, heads=s.heads, seed=s.seed
    )
    models: dict[str, PreTrainedModel] = {}
    with Progress(transient=True) as progress:
        train = {f: [training_text(d) for d in make_items(f, "train", s.n_train, seed=s.seed)] for f in FAMILIES}
        corpus = pretraining_corpus(s.n_train * len(FAMILIES), s.seed)
        n_task = int(s.pretrain_task_share * len(corpus) / len(FAMILIES))
        corpus += [line for f in FAMILIES for line in train[f][:n_task]]
        models["base"] = train_lm(
            base, tokenizer, corpus, steps=s.pretrain_steps, lr=s.pretrain_lr,
            batch_size=s.batch_size, seed=s.seed, progress=progress, label="pretrain",
        )
        for i, family in enumerate(FAMILIES):
            texts = train[family]
            model = type(base)(base.config)
            model.load_state_dict(models["base"].state_dict())
            models[family] = train_lm(
                model, tokenizer, texts, steps=s.finetune_steps, lr=s.finetune_lr,
                batch_size=s.batch_size, seed=s.seed + 1 + i, progress=progress, label=family,
            )
    return tokenizer, models


def save_zoo(out: Path, tokenizer: PreTrainedTokenizerBase, models: dict[str, PreTrainedModel], settings: TinyLMSettings) -> None:
    """HF folders `out/<name>/` (weights + tokenizer) and `out/zoo.json` (settings, names)."""
    for name, model in models.items():
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    meta = {"kind": "tiny-lm", "settings": settings.model_dump(), "key": settings.key(), "models": list(models)}
    (out / "zoo.json").write_text(json.dumps(meta, indent=2))


def zoo_table(
    models: dict[str, PreTrainedModel], tokenizer: PreTrainedTokenizerBase, n_items: int | None = None, batch_size: int = 256
) -> pd.DataFrame:
    """Accuracy (%) on the first `n_items` (all when None) evaluation items of each shipped
    family: rows = models, columns = families."""
    from evo_merge.tasks.registry import resolve_task

    rows = {}
    with Progress(transient=True) as progress:
        job = progress.add_task("zoo table", total=len(models) * len(FAMILIES))
        for name, model in models.items():
            rows[name] = {}
            for family in FAMILIES:
                task = resolve_task(family, batch_size=batch_size)
                items = task.item_ids[:n_items] if n_items else None
                rows[name][family] = 100 * float(task.evaluate(model, tokenizer, items).mean())
                progress.advance(job)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def load_zoo(zoo_dir: Path) -> tuple[PreTrainedTokenizerBase, dict[str, PreTrainedModel]]:
    """The saved zoo: tokenizer and models by name (base first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.loads((zoo_dir / "zoo.json").read_text())
    models = {name: AutoModelForCausalLM.from_pretrained(zoo_dir / name).eval() for name in meta["models"]}
    return AutoTokenizer.from_pretrained(zoo_dir / "base"), models


def _cached(out: Path, settings: TinyLMSettings) -> bool:
    meta_path = out / "zoo.json"
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    return meta.get("key") == settings.key() and all((out / m / "config.json").is_file() for m in meta["models"]) and (out / "table.csv").is_file()


def build_tinylm_zoo(
    out: str | Path, seed: int = 0, settings: TinyLMSettings | None = None, force: bool = False, threads: int = 1
) -> Path:
    """Train (or reuse, when `out` holds a zoo built with the same settings) the tiny-lm zoo:
    `out/base`, `out/<family>` HF folders, `out/zoo.json`, and the accuracy table
    `out/table.csv` / `out/table.md`, which is also printed.

    `threads` torch threads while building: its matrices are tiny, and on a busy 2-core
    machine two threads took about 4x the CPU time of one for the same training."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _build(Path(out), seed, settings, force)
    finally:
        torch.set_num_threads(previous)


def _build(out: Path, seed: int, settings: TinyLMSettings | None, force: bool) -> Path:
    settings = (settings or TinyLMSettings()).model_copy(update={"seed": seed})
    console = Console()
    if not force and _cached(out, settings):
        console.print(f"tiny-lm zoo in {out} is up to date (settings {settings.key()}); reusing it")
    else:
        start = time.perf_counter()
        tokenizer, models = train_zoo_models(settings)
        trained = time.perf_counter() - start
        out.mkdir(parents=True, exist_ok=True)
        table = zoo_table(models, tokenizer, settings.table_items)
        save_zoo(out, tokenizer, models, settings)
        table.round(1).to_csv(out / "table.csv")
        (out / "table.md").write_text(table.round(1).to_markdown() + "\n")
        console.print(f"trained in {trained:.0f} s, whole build {time.perf_counter() - start:.0f} s")
    table = pd.read_csv(out / "table.csv", index_col="model")
    console.print(_rich_table(table))
    return out


def _rich_table(table: pd.DataFrame) -> Table:
    view = Table(title="tiny-lm zoo: accuracy (%) on all evaluation items")
    view.add_column("model")
    for col in table.columns:
        view.add_column(col, justify="right")
    for name, row in table.iterrows():
        view.add_row(str(name), *(f"{v:.1f}" for v in row))
    return view
