"""The one-call GPU recipe (experiments/gpu_release.sh) end to end at tiny scale on CPU: kit -> data ->
inverter -> hypotheses -> corrector -> int8 bundle -> table -> pieces that the device tool can bring back."""

import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import CORPUS, ROOT, cache_env


PY = str(ROOT / ".venv/bin/python")
# The trainings' time boxes read a clock that advances 6 s at each reading (two readings a step: 12 s a step),
# whatever the machine's speed: tests/fake_clock/sitecustomize.py, imported by every Python process the recipe runs
CLOCK = {"PYTHONPATH": str(ROOT / "tests" / "fake_clock"), "V2T_FAKE_CLOCK_S": "6"}


def _env(**env) -> dict:
    """A recipe's environment: what it is given, the fake clock and the session's compilation cache, nothing else."""
    return {**env, **CLOCK, **cache_env()}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """The GPU kit of the test corpus (gpu_kit.py build), shared by both recipes."""
    kit = tmp_path_factory.mktemp("kit") / "kit"
    subprocess.run([PY, str(ROOT / "experiments/gpu_kit.py"), "build", "--corpus", str(CORPUS), "--out", str(kit)],
                   check=True, cwd=ROOT)  # fmt: skip
    return kit


def _bundle_from_pieces(out: Path, folder: Path) -> Path:
    folder.mkdir()
    tar = folder.parent / (folder.name + ".tar")
    tar.write_bytes(b"".join(p.read_bytes() for p in sorted(out.glob("bundle.tar.part-*"))))
    with tarfile.open(tar) as tf:
        tf.extractall(folder, filter="data")
    return folder


@pytest.mark.slow
def test_gpu_release_recipe_at_tiny_scale(tmp_path, kit, minilm, sentences):
    from v2t_jax import api

    out, work = tmp_path / "out", tmp_path / "work"
    manifest = json.loads((kit / "manifest.json").read_text())
    assert manifest["minilm_min_cosine_vs_float32"] > 0.998  # int8 matrices (docs: 0.999 on 512 passages)
    assert manifest["passages"]["train_passages"] == manifest["passages"]["train_of"]  # the budget holds all

    env = {
        "TINY": "1",
        "WORK": str(work),
        "PYTHON": PY,
        "TABLE_N": "8",
        "ROWS": "0:1,2:1",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "experiments/gpu_release.sh"), str(kit), str(out), "6", "tiny"],
        cwd=ROOT,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p for p in out.iterdir())
    assert 3 <= len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    log = (out / "release.log").read_text()
    assert "budget is spent" in log and "== [" in log  # both trainings time-boxed, stages timed

    model = api.load_model(_bundle_from_pieces(out, tmp_path / "bundle"))
    assert model.program.corrector is not None and model.embedder.name.lower() == "all-minilm-l6-v2"
    texts = model.invert_embeddings(np.asarray(minilm.embed_texts(sentences[:2])), num_steps=1)
    assert len(texts) == 2
    with tarfile.open(out / "reports.tar") as tf:
        names = tf.getnames()
        table = json.loads(tf.extractfile("table1.json").read())
    assert {"data.txt", "inverter_metrics.jsonl", "corrector_metrics.jsonl", "table1.md"} <= set(names)
    assert [r for r in table["rows"]]  # the table has its rows


@pytest.mark.slow
def test_gpu_continue_recipe_at_tiny_scale(tmp_path, kit, tiny_models, minilm, sentences):
    """experiments/gpu_continue.sh in its two calls (prep, then train on the same WORK), continuing the tiny
    bundle as it continues the shipped one on a device: both models start from the bundle (their weights end near
    the bundle's, far from a fresh init), train on a slice of the documents alongside each other, and come
    back as one int8 bundle of the new inverter + the new corrector, in pieces the device tool returns."""
    from v2t_jax import api, bundle

    out, work = tmp_path / "out", tmp_path / "work"
    env = {"TINY": "1", "WORK": str(work), "PYTHON": PY, "TABLE_N": "8", "ROWS": "0:1,2:1", "PATH": "/usr/bin:/bin",
           "BUNDLE": str(tiny_models["corrector"]), "VARIANT": "tiny", "GRACE": "120"}  # fmt: skip
    script = ["bash", str(ROOT / "experiments/gpu_continue.sh"), str(kit), str(out)]

    def call(phase, *args, extra=None):
        return subprocess.run(script + list(args), cwd=ROOT, env=_env(**env, PHASE=phase, **(extra or {})),
                              capture_output=True, text=True, timeout=900)  # fmt: skip

    early = call("train", "3", "1/2")  # nothing prepared in WORK yet
    assert early.returncode == 2 and "run PHASE=prep first" in early.stdout + early.stderr
    prep = call("prep", "0", "1/2")
    assert prep.returncode == 0, prep.stdout[-3000:] + prep.stderr[-3000:]
    assert "slice 1/2 of the training documents" in prep.stdout and (work / "prepared-1-of-2").exists()
    proc = call("train", "5", "1/2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p for p in out.iterdir())
    assert 3 <= len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    log = (out / "continue_train.log").read_text()
    assert "hypotheses done" in log and "train steps ran" in log

    folder = _bundle_from_pieces(out, tmp_path / "bundle")
    meta = json.loads((folder / bundle.FILE).read_text())
    assert meta["weights"] == "int8"
    assert Path(meta["source"]["hypotheses_of"]).resolve() == Path(tiny_models["corrector"]).resolve()
    assert Path(meta["source"]["inverter"]).resolve() == (work / "runs" / "inverter_bundle").resolve()
    model = api.load_model(folder)
    old = api.load_model(tiny_models["corrector"])
    for kind in ("inverter", "corrector"):  # both trained further, from the bundle's weights (not from scratch:
        a, b = (jax_leaves(m.params[kind]) for m in (model, old))  # a fresh init would be ~1.4x away)
        assert len(a) == len(b) and any(not np.allclose(x, y, atol=1e-2) for x, y in zip(a, b))
        moved = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, b)) / sum(np.sum(y**2) for y in b))
        assert 0 < moved < 0.5, (kind, moved)
    texts = model.invert_embeddings(np.asarray(minilm.embed_texts(sentences[:2])), num_steps=1)
    assert len(texts) == 2

    with tarfile.open(out / "reports.tar") as tf:
        names = set(tf.getnames())
        metrics = {k: [json.loads(x) for x in tf.extractfile(f"{k}_metrics.jsonl").read().splitlines()]
                   for k in ("inverter", "corrector")}  # fmt: skip
        data = tf.extractfile("data.txt").read().decode()
    assert {"share.txt", "table1.md", "data.txt"} <= names
    for k, rows in metrics.items():  # both runs evaluated and trained
        assert rows[0]["kind"] == "eval" and rows[0]["step"] == 0 and any(r["kind"] == "train" for r in rows), k
    # a slice: fewer training passages than the whole corpus
    full = json.loads((kit / "manifest.json").read_text())["passages"]["train_of"]
    train = int(next(line.split()[1] for line in data.splitlines() if line.startswith("all")).replace(",", ""))
    assert 0 < train < full


def jax_leaves(tree):
    import jax

    return [np.asarray(x, np.float32) for x in jax.tree_util.tree_leaves(tree)]
