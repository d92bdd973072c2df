"""The store registry (`stores.KINDS_READ`) without any store library: a new kind is one entry."""

import numpy as np
import pytest

from v2t_jax.audit import stores


def test_a_store_kind_registered_once_is_detected_read_and_checked(tmp_path, monkeypatch):
    """One `Kind` entry (a reader and its file suffix) makes `stores.read` recognise the file, read it, pass the
    options that apply, and hold it to every common check (documents given, --collection, empty)."""
    calls = []

    def read_vec(path, opts):
        calls.append(opts)
        v = np.loadtxt(path, ndmin=2).astype(np.float32)
        return stores.Records([f"r{i}" for i in range(len(v))], v, None, "vec", str(path))

    monkeypatch.setitem(stores.KINDS_READ, "vec", stores.Kind(read_vec, suffixes=(".vec",)))
    f = tmp_path / "store.vec"
    f.write_text("1 0 0\n0 1 0\n")
    assert stores.detect(f) == "vec"
    records = stores.read(f, documents=["a", "b"], vector_column="ignored")
    assert records.ids == ["r0", "r1"] and records.vectors.shape == (2, 3) and records.documents == ["a", "b"]
    assert calls[0].vector_column == "ignored" and calls[0].collection is None
    assert stores.read(f, kind="vec").kind == "vec"
    with pytest.raises(stores.StoreError, match="--collection names a Chroma collection, LanceDB table or Qdrant"):
        stores.read(f, collection="x")
    with pytest.raises(stores.StoreError, match="--documents holds 1 texts for the 2 records"):
        stores.read(f, documents=["a"])
    (tmp_path / "other.bin").write_text("")
    with pytest.raises(stores.StoreError, match=r"\.parquet/\.vec file"):
        stores.detect(tmp_path / "other.bin")
    with pytest.raises(stores.StoreError, match="unknown store kind 'nope': one of auto, chroma"):
        stores.read(f, kind="nope")


CRAFTED_FAISS = """
import resource, struct, sys
# the guard of this test, not of the reader: a reader that trusts the header allocates 5 GB under it and fails below
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
import faiss, numpy as np
from v2t_jax.audit import stores
index = faiss.IndexFlatIP(8)
index.add(np.ones((4, 8), np.float32))
raw = bytearray(faiss.serialize_index(index).tobytes())
at = raw.find(struct.pack("<Q", 32))  # the length of the stored codes (4 x 8 floats)
raw[at : at + 8] = struct.pack("<Q", 1_250_000_000)  # now 5 GB of floats, in a file of 173 bytes
open(sys.argv[1], "wb").write(raw)
try:
    stores.read(sys.argv[1])
    print("read")
except stores.StoreError as e:
    print(str(e).replace("\\n", " "))
# this process's own peak (VmHWM: ru_maxrss would carry the pytest worker's from before the exec), the reader's
hwm = [int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(*hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""


def test_a_faiss_header_that_declares_gigabytes_is_refused_without_allocating_them(tmp_path):
    """faiss.read_index believes a header: this 173-byte index makes it allocate 5 GB (the OOM killer, on a
    smaller machine). The reader parses in a child whose address space is bounded by the file's size."""
    pytest.importorskip("faiss")
    import subprocess
    import sys

    path = tmp_path / "crafted.faiss"
    done = subprocess.run([sys.executable, "-c", CRAFTED_FAISS, str(path)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    message, peaks = done.stdout.strip().splitlines()[-2:]
    assert max(map(int, peaks.split())) < 1024, f"peak memory {peaks} MiB (this process, the reader's child)"
    assert message == (f"{path}: its header declares more data than the file holds: a damaged or crafted FAISS "
                       "index, not read")  # fmt: skip


@pytest.mark.parametrize("kind", ["flat", "idmap2", "hnsw", "ivfpq"])
def test_a_faiss_index_comes_back_whole_through_the_reading_child(tmp_path, kind):
    """Ids and vectors as the index gives them back, through the child's pipe (3,000 x 96 floats: many pipe
    buffers), and the lossy-code note for a PQ index."""
    faiss = pytest.importorskip("faiss")
    x = np.random.default_rng(0).standard_normal((3000, 96)).astype(np.float32)
    user_ids = np.arange(3000, dtype=np.int64) * 7 + 11
    if kind == "flat":
        index = faiss.IndexFlatIP(96)
    elif kind == "idmap2":
        index = faiss.IndexIDMap2(faiss.IndexFlatL2(96))
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(96, 8)
    else:
        index = faiss.IndexIVFPQ(faiss.IndexFlatL2(96), 96, 4, 8, 8)
        index.train(x)
    index.add_with_ids(x, user_ids) if kind == "idmap2" else index.add(x)
    faiss.write_index(index, str(tmp_path / "store.faiss"))
    records = stores.read(tmp_path / "store.faiss")
    assert records.kind == "faiss" and records.vectors.dtype == np.float32 and records.vectors.shape == x.shape
    assert records.ids == ([str(i) for i in user_ids] if kind == "idmap2" else [str(i) for i in range(3000)])
    if kind == "ivfpq":  # the index's own reconstructions, and the report says they are lossy
        index.make_direct_map()
        assert np.array_equal(records.vectors, index.reconstruct_n(0, 3000))
        assert not np.allclose(records.vectors, x, atol=1e-3)
        assert "keeps 8 bytes per vector" in records.note
    else:
        assert np.array_equal(records.vectors, x) and records.note is None


def _python_that_runs(tmp_path, monkeypatch, line: str) -> None:
    """The FAISS reading child's Python replaced by a shell script running `line`, and a store for it to read."""
    import sys

    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{line}\n")
    script.chmod(0o755)
    (tmp_path / "store.faiss").write_bytes(b"IxFI")
    monkeypatch.setattr(sys, "executable", str(script))


def test_a_crash_of_the_faiss_reader_is_one_line(tmp_path, monkeypatch):
    """A segfault inside faiss (some damaged files do that) ends the reading child, not the audit."""
    pytest.importorskip("faiss")

    _python_that_runs(tmp_path, monkeypatch, "kill -SEGV $$")
    with pytest.raises(stores.StoreError) as e:
        stores.read(tmp_path / "store.faiss")
    path = tmp_path / "store.faiss"
    assert str(e.value) == (f"faiss stopped reading {path} (killed by SIGSEGV): the index is damaged or not one "
                            "faiss.read_index reads; write it again with faiss.write_index")  # fmt: skip


def test_a_faiss_ivf_whose_header_claims_millions_of_vectors_is_refused_before_giving_them_back(tmp_path):
    """A 7.9 KB IVF index whose header claimed 2M vectors took 4.5 GB: faiss parses it (its inverted lists are
    empty) and `reconstruct_n` gives back what the header says. Every vector takes its code's bytes in the file,
    so a header claiming more than the file can hold is one line, before anything is given back."""
    faiss = pytest.importorskip("faiss")
    x = np.random.default_rng(0).standard_normal((40, 96)).astype(np.float32)
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(96), 96, 2)
    index.train(x)
    index.add(x)
    path = tmp_path / "ivf.faiss"
    faiss.write_index(index, str(path))
    raw = bytearray(path.read_bytes())
    assert raw[:4] == b"IwFl" and int.from_bytes(raw[8:16], "little") == 40  # (fourcc, d, then ntotal)
    raw[8:16] = (2_000_000).to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(stores.StoreError) as e:
        stores.read(path)
    assert "its header claims 2,000,000 vectors of 384 bytes each and the file holds" in str(e.value)


def test_a_faiss_read_that_never_ends_is_one_line(tmp_path, monkeypatch):
    """The reading child had no deadline: a parse that hangs hung the audit. It is killed past its deadline (a
    minute and the time to read the file at 20 MB/s; here shortened) and the audit says so."""
    pytest.importorskip("faiss")

    _python_that_runs(tmp_path, monkeypatch, "exec sleep 60")
    monkeypatch.setattr(stores, "_FAISS_SECONDS", 0.5)
    with pytest.raises(stores.StoreError, match=r"faiss took more than 1 s to read .*store.faiss, a file of 4 bytes"):
        stores.read(tmp_path / "store.faiss")


@pytest.mark.parametrize("name", ["s.faiss", "s.npy", "s.parquet"])
def test_a_store_file_that_is_a_fifo_is_refused_at_once(tmp_path, name):
    """A FIFO given as a .faiss or .npy store hung the audit (the reader waits for a writer that never comes)."""
    import os

    os.mkfifo(tmp_path / name)
    with pytest.raises(stores.StoreError, match=rf"store .*{name} is a FIFO, not a regular file"):
        stores.read(tmp_path / name)


def test_a_parquet_store_is_read_no_further_than_the_limit(tmp_path):
    """A 5 KB parquet file of dictionary-coded text that expands to 1.5 GB was read whole even for one record
    (`--limit 1`); now only the rows asked for are read: the limit's records, and the store's own count."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    n = 300_000
    every = pa.array(np.zeros(n, np.int64))
    table = pa.table({"vector": pa.array([[0.5, 0.25]], pa.list_(pa.float32())).take(every),
                      "text": pa.array(["x" * 5000]).take(every)})  # fmt: skip
    pq.write_table(table, tmp_path / "bomb.parquet", compression="zstd", use_dictionary=True)
    assert (tmp_path / "bomb.parquet").stat().st_size < 20_000
    records = stores.read(tmp_path / "bomb.parquet", limit=3)
    assert len(records) == 3 and records.total == n and records.documents == ["x" * 5000] * 3
    pq.write_table(table.select(["vector"]), tmp_path / "vectors.parquet", compression="zstd")
    with pytest.raises(stores.StoreError, match=f"--documents holds 3 texts for the {n} records"):
        stores.read(tmp_path / "vectors.parquet", limit=3, documents=["a", "b", "c"])


def test_a_store_reader_whose_package_is_missing_says_what_to_install(tmp_path, monkeypatch):
    """FAISS is read in a child process, so here it is only looked for (not imported); a missing package is one
    line naming it, for it and for a reader that imports its package here."""
    import importlib.util
    import sys

    (tmp_path / "store.faiss").write_bytes(b"IxFI")
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # (an import of it raises ImportError)
    with pytest.raises(stores.StoreError, match=r"needs faiss-cpu: pip install faiss-cpu \(or v2t-jax\[audit\]\)$"):
        stores.read(tmp_path / "store.faiss")
    with pytest.raises(stores.StoreError, match=r"needs pyarrow: pip install pyarrow"):
        stores.read(tmp_path / "t.parquet")
