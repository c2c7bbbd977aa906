"""Tiny HF model families built once per session (they are only read, never modified)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evo_merge.zoo.tiny import save_tiny_family


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return save_tiny_family(tmp_path_factory.mktemp("llama"), "llama", n_finetunes=1)


@pytest.fixture(scope="session")
def gpt2_family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return save_tiny_family(tmp_path_factory.mktemp("gpt2"), "gpt2", n_finetunes=1)


@pytest.fixture(params=["llama", "gpt2"])
def family(request: pytest.FixtureRequest) -> tuple[Path, list[Path]]:
    return request.getfixturevalue(f"{request.param}_family")
