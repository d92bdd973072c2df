"""`v2t audit`: how much of a vector store's text its vectors give away.

Every vector of a store (`v2t_jax.stores`) is inverted by a model trained for the store's embedder; each record
gets its recovered text and the cosine of that text's embedding to the stored vector, and, where the store keeps
the documents, the scores of `v2t_jax.evaluate` against each document as far as the embedder reads it (BLEU,
token F1, exact, token recall). The report (`write_report`) is `report.md` + `report.png` beside the
records (`records.jsonl`): the summary, the share of records with at least half of their words recovered, and
the most leaked records first. Each file is written whole (`outputs.write_atomic`), report.md last: a folder
with report.md holds a finished audit.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Sequence

import numpy as np

from v2t_jax import assets, evaluate, outputs
from v2t_jax.errors import V2TError

REPORT, FIGURE, RECORDS, SUMMARY = "report.md", "report.png", "records.jsonl", "summary.json"
SHOWN = 20  # records in the report's most-leaked table


class AuditError(V2TError, ValueError):
    """A store that this model cannot audit; the message says why."""


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
