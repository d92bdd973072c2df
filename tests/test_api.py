"""The inversion API and `v2t invert` on a small random bundle (real MiniLM embedder, untrained models)."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from v2t_jax import api, cli


@pytest.fixture(scope="module")
def bundle(small_bundle):
    return small_bundle


@pytest.fixture(scope="module")
def vectors(minilm, sentences):
    return minilm.embed_texts(sentences[:5], max_length=12)


def test_bundle_round_trip(bundle):
    folder, model = bundle
    loaded = api.load_model(folder)
    assert loaded.program == model.program
    for a, b in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_invert_embeddings_trace_and_determinism(bundle, vectors):
    _, model = bundle
    texts, trace = model.invert_embeddings(vectors, num_steps=2, sequence_beam_width=2, batch_size=4, return_trace=True)
    assert len(texts) == 5 and all(isinstance(t, str) for t in texts)
    for i, steps in enumerate(trace["steps"]):
        assert len(steps["hypotheses"]) == 3 and steps["hypotheses"][-1] == texts[i]
        assert all(b >= a - 1e-6 for a, b in zip(steps["cosines"], steps["cosines"][1:]))
        assert steps["cosines"][-1] == pytest.approx(trace["cosine"][i])
    assert model.invert_embeddings(vectors, num_steps=2, sequence_beam_width=2, batch_size=4) == texts
    # reference call shape: num_steps None = inverter only
    assert api.invert_embeddings(vectors, model, num_steps=None) == [s["hypotheses"][0] for s in trace["steps"]]


def test_unnormalised_vectors_are_normalised_like_the_embedder(bundle, vectors):
    _, model = bundle
    assert model.invert_embeddings(vectors * 3.0) == model.invert_embeddings(vectors)


def _run(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def test_cli_invert_writes_jsonl(capsys, tmp_path, bundle, vectors):
    folder, _ = bundle
    np.save(tmp_path / "v.npy", vectors)
    out = tmp_path / "out.jsonl"
    code, err = _run(
        capsys,
        "invert",
        "--embeddings",
        str(tmp_path / "v.npy"),
        "--checkpoint",
        str(folder),
        "--steps",
        "1",
        "--sbeam",
        "2",
        "--output",
        str(out),
        "--trace",
        "--quiet",
    )
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5 and {"text", "cosine", "steps"} <= set(rows[0]) and len(rows[0]["steps"]["hypotheses"]) == 2


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda v: v[:, :100], "dimension 100"),
        (lambda v: np.where(np.arange(384) == 3, np.nan, v), "NaN or inf"),
        (lambda v: np.concatenate([v, np.zeros((1, 384), v.dtype)]), "all zeros"),
        (lambda v: (v * 100).astype(np.int32), "floating point"),
        (lambda v: v[:0], "non-empty"),
    ],
)
def test_cli_invert_bad_vectors(capsys, tmp_path, bundle, vectors, make, message):
    folder, _ = bundle
    np.save(tmp_path / "v.npy", make(vectors))
    code, err = _run(
        capsys,
        "invert",
        "--embeddings",
        str(tmp_path / "v.npy"),
        "--checkpoint",
        str(folder),
        "--output",
        str(tmp_path / "o.jsonl"),
    )
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_invert_checkpoint_errors(capsys, tmp_path, bundle, vectors):
    folder, _ = bundle
    np.save(tmp_path / "v.npy", vectors)
    base = ["invert", "--embeddings", str(tmp_path / "v.npy"), "--output", str(tmp_path / "o.jsonl")]
    code, err = _run(capsys, *base, "--checkpoint", str(tmp_path / "nothing"))
    assert code == 2 and "not a v2t model bundle" in err[0]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in ("v2t_model.json", "inverter.safetensors"):
        (mixed / f).write_bytes((folder / f).read_bytes())
    code, err = _run(capsys, *base, "--checkpoint", str(mixed))
    assert code == 2 and "missing corrector.safetensors" in err[0]
    (mixed / "corrector.safetensors").write_bytes((folder / "inverter.safetensors").read_bytes())
    code, err = _run(capsys, *base, "--checkpoint", str(mixed))
    assert code == 2 and "does not match the digest" in err[0]  # the recorded sha256 catches the swap first
    meta = json.loads((mixed / "v2t_model.json").read_text())
    del meta["files"]  # a format-1 bundle has no digests: the shape check still catches it, before compiling
    (mixed / "v2t_model.json").write_text(json.dumps(meta))
    code, err = _run(capsys, *base, "--checkpoint", str(mixed))
    assert code == 2 and "do not match" in err[0]
    np.savez(tmp_path / "two.npz", a=vectors, b=vectors)
    code, err = _run(
        capsys,
        "invert",
        "--embeddings",
        str(tmp_path / "two.npz"),
        "--checkpoint",
        str(folder),
        "--output",
        str(tmp_path / "o.jsonl"),
    )
    assert code == 2 and ".npz" in err[0]
    (tmp_path / "not.npy").write_text("hello")
    code, err = _run(
        capsys,
        "invert",
        "--embeddings",
        str(tmp_path / "not.npy"),
        "--checkpoint",
        str(folder),
        "--output",
        str(tmp_path / "o.jsonl"),
    )
    assert code == 2 and "cannot read" in err[0]


@pytest.mark.slow
def test_bench_grid_writes_table(capsys, tmp_path, bundle):
    folder, _ = bundle
    out = tmp_path / "bench"
    code = cli.main(
        [
            "bench",
            "--checkpoint",
            str(folder),
            "--batch",
            "2",
            "--steps",
            "0,1",
            "--beam",
            "1,2x2,1x3",
            "--repeats",
            "1",
            "--output",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    # at step 0 only a token beam enters (2x2 is the inverter's token beam of 2, as `v2t invert --steps 0 --sbeam 2
    # --token-beam 2` runs it; 1x3 its beam of 3); with steps 2x2 is vec2text's sbeam 2
    assert [(r["steps"], r["beam"], r["token_beam"]) for r in rows] == [(0, 1, 1), (0, 1, 2), (0, 1, 3), (1, 1, 1),
                                                                        (1, 2, 2), (1, 1, 3)]  # fmt: skip
    assert all(r["inversions_per_s"] > 0 and r["compile_s"] > 0 and r["peak_memory_mib"] > 0 for r in rows)
    table = out.with_suffix(".md").read_text()
    assert "| batch | steps | beam |" in table and "| 2 | 1 | 1x3 |" in table and "| 2 | 1 | 2 |" in table
    capsys.readouterr()
    assert cli.main(["bench", "--checkpoint", str(folder), "--steps", "a,b"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err
    assert cli.main(["bench", "--checkpoint", str(folder), "--beam", "4x2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--beam 4x2: the token beam width must be in [4, 64]" in err[0], err


def test_bench_peak_memory_is_per_point():
    """The peak-memory window restarts per grid point: a large allocation before the reset does not count."""
    import numpy as np

    from v2t_jax import bench

    big = np.ones(400 * 2**20 // 8)  # 400 MiB resident
    before, _ = bench._peak_rss_bytes()
    del big
    bench.reset_peak_memory()
    after, windowed = bench._peak_rss_bytes()
    if not windowed:
        pytest.skip("this kernel cannot reset the peak resident set")
    assert after < before - 300 * 2**20


@pytest.mark.slow
def test_bench_random_weights_of_a_config(capsys, tmp_path, bundle):
    """`v2t bench --config` times random weights of the shapes a config trains, before any training."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench"
    args = ["bench", "--config", str(root / "configs" / "corrector.py") + ":tiny", "--config.t5.num_layers=1"]
    args += ["--batch", "2", "--steps", "1", "--beam", "2", "--repeats", "1", "--output", str(out), "--quiet"]
    assert cli.main(args) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert [(r["steps"], r["beam"]) for r in meta["rows"]] == [(1, 2)] and "random weights" in meta["model"]
    capsys.readouterr()
    assert cli.main(["bench", "--batch", "2"]) == 2
    assert "one of --checkpoint BUNDLE or --config" in capsys.readouterr().err
    assert cli.main(["bench", "--checkpoint", str(bundle[0]), "--config.t5.num_layers=1"]) == 2
    assert "goes with --config" in capsys.readouterr().err
