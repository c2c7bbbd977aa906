"""The mnist zoo's folder: trained into only when it is new, empty or an earlier mnist zoo."""

import pytest

from evo_merge.errors import UserError
from evo_merge.zoo.mnist import build_mnist_zoo


@pytest.mark.parametrize("other", ["state.sqlite", "zoo.json", "notes.txt"])
def test_a_folder_of_other_files_is_refused_before_any_training(tmp_path, other):
    """A run folder, a tiny-lm zoo or a folder of the user's files gained `data/` and `mlp-s0/` beside
    its own (what the tiny-lm and smollm2 zoos already refused)."""
    (tmp_path / other).write_text("x")
    with pytest.raises(UserError, match=f"holds '{other}', which is no part of an mnist zoo; give a new or empty"):
        build_mnist_zoo(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [other]
    (tmp_path / other).unlink()
    (tmp_path / "sub").write_text("x")
    with pytest.raises(UserError, match="is a file, not a zoo folder"):
        build_mnist_zoo(tmp_path / "sub")
