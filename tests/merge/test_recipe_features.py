"""Published-style recipes: slices, gradients, filters, tokenizer union, LoRA inputs, Hub ids, bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner
from hub_layout import save_to_hub_cache  # tests/ is on sys.path (its conftest)
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evo_merge.cli import cli
from evo_merge.merge.inplace import InPlaceMerger
from evo_merge.weights import Checkpoint
from evo_merge.zoo.tiny import make_tiny_causal_lm, tie_embeddings
from evo_merge.zoo.tokenizer import build_char_tokenizer

LAYERS = 4
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A 4-layer Llama base, two perturbed copies, and a copy whose tokenizer adds chat tokens."""
    root = tmp_path_factory.mktemp("deep")
    tokenizer = build_char_tokenizer()
    base = make_tiny_causal_lm("llama", vocab_size=len(tokenizer), layers=LAYERS, seed=3)
    paths = {"base": _save(base, tokenizer, root / "base")}
    gen = torch.Generator().manual_seed(5)
    for name in ("ft1", "ft2"):
        model = make_tiny_causal_lm("llama", vocab_size=len(tokenizer), layers=LAYERS, seed=3)
        model.load_state_dict({k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in base.state_dict().items()})
        paths[name] = _save(model, tokenizer, root / name)
    paths["chat"] = _with_chat_tokens(paths["ft2"], root / "chat", 0.5)
    return paths


def _with_chat_tokens(folder, out, value):
    """A copy of a model with the two CHAT_TOKENS added, their embedding rows `value` and -`value`."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": CHAT_TOKENS})
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[-2:] = torch.tensor([[value] * 32, [-value] * 32])
    return _save(model, tokenizer, out)


def tensors_of(folder):
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def merge(tmp_path, recipe, name="out"):
    file = tmp_path / f"{name}.yaml"
    file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / name
    result = CliRunner().invoke(cli, ["merge", str(file), "--out", str(out)])
    return result, out


def rebuilds_bit_for_bit(folder, tmp_path):
    again = tmp_path / f"{folder.name}-again"
    result = CliRunner().invoke(cli, ["merge", str(folder / "merge_recipe.yaml"), "--out", str(again)])
    assert result.exit_code == 0, result.output
    first, second = tensors_of(folder), tensors_of(again)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def generates(folder):
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("12+30=", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    return out.shape == (1, ids.shape[1] + 3)


def test_gradient_and_filter_follow_mergekits_rule(deep, tmp_path):
    recipe = {"merge_method": "task_arithmetic", "base_model": str(deep["base"]), "models": [
        {"model": str(deep["ft1"]), "parameters": {"weight": [{"filter": "self_attn", "value": 0.25},
                                                             {"value": [0.0, 1.0]}]}}]}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 0, result.output
    merged, base, ft = tensors_of(out), tensors_of(deep["base"]), tensors_of(deep["ft1"])
    for name, tensor in merged.items():
        if "self_attn" in name:
            weight = 0.25
        elif ".layers." in name:
            weight = int(name.split(".layers.")[1].split(".")[0]) / (LAYERS - 1)  # t = i / (n - 1)
        else:
            weight = 0.0  # outside the layers t = 0: the first anchor
        assert torch.allclose(tensor, base[name] + weight * (ft[name] - base[name]), atol=1e-6), name


def test_slices_stack_layers_renumbered_and_merge_per_slice(deep, tmp_path):
    recipe = {"merge_method": "linear", "slices": [
        {"sources": [{"model": str(deep["ft1"]), "layer_range": [0, 3]}]},
        {"sources": [{"model": str(deep["ft1"]), "layer_range": [2, 4], "parameters": {"weight": 0.25}},
                     {"model": str(deep["ft2"]), "layer_range": [1, 3], "parameters": {"weight": 0.75}}]},
    ]}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 0, result.output
    merged, f1, f2 = tensors_of(out), tensors_of(deep["ft1"]), tensors_of(deep["ft2"])
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 5
    q = "model.layers.{}.self_attn.q_proj.weight"
    assert torch.equal(merged[q.format(2)], f1[q.format(2)])
    assert torch.allclose(merged[q.format(4)], 0.25 * f1[q.format(3)] + 0.75 * f2[q.format(2)], atol=1e-6)
    assert torch.allclose(merged["lm_head.weight"], 0.25 * f1["lm_head.weight"] + 0.75 * f2["lm_head.weight"],
                          atol=1e-6)  # after the layers: from the last slice
    assert torch.equal(merged["model.embed_tokens.weight"], f1["model.embed_tokens.weight"])  # the first slice
    assert generates(out) and rebuilds_bit_for_bit(out, tmp_path)


def test_a_stack_of_slices_takes_each_layer_s_type_from_the_layer_it_copies(tmp_path):
    """Gemma2 (as Qwen2, Gemma3, Cohere2) lists each layer's attention in `layer_types`, which
    transformers checks against the layer count: with the count alone, a stack was written that
    transformers refused to load, and a layer's sliding window must follow the layer copied."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tokenizer = build_char_tokenizer()
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, sliding_window=4)
    assert config.layer_types == ["sliding_attention", "full_attention"] * 2
    torch.manual_seed(0)
    folders = [_save(Gemma2ForCausalLM(config), tokenizer, tmp_path / name) for name in ("a", "b")]
    recipe = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(folders[0]), "layer_range": [0, 2]}]},
        {"sources": [{"model": str(folders[1]), "layer_range": [1, 4]}]},
    ]}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 0, result.output
    written = json.loads((out / "config.json").read_text())
    assert written["num_hidden_layers"] == 5
    assert written["layer_types"] == ["sliding_attention", "full_attention", "full_attention", "sliding_attention",
                                      "full_attention"]
    assert AutoModelForCausalLM.from_pretrained(out).config.layer_types == written["layer_types"]


def _opt(projected: bool):
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                                    num_attention_heads=2, max_position_embeddings=32,
                                    word_embed_proj_dim=8 if projected else 16))


def _bloom(_):
    from transformers import BloomConfig, BloomForCausalLM

    return BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=16, n_layer=2, n_head=2))


@pytest.mark.parametrize(("build", "projected", "first"), [
    (_opt, False, ["model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight"]),
    (_opt, True, ["model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight",
                  "model.decoder.project_in.weight"]),  # opt-350m: the embeddings projected to the blocks' width
    (_bloom, False, ["transformer.word_embeddings.weight", "transformer.word_embeddings_layernorm.weight",
                     "transformer.word_embeddings_layernorm.bias"]),
], ids=["opt", "opt-projected", "bloom"])
def test_a_stack_of_slices_takes_what_comes_before_the_blocks_from_the_first_slice(tmp_path, build, projected, first):
    """OPT's position table (`embed_positions`) came from the last slice's model beside the first's
    token table: a model no one trained. Everything before block 0 comes from the first slice, as
    GPT-2's `wpe` does: BLOOM's embedding norm too (a substring test had it; the tables lacked it)."""
    folders = []
    for seed, name in enumerate(("a", "b")):
        torch.manual_seed(seed)
        model = build(projected)
        with torch.no_grad():  # a trained model's norms are not all ones: the two models' must differ
            for tensor in model.parameters():
                tensor.normal_()
        model.save_pretrained(tmp_path / name)
        folders.append(tmp_path / name)
    recipe = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(folders[0]), "layer_range": [0, 1]}]},
        {"sources": [{"model": str(folders[1]), "layer_range": [1, 2]}]},
    ]}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 0, result.output
    merged, a, b = tensors_of(out), tensors_of(folders[0]), tensors_of(folders[1])
    for name in first:
        assert torch.equal(merged[name], a[name]) and not torch.equal(a[name], b[name]), name
    after = [n for n in merged if n not in first and "layers" not in n and ".h." not in n and n in b]
    assert after and all(torch.equal(merged[n], b[n]) for n in after), after  # the final norm, the head


@pytest.mark.parametrize(("dense", "step", "expected"), [([1], 1, [1, 2]), ([], 2, [1])])
def test_a_stack_of_mixture_of_experts_layers_keeps_each_layer_dense_or_sparse(tmp_path, dense, step, expected):
    """Qwen-MoE chooses its dense layers by index (`mlp_only_layers`, every `decoder_sparse_step`-th
    layer sparse): copied as it was, a stack that moved a dense layer had transformers build a
    sparse one there, its experts initialised at random, and drop the copied weights with a warning."""
    from transformers import Qwen2MoeConfig

    config = Qwen2MoeConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, num_experts=3, num_experts_per_tok=2,
                            moe_intermediate_size=8, shared_expert_intermediate_size=16, mlp_only_layers=dense,
                            decoder_sparse_step=step, tie_word_embeddings=False)
    torch.manual_seed(0)
    folders = [tmp_path / name for name in ("a", "b")]
    for folder in folders:
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    # a: layers 0-1, then b's layer 1 (dense with mlp_only_layers [1]); or a's layer 1 (sparse at step 2) then 0
    ranges = [[0, 2], [1, 2]] if dense else [[1, 2], [0, 1]]
    recipe = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(folders[0]), "layer_range": ranges[0]}]},
        {"sources": [{"model": str(folders[1 if dense else 0]), "layer_range": ranges[1]}]},
    ]}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 0, result.output
    written = json.loads((out / "config.json").read_text())
    assert (written["mlp_only_layers"], written["decoder_sparse_step"]) == (expected, 1)
    model, loading = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    stored = tensors_of(out)
    for layer in expected:  # the dense layers hold the copied dense weights
        assert torch.equal(model.model.layers[layer].mlp.gate_proj.weight,
                           stored[f"model.layers.{layer}.mlp.gate_proj.weight"])


def test_a_stack_that_moves_layers_chosen_by_index_otherwise_is_refused(deep, tmp_path):
    """DeepSeek's dense layers are its first `first_k_dense_replace`: no list can restate a moved one."""
    donor = tmp_path / "donor"
    shutil.copytree(deep["base"], donor)
    config = json.loads((donor / "config.json").read_text())
    (donor / "config.json").write_text(json.dumps({**config, "first_k_dense_replace": 1}))
    recipe = {"merge_method": "passthrough", "slices": [{"sources": [{"model": str(donor), "layer_range": r}]}
                                                        for r in ([1, 2], [0, 1])]}
    result, _ = merge(tmp_path, recipe)
    assert result.exit_code == 2
    assert "config.json 'first_k_dense_replace' chooses layers by their index" in result.output
    recipe["slices"] = [{"sources": [{"model": str(donor), "layer_range": [0, LAYERS]}]}]  # nothing moved
    assert merge(tmp_path, recipe, name="whole")[0].exit_code == 0


def _lora_adapter(model_dir, out, seed=0, targets=("q_proj", "v_proj", "down_proj"), **options):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False, **options)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    return peft_model.merge_and_unload().state_dict()


@pytest.mark.parametrize(("file", "content", "expected"), [
    ("adapter_config.json", b"{not json", "not valid JSON"),
    ("adapter_config.json", b"[4]", "expected a JSON object"),
    ("adapter_model.safetensors", b"\x10" + b"\0" * 7 + b"{}", "not a readable safetensors"),
    # wrong types in the config were a TypeError, AttributeError or re.error traceback
    ("adapter_config.json", b'{"lora_alpha": "eight"}', "lora_alpha: expected a number, got 'eight'"),
    ("adapter_config.json", b'{"lora_alpha": true}', "lora_alpha: expected a number, got True"),
    ("adapter_config.json", b'{"alpha_pattern": {"up_proj": "x"}}', "alpha_pattern.up_proj: expected a number"),
    ("adapter_config.json", b'{"alpha_pattern": [1, 2]}', "alpha_pattern: expected a mapping"),
    ("adapter_config.json", b'{"alpha_pattern": {"up_proj(": 3}}', "alpha_pattern: 'up_proj(' is not a regular"),
    # a pattern that backtracks without end hung the merge (audit 95; `re` took 0.6 s on 18 of its 26 characters)
    ("adapter_config.json", b'{"alpha_pattern": {"(\\\\w|[a-z]|.)*\\\\.\\\\d\\\\.X": 3}}',
     "alpha_pattern: '(\\\\w|[a-z]|.)*\\\\.\\\\d\\\\.X' took over 1 s to match module "
     "'model.layers.0.mlp.up_proj': a pattern that backtracks without end, refused"),
    # an adapter of nothing merged as the bare model, as if applied
    ("adapter_model.safetensors", b"\x02\0\0\0\0\0\0\0{}", "holds no LoRA matrices"),
])
@pytest.mark.timeout(60)  # the backtracking pattern, without its 1 s limit, hangs: a failure, not a stuck run
def test_a_malformed_lora_adapter_file_is_one_line_naming_it(deep, tmp_path, file, content, expected):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file({"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(2, 32),
               "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": torch.zeros(64, 2)},
              adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    (adapter / file).write_bytes(content)
    result, out = merge(tmp_path, {"merge_method": "linear", "models": [{"model": f"{deep['ft1']}+{adapter}"}]})
    assert result.exit_code == 2 and "Traceback" not in result.output
    line, = result.output.strip().splitlines()
    assert f"{adapter / file}: {expected}" in line
    assert not out.exists()


def test_an_adapter_config_without_lora_alpha_scales_by_peft_s_default_alpha(deep, tmp_path):
    """peft's LoraConfig defaults lora_alpha to 8: the update is (8 / r) B A, not B A (alpha = r)."""
    expected = _lora_adapter(deep["ft1"], tmp_path / "adapter")  # r 4, lora_alpha 8: scale 2
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({k: v for k, v in config.items() if k != "lora_alpha"}))
    lora = f"{deep['ft1']}+{tmp_path / 'adapter'}"
    result, out = merge(tmp_path, {"merge_method": "linear", "models": [{"model": lora}]})
    assert result.exit_code == 0, result.output
    for name, tensor in tensors_of(out).items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name


def test_lora_input_equals_peft_merge_and_shape_mismatch_exits_2(deep, tmp_path):
    expected = _lora_adapter(deep["ft1"], tmp_path / "adapter")
    recipe = {"merge_method": "linear", "models": [{"model": f"{deep['ft1']}+{tmp_path / 'adapter'}"}]}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 0, result.output
    merged = tensors_of(out)
    assert any(not torch.allclose(expected[k], tensors_of(deep["ft1"])[k]) for k in merged)  # the adapter changes it
    for name, tensor in merged.items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name
    assert "+" in yaml.safe_load((out / "merge_recipe.yaml").read_text())["models"][0]["model"]

    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    key = next(k for k in weights if "lora_A" in k)
    weights[key] = torch.zeros(4, 7)
    save_file(weights, tmp_path / "adapter" / "adapter_model.safetensors")
    result, bad = merge(tmp_path, recipe, "bad")
    assert result.exit_code == 2 and "adapter for" in result.output and "Traceback" not in result.output
    assert not bad.exists()


def test_an_rslora_adapter_is_scaled_by_alpha_over_the_root_of_r_as_peft_merges_it(deep, tmp_path):
    """use_rslora scales the update by alpha / sqrt(r) (8 / 2 = 4 here), not alpha / r (2): read as
    plain LoRA, the adapter was folded in at half its strength without a word."""
    expected = _lora_adapter(deep["ft1"], tmp_path / "adapter", use_rslora=True)
    result, out = merge(tmp_path, {"merge_method": "linear", "dtype": "float32",
                                   "models": [{"model": f"{deep['ft1']}+{tmp_path / 'adapter'}"}]})
    assert result.exit_code == 0, result.output
    for name, tensor in tensors_of(out).items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name


@pytest.mark.parametrize("targets", [("attn.c_proj",), ("c_attn", "mlp.c_proj")])
def test_a_gpt2_conv1d_adapter_is_folded_transposed_as_peft_merges_it(tmp_path, targets):
    """GPT-2's Conv1D stores its weight as (in, out), and peft saves its adapters with
    fan_in_fan_out: B A must be transposed before it is added. On a square layer (attn.c_proj,
    32 x 32) the untransposed update fits the shape and was added without a word."""
    model = make_tiny_causal_lm("gpt2", vocab_size=64, hidden=32, layers=2, seed=1)
    model.save_pretrained(tmp_path / "gpt2")
    expected = _lora_adapter(tmp_path / "gpt2", tmp_path / "adapter", targets=targets, fan_in_fan_out=True)
    result, out = merge(tmp_path, {"merge_method": "linear", "dtype": "float32",
                                   "models": [{"model": f"{tmp_path / 'gpt2'}+{tmp_path / 'adapter'}"}]})
    assert result.exit_code == 0, result.output
    merged, before = tensors_of(out), tensors_of(tmp_path / "gpt2")
    changed = f"transformer.h.0.{targets[-1]}.weight"
    assert not torch.allclose(merged[changed], before[changed])  # the adapter changes it
    for name, tensor in merged.items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name


def test_an_alpha_pattern_alternation_scales_every_module_it_names_as_peft_does(deep, tmp_path):
    """`{"q_proj|v_proj": 32}`: peft matches `(.*\\.)?(q_proj|v_proj)$`; without the group the
    alternation matched v_proj only as a bare name, and v_proj folded at alpha 8 (off by 1.7)."""
    expected = _lora_adapter(deep["ft1"], tmp_path / "adapter", alpha_pattern={"q_proj|v_proj": 32})
    result, out = merge(tmp_path, {"merge_method": "linear",
                                   "models": [{"model": f"{deep['ft1']}+{tmp_path / 'adapter'}"}]})
    assert result.exit_code == 0, result.output
    merged = tensors_of(out)
    assert any("v_proj" in name for name in merged)
    for name, tensor in merged.items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name


def test_a_lora_bias_is_added_to_the_layer_s_bias_as_peft_merge_and_unload_adds_it(deep, tmp_path):
    """An adapter trained with `lora_bias` stores `lora_B.bias`: it was read as the B matrix and
    overwritten by it, so the bias update was dropped without a word. It is added times alpha / r;
    an adapter adding a bias to a layer that has none is refused (peft refuses to merge it)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    base = _save(Qwen2ForCausalLM(config), tokenizer, tmp_path / "qwen")  # q/k/v projections have biases
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], lora_bias=True,
                                           init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    assert any(k.endswith("q_proj.lora_B.bias") for k in load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                         tmp_path / "adapter").merge_and_unload().state_dict()
    result, out = merge(tmp_path, {"merge_method": "linear", "models": [{"model": f"{base}+{tmp_path / 'adapter'}"}]})
    assert result.exit_code == 0, result.output
    merged, bias = tensors_of(out), "model.layers.0.self_attn.q_proj.bias"
    assert not torch.allclose(merged[bias], tensors_of(base)[bias], atol=1e-3)  # the adapter moved the bias
    for name, tensor in merged.items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name

    adapter = tmp_path / "llama-adapter"
    adapter.mkdir()
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(32, 4),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias": torch.ones(32)},
              adapter / "adapter_model.safetensors")
    shutil.copy(tmp_path / "adapter" / "adapter_config.json", adapter)
    result, bad = merge(tmp_path, {"merge_method": "linear", "models": [{"model": f"{deep['ft1']}+{adapter}"}]}, "bad")
    assert result.exit_code == 2 and not bad.exists(), result.output
    assert result.output.strip().splitlines()[-1].endswith(
        f"{adapter / 'adapter_model.safetensors'}: adds a bias to model.layers.0.self_attn.q_proj (lora_bias), "
        f"whose layer in {deep['ft1']} has none")


def _adapter_with_whole_tensors(trained_on, out, kind):
    """A LoRA adapter saved with peft's defaults that also stores whole tensors: the embedding it
    adapts (`...embed_tokens.base_layer.weight`) or a `modules_to_save` head (`...lm_head.weight`)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(trained_on)
    if kind == "embedding":
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"], init_lora_weights=False)
    else:
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"],
                            init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    if kind == "modules_to_save":
        with torch.no_grad():  # the trained copy of the head, unlike the one of the model it is applied to
            peft_model.base_model.model.lm_head.modules_to_save["default"].weight.add_(0.1)
    peft_model.save_pretrained(out)
    return load_file(out / "adapter_model.safetensors")


@pytest.mark.parametrize("kind", ["embedding", "modules_to_save"])
def test_lora_adapter_whole_tensors_replace_the_model_s_as_peft_merge_and_unload(deep, tmp_path, kind):
    from peft import PeftModel

    saved = _adapter_with_whole_tensors(deep["base"], tmp_path / "adapter", kind)
    whole = "model.embed_tokens.weight" if kind == "embedding" else "lm_head.weight"
    assert any(k.endswith("base_layer.weight") if kind == "embedding" else k == f"base_model.model.{whole}"
               for k in saved)  # peft's defaults stored the whole tensor
    ft1 = AutoModelForCausalLM.from_pretrained(deep["ft1"])
    expected = PeftModel.from_pretrained(ft1, tmp_path / "adapter").merge_and_unload().state_dict()
    result, out = merge(tmp_path, {"merge_method": "linear",
                                   "models": [{"model": f"{deep['ft1']}+{tmp_path / 'adapter'}"}]})
    assert result.exit_code == 0, result.output
    merged = tensors_of(out)
    assert merged.keys() == tensors_of(deep["ft1"]).keys()
    for name, tensor in merged.items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name
    assert not torch.allclose(merged[whole], tensors_of(deep["ft1"])[whole], atol=1e-3)  # the adapter's, not ft1's

    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    weights["base_model.model.model.no_such.weight"] = torch.zeros(2)
    save_file(weights, tmp_path / "adapter" / "adapter_model.safetensors")
    result, bad = merge(tmp_path, {"merge_method": "linear",
                                   "models": [{"model": f"{deep['ft1']}+{tmp_path / 'adapter'}"}]}, "bad")
    assert result.exit_code == 2 and "no_such.weight is neither a LoRA A/B matrix" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not bad.exists()

    # a whole tensor of another shape (a resized vocabulary) was taken in, and the merge went on
    key = next(k for k in saved if k.endswith("base_layer.weight") or k == f"base_model.model.{whole}")
    saved[key] = torch.zeros(saved[key].shape[0] + 2, saved[key].shape[1])
    save_file(saved, tmp_path / "adapter" / "adapter_model.safetensors")
    result, bad = merge(tmp_path, {"merge_method": "linear",
                                   "models": [{"model": f"{deep['ft1']}+{tmp_path / 'adapter'}"}]}, "resized")
    assert result.exit_code == 2 and not bad.exists(), result.output
    expected_shape = list(tensors_of(deep["ft1"])[whole].shape)
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'resized.yaml'}: {tmp_path / 'adapter' / 'adapter_model.safetensors'}: {key} has shape "
        f"{[expected_shape[0] + 2, expected_shape[1]]} but the model's {whole} is {expected_shape}"]


def test_a_tied_model_s_input_embedding_stands_in_for_its_missing_output_head(deep, tmp_path):
    tied = tie_embeddings(deep["ft1"], tmp_path / "tied")
    result, out = merge(tmp_path, {"merge_method": "task_arithmetic", "base_model": str(deep["base"]),
                                   "models": [{"model": str(tied), "parameters": {"weight": 0.5}}]})
    assert result.exit_code == 0, result.output
    merged, base, ft = tensors_of(out), tensors_of(deep["base"]), tensors_of(deep["ft1"])
    assert merged.keys() == base.keys()
    head = base["lm_head.weight"] + 0.5 * (ft["model.embed_tokens.weight"] - base["lm_head.weight"])  # as mergekit
    assert torch.allclose(merged["lm_head.weight"], head, atol=1e-6)
    for name in base.keys() - {"lm_head.weight"}:
        assert torch.allclose(merged[name], base[name] + 0.5 * (ft[name] - base[name]), atol=1e-6), name
    assert generates(out)


def test_an_endpoint_s_own_head_is_merged_into_an_untied_output_when_the_base_is_tied(deep, tmp_path):
    tied_base = tie_embeddings(deep["base"], tmp_path / "tied-base")
    result, out = merge(tmp_path, {"merge_method": "task_arithmetic", "base_model": str(tied_base),
                                   "models": [{"model": str(deep["ft1"]), "parameters": {"weight": 0.5}}]})
    assert result.exit_code == 0, result.output
    merged, base, ft = tensors_of(out), tensors_of(deep["base"]), tensors_of(deep["ft1"])
    embedding = base["model.embed_tokens.weight"]  # the tied base's head
    expected = {name: base[name] + 0.5 * (ft[name] - base[name]) for name in base.keys() - {"lm_head.weight"}}
    expected["lm_head.weight"] = embedding + 0.5 * (ft["lm_head.weight"] - embedding)
    assert merged.keys() == expected.keys()
    assert all(torch.allclose(merged[n], expected[n], atol=1e-6) for n in expected)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    model = AutoModelForCausalLM.from_pretrained(out)
    hand = AutoModelForCausalLM.from_config(model.config)
    hand.load_state_dict(expected)
    ids = torch.tensor([[1, 20, 33, 7]])
    assert torch.allclose(model(ids).logits, hand(ids).logits, atol=1e-5)
    assert rebuilds_bit_for_bit(out, tmp_path)


def test_a_head_copy_stored_by_a_tied_endpoint_keeps_the_output_tied(deep, tmp_path):
    tied_base = tie_embeddings(deep["base"], tmp_path / "tied-base")
    copy = tie_embeddings(deep["ft1"], tmp_path / "tied-ft", store_head=True)
    result, out = merge(tmp_path, {"merge_method": "task_arithmetic", "base_model": str(tied_base),
                                   "models": [{"model": str(copy)}]})
    assert result.exit_code == 0, result.output
    assert tensors_of(out).keys() == tensors_of(tied_base).keys()  # no head stored: tied, like its inputs
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True


def test_a_seeded_merge_of_a_base_storing_its_tied_head_exports_the_candidate_the_search_scored(deep, tmp_path):
    """A tied base that stores a copy of its head: the file merge planned the copy as a tensor of
    its own, and DARE drew its mask by the tensor's name, so the exported head (which transformers
    loads as stored) was not the merged embedding the in-place candidate computes with."""
    base = tie_embeddings(deep["base"], tmp_path / "tied-base", store_head=True)
    ends = [tie_embeddings(deep["ft1"], tmp_path / "tied-ft1", store_head=True),
            tie_embeddings(deep["ft2"], tmp_path / "tied-ft2")]
    weights, params = [0.6, 0.5], {"density": 0.5}
    models = [{"model": str(e), "parameters": {"weight": w}} for e, w in zip(ends, weights)]
    result, out = merge(tmp_path, {"merge_method": "dare_linear", "base_model": str(base), "parameters": params,
                                   "models": models})
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    exported = AutoModelForCausalLM.from_pretrained(out)
    candidate = AutoModelForCausalLM.from_pretrained(base)
    merger = InPlaceMerger(candidate, Checkpoint.open(base), [Checkpoint.open(e) for e in ends])
    merger.apply("dare_linear", weights, params)
    state = candidate.state_dict()
    assert all(torch.equal(t, state[n]) for n, t in exported.state_dict().items())
    assert torch.equal(exported.lm_head.weight, exported.model.embed_tokens.weight)


def test_tokenizer_source_resolves_against_the_recipe_s_folder_and_is_saved_resolved(deep, tmp_path):
    project = tmp_path / "project"
    for name in ("base", "ft1", "chat"):
        shutil.copytree(deep[name], project / name)
    recipe = {"merge_method": "linear", "models": [{"model": "./base"}, {"model": "./ft1"}],
              "tokenizer_source": "model:./chat"}
    result, out = merge(project, recipe)  # the recipe in project/, the working directory elsewhere
    assert result.exit_code == 0, result.output
    assert len(AutoTokenizer.from_pretrained(out)) == len(AutoTokenizer.from_pretrained(deep["chat"])) == 102
    saved = yaml.safe_load((out / "merge_recipe.yaml").read_text())
    assert saved["tokenizer_source"] == f"model:{(project / 'chat').resolve()}"
    assert rebuilds_bit_for_bit(out, tmp_path)


def test_models_of_different_vocabularies_without_a_tokenizer_source_are_told_of_one(deep, tmp_path):
    recipe = {"merge_method": "linear", "models": [{"model": str(deep["ft1"])}, {"model": str(deep["chat"])}]}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 2 and not out.exists()
    line, = result.output.strip().splitlines()
    assert "tokenizer vocabulary size differs between" in line and line.endswith(
        ": 100 vs 102; a `tokenizer_source` (union, base, model:NAME) merges such models row by token")


@pytest.mark.parametrize(("model", "expected"), [
    ("+{adapter}", "models.0.model: no model named before the '+' of '+{adapter}' (MODEL+ADAPTER)"),
    ("{ft1}+", "models.0.model: '{ft1}+' names no adapter after the '+' (MODEL+ADAPTER)"),
    # an adapter's Hub id is read as a model's: `org/name@` names no revision (it was taken for main)
    ("{ft1}+tiny-org/lora@", "models.0.model: 'tiny-org/lora@': '' is not a branch, tag or commit name of "
                             "tiny-org/lora"),
])
def test_a_model_and_adapter_reference_missing_either_part_is_named(deep, tmp_path, model, expected):
    """`+adapter` took the recipe's own folder for the model ("no weights in <recipe folder>")."""
    (tmp_path / "lora").mkdir()
    fill = {"adapter": tmp_path / "lora", "ft1": deep["ft1"]}
    recipe = {"merge_method": "linear", "models": [{"model": model.format(**fill)}, {"model": str(deep["ft2"])}]}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 2 and not out.exists()
    line, = result.output.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'out.yaml'}: {expected.format(**fill)}"), line


@pytest.mark.parametrize("role", ["base_model", "models"])
def test_a_lora_adapter_folder_given_as_a_model_is_told_to_follow_its_model(deep, tmp_path, role):
    """The `+` forgotten: the adapter's weights file was read as the model's, and the error named
    a tensor the adapter lacks (`lm_head.weight not found`) beside a warning to use `slices:`."""
    _lora_adapter(deep["base"], tmp_path / "adapter")
    adapter, ft = str(tmp_path / "adapter"), str(deep["ft1"])
    recipe = ({"merge_method": "task_arithmetic", "base_model": adapter, "models": [{"model": ft}]}
              if role == "base_model" else
              {"merge_method": "task_arithmetic", "base_model": str(deep["base"]), "models": [{"model": adapter}]})
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 2 and not out.exists()
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'out.yaml'}: {adapter} is a LoRA adapter (adapter_config.json), not a model: give it "
        "after the model it was trained on, as MODEL+ADAPTER"]


TOKEN_SOURCE_ERRORS = {
    "token_id beyond the model's rows": ({"kind": "model_token", "model": "{ft1}", "token_id": 5000},
                                         "token_id 5000 is outside the 100 embedding rows"),
    "a model outside the merge": ("{ft2}", "is not one of the merged models"),
    "a token the model lacks": ({"kind": "model_token", "model": "{ft1}", "token": "<nope>"},
                                "token '<nope>' is not in"),
    # each was "source.ZeroEmbedding.kind: Input should be 'zero'": another kind's complaint
    "a model token without its token": ({"kind": "model_token", "model": "{ft1}"},
                                        "give exactly one of token_id and token"),
    "an unknown kind": ({"kind": "what"}, "a token source's kind is 'zero' or 'model_token'"),
}


@pytest.mark.parametrize("case", sorted(TOKEN_SOURCE_ERRORS))
def test_token_sources_are_checked_before_merging(deep, tmp_path, case):
    source, expected = TOKEN_SOURCE_ERRORS[case]
    text = yaml.safe_dump(source).replace("{ft1}", str(deep["ft1"])).replace("{ft2}", str(deep["ft2"]))
    recipe = {"merge_method": "linear", "models": [{"model": str(deep["ft1"])}, {"model": str(deep["chat"])}],
              "tokenizer": {"source": "union", "tokens": {"<|im_start|>": {"source": yaml.safe_load(text)}}}}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 2, result.output
    assert "tokenizer.tokens.<|im_start|>.source" in result.output and expected in result.output, result.output
    assert "Embedding" not in result.output and "union" not in result.output  # no class of the schema named
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_published_style_recipe_with_union_tokenizer_lora_gradients_and_filters(deep, tmp_path):
    _lora_adapter(deep["ft1"], tmp_path / "adapter")
    recipe = {
        "merge_method": "ties", "base_model": str(deep["base"]),
        "slices": [{"sources": [
            {"model": str(deep["base"]), "layer_range": [0, 4]},
            {"model": f"{deep['ft1']}+{tmp_path / 'adapter'}", "layer_range": [0, 4],
             "parameters": {"density": [0.3, 0.9], "weight": [{"filter": "mlp", "value": 0.6}, {"value": 0.4}]}},
            {"model": str(deep["chat"]), "layer_range": [0, 4], "parameters": {"density": 0.5, "weight": 0.5}},
        ]}],
        "parameters": {"normalize": True, "int8_mask": True},
        "dtype": "float32", "out_dtype": "bfloat16",
        "tokenizer_source": "union", "chat_template": CHATML,
    }
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 0, result.output
    tokenizer = AutoTokenizer.from_pretrained(out)
    chat_tok = AutoTokenizer.from_pretrained(deep["chat"])
    assert all(tokenizer.convert_tokens_to_ids(t) == chat_tok.convert_tokens_to_ids(t) for t in CHAT_TOKENS)
    merged = tensors_of(out)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(tokenizer)
    embed = merged["model.embed_tokens.weight"].float()
    # only the chat model has the added tokens: every model gets its row, so the merge keeps it
    assert torch.allclose(embed[-2:], torch.tensor([[0.5] * 32, [-0.5] * 32]), atol=1e-2)
    assert merged["model.embed_tokens.weight"].dtype == torch.bfloat16
    text = tokenizer.apply_chat_template([{"role": "user", "content": "1+1"}], tokenize=False)
    assert text.startswith("<|im_start|>user")
    assert "special tokens" not in result.output  # the union has the template's tokens
    assert generates(out) and rebuilds_bit_for_bit(out, tmp_path)


def test_a_recipe_saved_by_mergekit_evolve_merges_rounding_each_step_as_mergekit(deep, tmp_path):
    """best_config.yaml as mergekit-evolve writes it: per-layer slices listing the base too,
    negative weights, int8_mask, normalize false, bfloat16. mergekit computes in the recipe's
    dtype, rounding the weighted task vectors, their sum and the final add; so must we."""
    weights = [(0.49, 1.04), (-0.32, -0.24)]  # slice -> (ft1, ft2)
    recipe = {"base_model": str(deep["base"]), "dtype": "bfloat16", "merge_method": "task_arithmetic",
              "parameters": {"int8_mask": True, "normalize": False},
              "slices": [{"sources": [{"layer_range": [2 * s, 2 * s + 2], "model": str(deep[ft]),
                                       "parameters": {"weight": w[t]}} for t, ft in enumerate(("ft1", "ft2"))]
                         + [{"layer_range": [2 * s, 2 * s + 2], "model": str(deep["base"])}]}
                         for s, w in enumerate(weights)]}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 0, result.output
    merged = tensors_of(out)
    base, ft1, ft2 = (tensors_of(deep[k]) for k in ("base", "ft1", "ft2"))
    fused_differs = False
    for name, tensor in merged.items():
        if not name.startswith("model.layers."):
            continue
        w1, w2 = weights[int(name.split(".")[2]) // 2]
        b = base[name].bfloat16()
        d1, d2 = ((ft[name].bfloat16() - b) * torch.tensor(w).bfloat16() for ft, w in ((ft1, w1), (ft2, w2)))
        mixed = (d1.float() + d2.float()).bfloat16()  # torch sums bfloat16 in float32, rounding once
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, b + mixed), name
        fused = (base[name] + w1 * (ft1[name] - base[name]) + w2 * (ft2[name] - base[name])).bfloat16()
        fused_differs |= not torch.equal(tensor, fused)
    assert fused_differs  # the steps' roundings show: float32 then one cast would not pass the check above


def test_union_tokenizer_needed_when_vocabularies_differ(deep, tmp_path):
    recipe = {"merge_method": "task_arithmetic", "base_model": str(deep["base"]),
              "models": [{"model": str(deep["chat"])}]}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 2 and "vocabulary size differs" in result.output
    recipe["tokenizer"] = {"source": "base"}
    result, out = merge(tmp_path, recipe, "base_vocab")
    assert result.exit_code == 0, result.output
    assert tensors_of(out)["model.embed_tokens.weight"].shape[0] == len(AutoTokenizer.from_pretrained(deep["base"]))
    # another model's tokenizer: tokens no merged model has get zero rows (mergekit's rule)
    recipe = {"merge_method": "task_arithmetic", "base_model": str(deep["base"]),
              "models": [{"model": str(deep["ft1"])}], "tokenizer_source": f"model:{deep['chat']}"}
    result, out = merge(tmp_path, recipe, "chat_vocab")
    assert result.exit_code == 0, result.output
    embed = tensors_of(out)["model.embed_tokens.weight"]
    assert embed.shape[0] == len(AutoTokenizer.from_pretrained(deep["chat"])) == 102
    assert torch.equal(embed[-2:], torch.zeros(2, 32)) and embed[:100].abs().sum() > 0


BAD = {
    "layer range out of range": (
        {"merge_method": "passthrough", "slices": [{"sources": [{"model": "{ft1}", "layer_range": [2, 9]}]}]},
        "slices.0.sources.0.layer_range",
    ),
    "empty gradient": (
        {
            "merge_method": "task_arithmetic",
            "base_model": "{base}",
            "models": [{"model": "{ft1}", "parameters": {"weight": []}}],
        },
        "weight: expected a value",
    ),
    "unknown key in a slice": (
        {
            "merge_method": "passthrough",
            "slices": [{"sources": [{"model": "{ft1}", "layer_range": [0, 2], "layers": 3}]}],
        },
        "slices.0.sources.0.layers: unknown key",
    ),
    "unknown method": ({"merge_method": "frankenmerge", "models": [{"model": "{ft1}"}]}, "unknown merge method"),
    "unknown filtered parameter": (
        {
            "merge_method": "ties",
            "base_model": "{base}",
            "models": [{"model": "{ft1}"}],
            "parameters": {"densty": [{"filter": "mlp", "value": 0.5}]},
        },
        "parameters.densty: unknown parameter",
    ),
    "filtered weights leaving tensors out": (  # merged at weight 1 without a word: mergekit refuses it
        {
            "merge_method": "task_arithmetic",
            "base_model": "{base}",
            "models": [{"model": "{ft1}", "parameters": {"weight": [{"filter": "mlp", "value": 1}]}}],
        },
        "models.0: no weight entry applies to tensor lm_head.weight; end each filtered weight list with",
    ),
    "models and slices": (
        {
            "merge_method": "linear",
            "models": [{"model": "{ft1}"}],
            "slices": [{"sources": [{"model": "{ft1}", "layer_range": [0, 2]}]}],
        },
        "exactly one of `models` and `slices`",
    ),
    "unknown chat format": (
        {"merge_method": "linear", "models": [{"model": "{ft1}"}], "chat_template": "vicuna"},
        "chat_template: 'vicuna' is neither `auto`, a named format (chatml, llama3",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipes_exit_2_with_the_key(deep, tmp_path, case):
    recipe, expected = BAD[case]
    text = yaml.safe_dump(recipe).replace("'{ft1}'", str(deep["ft1"])).replace("'{base}'", str(deep["base"]))
    text = text.replace("{ft1}", str(deep["ft1"])).replace("{base}", str(deep["base"]))
    (tmp_path / "bad.yaml").write_text(text)
    result = CliRunner().invoke(cli, ["merge", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert expected in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_hub_ids_resolve_offline_from_the_cache_and_missing_ones_exit_2(deep, tmp_path):
    repo, commit = save_to_hub_cache(tmp_path / "hub", deep["base"], "tiny-org/tiny-llama", "a" * 40)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    recipe = tmp_path / "hub.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "merge_method": "task_arithmetic",
                "base_model": repo,
                "models": [{"model": str(deep["ft1"]), "parameters": {"weight": 0.5}}],
            }
        )
    )
    def merge_offline(recipe_file, out):  # a fresh process under the offline Hub-cache environment
        return subprocess.run([sys.executable, "-m", "evo_merge", "merge", str(recipe_file), "--out", str(out)],
                              env=env, capture_output=True, text=True, check=False)

    done = merge_offline(recipe, tmp_path / "o")
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load((tmp_path / "o" / "merge_recipe.yaml").read_text())
    assert written["base_model"] == f"{repo}@{commit}"
    card = (tmp_path / "o" / "README.md").read_text()
    assert f"{repo}@{commit}" in card and "snapshots" not in card
    expected = {k: v + 0.5 * (tensors_of(deep["ft1"])[k] - v) for k, v in tensors_of(deep["base"]).items()}
    assert all(torch.allclose(t, expected[k], atol=1e-6) for k, t in tensors_of(tmp_path / "o").items())
    done = merge_offline(tmp_path / "o" / "merge_recipe.yaml", tmp_path / "again")
    assert done.returncode == 0, done.stderr
    assert all(torch.equal(t, tensors_of(tmp_path / "again")[k]) for k, t in tensors_of(tmp_path / "o").items())

    recipe.write_text(recipe.read_text().replace(repo, "tiny-org/not-cached"))
    done = merge_offline(recipe, tmp_path / "o2")
    assert done.returncode == 2 and "not in the local cache" in done.stderr and "Traceback" not in done.stderr
    assert "(`hf download tiny-org/not-cached` where the Hub can be reached fills the cache)" in done.stderr
    assert not (tmp_path / "o2").exists()


def _hub_merge(tmp_path, monkeypatch, model):
    """`merge` in this process of a linear recipe of `model` (a Hub id), offline from tmp_path/hub."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "hub.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "models": [{"model": model}]}))
    return CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "o")])


def test_a_hub_snapshot_of_links_into_its_blobs_merges_with_its_tokenizer(deep, tmp_path, monkeypatch):
    save_to_hub_cache(tmp_path / "hub", deep["base"], "tiny-org/linked", "c" * 40, linked=True)
    result = _hub_merge(tmp_path, monkeypatch, "tiny-org/linked")
    assert result.exit_code == 0, result.output
    assert all(torch.equal(t, tensors_of(deep["base"])[k]) for k, t in tensors_of(tmp_path / "o").items())
    for name in ("tokenizer.json", "config.json"):
        assert not (tmp_path / "o" / name).is_symlink()
    assert (tmp_path / "o" / "tokenizer.json").read_bytes() == (deep["base"] / "tokenizer.json").read_bytes()
    recipe = yaml.safe_load((tmp_path / "o" / "merge_recipe.yaml").read_text())
    assert recipe["models"][0]["model"] == f"tiny-org/linked@{'c' * 40}"



def test_a_folder_spelled_as_a_cached_hub_id_is_read_and_the_two_readings_are_said(deep, tmp_path, monkeypatch):
    """`org/name` is the folder `org/name` beside the recipe wherever one exists (a download with
    --local-dir leaves them), other weights than the Hub model in the cache: taken without a word,
    and the card then listed no Hub model (audit 137). @main reads the Hub model."""
    import shutil

    save_to_hub_cache(tmp_path / "hub", deep["base"], "tiny-org/shadowed", "c" * 40)
    shutil.copytree(deep["ft1"], tmp_path / "tiny-org" / "shadowed")
    result = _hub_merge(tmp_path, monkeypatch, "tiny-org/shadowed")
    assert result.exit_code == 0, result.output
    assert (f"warning: models.0.model: 'tiny-org/shadowed' is read as the folder {tmp_path / 'tiny-org' / 'shadowed'}, "
            "not as the Hub model tiny-org/shadowed in your cache; write tiny-org/shadowed@main for the Hub model, or "
            "./tiny-org/shadowed to say the folder is meant") in result.output, result.output
    assert all(torch.equal(t, tensors_of(deep["ft1"])[k]) for k, t in tensors_of(tmp_path / "o").items())
    shutil.rmtree(tmp_path / "o")
    hub = _hub_merge(tmp_path, monkeypatch, "tiny-org/shadowed@main")
    assert hub.exit_code == 0 and "warning" not in hub.output, hub.output
    assert all(torch.equal(t, tensors_of(deep["base"])[k]) for k, t in tensors_of(tmp_path / "o").items())
    shutil.rmtree(tmp_path / "o")
    meant = _hub_merge(tmp_path, monkeypatch, "./tiny-org/shadowed")
    assert meant.exit_code == 0 and "warning" not in meant.output, meant.output

@pytest.mark.parametrize("case", ["refs file", "snapshot link", "revision", "empty revision", "file link"])
def test_a_hub_id_resolving_outside_its_cache_folder_is_refused(deep, tmp_path, monkeypatch, case):
    commit = "d" * 40
    repo_dir = tmp_path / "hub" / "models--tiny-org--evil"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "snapshots").mkdir()
    model = "tiny-org/evil"
    if case == "refs file":  # snapshots/../../../elsewhere: a folder beside the cache
        shutil.copytree(deep["ft1"], tmp_path / "elsewhere")
        (repo_dir / "refs" / "main").write_text("../../../elsewhere")
        outside = tmp_path / "elsewhere"
    elif case == "snapshot link":
        (repo_dir / "refs" / "main").write_text(commit)
        (repo_dir / "snapshots" / commit).symlink_to(deep["ft1"])
        outside = deep["ft1"]
    elif case == "file link":  # the snapshot is the repo's own, but its weights are another model's
        (repo_dir / "refs" / "main").write_text(commit)
        (repo_dir / "snapshots" / commit).mkdir()
        for file in deep["ft1"].iterdir():
            if file.suffix == ".safetensors":
                (repo_dir / "snapshots" / commit / file.name).symlink_to(deep["ft2"] / file.name)
            else:
                shutil.copy(file, repo_dir / "snapshots" / commit / file.name)
    elif case == "empty revision":  # `org/name@` was taken for main
        (repo_dir / "refs" / "main").write_text(commit)
        shutil.copytree(deep["ft1"], repo_dir / "snapshots" / commit)
        model = "tiny-org/evil@"
    else:  # a revision naming another repo's refs file
        save_to_hub_cache(tmp_path / "hub", deep["ft1"], "tiny-org/other", commit)
        model = "tiny-org/evil@../../models--tiny-org--other/refs/main"
    result = _hub_merge(tmp_path, monkeypatch, model)
    assert result.exit_code == 2 and "Traceback" not in result.output
    line, = result.output.strip().splitlines()
    if case == "file link":
        assert f"models.0.model: Hub model {model}: its file model.safetensors links to {deep['ft2']}" in line
        assert "outside the repo's cache folder" in line
    elif case in ("revision", "empty revision"):
        revision = model.partition("@")[2]
        assert f"models.0.model: {model!r}: {revision!r} is not a branch, tag or commit name of tiny-org/" in line
    else:
        assert f"models.0.model: Hub model {model} resolves to {outside.resolve()}, not a commit's snapshot" in line
    assert not (tmp_path / "o").exists()


def test_token_sources_force_and_padding(deep, tmp_path):
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(deep["base"]),
        "models": [{"model": str(deep["ft1"])}, {"model": str(deep["chat"]), "parameters": {"weight": 0.5}}],
        "tokenizer": {
            "source": "union",
            "pad_to_multiple_of": 8,
            "tokens": {
                "<|im_start|>": {"source": {"kind": "zero"}, "force": True},
                "<|im_end|>": {"source": {"kind": "model_token", "model": str(deep["chat"]), "token": "1"}},
            },
        },
    }
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 0, result.output
    tokenizer = AutoTokenizer.from_pretrained(out)
    embed = tensors_of(out)["model.embed_tokens.weight"]
    assert embed.shape[0] == -(-len(tokenizer) // 8) * 8 > len(tokenizer)  # 102 tokens -> 104 rows
    start, end = tokenizer.convert_tokens_to_ids(CHAT_TOKENS)
    assert torch.equal(embed[start], torch.zeros(32))  # forced to zeros in every model
    chat = tensors_of(deep["chat"])["model.embed_tokens.weight"]
    one = AutoTokenizer.from_pretrained(deep["chat"]).convert_tokens_to_ids("1")
    # base and ft1 lack <|im_end|>: they take the chat model's row of "1"; the chat model keeps its own
    expected = chat[one] + 0.5 * (chat[end] - chat[one])
    assert torch.allclose(embed[end], expected, atol=1e-6)
    pad = embed[: len(tokenizer)].mean(0)  # padding rows: the mean row (the merge is linear per row)
    assert torch.allclose(embed[len(tokenizer) :], pad.expand(embed.shape[0] - len(tokenizer), -1), atol=1e-6)


def test_a_lora_adapter_given_as_a_hub_id_resolves_from_the_cache(deep, tmp_path):
    expected = _lora_adapter(deep["ft1"], tmp_path / "adapter")
    save_to_hub_cache(tmp_path / "hub", tmp_path / "adapter", "tiny-org/tiny-lora", "b" * 40)
    recipe = tmp_path / "lora.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear",
                                      "models": [{"model": f"{deep['ft1']}+tiny-org/tiny-lora"}]}))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "evo_merge", "merge", str(recipe), "--out", str(tmp_path / "o")],
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert all(torch.allclose(t, expected[k], atol=1e-6) for k, t in tensors_of(tmp_path / "o").items())
    written = yaml.safe_load((tmp_path / "o" / "merge_recipe.yaml").read_text())
    assert written["models"][0]["model"] == f"{deep['ft1']}+tiny-org/tiny-lora@{'b' * 40}"  # rebuilds anywhere
    # the adapter's repo is in the merge: the card lists it where the Hub's model tree reads (audit 137)
    front = yaml.safe_load((tmp_path / "o" / "README.md").read_text().split("---")[1])
    assert front["base_model"] == ["tiny-org/tiny-lora"] and front["base_model_relation"] == "merge"


def _two_stacks(folder, value):
    """A vision-language-like checkpoint: a 4-block decoder and an 8-block vision tower."""
    folder.mkdir()
    tensors = {f"model.layers.{i}.mlp.weight": torch.full((2, 2), value) for i in range(4)}
    tensors |= {f"visual.blocks.{i}.mlp.weight": torch.full((2, 2), value) for i in range(8)}
    save_file({**tensors, "model.embed_tokens.weight": torch.full((4, 2), value)}, folder / "model.safetensors")
    return folder


def test_a_gradient_runs_over_each_stack_of_blocks_on_its_own_and_slices_of_two_stacks_are_refused(tmp_path):
    base, tuned = _two_stacks(tmp_path / "base", 0.0), _two_stacks(tmp_path / "ft", 1.0)
    result, out = merge(tmp_path, {"merge_method": "task_arithmetic", "base_model": str(base),
                                   "models": [{"model": str(tuned), "parameters": {"weight": [0, 1]}}]})
    assert result.exit_code == 0, result.output
    merged = tensors_of(out)
    for stem, n in (("model.layers", 4), ("visual.blocks", 8)):  # t = i / (n - 1) within the block's own stack
        for i in range(n):
            assert torch.allclose(merged[f"{stem}.{i}.mlp.weight"], torch.full((2, 2), i / (n - 1))), (stem, i)
    result, out = merge(tmp_path, {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(tuned), "layer_range": [0, 2]}]}]}, "sliced")
    assert result.exit_code == 2 and "more than one stack of blocks" in result.output and not out.exists()


def test_a_slice_s_base_must_be_one_of_its_sources_but_passthrough_ignores_it(deep, tmp_path):
    sources = [{"model": str(deep["ft1"]), "layer_range": [0, 4]}, {"model": str(deep["ft2"]), "layer_range": [0, 4]}]
    result, out = merge(tmp_path, {"merge_method": "linear", "base_model": str(deep["base"]),
                                   "slices": [{"sources": sources}]})
    assert result.exit_code == 2 and "slices.0.sources: the base model" in result.output, result.output
    assert "Traceback" not in result.output
    stacked = {"slices": [{"sources": [sources[0] | {"layer_range": [0, 2]}]},
                          {"sources": [sources[1] | {"layer_range": [1, 4]}]}]}
    result, with_base = merge(tmp_path, {"merge_method": "passthrough", "base_model": str(deep["base"]), **stacked},
                              "with-base")
    assert result.exit_code == 0, result.output
    result, plain = merge(tmp_path, {"merge_method": "passthrough", **stacked}, "plain")
    assert result.exit_code == 0, result.output
    a, b = tensors_of(with_base), tensors_of(plain)  # mergekit's output for both (as checked against it)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_named_chat_format_is_written_into_the_tokenizer_and_the_recipe_keeps_its_name(deep, tmp_path):
    recipe = {"merge_method": "linear", "models": [{"model": str(deep["ft1"])}, {"model": str(deep["ft2"])}],
              "chat_template": "llama3"}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 0, result.output
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template([{"role": "user", "content": " 1+1 "}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == (f"{tokenizer.bos_token}<|start_header_id|>user<|end_header_id|>\n\n1+1<|eot_id|>\n"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert yaml.safe_load((out / "merge_recipe.yaml").read_text())["chat_template"] == "llama3"
    # no input has its markers as tokens: text by design, as Zephyr's `<|user|>` is (audit 139)
    assert "special tokens" not in result.output, result.output
    assert rebuilds_bit_for_bit(out, tmp_path)


def test_auto_takes_a_chat_fine_tune_s_template_and_says_the_base_tokenizer_lacks_its_tokens(deep, tmp_path):
    """A chat fine-tune merged onto the base's tokenizer: `auto` wrote its ChatML template over a
    vocabulary without <|im_start|>, and every prompt read as `<unk>`s, without a word (audit 137)."""
    import shutil

    chat = shutil.copytree(deep["chat"], tmp_path / "chat")
    tokenizer = AutoTokenizer.from_pretrained(chat)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(chat)
    recipe = {"merge_method": "task_arithmetic", "base_model": str(deep["base"]),
              "models": [{"model": str(chat), "parameters": {"weight": 0.5}},
                         {"model": str(deep["ft1"]), "parameters": {"weight": 0.5}}],
              "tokenizer_source": "base", "chat_template": "auto"}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 0, result.output
    assert AutoTokenizer.from_pretrained(out).chat_template == CHATML
    assert "warning: chat_template: its special tokens <|im_end|>, <|im_start|> are not in" in result.output
    recipe["tokenizer_source"] = "union"
    result, out = merge(tmp_path, recipe, "union")
    assert result.exit_code == 0 and "special tokens" not in result.output, result.output


def test_linear_averages_a_listed_base_at_its_weight_as_mergekit_does(deep, tmp_path):
    """mergekit's linear takes the weighted mean of every listed model, the base among them: it was
    dropped with its weight (the result (0.6 ft1 + 0.5 ft2) / 1.1). An unlisted base adds nothing."""
    b, f1, f2 = (tensors_of(deep[k]) for k in ("base", "ft1", "ft2"))
    models = [{"model": str(deep[k]), "parameters": {"weight": w}} for k, w in (("ft1", 0.6), ("ft2", 0.5))]
    listed = [{"model": str(deep["base"]), "parameters": {"weight": 0.2}}, *models]
    for name, entries, expected in (
        ("listed", listed, {k: (0.2 * b[k] + 0.6 * f1[k] + 0.5 * f2[k]) / 1.3 for k in b}),
        ("unlisted", models, {k: (0.6 * f1[k] + 0.5 * f2[k]) / 1.1 for k in b}),
    ):
        result, out = merge(tmp_path, {"merge_method": "linear", "base_model": str(deep["base"]), "models": entries,
                                       "dtype": "float32"}, name)
        assert result.exit_code == 0, result.output
        merged = tensors_of(out)
        for key, value in expected.items():
            torch.testing.assert_close(merged[key], value, rtol=0, atol=1e-6)
        rebuilds_bit_for_bit(out, tmp_path)
    result, out = merge(tmp_path, {"merge_method": "linear", "dtype": "float32", "models": [
        {"model": str(deep["ft1"]), "parameters": {"weight": 1.0}},
        {"model": str(deep["ft2"]), "parameters": {"weight": -1.0}}]}, "cancel")
    assert result.exit_code == 2 and "sum to 0, which normalize cannot divide by" in result.output, result.output
    assert not out.exists()  # was written: ft1 - ft2, as if an average


def test_task_arithmetic_with_normalize_divides_by_the_sum_of_weights(deep, tmp_path):
    """normalize: true is base + lambda * (w1 tau1 + w2 tau2) / (w1 + w2), as in mergekit. The file
    merge takes its own path (a scale per task vector): there, multiplying by the sum of weights
    instead of dividing gave a model 16 times too far from the base, with exit code 0."""
    b, f1, f2 = (tensors_of(deep[k]) for k in ("base", "ft1", "ft2"))
    result, out = merge(tmp_path, {"merge_method": "task_arithmetic", "base_model": str(deep["base"]),
                                   "parameters": {"normalize": True, "lambda": 0.5}, "dtype": "float32",
                                   "models": [{"model": str(deep["ft1"]), "parameters": {"weight": 1.0}},
                                              {"model": str(deep["ft2"]), "parameters": {"weight": 3.0}}]})
    assert result.exit_code == 0, result.output
    merged = tensors_of(out)
    assert merged.keys() == b.keys()
    for key in b:
        expected = b[key] + 0.5 * ((f1[key] - b[key]) + 3.0 * (f2[key] - b[key])) / 4.0
        torch.testing.assert_close(merged[key], expected, rtol=0, atol=1e-6)


def test_slerp_requires_t_and_lambda_takes_any_real_number_as_mergekit_does(deep, tmp_path):
    """slerp without `t` was merged at 0.5; a negative lambda (subtracting a task vector, to forget
    a skill) was refused as outside [0, 3], the search's domain, where mergekit takes it."""
    result, out = merge(tmp_path, {"merge_method": "slerp", "base_model": str(deep["base"]),
                                   "models": [{"model": str(deep["ft1"])}]}, "slerp")
    assert result.exit_code == 2 and "parameters.t: required by method slerp" in result.output, result.output
    result, out = merge(tmp_path, {"merge_method": "task_arithmetic", "base_model": str(deep["base"]),
                                   "models": [{"model": str(deep["ft1"])}], "parameters": {"lambda": -1.0},
                                   "dtype": "float32"}, "negated")
    assert result.exit_code == 0, result.output
    b, f1, merged = tensors_of(deep["base"]), tensors_of(deep["ft1"]), tensors_of(out)
    for key in b:
        torch.testing.assert_close(merged[key], b[key] - (f1[key] - b[key]), rtol=0, atol=1e-6)


def test_an_adapter_applied_to_another_folder_than_it_was_trained_on_says_so(deep, tmp_path, caplog):
    """A fine-tune of the same family shares every shape: the adapter folded in without a word."""
    _lora_adapter(deep["ft1"], tmp_path / "adapter")  # base_model_name_or_path: ft1's folder
    for model, warned in (("ft1", False), ("ft2", True)):
        caplog.clear()
        result, _ = merge(tmp_path, {"merge_method": "linear",
                                     "models": [{"model": f"{deep[model]}+{tmp_path / 'adapter'}"}]}, model)
        assert result.exit_code == 0, result.output
        lines = [r.getMessage() for r in caplog.records if "the adapter was trained on" in r.getMessage()]
        assert bool(lines) == warned, lines
        assert not warned or f"trained on {deep['ft1']}" in lines[0] and f"applied to {deep['ft2']}" in lines[0]
        # on the console marked as a warning, as the commands' own are (it printed bare, read as output)
        config = tmp_path / "adapter" / "adapter_config.json"
        assert (f"warning: {config}: the adapter was trained on" in result.output) == warned, result.output


def _copy_with(folder, out, edit_tensors=None, edit_vocab=None):
    """A copy of a model folder with its tensors (name -> tensor) or tokenizer.json vocabulary edited."""
    shutil.copytree(folder, out)
    if edit_tensors:
        file, = out.glob("*.safetensors")
        save_file(edit_tensors(load_file(file)), file, metadata={"format": "pt"})
    if edit_vocab:
        spec = json.loads((out / "tokenizer.json").read_text())
        spec["model"]["vocab"] = edit_vocab(spec["model"]["vocab"])
        (out / "tokenizer.json").write_text(json.dumps(spec))
    return out


def test_models_of_one_vocabulary_size_but_other_tokens_are_refused(deep, tmp_path):
    """Rows of one embedding are other tokens than another's at the same ids: merged row by row they
    averaged unrelated tokens without a word, where a campaign refused the same endpoints."""
    def swap(vocab):
        first, second = sorted(vocab, key=vocab.get)[5:7]
        return {**vocab, first: vocab[second], second: vocab[first]}
    other = _copy_with(deep["ft1"], tmp_path / "swapped", edit_vocab=swap)
    recipe = {"merge_method": "task_arithmetic", "base_model": str(deep["base"]),
              "models": [{"model": str(deep["ft2"])}, {"model": str(other)}]}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 2 and not out.exists()
    line, = result.output.strip().splitlines()
    assert f"tokenizers differ between {deep['base']} and {other}: token " in line
    assert line.endswith("a `tokenizer_source` (union, base, model:NAME) merges such models row by token")
    recipe["tokenizer"] = {"source": "base"}  # row by token: accepted
    assert merge(tmp_path, recipe, "by_token")[0].exit_code == 0


def test_an_endpoint_s_tensors_the_first_model_lacks_are_named_as_left_out(deep, tmp_path, caplog):
    """A deeper endpoint merged onto the base: the merge follows the base's tensors, as mergekit's
    does, so its last layer was dropped without a word; a tensor only RoPE computes is no such loss."""
    model = make_tiny_causal_lm("llama", vocab_size=len(build_char_tokenizer()), layers=LAYERS + 1, seed=3)
    deeper = _save(model, build_char_tokenizer(), tmp_path / "deeper")
    recipe = {"merge_method": "task_arithmetic", "base_model": str(deep["base"]),
              "models": [{"model": str(deep["ft1"])}, {"model": str(deeper)}], "parameters": {"weight": 0.5}}
    with caplog.at_level("WARNING", logger="evo_merge.merge.plan"):
        result, out = merge(tmp_path, recipe)
    assert result.exit_code == 0, result.output
    left = [r.getMessage() for r in caplog.records if "left out of the merge" in r.getMessage()]
    assert left == [f"{deeper}: 9 of its tensors are not in {deep['base']} and are left out of the merge "
                    f"(model.layers.{LAYERS}.input_layernorm.weight, ...); a `slices:` recipe chooses the layers "
                    "of models of other depths"]
    caplog.clear()
    buffer = _copy_with(deep["ft1"], tmp_path / "buffer", edit_tensors=lambda t: {
        **t, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)})
    recipe["models"] = [{"model": str(deep["ft2"])}, {"model": str(buffer)}]
    with caplog.at_level("WARNING", logger="evo_merge.merge.plan"):
        assert merge(tmp_path, recipe, "with_buffer")[0].exit_code == 0
    assert not [r for r in caplog.records if "left out" in r.getMessage()]


def test_a_checkpoint_storing_rope_buffers_merges_in_a_campaign_as_one_without(deep, tmp_path):
    """Older transformers saved RoPE's `inv_freq`, which a model computes on load: a campaign refused
    such an endpoint ("in ... but missing from ...") and could not load such a base."""
    from evo_merge.merge.inplace import InPlaceMerger
    from evo_merge.weights import Checkpoint, check_compatible, load_model_folder

    def with_buffer(tensors):
        return {**tensors, **{f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(4) for i in range(LAYERS)}}
    base = _copy_with(deep["base"], tmp_path / "base", edit_tensors=with_buffer)
    ft1 = _copy_with(deep["ft1"], tmp_path / "ft1", edit_tensors=with_buffer)
    checkpoints = [Checkpoint.open(p) for p in (base, ft1, deep["ft2"])]
    check_compatible(checkpoints)
    check_compatible(checkpoints[::-1])
    module, _ = load_model_folder(base)
    merger = InPlaceMerger(module, checkpoints[0], checkpoints[1:])
    assert not [n for n in merger.names if n.endswith("inv_freq")]
    plain = [Checkpoint.open(p) for p in (deep["base"], deep["ft1"], deep["ft2"])]
    assert merger.names == InPlaceMerger(load_model_folder(deep["base"])[0], plain[0], plain[1:]).names


def test_della_settings_that_no_tensor_can_take_are_refused_before_any_work(deep, tmp_path):
    """density 0.05 with the default epsilon 0.15: the keep probabilities would leave (0, 1). It was
    refused by the first tensor merged; now by the plan, with the rule."""
    recipe = {"merge_method": "della", "base_model": str(deep["base"]),
              "models": [{"model": str(deep["ft1"]), "parameters": {"density": 0.05}}, {"model": str(deep["ft2"])}]}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 2 and not out.exists()
    line, = result.output.strip().splitlines()
    assert "della: tensor " in line and line.endswith(
        "epsilon 0.15 must keep density 0.05 +/- epsilon in (0, 1) (0 < density - epsilon and density + epsilon < 1)")


def test_merge_dtype_sets_the_output_dtype_over_the_recipe_s(deep, tmp_path):
    """An exported recipe says `out_dtype: float32`; `merge RECIPE --dtype bf16` wrote float32 anyway,
    though its help says the flag sets the computation and output dtype."""
    recipe = {"merge_method": "task_arithmetic", "base_model": str(deep["base"]), "out_dtype": "float32",
              "models": [{"model": str(deep["ft1"])}, {"model": str(deep["ft2"])}]}
    file = tmp_path / "recipe.yaml"
    file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = CliRunner().invoke(cli, ["merge", str(file), "--out", str(tmp_path / "bf16"), "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert {t.dtype for t in tensors_of(tmp_path / "bf16").values()} == {torch.bfloat16}
    assert CliRunner().invoke(cli, ["merge", str(file), "--out", str(tmp_path / "as_said")]).exit_code == 0
    assert {t.dtype for t in tensors_of(tmp_path / "as_said").values()} == {torch.float32}


@pytest.mark.parametrize("stored_by", ["base", "endpoint"])
def test_rope_buffers_stored_by_one_input_are_left_out_of_the_merge(deep, tmp_path, stored_by):
    """Llama checkpoints of transformers < 4.31 store each layer's `rotary_emb.inv_freq`: a campaign
    accepted such a base beside endpoints without it, searched, then its export failed ("tensor
    ... inv_freq not found in" the endpoint) and nothing was written."""
    old = shutil.copytree(deep["base" if stored_by == "base" else "ft1"], tmp_path / "old")
    weights = load_file(old / "model.safetensors")
    for layer in range(LAYERS):
        weights[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.rand(4)
    save_file(weights, old / "model.safetensors")
    base, ft = (old, deep["ft1"]) if stored_by == "base" else (deep["base"], old)
    result, out = merge(tmp_path, {"merge_method": "task_arithmetic", "base_model": str(base),
                                   "models": [{"model": str(ft), "parameters": {"weight": 0.5}}]})
    assert result.exit_code == 0, result.output
    merged, b, f = tensors_of(out), tensors_of(base), tensors_of(ft)
    assert not any(name.endswith("inv_freq") for name in merged)
    assert merged.keys() == {n for n in b if not n.endswith("inv_freq")}
    for name, tensor in merged.items():
        assert torch.allclose(tensor, b[name] + 0.5 * (f[name] - b[name]), atol=1e-6), name
    AutoModelForCausalLM.from_pretrained(out)  # loads: transformers computes the buffers


def test_an_adapter_saving_a_whole_head_of_a_tied_model_is_refused_saying_why(deep, tmp_path):
    """`modules_to_save: [lm_head]` on a tied base (Llama-3.2-1B, Qwen2.5-0.5B): peft unties the
    head when it merges; the refusal said lm_head was no tensor of the model."""
    from peft import LoraConfig, get_peft_model

    from evo_merge.zoo.tiny import tie_embeddings

    tied = tie_embeddings(deep["base"], tmp_path / "tied")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tied),
                           LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    model.save_pretrained(tmp_path / "adapter")
    result, out = merge(tmp_path, {"merge_method": "linear", "models": [{"model": f"{tied}+{tmp_path / 'adapter'}"}]})
    assert result.exit_code == 2 and not out.exists()
    line, = result.output.strip().splitlines()
    assert "lm_head.weight replaces the output head of" in line and "whose head is its input embedding (tied)" in line


def test_a_union_token_a_model_lacks_takes_the_base_s_row_when_the_base_has_it(deep, tmp_path):
    """tokenizer_source union: a token some model lacks takes the base's row where the base has it,
    before the mean of the models that have it. Base (rows 1 and -1 for the chat tokens) and the chat
    model (0.5 and -0.5) have them, ft1 lacks them: ft1 gets the base's rows, a task vector of 0, so
    task arithmetic at weights 1 gives base + (chat - base) + 0 = the chat model's rows (the mean of base
    and chat, 0.75, would give 1 - 0.5 - 0.25 = 0.25)."""
    chat_base = _with_chat_tokens(deep["base"], tmp_path / "chat_base", 1.0)
    recipe = {"merge_method": "task_arithmetic", "base_model": str(chat_base), "dtype": "float32",
              "models": [{"model": str(deep["chat"])}, {"model": str(deep["ft1"])}], "tokenizer_source": "union"}
    result, out = merge(tmp_path, recipe)
    assert result.exit_code == 0, result.output
    ids = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids(CHAT_TOKENS)
    embed = tensors_of(out)["model.embed_tokens.weight"]
    assert torch.allclose(embed[ids], torch.tensor([[0.5] * 32, [-0.5] * 32]), atol=1e-6)


@pytest.mark.parametrize("base", [True, False])
def test_a_union_token_the_base_lacks_takes_the_mean_row_of_the_models_that_have_it(deep, tmp_path, base):
    """tokenizer_source union, the chat tokens in two models (rows +-0.5 and +-1.5), not in ft1 nor in
    the base: each model that lacks one takes the mean of the rows of those that have it, +-1.0.
    Task arithmetic at weights 1 over a base without them: 1.0 + (0.5 - 1.0) + (1.5 - 1.0) = 1.0 (the
    first model's row, 0.5, gave 1.5); linear without a base, equal weights over chat, chat3 and ft1:
    (0.5 + 1.5 + 1.0) / 3 = 1.0 (the tokenizer's donor taken as a base gave its own row to ft1)."""
    chat3 = _with_chat_tokens(deep["ft1"], tmp_path / "chat3", 1.5)
    models = [{"model": str(deep["chat"])}, {"model": str(chat3)}]
    recipe = ({"merge_method": "task_arithmetic", "base_model": str(deep["base"]), "models": models} if base else
              {"merge_method": "linear", "models": [*models, {"model": str(deep["ft1"])}]})
    result, out = merge(tmp_path, {**recipe, "dtype": "float32", "tokenizer_source": "union"})
    assert result.exit_code == 0, result.output
    ids = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids(CHAT_TOKENS)
    embed = tensors_of(out)["model.embed_tokens.weight"]
    assert torch.allclose(embed[ids], torch.tensor([[1.0] * 32, [-1.0] * 32]), atol=1e-6)


def test_max_shard_size_splits_the_weights_into_an_indexed_set_that_loads_as_one_file(deep, tmp_path):
    """mergekit's --out-shard-size: hosting and upload setups that want smaller files (audit 137)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "models": [{"model": str(deep["ft1"])},
                                                                           {"model": str(deep["ft2"])}]}))
    whole = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "whole")])
    split = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "split"),
                                     "--max-shard-size", "40KB"])
    assert whole.exit_code == 0 and split.exit_code == 0, split.output
    shards = sorted((tmp_path / "split").glob("*.safetensors"))
    assert len(shards) > 2 and all(f.stat().st_size < 40_000 + 30_000 for f in shards)  # a tensor never splits
    index = json.loads((tmp_path / "split" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in shards}
    assert tensors_of(tmp_path / "split").keys() == tensors_of(tmp_path / "whole").keys()
    assert all(torch.equal(t, tensors_of(tmp_path / "whole")[k]) for k, t in tensors_of(tmp_path / "split").items())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "split")
    assert all(torch.equal(p, tensors_of(tmp_path / "whole")[k]) for k, p in model.state_dict().items()
               if k in tensors_of(tmp_path / "whole"))


def test_a_cached_hub_model_without_its_weights_names_the_download_that_completes_it(deep, tmp_path, monkeypatch):
    """A download cut short leaves a snapshot without its weights: the error named the cache folder
    but not the `hf download` a missing model's error names (audit 137)."""
    import shutil

    partial = shutil.copytree(deep["base"], tmp_path / "partial")
    (partial / "model.safetensors").unlink()
    save_to_hub_cache(tmp_path / "hub", partial, "tiny-org/partial", "d" * 40)
    result = _hub_merge(tmp_path, monkeypatch, "tiny-org/partial@main")
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'hub.yaml'}: models.0.model: Hub model tiny-org/partial@main: no "
                           "weights in "), line
    assert line.endswith("(a download cut short? `hf download tiny-org/partial --revision main` completes it)"), line


def test_a_pinned_commit_the_cache_holds_is_read_without_asking_the_hub(deep, tmp_path, monkeypatch):
    """Every Hub model of an exported recipe is pinned to a commit: a rebuild asked the Hub for each
    (with no route to it: a request error printed and ~26 s of retries per model, audit 137)."""
    import socket

    from huggingface_hub import HfApi, constants
    from huggingface_hub import utils as hf_utils

    repo, commit = save_to_hub_cache(tmp_path / "hub", deep["base"], "tiny-org/pinned", "e" * 40)
    with socket.socket() as probe:  # a Hub nothing answers for: any request is refused
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    monkeypatch.setenv("HF_ENDPOINT", closed)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    requests = []

    def unreachable(call):  # what snapshot_download asks the Hub, answered as a Hub no route leads to answers
        def ask(*args, **kwargs):
            requests.append(call)
            raise hf_utils.httpx.ConnectError("no route to the Hub")
        return ask

    for call in ("repo_info", "list_repo_tree"):
        monkeypatch.setattr(HfApi, call, unreachable(call))
    expected = _lora_adapter(deep["base"], tmp_path / "adapter")  # a pinned adapter too
    adapter, adapter_commit = save_to_hub_cache(tmp_path / "hub", tmp_path / "adapter", "tiny-org/lora", "f" * 40)
    recipe = tmp_path / "hub.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": f"{repo}@{commit}+{adapter}@{adapter_commit}"}]}))
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0 and "requesting" not in result.output, result.output
    assert requests == []
    assert all(torch.allclose(t, expected[k], atol=1e-6) for k, t in tensors_of(tmp_path / "o").items())
    # a pinned snapshot a download left without its weights: the Hub is asked to complete it
    (tmp_path / "hub" / "models--tiny-org--pinned" / "snapshots" / commit / "model.safetensors").unlink()
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "models": [{"model": f"{repo}@{commit}"}]}))
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "short")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert requests and f"hf download {repo} --revision {commit}" in result.output, result.output


def test_only_a_template_s_token_markers_are_looked_for_in_the_vocabulary(deep, caplog):
    """Qwen2.5's template writes `<tools></tools>` as text, Zephyr's `<|user|>`: markers no input has as
    tokens are text by design, and were warned of (audits 137, 139); one an input has and the output
    lacks is said."""
    from evo_merge.merge.tokens import _warn_missing_template_tokens

    chat, base = AutoTokenizer.from_pretrained(deep["chat"]), AutoTokenizer.from_pretrained(deep["base"])
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n<tools></tools>{{ m['content'] }}<|im_end|>\n"
                "{% endfor %}")
    with caplog.at_level("WARNING", logger="evo_merge.merge.tokens"):
        _warn_missing_template_tokens(template, chat.get_vocab(), [base, chat])
        assert caplog.messages == []
        _warn_missing_template_tokens(template, base.get_vocab(), [base, chat])
    (message,) = caplog.messages
    assert message.startswith("chat_template: its special tokens <|im_end|>, <|im_start|> are not in"), message
    caplog.clear()
    zephyr = "{% for m in messages %}{{ '<|' + m['role'] + '|>' }}<|user|>\n{{ m['content'] }}</s>{% endfor %}"
    with caplog.at_level("WARNING", logger="evo_merge.merge.tokens"):  # no input has <|user|> as a token
        _warn_missing_template_tokens(zephyr, base.get_vocab(), [base, chat])
    assert caplog.messages == []
    caplog.clear()
    with caplog.at_level("WARNING", logger="evo_merge.merge.tokens"):  # an added marker of another shape
        _warn_missing_template_tokens("{{ '<start_of_turn>' }}", base.get_vocab(), [base, _with_added(chat)])
    assert [m.split(" are")[0] for m in caplog.messages] == ["chat_template: its special tokens <start_of_turn>"]


def _with_added(tokenizer):
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>"]})
    return tokenizer


@pytest.mark.parametrize(("written", "size"), [("5B", 5 * 10**9), ("500M", 500 * 10**6), ("2K", 2000),
                                               ("2GB", 2 * 10**9), ("1.5GiB", 3 * 2**29), ("40KB", 40_000),
                                               ("123", 123)])
def test_shard_sizes_read_as_hugging_face_and_mergekit_write_them(written, size):
    """mergekit writes its default `5B` (five billion bytes): read as 5 bytes, it wrote one file per
    tensor (audit 139)."""
    from evo_merge.cli.merge import ByteSize

    assert ByteSize().convert(written, None, None) == size


@pytest.mark.parametrize("written", ["500Mb", "5gb", "0", "2G", "1e9"])
def test_a_shard_size_in_bits_or_no_size_is_refused(deep, tmp_path, written):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "models": [{"model": str(deep["ft1"])}]}))
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "o"), "--max-shard-size", written])
    assert result.exit_code == 2 and "--max-shard-size" in result.output and not (tmp_path / "o").exists()
    assert ("reads as bits" in result.output) == written.endswith("b"), result.output
