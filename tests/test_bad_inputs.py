"""Bad inputs and unsafe files: each case reproduces a fault first found by hand, and asserts the exit status or
exception, the one-line message, and that nothing was created, changed or left behind."""

import json
import os
import shutil
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from v2t_jax import api, assets, cli, commands, outputs
from v2t_jax.search import strategies


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
    assert commands.read_texts(path) == ["one\u2028still one", "two\x85and\x0ctwo", "three"]


@pytest.mark.parametrize("existing", [None, 0o640])
def test_outputs_follow_the_umask_and_a_replaced_file_keeps_its_mode(tmp_path, existing):
    out = tmp_path / "v.npy"
    if existing is not None:
        out.write_bytes(b"old")
        os.chmod(out, existing)
    old = os.umask(0o022)
    try:
        outputs.save_npy_atomic(out, np.zeros(3, np.float32))
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
    assert len(err) == 1 and "--sbeam must be in [1, 64]" in err[0] and "got 1000" in err[0]
    assert _files(tmp_path) == {"v.npy"}


@pytest.mark.parametrize("prior", ["-1", "nan", "inf", "1000"])
def test_a_prior_out_of_range_is_refused_before_any_work(capsys, tmp_path, prior):
    np.save(tmp_path / "v.npy", np.ones((1, 384), np.float32))
    args = ["invert", "--embeddings", str(tmp_path / "v.npy"), "--output", str(tmp_path / "o.jsonl"), "--quiet"]
    assert cli.main(args + ["--prior", prior]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prior must be in [0, 100]" in err[0]
    assert _files(tmp_path) == {"v.npy"}


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--polish", "-1"], "--polish must be in [0, 100]"),
        (["--polish", "500"], "--polish must be in [0, 100]"),
        (["--polish", "2", "--embedder-url", "http://127.0.0.1:9/v1"], "--polish needs the embedder's gradients"),
    ],
)
def test_a_polish_that_cannot_run_is_refused_before_any_work(capsys, tmp_path, extra, message):
    np.save(tmp_path / "v.npy", np.ones((1, 384), np.float32))
    args = ["invert", "--embeddings", str(tmp_path / "v.npy"), "--output", str(tmp_path / "o.jsonl"), "--quiet"]
    assert cli.main(args + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert _files(tmp_path) == {"v.npy"}


def test_the_api_checks_the_prior():
    assert strategies.check_prior(0) == 0.0 and strategies.check_prior("0.25") == 0.25
    for bad in (-0.1, float("nan"), 101, "x", None):
        with pytest.raises(api.ModelError, match="prior must be"):
            strategies.check_prior(bad)


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--config.batch_size=0"], "config.batch_size must be a positive integer, got 0"),
        (["--config.num_steps=-5"], "config.num_steps must be a positive integer, got -5"),
        (["--config.checkpoint_every=0"], "config.checkpoint_every must be a positive integer"),
        (["--config.learning_rate=0"], "config.learning_rate must be > 0"),
        (["--config.warmup_steps=-1"], "config.warmup_steps must be >= 0"),
        (["--distributed", "garbage"], "expected auto or HOST:PORT,NUM_PROCESSES,PROCESS_ID"),
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
    assert len(err) == 1 and "argument --batch-size: 0 is outside 1.." in err[0]


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


# ------------------------------------------------------------------------------- damaged and tampered bundles


def _meta(folder: Path, change) -> None:
    import json

    meta = json.loads((folder / "v2t_model.json").read_text())
    change(meta)
    (folder / "v2t_model.json").write_text(json.dumps(meta))


def _tensors(folder: Path, change, name: str = "inverter.safetensors") -> None:
    """Rewrites a weights file and records its new digest: tampering that a digest alone cannot catch."""
    from safetensors.numpy import load_file, save_file

    flat = load_file(str(folder / name))
    change(flat)
    save_file(flat, str(folder / name))
    _meta(folder, lambda m: m["files"].__setitem__(name, assets.sha256_file(folder / name)))


def _big_int8(flat: dict) -> str:
    return next(k for k, v in flat.items() if v.dtype == np.int8)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


def _json_text(text: bytes):
    return lambda f: (f / "v2t_model.json").write_bytes(text)


BUNDLE_DAMAGE = [
    # (case, damage(folder), message) -- each run through `v2t invert --checkpoint`
    ("truncated metadata", lambda f: (f / "v2t_model.json").write_bytes((f / "v2t_model.json").read_bytes()[:40]),
     "is not valid JSON"),
    ("metadata not UTF-8", _json_text(b'{"format": 2, "embedder": "\xff"}'), "is not valid JSON"),
    ("metadata a list", _json_text(b"[1, 2]"), "must hold a JSON object"),
    ("newer format", lambda f: _meta(f, _set("format", 99)), "bundle format 99"),
    ("no embedder", lambda f: _meta(f, lambda m: m.pop("embedder")), "lacks 'embedder'"),
    ("embedder a number", lambda f: _meta(f, _set("embedder", 42)), "embedder is 42"),
    ("max_length a string", lambda f: _meta(f, _set("max_length", "12")), "max_length is '12'"),
    ("max_length 0", lambda f: _meta(f, _set("max_length", 0)), "max_length is 0"),
    ("negative token id", lambda f: _meta(f, _set("eos_id", -1)), "eos_id is -1"),
    ("unknown weight format", lambda f: _meta(f, _set("weights", "int4")), "weights is 'int4'"),
    ("inverter without t5", lambda f: _meta(f, lambda m: m["inverter"].pop("t5")), "inverter lacks t5"),
    ("t5 field of the wrong type", lambda f: _meta(f, lambda m: m["inverter"]["t5"].__setitem__("d_model", "32")),
     "inverter.t5.d_model is '32'"),
    ("unknown config field", lambda f: _meta(f, lambda m: m["corrector"].__setitem__("extra_layers", 3)),
     "unknown fields (extra_layers)"),
    ("corrector not an object", lambda f: _meta(f, _set("corrector", [1])), "corrector must be an object"),
    ("bad embedder digest", lambda f: _meta(f, _set("embedder_digest", "abc")), "not a sha256"),
    ("files not a mapping", lambda f: _meta(f, _set("files", ["inverter.safetensors"])), "files must map"),
    ("weights file missing", lambda f: (f / "corrector.safetensors").unlink(), "missing corrector.safetensors"),
    ("weights file truncated", lambda f: (f / "inverter.safetensors").write_bytes(b"\0" * 100),
     "does not match the digest"),
    ("truncated, no digests", lambda f: [(f / "inverter.safetensors").write_bytes(b"\7" * 100),
                                         _meta(f, lambda m: m.pop("files"))], "cannot be read"),
    ("weights file swapped", lambda f: shutil.copyfile(f / "inverter.safetensors", f / "corrector.safetensors"),
     "does not match the digest"),
    ("int32 tensor", lambda f: _tensors(f, lambda t: t.__setitem__(k := next(iter(t)), t[k].astype(np.int32))),
     "bundles hold float32"),
    ("NaN tensor", lambda f: _tensors(f, lambda t: t[next(k for k in t if t[k].dtype == np.float32)].fill(np.nan)),
     "NaN or infinite"),
    ("int8 scale of the wrong shape", lambda f: _tensors(f, lambda t: t.__setitem__(
        _big_int8(t) + "@scale", np.ones((1, 1), np.float32))), "not the float32 per-row scale"),
    ("int8 tensor without its scale", lambda f: _tensors(f, lambda t: t.pop(_big_int8(t) + "@scale")), "has no"),
    ("zero int8 scale", lambda f: _tensors(f, lambda t: t[_big_int8(t) + "@scale"].fill(0.0)), "non-positive"),
    ("another embedder's bundle", lambda f: _meta(f, _set("embedder_digest", "0" * 64)), "was trained for another"),
    ("embedder folder that escapes", lambda f: _meta(f, _set("embedder", str(_escaping_embedder(f)))),
     "outside the model folder"),
    # a bundle with its own vocabulary (format 3: tokenizer.json, cls_id null)
    ("vocabulary that escapes", lambda f: _meta(f, _own("../tokenizer.json")), "vocabulary is '../tokenizer.json'"),
    ("format 3 naming no vocabulary", lambda f: _meta(f, _set("format", 3)), "names its vocabulary"),
    ("own vocabulary file missing", lambda f: _meta(f, _own()), "missing tokenizer.json"),
    ("own vocabulary with a cls_id", lambda f: [(f / "tokenizer.json").write_text("{}"),
                                                _meta(f, lambda m: [_own()(m), m.__setitem__("cls_id", 101)])],
     "cls_id must be null"),
    ("own vocabulary not a tokenizer", lambda f: [(f / "tokenizer.json").write_text('{"model": 1}'),
                                                  _meta(f, _own())], "tokenizer.json does not load"),
    # fields in range: each of these reached JAX (a traceback) or allocated without bound before
    ("unknown dtype", lambda f: _meta(f, _t5("dtype", "float8")), "inverter.t5.dtype is 'float8', not one of"),
    ("zero relative-position buckets", lambda f: _meta(f, _t5("relative_attention_num_buckets", 0)),
     "relative_attention_num_buckets is 0, outside 2..1024"),
    ("a million layers", lambda f: _meta(f, _t5("num_layers", 10**6)), "num_layers is 1000000, outside 1..128"),
    ("a million heads in the corrector", lambda f: _meta(f, _t5("num_heads", 10**6, "corrector")),
     "corrector.t5.num_heads is 1000000"),
    ("dropout of 2", lambda f: _meta(f, lambda m: m["inverter"].__setitem__("dropout_rate", 2.0)),
     "dropout_rate is 2.0, not in [0, 1)"),
    ("layer-norm epsilon of 0", lambda f: _meta(f, lambda m: m["corrector"].__setitem__("layer_norm_eps", 0.0)),
     "layer_norm_eps is 0.0, not in (0, 1)"),
    ("token id past the vocabulary", lambda f: _meta(f, _set("eos_id", 10**6)), "eos_id 1000000 is past the"),
    ("max_length past the embedder's positions", lambda f: _meta(f, _set("max_length", 4000)),
     "max_length 4000 is past its embedder's 512 positions"),
]  # fmt: skip


def _t5(key, value, model="inverter"):
    """Metadata edit: one field of a model's T5 config."""
    return lambda m: m[model]["t5"].__setitem__(key, value)


def _own(name: str = "tokenizer.json"):
    """Metadata edit: the bundle claims a vocabulary of its own."""
    return lambda m: m.update(format=3, vocabulary=name, cls_id=None)


def _escaping_embedder(bundle: Path) -> Path:
    """A sentence-transformers folder whose modules.json points outside itself."""
    import json

    folder = bundle.parent / "evil_embedder"
    folder.mkdir()
    (folder / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Transformer",
                                                      "path": "../../etc"}]))  # fmt: skip
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize("case, damage, message", BUNDLE_DAMAGE, ids=[c[0] for c in BUNDLE_DAMAGE])
def test_a_damaged_bundle_is_one_line_before_any_model_is_built(capsys, tmp_path, small_bundle, case, damage, message):
    folder, model = small_bundle
    bundle = tmp_path / "bundle"
    if "int8" in case:
        model.save(bundle, "int8")
    else:
        shutil.copytree(folder, bundle)
    damage(bundle)
    before = {p: p.read_bytes() for p in bundle.iterdir()}
    np.save(tmp_path / "v.npy", np.ones((1, 384), np.float32))
    out = tmp_path / "o.jsonl"
    code = cli.main(["invert", "--embeddings", str(tmp_path / "v.npy"), "--checkpoint", str(bundle),
                     "--output", str(out), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("v2t invert: error: ") and message in err[0], err
    assert not out.exists() and {p: p.read_bytes() for p in bundle.iterdir()} == before


def test_bundles_record_digests_and_their_embedder(small_bundle):
    """What the checks above rely on: a written bundle names each weights file's sha256 and its embedder's
    weights digest, and reads back whole."""
    import json

    from v2t_jax import bundle

    folder, model = small_bundle
    meta = json.loads((folder / "v2t_model.json").read_text())
    assert meta["format"] == bundle.FORMAT and meta["embedder_digest"] == model.embedder.digest
    assert meta["files"] == {
        n: assets.sha256_file(folder / n) for n in ("inverter.safetensors", "corrector.safetensors")
    }
    assert api.load_model(folder).program == model.program
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o666 & ~umask}  # safetensors alone gives 0600


# ------------------------------------------------------------------------------- v2t invert: streaming, resume


def test_invert_streams_its_rows_and_resumes_after_a_full_disk(capsys, monkeypatch, tmp_path, small_bundle):
    """Rows go to OUTPUT.partial batch by batch; a write that fails (here: ENOSPC on the third batch) is one line
    that keeps the finished rows; the same command then resumes after them and the output equals an
    uninterrupted run's. Another command on the same output is refused while the partial run is there."""
    import errno

    folder, model = small_bundle
    rng = np.random.default_rng(0)
    np.save(tmp_path / "v.npy", rng.normal(size=(7, 384)).astype(np.float32))
    args = ["invert", "--embeddings", str(tmp_path / "v.npy"), "--checkpoint", str(folder), "--steps", "1",
            "--batch-size", "2", "--trace", "--quiet", "--output"]  # fmt: skip
    assert cli.main(args + [str(tmp_path / "whole.jsonl")]) == 0
    whole = (tmp_path / "whole.jsonl").read_text()
    assert len(whole.splitlines()) == 7

    real_open, calls = open, []

    def full_disk(file, mode="r", *a, **kw):
        if str(file).endswith(".partial") and "a" in mode:
            calls.append(file)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *a, **kw)

    out = tmp_path / "o.jsonl"
    monkeypatch.setattr("builtins.open", full_disk)
    assert cli.main(args + [str(out)]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "the 4 rows done are kept" in err[0]
    partial = tmp_path / "o.jsonl.partial"
    assert not out.exists() and partial.read_text() == "".join(whole.splitlines(keepends=True)[:4])

    with real_open(partial, "a") as f:  # a torn row from a kill mid-write is cut off on resume
        f.write('{"text": "half')
    assert cli.main(args[:-2] + ["--steps", "2", "--quiet", "--output", str(out)]) == 2
    assert "holds an interrupted run of other inputs or settings" in capsys.readouterr().err
    assert cli.main(args + [str(out)]) == 0
    assert "resuming after the 4 rows" in capsys.readouterr().err
    assert out.read_text() == whole
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("o.")) == ["o.jsonl"]

    calls.clear()  # the disk fills before the first row: the run's record exists, its rows file does not
    first = tmp_path / "first.jsonl"

    def no_rows_file(file, mode="r", *a, **kw):
        if str(file).endswith(".partial"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr("builtins.open", no_rows_file)
    assert cli.main(args + [str(first)]) == 2
    monkeypatch.undo()
    assert "the 0 rows done are kept" in capsys.readouterr().err
    assert not (tmp_path / "first.jsonl.partial").exists() and (tmp_path / "first.jsonl.partial.json").exists()
    assert cli.main(args + [str(first)]) == 0 and first.read_text() == whole


@pytest.mark.slow
def test_a_rerun_continues_an_interrupted_run_with_the_search_it_started_with(capsys, monkeypatch, tmp_path,
                                                                                small_bundle):  # fmt: skip
    """Without --patience `v2t invert` stops a vector after DEFAULT_PATIENCE steps without a better hypothesis, and
    without --sbeam it searches DEFAULT_SBEAM x DEFAULT_TOKEN_BEAM, and records both with the rows; a rerun of an
    interrupted run continues with the patience and beams that run recorded (no patience: a run of an earlier
    version, or --patience 0, means 0; no token beam: its sbeam, as a greedy run of an earlier version), so it
    equals an uninterrupted run of that search. A --patience that differs from the record is refused."""
    import errno

    from v2t_jax.search import strategies

    folder, _ = small_bundle
    np.save(tmp_path / "v.npy", np.random.default_rng(1).normal(size=(4, 384)).astype(np.float32))
    args = ["invert", "--embeddings", str(tmp_path / "v.npy"), "--checkpoint", str(folder), "--steps", "6",
            "--batch-size", "2", "--quiet", "--output"]  # fmt: skip
    whole = {}
    runs = (("off", ["--patience", "0"]), ("default", []), ("greedy", ["--sbeam", "1"]))
    for name, flags in runs:
        assert cli.main(args + [str(tmp_path / f"{name}.jsonl")] + flags) == 0
        whole[name] = (tmp_path / f"{name}.jsonl").read_text()
    assert cli.main(args + [str(tmp_path / "three.jsonl"), "--patience", str(strategies.DEFAULT_PATIENCE)]) == 0
    assert (tmp_path / "three.jsonl").read_text() == whole["default"]

    real_open = open
    assert whole["greedy"] != whole["default"]
    for name, flags in runs:
        out, calls = tmp_path / f"cut_{name}.jsonl", []

        def full_disk(file, mode="r", *a, **kw):
            if str(file).endswith(".partial") and "a" in mode:
                calls.append(file)
                if len(calls) == 2:
                    raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(file, mode, *a, **kw)

        monkeypatch.setattr("builtins.open", full_disk)
        assert cli.main(args + [str(out)] + flags) == 2
        monkeypatch.undo()
        assert "the 2 rows done are kept" in capsys.readouterr().err
        saved = json.loads((tmp_path / f"cut_{name}.jsonl.partial.json").read_text())
        assert saved.get("patience") == (strategies.DEFAULT_PATIENCE if name != "off" else None)
        assert (saved["sbeam"], saved.get("token_beam")) == ((1, None) if name == "greedy" else (
            strategies.DEFAULT_SBEAM, strategies.DEFAULT_TOKEN_BEAM))  # fmt: skip
        other = "3" if name == "off" else "0"
        assert cli.main(args + [str(out), "--patience", other]) == 2
        assert "holds an interrupted run of other inputs or settings" in capsys.readouterr().err
        assert cli.main(args + [str(out)]) == 0  # the same command as a user reruns it, without --patience
        err = capsys.readouterr().err
        assert "resuming after the 2 rows" in err
        assert ("continues with --patience 0, as it started" in err) == (name == "off")
        assert ("continues with --sbeam 1, as it started" in err) == (name == "greedy")
        assert out.read_text() == whole[name]


@pytest.mark.slow
def test_invert_keeps_its_compiled_programs_for_the_next_run(tmp_path, small_bundle):
    """`v2t invert` reads and writes JAX's persistent compilation cache in CACHE/xla (here --cache-dir): the first
    run fills it, a rerun writes the same rows; V2T_COMPILE_CACHE=0 leaves it alone, and an environment with its
    own JAX_COMPILATION_CACHE_DIR keeps that one."""
    import subprocess
    import sys

    folder, _ = small_bundle
    np.save(tmp_path / "v.npy", np.random.default_rng(2).normal(size=(4, 384)).astype(np.float32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # (every program kept, however fast the machine)
    cache = tmp_path / "cache"

    def invert(out: str, **extra_env) -> str:
        cmd = [sys.executable, "-m", "v2t_jax.cli", "invert", "--embeddings", str(tmp_path / "v.npy"),
               "--checkpoint", str(folder), "--steps", "3", "--output", str(tmp_path / out), "--cache-dir",
               str(cache), "--quiet"]  # fmt: skip
        proc = subprocess.run(cmd, env={**env, **extra_env}, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return (tmp_path / out).read_text()

    first = invert("a.jsonl", V2T_COMPILE_CACHE="0")
    assert not (cache / "xla").exists()
    assert invert("b.jsonl") == first
    kept = sorted(p.name for p in (cache / "xla").iterdir())
    assert kept
    assert invert("c.jsonl") == first and sorted(p.name for p in (cache / "xla").iterdir()) == kept
    own = tmp_path / "own"
    shutil.copytree(cache / "xla", own)  # (the same programs: this run reads them rather than compiling again)
    assert invert("d.jsonl", JAX_COMPILATION_CACHE_DIR=str(own)) == first
    assert sorted(p.name for p in (cache / "xla").iterdir()) == kept


@pytest.mark.parametrize(
    "case, why",
    [
        ("others may write the folder", "others may write to it"),
        ("the folder is another user's", "it belongs to another user"),
        ("an entry is another user's", "its entry k-cache belongs to another user"),
        ("others may write an entry", "others may write to its entry k-cache"),
        ("another group may write an entry", "others may write to its entry k-cache"),
        ("an entry is a FIFO", "its entry k-cache is a FIFO"),
        ("an entry links to /dev/zero", "its entry k-cache is a symbolic link"),
        ("an entry is larger than any program", "more than any program of v2t's"),
        ("a folder above is writable by others", "above it is writable by others"),
    ],
)
def test_a_compilation_cache_that_is_not_only_the_users_is_not_used(tmp_path, case, why):
    """Cache entries are native code: an entry planted by another user under one search's key, holding another
    search's program, silently changed results, and a FIFO or a link to /dev/zero hung or exhausted every later
    run. A cache folder that others could have written to, or any entry that is not a plain file of the user's of
    a bounded size, is refused with the reason; a folder of the user's own is trusted."""
    from v2t_jax import commands

    top = tmp_path / "home"
    folder = top / "cache" / "xla"
    folder.mkdir(parents=True)
    (folder / "ok-cache").write_bytes(b"program")
    (folder / "ok-cache").chmod(0o664)  # (umask 002: writable by the user's own group, which has no other member)
    assert commands.untrusted_cache(folder) is None
    entry = folder / "k-cache"
    entry.write_bytes(b"program")
    if case == "others may write the folder":
        folder.chmod(0o777)
    elif case == "the folder is another user's":
        os.chown(folder, 65534, 65534)
    elif case == "an entry is another user's":
        os.chown(entry, 65534, 65534)
    elif case == "others may write an entry":
        entry.chmod(0o666)
    elif case == "another group may write an entry":
        os.chown(entry, os.getuid(), 65534)
        entry.chmod(0o664)
    elif case == "an entry is a FIFO":
        entry.unlink()
        os.mkfifo(entry)
    elif case == "an entry links to /dev/zero":
        entry.unlink()
        entry.symlink_to("/dev/zero")
    elif case == "an entry is larger than any program":
        with open(entry, "r+b") as f:
            f.truncate(commands.MAX_CACHE_ENTRY_BYTES + 1)  # (sparse: takes no disk)
    elif case == "a folder above is writable by others":
        top.chmod(0o777)
    assert why in commands.untrusted_cache(folder)


def test_a_run_given_a_planted_cache_compiles_without_it_and_never_waits(tmp_path, small_bundle):
    """End to end: `v2t invert` with a cache holding a FIFO and a link to /dev/zero finishes with one warning line,
    the rows of a run without any cache, and the cache folder as it was."""
    import subprocess
    import sys

    folder, _ = small_bundle
    np.save(tmp_path / "v.npy", np.random.default_rng(2).normal(size=(2, 384)).astype(np.float32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    cache = tmp_path / "cache"
    (cache / "xla").mkdir(parents=True)
    os.mkfifo(cache / "xla" / "planted-cache")
    (cache / "xla" / "zero-cache").symlink_to("/dev/zero")
    before = sorted(p.name for p in (cache / "xla").iterdir())

    def invert(out: str, **extra_env) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "v2t_jax.cli", "invert", "--embeddings", str(tmp_path / "v.npy"),
               "--checkpoint", str(folder), "--steps", "1", "--output", str(tmp_path / out), "--cache-dir",
               str(cache), "--quiet"]  # fmt: skip
        return subprocess.run(cmd, env={**env, **extra_env}, capture_output=True, text=True, timeout=300)

    planted, plain = invert("a.jsonl"), invert("b.jsonl", V2T_COMPILE_CACHE="0")
    assert planted.returncode == plain.returncode == 0, planted.stderr[-2000:]
    warning = planted.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("v2t: warning: not using the compilation cache"), warning
    assert "compiling without it" in warning[0]
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert sorted(p.name for p in (cache / "xla").iterdir()) == before


def test_a_text_file_named_npy_gets_no_pickle_advice(capsys, tmp_path):
    (tmp_path / "v.npy").write_text("0.1 0.2 0.3\n")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name, message in (("v.npy", "not a .npy file (no NumPy header)"), ("obj.npy", "never loads")):
        out = tmp_path / "o.jsonl"
        assert cli.main(["invert", "--embeddings", str(tmp_path / name), "--output", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "allow_pickle" not in err[0], err
        assert not out.exists()


def test_embed_on_a_full_disk_and_after_a_killed_run(capsys, monkeypatch, tmp_path):
    """A full disk is one line with nothing left behind; the temporary file a killed run left beside the output
    (its pid no longer running) is removed by the next run, a live process's is not."""
    import errno
    import subprocess

    (tmp_path / "in.txt").write_text("first text\nsecond text\n")
    out = tmp_path / "v.npy"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".v.npy.{dead.pid}.x1y2.tmp"
    live = tmp_path / f".v.npy.{os.getpid()}.z3.tmp"
    stale.write_bytes(b"half a file")
    live.write_bytes(b"in progress")

    def no_space(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    args = ["embed", "--input", str(tmp_path / "in.txt"), "--output", str(out), "--quiet"]
    monkeypatch.setattr(np, "save", no_space)
    assert cli.main(args) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "nothing was written" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.txt", live.name])  # stale swept, no temp left
    assert cli.main(args) == 0 and np.load(out).shape == (2, 384)
    assert live.exists()


def test_a_stand_in_embedder_binds_its_bundles_to_the_weights_it_approximates(tmp_path, minilm_dir, small_bundle):
    """The GPU kit's dequantised MiniLM declares the float32 weights' digest (embedders.STAND_IN_FILE): bundles
    trained with it record that digest and load with the real embedder; a malformed declaration is refused."""
    import json

    from v2t_jax.models import embedders

    folder = tmp_path / "stand_in"
    shutil.copytree(minilm_dir, folder)
    real = embedders.load_embedder(minilm_dir)
    (folder / embedders.STAND_IN_FILE).write_text(json.dumps({"digest": real.digest}))
    stand_in = embedders.load_embedder(folder)
    assert stand_in.binding_digest == real.digest == real.binding_digest
    import dataclasses

    _, model = small_bundle
    dataclasses.replace(model, embedder=stand_in).save(tmp_path / "bundle")  # a model trained with the stand-in
    assert json.loads((tmp_path / "bundle" / "v2t_model.json").read_text())["embedder_digest"] == real.digest
    (folder / embedders.STAND_IN_FILE).write_text(json.dumps({"digest": "abc"}))
    with pytest.raises(ValueError, match="must be the sha256"):
        embedders.load_embedder(folder)


# ------------------------------------------------------------------------------- outputs that are not files


def _invert_args(tmp_path, out, *extra):
    np.save(tmp_path / "v.npy", np.ones((1, 384), np.float32))
    return ["invert", "--embeddings", str(tmp_path / "v.npy"), "--output", str(out), "--quiet", *extra]


def _not_loaded(monkeypatch):
    """Any model load fails the test: these refusals come before any work."""

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(api, "load_model", refuse)


@pytest.mark.parametrize("command", ["invert", "embed"])
@pytest.mark.parametrize("kind", ["symlink to stdout", "symlink to a file", "FIFO", "dangling symlink"])
def test_an_output_that_is_not_a_regular_file_is_refused_and_kept(capsys, tmp_path, monkeypatch, command, kind):
    """--overwrite replaced a character device and a symlink to /proc/self/fd/1 with regular files (as root, the
    real /dev/null would be); the path is now refused, before any work, and left as it was."""
    out = tmp_path / "out"
    target = tmp_path / "target.txt"
    if kind == "symlink to stdout":
        out.symlink_to("/proc/self/fd/1")
    elif kind == "symlink to a file":
        target.write_text("keep me")
        out.symlink_to(target)
    elif kind == "dangling symlink":
        out.symlink_to(tmp_path / "nowhere")
    else:
        os.mkfifo(out)
    _not_loaded(monkeypatch)
    if command == "invert":
        args = _invert_args(tmp_path, out, "--overwrite")
    else:
        (tmp_path / "in.txt").write_text("a text\n")
        args = ["embed", "--input", str(tmp_path / "in.txt"), "--output", str(out), "--overwrite", "--quiet"]
    before = (os.lstat(out).st_mode, os.readlink(out) if out.is_symlink() else None)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    what = "a FIFO" if kind == "FIFO" else "a symbolic link"
    assert len(err) == 1 and f"{out} is {what}, not a regular file" in err[0], err
    assert (os.lstat(out).st_mode, os.readlink(out) if out.is_symlink() else None) == before
    assert not target.exists() or target.read_text() == "keep me"


def test_write_atomic_never_renames_over_a_device(tmp_path):
    """The mechanism itself (used by every command): a path that became a link to a device while the work ran is
    refused at the rename, and the temporary file is gone."""
    from v2t_jax import outputs

    out = tmp_path / "null"
    out.symlink_to("/dev/null")
    with pytest.raises(outputs.OutputError, match="is a symbolic link"):
        outputs.write_text_atomic(out, "data")
    assert out.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["null"]
    assert os.path.exists("/dev/null") and not Path("/dev/null").is_file()


def _mount_tmpfs(path: Path, options: str) -> None:
    import subprocess

    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode:
        pytest.skip("needs root to mount a small file system")


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs, filled up, and a read-only one."""
    import subprocess

    full, ro = tmp_path / "full", tmp_path / "ro"
    _mount_tmpfs(full, "size=64k")
    subprocess.run(["dd", "if=/dev/zero", f"of={full / 'fill'}", "bs=4k"], capture_output=True)
    _mount_tmpfs(ro, "size=64k,ro")
    yield full, ro
    for p in (full, ro):
        subprocess.run(["umount", str(p)])


@pytest.mark.parametrize("command", ["invert", "audit"])
@pytest.mark.parametrize("where", ["full", "read-only", "under a file"])
def test_an_output_that_cannot_be_written_is_found_before_any_work(capsys, tmp_path, monkeypatch, command, where,
                                                                   request):  # fmt: skip
    """--output on a full or read-only file system, or under a regular file, was found only after the model had
    loaded and the work had run; it is now one line before anything is loaded."""
    if where == "under a file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "sub" / "out"
        message = "afile is a file, not a folder"
    else:
        full, ro = request.getfixturevalue("tiny_fs")
        out = (full if where == "full" else ro) / "out"
        message = "no space left on the device" if where == "full" else "the file system is read-only"
    _not_loaded(monkeypatch)
    if command == "invert":
        args = _invert_args(tmp_path, out)
    else:
        np.save(tmp_path / "v.npy", np.ones((1, 384), np.float32))
        args = ["audit", str(tmp_path / "v.npy"), "--output", str(out), "--quiet"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"v2t {command}: error: ") and message in err[0], err
    assert not out.exists()


# ------------------------------------------------------------------------------- one writer per output


def test_a_second_invert_on_the_same_output_stops_at_once(capsys, tmp_path, small_bundle):
    """Two `v2t invert` runs into one output both exited 0 and rows were lost; the second now stops with the
    holder's pid, and a finished run's lock is gone."""
    from v2t_jax import outputs

    folder, _ = small_bundle
    out = tmp_path / "o.jsonl"
    args = _invert_args(tmp_path, out, "--checkpoint", str(folder), "--steps", "1")
    with outputs.lock(out, "invert"):
        assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out} is being written by another v2t invert (pid {os.getpid()})" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy"]
    assert cli.main(args) == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl", "v.npy"]


def test_two_invert_processes_on_one_output_one_waits_out(tmp_path, small_bundle):
    """Real processes: while one holds the output (its lock taken in a child that sleeps), another is refused;
    after the holder is killed with SIGKILL, its lock is gone with it and the output can be written."""
    import subprocess
    import sys

    folder, _ = small_bundle
    out = tmp_path / "o.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from v2t_jax import outputs\n"
         "with outputs.lock(Path(sys.argv[1]), 'invert'):\n print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == b"held"
    args = _invert_args(tmp_path, out, "--checkpoint", str(folder), "--steps", "0")
    second = subprocess.run([sys.executable, "-m", "v2t_jax.cli", *args], capture_output=True, text=True)
    assert second.returncode == 2 and f"being written by another v2t invert (pid {holder.pid})" in second.stderr
    holder.kill()
    holder.wait()
    assert cli.main(args) == 0 and out.exists()


# ------------------------------------------------------------------------------- strict JSON, honest numbers


def _strict(text: str):
    import json

    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))


def test_invert_at_zero_steps_writes_real_cosines_in_strict_json(tmp_path, small_bundle):
    """`v2t invert --steps 0` wrote "cosine": NaN (invalid JSON for strict parsers): the inverter's text was
    never embedded. Its cosine is now measured, equal to the embedder's own."""
    folder, model = small_bundle
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(3, 384)).astype(np.float32)
    np.save(tmp_path / "v.npy", vectors)
    out = tmp_path / "o.jsonl"
    assert cli.main(["invert", "--embeddings", str(tmp_path / "v.npy"), "--output", str(out), "--quiet",
                     "--checkpoint", str(folder), "--steps", "0"]) == 0  # fmt: skip
    rows = [_strict(line) for line in out.read_text().splitlines()]
    texts, trace = model.invert_embeddings(vectors, num_steps=0, return_trace=True)
    assert [r["text"] for r in rows] == texts and np.isfinite(trace["cosine"]).all()
    np.testing.assert_allclose([r["cosine"] for r in rows], trace["cosine"], atol=1e-5)
    # the same number as the cosine a correction step starts from (step 0 of a 1-step trace)
    _, one = model.invert_embeddings(vectors, num_steps=1, return_trace=True)
    np.testing.assert_allclose([r["cosine"] for r in rows], [s["cosines"][0] for s in one["steps"]], atol=1e-5)
    # --token-beam at 0 steps is the inverter's (it was dropped without a word): the API's search
    beamed = tmp_path / "beam.jsonl"
    assert cli.main(["invert", "--embeddings", str(tmp_path / "v.npy"), "--output", str(beamed), "--quiet",
                     "--checkpoint", str(folder), "--steps", "0", "--token-beam", "3"]) == 0  # fmt: skip
    rows = [_strict(line) for line in beamed.read_text().splitlines()]
    texts, trace = model.invert(vectors, strategies.Search(0, token_beam=3), return_trace=True)
    assert [r["text"] for r in rows] == texts
    np.testing.assert_allclose([r["cosine"] for r in rows], trace["cosine"], atol=1e-5)


def test_strict_json_writes_null_for_numbers_that_are_not_finite():
    from v2t_jax import outputs

    text = outputs.dumps({"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": "NaN"})
    assert _strict(text) == {"a": None, "b": [1.5, None, {"c": None}], "d": "NaN"}


def test_extreme_float128_vectors_normalise_instead_of_overflowing():
    """float128 rows of 1e4000 passed the finiteness check and overflowed to inf in float64 after it."""
    if np.finfo(np.longdouble).max < 1e4000:
        pytest.skip("this platform's long double is float64")
    fake = types.SimpleNamespace(
        dim=4, embedder=types.SimpleNamespace(name="e", config=types.SimpleNamespace(normalize=True))
    )
    rows = np.array([[3, 4, 0, 0], [1, -1, 1, -1]], np.longdouble)
    for scale in (np.longdouble("1e4000"), np.longdouble("1e-4000")):
        out = api.Vec2Text.check_embeddings(fake, rows * scale)
        np.testing.assert_allclose(out, [[0.6, 0.8, 0, 0], [0.5, -0.5, 0.5, -0.5]], atol=1e-6)


# ------------------------------------------------------------------------------- .npy files that lie


@pytest.mark.parametrize(
    "case, message",
    [
        ("0-d array", "an array of shape (), not [N, D] vectors"),
        ("1-d array", "an array of shape (384,), not [N, D] vectors"),
        ("header claims 10**12 rows", "its header claims 1,000,000,000,000 x 384 float32 values"),
        ("truncated data", "it is truncated or damaged"),
        ("integers", "int64 values: embeddings must be floating point"),
        ("unparsable header", "cannot read"),
    ],
)
@pytest.mark.parametrize("command", ["invert", "audit"])
def test_a_npy_that_lies_is_one_line_before_anything_is_allocated(capsys, tmp_path, monkeypatch, case, message,
                                                                 command):  # fmt: skip
    path = tmp_path / "v.npy"
    if case == "0-d array":
        np.save(path, np.float32(1.0))
    elif case == "1-d array":
        np.save(path, np.ones(384, np.float32))
    elif case == "integers":
        np.save(path, np.ones((2, 384), np.int64))
    else:
        np.save(path, np.ones((2, 384), np.float32))
        raw = path.read_bytes()
        if case == "header claims 10**12 rows":
            raw = raw.replace(b"(2, 384)", b"(1000000000000, 384)")
        elif case == "truncated data":
            raw = raw[:-100]
        else:
            raw = raw.replace(b"'descr'", b"'dscr'")
        path.write_bytes(raw)
    _not_loaded(monkeypatch)
    out = tmp_path / "out"
    args = (["invert", "--embeddings", str(path), "--output", str(out)] if command == "invert"
            else ["audit", str(path), "--output", str(out)])  # fmt: skip
    assert cli.main(args + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


# ------------------------------------------------------------------------------- configs that do not load


@pytest.mark.parametrize(
    "source, message",
    [
        ("def get_config(:\n", "does not load (SyntaxError"),
        ("import no_such_module_here\n", "does not load (ModuleNotFoundError"),
        ("def get_config():\n    return {}['x']\n", "get_config('') failed (KeyError"),
        ("def get_config():\n    return 42\n", "returned int, not an ml_collections.ConfigDict"),
        ("get_config = 3\n", "has no get_config()"),
    ],
)
def test_a_train_config_that_does_not_load_is_one_line(capsys, tmp_path, source, message):
    (tmp_path / "cfg.py").write_text(source)
    work = tmp_path / "w"
    assert cli.main(["train", "--config", str(tmp_path / "cfg.py"), "--workdir", str(work)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("v2t train: error: ") and message in err[0], err
    assert not work.exists()


def test_a_bundle_is_never_written_through_a_link(tmp_path, small_bundle):
    """`v2t export` and `Vec2Text.save` write the bundle's files in place: a link to a device (or anywhere) among
    them is refused before anything is written, and left as it was."""
    _, model = small_bundle
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "corrector.safetensors").symlink_to("/dev/null")
    with pytest.raises(api.ModelError, match="corrector.safetensors is a symbolic link, not a regular file"):
        model.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["corrector.safetensors"]
    assert os.readlink(folder / "corrector.safetensors") == "/dev/null"


def test_bench_refuses_an_output_that_is_a_link_before_any_work(capsys, tmp_path, monkeypatch):
    (tmp_path / "bench.md").symlink_to("/dev/null")
    _not_loaded(monkeypatch)
    code = cli.main(["bench", "--checkpoint", "x", "--output", str(tmp_path / "bench"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "bench.md is a symbolic link" in err[0], err


@pytest.mark.parametrize("name", ["o.jsonl.partial", "o.jsonl.partial.json"])
def test_a_linked_partial_file_is_never_truncated_or_appended_to(capsys, tmp_path, monkeypatch, name):
    """A resumed run truncates OUTPUT.partial to its whole batches and appends to it: were it a link, the file
    it points to would be cut. Refused before any work; the target keeps its bytes."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n" * 10)
    (tmp_path / name).symlink_to(victim)
    _not_loaded(monkeypatch)
    assert cli.main(_invert_args(tmp_path, tmp_path / "o.jsonl")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{name} is a symbolic link, not a regular file" in err[0], err
    assert victim.read_text() == "precious\n" * 10
