"""Reading the vectors (and, where kept, the texts) out of a vector store, through the store's own client library,
for `v2t audit`.

    records = stores.read("path/to/chroma_folder", collection="docs")   # chromadb.PersistentClient
    records = stores.read("path/to/lancedb_folder", collection="docs")  # lancedb.connect; or the docs.lance folder
    records = stores.read("index.faiss")                                # faiss.read_index
    records = stores.read("vectors.npy", documents=texts)               # or .parquet

    store = stores.read("postgresql://auditor@db/rag?table=chunks")       # a database store: `Paged`, see
    store = stores.read("qdrant://host:6333/docs")                       # `v2t_jax.audit.servers`; also a local
    store = stores.read("milvus://host:19530/docs")                      # Qdrant folder or Milvus Lite PATH.db

Each reader returns `Records`: ids, float32 vectors [N, D], the stored documents (or None) and what the store
records of the embedder (Chroma keeps its collection's embedding-function name and configuration); a database
store opens as `Paged`, read a page at a time in key order (its caller closes it). Every fault
(no such store or collection, a store that is locked or damaged, an empty collection, a missing client library,
a column that does not hold what it should) is one `StoreError` line.

**Nothing in the store is written**: a store is evidence, and an audit leaves its files byte for byte as it
found them. SQLite is opened read-only (`mode=ro`); Chroma's client, which writes to any store it opens (a
lock row, its HNSW files), reads a snapshot copy made in a temporary folder (SQLite's backup API from the
read-only connection, so the copy is consistent) that is removed afterwards. FAISS, LanceDB, .npy and parquet
are read by readers that only read. `tests/test_audit.py` hashes every file of every kind of store before and
after an audit.

**Nor may a store take the audit down**: a .npy header is checked against its file before anything is
allocated, and a FAISS index, whose header faiss believes, is parsed in a child process whose memory is bounded
by the file's size (a crash there is a `StoreError` line too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from v2t_jax.audit.records import (  # (the readers' shared pieces; `stores.Records` etc. for callers)
    Options, Paged, Records, StoreError, _brief, _copy_store, _need, _pick_one, _store_file, bounded,
)  # fmt: skip
from v2t_jax.outputs import InputError, file_kind, input_file

_PAGE = 1000  # records per Chroma request


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of store: its reader and how `detect` recognises it. A new store is one entry in `KINDS_READ`
    plus its reader in this module."""

    read: Any  # (path, Options) -> Records
    suffixes: tuple[str, ...] = ()  # a file of this kind
    is_folder: Any = None  # Path -> bool: a folder of this kind
    collections: bool = False  # holds named collections or tables (--collection)
    folder_sign: str = ""  # what a folder of this kind holds, for the error when a folder is no store


def _is_lancedb(path: Path) -> bool:
    return path.suffix == ".lance" or any(p.suffix == ".lance" and p.is_dir() for p in path.iterdir())


KINDS_READ: dict[str, Kind] = {
    "chroma": Kind(lambda p, o: _chroma(p, o.collection), is_folder=lambda p: (p / "chroma.sqlite3").exists(),
                   collections=True, folder_sign="chroma.sqlite3"),
    "lancedb": Kind(lambda p, o: _lancedb(p, o.collection, o.vector_column, o.text_column, o.id_column),
                    is_folder=_is_lancedb, collections=True, folder_sign="a .lance table"),
    "faiss": Kind(lambda p, o: _faiss(p), suffixes=(".faiss", ".index")),
    "npy": Kind(lambda p, o: _npy(p), suffixes=(".npy",)),
    "parquet": Kind(lambda p, o: _parquet(p, o.vector_column, o.text_column, o.id_column, o.limit),
                    suffixes=(".parquet",)),
    # local folders of database stores, read a page at a time (`Paged`); their servers are URLs (`read`)
    "qdrant": Kind(lambda p, o: _servers().qdrant_folder(p, o), is_folder=lambda p: _servers().is_qdrant_folder(p),
                   collections=True, folder_sign="meta.json and collection/ (QdrantClient(path=...))"),
    "milvus": Kind(lambda p, o: _servers().milvus_folder(p, o), is_folder=lambda p: _servers().is_milvus_folder(p),
                   collections=True, folder_sign="collections/*/schema.json (Milvus Lite's PATH.db)"),
    "postgresql": Kind(None),  # a postgresql:// URL only
}  # fmt: skip


def _servers():
    from v2t_jax.audit import servers

    return servers


KINDS = ("auto", *KINDS_READ)


def detect(path: Path) -> str:
    folders = [k for k, v in KINDS_READ.items() if v.is_folder is not None]
    if path.is_dir():
        for kind in folders:
            if KINDS_READ[kind].is_folder(path):
                return kind
        signs = "; ".join(f"a {k} folder holds {KINDS_READ[k].folder_sign}" for k in folders)
        raise StoreError(f"{path} is a folder but no store v2t reads ({signs})")
    suffix = path.suffix.lower()
    for kind, entry in KINDS_READ.items():
        if suffix in entry.suffixes:
            return kind
    files = "/".join(x for v in KINDS_READ.values() for x in v.suffixes)
    raise StoreError(
        f"cannot tell what store {path} is: pass a {' or '.join(folders)} folder or a {files} file (or --store-kind)"
    )


def read(
    store: str | os.PathLike,
    kind: str = "auto",
    collection: str | None = None,
    documents: list[str] | None = None,
    vector_column: str | None = None,
    text_column: str | None = None,
    id_column: str | None = None,
    limit: int | None = None,
    timeout_s: float = 60.0,
) -> Records | Paged:
    """The records of `store` (see the module docstring), the first `limit` of them if given; `documents`: one
    text per record, for stores that keep none (FAISS, .npy). A database store (a postgresql://, qdrant:// or
    milvus:// URL, a local Qdrant folder or Milvus Lite store) opens as `Paged` (`v2t_jax.audit.servers`); the
    caller closes it."""
    if kind != "auto" and kind not in KINDS_READ:
        raise StoreError(f"unknown store kind {kind!r}: one of auto, {', '.join(KINDS_READ)}")
    options = Options(collection, vector_column, text_column, id_column, limit, timeout_s)
    server = _servers().scheme_kind(str(store), kind) if isinstance(store, str) else None
    if server is not None:
        if documents is not None:
            raise StoreError("--documents is for stores that keep no texts; a database store's texts are a column")
        try:  # (connecting and the first looks at the store: bounded as every page is)
            opened = bounded(lambda: _servers().open_url(store, server, options), timeout_s, "the store's server")
        except TimeoutError as e:
            raise StoreError(str(e)) from None
        return _nonempty(opened)
    path = Path(store)
    if not path.exists():
        raise StoreError(f"store {path} does not exist")
    kind = detect(path) if kind == "auto" else kind
    if KINDS_READ[kind].read is None:
        raise StoreError(f"a {kind} store is a URL ({kind}://...), not a path: see docs/audit.md")
    if collection is not None and not KINDS_READ[kind].collections:
        raise StoreError("--collection names a Chroma collection, LanceDB table or Qdrant / Milvus collection; this "
                         "store is " + kind)  # fmt: skip
    if KINDS_READ[kind].is_folder is None:  # a file kind: a FIFO or device would make the reader wait or never end
        try:
            input_file(path, "store")
        except InputError as e:
            raise StoreError(str(e)) from None
    elif not path.is_dir():
        raise StoreError(f"a {kind} store is a folder; {path} is not one")
    if documents is not None and kind in ("qdrant", "milvus"):
        raise StoreError("--documents is for stores that keep no texts; a database store's texts are a field")
    records = KINDS_READ[kind].read(path, options)
    if isinstance(records, Paged):
        return _nonempty(records)
    if documents is not None:
        if records.documents is not None and any(d is not None for d in records.documents):
            raise StoreError(f"{path} keeps its own documents; drop --documents")
        total = records.total if records.total is not None else len(records)
        if len(documents) != total:
            raise StoreError(f"--documents holds {len(documents)} texts for the {total} records of {path}")
        records.documents = list(documents[: len(records)])
    records = records.limit(limit)
    if len(records) == 0:
        raise StoreError(f"{records.source} holds no records: nothing to audit")
    return _checked(records)


def _nonempty(store: Paged) -> Paged:
    if store.total == 0:
        store.close()
        raise StoreError(f"{store.source} holds no records: nothing to audit")
    return store


def _checked(records: Records) -> Records:
    v = records.vectors
    if v.ndim != 2 or v.shape[1] == 0:
        raise StoreError(f"{records.source}: vectors of shape {v.shape}, not [N, D]")
    if len(set(records.ids)) != len(records.ids):
        raise StoreError(f"{records.source}: record ids repeat")
    records.vectors = np.asarray(v, np.float32)
    return records


def _sqlite_readable(path: Path, db: Path) -> None:
    """A read-only look at the store's SQLite file first: Chroma itself would wait as long as another process
    holds it locked, and may rewrite a file it cannot read."""
    import sqlite3

    try:
        con = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise StoreError(
                f"the Chroma store {path} is locked by another process ({e}); retry when it is done"
            ) from None
        raise StoreError(f"cannot read the Chroma store {path} ({e})") from None
    except sqlite3.DatabaseError as e:
        raise StoreError(f"the Chroma store {path} is damaged ({e})") from None


def _sqlite_file(path: Path) -> Path:
    """The real path of the Chroma store `path`'s chroma.sqlite3, after the look that SQLite will write nothing
    outside the store: SQLite may write the -wal, -shm and -journal files beside the file it opens, even
    read-only, so none of them may be a link or a special file, and the file itself may not lead out of it."""
    root = path.resolve()
    db = _store_file(root, root / "chroma.sqlite3", path)
    if not db.is_file():
        raise StoreError(f"the Chroma store {path}: chroma.sqlite3 is {file_kind(db.stat().st_mode)}, not a file")
    for side in _sqlite_companions(db):
        if side.is_symlink() or (side.exists() and not side.is_file()):
            raise StoreError(f"the Chroma store {path} holds {side.name} as a link or special file, which SQLite "
                             "would write through; v2t does not read such a store (audit a copy made with its "
                             "links resolved)")  # fmt: skip
    return db


def _sqlite_companions(db: Path) -> list[Path]:
    return [db.with_name(db.name + end) for end in ("-wal", "-shm", "-journal")]


@contextlib.contextmanager
def _snapshot(path: Path, db: Path) -> Iterator[Path]:
    """A copy of the Chroma folder `path` (its chroma.sqlite3 checked by `_sqlite_file`: `db`) in a temporary
    folder (removed afterwards), for a client that writes to what it opens: chroma.sqlite3 through SQLite's backup
    API from a read-only connection (a consistent copy even while another process writes), every other file
    copied as a regular file of its own (`_copy_store`): what Chroma rewrites in the copy (its HNSW files) can
    never be a file outside it, whatever links the store holds."""
    import sqlite3

    tmp = Path(tempfile.mkdtemp(prefix=f"v2t-store-{os.getpid()}-"))
    try:
        copy = tmp / "store"
        _copy_store(path.resolve(), copy, path, skip={db, *_sqlite_companions(db)})
        source = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            target = sqlite3.connect(copy / "chroma.sqlite3")
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()
        yield copy
    except (OSError, sqlite3.Error) as e:
        raise StoreError(f"cannot copy the Chroma store {path} to read it untouched ({_brief(e)})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _chroma(path: Path, name: str | None) -> Records:
    _need("chromadb", "a Chroma store", "chromadb")
    db = _sqlite_file(path)
    _sqlite_readable(path, db)
    with _snapshot(path, db) as copy:
        return _chroma_read(copy, path, name)


def _chroma_read(copy: Path, path: Path, name: str | None) -> Records:
    import chromadb

    try:
        # (no telemetry: Chroma's would write an id file under the user's home and reach out to the network)
        client = chromadb.PersistentClient(path=str(copy), settings=chromadb.Settings(anonymized_telemetry=False))
        names = [c if isinstance(c, str) else c.name for c in client.list_collections()]
        name = _pick_one(names, name, f"the Chroma store {path}", "collection")
        col = client.get_collection(name)
        n = col.count()
        ids: list[str] = []
        vectors: list[np.ndarray] = []
        docs: list[Any] = []
        for offset in range(0, n, _PAGE):
            page = col.get(include=["embeddings", "documents"], limit=_PAGE, offset=offset)
            ids += list(page["ids"])
            if len(page["ids"]):
                vectors.append(np.asarray(page["embeddings"], np.float32))
            docs += list(page.get("documents") or [None] * len(page["ids"]))
        config = getattr(col, "configuration_json", None) or {}
    except StoreError:
        raise
    except Exception as e:  # chromadb raises its own errors (and sqlite's) for locked or damaged stores
        raise StoreError(f"cannot read the Chroma store {path} ({_brief(e)})") from None
    dim = vectors[0].shape[1] if vectors else 0
    return Records(
        ids,
        np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32),
        docs if any(d is not None for d in docs) else None,
        "chroma",
        f"{path} (collection {name!r})",
        _chroma_embedder(config.get("embedding_function")),
    )


# Chroma's own embedding functions that are all-MiniLM-L6-v2 (ONNX): its default one, and ONNXMiniLM_L6_V2 named
_CHROMA_MINILM = ("default", "onnx_mini_lm_l6_v2")


def _chroma_embedder(ef: Any) -> str | None:
    """The embedder a Chroma collection records, as a model name where it says one."""
    if not isinstance(ef, dict) or not ef.get("name"):
        return None
    if ef["name"] in _CHROMA_MINILM:
        return "all-MiniLM-L6-v2"
    model = (ef.get("config") or {}).get("model_name") or (ef.get("config") or {}).get("model")
    return str(model) if model else str(ef["name"])


def _faiss(path: Path) -> Records:
    """Read in a child process (`_faiss_child`): faiss trusts an index's header, so a damaged or crafted file that
    declares 10^9 vectors makes `faiss.read_index` allocate them (a 173-byte file: 4 GB; the OOM killer, not an
    error), and some damage crashes it. The child's address space is bounded by what the file can hold while it
    parses, and a crash is a one-line refusal here, not the end of the audit."""
    _need("faiss", "a FAISS index", "faiss-cpu", load=False)  # (read in the child)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    run = "import sys; from v2t_jax.audit.stores import _faiss_child; _faiss_child(sys.argv[1])"
    deadline = _FAISS_SECONDS + os.path.getsize(path) / _FAISS_BYTES_PER_SECOND
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen([sys.executable, "-c", run, str(path)], stdout=subprocess.PIPE, stderr=err, env=env)
        fired = threading.Event()

        def stop() -> None:  # (a parse that never ends is a line too, never a hang)
            fired.set()
            child.kill()

        late = threading.Timer(deadline, stop)
        late.daemon = True
        late.start()
        try:
            try:
                head = json.loads(child.stdout.readline() or b"{}")
            except ValueError:
                head = {}  # not the child's reply: said below, with the child's last words
            if "error" in head:
                raise StoreError(f"{path}: {head['error']}")
            n, d = head.get("n"), head.get("d")  # None: the child ended before it could say
            if n is not None:
                ids = _read_exactly(child.stdout, np.empty(n if head["id_map"] else 0, np.int64))
                vectors = _read_exactly(child.stdout, np.empty((n, d), np.float32))
                if ids is None or vectors is None:
                    n = None  # the child ended before it gave back every vector: said below
        finally:
            child.stdout.close()
            code = child.wait()
            late.cancel()
        if fired.is_set():
            raise StoreError(f"faiss took more than {deadline:.0f} s to read {path}, a file of "
                             f"{os.path.getsize(path):,} bytes: the index is damaged or crafted; not read")  # fmt: skip
        if code or n is None:
            err.seek(0)
            last = ([ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()] or [""])[-1]
            raise StoreError(f"faiss stopped reading {path} ({_exit_reason(code, last)}): the index is damaged "
                             "or not one faiss.read_index reads; write it again with faiss.write_index")  # fmt: skip
    ids = [str(i) for i in ids] if head["id_map"] else [str(i) for i in range(n)]
    return Records(ids, vectors, None, "faiss", str(path), note=head["note"])


def _read_exactly(stream, out: np.ndarray) -> np.ndarray | None:
    """`out` filled from `stream`; None if the stream ends first."""
    if not out.size:
        return out
    view, got = memoryview(out).cast("B"), 0
    while got < len(view):
        k = stream.readinto(view[got:])
        if not k:
            return None
        got += k
    return out


def _exit_reason(code: int, stderr_line: str) -> str:
    if code < 0:
        import signal

        name = signal.Signals(-code).name
        return f"killed by {name}" + (", out of memory?" if name == "SIGKILL" else "")
    return stderr_line[:200] or f"exit status {code}"


# room the FAISS child may take beyond its own start-up and twice the file while faiss parses the index
_FAISS_PARSE_SLACK = 1 << 30
# how long the FAISS child may take: a minute, and the time to read the file at a slow disk's pace
_FAISS_SECONDS, _FAISS_BYTES_PER_SECOND = 60.0, 20e6


def _faiss_child(path: str) -> None:
    """`_faiss`'s child: reads the index under an address-space bound while faiss parses it, then writes one JSON
    line (n, d, id_map, note; or error) and the raw int64 ids and float32 vectors to stdout."""
    out = os.fdopen(os.dup(1), "wb")  # the reply's own stream; anything a library prints goes to stderr
    os.dup2(2, 1)

    def reply(head: dict) -> None:
        out.write((json.dumps(head) + "\n").encode())
        out.flush()

    try:
        import resource
    except ImportError:  # no address-space bound where there is no `resource` (Windows): the crash guard only
        resource = None
    import faiss

    bounded = False
    if resource is not None and _address_space():  # (no /proc: no measure of the start-up to bound from)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = _address_space() + 2 * os.path.getsize(path) + _FAISS_PARSE_SLACK
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
            bounded = True
        except (ValueError, OSError):
            pass  # a system that will not bound it (the crash guard still holds)
    try:
        index = faiss.read_index(path)
    except MemoryError:
        return reply({"error": "its header declares more data than the file holds: a damaged or crafted FAISS "
                               "index, not read"})  # fmt: skip
    except Exception as e:
        return reply({"error": f"cannot read it as a FAISS index ({_brief(e)})"})
    n, d = int(index.ntotal), int(index.d)
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    storage = faiss.downcast_index(inner.storage) if hasattr(inner, "storage") else inner  # HNSW: its storage
    code = getattr(storage, "code_size", None)
    per_vector = code if isinstance(code, int) and code > 0 else 1  # (every vector takes a byte of the file at least)
    size = os.path.getsize(path)
    if n * per_vector > size:
        return reply({"error": f"its header claims {n:,} vectors of {per_vector} bytes each and the file holds "
                               f"{size:,} bytes: a damaged or crafted FAISS index, not read"})  # fmt: skip
    if bounded:  # giving back the vectors takes them once more, as float32: bounded by that, not by the header
        cap = _address_space() + 2 * n * d * 4 + _FAISS_PARSE_SLACK
        resource.setrlimit(resource.RLIMIT_AS, (min(cap, hard) if hard != resource.RLIM_INFINITY else cap, hard))
    free = _memory_available()
    if free is not None and n * d * 4 > free:
        need = n * d * 4 / 2**30
        return reply({"error": f"its {n:,} vectors of dimension {d} take {need:.1f} GiB to give back, more than "
                               f"the {free / 2**30:.1f} GiB free here; audit it on a larger machine"})  # fmt: skip
    ids = np.zeros(0, np.int64)
    if hasattr(index, "id_map"):  # IndexIDMap(2): the user's ids around another index
        ids = np.asarray(faiss.vector_to_array(index.id_map), np.int64)
    try:
        ivf = faiss.extract_index_ivf(inner)
        ivf.make_direct_map()
    except Exception:
        pass  # not an IVF index
    try:
        vectors = inner.reconstruct_n(0, n) if n else np.zeros((0, d), np.float32)
    except MemoryError:
        return reply({"error": f"giving back its {n:,} vectors took more memory than they hold: a damaged or "
                               "crafted FAISS index, not read"})  # fmt: skip
    except Exception as e:
        return reply({"error": f"this FAISS index does not give back its vectors ({_brief(e)})"})
    vectors = np.ascontiguousarray(vectors, np.float32)
    if vectors.shape != (n, d) or (hasattr(index, "id_map") and len(ids) != n):
        return reply({"error": f"the index says {n} vectors of dimension {d} but gives back {vectors.shape}"})
    reply({"n": n, "d": d, "id_map": hasattr(index, "id_map"), "note": _faiss_loss(faiss, inner, d)})
    for a in (ids, vectors):
        if a.size:
            out.write(memoryview(a).cast("B"))
    out.flush()


def _address_space() -> int:
    """This process's virtual memory size in bytes (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _memory_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _faiss_loss(faiss, index, dim: int) -> str | None:
    """What the report says when the index keeps a lossy code of each vector (PQ, LSH, scalar quantizers): the
    audited vectors are its reconstructions, not the embeddings that were added."""
    storage = faiss.downcast_index(index.storage) if hasattr(index, "storage") else index  # HNSW: its storage
    code = getattr(storage, "code_size", None)
    if not isinstance(code, int) or code >= 4 * dim:
        return None
    return (
        f"This {type(storage).__name__} index keeps {code} bytes per vector where the float32 embedding takes "
        f"{4 * dim}: the audited vectors are its lossy reconstructions, not the embeddings that were added, so "
        "their cosines and the recovered text measure what the index itself gives away."
    )


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """The [N, D] float array of a .npy file, its header checked against the file before anything is allocated
    (a header may claim 10^12 rows), never a pickle; StoreError for anything else."""
    path = Path(path)

    def bad(why: str) -> StoreError:
        return StoreError(f"cannot read {path} as a .npy array ({why})")

    try:
        input_file(path, "vectors file")  # (a FIFO would make the read wait forever)
    except InputError as e:
        raise StoreError(str(e)) from None
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise bad("not a .npy file (no NumPy header); save the [N, D] vectors with numpy.save")
            f.seek(0)
            version = fmt.read_magic(f)
            readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
            if version not in readers:
                raise bad(f".npy format version {version[0]}.{version[1]}; save it with numpy.save")
            shape, _, dtype = readers[version](f)  # a header that does not parse raises ValueError
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except StoreError:
        raise
    except OSError as e:
        raise bad(e.strerror or str(e)) from None
    except Exception as e:  # numpy parses the header with tokenize + literal_eval: ValueError, TokenError, ...
        raise bad(f"its header does not parse: {_brief(e)}") from None
    if dtype.hasobject:
        raise bad("it holds Python objects, which v2t never loads; save a float array")
    if len(shape) != 2:
        raise bad(f"an array of shape {tuple(shape)}, not [N, D] vectors")
    if dtype.kind != "f":
        raise bad(f"{dtype} values: embeddings must be floating point")
    need = math.prod(shape) * dtype.itemsize
    if need != size - offset:
        raise bad(
            f"its header claims {shape[0]:,} x {shape[1]:,} {dtype} values ({need:,} bytes) and the file holds "
            f"{size - offset:,}: it is truncated or damaged"
        )
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, MemoryError) as e:
        raise bad(_brief(e)) from None


def _npy(path: Path) -> Records:
    vectors = read_npy(path)
    return Records([str(i) for i in range(len(vectors))], vectors, None, "npy", str(path))


def _lancedb(path: Path, name: str | None, vector_column, text_column, id_column) -> Records:
    lancedb = _need("lancedb", "a LanceDB store", "lancedb")
    if path.suffix == ".lance" and name is None:  # a table's own folder
        path, name = path.parent, path.stem
    try:
        db = lancedb.connect(str(path))
        names = list(getattr(db.list_tables(), "tables", None) or [])
        name = _pick_one(names, name, f"the LanceDB store {path}", "table")
        table = db.open_table(name).to_arrow()
    except StoreError:
        raise
    except Exception as e:  # lance raises its own errors for damaged datasets
        raise StoreError(f"cannot read the LanceDB store {path} ({_brief(e)})") from None
    source = f"{path} (table {name!r})"
    records = _from_arrow(table, source, "lancedb", vector_column, text_column, id_column)
    records.embedder = _lancedb_embedder(table.schema.metadata or {}, records)
    return records


def _lancedb_embedder(metadata: dict, records: Records) -> str | None:
    """The model a LanceDB table's embedding function records (schema metadata `embedding_functions`)."""
    import json

    raw = metadata.get(b"embedding_functions")
    if not raw:
        return None
    try:
        functions = json.loads(raw)
        if not functions:
            return None
        model = functions[0].get("model") or {}
        return str(model.get("name") or model.get("model_name") or functions[0]["name"])
    except (ValueError, TypeError, KeyError, AttributeError):
        raise StoreError(f"{records.source}: its embedding_functions metadata is not readable") from None


def _parquet(path: Path, vector_column, text_column, id_column, limit: int | None = None) -> Records:
    """A .parquet file's records, streamed in batches of the columns used only, and no further than `limit` rows:
    what is read is bounded by the rows asked for (a 109 KB file of dictionary-coded text expanded to 6 GB when
    read whole for one record)."""
    pq = _need("pyarrow.parquet", "a .parquet file", "pyarrow")
    import pyarrow as pa

    try:
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
        total = file.metadata.num_rows
    except Exception as e:
        raise StoreError(f"cannot read {path} as parquet ({_brief(e)})") from None
    columns = _columns(names, str(path), vector_column, text_column, id_column)
    batches, rows = [], 0
    try:
        for batch in file.iter_batches(batch_size=min(limit or _PARQUET_BATCH, _PARQUET_BATCH),
                                       columns=[c for c in columns if c is not None]):  # fmt: skip
            batches.append(batch)
            rows += batch.num_rows
            if limit is not None and rows >= limit:
                break
        schema = file.schema_arrow
        table = pa.Table.from_batches(batches, pa.schema([schema.field(c) for c in columns if c is not None]))
    except Exception as e:
        raise StoreError(f"cannot read {path} as parquet ({_brief(e)})") from None
    table = table.slice(0, limit) if limit is not None else table
    records = _from_arrow(table, str(path), "parquet", *columns, picked=True)
    records.total = total
    return records


_PARQUET_BATCH = 4096  # rows per batch a parquet file is read in


def _columns(cols: list[str], source: str, vector_column, text_column, id_column) -> tuple:
    """(vector, text, id) columns of a table with columns `cols`: as named, or found by their usual names."""

    def pick(given: str | None, candidates: tuple[str, ...], what: str, required: bool) -> str | None:
        if given is not None:
            if given not in cols:
                raise StoreError(f"{source} has no column {given!r} (it has {', '.join(cols)})")
            return given
        found = next((c for c in candidates if c in cols), None)
        if found is None and required:
            raise StoreError(f"{source}: no {what} column ({' or '.join(candidates)}); name it with --vector-column")
        return found

    return (
        pick(vector_column, ("embedding", "vector", "embeddings", "vectors"), "vector", True),
        pick(text_column, ("document", "text", "documents", "content"), "text", False),
        pick(id_column, ("id", "ids"), "id", False),
    )


def _from_arrow(table, source: str, kind: str, vector_column, text_column, id_column, picked=False) -> Records:
    """Records from an Arrow table's vector, text and id columns (named, or found by their usual names; `picked`:
    the three are the columns, already found)."""
    vcol, tcol, icol = (vector_column, text_column, id_column) if picked else _columns(
        table.column_names, source, vector_column, text_column, id_column)  # fmt: skip
    import pyarrow as pa

    vtype = table.schema.field(vcol).type
    numeric = lambda t: pa.types.is_floating(t) or pa.types.is_integer(t)  # noqa: E731
    is_list = pa.types.is_list(vtype) or pa.types.is_large_list(vtype) or pa.types.is_fixed_size_list(vtype)
    if not (is_list and numeric(vtype.value_type)):
        raise StoreError(f"{source}: column {vcol!r} is {vtype}, not lists of numbers (vectors)")
    if table.column(vcol).null_count:
        raise StoreError(f"{source}: column {vcol!r} has {table.column(vcol).null_count} rows without a vector")
    try:
        vectors = np.asarray(table.column(vcol).to_pylist(), np.float32)
    except (ValueError, TypeError):
        raise StoreError(f"{source}: column {vcol!r} does not hold vectors of one length") from None
    if vectors.ndim != 2:
        raise StoreError(f"{source}: column {vcol!r} does not hold vectors of one length")
    n = len(vectors)
    ids = [str(x) for x in table.column(icol).to_pylist()] if icol else [str(i) for i in range(n)]
    docs = None
    if tcol:
        ttype = table.schema.field(tcol).type
        text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view, pa.types.is_null)
        if not any(is_text(ttype) for is_text in text):
            raise StoreError(f"{source}: text column {tcol!r} is {ttype}, not text; name another with --text-column")
        docs = table.column(tcol).to_pylist()
    return Records(ids, vectors, docs, kind, source)
