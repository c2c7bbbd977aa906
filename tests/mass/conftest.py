import pytest
from transformers.utils import logging as hf_logging

from evo_merge.mass import MassModel
from evo_merge.tasks.synthetic import FAMILIES
from evo_merge.zoo.tiny import save_tiny_family
from evo_merge.zoo.tinylm import TinyLMSettings, build_tinylm_zoo

hf_logging.disable_progress_bar()

# a small tiny-lm zoo (about 15 s): endpoints barely trained, but their task vectors already
# live in their families' input subspaces, which is what routing needs (with the real zoo's
# gentler learning rates, 30 steps are too few for that)
ZOO = TinyLMSettings(
    hidden=32, layers=2, heads=4, batch_size=16, pretrain_steps=100, pretrain_lr=1e-2, finetune_steps=30,
    finetune_lr=1e-2, n_train=300, table_items=24,
)


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def family(request, tmp_path_factory):
    """(arch, base folder, three perturbed 'fine-tunes') of tiny random models."""
    base, endpoints = save_tiny_family(tmp_path_factory.mktemp(request.param), request.param, n_finetunes=3)
    return request.param, base, endpoints


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp("llama"), "llama", n_finetunes=3)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    return build_tinylm_zoo(tmp_path_factory.mktemp("mass_zoo"), settings=ZOO)


@pytest.fixture(scope="session")
def zoo_mass(zoo):
    return MassModel.from_checkpoints(zoo / "base", [zoo / f for f in FAMILIES], layer=0)
