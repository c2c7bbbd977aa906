import atexit
import os
import shutil
import tempfile

import pytest
import torch

# the suite runs on 2 cores under pytest-xdist: one thread per worker avoids oversubscription
torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the key that marks run folders run here (search.trust): the suite's own, not the user's
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="evo-merge-test-config-")
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], ignore_errors=True)  # one per process, not left in /tmp


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _methods_a_test_registers_stay_in_it():
    """A test's own merge methods (some fail on purpose) must not reach tests that try every method."""
    from evo_merge.merge import registry

    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)
