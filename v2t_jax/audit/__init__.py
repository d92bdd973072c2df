"""The audit layer: what a store's vectors give away.

    stores.py    reading a store, read-only: folder and file stores (Chroma, LanceDB, FAISS, .npy, parquet) whole
                 (`Records`), database stores a page at a time (`Paged`); KINDS_READ: a new store is its reader
                 plus one entry
    servers.py   the database stores: PostgreSQL + pgvector, Qdrant, Milvus (their servers, Qdrant's folder,
                 Milvus Lite)
    remote.py    an OpenAI-compatible embeddings endpoint as a black-box embedder (`--embedder-url`)
    runner.py    the audit as a library call, `audit.run(records, model, out, search)`: streamed, resumable
    report.py    the report made from the finished records

`from v2t_jax import audit` gives the run (`audit.run`, `audit.check_fit`, `audit.RECORDS`, ...) without loading
JAX until it is used; `from v2t_jax.audit import stores` reads stores without it.
"""

from __future__ import annotations

_RUNNER = ("run", "check_fit", "check_no_report", "rows_of_batch", "embedder_name_key", "AuditError", "PAGE_ROWS")
_REPORT = ("write_report", "tally", "REPORT", "FIGURE", "RECORDS", "SUMMARY", "SHOWN")


def __getattr__(name: str):
    """The runner's and the report's names, imported when first asked for (the CLI reads stores and starts
    without JAX)."""
    if name in _RUNNER:
        from v2t_jax.audit import runner

        return getattr(runner, name)
    if name in _REPORT:
        from v2t_jax.audit import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
