"""What every store reader returns, and what they share: `Records` (a store read whole), `Paged` (a database
store read a page at a time in key order), `Options` (what names a store's collection and columns), one-line
`StoreError`s, the deadline on a store's calls (`bounded`), and the copy a client that writes is given to read
(`_copy_store`: links that leave the store refused). `stores` (files and folders) and `servers` (database
servers) both build on this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from v2t_jax.errors import V2TError
from v2t_jax.outputs import file_kind


class StoreError(V2TError, ValueError):
    """A store that cannot be read as asked; the message says what to do."""


@dataclasses.dataclass
class Records:
    ids: list[str]
    vectors: np.ndarray  # [N, D] float32
    documents: list[str | None] | None  # the stored texts, when the store keeps them
    kind: str  # chroma, faiss, npy, parquet
    source: str  # the path (and collection) read
    embedder: str | None = None  # the embedder the store records, as the store names it (Chroma)
    note: str | None = None  # what the reader knows the audit should say of the vectors (a lossy FAISS code)
    total: int | None = None  # the records the store holds, where the reader stopped early (`Options.limit`)

    def __len__(self) -> int:
        return len(self.ids)

    def digest(self) -> str:
        """sha256 of ids and vectors: what an interrupted audit's partial output was made from."""
        h = hashlib.sha256()
        h.update("\0".join(self.ids).encode())
        h.update(np.ascontiguousarray(self.vectors).tobytes())
        return h.hexdigest()

    def limit(self, n: int | None) -> Records:
        if n is None or n >= len(self):
            return self
        docs = self.documents[:n] if self.documents is not None else None
        return dataclasses.replace(self, ids=self.ids[:n], vectors=self.vectors[:n], documents=docs)


@dataclasses.dataclass
class Paged:
    """A store read a page at a time in the order of its keys (`v2t_jax.audit.servers`: PostgreSQL, Qdrant,
    Milvus), never whole in memory. `read_page(after, rows)`: the next at most `rows` records whose keys follow
    `after` (a record id as a page gave it; None: from the first), bounded by `timeout_s`. `total`: the records an
    audit reads (the store's count when it opened, or `limit`); `identity`: what a resumed audit must find again
    (server, table or collection, columns: no secret)."""

    kind: str
    source: str  # what messages and the report show (no password)
    identity: str
    dim: int
    count: int
    has_documents: bool
    page: Any  # (after: str | None, rows: int) -> Records
    embedder: str | None = None
    note: str | None = None
    closer: Any = None
    timeout_s: float = 60.0
    limit: int | None = None

    @property
    def total(self) -> int:
        return self.count if self.limit is None else min(self.count, self.limit)

    def __len__(self) -> int:
        return self.total

    def digest(self) -> str:
        return hashlib.sha256(("paged\0" + self.identity).encode()).hexdigest()

    def read_page(self, after: str | None, rows: int) -> Records:
        try:
            page = bounded(lambda: self.page(after, rows), self.timeout_s, self.source)
        except TimeoutError as e:
            self.closer = None  # (the client is the stuck thread's now: closing it could wait as long)
            raise StoreError(str(e)) from None
        if len(set(page.ids)) != len(page.ids) or (after is not None and after in page.ids):
            raise StoreError(f"{self.source}: record ids repeat")
        return page

    def close(self) -> None:
        closer, self.closer = self.closer, None
        if closer is not None:
            closer()


def bounded(fn, timeout_s: float, what: str):
    """fn() in a thread of its own, waited for at most `timeout_s`: a server that stops answering is a
    TimeoutError, whatever its client does (a socket left waiting is the thread's; it ends with the process)."""
    box: dict = {}

    def work():
        try:
            box["out"] = fn()
        except BaseException as e:  # (raised in the caller's thread)
            box["err"] = e

    thread = threading.Thread(target=work, name="v2t-store-read", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not answer within {timeout_s:g} s (--store-timeout)")
    if "err" in box:
        raise box["err"]
    return box["out"]


@dataclasses.dataclass(frozen=True)
class Options:
    """What a user may say of a store beyond its path (each reader reads what applies to it)."""

    collection: str | None = None  # a Chroma collection / LanceDB table
    vector_column: str | None = None  # Arrow-backed stores (LanceDB, parquet)
    text_column: str | None = None
    id_column: str | None = None
    limit: int | None = None  # the first records only: a reader that can stop early reads no more
    timeout_s: float = 60.0  # a database server's longest wait for one answer (`Paged`)


def _need(module: str, what: str, package: str, load: bool = True):
    """The module (imported), or with `load=False` only the check that it is installed (a module another process
    will import need not be loaded here: faiss is ~0.2 s and its memory)."""
    import importlib
    import importlib.util

    try:
        if not load:
            if importlib.util.find_spec(module) is None:
                raise ImportError(module)
            return None
        return importlib.import_module(module)
    except ImportError:
        raise StoreError(f"reading {what} needs {package}: pip install {package} (or v2t-jax[audit])") from None


def _pick_one(names: list[str], name: str | None, store: str, what: str) -> str:
    """The collection / table `name` of a store holding `names`; with no name, its only one."""
    listed = ", ".join(sorted(names))
    if not names:
        raise StoreError(f"{store} has no {what}s")
    if name is None:
        if len(names) > 1:
            raise StoreError(f"{store} has {len(names)} {what}s ({listed}): pick one with --collection")
        return names[0]
    if name not in names:
        raise StoreError(f"{store} has no {what} {name!r} (it has {listed})")
    return name


_MAX_STORE_DEPTH = 64  # folders within folders in a store's copy


def _store_file(root: Path, entry: Path, shown: Path) -> Path:
    """The real path of `entry` of the store whose real path is `root` (a link followed), refused in one line
    when it leads out of the store, nowhere, or round in a loop."""
    try:
        real = entry.resolve(strict=True)
    except FileNotFoundError:
        what = "is a link to nothing" if entry.is_symlink() else "is missing"
        raise StoreError(f"{shown}: {entry.relative_to(root)} {what} (a damaged store)") from None
    except (OSError, RuntimeError) as e:  # a loop of links
        raise StoreError(f"{shown}: {entry.relative_to(root)} cannot be followed ({_brief(e)})") from None
    if real != root and root not in real.parents:
        raise StoreError(
            f"{shown}: {entry.relative_to(root)} is a link out of the store (to {real}); v2t reads nothing outside "
            "a store, and its client library would write there: audit a copy made with the links resolved"
        )
    return real


def _copy_store(root: Path, copy: Path, shown: Path, skip: set[Path]) -> None:
    """The folder `root` (a store's real path) copied to the new folder `copy` as regular files and folders of
    its own: a link inside the store is copied as what it points to, a link that leaves the store (or leads
    nowhere, or round) and a FIFO, device or socket are refused in one line. Files are opened without following
    links and without blocking, so nothing the store holds can make the copy read outside it or wait."""
    import stat

    entered: set[Path] = set()  # each folder copied once: links between folders cannot multiply the copy

    def walk(src: Path, dst: Path, seen: tuple[Path, ...]) -> None:
        if src in entered:
            raise StoreError(f"{shown}: {src.relative_to(root)} is reached through more than one link; not a store "
                             "v2t reads (audit a copy made with its links resolved)")  # fmt: skip
        entered.add(src)
        if len(seen) > _MAX_STORE_DEPTH:
            raise StoreError(f"{shown}: folders nested more than {_MAX_STORE_DEPTH} deep; not a store v2t reads")
        dst.mkdir(mode=0o700)
        for name in sorted(os.listdir(src)):
            entry = src / name
            real = _store_file(root, entry, shown) if entry.is_symlink() else entry
            if real in skip:
                continue
            st = os.stat(real)
            if stat.S_ISDIR(st.st_mode):
                if real in seen:
                    raise StoreError(f"{shown}: {entry.relative_to(root)} links back to a folder above it")
                walk(real, dst / name, (*seen, real))
            elif stat.S_ISREG(st.st_mode):
                _copy_regular(real, dst / name, shown, root)
            else:
                raise StoreError(f"{shown}: {entry.relative_to(root)} is {file_kind(st.st_mode)}, not a store file; "
                                 "v2t does not read it")  # fmt: skip

    walk(root, copy, (root,))


def _copy_regular(src: Path, dst: Path, shown: Path, root: Path) -> None:
    import stat

    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # (replaced between the look and the open)
            raise StoreError(f"{shown}: {src.relative_to(root)} changed while it was copied; audit it again")
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(out, "wb") as target, open(fd, "rb", closefd=False) as source:
            shutil.copyfileobj(source, target)
    finally:
        os.close(fd)


def _brief(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
