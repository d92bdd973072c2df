"""`v2t audit` of stores in database servers, each started here for real: PostgreSQL with pgvector (pgserver:
PostgreSQL 16 and the extension from PyPI), Qdrant (its client's local folder) and Milvus Lite. Each is filled,
audited through the CLI and found as it was; resumes, credentials and bad input."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from v2t_jax import cli
from v2t_jax.audit import stores

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "pw-of-the-auditor-7Qx"
KEY0 = 95  # keys 95, 102, ...: their text sorts apart from their numbers (a reader must page by the number)
N = 24


@pytest.fixture(scope="module", autouse=True)
def _pymilvus_logs_outside_a_test():
    """pymilvus gives its loggers a handler on the sys.stderr of its first import: imported inside a test, that is
    the test's capture, closed when the test ends. (gRPC's core logging off, as `v2t audit` has it.)"""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import pymilvus  # noqa: F401


@pytest.fixture(scope="module")
def texts(sentences):
    return sentences[:N]


@pytest.fixture(scope="module")
def vectors(minilm, texts):
    return np.asarray(minilm.embed_texts(texts, max_length=32), np.float32)


def _literal(v) -> str:
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


@pytest.fixture(scope="module")
def pg(tmp_path_factory, vectors, texts):
    """A PostgreSQL server with pgvector: the superuser over the socket without a password, every other role
    with one (scram); the role `auditor` may only SELECT from `chunks` (24 MiniLM vectors and their texts, keys
    95, 102, ...)."""
    import pgserver
    import psycopg

    data = tmp_path_factory.mktemp("pg") / "data"
    server = pgserver.get_server(data, cleanup_mode="stop")
    admin = psycopg.connect(server.get_uri(), autocommit=True)
    (data / "pg_hba.conf").write_text("local all postgres trust\nlocal all all scram-sha-256\n")
    admin.execute("SELECT pg_reload_conf()")
    admin.execute("CREATE EXTENSION IF NOT EXISTS vector")
    admin.execute(f"CREATE ROLE auditor LOGIN PASSWORD '{PASSWORD}'")
    admin.execute("CREATE TABLE chunks (id bigint PRIMARY KEY, embedding vector(384), document text, meta jsonb)")
    with admin.cursor().copy("COPY chunks (id, embedding, document) FROM STDIN") as copy:
        for i, (t, v) in enumerate(zip(texts, vectors)):
            copy.write_row((KEY0 + 7 * i, _literal(v), t))
    admin.execute("GRANT SELECT ON chunks TO auditor")
    yield {"admin": admin, "socket": str(data), "server": server}
    admin.close()
    server.cleanup()


def _url(pg, user="auditor", **query) -> str:
    q = "&".join(f"{k}={v}" for k, v in {"host": pg["socket"], **query}.items())
    return f"postgresql://{user}@/postgres?{q}"


def _audit(out, store, *extra):
    return cli.main(["audit", store, "--output", str(out), "--steps", "0", "--batch-size", "4", "--quiet", *extra])


def _rows(out):
    return [json.loads(line) for line in (Path(out) / "records.jsonl").read_text().splitlines()]


def _same_rows(rows, expected):
    """The rows (ids aside) as the .npy audit wrote them; the cosines within float32 rounding (a page of the
    store is a call of its own, whose re-embedding may round apart in the last bit)."""
    assert len(rows) == len(expected)
    for r, e in zip(rows, expected):
        assert {k: v for k, v in r.items() if k not in ("id", "cosine")} == {
            k: v for k, v in e.items() if k != "cosine"
        }
        assert r["cosine"] == pytest.approx(e["cosine"], abs=1e-6)


@pytest.fixture(scope="module")
def npy_audit(tmp_path_factory, vectors, texts):
    """The same vectors and texts audited as a .npy with --documents: what every database store must give."""
    root = tmp_path_factory.mktemp("npy")
    np.save(root / "v.npy", vectors)
    (root / "texts.txt").write_text("\n".join(texts) + "\n")
    assert _audit(root / "out", str(root / "v.npy"), "--documents", str(root / "texts.txt")) == 0
    return [{k: v for k, v in r.items() if k != "id"} for r in _rows(root / "out")]


def _pg_state(pg, table="chunks"):
    """What a change to the table would show: each row's key, vector and text hashed in key order, and the
    statistics collector's counters of rows inserted, updated, deleted, live and dead."""
    admin = pg["admin"]
    digest = admin.execute(
        f"SELECT md5(string_agg(id::text || ':' || embedding::text || ':' || coalesce(document, ''), '|' ORDER BY id)) "
        f"FROM {table}"
    ).fetchone()[0]
    admin.execute("SELECT pg_stat_clear_snapshot()")
    counters = admin.execute(
        "SELECT n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd, n_live_tup, n_dead_tup, "
        "seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = %s",
        (table,),
    ).fetchone()
    return digest, counters


@pytest.mark.slow
def test_a_postgres_table_is_audited_page_by_page_read_only_as_its_npy_would_be(
    tmp_path, pg, npy_audit, monkeypatch, capsys
):
    """The role that may only SELECT, its password from PGPASSWORD, pages of 8 records (three pages): every row
    in key order, the same texts, cosines and scores as the .npy audit of the same vectors, and the table as it
    was: same rows (hashed) and the same insert/update/delete counters, which did see the audit's reads."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    digest, before = _pg_state(pg)
    out = tmp_path / "report"
    assert _audit(out, _url(pg, table="chunks"), "--page-rows", "8") == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == [str(KEY0 + 7 * i) for i in range(N)]
    _same_rows(rows, npy_audit)
    report = (out / "report.md").read_text()
    assert "postgresql://auditor@/postgres (socket" in report and "table public.chunks" in report
    for _ in range(50):  # the audit's backend reports its reads when it ends
        after_digest, after = _pg_state(pg)
        if after[-1] > before[-1]:
            break
        time.sleep(0.1)
    assert after[-1] > before[-1], "the statistics never showed the audit's reads"
    assert after_digest == digest and after[:-1] == before[:-1]
    assert PASSWORD not in capsys.readouterr().err


@pytest.mark.slow
def test_postgres_passwords_come_from_the_environment_or_a_pass_file_and_are_never_shown(
    tmp_path, pg, monkeypatch, capsys, ctrl_c_after_a_batch
):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    url = _url(pg, table="chunks")
    assert _audit(tmp_path / "a", url, "--limit", "4") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect to postgresql://auditor@/postgres" in err and "password" in err
    assert not (tmp_path / "a").exists()

    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:auditor:{PASSWORD}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    assert _audit(tmp_path / "b", url, "--limit", "4") == 0
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))

    # in the URL it works too, with a warning, and is shown nowhere: messages, report, records, the run's state
    in_url = f"postgresql://auditor:{PASSWORD}@/postgres?host={pg['socket']}&table=chunks"
    capsys.readouterr()
    ctrl_c_after_a_batch()
    assert _audit(tmp_path / "c", in_url, "--limit", "8") == 130
    state = (tmp_path / "c" / "records.jsonl.partial.json").read_text()
    ctrl_c_after_a_batch(False)
    assert _audit(tmp_path / "c", in_url, "--limit", "8") == 0
    captured = capsys.readouterr()
    assert "the password in the store URL can be read by other users" in captured.err
    assert "resuming after the 4 rows" in captured.err
    files = b"".join(p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()) + state.encode()
    assert PASSWORD.encode() not in files and PASSWORD not in captured.err + captured.out
    assert "postgresql://***@/postgres" in (tmp_path / "c" / "report.md").read_text()  # (the command, as typed)


def _postgres_pids(pg) -> list[int]:
    """The server's processes: the postmaster (postmaster.pid) and its children."""
    main = int((Path(pg["socket"]) / "postmaster.pid").read_text().split()[0])
    pids = [main]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == main:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
def test_a_server_that_stops_answering_is_one_line_and_the_rerun_resumes_after_the_last_key(tmp_path, pg, capsys):
    """The server stopped (SIGSTOP) while the audit runs: within --store-timeout it exits 2 in one line, its rows
    kept; with the server back, the same command continues after the last key done and ends with every record
    once, as an uninterrupted run wrote them."""
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    url = _url(pg, table="chunks")
    cmd = [sys.executable, "-m", "v2t_jax.cli", "audit", url, "--steps", "1", "--sbeam", "1", "--batch-size", "4",
           "--page-rows", "4", "--store-timeout", "3", "--quiet"]  # fmt: skip
    whole = tmp_path / "whole"
    subprocess.run(cmd + ["--output", str(whole)], env=env, check=True, capture_output=True)
    out = tmp_path / "stopped"
    proc = subprocess.Popen(cmd + ["--output", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    partial = out / "records.jsonl.partial"
    pids = []
    try:
        deadline = time.monotonic() + 300
        while not (partial.exists() and len(partial.read_text().splitlines()) >= 4):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        pids = _postgres_pids(pg)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        _, err = proc.communicate(timeout=120)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    line = err.strip().splitlines()[-1]
    assert "did not answer within 3 s (--store-timeout)" in line and "records done are kept" in line
    done = len(partial.read_text().splitlines())
    assert 4 <= done < N
    rerun = subprocess.run(cmd + ["--output", str(out)], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming after the {done} rows" in rerun.stderr
    assert (out / "records.jsonl").read_text() == (whole / "records.jsonl").read_text()


def _bad_tables(pg):
    admin = pg["admin"]
    v = _literal(np.ones(384, np.float32) / np.sqrt(384))
    admin.execute(
        "DROP TABLE IF EXISTS small, holes, mute, nokey, secret; "
        "CREATE TABLE small (id int PRIMARY KEY, embedding vector(8), document text); "
        f"INSERT INTO small VALUES (1, '{_literal(np.ones(8))}', 'a'); "
        "CREATE TABLE holes (id int PRIMARY KEY, embedding vector(384), document text); "
        f"INSERT INTO holes VALUES (1, '{v}', 'a'), (2, NULL, 'b'); "
        "CREATE TABLE mute (id int PRIMARY KEY, embedding vector(384), document text); "
        f"INSERT INTO mute VALUES (1, '{v}', 'a'), (2, '{v}', NULL); "
        "CREATE TABLE nokey (n int, embedding vector(384), document text); "
        f"INSERT INTO nokey VALUES (1, '{v}', 'a'), (1, '{v}', 'b'); "
        "CREATE TABLE secret (id int PRIMARY KEY, embedding vector(384), document text); "
        "GRANT SELECT ON small, holes, mute, nokey TO auditor"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "query, message",
    [
        ({"table": "nope"}, "has no table 'nope' (tables with a vector column: public.chunks, public.holes"),
        ({}, "holds 6 tables with a vector column"),
        ({"table": "chunks", "vector": "nope"}, "has no column 'nope' (its columns: id bigint, embedding vector(384)"),
        ({"table": "chunks", "vector": "document"}, "column document is text, not a vector"),
        ({"table": "chunks", "text": "meta"}, "column meta is jsonb, not text"),
        ({"table": "small"}, "holds 8-dimensional vectors; this model inverts"),
        ({"table": "holes"}, "1 of its 2 rows have no vector (NULL in embedding)"),
        ({"table": "mute"}, "1 of its 2 rows have no text (NULL in document)"),
        ({"table": "nokey"}, "has no one-column primary key"),
        ({"table": "nokey", "id": "n"}, "the key column n repeats values or holds NULL"),
        ({"table": "secret"}, "may not read the table: GRANT SELECT ON public.secret TO auditor"),
        (
            "postgresql://auditor@127.0.0.1:9/postgres?table=chunks",
            "cannot connect to postgresql://auditor@127.0.0.1:9",
        ),
    ],
)
def test_bad_postgres_input_is_one_line_and_writes_nothing(tmp_path, pg, monkeypatch, capsys, query, message):
    _bad_tables(pg)
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    url = query if isinstance(query, str) else _url(pg, **query)
    assert _audit(tmp_path / "out", url) == 2
    err = capsys.readouterr().err
    assert err.startswith("v2t audit: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_database_urls_that_cannot_be_read_are_one_line_and_show_no_secret(tmp_path, capsys):
    """No server needed: a scheme v2t does not read, credentials in a Qdrant URL, a query on a Milvus one, a
    PostgreSQL server that is not there (its password shown nowhere), --documents for a database store."""
    cases = [
        (["mysql://auditor@db/rag"], "no store v2t reads has that scheme (it reads postgresql://, postgres://, qdrant"),
        (["qdrant://reader:s3cret-key@127.0.0.1:9/docs"], "put no credentials in the URL; the key goes in QDRANT_API_KEY"),  # noqa: E501
        (["milvus://127.0.0.1:9/docs?token=s3cret-key"], "a milvus URL is SCHEME://HOST:PORT/COLLECTION, without a query"),  # noqa: E501
        (["postgresql://auditor:s3cret-key@127.0.0.1:9/rag?table=t"], "cannot connect to postgresql://auditor@127.0.0.1:9/rag"),  # noqa: E501
        (["postgresql://auditor@127.0.0.1:9/rag", "--documents", str(tmp_path / "t.txt")], "--documents is for stores that keep no texts"),  # noqa: E501
        (["http://127.0.0.1:9/docs", "--store-kind", "postgresql"], "no store v2t reads has that scheme"),
    ]  # fmt: skip
    (tmp_path / "t.txt").write_text("a\n")
    for i, (args, message) in enumerate(cases):
        assert _audit(tmp_path / f"out{i}", *args) == 2
        err = capsys.readouterr().err
        error = err.splitlines()[-1]  # (after the warning that a password in a URL is readable by others)
        assert error.startswith("v2t audit: error: ") and err.count("\n") <= 2 and message in error, err
        assert "s3cret-key" not in err and not (tmp_path / f"out{i}").exists()


# ----------------------------------------------------------------------------- Qdrant and Milvus Lite


def _qdrant(folder, vectors, texts):
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(folder))
    client.create_collection("docs", vectors_config=models.VectorParams(size=384, distance=models.Distance.DOT))
    points = [models.PointStruct(id=KEY0 + 7 * i, vector=v.tolist(), payload={"document": t, "source": "x"})
              for i, (v, t) in enumerate(zip(vectors, texts))]  # fmt: skip
    client.upsert("docs", points)
    client.close()
    return folder


def _milvus(folder, vectors, texts):
    from pymilvus import MilvusClient

    client = MilvusClient(str(folder))
    client.create_collection("docs", dimension=384, primary_field_name="id", vector_field_name="vector",
                             auto_id=False, metric_type="IP")  # fmt: skip
    client.insert("docs", [{"id": KEY0 + 7 * i, "vector": v.tolist(), "text": t}
                           for i, (v, t) in enumerate(zip(vectors, texts))])  # fmt: skip
    client.close()
    return folder


def _fingerprint(folder):
    folder = Path(folder)
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                         os.lstat(p).st_mtime_ns, os.lstat(p).st_mode)
            for p in sorted(folder.rglob("*"))}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qdrant", "milvus"])
def test_a_local_qdrant_or_milvus_store_is_audited_untouched_and_resumes_after_a_failed_page(
    tmp_path, vectors, texts, npy_audit, kind, monkeypatch, capsys
):
    """Qdrant's local folder and Milvus Lite's PATH.db, made by their own clients: audited in pages of 8 with the
    same rows as the .npy audit, every file of the store as it was (the clients, which lock and write what they
    open, read a copy); a page that fails is one line with the rows done kept, and the rerun continues after the
    last key."""
    store = (_qdrant if kind == "qdrant" else _milvus)(tmp_path / ("qd" if kind == "qdrant" else "mv.db"), vectors,
                                                       texts)  # fmt: skip
    before = _fingerprint(store)
    real = stores.Paged.read_page
    calls = []

    def third_page_fails(self, after, rows):
        calls.append(after)
        if len(calls) == 3:
            raise stores.StoreError(f"{self.source}: the server went away")
        return real(self, after, rows)

    monkeypatch.setattr(stores.Paged, "read_page", third_page_fails)
    out = tmp_path / "report"
    assert _audit(out, str(store), "--page-rows", "8") == 2
    err = capsys.readouterr().err
    assert "the server went away; the 16 records done are kept: rerun the same command to continue" in err
    assert calls == [None, str(KEY0 + 7 * 7), str(KEY0 + 7 * 15)]
    monkeypatch.setattr(stores.Paged, "read_page", real)
    assert _audit(out, str(store), "--page-rows", "8") == 0
    assert "resuming after the 16 rows" in capsys.readouterr().err
    rows = _rows(out)
    assert [r["id"] for r in rows] == [str(KEY0 + 7 * i) for i in range(N)]
    _same_rows(rows, npy_audit)
    assert _fingerprint(store) == before
    assert f"a {kind} store" in (out / "report.md").read_text()


@pytest.mark.slow
def test_qdrant_and_milvus_bad_input_is_one_line(tmp_path, vectors, texts, capsys):
    qd = _qdrant(tmp_path / "qd", vectors, texts)
    mv = _milvus(tmp_path / "mv.db", vectors, texts)
    cases = [
        ([str(qd), "--collection", "nope"], "has no collection 'nope' (it has docs)"),
        ([str(qd), "--vector-column", "v"], "holds one unnamed vector per point: drop --vector-column"),
        ([str(qd), "--text-column", "source", "--limit", "1"], None),  # (a text key that is there: fine)
        ([str(mv), "--collection", "nope"], "has no collection 'nope' (it has docs)"),
        ([str(mv), "--vector-column", "id"], "field id is INT64, not a FLOAT_VECTOR"),
        ([str(mv), "--vector-column", "text"], "has no field 'text' (its fields: id INT64, vector FLOAT_VECTOR)"),
        (["qdrant://reader:key@127.0.0.1:9/docs"], "put no credentials in the URL; the key goes in QDRANT_API_KEY"),
        (["milvus://127.0.0.1:9/docs?token=abc"], "a milvus URL is SCHEME://HOST:PORT/COLLECTION, without a query"),
    ]
    for i, (args, message) in enumerate(cases):
        code = _audit(tmp_path / f"out{i}", *args)
        err = capsys.readouterr().err
        if message is None:
            assert code == 0, err
            continue
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert "key" not in err.split("URL", 1)[0] and "abc" not in err
