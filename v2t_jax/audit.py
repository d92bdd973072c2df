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
resumable, and one run writes a folder at a time.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from v2t_jax import assets, evaluate, outputs, parallel
from v2t_jax.errors import V2TError
from v2t_jax.remote import RemoteError

REPORT, FIGURE, RECORDS, SUMMARY = "report.md", "report.png", "records.jsonl", "summary.json"
SHOWN = 20  # records in the report's most-leaked table


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
    vectors = model.check_embeddings(records.vectors)
    search.check_model(
        has_corrector=model.program.corrector is not None, in_graph=model.program.in_graph,
        black_box=embed_fn is not None,
    )  # fmt: skip
    scorer = None
    if records.documents is not None:
        scorer = evaluate.Evaluator(model.embedder_view([d or "" for d in records.documents]))
    bs = model.batch_rows(len(vectors), batch_size)
    remote = embed_fn.identity if hasattr(embed_fn, "identity") else None
    record = {
        "store": records.digest(),
        "model": model_key,
        **search.record(),
        "batch_size": bs,
        "documents": scorer is not None,
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
        else:
            _audit_share(records, vectors, model, search, bs, target, record, scorer, progress, embed_fn, stream)
        if not main:
            return {}
        report_about = {
            "source": records.source,
            "kind": records.kind,
            "dim": int(records.vectors.shape[1]),
            "embedder": records.embedder,
            "note": records.note,
            "model": f"a model for {model.embedder.name}",
            "search": search.describe(),
            "max_length": model.max_length,
            "command": "audit.run",
            **(about or {}),
        }
        summary = write_report(out, stream.rows(), report_about)
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


def embedder_name_key(name: str) -> str:
    """Embedder names compared across stores and bundles: the packaged key, else a folder's or hub id's last part."""
    return assets.packaged_key(name) or assets.packaged_key(Path(name).name) or Path(name).name.lower()


def check_fit(records, model) -> None:
    """AuditError unless the store's vectors can come from the model's embedder (dimension, and the embedder's
    name where the store records one)."""
    dim = records.vectors.shape[1]
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


def summarize(rows: list[dict]) -> dict:
    cos = np.asarray([r["cosine"] for r in rows], np.float64)
    out = {"records": len(rows), "mean_cosine": float(cos.mean()), "cosine_0.9": float((cos >= 0.9).mean())}
    if rows and "reference" in rows[0]:  # from the rows' own scores (made as decoded, before `readable`)
        scores = evaluate.summary_of_rows(rows)
        out.update({k: scores[k] for k in ("bleu", "token_f1", "exact", "half_recovered")})
    return out


def most_leaked(rows: list[dict]) -> list[dict]:
    """Rows in the order the report lists them: most of the original recovered first (token recall, then
    cosine), or by cosine when the store keeps no documents."""
    if rows and "token_recall" in rows[0]:
        return sorted(rows, key=lambda r: (-r["token_recall"], -r["cosine"]))
    return sorted(rows, key=lambda r: -r["cosine"])


def write_report(out: Path, rows: list[dict], about: dict) -> dict:
    """report.png, summary.json and last report.md in `out` from the finished rows; `about`: source, kind, dim,
    embedder, note (what the store reader says of the vectors, or None), model, search (`Search.describe()`),
    max_length, command. Returns the summary."""
    summary = summarize(rows)
    _figure(out / FIGURE, rows)
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
    lines += [f"## Most leaked records (first {min(SHOWN, len(rows))} of {len(rows)}; all in {RECORDS})", ""]
    if has_refs:
        lines += ["| # | id | recovered | original (as the embedder reads it) | cosine | words recovered |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
    else:
        lines += ["| # | id | recovered | cosine |", "|---|---|---|---|"]
    for i, r in enumerate(most_leaked(rows)[:SHOWN], 1):
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


def _figure(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recall = [r["token_recall"] for r in rows] if rows and "token_recall" in rows[0] else None
    fig, axes = plt.subplots(1, 2 if recall is not None else 1, figsize=(10 if recall is not None else 5, 3.6))
    axes = np.atleast_1d(axes)
    axes[0].hist([r["cosine"] for r in rows], bins=20, range=(min(0.0, min(r["cosine"] for r in rows)), 1.0))
    axes[0].set(xlabel="cosine of the recovered text to the stored vector", ylabel="records", title="cosine")
    if recall is not None:
        axes[1].hist(recall, bins=20, range=(0, 1), color="tab:red")
        axes[1].axvline(0.5, color="k", ls="--", lw=1)
        share = float(np.mean(np.asarray(recall) >= 0.5))
        axes[1].set(xlabel="share of the original's words recovered", ylabel="records",
                    title=f"{100 * share:.0f}% of records: at least half of their words")  # fmt: skip
    fig.tight_layout()
    try:
        outputs.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    finally:
        plt.close(fig)
