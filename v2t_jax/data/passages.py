"""Documents -> passages of at most `max_tokens` embedder tokens, keeping the original characters.

A passage starts at a sentence start and takes whole sentences until it holds at least `max_tokens`
embedder tokens (or the paragraph ends); it is then cut at the character offset where token number
`max_tokens - 2` ends — `max_tokens` counts the embedder's [CLS] and [SEP], so embedding a passage at
`--max-length max_tokens` sees all of it. The next passage starts at the next sentence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

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
    return _cut(text, tokenizer.encode(text), max_tokens - 2)


def document_passages(doc: Document, tokenizer, max_tokens: int, min_words: int = 3) -> Iterator[Passage]:
    """`tokenizer` is a `tokenizers.Tokenizer` with truncation and padding off."""
    yield from batch_passages([doc], tokenizer, max_tokens, min_words)


def batch_passages(docs: list[Document], tokenizer, max_tokens: int, min_words: int = 3) -> list[Passage]:
    """`document_passages` of many documents with two tokenizer calls in all (one over every sentence, one
    over every candidate passage), which is what makes building fast."""
    budget = max_tokens - 2
    sentences = [[split_sentences(p) for p in doc.paragraphs] for doc in docs]
    flat = [s for doc in sentences for para in doc for s in para]
    counts = iter([len(e.ids) - 2 for e in tokenizer.encode_batch(flat)] if flat else [])
    candidates = []  # (document number, joined sentences)
    for d, doc in enumerate(sentences):
        for para in doc:
            n_tok = [next(counts) for _ in para]
            i = 0
            while i < len(para):
                j, total = i, 0
                while j < len(para) and total < budget:
                    total += n_tok[j]
                    j += 1
                candidates.append((d, " ".join(para[i:j])))
                i = j
    out, index = [], [0] * len(docs)
    encodings = tokenizer.encode_batch([c for _, c in candidates]) if candidates else []
    for (d, joined), enc in zip(candidates, encodings):
        text, n = _cut(joined, enc, budget)
        if len(text.split()) >= min_words:
            out.append(Passage(text, docs[d].source, docs[d].doc_id, index[d], n + 2))
            index[d] += 1
    return out


def _cut(text: str, enc, budget: int) -> tuple[str, int]:
    content = [k for k, (a, b) in enumerate(enc.offsets) if b > a]  # drop [CLS]/[SEP]
    if len(content) > budget:
        return text[: enc.offsets[content[budget - 1]][1]], budget
    return text, len(content)


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
    """One process, no de-duplication (the reference behaviour `build` is tested against)."""
    out: dict[str, list[Passage]] = {"train": [], "validation": [], "test": []}
    for doc in docs:
        out[split_of(doc.doc_id, seed, fractions)].extend(document_passages(doc, tokenizer, max_tokens))
    return out


# ----------------------------------------------------------------------------- building on every core

_WORKER: dict = {}


def _init_worker(tokenizer_json: str, max_tokens: int, seed: int, fractions: dict[str, float]) -> None:
    import tokenizers

    tok = tokenizers.Tokenizer.from_str(tokenizer_json)
    tok.no_padding()
    tok.no_truncation()
    _WORKER.update(tokenizer=tok, max_tokens=max_tokens, seed=seed, fractions=fractions)


def _unit_passages(job: tuple[str, Path, Any]) -> list[tuple[str, Passage]]:
    from v2t_jax.data import sources

    return _docs_passages(sources.read_unit(*job))


def _docs_passages(docs: list[Document]) -> list[tuple[str, Passage]]:
    out = batch_passages(docs, _WORKER["tokenizer"], _WORKER["max_tokens"])
    return [(split_of(p.doc_id, _WORKER["seed"], _WORKER["fractions"]), p) for p in out]


def dedup_key(text: str) -> bytes:
    """Passages equal up to case and whitespace are duplicates (the embedder is uncased)."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=12).digest()


@dataclasses.dataclass
class Built:
    """Passages by split (in a fixed order) and what was dropped as a duplicate, per source."""

    splits: dict[str, list[Passage]]
    duplicates: dict[str, int]


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 32))


def build(
    jobs: list,
    tokenizer,
    max_tokens: int,
    seed: int,
    fractions: dict[str, float],
    workers: int | None = None,
    progress: bool = True,
) -> Built:
    """Reads, splits and tokenises `jobs` on `workers` processes and returns the passages of each split,
    duplicates (`dedup_key`) dropped after their first occurrence. Jobs are `(source, root, unit)` work units
    (`sources.work_units`) or lists of `Document`s; results are taken in job order, so the output does not
    depend on the number of workers."""
    workers = max(1, min(workers or default_workers(), len(jobs)))  # (no process without a job to do)
    init = (tokenizer.to_str(), max_tokens, seed, fractions)
    seen: set[bytes] = set()
    out = Built({"train": [], "validation": [], "test": []}, {})
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), unit="unit", desc="passages", dynamic_ncols=True, file=sys.stderr)

    def take(results):
        for split, p in results:
            key = dedup_key(p.text)
            if key in seen:
                out.duplicates[p.source] = out.duplicates.get(p.source, 0) + 1
                continue
            seen.add(key)
            out.splits[split].append(p)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(passages=len(seen), refresh=False)

    fn = _docs_passages if jobs and isinstance(jobs[0], list) else _unit_passages
    if workers == 1:
        _init_worker(*init)
        for job in jobs:
            take(fn(job))
    else:
        import multiprocessing

        # spawn, not fork: the parent may hold JAX's and the tokenizer's threads
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=init) as pool:
            for results in pool.imap(fn, jobs, chunksize=1):
                take(results)
    if bar is not None:
        bar.close()
    return out
