"""The audit's report, made in one pass over its records (records.jsonl read line by line): `report.md` (the
summary, the share of records with at least half of their words recovered, the most leaked records first),
`report.png` (histograms of cosine and recovered words) and `summary.json`, each written whole, report.md last:
a folder with report.md holds a finished audit."""

from __future__ import annotations

import datetime
import heapq
from array import array
from pathlib import Path
from typing import Iterable

import numpy as np

from v2t_jax import evaluate, outputs
from v2t_jax.errors import V2TError

REPORT, FIGURE, SUMMARY = "report.md", "report.png", "summary.json"
RECORDS = "records.jsonl"  # (the rows the report is made from: `runner` streams them)
SHOWN = 20  # records in the report's most-leaked table


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
        columns = {name: np.frombuffer(v, np.float64) for name, v in scores.items()}
        means = evaluate.means_of_columns(columns)
        recall = columns["token_recall"]
        out.update({k: means[k] for k in ("bleu", "token_f1", "exact", "half_recovered")})
    return out, top, c, recall


def write_report(out: Path, rows: Iterable[dict], about: dict) -> dict:
    """report.png, summary.json and last report.md in `out` from the finished rows (read once: an iterator
    will do); `about`: source, kind, dim, embedder, note (what the store reader says of the vectors, or None),
    model, search (`Search.describe()`), max_length, command. Returns the summary."""
    summary, top, cosines, recall = tally(rows)
    if not summary["records"]:
        raise V2TError("no records were audited: nothing to report")
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
