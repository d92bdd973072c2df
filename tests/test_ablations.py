"""The ablation harness (experiments/ablations.py) at tiny scale: two seeds of a run, two at a time, one core each."""

import json
import subprocess
import sys

import pytest

from conftest import CORPUS, ROOT


@pytest.mark.slow
def test_ablation_harness_runs_seeds_pinned_and_averages(tmp_path, tiny_data):
    out = tmp_path / "table"
    cmd = [sys.executable, "experiments/ablations.py", "--minutes", "0.3", "--runs", "gpu_warm", "--seeds", "0,1",
           "--jobs", "2", "--corpus", str(CORPUS), "--data-dir", str(tiny_data), "--n", "8",
           "--workdir", str(tmp_path / "runs"), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads(out.with_suffix(".json").read_text())
    assert [r["run"] for r in table["runs"]] == ["gpu_warm", "gpu_warm@s1"] and table["jobs"] == 2
    a, b = table["runs"]
    assert (a["seed"], b["seed"]) == (0, 1) and a["steps"] >= 1 and b["steps"] >= 1
    assert a["params_m"] == b["params_m"] and 0 <= a["cosine"] <= 1
    saved = [json.loads((tmp_path / "runs" / r / "config.json").read_text()) for r in ("gpu_warm", "gpu_warm@s1")]
    assert [c["seed"] for c in saved] == [0, 1] and saved[0]["init_layers"] == "embedder"
    md = out.with_suffix(".md").read_text()
    assert "one core each, 2 at a time" in md and "| gpu_warm | 2 |" in md  # the mean over seeds
    bad = subprocess.run(cmd[:2] + ["--jobs", "99"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--jobs must be 1.." in bad.stderr
