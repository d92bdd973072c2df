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
    from v2t_jax import outputs, strategies

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
