"""The tiny-lm zoo (built small) and the adapter against lm-eval's own aggregate on it."""

import json

import pandas as pd
import pytest
import torch

from evo_merge.tasks.registry import BENCHMARKS_DIR, resolve_task
from evo_merge.tasks.synthetic import FAMILIES
from evo_merge.zoo.tiny import make_tiny_causal_lm
from evo_merge.zoo.tinylm import TinyLMSettings, build_tinylm_zoo, load_zoo, pretraining_corpus, train_lm
from evo_merge.zoo.tokenizer import build_char_tokenizer


def test_build_saves_base_endpoints_table_and_reuses_its_cache(tiny_zoo):
    meta = json.loads((tiny_zoo / "zoo.json").read_text())
    assert meta["models"] == ["base", *FAMILIES]
    table = pd.read_csv(tiny_zoo / "table.csv", index_col="model")
    assert table.index.tolist() == ["base", *FAMILIES] and table.columns.tolist() == list(FAMILIES)
    assert ((table >= 0) & (table <= 100)).all().all()
    weights = tiny_zoo / "arith" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    build_tinylm_zoo(tiny_zoo, settings=TinyLMSettings(**meta["settings"]))
    assert weights.stat().st_mtime_ns == stamp  # reused, not retrained


def test_endpoints_share_the_base_architecture_and_move_away_from_it(tiny_zoo):
    _, models = load_zoo(tiny_zoo)
    base = models["base"].state_dict()
    for family in FAMILIES:
        state = models[family].state_dict()
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in base.items()}
        assert any(not torch.equal(state[k], base[k]) for k in base)


def test_training_is_seeded():
    tok = build_char_tokenizer()
    tok.padding_side = "right"
    texts = pretraining_corpus(64, seed=0)

    def trained(seed):
        model = make_tiny_causal_lm(vocab_size=len(tok), hidden=16, layers=1, heads=2, seed=0)
        return train_lm(model, tok, texts, steps=3, lr=1e-2, batch_size=8, seed=seed).state_dict()

    first, again, other = trained(1), trained(1), trained(2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_reproduces_lm_eval_simple_evaluate(tiny_zoo, family, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tok, models = load_zoo(tiny_zoo)
    model = models[family]
    task = resolve_task(family, batch_size=8)
    positions = list(range(0, 240, 8))  # 30 items spread over the scenarios
    ours = task.evaluate(model, tok, [task.item_ids[p] for p in positions])

    # lm-eval on its own: the shipped YAML by name, data path relative to the working directory
    folder = BENCHMARKS_DIR / family
    monkeypatch.chdir(folder)
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=8)
    result = simple_evaluate(
        model=lm, tasks=[task.name], task_manager=manager, samples={task.name: positions}, bootstrap_iters=0
    )
    key = f"{task.metric},{task.filter}"
    assert ours.mean() == pytest.approx(result["results"][task.name][key], abs=1e-12)
    theirs = {s["doc_id"]: s[task.metric] for s in result["samples"][task.name] if s["filter"] == task.filter}
    assert ours.tolist() == [theirs[p] for p in positions]
