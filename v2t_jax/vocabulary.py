"""The decoder's vocabulary: one owner for its special tokens, how labels are made and ids decoded, and whether
hypotheses can be re-embedded inside a compiled program.

Two kinds:
- the embedder's own vocabulary (`Vocabulary.of_embedder`; WordPiece for MiniLM and MPNet): the decoder emits
  embedder ids, ends with [SEP] (</s>) and starts from the pad token; a hypothesis is re-embedded in-graph as
  [CLS] (<s>) + ids (`in_graph`);
- an external tokenizer (`Vocabulary.from_folder`, e.g. T5's SentencePiece as vec2text's GTR models use):
  hypotheses go back through text to be re-embedded.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np

from v2t_jax.errors import V2TError


class VocabularyError(V2TError, ValueError):
    """A tokenizer that cannot serve as the decoder's vocabulary; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    tokenizer: Any  # tokenizers.Tokenizer
    size: int
    pad_id: int  # also the decoder start token
    eos_id: int
    cls_id: int | None  # embedder [CLS], for in-graph re-embedding
    in_graph: bool
    length: int  # decoder positions

    @classmethod
    def of_embedder(cls, embedder, max_length: int) -> Vocabulary:
        """The embedder's WordPiece vocabulary, decoding `max_length - 1` positions (the embedder's budget
        less [CLS])."""
        tok = embedder.tokenizer
        # BERT's [CLS] .. [SEP], or MPNet's / RoBERTa's <s> .. </s>
        cls_id, sep_id = next(
            ((tok.token_to_id(c), tok.token_to_id(s)) for c, s in (("[CLS]", "[SEP]"), ("<s>", "</s>"))
             if tok.token_to_id(c) is not None and tok.token_to_id(s) is not None),
            (None, None),
        )  # fmt: skip
        if cls_id is None or sep_id is None:
            raise VocabularyError(
                "the embedder's tokenizer has no [CLS]/[SEP] (or <s>/</s>): in-graph inversion needs the embedder's "
                "own vocabulary; train with an external vocabulary folder instead (--config.vocab=DIR)"
            )
        return cls(tok, tok.get_vocab_size(), embedder.pad_token_id, sep_id, cls_id, True, max_length - 1)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, max_length: int) -> Vocabulary:
        """An external tokenizer folder (`tokenizer.json`); SentencePiece splits text finer than WordPiece, so
        it gets 16 positions beyond the embedder's token budget."""
        from v2t_jax.models.embedders import load_tokenizer

        if not os.path.isdir(folder):
            raise VocabularyError(f"vocab {folder!r} is neither 'embedder' nor a tokenizer folder")
        tok = load_tokenizer(os.fspath(folder))
        pad = next((tok.token_to_id(t) for t in ("<pad>", "[PAD]") if tok.token_to_id(t) is not None), 0)
        eos = next((tok.token_to_id(t) for t in ("</s>", "[SEP]", "<eos>") if tok.token_to_id(t) is not None), None)
        if eos is None:
            raise VocabularyError(f"the tokenizer in {folder} has no end-of-sequence token (</s>)")
        return cls(tok, tok.get_vocab_size(), pad, eos, None, False, max_length + 16)

    def labels(self, split) -> np.ndarray:
        """[n, length] int32 targets ending in EOS, padded with pad_id, for a split's embedder ids / texts."""
        if self.in_graph:  # embedder ids `[CLS] t1 .. tn [SEP] 0 ..` -> `t1 .. tn [SEP] 0 ..`
            return np.asarray(split.ids[:, 1:], np.int32)
        return self.encode(split.texts)

    def encode(self, texts) -> np.ndarray:
        """[n, length] int32 decoder ids of texts: the tokenizer's ids (no special tokens) then EOS, cut to
        `length`, padded with pad_id."""
        self.tokenizer.no_truncation()
        out = np.full((len(texts), self.length), self.pad_id, np.int32)
        for i, enc in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            row = (enc.ids + [self.eos_id])[: self.length]
            out[i, : len(row)] = row
        return out

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(t) for t in ids], skip_special_tokens=True)

    def readable(self, texts: list[str]) -> list[str]:
        """Decoded texts as people write them (`readable`) for the embedder's WordPiece, whose decoding spaces
        out punctuation ("elton ' s"); an external tokenizer's decoding is already so."""
        return [readable(t) for t in texts] if self.in_graph else list(texts)


# The embedder's WordPiece decoding keeps a space on each side of most punctuation ("elton ' s ( cns ) said :
# i ' ve co - operated"). These rules take the spaces out where written text has none. They only remove spaces
# next to punctuation, which the embedder's tokenizer splits off anyway, so the embedder reads the readable text
# as the same tokens (tests/test_vocabulary.py checks the round trip on real passages), and scores, computed on
# the decoding itself, do not change.
_READABLE = [
    (re.compile(r"(\w) ' (?=(?:s|t|ve|re|ll|d|m)\b)"), r"\1'"),  # elton ' s, i ' ve, don ' t
    (re.compile(r"\b([od]) ' (?=\w)"), r"\1'"),  # o ' neil, d ' arcy
    (re.compile(r"- -"), "--"),
    (re.compile(r"(\w) - (?=\w)"), r"\1-"),  # co - operate, well - known
    (re.compile(r"(\w) / (?=\w)"), r"\1/"),  # and / or
    (re.compile(r"\. \. \."), "..."),
    (re.compile(r"\b([^\W\d_])\. (?=[^\W\d_]\.)"), r"\1."),  # e. g., u. s., a. m. (single letters)
    (re.compile(r"(\d)\. (?=\d)"), r"\1."),  # 3. 5
    (re.compile(r"(\d) : (?=\d\d\b)"), r"\1:"),  # 10 : 30
    (re.compile(r"(\d), (?=\d{3}\b)"), r"\1,"),  # 1, 000
    (re.compile(r"([(\[{]) "), r"\1"),  # ( cns )
    (re.compile(r" ([)\]}])"), r"\1"),
    (re.compile(r"(\S) ([.,;:!?%])(?=\s|$)"), r"\1\2"),  # said : -> said:, 5 % -> 5%
    (re.compile(r"([$£€#@]) (?=\w)"), r"\1"),  # $ 5, # tag
]


def readable(text: str) -> str:
    """`text` as the embedder's WordPiece decoding writes it, with the spaces around punctuation taken out where
    written text has none; quotation marks (double, and single ones left after contractions) are paired: an
    opening one joins the next word, a closing one the word before."""
    for pattern, repl in _READABLE:
        text = pattern.sub(repl, text)
    for mark in ('"', "'"):
        if f" {mark} " in f" {text} ":
            text = _pair_quotes(text, mark)
    return text


def _pair_quotes(text: str, mark: str) -> str:
    out: list[str] = []
    opening, glue = True, False
    for part in text.split(" "):
        if part == mark:
            if opening or not out:
                out.append(mark)
                glue = True
            else:
                out[-1] += mark
            opening = not opening
        elif glue:
            out[-1] += part
            glue = False
        else:
            out.append(part)
    return " ".join(out)
