"""Documents -> passages of at most `max_tokens` embedder tokens, keeping the original characters.

A passage starts at a sentence start and takes whole sentences until it holds at least `max_tokens`
embedder tokens (or the paragraph ends); it is then cut at the character offset where token number
`max_tokens - 2` ends — `max_tokens` counts the embedder's [CLS] and [SEP], so embedding a passage at
`--max-length max_tokens` sees all of it. The next passage starts at the next sentence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Iterable, Iterator

from v2t_jax.data.sources import Document

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(paragraph: str) -> list[str]:
    starts = [0] + [m.end() for m in _SENTENCE_END.finditer(paragraph)]
    ends = starts[1:] + [len(paragraph)]
    return [paragraph[a:b].strip() for a, b in zip(starts, ends) if paragraph[a:b].strip()]


@dataclasses.dataclass(frozen=True)
class Passage:
    text: str
    source: str
    doc_id: str
    index: int  # passage number within its document
    n_tokens: int  # embedder tokens including [CLS] and [SEP]


def truncate(text: str, tokenizer, max_tokens: int) -> tuple[str, int]:
    """`text` cut where its `max_tokens - 2`-th content token ends (what an embedder sees at `max_tokens`
    including [CLS]/[SEP]), and its content-token count."""
    budget = max_tokens - 2
    enc = tokenizer.encode(text)
    content = [k for k, (a, b) in enumerate(enc.offsets) if b > a]  # drop [CLS]/[SEP]
    if len(content) > budget:
        return text[: enc.offsets[content[budget - 1]][1]], budget
    return text, len(content)


def document_passages(doc: Document, tokenizer, max_tokens: int, min_words: int = 3) -> Iterator[Passage]:
    """`tokenizer` is a `tokenizers.Tokenizer` with truncation and padding off."""
    budget = max_tokens - 2
    index = 0
    for para in doc.paragraphs:
        sentences = split_sentences(para)
        if not sentences:
            continue
        counts = [len(e.ids) - 2 for e in tokenizer.encode_batch(sentences)]
        i = 0
        while i < len(sentences):
            j, total = i, 0
            while j < len(sentences) and total < budget:
                total += counts[j]
                j += 1
            text, n = truncate(" ".join(sentences[i:j]), tokenizer, max_tokens)
            i = j
            if len(text.split()) >= min_words:
                yield Passage(text, doc.source, doc.doc_id, index, n + 2)
                index += 1


def split_of(doc_id: str, seed: int, fractions: dict[str, float]) -> str:
    """Deterministic split by document: a hash of (seed, doc_id) falls into one split's interval."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for name, frac in fractions.items():
        edge += frac
        if h < edge:
            return name
    return "train"


def passages_by_split(
    docs: Iterable[Document], tokenizer, max_tokens: int, seed: int, fractions: dict[str, float]
) -> dict[str, list[Passage]]:
    out: dict[str, list[Passage]] = {"train": [], "validation": [], "test": []}
    for doc in docs:
        out[split_of(doc.doc_id, seed, fractions)].extend(document_passages(doc, tokenizer, max_tokens))
    return out
