"""The tiny-lm zoo (built small) and the adapter against lm-eval's own aggregate on it."""

import json
import re

import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from evo_merge.errors import UserError
from evo_merge.tasks.registry import BENCHMARKS_DIR, resolve_task
from evo_merge.tasks.synthetic import FAMILIES, LEXICON
from evo_merge.weights.folder import save_model_folder
from evo_merge.zoo.manifest import claim_zoo_folder, read_zoo
from evo_merge.zoo.tiny import make_tiny_causal_lm
from evo_merge.zoo.tinylm import (
    TinyLMSettings,
    _line_tokens,
    _packed_rows,
    build_tinylm_zoo,
    load_zoo,
    pretraining_corpus,
    pretraining_mixture,
    statements_corpus,
    train_docs,
    train_lm,
)
from evo_merge.zoo.tokenizer import build_char_tokenizer


def test_build_saves_base_endpoints_table_and_reuses_its_cache(tiny_zoo):
    meta = json.loads((tiny_zoo / "zoo.json").read_text())
    assert meta["models"] == ["base", *FAMILIES]
    table = pd.read_csv(tiny_zoo / "table.csv", index_col="model")
    assert table.index.tolist() == ["base", *FAMILIES] and table.columns.tolist() == list(FAMILIES)
    assert ((table >= 0) & (table <= 100)).all().all()
    assert (tiny_zoo / "table.md").read_text() == table.round(1).to_markdown() + "\n"  # the table, readable
    weights = tiny_zoo / "arith" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    build_tinylm_zoo(tiny_zoo, settings=TinyLMSettings(**meta["settings"]))
    assert weights.stat().st_mtime_ns == stamp  # reused, not retrained


def test_endpoints_share_the_base_architecture_and_fine_tune_only_its_mlps(tiny_zoo):
    _, models = load_zoo(tiny_zoo)
    base = models["base"].state_dict()
    for family in FAMILIES:
        state = models[family].state_dict()
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in base.items()}
        moved = {k for k in base if not torch.equal(state[k], base[k])}
        assert moved and moved == {k for k in base if ".mlp." in k}


def test_packed_lines_attend_only_to_themselves():
    """A packed row computes, line by line, what each line computes alone."""
    tok = build_char_tokenizer()
    model = make_tiny_causal_lm(vocab_size=len(tok), hidden=16, layers=2, heads=2, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large weights: sharp attention, so a leak across lines would show
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=gen))
    texts = ["12+3=15\n", "en>xx cat = baka\n", "rev abc= cba\n"]
    lines = _line_tokens(tok, texts, None)
    ids, labels, pos = _packed_rows(lines, width=64, pad_id=tok.pad_token_id, seed=0)
    assert len(ids) == 1  # all three fit in one row
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        starts = [i for i, p in enumerate(pos[0].tolist()) if p == 0]
        for begin in starts[: len(texts)]:
            line = next(x for x, _ in lines if ids[0, begin : begin + len(x)].tolist() == x)
            alone = model(input_ids=torch.tensor([line]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[begin : begin + len(line)], alone, atol=1e-5, rtol=1e-4)
    assert (labels[0, pos[0] == 0] != -100).sum() == len(texts)  # each line's first token is a label


def test_prompts_carry_no_loss():
    tok = build_char_tokenizer()
    (ids, labels), = _line_tokens(tok, ["12+3= 15\n"], ["12+3="])
    n = len(tok("12+3=")["input_ids"])
    assert labels[:n] == [-100] * n and labels[n:] == ids[n:]


def test_statements_are_true_and_never_in_a_task_format():
    lines = statements_corpus(300, seed=0)
    assert len(lines) == 900
    for line in lines:
        text = line.strip()
        assert "=" not in text and ">" not in text and not text.startswith(("copy ", "shift ", "rev "))
        if m := re.fullmatch(r"(\d+) (plus|minus) (\d+) is (-?\d+)", text):
            a, op, b, c = m.groups()
            assert int(c) == (int(a) + int(b) if op == "plus" else int(a) - int(b))
        elif " means " in text:
            left, right = (part.split() for part in text.split(" means "))
            assert [LEXICON.get(w) for w in left] == right or [LEXICON.get(w) for w in right] == left
        else:
            s, op, _, out = text.split()
            assert out == {"copied": s, "reversed": s[::-1]}.get(
                op, "".join("bcdefghija"["abcdefghij".index(c)] for c in s)
            )


def test_pretraining_holds_back_the_fine_tune_only_scenarios():
    settings = TinyLMSettings(n_train=200, finetune_only={"arith": ["add_1d"], "seq": ["rev_3", "rev_5"]})
    texts, prompts = pretraining_mixture(settings, train_docs(settings))
    questions = [p for p in prompts if p]
    assert len(texts) == len(prompts) and questions
    assert not any(re.fullmatch(r"\d+\+[2-9]=", q) or q.startswith("rev ") for q in questions)
    assert any(q.startswith("en>xx") for q in questions) and any(q.endswith("+10=") for q in questions)
    assert all(t.startswith(p) for t, p in zip(texts, prompts))


def test_settings_name_unknown_scenarios():
    with pytest.raises(ValidationError, match="arith/add_2d"):
        TinyLMSettings(finetune_only={"arith": ["add_2d"]})
    with pytest.raises(ValidationError, match="finetune_params"):
        TinyLMSettings(finetune_params="attention")


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


def test_a_folder_of_other_models_is_refused_before_training_and_a_killed_build_starts_again(tmp_path, smoke_settings):
    """`init --zoo ~/models` (or `zoo build --out`) trained for minutes, then replaced the user's
    `base/` model folder with the zoo's base."""

    mine = tmp_path / "models"
    save_model_folder(mine / "base", make_tiny_causal_lm("gpt2", vocab_size=40))
    before = {p.name: p.stat().st_mtime_ns for p in (mine / "base").iterdir()}
    with pytest.raises(UserError, match="models: not empty and not a zoo folder"):
        build_tinylm_zoo(mine, settings=smoke_settings)
    assert {p.name: p.stat().st_mtime_ns for p in (mine / "base").iterdir()} == before
    assert sorted(p.name for p in mine.iterdir()) == ["base"]
    (mine / "zoo.json").write_text(json.dumps({"kind": "smollm2", "models": ["base"]}))  # another kind of zoo
    with pytest.raises(UserError, match=r"models: holds a smollm2 zoo, not a tiny-lm one; give another folder \(its "
                       r"example campaign: scripts/smollm2_campaign.yaml"):
        build_tinylm_zoo(mine, settings=smoke_settings)
    assert {p.name: p.stat().st_mtime_ns for p in (mine / "base").iterdir()} == before
    # a build killed after it began writing: its own folder, marked when it started, builds again
    zoo = tmp_path / "zoo"
    (zoo / "base").mkdir(parents=True)
    (zoo / "zoo.json").write_text(json.dumps({"kind": "tiny-lm", "models": []}))
    seen: dict[str, list[tuple[int, int]]] = {}  # minutes of training, said as they go (a line every 30 s in a log)
    build_tinylm_zoo(zoo, settings=smoke_settings,
                     progress=lambda stage, *count: seen.setdefault(stage, []).append(count))
    assert json.loads((zoo / "zoo.json").read_text())["models"] == ["base", *FAMILIES]
    assert list(seen) == ["pretraining the base", *(f"fine-tuning {f}" for f in FAMILIES), "zoo table"]
    steps = {"pretraining the base": smoke_settings.pretrain_steps, "zoo table": 4 * len(FAMILIES),
             **{f"fine-tuning {f}": smoke_settings.finetune_steps for f in FAMILIES}}
    assert all(counts[-1] == (steps[stage], steps[stage]) for stage, counts in seen.items()), seen
    # built with other settings (`--seed 1` on the demo's zoo): retrained in place without a word, and
    # every run started on its models stopped resuming
    stamps = {p: p.stat().st_mtime_ns for p in zoo.rglob("*.safetensors")}
    with pytest.raises(UserError, match=re.escape(f"{zoo}: holds a tiny-lm zoo built with other settings (")):
        build_tinylm_zoo(zoo, seed=1, settings=smoke_settings)
    assert {p: p.stat().st_mtime_ns for p in zoo.rglob("*.safetensors")} == stamps
    # `init --zoo` / `demo --zoo` given it: used with the settings it was built with, not refused
    from evo_merge.cli.demo import _zoo
    assert _zoo(zoo) == list(FAMILIES)
    assert {p: p.stat().st_mtime_ns for p in zoo.rglob("*.safetensors")} == stamps
    # a forced rebuild marks the zoo as being built before it replaces a model: killed half-way, its
    # old key beside new weights was reused as "up to date"
    claim_zoo_folder(zoo, "tiny-lm", "another-key", force=True)
    assert read_zoo(zoo).key is None


def test_zoo_build_on_the_command_line_says_each_stage_as_it_ends(tmp_path, smoke_settings, monkeypatch):
    """`evo-merge zoo build` passes its bars to the build: minutes of training said stage by stage
    in a log, and a second build reuses the zoo."""
    from click.testing import CliRunner

    from evo_merge.cli import cli
    from evo_merge.zoo import tinylm

    monkeypatch.setattr(tinylm, "TinyLMSettings", lambda: smoke_settings)  # the default settings, small
    result = CliRunner().invoke(cli, ["zoo", "build", "--out", str(tmp_path / "zoo"), "--seed", "1"])
    assert result.exit_code == 0, result.output
    ended = [line.split(" in ")[0] for line in result.output.splitlines() if re.match(r"^[\w -]+: \d+/\d+ in ", line)]
    steps = {"pretraining the base": smoke_settings.pretrain_steps,
             **{f"fine-tuning {f}": smoke_settings.finetune_steps for f in FAMILIES}, "zoo table": 4 * len(FAMILIES)}
    assert ended == [f"{stage}: {n}/{n}" for stage, n in steps.items()], result.output
    assert json.loads((tmp_path / "zoo" / "zoo.json").read_text())["models"] == ["base", *FAMILIES]
    again = CliRunner().invoke(cli, ["zoo", "build", "--out", str(tmp_path / "zoo"), "--seed", "1"])
    assert again.exit_code == 0 and "is up to date" in again.output and "pretraining" not in again.output, again.output
    weights = tmp_path / "zoo" / "base" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    forced = CliRunner().invoke(cli, ["zoo", "build", "--out", str(tmp_path / "zoo"), "--seed", "1", "--force"])
    assert forced.exit_code == 0 and "pretraining the base: " in forced.output, forced.output  # trained again
    assert weights.stat().st_mtime_ns != stamp


def test_responses_build_passes_its_merges_scenarios_and_seed_on(tiny_zoo, tmp_path, output_appearing, monkeypatch):
    """`responses build --n-merges --scenario subskill --seed`: the command's table is the library's
    for the same settings (the base, the endpoints and N seeded random merges), its items labelled
    by their task's own scenarios; another seed draws other merges."""
    import pandas as pd
    from click.testing import CliRunner

    from evo_merge.cli import cli
    from evo_merge.search.responses import build_responses

    out = tmp_path / "r.csv"
    args = ["responses", "build", "--zoo", str(tiny_zoo), "--tasks", "seq", "--n-merges", "2", "--scenario",
            "subskill", "--out", str(out)]
    built = CliRunner().invoke(cli, [*args, "--seed", "3"])
    assert built.exit_code == 0, built.output
    table = pd.read_csv(out, dtype={"subject": str, "item": str})
    assert sorted(table.subject.unique()) == sorted(["base", *(f"endpoint-{f}" for f in FAMILIES),
                                                      "merge-000", "merge-001"])
    task = resolve_task("seq")
    assert dict(zip(table.item, table.scenario)) == {i: f"seq:{task.scenarios[i]}" for i in task.item_ids}
    library = build_responses(tiny_zoo / "base", [tiny_zoo / f for f in FAMILIES], {"seq": task}, 2, seed=3,
                              scenario="subskill")
    pd.testing.assert_frame_equal(table, library.astype(table.dtypes.to_dict()), check_like=True)
    # without --overwrite, a file put at OUT meanwhile is kept (audit 112; passed on, audit 115)
    arm, check = output_appearing
    appeared = tmp_path / "appeared.csv"
    arm(appeared)
    check(CliRunner().invoke(cli, [*args[:-1], str(appeared), "--seed", "3"]), appeared)
    monkeypatch.undo()
    other = CliRunner().invoke(cli, [*args, "--seed", "4", "--overwrite"])
    assert other.exit_code == 0, other.output
    drawn = pd.read_csv(out, dtype={"subject": str, "item": str})
    merges = table.subject.str.startswith("merge-")
    assert drawn[~merges].equals(table[~merges]) and not drawn[merges].equals(table[merges])


def test_a_zoo_whose_table_was_not_written_is_not_finished(tmp_path, smoke_settings, monkeypatch):
    """zoo.json, whose key marks a zoo finished, was written before table.csv: a build stopped between
    the two (a full disk, a kill) left a zoo taken as up to date with its table cut short or missing
    (audit 111). The key is written last now."""
    import errno

    from evo_merge.errors import UserError
    from evo_merge.zoo.manifest import finished_zoo
    from evo_merge.zoo.tinylm import built_with

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    with pytest.raises(OSError, match="No space left"):
        build_tinylm_zoo(tmp_path / "zoo", settings=smoke_settings)
    assert read_zoo(tmp_path / "zoo").key is None and not built_with(tmp_path / "zoo", smoke_settings)
    with pytest.raises(UserError, match="whose build did not finish"):
        finished_zoo(tmp_path / "zoo")
