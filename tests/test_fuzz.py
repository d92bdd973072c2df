"""Bounded fuzzing of what an audit reads from outside: the embedding endpoint's replies and the store files.

Seeded generators (the same cases on every run) mutate well-formed replies and stores: bytes flipped and cut,
HTTP status lines and headers garbled, JSON values of the wrong type, indices repeated or missing, numbers that
are not numbers; .npy headers and data, parquet tables with odd schemas, FAISS files damaged. The contract
under test: the reader returns what it should (vectors of one shape, finite where the reply was accepted) or
raises its one-line error (`RemoteError`, `StoreError`); never another exception, a hang, or a crash. Each test
stops after its case count or its time budget, whichever comes first, and reports how many cases it ran.
Marked slow: `pytest -m slow tests/test_fuzz.py` (CI runs the marked tier).
"""

import json
import random
import subprocess
import sys
import time

import numpy as np
import pytest
from servers import RawServer, http_reply

from v2t_jax.audit.remote import RemoteEmbedder, RemoteError

pytestmark = pytest.mark.slow

BUDGET_S = 60.0
N = 3  # texts per request
D = 8


def _valid_rows(rng: random.Random) -> list:
    rows = [{"object": "embedding", "index": i, "embedding": [rng.uniform(-1, 1) for _ in range(D)]} for i in range(N)]
    rng.shuffle(rows)
    return rows


def _json_mutation(rng: random.Random) -> bytes:
    rows = _valid_rows(rng)
    doc: object = {"object": "list", "data": rows, "model": "m"}
    choice = rng.randrange(14)
    odd_values = [None, True, "1", "", [], {}, -1, 2**70, 1e308 * 10, float("nan"), [[1.0]], "NaN"]
    if choice == 0:
        rows[rng.randrange(N)]["index"] = rng.choice(odd_values + [rng.randrange(-2, N + 2)])
    elif choice == 1:
        del rows[rng.randrange(N)]["index"]
    elif choice == 2:
        rows[rng.randrange(N)]["embedding"] = rng.choice(odd_values)
    elif choice == 3:
        rows[rng.randrange(N)]["embedding"][rng.randrange(D)] = rng.choice(odd_values)
    elif choice == 4:
        rows[rng.randrange(N)]["embedding"] = rows[0]["embedding"][: rng.randrange(D)]
    elif choice == 5:
        rows.append(dict(rows[0]))
    elif choice == 6:
        rows.pop()
    elif choice == 7:
        doc = {"data": rng.choice(odd_values)}
    elif choice == 8:
        doc = rng.choice(odd_values)
    elif choice == 9:
        depth = rng.randrange(1, 200000)
        return b'{"data": ' + b"[" * depth + b"]" * depth + b"}"
    elif choice == 10:
        for r in rows:
            r.pop("index")  # no index at all: the order sent
    elif choice == 11:
        rows[rng.randrange(N)] = rng.choice(odd_values)
    text = json.dumps(doc, allow_nan=True).encode()
    if choice == 12:
        text = text[: rng.randrange(len(text) + 1)]
    elif choice == 13:
        b = bytearray(text)
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        text = bytes(b)
    return text


def _http_mutation(rng: random.Random) -> bytes | list:
    body = _json_mutation(rng)
    choice = rng.randrange(10)
    if choice < 5:
        return http_reply(200, body)
    if choice == 5:  # a status line or header garbled
        raw = bytearray(http_reply(200, body))
        head_end = raw.find(b"\r\n\r\n")
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(max(1, head_end))] = rng.randrange(256)
        return bytes(raw)
    if choice == 6:  # a Content-Length that lies
        return http_reply(200, body, length=max(0, len(body) + rng.randrange(-20, 20)))
    if choice == 7:
        return http_reply(rng.choice([100, 204, 301, 302, 400, 401, 404, 418, 500, 503, 999]), body[:200])
    if choice == 8:  # cut anywhere, headers included
        raw = http_reply(200, body)
        return raw[: rng.randrange(len(raw))]
    return [(http_reply(200, body), 0.0)]  # (as a list of chunks)


def _check_accepted(out: np.ndarray) -> None:
    assert out.dtype == np.float32 and out.shape[0] == N and out.ndim == 2 and np.isfinite(out).all()


def test_fuzz_the_http_client():
    rng = random.Random(20261203)
    replies: list = []
    server = RawServer(lambda request: replies[-1])
    ran = accepted = refused = 0
    kinds: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        while ran < 600 and time.monotonic() - t0 < BUDGET_S:
            replies.append(_http_mutation(rng))
            remote = RemoteEmbedder(server.url, "m", retries=0, timeout_s=2.0, backoff_s=0.0)
            started = time.monotonic()
            try:
                _check_accepted(remote(["a", "b", "c"]))
                accepted += 1
            except RemoteError as e:
                refused += 1
                message = str(e)
                assert "\n" not in message and len(message) <= 600
                kinds[message.split(" answered ")[-1][:40]] = kinds.get(message.split(" answered ")[-1][:40], 0) + 1
            assert time.monotonic() - started < 4.0, "a request outlived its deadline"
            ran += 1
    finally:
        server.close()
    print(f"\nHTTP fuzz: {ran} replies, {accepted} accepted, {refused} refused as one line; kinds: {len(kinds)}")
    assert ran >= 100 and accepted and refused


def _npy_bytes(rng: random.Random) -> bytes:
    import io

    buf = io.BytesIO()
    arr = rng.choice([np.ones((3, D), np.float32), np.ones((2, D), np.float64), np.ones(D, np.float32),
                      np.ones((3, D), np.int8), np.float32(1)])  # fmt: skip
    np.save(buf, arr)
    raw = bytearray(buf.getvalue())
    for _ in range(rng.randrange(0, 4)):
        pos = rng.randrange(min(len(raw), 128)) if rng.random() < 0.8 else rng.randrange(len(raw))
        raw[pos] = rng.choice([rng.randrange(256), ord("9"), ord("("), ord(","), ord("'")])
    if rng.random() < 0.2:
        raw = raw[: rng.randrange(len(raw) + 1)]
    return bytes(raw)


def _parquet_table(rng: random.Random):
    import pyarrow as pa

    n = rng.randrange(0, 5)
    columns = {}
    vector_types = [
        lambda: pa.array([[rng.uniform(-1, 1) for _ in range(D)] for _ in range(n)]),
        lambda: pa.array([[1.0] * rng.randrange(1, D + 2) for _ in range(n)]),  # ragged
        lambda: pa.array([None] * n, pa.list_(pa.float32())),
        lambda: pa.array(["1.0"] * n),
        lambda: pa.array([[["1"]]] * n),
        lambda: pa.array(list(range(n))),
        lambda: pa.array([{"x": 1.0}] * n),
    ]
    other_types = [lambda: pa.array([f"t{i}" for i in range(n)]), lambda: pa.array(list(range(n))),
                   lambda: pa.array([None] * n), lambda: pa.array([[1]] * n), lambda: pa.array([1.5] * n)]  # fmt: skip
    if rng.random() < 0.9:
        columns[rng.choice(["embedding", "vector", "embeddings", "vectors", "vec"])] = rng.choice(vector_types)()
    if rng.random() < 0.7:
        columns[rng.choice(["text", "document", "content", "body"])] = rng.choice(other_types)()
    if rng.random() < 0.7:
        columns[rng.choice(["id", "ids", "key"])] = rng.choice(other_types)()
    return pa.table(columns) if columns else pa.table({"x": pa.array([1])})


def _faiss_bytes(rng: random.Random) -> bytes:
    import faiss

    index = faiss.IndexFlatIP(D)
    index.add(np.ones((4, D), np.float32))
    raw = bytearray(faiss.serialize_index(index).tobytes())
    for _ in range(rng.randrange(1, 4)):
        raw[rng.randrange(min(len(raw), 64))] = rng.randrange(256)
    if rng.random() < 0.3:
        raw = raw[: rng.randrange(len(raw) + 1)]
    return bytes(raw)


def _check_records(records) -> None:
    v = records.vectors
    assert v.dtype == np.float32 and v.ndim == 2 and v.shape[0] == len(records.ids) > 0 and v.shape[1] > 0
    if records.documents is not None:
        assert len(records.documents) == len(records.ids)
        assert all(d is None or isinstance(d, str) for d in records.documents)


STORE_FUZZ = """
import random, resource, sys, time
# a fuzzed header may declare billions of vectors: the readers refuse them (the FAISS one parses in a bounded child,
# tests/test_stores.py); 8 GiB of address space keeps a reader that regressed a failure here, not the OOM killer's
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
sys.path.insert(0, sys.argv[2])
import test_fuzz as fz
from v2t_jax.audit import stores
kind, seed, folder = sys.argv[1], int(sys.argv[3]), sys.argv[4]
rng = random.Random(seed)
ran = read = refused = 0
t0 = time.monotonic()
while ran < 300 and time.monotonic() - t0 < fz.BUDGET_S / 3:
    path = f"{folder}/case.{ {'npy': 'npy', 'parquet': 'parquet', 'faiss': 'faiss'}[kind] }"
    if kind == "parquet":
        import pyarrow.parquet as pq
        pq.write_table(fz._parquet_table(rng), path)
    else:
        open(path, "wb").write(fz._npy_bytes(rng) if kind == "npy" else fz._faiss_bytes(rng))
    try:
        fz._check_records(stores.read(path))
        read += 1
    except stores.StoreError as e:
        assert "\\n" not in str(e)
        refused += 1
    ran += 1
print(ran, read, refused)
"""


@pytest.mark.parametrize("kind", ["npy", "parquet", "faiss"])
def test_fuzz_the_store_readers(tmp_path, kind):
    """In a child process, so that a crash in a client library (a segfault) is a failure the test reports."""
    from pathlib import Path

    here = str(Path(__file__).parent)
    done = subprocess.run([sys.executable, "-c", STORE_FUZZ, kind, here, "7", str(tmp_path)], capture_output=True,
                          text=True, timeout=BUDGET_S * 2)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ran, read, refused = map(int, done.stdout.split()[-3:])
    print(f"\n{kind} fuzz: {ran} files, {read} read, {refused} refused as one line")
    assert ran >= (30 if kind == "faiss" else 50) and refused > 0  # (each FAISS file is read in a child process)


IMPORT_FUZZ = """
import json, random, resource, shutil, sys, time
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
sys.path.insert(0, sys.argv[1])
import test_fuzz as fz
from v2t_jax.weights import vec2text_import
golden, folder, seed = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
ran = read = refused = 0
t0 = time.monotonic()
while ran < 300 and time.monotonic() - t0 < fz.BUDGET_S / 3:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    fz._import_folder(rng, golden, folder)
    try:
        meta = vec2text_import._config(folder)
        vec2text_import._max_length(None, meta, folder)
        vec2text_import.load_folder(folder)
        read += 1
    except (ValueError, KeyError, OSError) as e:  # what `v2t import` says in one line (ModelError is a ValueError)
        assert str(e).strip(), type(e)
        refused += 1
    ran += 1
print(ran, read, refused)
"""


def _import_folder(rng: random.Random, golden, folder) -> None:
    """A vec2text InversionModel folder (the golden tiny inverter) with its config or weights damaged."""
    from safetensors.numpy import load_file, save_file

    sd = load_file(str(golden / "inverter.safetensors"))
    config: object = {"max_seq_length": 32, "num_repeat_tokens": 4}
    odd = [None, True, "32", -5, 0, 10**9, 1e400, [], {}, [32], "x" * 10]
    choice = rng.randrange(10)
    if choice == 0:
        config = {"max_seq_length": rng.choice(odd)}
    elif choice == 1:
        config = rng.choice(odd)
    elif choice == 2:
        key = rng.choice(sorted(sd))
        w = sd[key]
        sd[key] = rng.choice([w.astype(np.int64), w > 0, w * np.nan, w[:0], w.reshape(-1), w.astype(np.float16)])
    elif choice == 3:
        del sd[rng.choice(sorted(sd))]
    save_file(sd, str(folder / "model.safetensors"))
    text = json.dumps(config, allow_nan=True)
    if choice == 4:
        text = "[" * rng.randrange(1, 200_000)
    (folder / "config.json").write_text(text)
    if choice in (5, 6):  # bytes of the weights flipped, or cut
        raw = bytearray((folder / "model.safetensors").read_bytes())
        if choice == 5:
            for _ in range(rng.randrange(1, 6)):
                pos = rng.randrange(min(len(raw), 512)) if rng.random() < 0.7 else rng.randrange(len(raw))
                raw[pos] = rng.randrange(256)
        else:
            raw = raw[: rng.randrange(len(raw))]
        (folder / "model.safetensors").write_bytes(bytes(raw))
    if choice == 7:
        (folder / "config.json").write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))


def test_fuzz_the_import_folders(tmp_path):
    """vec2text checkpoint folders with configs of every JSON shape (lists, 1e400, 200,000-deep nesting, bytes
    that are not UTF-8) and weights damaged (bytes flipped or cut, tensors of int64 / bool / NaN / empty / odd
    shape, tensors missing): the import reads the folder or raises what `v2t import` says in one line. In a child
    process (a crash in safetensors would show)."""
    from pathlib import Path

    here = Path(__file__).parent
    argv = [str(here), str(here / "golden" / "vec2text"), str(tmp_path / "case"), "11"]
    done = subprocess.run([sys.executable, "-c", IMPORT_FUZZ, *argv], capture_output=True, text=True,
                          timeout=BUDGET_S * 2)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ran, read, refused = map(int, done.stdout.split()[-3:])
    print(f"\nimport fuzz: {ran} folders, {read} read, {refused} refused as one line")
    assert ran >= 30 and refused > 0 and read > 0


def test_fuzz_the_cache_folders(tmp_path):
    """Compilation-cache folders in every state another user or a mistake could leave (entries that are FIFOs,
    links to /dev/zero, to files or to nothing, folders, sparse files past the bound, other owners, modes open to
    others; the folder or one above it open to others): `untrusted_cache` answers at once, never waits or raises,
    and trusts only folders whose every entry is a plain file of the user's that nobody else may write."""
    import os
    import stat

    from v2t_jax import commands

    rng = random.Random(5)
    ran = trusted = 0
    t0 = time.monotonic()
    while ran < 400 and time.monotonic() - t0 < BUDGET_S / 3:
        top = tmp_path / f"case{ran}"
        folder = top / "xla"
        folder.mkdir(parents=True)
        for i in range(rng.randrange(0, 4)):
            entry = folder / f"e{i}-cache"
            kind = rng.randrange(9)
            if kind == 0:
                os.mkfifo(entry)
            elif kind == 1:
                entry.symlink_to(rng.choice(["/dev/zero", str(tmp_path / "nowhere"), "/etc/hostname"]))
            elif kind == 2:
                entry.mkdir()
            elif kind == 3:
                with open(entry, "wb") as f:
                    f.truncate(commands.MAX_CACHE_ENTRY_BYTES + rng.randrange(1, 1000))
            else:
                entry.write_bytes(b"program")
                entry.chmod(rng.choice([0o644, 0o600, 0o666, 0o622, 0o000]))
                if rng.random() < 0.2:
                    os.chown(entry, rng.choice([65534, os.getuid()]), 65534)
        folder.chmod(rng.choice([0o700, 0o755, 0o775, 0o777]))
        top.chmod(rng.choice([0o755, 0o777, 0o1777]))
        started = time.monotonic()
        why = commands.untrusted_cache(folder)
        assert time.monotonic() - started < 2.0, "the look at a cache waited"
        assert why is None or (isinstance(why, str) and "\n" not in why)
        if why is None:
            trusted += 1
            entries = [entry.lstat() for entry in folder.iterdir()]
            assert all(stat.S_ISREG(st.st_mode) for st in entries)
            for st in (folder.stat(), *entries):
                # (group-writable only by the user's own group: here root's, which has no other member)
                assert not st.st_mode & 0o002 and (not st.st_mode & 0o020 or st.st_gid == os.getgid())
                assert st.st_uid == os.getuid()
        ran += 1
    print(f"\ncache fuzz: {ran} folders, {trusted} trusted, {ran - trusted} refused with a reason")
    assert ran >= 50 and trusted > 0 and trusted < ran
