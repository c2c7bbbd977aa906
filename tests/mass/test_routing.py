"""The router: hand-computed scores and selection, padding, and task recovery on a tiny-lm zoo."""

import math

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from evo_merge.errors import UserError
from evo_merge.mass.model import real_tokens
from evo_merge.mass.routing import (
    residual_scores,
    routing_config,
    routing_probabilities,
    routing_weights,
    select_tasks,
)
from evo_merge.tasks.synthetic import FAMILIES, make_items


def test_residuals_vanish_inside_a_task_subspace_and_measure_the_rest():
    eye = torch.eye(4)
    z = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 1.0, 2.0]])
    res = residual_scores(z, [eye[:, :2], eye[:, 2:3]])
    assert torch.allclose(res, torch.tensor([[0.0, 5.0], [math.sqrt(5.0), 2.0]]))


def test_probabilities_are_a_softmax_of_standardised_negative_residuals():
    probs = routing_probabilities(torch.tensor([[1.0, 2.0, 3.0], [7.0, 7.0, 7.0]]))
    z = math.sqrt(1.5)  # (-1 - (-2)) / population std of (-1, -2, -3)
    e = [math.exp(z), 1.0, math.exp(-z)]
    assert torch.allclose(probs[0], torch.tensor([v / sum(e) for v in e]))
    assert torch.allclose(probs[1], torch.full((3,), 1 / 3))  # ties: uniform, no NaN


def test_selection_keeps_probable_tasks_up_to_max_and_falls_back_to_the_best():
    probs = torch.tensor([[0.55, 0.3, 0.15], [0.1, 0.6, 0.3], [0.19, 0.18, 0.17], [0.25, 0.25, 0.5]])
    assert select_tasks(probs, 0.2, 3) == [(0, 1), (1, 2), (0,), (0, 1, 2)]
    assert select_tasks(probs, 0.2, 1) == [(0,), (1,), (0,), (2,)]


def test_routing_weight_is_each_blocks_first_mlp_weight():
    llama = [f"model.layers.{i}.mlp.{p}.weight" for i in range(3) for p in ("down_proj", "up_proj", "gate_proj")]
    assert routing_weights(llama) == {i: f"model.layers.{i}.mlp.gate_proj.weight" for i in range(3)}
    gpt2 = [f"transformer.h.{i}.mlp.{p}.weight" for i in range(2) for p in ("c_fc", "c_proj")]
    assert routing_config(gpt2, None).weight == "transformer.h.1.mlp.c_fc.weight"
    with pytest.raises(UserError, match="layer 5 is out of range: the base has MLP blocks 0..2"):
        routing_config(llama, 5)


def test_without_a_mask_trailing_padding_is_ignored():
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 0, 7, 8, 9], [0, 0, 0, 0, 0]])
    assert real_tokens(ids, None, [0]).tolist() == [
        [True, True, True, False, False], [True] * 5, [True, False, False, False, False]]
    mask = torch.tensor([[0, 1, 1, 1, 1]] * 3)
    assert torch.equal(real_tokens(ids, mask, [0]), mask.bool())


@pytest.mark.parametrize("token", ["mean", "last"])
def test_routing_a_row_does_not_depend_on_its_batch_padding(zoo_mass, token):
    zoo_mass.routing.token = token
    try:
        short, long = [10, 11, 12], [10, 11, 12, 13, 14, 15]
        padded = torch.tensor([short + [0, 0, 0], long])  # lm-eval's way: right-padded, no mask
        together = zoo_mass.routed_state(padded)
        assert torch.allclose(together[0], zoo_mass.routed_state(torch.tensor([short]))[0], atol=1e-5)
        assert torch.allclose(together[1], zoo_mass.routed_state(torch.tensor([long]))[0], atol=1e-5)
    finally:
        zoo_mass.routing.token = "mean"


def test_inputs_of_each_family_route_to_its_own_endpoint(zoo, zoo_mass):
    tok = AutoTokenizer.from_pretrained(zoo / "base")
    top, kept = {}, {}
    for family in FAMILIES:
        docs = make_items(family, "test", 60, seed=1)
        enc = tok([d["question"] for d in docs], padding=True, return_tensors="pt")
        probs, sets = zoo_mass.route(enc["input_ids"], enc["attention_mask"])
        top[family] = pd.Series([FAMILIES[i] for i in probs.argmax(1).tolist()]).value_counts()
        kept[family] = sum(FAMILIES.index(family) in s for s in sets) / len(sets)
    confusion = pd.DataFrame(top).T.reindex(index=FAMILIES, columns=FAMILIES).fillna(0).astype(int)
    print("\nrouting confusion (rows: true family, columns: most probable task)\n" + confusion.to_string())
    print("true task among the kept ones:", {f: round(v, 2) for f, v in kept.items()})
    for family in FAMILIES:
        assert confusion.loc[family].idxmax() == family
        assert kept[family] >= 0.75


def test_routing_can_move_to_another_block_without_rebuilding(llama_family):
    from evo_merge.mass import MassModel

    base, endpoints = llama_family
    mass = MassModel.from_checkpoints(base, endpoints, layer=0)
    ids = torch.randint(3, 100, (4, 7), generator=torch.Generator().manual_seed(1))
    at0 = mass.routed_state(ids)
    mass.set_routing(1, max_tasks=1)
    assert mass.routing.weight == "model.layers.1.mlp.gate_proj.weight" and mass.routing.threshold == 0.2
    assert not torch.allclose(mass.routed_state(ids), at0)
    assert all(len(s) == 1 for s in mass.route(ids)[1])
    with pytest.raises(UserError, match="layer 2 is out of range"):
        mass.set_routing(2)
    with pytest.raises(UserError, match="max_tasks"):
        mass.set_routing(max_tasks=0)


def test_the_mass_build_command_offers_the_search_s_defaults():
    """`mass build` keeps its defaults as literals (its module must load without torch, and the
    merge floor's table imports it): they are the table's, which RoutingConfig reads too."""
    from evo_merge.cli.mass import build
    from evo_merge.mass.routing import RoutingConfig
    from evo_merge.merge.kinds import MASS_SETTINGS, MASS_TOKENS

    options = {p.name: p for p in build.params}
    for name in ("threshold", "max_tasks"):
        assert options[name].default == MASS_SETTINGS[name].default == RoutingConfig.model_fields[name].default
    assert tuple(options["token"].type.choices) == MASS_TOKENS and options["token"].default == MASS_TOKENS[0]
    import inspect

    from evo_merge.mass import MassModel

    built = inspect.signature(MassModel.from_checkpoints).parameters  # the library's MASS folders too
    assert [built[n].default for n in ("threshold", "max_tasks", "token")] == [
        options["threshold"].default, options["max_tasks"].default, MASS_TOKENS[0]]


@pytest.mark.parametrize("padding", ["left", "right", "right-nomask"])
def test_last_token_routing_reads_each_row_s_last_real_token(llama_family, padding):
    """`token: last` routes on the hidden state (entering the routing block's MLP) at each row's last
    real token, wherever the padding sits: left padding puts the first real token elsewhere than the
    last, which a router reading the first real one would confuse (audit 134, F7)."""
    from evo_merge.mass import MassModel

    base, endpoints = llama_family
    mass = MassModel.from_checkpoints(base, endpoints, layer=1, token="last")
    gen = torch.Generator().manual_seed(3)
    rows = [torch.randint(3, 100, (n,), generator=gen).tolist() for n in (4, 9, 6)]
    width = max(map(len, rows))
    pads = [[0] * (width - len(r)) for r in rows]
    ids = torch.tensor([p + r if padding == "left" else r + p for r, p in zip(rows, pads)])
    mask = torch.tensor([[0] * len(p) + [1] * len(r) if padding == "left" else [1] * len(r) + [0] * len(p)
                         for r, p in zip(rows, pads)])
    routed = mass.routed_state(ids, None if padding == "right-nomask" else mask)

    captured = []  # reference: each row alone, unpadded (routed_state left all tasks loaded), its last position
    handle = mass.module.model.layers[1].mlp.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            for row in rows:
                mass.module(input_ids=torch.tensor([row]), use_cache=False)
    finally:
        handle.remove()
    want = torch.stack([h[0, -1] for h in captured]).float()
    assert not torch.allclose(want, torch.stack([h[0, 0] for h in captured]).float(), atol=1e-2)
    torch.testing.assert_close(routed, want, rtol=1e-4, atol=1e-5)
