"""Vector stores in database servers, read page by page in key order and only read, for `v2t audit`:
PostgreSQL with pgvector, Qdrant and Milvus (their servers, and Qdrant's local folder and Milvus Lite's).

    v2t audit "postgresql://auditor@db.internal/rag?table=chunks" --output report   # password: PGPASSWORD, ~/.pgpass
    v2t audit qdrant://qdrant.internal:6333/docs --output report                      # key: QDRANT_API_KEY
    v2t audit milvus://milvus.internal:19530/docs --output report                     # token: MILVUS_TOKEN
    v2t audit path/to/qdrant_folder --collection docs --output report                 # QdrantClient(path=...)
    v2t audit path/to/milvus.db --collection docs --output report                     # Milvus Lite

Each opens as a `stores.Paged`: the store's size, dimension and columns are checked when it opens; its records
are then read `page(after, rows)` at a time in the order of their keys (a PostgreSQL key column, Qdrant's point
ids, Milvus's primary key), so a table never sits whole in memory and an interrupted audit continues after the
last key it finished. Every read is bounded (`Options.timeout_s`): a server that stops answering is one line.

**Read-only**: PostgreSQL is read in `READ ONLY` transactions, one per page (no snapshot held for hours on a
production server); Qdrant and Milvus through their read calls only (collection info, count, scroll / query
iterator). A local Qdrant folder or Milvus Lite file, which their clients lock and write when they open them,
is read from a copy in a temporary folder (as Chroma's is), removed when the audit closes the store.

**Credentials** never come from the command line where avoidable: the PostgreSQL password from PGPASSWORD or a
pass file (libpq's own), Qdrant's key from QDRANT_API_KEY, Milvus's token from MILVUS_TOKEN. A password that
is in the URL anyway, and each of those, is registered as a secret (`errors.add_secret`): no message, report or
state file shows it; what they show of a store is `source` (no password).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from v2t_jax import errors
from v2t_jax.audit.records import Options, Paged, Records, StoreError, _brief, _copy_store, _need, _pick_one

TEXT_NAMES = ("document", "text", "content", "page_content", "chunk", "body")  # a store's text, where unnamed
SCHEMES = {
    "postgresql": "postgresql", "postgres": "postgresql",
    "qdrant": "qdrant", "qdrant+http": "qdrant", "qdrant+https": "qdrant",
    "milvus": "milvus", "milvus+http": "milvus", "milvus+https": "milvus",
}  # fmt: skip
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme_kind(store: str, kind: str = "auto") -> str | None:
    """The server kind a store argument names (postgresql, qdrant, milvus), None for a path; a URL of any other
    scheme is a StoreError (http(s):// with --store-kind qdrant or milvus: that server)."""
    m = _SCHEME.match(store)
    if m is None:
        return None
    scheme = m.group(1).lower()
    if scheme in ("http", "https") and kind in ("qdrant", "milvus"):
        return kind
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES if "+" not in s)
        raise StoreError(f"{errors.shown_url(store)}: no store v2t reads has that scheme (it reads {known}, and "
                         "http(s):// with --store-kind qdrant or milvus)")  # fmt: skip
    if kind not in ("auto", SCHEMES[scheme]):
        raise StoreError(f"--store-kind {kind} for a {SCHEMES[scheme]} URL: drop --store-kind")
    return SCHEMES[scheme]


def open_url(store: str, kind: str, o: Options) -> Paged:
    return {"postgresql": _postgres, "qdrant": _qdrant_url, "milvus": _milvus_url}[kind](store, o)


def _secret_env(name: str) -> str | None:
    value = os.environ.get(name) or None
    errors.add_secret(value)
    return value


def _warn_secret_in_url(what: str, env: str) -> None:
    print(f"v2t audit: the {what} in the store URL can be read by other users of this machine (the process list, "
          f"shell history); set {env} instead", file=sys.stderr)  # fmt: skip


def _vector_of(v: Any, key: str, source: str) -> np.ndarray:
    if v is None:
        raise StoreError(f"{source}: record {key} has no vector (NULL); audit the others through a view or filter "
                         "that leaves it out")  # fmt: skip
    return np.asarray(v, np.float32).reshape(-1)


def _stack(vectors: list[np.ndarray], ids: list[str], dim: int, source: str) -> np.ndarray:
    for key, v in zip(ids, vectors):
        if v.shape[0] != dim:
            raise StoreError(f"{source}: record {key} holds a {v.shape[0]}-dimensional vector where the store's "
                             f"are {dim}-dimensional")  # fmt: skip
    return np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)


def _text_of(doc: Any, key: str, field: str, source: str) -> str:
    if doc is None:
        raise StoreError(f"{source}: record {key} has no text in {field!r} (NULL); name another text column, or "
                         "audit the vectors alone (text= in the URL, or --text-column '')")  # fmt: skip
    if not isinstance(doc, str):
        raise StoreError(f"{source}: record {key}'s {field!r} is {type(doc).__name__}, not text; name the text "
                         "with --text-column")  # fmt: skip
    return doc


# ----------------------------------------------------------------------------- PostgreSQL + pgvector

_PG_OURS = ("table", "vector", "text", "id")  # URL query keys that are v2t's, not libpq's
_PG_VECTOR_TYPES = {"vector": "vector", "halfvec": "halfvec", "_float4": "real[]", "_float8": "double precision[]"}
_PG_TEXT_TYPES = ("text", "varchar", "bpchar", "name")


def _postgres(url: str, o: Options) -> Paged:
    psycopg = _need("psycopg", "a PostgreSQL store", "psycopg[binary]")
    from psycopg import sql

    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _PG_OURS}
    libpq = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode([(k, v) for k, v in query
                                                                                if k not in _PG_OURS])))  # fmt: skip
    try:
        params = psycopg.conninfo.conninfo_to_dict(libpq)
    except psycopg.Error as e:
        raise StoreError(f"not a PostgreSQL connection URL ({_brief(e)}): postgresql://USER@HOST:PORT/DB?table=T"
                         ) from None  # fmt: skip
    if params.get("password"):
        errors.add_secret(str(params["password"]))
        errors.add_secret(parts.netloc.rpartition("@")[0])
        _warn_secret_in_url("password", "PGPASSWORD (or use a pass file, ~/.pgpass)")
    _secret_env("PGPASSWORD")
    params.setdefault("connect_timeout", str(max(2, int(o.timeout_s))))
    params.setdefault("application_name", "v2t audit")
    user = params.get("user") or os.environ.get("PGUSER") or ""
    host = params.get("host") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    db = params.get("dbname") or os.environ.get("PGDATABASE") or user
    if host.startswith("/"):  # a Unix socket's folder
        where = f"postgresql://{user + '@' if user else ''}/{db} (socket {host})"
    else:
        where = f"postgresql://{user + '@' if user else ''}{host}:{port}/{db}"
    table = ours.get("table") or o.collection
    vcol = ours.get("vector") or o.vector_column
    tcol = ours["text"] if "text" in ours else o.text_column
    kcol = ours.get("id") or o.id_column
    try:
        conn = psycopg.connect(**params)
    except psycopg.Error as e:
        raise StoreError(f"cannot connect to {where} ({_brief(e)})") from None
    conn.read_only = True  # every transaction: BEGIN READ ONLY

    def run(statement, args=(), binary=False):
        with conn.transaction():
            cur = conn.cursor(binary=binary)
            cur.execute("SELECT set_config('statement_timeout', %s, true)", (f"{int(o.timeout_s * 1000)}",))
            cur.execute(statement, args)
            return cur.fetchall()

    try:
        oid, schema, name = _pg_table(run, table, where)
        source = f"{where} (table {schema}.{name})"
        cols = run("SELECT a.attname, t.typname, a.atttypmod, format_type(a.atttypid, a.atttypmod) FROM "
                   "pg_attribute a JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = %s AND a.attnum > 0 "
                   "AND NOT a.attisdropped ORDER BY a.attnum", (oid,))  # fmt: skip
        types = {c[0]: (c[1], c[2], c[3]) for c in cols}
        listed = ", ".join(f"{c[0]} {c[3]}" for c in cols)
        vcol = _pg_vector_column(types, vcol, source, listed)
        tcol = _pg_text_column(types, tcol, source, listed)
        kcol = _pg_key_column(run, oid, types, kcol, source, listed)
        if not run("SELECT has_table_privilege(%s, 'SELECT')", (oid,))[0][0]:
            raise StoreError(f"{source}: the role {user or 'connected'} may not read the table: GRANT SELECT ON "
                             f"{schema}.{name} TO {user or 'that role'} (docs/audit.md)")  # fmt: skip
        t, v, k = sql.Identifier(schema, name), sql.Identifier(vcol), sql.Identifier(kcol)
        count, nulls = run(sql.SQL("SELECT count(*), count(*) - count({v}) FROM {t}").format(v=v, t=t))[0]
        if nulls:
            raise StoreError(f"{source}: {nulls} of its {count} rows have no vector (NULL in {vcol}); audit the others "
                             "through a view that leaves them out (table=VIEW&id=KEY)")  # fmt: skip
        if tcol is not None:
            empty = run(sql.SQL("SELECT count(*) - count({c}) FROM {t}").format(c=sql.Identifier(tcol), t=t))[0][0]
            if empty:
                raise StoreError(f"{source}: {empty} of its {count} rows have no text (NULL in {tcol}); name another "
                                 "text column, or audit the vectors alone (text= in the URL)")  # fmt: skip
        if not _pg_is_key(run, oid, kcol):  # (a primary key or unique index says it already)
            repeats = run(sql.SQL("SELECT count(*) - count(DISTINCT {k}) FROM {t}").format(k=k, t=t))[0][0]
            if repeats:
                raise StoreError(f"{source}: the key column {kcol} repeats values or holds NULL ({repeats} rows); "
                                 "name a unique one with id=COL")  # fmt: skip
        typmod = types[vcol][1]
        dim = typmod if types[vcol][0] in ("vector", "halfvec") and typmod > 0 else None
        text = sql.SQL(", {c}").format(c=sql.Identifier(tcol)) if tcol else sql.SQL("")
        # (the key's text has a name of its own, and the order is the column's: ORDER BY a bare name would sort
        # by the text, 10 before 9, while WHERE compares the column)
        head = sql.SQL("SELECT {k}::text AS v2t_key, {v}{text} FROM {t}").format(k=k, v=v, text=text, t=t)
        order = sql.SQL("ORDER BY {t}.{k} LIMIT %s").format(t=t, k=k)
        first = sql.SQL("{head} {order}").format(head=head, order=order)
        after = sql.SQL("{head} WHERE {t}.{k} > %s {order}").format(head=head, t=t, k=k, order=order)
        if dim is None and count:
            dim = len(_pg_vector(run(first, (1,), binary=True)[0][1], types[vcol][0], "?", source))
    except StoreError:
        conn.close()
        raise
    except psycopg.Error as e:
        conn.close()
        raise StoreError(f"cannot read {where} ({_brief(e)})") from None
    vtype = types[vcol][0]

    def page(key: str | None, rows: int) -> Records:
        try:
            got = run(first, (rows,), binary=True) if key is None else run(after, (key, rows), binary=True)
        except psycopg.Error as e:
            raise StoreError(f"cannot read {source} ({_brief(e)})") from None
        ids = [r[0] for r in got]
        vectors = [_pg_vector(r[1], vtype, r[0], source) for r in got]
        docs = [_text_of(r[2], r[0], tcol, source) for r in got] if tcol else None
        return Records(ids, _stack(vectors, ids, dim, source), docs, "postgresql", source)

    identity = f"{where} table={schema}.{name} vector={vcol} text={tcol or ''} id={kcol}"
    return Paged("postgresql", source, identity, dim or 0, count, tcol is not None, page, closer=conn.close,
                 timeout_s=o.timeout_s, limit=o.limit)  # fmt: skip


def _pg_table(run, table: str | None, where: str) -> tuple[int, str, str]:
    """(oid, schema, name) of the table (or view) `table` names, or of the only one with a vector column."""
    with_vectors = run("SELECT DISTINCT c.oid::int, n.nspname, c.relname FROM pg_attribute a JOIN pg_class c ON "
                       "c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = "
                       "a.atttypid WHERE t.typname IN ('vector', 'halfvec') AND a.attnum > 0 AND NOT a.attisdropped "
                       "AND c.relkind IN ('r', 'v', 'm', 'p', 'f') AND n.nspname NOT IN ('pg_catalog', "
                       "'information_schema') ORDER BY 2, 3")  # fmt: skip
    listed = ", ".join(f"{s}.{n}" for _, s, n in with_vectors) or "none"
    if table is None:
        if len(with_vectors) != 1:
            raise StoreError(f"{where} holds {len(with_vectors)} tables with a vector column ({listed}): name one "
                             "with ?table=NAME in the URL (or --collection)")  # fmt: skip
        return with_vectors[0]
    found = run("SELECT c.oid::int, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
                "c.relnamespace WHERE c.oid = to_regclass(%s)", (table,))  # fmt: skip
    if not found:
        raise StoreError(f"{where} has no table {table!r} (tables with a vector column: {listed})")
    return found[0]


def _pg_vector_column(types: dict, name: str | None, source: str, listed: str) -> str:
    if name is None:
        found = [c for c, (t, _, _) in types.items() if t in _PG_VECTOR_TYPES]
        if len(found) != 1:
            raise StoreError(f"{source} has {len(found)} vector columns ({listed}): name one with vector=COL")
        return found[0]
    if name not in types:
        raise StoreError(f"{source} has no column {name!r} (its columns: {listed})")
    if types[name][0] not in _PG_VECTOR_TYPES:
        raise StoreError(f"{source}: column {name} is {types[name][2]}, not a vector (pgvector's vector or halfvec, "
                         "real[] or double precision[])")  # fmt: skip
    return name


def _pg_text_column(types: dict, name: str | None, source: str, listed: str) -> str | None:
    if name == "":
        return None  # the vectors alone
    if name is None:
        return next((c for c in TEXT_NAMES if c in types and types[c][0] in _PG_TEXT_TYPES), None)
    if name not in types:
        raise StoreError(f"{source} has no column {name!r} (its columns: {listed})")
    if types[name][0] not in _PG_TEXT_TYPES:
        raise StoreError(f"{source}: column {name} is {types[name][2]}, not text; name the text with text=COL")
    return name


def _pg_is_key(run, oid: int, column: str) -> bool:
    return bool(run("SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = "
                    "i.indkey[0] WHERE i.indrelid = %s AND i.indisunique AND i.indnatts = 1 AND a.attname = %s",
                    (oid, column)))  # fmt: skip


def _pg_key_column(run, oid: int, types: dict, name: str | None, source: str, listed: str) -> str:
    if name is not None:
        if name not in types:
            raise StoreError(f"{source} has no column {name!r} (its columns: {listed})")
        return name
    keys = run("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = "
               "ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary", (oid,))  # fmt: skip
    if len(keys) != 1:
        raise StoreError(f"{source} has no one-column primary key, which the audit reads in order to resume: name "
                         "a unique column with id=COL")  # fmt: skip
    return keys[0][0]


def _pg_vector(value: Any, vtype: str, key: str, source: str) -> np.ndarray:
    """A vector read in binary: pgvector's vector (int16 dim, int16 unused, float4 big-endian each) or halfvec
    (float2), or a float array (psycopg gives a list)."""
    if value is None:
        return _vector_of(None, key, source)
    if vtype in ("vector", "halfvec"):
        raw = bytes(value)
        n = int(np.frombuffer(raw[:2], ">i2")[0])
        return np.frombuffer(raw[4:], ">f4" if vtype == "vector" else ">f2", n).astype(np.float32)
    if any(x is None for x in value):
        raise StoreError(f"{source}: record {key}'s vector holds NULL elements")
    return _vector_of(value, key, source)


# ----------------------------------------------------------------------------- Qdrant


def _server_url(store: str, kind: str) -> tuple[str, str | None, str]:
    """(the client's http(s) URL, the collection in the path or None, what messages show) of a qdrant:// or
    milvus:// URL (or an http(s) one with --store-kind)."""
    parts = urllib.parse.urlsplit(store)
    scheme = parts.scheme.lower()
    http = "https" if scheme.endswith("https") else "http"
    if parts.username or parts.password:
        raise StoreError(f"{errors.shown_url(store)}: put no credentials in the URL; the key goes in "
                         f"{'QDRANT_API_KEY' if kind == 'qdrant' else 'MILVUS_TOKEN'}")  # fmt: skip
    if parts.query or parts.fragment:
        errors.add_url_secrets(store)
        raise StoreError(f"{errors.shown_url(store)}: a {kind} URL is SCHEME://HOST:PORT/COLLECTION, without a query")
    name = parts.path.strip("/") or None
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        raise StoreError(f"{errors.shown_url(store)}: the port is not a number") from None
    host = parts.hostname or ""
    if not host:
        raise StoreError(f"{kind} URL {store!r} names no host: {kind}://HOST:PORT/COLLECTION")
    host = f"[{host}]" if ":" in host else host
    return f"{http}://{host}{port}", name, f"{scheme}://{host}{port}"


def _qdrant_url(store: str, o: Options) -> Paged:
    url, name, shown = _server_url(store, "qdrant")
    qdrant_client = _need("qdrant_client", "a Qdrant store", "qdrant-client")
    if name and o.collection and name != o.collection:
        raise StoreError(f"{shown}: the URL names collection {name!r} and --collection {o.collection!r}")
    try:
        client = qdrant_client.QdrantClient(url=url, api_key=_secret_env("QDRANT_API_KEY"), timeout=int(o.timeout_s))
    except Exception as e:
        raise StoreError(f"cannot open {shown} ({_brief(e)})") from None
    return _qdrant(client, shown, name or o.collection, o, identity=shown)


def qdrant_folder(path: Path, o: Options) -> Paged:
    """A local Qdrant folder (`QdrantClient(path=...)`), read from a copy: the client locks and rewrites it."""
    qdrant_client = _need("qdrant_client", "a Qdrant folder", "qdrant-client")
    tmp, copy = _copied(path, "store")
    try:
        client = qdrant_client.QdrantClient(path=str(copy))
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(f"cannot read the Qdrant folder {path} ({_brief(e)})") from None
    return _qdrant(client, str(path), o.collection, o, identity=str(path.resolve()), tmp=tmp)


def _copied(path: Path, name: str) -> tuple[Path, Path]:
    tmp = Path(tempfile.mkdtemp(prefix=f"v2t-store-{os.getpid()}-"))
    try:
        _copy_store(path.resolve(), tmp / name, path, skip={path.resolve() / "LOCK", path.resolve() / ".lock"})
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(f"cannot copy {path} to read it untouched ({_brief(e)})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp, tmp / name


def _closer(client, tmp: Path | None):
    """Closes a client, then removes the copy it read (if any)."""

    def close():
        try:
            client.close()
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    return close


@contextlib.contextmanager
def _opening(close, where: str):
    """Looks at a store as it opens: any fault closes the client and is one StoreError line."""
    try:
        yield
    except StoreError:
        close()
        raise
    except Exception as e:  # (each client raises its own errors)
        close()
        raise StoreError(f"cannot read {where} ({_brief(e)})") from None


def _qdrant(client, where: str, name: str | None, o: Options, identity: str, tmp: Path | None = None) -> Paged:
    close = _closer(client, tmp)
    with _opening(close, where):
        names = [c.name for c in client.get_collections().collections]
        name = _pick_one(names, name, where, "collection")
        source = f"{where} (collection {name!r})"
        vectors = client.get_collection(name).config.params.vectors
        if isinstance(vectors, dict):  # named vectors
            listed = ", ".join(sorted(vectors)) or "none"
            vname = o.vector_column
            if vname is None:
                if len(vectors) != 1:
                    raise StoreError(f"{source} holds {len(vectors)} named vectors ({listed}): pick one with "
                                     "--vector-column")  # fmt: skip
                vname = next(iter(vectors))
            if vname not in vectors:
                raise StoreError(f"{source} has no vector named {vname!r} (it has {listed})")
            dim = vectors[vname].size
        else:
            if o.vector_column:
                raise StoreError(f"{source} holds one unnamed vector per point: drop --vector-column")
            vname, dim = None, vectors.size
        count = client.count(name, exact=True).count
        tkey = o.text_column
        if tkey is None and count:  # the first point's payload says where the text is
            point = client.scroll(name, limit=1, with_payload=True, with_vectors=False)[0][0]
            tkey = next((k for k in TEXT_NAMES if isinstance((point.payload or {}).get(k), str)), None)
        tkey = tkey or None

    def page(key: str | None, rows: int) -> Records:
        offset = None if key is None else (int(key) if key.isdigit() else key)
        try:
            points, _ = client.scroll(name, limit=rows + (key is not None), offset=offset,
                                      with_payload=[tkey] if tkey else False,
                                      with_vectors=[vname] if vname else True)  # fmt: skip
        except Exception as e:
            raise StoreError(f"cannot read {source} ({_brief(e)})") from None
        points = [p for p in points if str(p.id) != key][:rows]
        ids = [str(p.id) for p in points]
        vecs = [_vector_of(p.vector.get(vname) if vname and isinstance(p.vector, dict) else p.vector, i, source)
                for p, i in zip(points, ids)]  # fmt: skip
        docs = [_text_of((p.payload or {}).get(tkey), i, tkey, source) for p, i in zip(points, ids)] if tkey else None
        return Records(ids, _stack(vecs, ids, dim, source), docs, "qdrant", source)

    ident = f"{identity} collection={name} vector={vname or ''} text={tkey or ''}"
    return Paged("qdrant", source, ident, dim, count, tkey is not None, page, closer=close, timeout_s=o.timeout_s,
                 limit=o.limit)  # fmt: skip


# ----------------------------------------------------------------------------- Milvus


def _quiet_grpc() -> None:
    """gRPC's core writes its connection events (a keep-alive GOAWAY from Milvus Lite's server) straight to
    stderr, between the audit's own lines; set before pymilvus loads it (a user's own setting stays)."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def _milvus_url(store: str, o: Options) -> Paged:
    url, name, shown = _server_url(store, "milvus")
    _quiet_grpc()
    pymilvus = _need("pymilvus", "a Milvus store", "pymilvus")
    if name and o.collection and name != o.collection:
        raise StoreError(f"{shown}: the URL names collection {name!r} and --collection {o.collection!r}")
    try:
        client = pymilvus.MilvusClient(uri=url, token=_secret_env("MILVUS_TOKEN") or "", timeout=o.timeout_s)
    except Exception as e:
        raise StoreError(f"cannot connect to {shown} ({_brief(e)})") from None
    return _milvus(client, shown, name or o.collection, o, identity=shown)


def milvus_folder(path: Path, o: Options) -> Paged:
    """A Milvus Lite store (the PATH.db folder `MilvusClient("PATH.db")` opens), read from a copy: Milvus Lite
    locks and writes what it opens."""
    _quiet_grpc()
    pymilvus = _need("pymilvus", "a Milvus Lite store", "pymilvus milvus-lite")
    _need("milvus_lite", "a Milvus Lite store", "milvus-lite", load=False)
    tmp, copy = _copied(path, "store.db")
    try:
        client = pymilvus.MilvusClient(str(copy))
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(f"cannot read the Milvus Lite store {path} ({_brief(e)})") from None
    return _milvus(client, str(path), o.collection, o, identity=str(path.resolve()), tmp=tmp)


def is_milvus_folder(path: Path) -> bool:
    folder = path / "collections"
    return folder.is_dir() and any((c / "schema.json").is_file() for c in folder.iterdir())


def is_qdrant_folder(path: Path) -> bool:
    return (path / "meta.json").is_file() and (path / "collection").is_dir()


def pymilvus_loaded():
    from pymilvus.client.types import LoadState

    return LoadState.Loaded


def _milvus(client, where: str, name: str | None, o: Options, identity: str, tmp: Path | None = None) -> Paged:
    import logging

    from pymilvus import DataType

    # pymilvus logs a traceback for each error v2t reports in one line, and Milvus Lite's in-process gRPC server one
    # for each call it does not implement (the query iterator's timestamp, which the client then makes itself)
    for name_ in ("pymilvus", "grpc._server"):
        logging.getLogger(name_).setLevel(logging.CRITICAL)
    close = _closer(client, tmp)
    with _opening(close, where):
        name = _pick_one(list(client.list_collections()), name, where, "collection")
        source = f"{where} (collection {name!r})"
        if str(client.get_load_state(name).get("state")) != str(pymilvus_loaded()):
            if tmp is None:  # a server's memory is its operator's: v2t does not load what it was not asked to
                raise StoreError(f"{source} is not loaded on the server, and a collection is read only when loaded: "
                                 "load it (MilvusClient.load_collection) and audit again")  # fmt: skip
            client.load_collection(name)  # (Milvus Lite's copy: v2t's own)
        desc = client.describe_collection(name)
        fields = {f["name"]: f for f in desc["fields"]}
        listed = ", ".join(f"{f['name']} {getattr(f['type'], 'name', f['type'])}" for f in desc["fields"])
        key = next(f for f in desc["fields"] if f.get("is_primary"))
        if key["type"] not in (DataType.INT64, DataType.VARCHAR):
            raise StoreError(f"{source}: its primary key is {key['type']}, not INT64 or VARCHAR")
        vectors = [f["name"] for f in desc["fields"] if "VECTOR" in getattr(f["type"], "name", "")]
        vname = o.vector_column
        if vname is None:
            if len(vectors) != 1:
                raise StoreError(f"{source} has {len(vectors)} vector fields ({listed}): pick one with --vector-column")
            vname = vectors[0]
        if vname not in fields:
            raise StoreError(f"{source} has no field {vname!r} (its fields: {listed})")
        if fields[vname]["type"] != DataType.FLOAT_VECTOR:
            raise StoreError(f"{source}: field {vname} is {getattr(fields[vname]['type'], 'name', '?')}, not a "
                             "FLOAT_VECTOR")  # fmt: skip
        dim = int(fields[vname]["params"]["dim"])
        count = int(client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])
        tkey = o.text_column
        if tkey is None:
            scalar = [c for c in TEXT_NAMES if c in fields and fields[c]["type"] == DataType.VARCHAR]
            if scalar:
                tkey = scalar[0]
            elif desc.get("enable_dynamic_field") and count:  # the first row's dynamic fields say
                row = client.query(name, filter="", output_fields=["*"], limit=1)[0]
                tkey = next((c for c in TEXT_NAMES if isinstance(row.get(c), str)), None)
        elif tkey and tkey not in fields and not desc.get("enable_dynamic_field"):
            raise StoreError(f"{source} has no field {tkey!r} (its fields: {listed})")
        tkey = tkey or None
    pk, is_int = key["name"], key["type"] == DataType.INT64

    def page(after: str | None, rows: int) -> Records:
        where_ = "" if after is None else f"{pk} > {int(after) if is_int else json.dumps(after)}"
        try:
            it = client.query_iterator(name, batch_size=rows, limit=rows, filter=where_,
                                       output_fields=[pk, vname] + ([tkey] if tkey else []))  # fmt: skip
            try:
                got = it.next()
            finally:
                it.close()
        except Exception as e:
            raise StoreError(f"cannot read {source} ({_brief(e)})") from None
        ids = [str(r[pk]) for r in got]
        vecs = [_vector_of(r.get(vname), i, source) for r, i in zip(got, ids)]
        docs = [_text_of(r.get(tkey), i, tkey, source) for r, i in zip(got, ids)] if tkey else None
        return Records(ids, _stack(vecs, ids, dim, source), docs, "milvus", source)

    ident = f"{identity} collection={name} vector={vname} text={tkey or ''}"
    return Paged("milvus", source, ident, dim, count, tkey is not None, page, closer=close, timeout_s=o.timeout_s,
                 limit=o.limit)  # fmt: skip
