"""How a recovery is scored, in one place: training's evaluation, `v2t demo`, `v2t invert --references`,
`v2t audit`, `experiments/results_table.py` and `experiments/noise_defense.py` all score through one
`Evaluator`: the references of a fixed set of records, made once, and optionally the function that predicts
their texts (`Evaluator(references, predict_fn).run(params)`).

- **The reference** is the original text as far as the embedder reads it (`max_length` tokens), written as the
  decoders can write it (`reference_view`): in the embedder's uncased WordPiece, its tokens decoded back (lower
  case, accents stripped, WordPiece spacing); in a vocabulary of the model's own, the text cut where the
  embedder stops reading. Stored embedder ids (training data) give the same view (`views_of_ids`).
- **Both sides** are case-folded and whitespace-normalised (`metrics.normalize`) before any comparison.
- **Scores** (`score`): mean sentence BLEU, corpus BLEU, set token F1, exact match, mean cosine (from the caller,
  which has the embedder), and `half_recovered`: the share of records with at least half of their reference's
  word tokens in the recovery. `per_record` gives each record's BLEU, token F1, exact and token recall.
- **A new metric** is one entry in `METRICS`: every row, mean and summary takes its keys from there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from v2t_jax import metrics


def reference_view(vocab, embedder, texts: Sequence[str], max_length: int) -> list[str]:
    """Each text as far as `embedder` reads it at `max_length` tokens, in the form `vocab`'s decoders write."""
    texts = list(texts)
    if vocab.in_graph:
        return [vocab.decode(ids) for ids in embedder.tokenize(texts, max_length)]
    from v2t_jax.data import passages

    return [passages.truncate(t, embedder.tokenizer, max_length)[0] for t in texts]


def views_of_ids(vocab, embedder, ids) -> list[str]:
    """The reference view of passages stored as embedder ids (`[CLS] t1 .. tn [SEP] 0 ..`, or without [CLS]);
    for a vocabulary of the model's own, the embedder's decoding of them (its tokens are all there is)."""
    rows = np.asarray(ids)
    if vocab.in_graph:
        return [vocab.decode(row) for row in rows]
    return [embedder.tokenizer.decode([int(t) for t in row], skip_special_tokens=True) for row in rows]


def token_recall(pred: str, ref: str) -> float:
    """The share of the reference's distinct word tokens that the prediction holds (0 for an empty reference:
    a record without its text has nothing to recover)."""
    r = set(metrics.word_tokens(ref))
    return len(r & set(metrics.word_tokens(pred))) / len(r) if r else 0.0


# Each record's scores, by name: (normalised recovery, normalised reference) -> a number. Every command's rows,
# `score`'s means and `summary_of_rows` take their keys from here, so a new metric is one entry.
METRICS: dict[str, Callable[[str, str], Any]] = {
    "bleu": metrics.sentence_bleu,
    "token_f1": metrics.token_f1,
    "exact": lambda p, r: p == r,
    "token_recall": token_recall,
}


def per_record(preds: Sequence[str], refs: Sequence[str]) -> list[dict]:
    """Each record's `METRICS` (bleu, token_f1, exact (bool), token_recall, ...), after normalising both sides."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} recoveries for {len(refs)} references")
    out = []
    for p, r in zip(preds, refs):
        p, r = metrics.normalize(p), metrics.normalize(r)
        out.append({name: fn(p, r) for name, fn in METRICS.items()})
    return out


def means_of_columns(columns: dict[str, Sequence[float]]) -> dict:
    """The mean of each `METRICS` score given as a column (one value per record), and `half_recovered` from the
    token recall column: `_means` of rows, for a caller that collects the columns as it streams (`v2t audit`'s
    report)."""
    out = {name: float(np.mean(np.asarray(columns[name], np.float64))) for name in METRICS}
    out["half_recovered"] = float(np.mean(np.asarray(columns["token_recall"], np.float64) >= 0.5))
    return out


def _means(rows: Sequence[dict]) -> dict:
    """The mean of each `METRICS` score over rows that carry them, and `half_recovered` from token recall."""
    return means_of_columns({name: [float(r[name]) for r in rows] for name in METRICS})


def score(preds: Sequence[str], refs: Sequence[str], cosines: Sequence[float] | None = None) -> dict:
    """Means over records (see the module docstring), both sides normalised; corpus BLEU; `n` records."""
    if not preds:
        raise ValueError("no examples to score")
    out = _means(per_record(preds, refs))
    out["corpus_bleu"] = metrics.corpus_bleu([metrics.normalize(x) for x in preds],
                                             [metrics.normalize(x) for x in refs])  # fmt: skip
    out["n"] = len(preds)
    if cosines is not None:
        out["cosine"] = float(np.mean(cosines))
    return out


def summary_of_rows(rows: Sequence[dict]) -> dict:
    """`score`'s means (each of `METRICS`, half_recovered, and cosine where the rows have one) from rows that
    carry `per_record`'s scores: what a command reports over the rows it wrote, however its texts are shown."""
    if not rows:
        raise ValueError("no rows to summarise")
    out = _means(rows)
    cos = [r["cosine"] for r in rows if r.get("cosine") is not None]
    if len(cos) == len(rows):
        out["cosine"] = float(np.mean(cos))
    out["n"] = len(rows)
    return out


def summary_line(scores: dict) -> str:
    """One line of the scores a person reads first."""
    line = f"BLEU {scores['bleu']:.2f}, token F1 {100 * scores['token_f1']:.1f}, exact {100 * scores['exact']:.1f}%"
    if "cosine" in scores:
        line += f", cosine {scores['cosine']:.3f}"
    return line + f", half the tokens recovered in {100 * scores['half_recovered']:.1f}% of {scores['n']}"


@dataclasses.dataclass
class Evaluator:
    """Recoveries of one fixed set of records, scored against their references (see the module docstring).

    references: each record's reference view, made once (`of_texts`, `of_ids`).
    predict_fn: params -> (texts, cosines) of the same records, in order; what `run` scores. Optional: callers
        that stream their texts (`v2t invert`, `v2t audit`) score batch by batch with `rows`.
    """

    references: list[str]
    predict_fn: Callable[[Any], tuple[Sequence[str], Sequence[float] | None]] | None = None

    @classmethod
    def of_texts(cls, vocab, embedder, texts: Sequence[str], max_length: int, predict_fn=None) -> Evaluator:
        """References from the records' original texts (`reference_view`)."""
        return cls(reference_view(vocab, embedder, texts, max_length), predict_fn)

    @classmethod
    def of_ids(cls, vocab, embedder, ids, predict_fn=None) -> Evaluator:
        """References from passages stored as embedder ids (`views_of_ids`: training and test data)."""
        return cls(views_of_ids(vocab, embedder, ids), predict_fn)

    def __len__(self) -> int:
        return len(self.references)

    def _refs(self, n: int, first: int) -> list[str]:
        if not 0 <= first <= first + n <= len(self.references):
            raise ValueError(f"{n} recoveries from record {first} for {len(self.references)} references")
        return list(self.references[first : first + n])

    def run(self, params: Any = None) -> dict:
        """`score` of what `predict_fn(params)` predicts for every record, with `example`: the first record's
        text, normalised."""
        if self.predict_fn is None:
            raise ValueError("this Evaluator has no predict_fn: score texts with score() or rows()")
        texts, cosines = self.predict_fn(params)
        if len(texts) != len(self.references):
            raise ValueError(f"predict_fn gave {len(texts)} texts for {len(self.references)} records")
        return {**self.score(texts, cosines), "example": metrics.normalize(texts[0])}

    def score(self, texts: Sequence[str], cosines: Sequence[float] | None = None, first: int = 0) -> dict:
        """The means (`score`) of texts for records first .. first + len(texts) - 1."""
        return score(texts, self._refs(len(texts), first), cosines)

    def per_record(self, texts: Sequence[str], first: int = 0) -> list[dict]:
        """Each text's scores (`per_record`) against its record's reference."""
        return per_record(texts, self._refs(len(texts), first))

    def rows(self, texts: Sequence[str], first: int = 0, readable=lambda x: x) -> list[dict]:
        """One row per text for records first ..: its reference (through `readable`, as people write it) and
        `per_record`'s scores, made as decoded: what `v2t invert --references` and `v2t audit` write."""
        refs = self._refs(len(texts), first)
        return [{"reference": r, **sc} for r, sc in zip(readable(refs), per_record(texts, refs))]
