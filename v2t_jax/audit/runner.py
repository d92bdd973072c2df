"""`v2t audit`'s run: how much of a vector store's text its vectors give away.

Every vector of a store (`v2t_jax.audit.stores`) is inverted by a model trained for the store's embedder; each record
gets its recovered text and the cosine of that text's embedding to the stored vector, and, where the store keeps
the documents, the scores of `v2t_jax.evaluate` against each document as far as the embedder reads it (BLEU,
token F1, exact, token recall). The report (`report.write_report`) is `report.md` + `report.png` beside the
records (`records.jsonl`): the summary, the share of records with at least half of their words recovered, and
the most leaked records first. Each file is written whole (`outputs.write_atomic`), report.md last: a folder
with report.md holds a finished audit.

    from v2t_jax import api, audit
    from v2t_jax.search import strategies
    from v2t_jax.audit import stores

    records = stores.read("chroma_folder")
    summary = audit.run(records, api.load_model(), "report_folder", strategies.greedy(20))

`run` is the whole audit (what `v2t audit` calls): the store is only read, the records are streamed and
resumable, and one run writes a folder at a time. A database store (`stores.Paged`) is read a page at a time in
key order and resumed after the last key finished; the report is made in one pass over records.jsonl: neither
holds a store's vectors or rows whole in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax

from v2t_jax import assets, evaluate, outputs, parallel
from v2t_jax.audit import report, stores
from v2t_jax.audit.remote import RemoteError
from v2t_jax.audit.report import FIGURE, RECORDS, REPORT, SUMMARY
from v2t_jax.errors import V2TError

PAGE_ROWS = 1024  # records a database store is read in at a time (rounded up to whole batches)


class AuditError(V2TError, ValueError):
    """A store that this model cannot audit, or a folder that holds another audit; the message says why."""


def check_no_report(out: Path, overwrite: bool = False) -> None:
    """Refuses a folder that holds a finished audit (its report.md), or records that no resumable run left (no
    state beside them), unless `overwrite`; and any of the audit's file names that is not a regular file."""
    for name in (REPORT, SUMMARY, FIGURE, RECORDS):
        outputs.check_regular(out / name, "report file")
    records = out / RECORDS
    outputs.RowStream.check(records)
    resumable = records.with_name(f"{records.name}.partial.json").exists()
    finished = (out / REPORT).exists() or (records.exists() and not resumable)
    if finished and not overwrite:
        raise AuditError(f"{out} holds an audit report already; pass --overwrite to replace it, or another --output")


def run(
    records,
    model,
    out,
    search=None,
    *,
    batch_size: int = 32,
    embed_fn=None,
    overwrite: bool = False,
    progress: bool = False,
    about: dict | None = None,
    model_key: str | None = None,
    say=lambda message, resumed: None,
    page_rows: int = PAGE_ROWS,
) -> dict:
    """Audits `records` (`stores.read`) with `model` (`api.Vec2Text`) by `search` (`strategies.Search`;
        default: `strategies.default`, as `v2t audit`) into folder `out`: records.jsonl (streamed, resumable: the
        same call continues after the rows done), summary.json, report.png and last report.md. Returns the
        summary.

        embed_fn: a black-box embedder for the hypotheses (`remote.RemoteEmbedder`); its `shown_url` and `model`
        are recorded with the rows. about: what the report says of the run beyond the store and the search (model,
        command). model_key: what identifies the model's weights in the run's record (default: its embedder and
        search only). say(message, resumed): where progress lines go; `resumed` marks the one that says a run is being
    finished (`v2t audit` prints that one even when quiet)."""
    from v2t_jax.search import strategies

    if search is None:
        search = strategies.default(has_corrector=model.program.corrector is not None)
    out = outputs.check_folder(out, "report folder")
    check_no_report(out, overwrite)
    check_fit(records, model)
    paged = isinstance(records, stores.Paged)
    vectors = None if paged else model.check_embeddings(records.vectors)
    if paged and jax.process_count() > 1:
        raise AuditError("a database store is audited by one process: drop --distributed")
    model.check_search(search, embed_fn)
    scorer = None
    if not paged and records.documents is not None:
        scorer = evaluate.Evaluator(model.embedder_view([d or "" for d in records.documents]))
    bs = model.batch_rows(len(records), batch_size)
    remote = embed_fn.identity if hasattr(embed_fn, "identity") else None
    record = {
        "store": records.digest(),
        "model": model_key,
        **search.record(),
        "batch_size": bs,
        "documents": records.has_documents if paged else scorer is not None,
        "embedder_url": remote,
    }
    out.mkdir(parents=True, exist_ok=True)
    multi, main = jax.process_count() > 1, jax.process_index() == 0
    # several processes: each audits its share of the batches into a part of its own, process 0 joins them
    target = parallel.part_path(out / RECORDS) if multi else out / RECORDS
    with outputs.lock(target, "audit"):
        check_no_report(out, overwrite)  # (again, now that no other run can write here)
        if overwrite and main:
            (out / REPORT).unlink(missing_ok=True)  # the mark of a finished audit goes first
        stream = outputs.RowStream(out / RECORDS, record, bs, "audit")  # (the whole: complete when joined before)
        say(f"{len(records)} records of {records.source}", False)
        if stream.complete:
            say(f"finishing the report of the {stream.done} records in {stream.output}", True)
        elif multi:
            _audit_share(records, vectors, model, search, bs, target, record, scorer, progress, embed_fn)
            parallel.barrier("v2t audit: every part written")
            if main:
                parallel.join_parts(out / RECORDS, len(vectors), bs)
                stream._save_state()  # (the joined records are this run's until the report is written)
            parallel.barrier("v2t audit: parts joined")
            if not main:
                return {}
            stream = outputs.RowStream(out / RECORDS, record, bs, "audit")
        elif paged:
            _audit_pages(records, model, search, bs, stream, page_rows, progress, embed_fn)
        else:
            _audit_share(records, vectors, model, search, bs, target, record, scorer, progress, embed_fn, stream)
        if not main:
            return {}
        report_about = {
            "source": records.source,
            "kind": records.kind,
            "dim": _dim(records),
            "embedder": records.embedder,
            "note": records.note,
            "model": f"a model for {model.embedder.name}",
            "search": search.describe(),
            "max_length": model.max_length,
            "command": "audit.run",
            **(about or {}),
        }
        summary = report.write_report(out, stream.iter_rows(), report_about)
        stream.close()
    return summary


def _audit_share(records, vectors, model, search, bs, target, record, scorer, progress, embed_fn, stream=None):
    """The rows of this process's batches (all of them with one process) streamed to `target`, finished with its
    state kept (until the report is written, or the parts are joined)."""
    mine = parallel.share_rows(len(vectors), bs)
    if stream is None:
        stream = outputs.RowStream(target, {**record, "part": [jax.process_index(), jax.process_count()]}, bs, "audit")
    if stream.complete:
        return
    todo = vectors if mine is None else vectors[mine]
    try:
        if len(todo) > stream.done:
            for first, texts, cosines, _ in model.iter_batches(
                todo, search, bs, progress=progress, start=stream.done, embed_fn=embed_fn
            ):
                at = first if mine is None else int(mine[first])  # (a batch is whole in one process)
                ids = records.ids[at : at + len(texts)]
                stream.append(rows_of_batch(ids, texts, cosines, at, scorer, model.readable))
    except RemoteError as e:  # the endpoint failed for good: what is done stays for a rerun
        raise stream.kept(e, "records") from None
    stream.finish(keep_state=True)


def _audit_pages(records, model, search, bs, stream, page_rows, progress, embed_fn):
    """A `stores.Paged` store's records streamed to `stream` a page at a time (whole batches, so a resumed run's
    batches are those of a whole run), continuing after the key of the last row done; finished with its state
    kept (until the report is written)."""
    if stream.complete:
        return
    page_rows = bs * max(1, -(-page_rows // bs))
    done, after = stream.done, stream.last_row().get("id") if stream.done else None
    from tqdm.auto import tqdm

    bar = tqdm(total=records.total, initial=done, unit="record", desc="audit", dynamic_ncols=True,
               disable=not progress)  # fmt: skip
    try:
        while done < records.total:
            page = records.read_page(after, min(page_rows, records.total - done))
            if not len(page):
                break  # (rows deleted since the count)
            scorer = None
            if page.documents is not None:
                scorer = evaluate.Evaluator(model.embedder_view(page.documents))
            for first, texts, cosines, _ in model.iter_batches(page.vectors, search, bs, embed_fn=embed_fn):
                ids = page.ids[first : first + len(texts)]
                stream.append(rows_of_batch(ids, texts, cosines, first, scorer, model.readable))
                bar.update(len(texts))
            done, after = done + len(page), page.ids[-1]
    except (RemoteError, stores.StoreError) as e:  # the endpoint or the store failed: what is done stays
        raise stream.kept(e, "records") from None
    finally:
        bar.close()
    stream.finish(keep_state=True)


def _dim(records) -> int:
    return int(records.dim) if isinstance(records, stores.Paged) else int(records.vectors.shape[1])


def embedder_name_key(name: str) -> str:
    """Embedder names compared across stores and bundles: the packaged key, else a folder's or hub id's last part."""
    return assets.packaged_key(name) or assets.packaged_key(Path(name).name) or Path(name).name.lower()


def check_fit(records, model) -> None:
    """AuditError unless the store's vectors can come from the model's embedder (dimension, and the embedder's
    name where the store records one)."""
    dim = _dim(records)
    if dim != model.dim:
        raise AuditError(
            f"{records.source} holds {dim}-dimensional vectors; this model inverts {model.embedder.name}'s "
            f"{model.dim}-dimensional ones: audit it with a model trained for the store's embedder"
        )
    if records.embedder is not None and embedder_name_key(records.embedder) != embedder_name_key(model.embedder.name):
        raise AuditError(
            f"{records.source} was embedded with {records.embedder!r}; this model inverts {model.embedder.name} "
            "vectors: audit it with a model trained for that embedder"
        )


def rows_of_batch(
    ids: Sequence[str],
    texts: list[str],
    cosines: list[float],
    first: int = 0,
    scorer: evaluate.Evaluator | None = None,
    readable=lambda x: x,
) -> list[dict]:
    """One JSON row per record (records first ..): id, recovered text, cosine; with the documents' `scorer`,
    the reference and per-record scores (`Evaluator.rows`: scored as decoded against the embedder's views).
    Text and reference are written through `readable` (`Vec2Text.readable`)."""
    rows = [{"id": i, "text": t, "cosine": float(c)} for i, t, c in zip(ids, readable(texts), cosines)]
    if scorer is not None:
        for row, scores in zip(rows, scorer.rows(texts, first, readable)):
            row.update(scores)
    return rows
