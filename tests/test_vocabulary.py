"""The decoder's vocabulary: one owner of the special tokens, labels and decoding (v2t_jax/vocabulary.py)."""

import types

import numpy as np
import pytest

from v2t_jax import api
from v2t_jax.vocabulary import Vocabulary, VocabularyError


def test_the_embedders_wordpiece_vocabulary(minilm):
    v = Vocabulary.of_embedder(minilm, 32)
    assert (v.cls_id, v.eos_id, v.pad_id, v.in_graph, v.length, v.size) == (101, 102, 0, True, 31, 30522)
    row = minilm.tokenize(["a short passage"], 32)[0]
    ids = np.zeros((1, 32), np.int32)
    ids[0, : len(row)] = row  # [CLS] ... [SEP] 0 .., as the targets store them
    labels = v.labels(types.SimpleNamespace(ids=ids))
    assert labels.shape == (1, 31) and labels[0, 0] != 101 and 102 in labels[0]
    assert v.decode(labels[0]) == "a short passage"


def test_a_tokenizer_without_cls_and_sep_is_refused_in_graph(tmp_path, minilm, small_bundle):
    from tokenizers import Tokenizer, models

    bare = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    embedder = types.SimpleNamespace(tokenizer=bare, pad_token_id=0)
    with pytest.raises(VocabularyError, match=r"no \[CLS\]/\[SEP\]"):
        Vocabulary.of_embedder(embedder, 32)
    _, model = small_bundle  # the inference API says it as a ModelError
    fake = types.SimpleNamespace(tokenizer=bare, pad_token_id=0, config=minilm.config, params=minilm.params)
    with pytest.raises(api.ModelError, match=r"no \[CLS\]/\[SEP\]"):
        api.build(model.program.inverter, model.params["inverter"], None, None, fake, 12)
    with pytest.raises(VocabularyError, match="neither 'embedder' nor a tokenizer folder"):
        Vocabulary.from_folder(tmp_path / "missing", 32)
    bare.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(VocabularyError, match="no end-of-sequence token"):
        Vocabulary.from_folder(tmp_path, 32)


# ------------------------------------------------------------------------------- text that reads as written

READABLE = [
    # (the embedder's decoding, as people write it)
    ("elton ' s band ( cns ) said : i ' ve co - operated", "elton's band (cns) said: i've co-operated"),
    ("it ' s 10 : 30 a. m. ; don ' t re - enter!", "it's 10:30 a.m.; don't re-enter!"),
    ("e. g. 3. 5 % of u. s. exports", "e.g. 3.5% of u.s. exports"),
    ('he said " hello there " and left.', 'he said "hello there" and left.'),
    ("he said ' yes ' and o ' neil ' s ' no '", "he said 'yes' and o'neil's 'no'"),
    ("$ 5 and / or 1, 000 people. . . well - - later", "$5 and/or 1,000 people... well -- later"),
    ("in 2003, 5 people [ see notes ] left", "in 2003, 5 people [see notes] left"),
]


@pytest.mark.parametrize("decoded, written", READABLE)
def test_decoded_text_reads_as_written(decoded, written):
    from v2t_jax.vocabulary import readable

    assert readable(decoded) == written


def test_the_embedder_reads_readable_text_as_the_same_tokens(minilm, sentences):
    """What makes `readable` safe for scores: only spaces next to punctuation go, which the embedder's
    tokenizer splits off anyway, so each readable text tokenizes to the very tokens it was decoded from (on
    every test sentence, the demo's passages and the known cases above)."""
    from v2t_jax.vocabulary import readable

    samples = (api.SHIPPED_BUNDLE.parent / "sample_passages.txt").read_text(encoding="utf-8").splitlines()
    texts = [t for t in sentences + samples if t.strip()] + [d for d, _ in READABLE]
    v = Vocabulary.of_embedder(minilm, 512)
    views = [v.decode(ids) for ids in minilm.tokenize(texts, 512)]
    again = [v.decode(ids) for ids in minilm.tokenize([readable(x) for x in views], 512)]
    assert again == views
    assert sum(readable(x) != x for x in views) > len(views) // 4  # and it changes many of them
    assert v.readable(["a ' s"]) == ["a's"]
