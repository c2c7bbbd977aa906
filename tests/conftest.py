import os

import pytest
import torch

# the suite runs on 2 cores under pytest-xdist: one thread per worker avoids oversubscription
torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
