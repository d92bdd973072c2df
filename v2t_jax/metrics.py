"""Inversion metrics, as the vec2text reference defines them.

- BLEU: sacrebleu sentence BLEU per example, averaged (`bleu`); corpus BLEU is reported apart (`corpus_bleu`).
- Token F1: F1 between the *sets* of word tokens (words and punctuation marks) of prediction and reference.
- Exact: string equality.
- Cosine: computed by the caller (it needs the embedder), between the re-embedded prediction and the target.

`normalize` case-folds and collapses whitespace; callers comparing against an uncased embedder's output
apply it to both sides (and say so).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_WORD = re.compile(r"\w+|[^\w\s]")


def normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def word_tokens(text: str) -> list[str]:
    return _WORD.findall(text)


def token_f1(pred: str, ref: str) -> float:
    p, r = set(word_tokens(pred)), set(word_tokens(ref))
    tp = len(p & r)
    if tp == 0:
        return 0.0
    precision, recall = tp / len(p), tp / len(r)
    return 2 * precision * recall / (precision + recall)


def sentence_bleu(pred: str, ref: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_bleu(pred, [ref]).score)


def corpus_bleu(preds: Sequence[str], refs: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(preds), [list(refs)]).score)


def text_metrics(preds: Sequence[str], refs: Sequence[str], cosines: Sequence[float] | None = None) -> dict:
    """Averages over examples: bleu, token_f1, exact (fraction), [cosine]; plus corpus_bleu."""

    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    if not preds:
        raise ValueError("no examples to score")
    out = {
        "bleu": float(np.mean([sentence_bleu(p, r) for p, r in zip(preds, refs)])),
        "corpus_bleu": corpus_bleu(preds, refs),
        "token_f1": float(np.mean([token_f1(p, r) for p, r in zip(preds, refs)])),
        "exact": float(np.mean([p == r for p, r in zip(preds, refs)])),
        "n": len(preds),
    }
    if cosines is not None:
        out["cosine"] = float(np.mean(cosines))
    return out
