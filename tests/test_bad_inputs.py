"""Bad inputs and unsafe files: each case reproduces a fault first found by hand, and asserts the exit status or
exception, the one-line message, and that nothing was created, changed or left behind."""

import os
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from v2t_jax import api, assets, cli


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_a_wheel_member_that_leaves_its_folder_is_refused_before_anything_is_written(tmp_path):
    wheel = tmp_path / "evil.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/model/config.json", "{}")
        zf.writestr("pkg/model/../../escaped.txt", "owned")
    dest = tmp_path / "out"
    with pytest.raises(assets.AssetError, match="outside"):
        assets.extract_folder(wheel, "pkg/model/", dest)
    assert not dest.exists() and not (tmp_path / "escaped.txt").exists()
    with zipfile.ZipFile(wheel, "w") as zf:  # a well-formed one unpacks
        zf.writestr("pkg/model/sub/config.json", "{}")
    assets.extract_folder(wheel, "pkg/model/", dest)
    assert _files(dest) == {"sub", "sub/config.json"}


def test_only_newlines_end_a_text_line(tmp_path):
    """U+2028, U+0085 and form feeds inside a line stay in it (str.splitlines would split there and shift every
    later vector's row); CRLF files read like LF ones."""
    path = tmp_path / "in.txt"
    path.write_text("one\u2028still one\r\ntwo\x85and\x0ctwo\n\nthree", encoding="utf-8")
    assert cli.read_texts(path) == ["one\u2028still one", "two\x85and\x0ctwo", "three"]


@pytest.mark.parametrize("existing", [None, 0o640])
def test_outputs_follow_the_umask_and_a_replaced_file_keeps_its_mode(tmp_path, existing):
    out = tmp_path / "v.npy"
    if existing is not None:
        out.write_bytes(b"old")
        os.chmod(out, existing)
    old = os.umask(0o022)
    try:
        cli.save_npy_atomic(out, np.zeros(3, np.float32))
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == (existing if existing is not None else 0o644)
    assert np.load(out).shape == (3,) and _files(tmp_path) == {"v.npy"}  # no temporary file left


@pytest.mark.parametrize("command", ["invert", "embed"])
def test_the_output_may_not_be_the_input(capsys, tmp_path, command):
    src = tmp_path / ("v.npy" if command == "invert" else "in.txt")
    if command == "invert":
        np.save(src, np.ones((2, 384), np.float32))
        args = ["invert", "--embeddings", str(src)]
    else:
        src.write_text("a text\n")
        args = ["embed", "--input", str(src)]
    before = src.read_bytes()
    assert cli.main(args + ["--output", str(src), "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the input" in err[0] and err[0].startswith(f"v2t {command}: error:")
    assert src.read_bytes() == before and _files(tmp_path) == {src.name}


@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1.0, 1e30])
def test_vectors_of_any_scale_normalise_alike(scale):
    """An L2-normalising embedder's vectors carry no scale: rows of 1e-30 or 1e30 (squares under/overflow float32)
    become the same unit vectors as at scale 1, never NaN or zero."""
    fake = types.SimpleNamespace(
        dim=4, embedder=types.SimpleNamespace(name="e", config=types.SimpleNamespace(normalize=True))
    )
    rows = np.array([[3.0, 4.0, 0.0, 0.0], [1.0, -1.0, 1.0, -1.0]], np.float32)
    out = api.Vec2Text.check_embeddings(fake, rows * np.float32(scale))
    np.testing.assert_allclose(out, [[0.6, 0.8, 0, 0], [0.5, -0.5, 0.5, -0.5]], atol=1e-6)
    assert out.dtype == np.float32


def test_a_huge_sequence_beam_is_refused_before_any_work(capsys, tmp_path):
    np.save(tmp_path / "v.npy", np.ones((1, 384), np.float32))
    args = ["invert", "--embeddings", str(tmp_path / "v.npy"), "--output", str(tmp_path / "o.jsonl"), "--quiet"]
    assert cli.main(args + ["--steps", "1", "--sbeam", "1000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sequence_beam_width 1000 is over 64" in err[0]
    assert _files(tmp_path) == {"v.npy"}


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--config.batch_size=0"], "config.batch_size must be a positive integer, got 0"),
        (["--config.num_steps=-5"], "config.num_steps must be a positive integer, got -5"),
        (["--config.checkpoint_every=0"], "config.checkpoint_every must be a positive integer"),
        (["--config.learning_rate=0"], "config.learning_rate must be > 0"),
        (["--config.warmup_steps=-1"], "config.warmup_steps must be >= 0"),
        (["--distributed", "garbage"], "expected HOST:PORT,NUM_PROCESSES,PROCESS_ID"),
        (["--distributed", "localhost:1,2,2"], "0 <= PROCESS_ID < NUM_PROCESSES"),
    ],
)
def test_train_numbers_that_cannot_work_fail_before_anything_is_made(capsys, tmp_path, extra, message):
    work = tmp_path / "w"
    args = ["train", "--config", str(ROOT / "configs" / "inverter.py") + ":tiny", "--workdir", str(work)] + extra
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("v2t train: error:") and message in err[0]
    assert not work.exists()


def test_hypotheses_batch_size_zero(capsys, tmp_path):
    assert cli.main(["data", "hypotheses", "--inverter", str(tmp_path / "none"), "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-size must be positive" in err[0]


def test_two_local_embedders_of_the_same_name_never_share_cached_data(tmp_path):
    """Targets, hypotheses and the tokenizer-cut dataset are cached under the embedder's key: a local folder's
    key holds a digest of its files (it was the folder's basename, so `a/minilm` and `b/minilm` shared targets);
    a moved copy keeps its key, and the packaged model keeps its name."""
    from v2t_jax.data import dataset, targets

    def folder(parent, weights):
        f = tmp_path / parent / "minilm"
        f.mkdir(parents=True)
        (f / "config.json").write_text('{"model_type": "bert"}')
        (f / "model.safetensors").write_bytes(weights)
        return f

    a, b, moved = folder("a", b"\1" * 64), folder("b", b"\2" * 64), folder("c", b"\1" * 64)
    ka, kb, kc = (assets.embedder_key(str(x)) for x in (a, b, moved))
    assert ka != kb and ka == kc and ka.startswith("minilm-")
    assert targets.targets_dir("D", str(a), 32) != targets.targets_dir("D", str(b), 32)
    names = {dataset.DatasetSpec(embedder=str(x)).config_name for x in (a, b)}
    assert len(names) == 2
    assert assets.embedder_key("sentence-transformers/all-MiniLM-L6-v2") == "all-minilm-l6-v2"
    assert assets.embedder_key("org-a/model") != assets.embedder_key("org-b/model")  # a hub id whole
