"""`v2t embed`: the happy path and every user error (one line, exit 2, nothing written)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from v2t_jax import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture
def texts_file(tmp_path, sentences):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(sentences[:20]) + "\n\n", encoding="utf-8")
    return path


def test_embed_txt_writes_float32_rows_in_input_order(capsys, tmp_path, texts_file, sentences, minilm, minilm_dir):
    out = tmp_path / "vectors.npy"
    code, err = run(
        capsys, "embed", "--embedder", str(minilm_dir), "--input", str(texts_file), "--output", str(out), "--quiet"
    )
    assert code == 0, err
    vec = np.load(out)
    assert vec.shape == (20, 384) and vec.dtype == np.float32
    np.testing.assert_allclose(vec, minilm.embed_texts(sentences[:20], max_length=32), atol=2e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_embed_jsonl_and_max_length(capsys, tmp_path, sentences, minilm, minilm_dir):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"text": s, "id": i}) for i, s in enumerate(sentences[:5])), encoding="utf-8")
    out = tmp_path / "v.npy"
    code, err = run(
        capsys,
        "embed",
        "--embedder",
        str(minilm_dir),
        "--input",
        str(src),
        "--output",
        str(out),
        "--max-length",
        "8",
        "--quiet",
    )
    assert code == 0, err
    np.testing.assert_allclose(np.load(out), minilm.embed_texts(sentences[:5], max_length=8), atol=2e-6)
    assert not np.allclose(np.load(out), minilm.embed_texts(sentences[:5], max_length=32), atol=1e-3)


def _assert_one_line_error(code, err, pattern):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("v2t embed: error:"), err
    assert pattern in lines[0], err


def test_missing_input(capsys, tmp_path):
    code, err = run(capsys, "embed", "--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o.npy"))
    _assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "o.npy").exists()


def test_empty_input(capsys, tmp_path):
    src = tmp_path / "empty.txt"
    src.write_text("\n  \n")
    code, err = run(capsys, "embed", "--input", str(src), "--output", str(tmp_path / "o.npy"))
    _assert_one_line_error(code, err, "holds no texts")


def test_bad_jsonl(capsys, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    code, err = run(capsys, "embed", "--input", str(src), "--output", str(tmp_path / "o.npy"))
    _assert_one_line_error(code, err, "in.jsonl:2")


def test_unknown_embedder(capsys, tmp_path, texts_file):
    code, err = run(
        capsys,
        "embed",
        "--embedder",
        "no-such-embedder",
        "--input",
        str(texts_file),
        "--output",
        str(tmp_path / "o.npy"),
    )
    _assert_one_line_error(code, err, "unknown embedder 'no-such-embedder'")
    assert not (tmp_path / "o.npy").exists()


def test_existing_output_is_kept_without_overwrite(capsys, tmp_path, texts_file, minilm_dir):
    out = tmp_path / "o.npy"
    out.write_bytes(b"precious")
    code, err = run(capsys, "embed", "--embedder", str(minilm_dir), "--input", str(texts_file), "--output", str(out))
    _assert_one_line_error(code, err, "--overwrite")
    assert out.read_bytes() == b"precious"
    code, err = run(
        capsys,
        "embed",
        "--embedder",
        str(minilm_dir),
        "--input",
        str(texts_file),
        "--output",
        str(out),
        "--overwrite",
        "--quiet",
    )
    assert code == 0 and np.load(out).shape == (20, 384)


@pytest.mark.parametrize("where", ["missing_dir", "under_a_file", "is_a_dir"])
def test_unwritable_output(capsys, tmp_path, texts_file, where):
    (tmp_path / "afile").write_text("x")
    out = {
        "missing_dir": tmp_path / "no" / "o.npy",
        "under_a_file": tmp_path / "afile" / "o.npy",
        "is_a_dir": tmp_path,
    }[where]
    code, err = run(capsys, "embed", "--input", str(texts_file), "--output", str(out))
    _assert_one_line_error(code, err, "o.npy" if where != "is_a_dir" else "is a directory")


def test_bad_max_length(capsys, tmp_path, texts_file):
    code, err = run(
        capsys, "embed", "--input", str(texts_file), "--output", str(tmp_path / "o.npy"), "--max-length", "1"
    )
    _assert_one_line_error(code, err, "--max-length")


def test_console_script_exit_status(tmp_path):
    """The installed `v2t` entry point exits non-zero with one line on stderr."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "v2t_jax.cli",
            "embed",
            "--input",
            str(tmp_path / "x.txt"),
            "--output",
            str(tmp_path / "o.npy"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("v2t embed: error:") and len(proc.stderr.strip().splitlines()) == 1
