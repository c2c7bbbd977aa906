"""What a zoo build prints before its minutes of training."""

import pytest
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.zoo import tinylm


class Stop(Exception):
    pass


@pytest.mark.parametrize("command", [["zoo", "build", "--kind", "tiny-lm", "--out"], ["demo", "--zoo"]])
def test_a_tiny_lm_build_says_first_what_it_builds_and_where(monkeypatch, tmp_path, command):
    """The first progress line comes 30 s into the training: the line before it says what runs."""
    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(tinylm, "train_zoo_models", stop)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, [*command, str(tmp_path / "zoo")])
    assert isinstance(result.exception, Stop)
    assert f"building the tiny-lm zoo into {tmp_path / 'zoo'}" in result.output


def test_a_smollm2_build_says_first_what_it_builds_and_where(monkeypatch, tmp_path):
    from evo_merge.zoo import smollm2

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(smollm2, "gguf_path", lambda gguf_file=smollm2.GGUF_FILE: tmp_path / gguf_file)
    monkeypatch.setattr(smollm2, "check_gguf_reader", lambda: None)
    monkeypatch.setattr(smollm2, "load_gguf_base", stop)
    result = CliRunner().invoke(cli, ["zoo", "build", "--kind", "smollm2", "--out", str(tmp_path / "zoo")])
    assert isinstance(result.exception, Stop)
    assert f"building the smollm2 zoo into {tmp_path / 'zoo'}" in result.output
