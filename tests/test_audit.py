"""`v2t audit` on real vector stores built here with their own client libraries (Chroma, LanceDB, FAISS,
parquet), and its refusals: another embedder's store, an empty, locked or damaged store, an existing report."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from v2t_jax import cli

# the marked tier: real vector stores built with their own client libraries
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def texts(sentences):
    return sentences[:6]


@pytest.fixture(scope="module")
def vectors(minilm, texts):
    return minilm.embed_texts(texts, max_length=32)


@pytest.fixture(scope="module")
def shipped():
    from v2t_jax import api

    return api.load_model()


def _chroma(folder, name, vectors, texts=None, ef="default"):
    import chromadb
    from chromadb.utils import embedding_functions

    client = chromadb.PersistentClient(path=str(folder))
    function = embedding_functions.DefaultEmbeddingFunction() if ef == "default" else ef
    col = client.create_collection(name, embedding_function=function)
    if len(vectors):
        ids = [f"doc-{i}" for i in range(len(vectors))]
        col.add(ids=ids, embeddings=np.asarray(vectors).tolist(), documents=list(texts) if texts else None)
    return folder


def _audit(tmp_path, store, *extra):
    out = tmp_path / "report"
    return cli.main(["audit", str(store), "--output", str(out), "--steps", "1", "--sbeam", "1", "--quiet", *extra]), out


def test_audit_of_a_chroma_store(capsys, tmp_path, vectors, texts, shipped):
    """A Chroma collection made with Chroma's default embedding function (all-MiniLM-L6-v2, the shipped model's
    embedder) and its documents: every record inverted as the API inverts it, scored against its document, the
    most leaked first in the report, a PNG beside it."""
    store = _chroma(tmp_path / "chroma", "passages", vectors, texts)
    code, out = _audit(tmp_path, store)
    assert code == 0
    rows = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"doc-{i}" for i in range(len(texts))]
    assert [r["text"] for r in rows] == shipped.invert_embeddings(vectors, num_steps=1)
    assert [r["reference"] for r in rows] == shipped.readable(shipped.embedder_view(texts))
    assert all(0 <= r["token_recall"] <= 1 and "bleu" in r for r in rows)
    report = (out / "report.md").read_text()
    assert "records the embedder 'all-MiniLM-L6-v2'" in report and "≥ 50% of words recovered" in report
    listed = [line.split(" | ")[1] for line in report.splitlines() if line.startswith("| ") and "doc-" in line]
    by_id = {r["id"]: r for r in rows}
    recall = [by_id[i]["token_recall"] for i in listed]
    assert sorted(listed) == sorted(by_id) and recall == sorted(recall, reverse=True)
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == len(texts) and 0 <= summary["half_recovered"] <= 1
    assert "give back at least half of their words" in capsys.readouterr().out


def test_audit_of_a_faiss_index_with_documents_given(tmp_path, vectors, texts):
    import faiss

    index = faiss.IndexIDMap(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, np.arange(100, 100 + len(vectors)).astype(np.int64))
    faiss.write_index(index, str(tmp_path / "store.faiss"))
    (tmp_path / "docs.txt").write_text("\n".join(texts) + "\n")
    code, out = _audit(tmp_path, tmp_path / "store.faiss", "--documents", str(tmp_path / "docs.txt"), "--limit", "4")
    assert code == 0
    rows = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["100", "101", "102", "103"] and all("token_f1" in r for r in rows)


def _lancedb(folder, vectors, texts, functions=None):
    import lancedb
    import pyarrow as pa

    ids = [f"row-{i}" for i in range(len(vectors))]
    table = pa.table({"id": ids, "vector": pa.array(np.asarray(vectors).tolist(), pa.list_(pa.float32(), 384)),
                      "text": list(texts)})  # fmt: skip
    if functions is not None:  # what lancedb writes for a table made with an embedding function
        table = table.replace_schema_metadata({"embedding_functions": json.dumps(functions)})
    lancedb.connect(str(folder)).create_table("docs", data=table)
    return folder


def test_audit_of_a_lancedb_table(tmp_path, vectors, texts, shipped):
    store = _lancedb(tmp_path / "lance", vectors, texts)
    code, out = _audit(tmp_path, store / "docs.lance", "--limit", "3")  # the table's own folder works too
    assert code == 0
    rows = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["row-0", "row-1", "row-2"]
    assert [r["reference"] for r in rows] == shipped.readable(shipped.embedder_view(texts[:3]))


def test_audit_of_a_parquet_file_without_documents(tmp_path, vectors):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b", "c"], "vector": vectors[:3].tolist()}), tmp_path / "v.parquet")
    code, out = _audit(tmp_path, tmp_path / "v.parquet")
    assert code == 0
    assert "keeps no documents" in (out / "report.md").read_text()
    assert [json.loads(x)["id"] for x in (out / "records.jsonl").read_text().splitlines()] == ["a", "b", "c"]


def _other_embedder_store(folder, vectors):
    from chromadb.api.types import EmbeddingFunction
    from chromadb.utils.embedding_functions import register_embedding_function

    @register_embedding_function
    class RemoteModel(EmbeddingFunction):  # what an OpenAI-embedded collection records
        def __init__(self, model_name="text-embedding-3-small"):
            self.model_name = model_name

        def __call__(self, input):
            raise AssertionError("never called")

        @staticmethod
        def name():
            return "openai"

        def get_config(self):
            return {"model_name": self.model_name}

        @staticmethod
        def build_from_config(config):
            return RemoteModel(config["model_name"])

    return _chroma(folder, "other", vectors, ef=RemoteModel())


LOCK = textwrap.dedent(
    """
    import sqlite3, sys, time
    con = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize(
    "case, message",
    [
        ("another embedder", "was embedded with 'text-embedding-3-small'; this model inverts all-MiniLM-L6-v2"),
        ("another embedder (LanceDB)", "was embedded with 'text-embedding-3-small'; this model inverts"),
        ("another dimension", "holds 768-dimensional vectors; this model inverts all-MiniLM-L6-v2's 384"),
        ("empty collection", "holds no records: nothing to audit"),
        ("two collections", "has 2 collections (one, two): pick one with --collection"),
        ("no such collection", "has no collection 'nope'"),
        ("not a store", "is a folder but no store v2t reads (a chroma folder holds chroma.sqlite3; a lancedb folder"),
        ("damaged store", "the Chroma store"),
        ("locked store", "is locked by another process"),
        ("report exists", "holds an audit report already"),
        ("wrong document count", "--documents holds 2 texts for the 6 records"),
    ],
)
def test_audit_refusals_are_one_line_and_create_nothing(capsys, tmp_path, vectors, case, message):
    store = tmp_path / "chroma"
    extra = []
    locker = None
    if case == "another embedder":
        _other_embedder_store(store, vectors)
    elif case == "another embedder (LanceDB)":
        functions = [{"name": "openai", "model": {"name": "text-embedding-3-small"}, "source_column": "text",
                      "vector_column": "vector"}]  # fmt: skip
        store = _lancedb(tmp_path / "lance", vectors, ["t"] * len(vectors), functions)
    elif case == "another dimension":
        _chroma(store, "wide", np.ones((2, 768), np.float32), ef=None)
    elif case == "empty collection":
        _chroma(store, "empty", [])
    elif case in ("two collections", "no such collection"):
        _chroma(store, "one", vectors)
        _chroma(store, "two", vectors)
        extra = ["--collection", "nope"] if case == "no such collection" else []
    elif case == "not a store":
        store.mkdir()
        (store / "notes.txt").write_text("hello")
    elif case == "damaged store":
        store.mkdir()
        (store / "chroma.sqlite3").write_bytes(b"not a database" * 100)
    elif case == "locked store":
        _chroma(store, "passages", vectors)
        locker = subprocess.Popen([sys.executable, "-c", LOCK, str(store / "chroma.sqlite3")], stdout=subprocess.PIPE)
        assert locker.stdout.readline().strip() == b"locked"
    elif case == "report exists":
        _chroma(store, "passages", vectors)
        (tmp_path / "report").mkdir()
        (tmp_path / "report" / "report.md").write_text("an earlier audit")
    elif case == "wrong document count":
        np.save(tmp_path / "v.npy", vectors)
        (tmp_path / "docs.txt").write_text("one\ntwo\n")
        store, extra = tmp_path / "v.npy", ["--documents", str(tmp_path / "docs.txt")]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    try:
        code, out = _audit(tmp_path, store, *extra)
    finally:
        if locker is not None:
            locker.kill()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("v2t audit: error: ") and message in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_an_interrupted_audit_resumes_where_it_stopped(capsys, tmp_path, vectors, texts, ctrl_c_after_a_batch):
    """Ctrl-C after the first batch keeps its records (exit 130); the same command then inverts only the rest,
    and the records and report are those of an uninterrupted run."""
    store = _chroma(tmp_path / "chroma", "passages", vectors, texts)
    whole, out_whole = _audit(tmp_path / "whole", store, "--batch-size", "2")
    assert whole == 0
    ctrl_c_after_a_batch()
    code, out = _audit(tmp_path, store, "--batch-size", "2")
    assert code == 130 and len((out / "records.jsonl.partial").read_text().splitlines()) == 2
    assert not (out / "report.md").exists()
    ctrl_c_after_a_batch(False)
    capsys.readouterr()
    code, out = _audit(tmp_path, store, "--batch-size", "2")
    assert code == 0 and "v2t audit: resuming after the 2 rows" in capsys.readouterr().err  # (was "v2t invert:")
    assert (out / "records.jsonl").read_text() == (out_whole / "records.jsonl").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["records.jsonl", "report.md", "report.png", "summary.json"]


# ------------------------------------------------------------------------------- the evidence is untouched


def _fingerprint(folder):
    """Every file and folder under (or at) `folder`: its sha256, size and modification time."""
    import hashlib
    import os
    from pathlib import Path

    folder = Path(folder)
    paths = [folder] if folder.is_file() else sorted(folder.rglob("*"))
    out = {}
    for p in paths:
        st = os.lstat(p)
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(folder.parent))] = (digest, st.st_size, st.st_mtime_ns, st.st_mode)
    return out


CHROMA_IN_ANOTHER_PROCESS = textwrap.dedent(
    """
    import sys, numpy as np, chromadb
    from chromadb.utils import embedding_functions
    vectors = np.load(sys.argv[2])
    client = chromadb.PersistentClient(path=sys.argv[1])
    col = client.create_collection("passages", embedding_function=embedding_functions.ONNXMiniLM_L6_V2())
    col.add(ids=[f"doc-{i}" for i in range(len(vectors))], embeddings=vectors.tolist(),
            documents=[f"text {i}" for i in range(len(vectors))])
    """
)


def _store_of_kind(kind, tmp_path, vectors, texts):
    import faiss

    tmp_path.mkdir(parents=True, exist_ok=True)
    if kind == "chroma":  # made by another process, as a real store is: its client's writes are on disk
        np.save(tmp_path / "src.npy", vectors)
        store = tmp_path / "chroma"
        subprocess.run([sys.executable, "-c", CHROMA_IN_ANOTHER_PROCESS, str(store), str(tmp_path / "src.npy")],
                       check=True)  # fmt: skip
        (tmp_path / "src.npy").unlink()
        return store, []
    if kind == "lancedb":
        return _lancedb(tmp_path / "lance", vectors, texts), []
    if kind.startswith("faiss"):
        d = vectors.shape[1]
        index = {"faiss-flat": lambda: faiss.IndexFlatIP(d), "faiss-hnsw": lambda: faiss.IndexHNSWFlat(d, 8),
                 "faiss-lsh": lambda: faiss.IndexLSH(d, 64)}[kind]()  # fmt: skip
        index.add(vectors)
        faiss.write_index(index, str(tmp_path / "store.faiss"))
        return tmp_path / "store.faiss", []
    if kind == "npy":
        np.save(tmp_path / "v.npy", vectors)
        return tmp_path / "v.npy", []
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(vectors))], "vector": vectors.tolist(),
                             "text": list(texts)}), tmp_path / "v.parquet")  # fmt: skip
    return tmp_path / "v.parquet", []


@pytest.mark.parametrize("kind", ["chroma", "lancedb", "faiss-flat", "faiss-hnsw", "faiss-lsh", "npy", "parquet"])
def test_an_audit_leaves_every_kind_of_store_byte_for_byte_as_it_was(tmp_path, vectors, texts, kind):
    """A security tool must not alter the evidence: every Chroma audit rewrote chroma.sqlite3 (a lock row) and
    the first one its HNSW length.bin. Every file of every store kind keeps its bytes, size, mode and mtime, and
    no file appears or goes."""
    store, extra = _store_of_kind(kind, tmp_path / "stores", vectors, texts)
    before = _fingerprint(store)
    code, out = _audit(tmp_path, store, "--steps", "0", "--limit", "2", *extra)
    assert code == 0 and (out / "report.md").exists()
    assert _fingerprint(store) == before


def test_chromas_onnx_minilm_function_is_all_minilm(tmp_path, vectors, texts):
    """Chroma's `ONNXMiniLM_L6_V2` embedding function is all-MiniLM-L6-v2 (it was refused as another embedder)."""
    store, _ = _store_of_kind("chroma", tmp_path, vectors, texts)
    code, out = _audit(tmp_path, store, "--steps", "0", "--limit", "1")
    assert code == 0 and "records the embedder 'all-MiniLM-L6-v2'" in (out / "report.md").read_text()


def test_a_lossy_faiss_index_is_named_as_such_in_the_report(tmp_path, vectors, texts):
    store, _ = _store_of_kind("faiss-lsh", tmp_path, vectors, texts)
    code, out = _audit(tmp_path, store, "--steps", "0", "--limit", "2")
    report = (out / "report.md").read_text()
    assert code == 0 and "This IndexLSH index keeps 8 bytes per vector where the float32 embedding takes 1536" in report
    flat, _ = _store_of_kind("faiss-flat", tmp_path / "flat", vectors, texts)
    code, out = _audit(tmp_path / "flat", flat, "--steps", "0", "--limit", "2")
    assert code == 0 and "**Note.**" not in (out / "report.md").read_text()


# ------------------------------------------------------------------------------- one writer, whole reports


def test_a_second_audit_into_the_same_folder_stops_at_once(capsys, tmp_path, vectors):
    """Two audits into one folder both exited 0 and lost records; the second now stops with the holder's pid,
    and the first's lock goes with it."""
    from v2t_jax import outputs

    np.save(tmp_path / "v.npy", vectors)
    out = tmp_path / "report"
    out.mkdir()
    with outputs.lock(out / "records.jsonl", "audit"):  # another run holds the folder
        code, _ = _audit(tmp_path, tmp_path / "v.npy", "--steps", "0")
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and f"is being written by another v2t audit (pid {os.getpid()})" in err[0]
    assert sorted(p.name for p in out.iterdir()) == []
    code, _ = _audit(tmp_path, tmp_path / "v.npy", "--steps", "0")
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["records.jsonl", "report.md", "report.png",
                                                                   "summary.json"]  # fmt: skip


def test_an_audit_stopped_after_its_records_finishes_its_report(capsys, tmp_path, vectors, texts, monkeypatch):
    """kill -9 after records.jsonl and before the report left a folder no command could finish ("holds an audit
    report already"); the same command now writes the report from the records, without inverting again."""
    from v2t_jax import api
    from v2t_jax.audit import report

    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "docs.txt").write_text("\n".join(texts) + "\n")
    args = ("--steps", "1", "--documents", str(tmp_path / "docs.txt"))
    whole, out_whole = _audit(tmp_path / "whole", tmp_path / "v.npy", *args)
    real = report.write_report

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", killed)
    code, out = _audit(tmp_path, tmp_path / "v.npy", *args)
    assert code == 130 and (out / "records.jsonl").exists() and not (out / "report.md").exists()
    monkeypatch.setattr(report, "write_report", real)
    monkeypatch.setattr(api.Vec2Text, "iter_batches", lambda *a, **k: iter(()))  # nothing is inverted again
    capsys.readouterr()
    code, out = _audit(tmp_path, tmp_path / "v.npy", *args)
    assert code == 0 and "v2t audit: finishing the report of the 6 records" in capsys.readouterr().err
    assert (out / "records.jsonl").read_text() == (out_whole / "records.jsonl").read_text()
    assert (
        json.loads((out / "summary.json").read_text())["bleu"]
        == json.loads((out_whole / "summary.json").read_text())["bleu"]
    )
    assert sorted(p.name for p in out.iterdir()) == ["records.jsonl", "report.md", "report.png", "summary.json"]


def test_audit_at_zero_steps_reports_real_cosines(capsys, tmp_path, vectors, shipped):
    """--steps 0 reported "mean cosine nan" (the inverter's text was never embedded); every number is now
    measured and every JSON file is strict."""
    np.save(tmp_path / "v.npy", vectors)
    code, out = _audit(tmp_path, tmp_path / "v.npy", "--steps", "0")
    assert code == 0 and "mean cosine nan" not in capsys.readouterr().out

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))

    rows = [strict(x) for x in (out / "records.jsonl").read_text().splitlines()]
    texts, trace = shipped.invert_embeddings(vectors, num_steps=0, return_trace=True)
    assert [r["text"] for r in rows] == texts
    np.testing.assert_allclose([r["cosine"] for r in rows], trace["cosine"], atol=1e-5)
    # the cosine of the inverter's ids in the program; re-tokenising the decoded text comes close
    again = shipped.embed_texts(texts)
    cos = np.sum(again * vectors, axis=1) / np.linalg.norm(again, axis=1) / np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose([r["cosine"] for r in rows], cos, atol=0.05)
    assert 0 < strict((out / "summary.json").read_text())["mean_cosine"] < 1


@pytest.mark.parametrize("kind", ["parquet", "lancedb"])
@pytest.mark.parametrize("column", ["ints", "lists", "structs"])
def test_a_text_column_that_holds_no_text_is_one_line(capsys, tmp_path, vectors, kind, column):
    import lancedb
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 3
    text = {"ints": pa.array(range(n)), "lists": pa.array([[1, 2]] * n),
            "structs": pa.array([{"a": 1}] * n)}[column]  # fmt: skip
    table = pa.table({"vector": pa.array(vectors[:n].tolist(), pa.list_(pa.float32(), 384)), "text": text})
    if kind == "parquet":
        pq.write_table(table, tmp_path / "v.parquet")
        store = tmp_path / "v.parquet"
    else:
        lancedb.connect(str(tmp_path / "lance")).create_table("docs", data=table)
        store = tmp_path / "lance"
    code, out = _audit(tmp_path, store, "--steps", "0")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "text column 'text' is" in err[0] and "not text" in err[0], err
    assert not out.exists()


def test_audit_run_is_the_library_call_the_command_makes(capsys, tmp_path, vectors, texts, shipped):
    """`audit.run(records, model, out, search)` without the CLI: the same records and report as `v2t audit`,
    the store unread-for-writing, a second run into the finished folder refused, a resume of the same call
    after its records, and a search the model cannot run refused before anything is written."""
    from v2t_jax import audit
    from v2t_jax.search import strategies
    from v2t_jax.audit import stores

    np.save(tmp_path / "v.npy", vectors)
    before = (tmp_path / "v.npy").read_bytes()
    code, by_cli = _audit(tmp_path / "cli", tmp_path / "v.npy", "--documents", str(_lines(tmp_path, texts)))
    assert code == 0
    records = stores.read(tmp_path / "v.npy", documents=list(texts))
    said = []
    summary = audit.run(records, shipped, tmp_path / "lib", strategies.greedy(1), say=lambda m, r: said.append(m))
    assert (tmp_path / "lib" / "records.jsonl").read_text() == (by_cli / "records.jsonl").read_text()
    written = json.loads((by_cli / "summary.json").read_text())
    assert summary == {k: written[k] for k in summary} and summary["records"] == len(texts)
    assert (tmp_path / "v.npy").read_bytes() == before and said == [f"{len(texts)} records of {records.source}"]
    report = (tmp_path / "lib" / "report.md").read_text()
    assert "1 correction steps, sequence beam 1" in report
    with pytest.raises(audit.AuditError, match="holds an audit report already"):
        audit.run(records, shipped, tmp_path / "lib", strategies.greedy(1))
    inverter_only = dataclasses.replace(shipped, program=dataclasses.replace(shipped.program, corrector=None))
    with pytest.raises(strategies.StrategyError, match="inverter only"):
        audit.run(records, inverter_only, tmp_path / "none", strategies.greedy(1))
    assert not (tmp_path / "none").exists()


def _lines(tmp_path, texts):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(texts) + "\n")
    return path


# ------------------------------------------------------------------------------- nothing written outside the output


def _segment(store):
    return next(p for p in store.iterdir() if p.is_dir())


def _hostile_chroma(kind, store, outside):
    """A Chroma store changed as a hostile one could be: a file or folder of it made a link to the auditor's
    files, or a FIFO among its files. Returns what must be left as it is."""
    segment = _segment(store)
    outside.mkdir()
    notes = outside / "notes.txt"
    notes.write_text("the auditor's own notes, 430 bytes of them " * 10)
    if kind == "length.bin links out":  # Chroma rewrites length.bin when it opens the segment
        (segment / "length.bin").unlink()
        (segment / "length.bin").symlink_to(notes)
    elif kind == "segment folder links out":
        moved = outside / "segment"
        segment.rename(moved)
        segment.symlink_to(moved)
    elif kind == "sqlite -shm links out":
        (store / "chroma.sqlite3-shm").symlink_to(notes)
    elif kind == "chroma.sqlite3 links out":
        (store / "chroma.sqlite3").rename(outside / "db")
        (store / "chroma.sqlite3").symlink_to(outside / "db")
    elif kind == "a FIFO among its files":
        os.mkfifo(segment / "extra.bin")
    elif kind == "a link loop":
        (segment / "loop").symlink_to(segment)
    elif kind == "one folder through two links":  # (folders linked to each other could multiply the copy)
        (store / "shared").mkdir()
        (store / "shared" / "data.bin").write_bytes(b"x" * 100)
        (store / "alias").symlink_to(store / "shared")
    return outside


@pytest.mark.parametrize(
    "kind, message",
    [
        ("length.bin links out", "length.bin is a link out of the store"),
        ("segment folder links out", "is a link out of the store"),
        ("sqlite -shm links out", "holds chroma.sqlite3-shm as a link or special file"),
        ("chroma.sqlite3 links out", "chroma.sqlite3 is a link out of the store"),
        ("a FIFO among its files", "extra.bin is a FIFO, not a store file"),
        ("a link loop", "loop links back to a folder above it"),
        ("one folder through two links", "shared is reached through more than one link"),
    ],
)
def test_a_store_that_links_out_of_itself_is_refused_and_nothing_outside_changes(capsys, tmp_path, vectors, texts,
                                                                                 kind, message):  # fmt: skip
    """Chroma rewrites the HNSW files it opens, and the snapshot copied links as links: a store whose length.bin
    was a link to a file of the auditor's overwrote that file (430 bytes of notes became 400 bytes of HNSW data).
    Now a link out of the store (or a FIFO, or a loop) is one line before Chroma opens anything, and every file
    outside the store, and the store itself, keeps its bytes."""
    store, _ = _store_of_kind("chroma", tmp_path / "stores", vectors, texts)
    outside = _hostile_chroma(kind, store, tmp_path / "auditor")
    before = {**_fingerprint(outside), **_fingerprint(store)}
    code, out = _audit(tmp_path, store, "--steps", "0")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert {**_fingerprint(outside), **_fingerprint(store)} == before
    assert not out.exists()


def test_links_inside_a_store_are_read_as_the_files_they_point_to(tmp_path, vectors, texts):
    """A store may link to its own files: the snapshot copies what they point to, the audit reads the same
    records as from the store without links, and the store (links and targets) keeps its bytes."""
    store, _ = _store_of_kind("chroma", tmp_path / "stores", vectors, texts)
    plain, out_plain = _audit(tmp_path / "plain", store, "--steps", "0")
    segment = _segment(store)
    (segment / "length.bin").rename(store / "kept-length.bin")
    (segment / "length.bin").symlink_to(Path("..") / "kept-length.bin")
    before = _fingerprint(store)
    code, out = _audit(tmp_path, store, "--steps", "0")
    assert plain == code == 0 and _fingerprint(store) == before
    assert (out / "records.jsonl").read_text() == (out_plain / "records.jsonl").read_text()


AUDIT_IN_A_SANDBOX = textwrap.dedent(
    """
    import sys
    from v2t_jax import cli
    sys.exit(cli.main(["audit", sys.argv[1], "--output", sys.argv[2], "--steps", "1", "--sbeam", "1", "--quiet"]))
    """
)


@pytest.mark.parametrize("kind", ["chroma", "lancedb", "faiss-hnsw", "parquet"])
def test_an_audit_writes_nothing_outside_its_output_folder(tmp_path, vectors, texts, kind):
    """The guarantee whole: an audit run in a world of its own (its HOME, its temporary folder, the store, the
    auditor's files around it) leaves every file of that world as it was, and adds nothing outside its output
    folder but matplotlib's own folders under HOME (its font cache, for the report's figure): no snapshot left in
    the temporary folder, no client library's telemetry id under HOME. (v2t's own cache, V2T_CACHE_DIR, is outside
    the world.)"""
    from conftest import cache_env

    world = tmp_path / "world"
    store, _ = _store_of_kind(kind, world / "stores", vectors, texts)
    for name in ("home", "tmp"):
        (world / name).mkdir()
    (world / "home" / "notes.txt").write_text("the auditor's notes")
    before = _fingerprint(world)
    out = world / "report"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "TMP"))}, **cache_env(),
           "HOME": str(world / "home"), "TMPDIR": str(world / "tmp"),
           "V2T_CACHE_DIR": os.environ.get("V2T_CACHE_DIR") or str(Path.home() / ".cache" / "v2t_jax")}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", AUDIT_IN_A_SANDBOX, str(store), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    caches = ("world/report", "world/home/.cache/matplotlib", "world/home/.config/matplotlib")
    after = {k: v for k, v in _fingerprint(world).items() if not k.startswith(caches)}
    # (the times of the folders that hold the new ones change: the temporary folder held the snapshot)
    for folder in ("world/tmp", "world/home", "world/home/.cache", "world/home/.config"):
        assert after.pop(folder, ("dir",))[0] == before.pop(folder, ("dir",))[0] == "dir"
    assert after == before
    assert (out / "report.md").exists()
