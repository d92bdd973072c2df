"""The one-call GPU recipe (experiments/gpu_release.sh) end to end at tiny scale on CPU: kit -> data ->
inverter -> hypotheses -> corrector -> int8 bundle -> table -> pieces that the device tool can bring back."""

import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import CORPUS, ROOT


@pytest.mark.slow
def test_gpu_release_recipe_at_tiny_scale(tmp_path, minilm, sentences):
    from v2t_jax import api

    kit, out, work = tmp_path / "kit", tmp_path / "out", tmp_path / "work"
    build = ["python", str(ROOT / "experiments/gpu_kit.py"), "build", "--corpus", str(CORPUS), "--out", str(kit)]
    subprocess.run([str(Path(ROOT / ".venv/bin/python"))] + build[1:], check=True, cwd=ROOT)
    manifest = json.loads((kit / "manifest.json").read_text())
    assert manifest["minilm_min_cosine_vs_float32"] > 0.998  # int8 matrices (README: 0.999 on 512 test passages)
    assert manifest["passages"]["train_passages"] == manifest["passages"]["train_of"]  # the budget holds all

    env = {
        "TINY": "1",
        "WORK": str(work),
        "PYTHON": str(ROOT / ".venv/bin/python"),
        "TABLE_N": "8",
        "ROWS": "0:1,2:1",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "experiments/gpu_release.sh"), str(kit), str(out), "6", "tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p for p in out.iterdir())
    assert 3 <= len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    log = (out / "release.log").read_text()
    assert "budget is spent" in log and "== [" in log  # both trainings time-boxed, stages timed

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    data = b"".join(p.read_bytes() for p in sorted(out.glob("bundle.tar.part-*")))
    (tmp_path / "bundle.tar").write_bytes(data)
    with tarfile.open(tmp_path / "bundle.tar") as tf:
        tf.extractall(bundle, filter="data")
    model = api.load_model(bundle)
    assert model.program.corrector is not None and model.embedder.name.lower() == "all-minilm-l6-v2"
    texts = model.invert_embeddings(np.asarray(minilm.embed_texts(sentences[:2])), num_steps=1)
    assert len(texts) == 2
    with tarfile.open(out / "reports.tar") as tf:
        names = tf.getnames()
        table = json.loads(tf.extractfile("table1.json").read())
    assert {"data.txt", "inverter_metrics.jsonl", "corrector_metrics.jsonl", "table1.md"} <= set(names)
    assert [r for r in table["rows"]]  # the table has its rows
