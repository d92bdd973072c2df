"""`v2t audit`: how much of a vector store's text its vectors give away.

Every vector of a store (`v2t_jax.stores`) is inverted by a model trained for the store's embedder; each record
gets its recovered text and the cosine of that text's embedding to the stored vector, and, where the store keeps
the documents, the scores of `v2t_jax.evaluate` against each document as far as the embedder reads it (BLEU,
token F1, exact, token recall). The report (`write_report`) is `report.md` + `report.png` beside the
records (`records.jsonl`): the summary, the share of records with at least half of their words recovered, and
the most leaked records first. Each file is written whole (`outputs.write_atomic`), report.md last: a folder
with report.md holds a finished audit.

    from v2t_jax import api, audit, stores, strategies

    records = stores.read("chroma_folder")
    summary = audit.run(records, api.load_model(), "report_folder", strategies.greedy(20))

`run` is the whole audit (what `v2t audit` calls): the store is only read, the records are streamed and
resumable, and one run writes a folder at a time. A database store (`stores.Paged`) is read a page at a time in
key order and resumed after the last key finished; the report is made in one pass over records.jsonl: neither
holds a store's vectors or rows whole in memory.
"""

from __future__ import annotations

import datetime
import heapq
from array import array
from pathlib import Path
from typing import Iterable, Sequence

import jax
import numpy as np

from v2t_jax import assets, evaluate, outputs, parallel, stores
from v2t_jax.errors import V2TError
from v2t_jax.remote import RemoteError

REPORT, FIGURE, RECORDS, SUMMARY = "report.md", "report.png", "records.jsonl", "summary.json"
SHOWN = 20  # records in the report's most-leaked table
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
    from v2t_jax import strategies

    if search is None:
        search = strategies.default(has_corrector=model.program.corrector is not None)
    out = outputs.check_folder(out, "report folder")
    check_no_report(out, overwrite)
    check_fit(records, model)
    paged = isinstance(records, stores.Paged)
    vectors = None if paged else model.check_embeddings(records.vectors)
    if paged and jax.process_count() > 1:
        raise AuditError("a database store is audited by one process: drop --distributed")
    search.check_model(
        has_corrector=model.program.corrector is not None, in_graph=model.program.in_graph,
        black_box=embed_fn is not None,
    )  # fmt: skip
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
        summary = write_report(out, stream.iter_rows(), report_about)
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
        kept = f"the {stream.done} records done are kept: rerun the same command to continue"
        raise RemoteError(f"{e}; {kept}") from None
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
        kept = f"the {stream.done} records done are kept: rerun the same command to continue"
        raise type(e)(f"{e}; {kept}") from None
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


def _most_leaked_key(r: dict) -> tuple:
    """The report's order: most of the original recovered first (token recall, then cosine), or by cosine when
    the store keeps no documents."""
    return (-r.get("token_recall", 0.0), -r["cosine"])


def tally(rows: Iterable[dict]) -> tuple[dict, list[dict], np.ndarray, np.ndarray | None]:
    """One pass over the rows (an iterator: records.jsonl is read line by line): the summary (records, mean
    cosine, the share at cosine >= 0.9 and, where the rows carry scores, their means as `evaluate` makes them),
    the `SHOWN` most leaked rows in the report's order, and each row's cosine and token recall (None without
    documents) for the figure. Memory: the shown rows and a few numbers per row."""
    cos, scores = array("d"), {name: array("d") for name in evaluate.METRICS}
    has_refs = None

    def each():
        nonlocal has_refs
        for r in rows:
            if has_refs is None:
                has_refs = "token_recall" in r
            cos.append(float(r["cosine"]))
            if has_refs:
                for name, values in scores.items():
                    values.append(float(r[name]))
            yield r

    top = heapq.nsmallest(SHOWN, each(), key=_most_leaked_key)  # (stable: ties keep the rows' order)
    c = np.frombuffer(cos, np.float64) if len(cos) else np.zeros(0)
    out = {"records": len(c), "mean_cosine": float(c.mean()) if len(c) else float("nan"),
           "cosine_0.9": float((c >= 0.9).mean()) if len(c) else float("nan")}  # fmt: skip
    recall = None
    if has_refs:
        means = {name: float(np.mean(np.frombuffer(v, np.float64))) for name, v in scores.items()}
        recall = np.frombuffer(scores["token_recall"], np.float64)
        means["half_recovered"] = float(np.mean(recall >= 0.5))
        out.update({k: means[k] for k in ("bleu", "token_f1", "exact", "half_recovered")})
    return out, top, c, recall


def write_report(out: Path, rows: Iterable[dict], about: dict) -> dict:
    """report.png, summary.json and last report.md in `out` from the finished rows (read once: an iterator
    will do); `about`: source, kind, dim, embedder, note (what the store reader says of the vectors, or None),
    model, search (`Search.describe()`), max_length, command. Returns the summary."""
    summary, top, cosines, recall = tally(rows)
    if not summary["records"]:
        raise AuditError("no records were audited: nothing to report")
    _figure(out / FIGURE, cosines, recall)
    has_refs = "bleu" in summary
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    lines = [
        f"# v2t audit: {about['source']}",
        "",
        f"{summary['records']} records of a {about['kind']} store, {about['dim']}-dimensional vectors"
        + (f" (the store records the embedder {about['embedder']!r})" if about.get("embedder") else "")
        + f", inverted by {about['model']} ({about['search']}; {datetime.date.today().isoformat()}).",
        "",
        f"Command: `{about['command']}`",
        "",
    ]
    if about.get("note"):
        lines += [f"**Note.** {about['note']}", ""]
    lines += [
        "## Summary",
        "",
    ]
    head = ["records", "mean cosine", "cosine ≥ 0.9"]
    vals = [str(summary["records"]), f"{summary['mean_cosine']:.3f}", pct(summary["cosine_0.9"])]
    if has_refs:
        head += ["BLEU", "token F1", "exact", "≥ 50% of words recovered"]
        vals += [f"{summary['bleu']:.1f}", pct(summary["token_f1"]), pct(summary["exact"]),
                 pct(summary["half_recovered"])]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(vals) + " |", ""]
    if has_refs:
        lines += [
            f"**{pct(summary['half_recovered'])} of the records give back at least half of their words** from the "
            f"vector alone, and {pct(summary['exact'])} their whole text (as far as the embedder reads it: "
            f"{about['max_length']} tokens). Cosine is that of the recovered text's embedding to the stored vector.",
            "",
        ]
    else:
        lines += [
            "The store keeps no documents (pass them with --documents to score the recovery); cosine is that of "
            "the recovered text's embedding to the stored vector.",
            "",
        ]
    n = summary["records"]
    lines += [f"## Most leaked records (first {min(SHOWN, n)} of {n}; all in {RECORDS})", ""]
    if has_refs:
        lines += ["| # | id | recovered | original (as the embedder reads it) | cosine | words recovered |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
    else:
        lines += ["| # | id | recovered | cosine |", "|---|---|---|---|"]
    for i, r in enumerate(top, 1):
        cells = [str(i), _cell(r["id"]), _cell(r["text"])]
        if has_refs:
            cells += [_cell(r["reference"]), f"{r['cosine']:.3f}", pct(r["token_recall"])]
        else:
            cells += [f"{r['cosine']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![cosine and recovered words per record]({FIGURE})", ""]
    outputs.write_text_atomic(out / SUMMARY, outputs.dumps({**summary, **about}, indent=1) + "\n")
    outputs.write_text_atomic(out / REPORT, "\n".join(lines))
    return summary


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _figure(path: Path, cosines: np.ndarray, recall: np.ndarray | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if recall is not None else 1, figsize=(10 if recall is not None else 5, 3.6))
    axes = np.atleast_1d(axes)
    axes[0].hist(cosines, bins=20, range=(min(0.0, float(cosines.min())), 1.0))
    axes[0].set(xlabel="cosine of the recovered text to the stored vector", ylabel="records", title="cosine")
    if recall is not None:
        axes[1].hist(recall, bins=20, range=(0, 1), color="tab:red")
        axes[1].axvline(0.5, color="k", ls="--", lw=1)
        share = float(np.mean(recall >= 0.5))
        axes[1].set(xlabel="share of the original's words recovered", ylabel="records",
                    title=f"{100 * share:.0f}% of records: at least half of their words")  # fmt: skip
    fig.tight_layout()
    try:
        outputs.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    finally:
        plt.close(fig)
