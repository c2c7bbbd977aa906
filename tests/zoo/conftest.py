import pytest

from evo_merge.zoo.tinylm import TinyLMSettings, build_tinylm_zoo

# a much smaller zoo than the real one (seconds, not minutes): shapes and plumbing, not skill
SMOKE = TinyLMSettings(
    hidden=32, layers=2, heads=4, batch_size=16, pretrain_steps=30, finetune_steps=15, n_train=300, table_items=24
)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    return build_tinylm_zoo(tmp_path_factory.mktemp("tiny_zoo"), settings=SMOKE)


@pytest.fixture
def smoke_settings():
    return SMOKE
