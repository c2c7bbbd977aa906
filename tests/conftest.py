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


ANOTHER_OUTPUT = "another command's output"


@pytest.fixture
def output_appearing(monkeypatch):
    """`arm(out)`: the next table a command renders as CSV text (its last step before it writes
    OUT) first puts another command's file at OUT, as a second command writing there meanwhile
    would. `check(result, out)`: without --overwrite that file is kept and the command says so."""
    import pandas as pd

    real = pd.DataFrame.to_csv

    def arm(out):
        def rendered_while_another_writes(self, path_or_buf=None, *args, **kwargs):
            if path_or_buf is None and not out.exists():
                out.write_text(ANOTHER_OUTPUT)
            return real(self, path_or_buf, *args, **kwargs)

        monkeypatch.setattr(pd.DataFrame, "to_csv", rendered_while_another_writes)

    def check(result, out, option="--out"):
        assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == (
            f"error: {option} {out}: appeared while this command worked (another command's output?); it is left "
            "as it is and this output was not written (--overwrite replaces it)"), result.output
        assert out.read_text() == ANOTHER_OUTPUT

    return arm, check
