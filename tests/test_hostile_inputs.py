"""What a hostile file, a careless user or a planted folder gets from the commands: one line and exit status 2,
nothing written outside the output, nothing waited on forever, nothing copied that does not read back. By class
of fault (the catalogue's other parts: test_bad_inputs.py, test_audit.py, test_remote.py, test_stores.py):

- bad values: every numeric flag checked where it is parsed (a value JAX would overflow on, a million worker
  processes), tracebacks a library raised on user input made one line;
- inputs that must be files: a FIFO (or device) given as any input is refused at once, never read;
- import and export: their outputs keep the rules of every output, and what the loader would refuse is not
  written;
- resume: the state records every flag that changes results, and a damaged row is never copied.
"""

import contextlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from v2t_jax.training import warm_start
from v2t_jax import cli

# ------------------------------------------------------------------------------------------------ helpers


def _run(capsys, argv: list[str]) -> tuple[int, list[str]]:
    """(exit status, the lines on stderr) of `v2t ARGV` in this process (argparse's exit included)."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


def _one_line(code, err, message):
    assert code == 2 and len(err) == 1 and "error:" in err[0] and message in err[0], err
    assert "Traceback" not in err[0]


@contextlib.contextmanager
def _deadline(seconds: int):
    """A test that would hang (a FIFO read) fails instead."""

    def late(*_):
        raise TimeoutError(f"still waiting after {seconds} s")

    old = signal.signal(signal.SIGALRM, late)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def files(tmp_path):
    np.save(tmp_path / "v.npy", np.ones((2, 384), np.float32))
    (tmp_path / "t.txt").write_text("one text\nanother text\n")
    return tmp_path


# ------------------------------------------------------------------------------------------------ bad values

FLAG_CASES = [
    # (command line without the flag, flag, value, what the line says)
    ("invert", "--steps", "2147483648", "--steps must be in [0, 10000]"),
    ("invert", "--steps", str(10**20), "--steps must be in [0, 10000]"),
    ("invert", "--patience", str(10**20), "--patience must be in [0, 10000]"),
    ("invert", "--batch-size", str(10**20), "argument --batch-size: 100000000000000000000 is outside 1..1,048,576"),
    ("invert", "--batch-size", "0", "argument --batch-size: 0 is outside"),
    ("invert", "--batch-size", "many", "argument --batch-size: 'many' is not a whole number"),
    ("invert", "--embedder-batch-size", "0", "argument --embedder-batch-size: 0 is outside 1..4,096"),
    ("invert", "--embedder-retries", "10000", "argument --embedder-retries: 10000 is outside 0..20"),
    ("invert", "--embedder-concurrency", "0", "argument --embedder-concurrency: 0 is outside 1..64"),
    ("audit", "--embedder-concurrency", "1000", "argument --embedder-concurrency: 1000 is outside 1..64"),
    ("invert", "--embedder-dimensions", "0", "argument --embedder-dimensions: 0 is outside 1..65,536"),
    ("invert", "--embedder-rate-wait", "nan", "argument --embedder-rate-wait: nan is outside 0..86400 seconds"),
    ("audit", "--embedder-rate-wait", "-1", "argument --embedder-rate-wait: -1 is outside 0..86400 seconds"),
    ("audit", "--store-timeout", "0", "argument --store-timeout: 0 is outside 0.1..86400 seconds"),
    ("audit", "--store-timeout", "inf", "argument --store-timeout: inf is outside 0.1..86400 seconds"),
    ("audit", "--page-rows", "0", "argument --page-rows: 0 is outside"),
    ("audit", "--limit", "0", "argument --limit: 0 is outside"),
    ("audit", "--limit", str(10**20), "argument --limit"),
    ("audit", "--steps", "-1", "--steps must be in [0, 10000]"),
    ("embed", "--max-length", str(10**9), "argument --max-length: 1000000000 is outside 2..4,096"),
    ("embed", "--batch-size", "-3", "argument --batch-size: -3 is outside"),
    ("data", "--max-tokens", str(10**9), "argument --max-tokens: 1000000000 is outside 4..4,096"),
    ("data", "--workers", "1000000", "argument --workers: 1000000 is outside 1..1,024"),
    ("data", "--seed", "-1", "argument --seed: -1 is outside"),
    ("bench", "--batch", str(10**20), "--batch: 100000000000000000000 is outside 1..1,048,576"),
    ("bench", "--steps", "2147483648", "--steps: 2147483648 is outside 0..10,000"),
    ("bench", "--repeats", "0", "argument --repeats: 0 is outside 1..1,000"),
    ("import", "--max-length", str(10**9), "argument --max-length: 1000000000 is outside 2..4,096"),
    ("export", "--step", "-1", "argument --step: -1 is outside"),
]


def _base(command: str, files: Path) -> list[str]:
    return {
        "invert": ["invert", "--embeddings", str(files / "v.npy"), "--output", str(files / "o.jsonl")],
        "audit": ["audit", str(files / "v.npy"), "--output", str(files / "report")],
        "embed": ["embed", "--input", str(files / "t.txt"), "--output", str(files / "o.npy")],
        "data": ["data", "prepare", "--corpus", str(files / "t.txt"), "--data-dir", str(files / "data")],
        "bench": ["bench", "--checkpoint", str(files / "nothing"), "--output", str(files / "bench")],
        "import": ["import", "vec2text", str(files), "--embedder", str(files), "--output", str(files / "b")],
        "export": ["export", "--workdir", str(files), "--output", str(files / "b")],
    }[command]


@pytest.mark.parametrize("command, flag, value, message", FLAG_CASES, ids=[f"{c[0]} {c[1]} {c[2]}" for c in FLAG_CASES])
def test_every_numeric_flag_refuses_what_it_cannot_take_in_one_line(capsys, files, command, flag, value, message):
    """`--steps 2147483648` and `bench --batch 10^20` overflowed inside JAX (a traceback), `--workers 1000000` asked
    for a million processes: each flag's range is checked where it is parsed, before any work, and nothing is
    made."""
    before = sorted(p.name for p in files.iterdir())
    code, err = _run(capsys, [*_base(command, files), f"{flag}={value}"])
    _one_line(code, err, message)
    assert sorted(p.name for p in files.iterdir()) == before


@pytest.mark.parametrize("command", ["invert", "audit", "embed", "export"])
def test_an_output_name_past_the_file_systems_limit_is_one_line(capsys, files, command):
    """A 300-character output name was a traceback (ENAMETOOLONG from the first look at it); a name that fits
    only without v2t's temporary-file suffixes failed later. Both are one line before any work."""
    for name, message in [("a" * 300, "name is 30"), ("b" * 220, "pick a name of at most 207 bytes")]:
        argv = _base(command, files)
        argv[argv.index("--output") + 1] = str(files / name)
        code, err = _run(capsys, argv)
        _one_line(code, err, message)
    assert not [p for p in files.iterdir() if p.name.startswith(("a", "b", ".a", ".b"))]


# ------------------------------------------------------------------------------------------------ FIFOs

FIFO_CASES = [
    ("invert --embeddings", lambda f, x: ["invert", "--embeddings", x, "--output", str(f / "o.jsonl")]),
    (
        "invert --references",
        lambda f, x: ["invert", "--embeddings", str(f / "v.npy"), "--references", x, "--output", str(f / "o.jsonl")],
    ),  # fmt: skip
    ("embed --input", lambda f, x: ["embed", "--input", x, "--output", str(f / "o.npy")]),
    ("demo --input", lambda f, x: ["demo", "--input", x]),
    ("audit --documents", lambda f, x: ["audit", str(f / "v.npy"), "--documents", x, "--output", str(f / "r")]),
    ("audit STORE.npy", lambda f, x: ["audit", x, "--output", str(f / "r"), "--store-kind", "npy"]),
    ("data prepare --corpus", lambda f, x: ["data", "prepare", "--corpus", x, "--data-dir", str(f / "d")]),
]


@pytest.mark.parametrize("case, argv", FIFO_CASES, ids=[c[0] for c in FIFO_CASES])
def test_a_fifo_given_as_any_input_is_refused_at_once(capsys, files, case, argv):
    """A FIFO as --references, --input, --documents, a .npy store or a corpus made the command wait forever for
    a writer: every input that must be a file is checked to be a regular file before anything reads it."""
    fifo = files / "fifo.npy"
    os.mkfifo(fifo)
    with _deadline(60):
        code, err = _run(capsys, argv(files, str(fifo)))
    _one_line(code, err, "is a FIFO, not a regular file")


def test_a_corpus_that_is_not_utf8_or_nests_past_the_stack_is_one_line(capsys, tmp_path):
    """A non-UTF-8 .jsonl corpus and one nested 200,000 deep were tracebacks (UnicodeDecodeError, RecursionError);
    a --data-dir that is a file, too."""
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    (tmp_path / "deep.jsonl").write_text("[" * 200_000 + "]" * 200_000 + "\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "a-file").write_text("not a folder")
    for corpus, message in [("latin1.jsonl", "latin1.jsonl:1: not UTF-8 text"),
                            ("deep.jsonl", "deep.jsonl:1: JSON nested too deep"),
                            ("latin1.txt", "latin1.txt:1: not UTF-8 text")]:  # fmt: skip
        code, err = _run(capsys, ["data", "prepare", "--corpus", str(tmp_path / corpus), "--data-dir",
                                  str(tmp_path / "d"), "--quiet", "--no-targets"])  # fmt: skip
        _one_line(code, err, message)
    code, err = _run(capsys, ["data", "prepare", "--corpus", str(tmp_path / "latin1.txt"), "--data-dir",
                              str(tmp_path / "a-file")])  # fmt: skip
    _one_line(code, err, "is a file; pass a folder for the datasets")


def test_workers_are_no_more_than_the_jobs():
    """`--workers 12` started 14 processes for 2 jobs: no process is started without a job to do."""
    from v2t_jax.data import passages

    started = []

    class Pool:
        def __init__(self, n, **kw):
            started.append(n)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def imap(self, fn, jobs, chunksize=1):
            return iter([] for _ in jobs)

    import multiprocessing

    class Ctx:
        Pool = staticmethod(lambda n, **kw: Pool(n, **kw))

    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    real = multiprocessing.get_context
    multiprocessing.get_context = lambda *a: Ctx()
    try:
        passages.build([[], [], []], tok, 32, 0, {"train": 1.0}, workers=12, progress=False)
    finally:
        multiprocessing.get_context = real
    assert started == [3]


# ------------------------------------------------------------------------------------------------ resume


def test_a_stop_cosine_of_minus_infinity_is_recorded_as_itself():
    """`--stop-cosine=-inf` was recorded as null (strict JSON has no infinity), like no flag: a rerun without
    the flag continued the run and mixed two searches. The record keeps it apart."""
    from v2t_jax import outputs
    from v2t_jax.search import strategies

    minus, none = (json.loads(outputs.dumps(strategies.Search(2, stop_cosine=s).record())) for s in (-np.inf, None))
    assert minus["stop_cosine"] == "-inf" and none["stop_cosine"] is None and minus != none
    assert strategies.Search(2, stop_cosine=0.9).record()["stop_cosine"] == 0.9


@pytest.mark.parametrize("damage", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_a_damaged_row_in_a_partial_output_is_computed_again_never_copied(capsys, tmp_path, damage):
    """A complete row changed on disk in OUTPUT.partial was copied into the final output as a non-JSON line;
    now the resume starts again at its batch (a whole batch: batches are the unit a rerun computes)."""
    from v2t_jax import outputs

    out = tmp_path / "o.jsonl"
    run = {"what": "a run"}
    stream = outputs.RowStream(out, run, 2, "invert")
    stream.append([{"text": f"row {i}"} for i in range(2)])
    stream.append([{"text": f"row {i}"} for i in range(2, 4)])
    stream.append([{"text": f"row {i}"} for i in range(4, 6)])
    lines = stream.partial.read_bytes().split(b"\n")
    lines[3] = damage  # the fourth row: its batch (rows 3 and 4) and what follows are done again
    stream.partial.write_bytes(b"\n".join(lines))
    again = outputs.RowStream(out, run, 2, "invert")
    assert again.done == 2 and "row 4 of" in capsys.readouterr().err
    again.append([{"text": "row 2"}, {"text": "row 3"}])
    again.finish()
    assert [r["text"] for r in again.rows()] == ["row 0", "row 1", "row 2", "row 3"]


def test_a_damaged_row_in_a_finished_output_is_one_line(tmp_path):
    from v2t_jax import outputs

    out = tmp_path / "o.jsonl"
    stream = outputs.RowStream(out, {"r": 1}, 1, "audit")
    stream.append([{"text": "a"}])
    stream.finish()
    out.write_bytes(out.read_bytes() + b"garbage\n")
    with pytest.raises(outputs.OutputError, match="row 2 of .* is damaged"):
        stream.rows()


# ------------------------------------------------------------------------------------------------ import, export


@pytest.fixture(scope="module")
def exported(tmp_path_factory, small_bundle):
    """(a bundle, its vec2text checkpoints): the small random bundle with the embedder's token ids in its configs
    (what vec2text's form needs), written out by `v2t export vec2text`."""
    import dataclasses

    from v2t_jax import api
    from v2t_jax.weights import vec2text_export

    _, model = small_bundle
    ids = dict(eos_token_id=102, pad_token_id=0, decoder_start_token_id=0)
    fix = lambda c: dataclasses.replace(c, t5=c.t5.replace(**ids))  # noqa: E731
    p = model.program
    fixed = api.build(fix(p.inverter), model.params["inverter"], fix(p.corrector), model.params["corrector"],
                      model.embedder, model.max_length)  # fmt: skip
    root = tmp_path_factory.mktemp("exported")
    bundle = fixed.save(root / "bundle")
    return bundle, vec2text_export.from_bundle(bundle, root / "v2t")


def _tree(folder: Path) -> dict:
    """Every entry under `folder`: its bytes' digest (files) and mode."""
    import hashlib

    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                         p.stat().st_mode) for p in sorted(folder.rglob("*"))}  # fmt: skip


def _import(exported_v2t: Path, out: Path, minilm_dir, *extra) -> list[str]:
    return ["import", "vec2text", str(exported_v2t / "inversion"), str(exported_v2t / "corrector"), "--embedder",
            str(minilm_dir), "--output", str(out), "--max-length", "12", *extra]  # fmt: skip


def _full_disk(*_, **__):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_import_overwrite_keeps_the_old_bundle_when_the_new_one_cannot_be_written(capsys, tmp_path, exported,
                                                                                  minilm_dir, monkeypatch):  # fmt: skip
    """`import vec2text --overwrite` onto a good bundle deleted it before writing the new one: a full disk left
    neither. Now the new bundle is written beside it and renamed in whole; on failure the old one is as it was
    and nothing is left beside it."""
    from v2t_jax import bundle

    _, v2t = exported
    out = tmp_path / "b"
    assert _run(capsys, _import(v2t, out, minilm_dir))[0] == 0
    before = _tree(out)
    monkeypatch.setattr("safetensors.numpy.save_file", _full_disk)
    code, err = _run(capsys, _import(v2t, out, minilm_dir, "--overwrite"))
    _one_line(code, err, "No space left on device")
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    monkeypatch.undo()
    assert _run(capsys, _import(v2t, out, minilm_dir, "--overwrite"))[0] == 0  # (and with room, it is replaced)
    assert bundle.read_meta(out).max_length == 12 and sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_export_keeps_what_it_did_not_make_and_leaves_nothing_on_failure(capsys, tmp_path, exported, monkeypatch):
    """`export vec2text` deleted a user's own OUTPUT.partial folder, left a 724 MB .partial behind on a
    dangling-link output or a full disk, and wrote weights 0600 under umask 022."""
    from v2t_jax.weights import vec2text_export

    bundle, _ = exported
    mine = tmp_path / "out.partial"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own")
    old = os.umask(0o022)
    try:
        assert _run(capsys, ["export", "vec2text", "--bundle", str(bundle), "--output", str(tmp_path / "out")])[0] == 0
    finally:
        os.umask(old)
    assert (mine / "notes.txt").read_text() == "the user's own"
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert modes == {0o644}, modes
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    code, err = _run(capsys, ["export", "vec2text", "--bundle", str(bundle), "--output", str(tmp_path / "dangling")])
    _one_line(code, err, "exists; give --output a new folder")
    monkeypatch.setattr(vec2text_export, "_tokenizer_files", _full_disk)
    code, err = _run(capsys, ["export", "vec2text", "--bundle", str(bundle), "--output", str(tmp_path / "full")])
    _one_line(code, err, "No space left on device")
    deep = tmp_path / "made" / "for it" / "out"  # (the folders made on the way go too)
    code, err = _run(capsys, ["export", "vec2text", "--bundle", str(bundle), "--output", str(deep)])
    _one_line(code, err, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "out", "out.partial"]


def test_two_exports_to_one_output_one_stops_at_once(capsys, tmp_path, exported):
    """Two exports (or imports) to one output at once: a traceback, or both exit 0 writing the same files. The
    output is locked for the run; the second stops with the holder's pid."""
    from v2t_jax import outputs

    bundle, _ = exported
    out = tmp_path / "out"
    with outputs.lock(out, "export"):
        code, err = _run(capsys, ["export", "vec2text", "--bundle", str(bundle), "--output", str(out)])
    _one_line(code, err, f"is being written by another v2t export (pid {os.getpid()})")
    assert not out.exists()


def _damage_config(folder: Path, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _damage_weights(folder: Path, change):
    from safetensors.numpy import load_file, save_file

    sd = load_file(str(folder / "model.safetensors"))
    change(sd)
    save_file(sd, str(folder / "model.safetensors"))


def _set(key, value):
    def change(sd):
        sd[key] = value(sd[key])

    return change


REL = "encoder_decoder.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
IMPORT_DAMAGE = [
    ("config is a list", lambda f: (f / "config.json").write_text("[1, 2]"), "holds a JSON list"),
    ("max_seq_length 10^9", lambda f: _damage_config(f, max_seq_length=10**9), "max_seq_length is 1000000000"),
    ("max_seq_length -5", lambda f: _damage_config(f, max_seq_length=-5), "max_seq_length is -5"),
    ("max_seq_length true", lambda f: _damage_config(f, max_seq_length=True), "max_seq_length is True"),
    ("max_seq_length 1e400", lambda f: (f / "config.json").write_text('{"max_seq_length": 1e400}'),
     "max_seq_length is inf"),
    ("past the embedder's positions", lambda f: _damage_config(f, max_seq_length=1000),
     "a token budget of 1000 is past the 512 positions"),
    ("NaN weights", lambda f: _damage_weights(f, _set("embedding_transform.0.bias",
                                                                             lambda w: w * np.nan)),
     "holds NaN or infinite values; not written"),
    ("int64 weights", lambda f: _damage_weights(f, _set("embedding_transform.0.bias", lambda w: w.astype(np.int64))),
     "tensor embedding_transform.0.bias is int64; a model's weights are floating point"),
    ("bool weights", lambda f: _damage_weights(f, _set("embedding_transform.0.bias", lambda w: w > 0)),
     "tensor embedding_transform.0.bias is bool"),
    ("0 heads", lambda f: _damage_weights(f, _set(REL, lambda w: w[:, :0])), "0 attention heads"),
    ("0 buckets", lambda f: _damage_weights(f, _set(REL, lambda w: w[:0])), "0 relative-position buckets"),
    ("config is a FIFO", lambda f: ((f / "config.json").unlink(), os.mkfifo(f / "config.json")), "is a FIFO"),
    ("model.safetensors is a FIFO", lambda f: ((f / "model.safetensors").unlink(), os.mkfifo(f / "model.safetensors")),
     "is a FIFO"),
]  # fmt: skip


@pytest.mark.parametrize("case, damage, message", IMPORT_DAMAGE, ids=[c[0] for c in IMPORT_DAMAGE])
def test_an_import_that_would_write_a_bundle_its_loader_refuses_is_one_line(capsys, tmp_path, exported, minilm_dir,
                                                                            case, damage, message):  # fmt: skip
    """Import wrote bundles its own loader refused or misread (a max_seq_length of 10^9, -5 or true; NaN weights;
    int64 or bool weights cast and run as garbage) and raised tracebacks on configs that are lists, lengths of
    1e400, 0 heads or 0 buckets; FIFOs hung it. Each is one line before anything is written."""
    import shutil

    _, v2t = exported
    source = tmp_path / "v2t"
    shutil.copytree(v2t, source)
    damage(source / "inversion")
    argv = _import(source, tmp_path / "b", minilm_dir)
    argv.remove("--max-length"), argv.remove("12")  # (the checkpoint's own max_seq_length decides)
    if "max_seq_length" not in case and "positions" not in case:
        argv += ["--max-length", "12"]
    with _deadline(120):
        code, err = _run(capsys, argv)
    _one_line(code, err, message)
    assert not (tmp_path / "b").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".b")]


def test_a_pickled_bin_is_refused_in_one_line_and_never_runs(capsys, tmp_path, exported, minilm_dir):
    """A pytorch_model.bin that torch.load(weights_only=True) refuses surfaced as UnpicklingError; it is one line,
    and the code its pickle carries never runs."""
    import pickle
    import shutil

    _, v2t = exported
    source = tmp_path / "v2t"
    shutil.copytree(v2t, source)
    marker = tmp_path / "the pickle ran"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    (source / "inversion" / "model.safetensors").unlink()
    (source / "inversion" / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Payload()}))
    code, err = _run(capsys, _import(source, tmp_path / "b", minilm_dir))
    _one_line(code, err, "is not a plain PyTorch state dict of tensors")
    assert not marker.exists() and not (tmp_path / "b").exists()


T5_GARBLE = [
    ("a list", "[1, 2, 3]", "holds a JSON list"),
    ("a field missing", '{"vocab_size": 60}', "KeyError"),
    ("text for a number", '{"vocab_size": "60", "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, '
     '"num_heads": 4}', "TypeError"),
    ("0 heads", '{"vocab_size": 60, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 0}',
     "num_heads must be positive, got 0"),
    ("nested past the stack", "[" * 200_000, "RecursionError"),
    ("not UTF-8", None, "UnicodeDecodeError"),
]  # fmt: skip


@pytest.mark.parametrize("case, text, message", T5_GARBLE, ids=[c[0] for c in T5_GARBLE])
def test_a_garbled_t5_init_config_is_one_line(tmp_path, case, text, message):
    """`--config.t5.init` folders whose config.json is a list, lacks a field, holds text where numbers go, 0
    heads, nests past the stack or is not UTF-8 were tracebacks (TypeError, AttributeError, ZeroDivisionError,
    RecursionError): each is one `TrainingError` line naming the folder."""
    from safetensors.numpy import save_file

    from v2t_jax.training import tasks

    (tmp_path / "config.json").write_bytes(text.encode() if text is not None else b'{"x": "caf\xe9"}')
    save_file({"shared.weight": np.zeros((60, 32), np.float32)}, str(tmp_path / "model.safetensors"))
    warm_start.pretrained_t5_config.cache_clear()
    with pytest.raises(tasks.TrainingError) as e:
        warm_start.pretrained_t5_config(str(tmp_path))
    assert str(e.value).startswith(f"config.t5.init: {tmp_path} does not load as T5") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_overwrite_replaces_a_bundle_folder_only_when_it_holds_nothing_else(capsys, tmp_path, exported, minilm_dir):
    """A folder replaced whole must not take the user's own files with it: `--overwrite` replaces a folder that
    holds only what a bundle holds, and is one line (the folder as it was) when it holds anything else."""
    _, v2t = exported
    out = tmp_path / "b"
    assert _run(capsys, _import(v2t, out, minilm_dir))[0] == 0
    (out / "my notes.txt").write_text("mine")
    before = _tree(out)
    code, err = _run(capsys, _import(v2t, out, minilm_dir, "--overwrite"))
    _one_line(code, err, "holds my notes.txt, which v2t did not write there")
    assert _tree(out) == before
