"""Black-box embedders from the command line: `v2t invert --embedder-url` against a real OpenAI-compatible
embeddings server started here on 127.0.0.1 (serving MiniLM), including its failures."""

import http.server
import json
import threading
import time

import numpy as np
import pytest

from v2t_jax import cli
from v2t_jax.search import strategies
from v2t_jax.audit.remote import RemoteEmbedder, RemoteError


class _Server:
    """An OpenAI-style `/v1/embeddings` endpoint over MiniLM, speaking HTTP/1.1 with keep-alive; `mode` makes it
    misbehave, `latency` delays every reply, `bad_from` answers 400 to every request after that many; `ok` counts
    the requests answered with vectors, `most_in_flight` the most handled at once."""

    def __init__(self, embed):
        self.embed, self.lock = embed, threading.Lock()
        self.reset()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                with outer.lock:
                    outer.in_flight += 1
                    outer.most_in_flight = max(outer.most_in_flight, outer.in_flight)
                try:
                    self._answer()
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

            def _answer(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.seen.append({"auth": self.headers.get("Authorization"), "n": len(body["input"]),
                                       "model": body["model"], "path": self.path,
                                       "dimensions": body.get("dimensions")})  # fmt: skip
                    n_seen = len(outer.seen)
                time.sleep(outer.latency)
                if outer.bad_from is not None and n_seen > outer.bad_from:
                    return self._send(400, b"bad request")
                if outer.fails > 0:
                    outer.fails -= 1
                    return self._send(500, b"overloaded")
                if outer.mode == "500":
                    return self._send(500, b"internal error")
                if outer.mode == "401":
                    return self._send(401, b'{"error": "bad key"}')
                if outer.mode == "slow":
                    time.sleep(1.0)
                if outer.mode == "garbage":
                    return self._send(200, b"<html>hello</html>")
                with outer.lock:  # (one embedding at a time: MiniLM's batch is not shared between threads)
                    vectors = np.asarray(outer.embed(body["input"]))
                if outer.mode == "dim":
                    vectors = vectors[:, :10]
                if body.get("dimensions") and outer.mode != "ignores dimensions":
                    vectors = vectors[:, : body["dimensions"]]
                data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
                with outer.lock:
                    outer.ok += 1
                self._send(200, json.dumps({"object": "list", "data": data[::-1]}).encode())  # any order

            def _send(self, code, payload):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reset(self):
        self.mode, self.fails, self.seen, self.latency, self.bad_from = "ok", 0, [], 0.0, None
        self.ok, self.in_flight, self.most_in_flight = 0, 0, 0


@pytest.fixture(scope="module")
def server(minilm):
    s = _Server(lambda texts: minilm.embed_texts(texts, max_length=32))
    yield s
    s.httpd.shutdown()


@pytest.fixture
def fresh(server):
    server.reset()
    return server


@pytest.fixture(scope="module")
def shipped():
    from v2t_jax import api

    return api.load_model()


def test_invert_through_the_endpoint_matches_the_host_side_search(tmp_path, fresh, shipped, minilm, sentences,
                                                                  monkeypatch):  # fmt: skip
    """The same texts as the API's host-side search with the embedder as its black box; batches of at most
    --embedder-batch-size texts; the key comes from the environment as a bearer token."""
    vectors = minilm.embed_texts(sentences[:3])
    np.save(tmp_path / "v.npy", vectors)
    monkeypatch.setenv("MY_KEY", "sk-test")
    args = ["invert", "--embeddings", str(tmp_path / "v.npy"), "--output", str(tmp_path / "o.jsonl"), "--quiet",
            "--steps", "2", "--embedder-url", fresh.url, "--api-key-env", "MY_KEY"]  # fmt: skip
    args += ["--embedder-batch-size", "2"]
    assert cli.main(args) == 0
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    want = shipped.invert(vectors, strategies.from_flags(2), embed_fn=shipped.embed_texts)  # the default search
    assert [r["text"] for r in rows] == want
    assert fresh.seen and all(s["auth"] == "Bearer sk-test" and s["n"] <= 2 for s in fresh.seen)
    assert {s["path"] for s in fresh.seen} == {"/v1/embeddings"} and fresh.seen[0]["model"] == "all-MiniLM-L6-v2"


def test_a_failing_request_is_retried_with_backoff(fresh):
    remote = RemoteEmbedder(fresh.url, "m", retries=3, backoff_s=0.01)
    fresh.fails = 2
    out = remote(["one", "two", "three"])
    assert out.shape == (3, 384) and remote.requests == 3
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "mode, extra, message",
    [
        ("500", [], "HTTP 500: internal error after 2 tries; is the embedding server up?"),
        ("401", [], "answered HTTP 401"),
        ("slow", ["--embedder-timeout", "0.3"], "timed out after 2 tries"),
        ("dim", [], "answers 10-dimensional vectors; the model inverts 384-dimensional ones"),
        ("garbage", [], "answered something else, not OpenAI-style embeddings"),
        ("down", [], "unreachable"),
    ],
)
def test_endpoint_failures_are_one_line_and_write_nothing(capsys, tmp_path, fresh, mode, extra, message):
    fresh.mode = mode
    url = fresh.url if mode != "down" else "http://127.0.0.1:9"  # the discard port: nothing listens
    np.save(tmp_path / "v.npy", np.ones((2, 384), np.float32))
    out = tmp_path / "o.jsonl"
    args = ["invert", "--embeddings", str(tmp_path / "v.npy"), "--output", str(out), "--quiet", "--steps", "1",
            "--embedder-url", url, "--embedder-retries", "1", *extra]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("v2t invert: error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy"]
    if mode == "401":
        assert len(fresh.seen) == 1  # a refusal is not retried


def test_requests_in_flight_together_keep_rows_in_order_on_kept_open_connections(fresh, sentences):
    """`concurrency` batches of one call at once (the server sees them together), the rows in the order of the
    texts, each thread's connection kept open from request to request."""
    texts = [f"{t} ({i})" for i, t in enumerate(sentences[:8] * 3)]
    fresh.latency = 0.1
    one = RemoteEmbedder(fresh.url, "m", batch_size=3, concurrency=1)(texts)
    assert fresh.most_in_flight == 1
    fresh.most_in_flight = 0
    many = RemoteEmbedder(fresh.url, "m", batch_size=3, concurrency=4)
    np.testing.assert_array_equal(many(texts), one)
    assert fresh.most_in_flight == 4 and many.requests == 8
    np.testing.assert_array_equal(many(texts[::-1]), one[::-1])
    assert many.requests == 16 and many.connections <= 4  # (16 requests over at most 4 connections)
    many.close()


def test_a_connection_the_server_closed_while_idle_is_reopened_at_once(raw, monkeypatch):
    """A keep-alive connection the server dropped between two requests (its idle timeout) costs no retry and no
    wait: the request goes again at once on a new connection."""
    from v2t_jax.audit import remote

    slept = []
    monkeypatch.setattr(remote.time, "sleep", slept.append)
    server = raw(lambda r: http_reply(200, embeddings_reply(1)).replace(b"Connection: close\r\n", b""))
    embedder = RemoteEmbedder(server.url, "m", retries=0)
    for _ in range(3):
        assert embedder(["a"]).shape == (1, 4)
    assert slept == [] and embedder.requests == 3 and len(server.requests) == 3 and embedder.connections == 3


def test_dimensions_are_sent_and_the_replys_width_checked(capsys, tmp_path, fresh):
    """`dimensions` (text-embedding-3's shortened vectors) goes in the request; a reply of another width is one
    line; on the command line a width the model cannot invert is refused before any request."""
    embedder = RemoteEmbedder(fresh.url, "m", dimensions=16)
    assert embedder(["one", "two"]).shape == (2, 16) and fresh.seen[-1]["dimensions"] == 16
    assert embedder.identity[-1] == 16 and RemoteEmbedder(fresh.url, "m").identity == [fresh.url, "m"]
    fresh.mode = "ignores dimensions"
    with pytest.raises(RemoteError, match="384-dimensional vectors where dimensions=16 was asked"):
        RemoteEmbedder(fresh.url, "m", dimensions=16)(["one"])
    fresh.reset()
    np.save(tmp_path / "v.npy", np.ones((2, 384), np.float32))
    args = ["invert", "--embeddings", str(tmp_path / "v.npy"), "--output", str(tmp_path / "o.jsonl"), "--quiet",
            "--steps", "1", "--embedder-url", fresh.url, "--embedder-dimensions", "256"]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["v2t invert: error: --embedder-dimensions 256: the model inverts 384-dimensional vectors; give "
                   "--embedder-dimensions 384 or leave it out"]  # fmt: skip
    assert fresh.seen == [] and sorted(p.name for p in tmp_path.iterdir()) == ["v.npy"]


@pytest.mark.slow
def test_a_run_the_endpoint_stopped_resumes_without_embedding_anything_twice(capsys, tmp_path, fresh, shipped,
                                                                            minilm, sentences):  # fmt: skip
    """An endpoint that starts refusing mid-run (HTTP 400) stops `v2t invert` with the rows done kept; the rerun,
    with requests in flight together, asks only for what the finished rows did not: the requests answered over
    both runs are those of one whole run (plus the rerun's dimension check), and its rows are the whole run's,
    in order."""
    vectors = minilm.embed_texts(sentences[:4])
    np.save(tmp_path / "v.npy", vectors)
    np.save(tmp_path / "v2.npy", vectors[:2])

    def invert(embeddings, out, *flags):
        return cli.main(["invert", "--embeddings", str(tmp_path / embeddings), "--output", str(tmp_path / out),
                         "--quiet", "--steps", "1", "--batch-size", "2", "--embedder-url", fresh.url,
                         "--embedder-batch-size", "2", "--embedder-retries", "0", *flags])  # fmt: skip

    assert invert("v.npy", "whole.jsonl", "--embedder-concurrency", "1") == 0
    whole = fresh.ok
    fresh.reset()
    assert invert("v2.npy", "first.jsonl") == 0
    first = fresh.ok  # what the first batch of 2 asks, the dimension check included
    fresh.reset()
    fresh.bad_from = first  # every request after those: refused
    assert invert("v.npy", "cut.jsonl", "--embedder-concurrency", "3") == 2
    assert "HTTP 400: bad request" in capsys.readouterr().err and fresh.ok == first
    fresh.reset()
    assert invert("v.npy", "cut.jsonl", "--embedder-concurrency", "3") == 0
    assert "resuming after the 2 rows" in capsys.readouterr().err
    assert first + fresh.ok == whole + 1  # nothing embedded twice (one more dimension check)
    assert (tmp_path / "cut.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()


def test_bad_endpoint_settings_are_refused_before_any_request():
    with pytest.raises(RemoteError, match="must start with http"):
        RemoteEmbedder("ftp://x", "m")
    with pytest.raises(RemoteError, match="batch size must be >= 1"):
        RemoteEmbedder("http://x", "m", batch_size=0)
    with pytest.raises(RemoteError, match="concurrency must be an integer in 1..64"):
        RemoteEmbedder("http://x", "m", concurrency=0)
    with pytest.raises(RemoteError, match="dimensions must be a positive integer"):
        RemoteEmbedder("http://x", "m", dimensions=0)
    with pytest.raises(RemoteError, match="rate-limit wait must be a number of seconds"):
        RemoteEmbedder("http://x", "m", rate_wait_s=float("nan"))


# ------------------------------------------------------------------------------- the key, hostile servers

from servers import RawServer, embeddings_reply, http_reply  # noqa: E402

KEY = "sk-live-0123456789abcdef"
ODD_KEY = 'sk-live-"quoted"\\back/slash-0123'  # what JSON escapes: a server's echo of it is not the key as sent


@pytest.fixture
def raw():
    servers = []

    def make(reply):
        servers.append(RawServer(reply))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _one_line(capsys, code):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("v2t invert: error: "), err
    return err[0]


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_the_key_never_follows_a_redirect_to_another_host(capsys, tmp_path, raw, monkeypatch, status):
    """urllib used to follow redirects with the Authorization header: a server could hand the key to any host.
    Now no redirect is followed; the line names where it pointed, and the other host sees nothing."""
    other = raw(lambda r: http_reply(200, embeddings_reply(len(r["json"]["input"]), 384)))
    first = raw(lambda r: http_reply(status, b"moved", {"Location": f"{other.url}/v1/embeddings?token={KEY}"}))
    monkeypatch.setenv("V2T_EMBEDDER_API_KEY", KEY)
    np.save(tmp_path / "v.npy", np.ones((1, 384), np.float32))
    code = cli.main(["invert", "--embeddings", str(tmp_path / "v.npy"), "--output", str(tmp_path / "o.jsonl"),
                     "--quiet", "--steps", "1", "--embedder-url", first.url])  # fmt: skip
    line = _one_line(capsys, code)
    assert f"HTTP {status}, a redirect to {other.url}/…" in line and KEY not in line
    assert other.requests == [] and first.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy"]


@pytest.mark.parametrize(
    "where",
    [
        "error body",
        "error body, URL-quoted",
        "error body, JSON-escaped",
        "error body, JSON-escaped with \\/",
        "bad reply",
        "query",
        "short query",
        "path",
    ],
)
def test_the_key_is_redacted_from_every_message(capsys, tmp_path, raw, monkeypatch, where):
    """A server that echoes the request's Authorization header in its error, or a key given in the URL's query,
    never reaches the terminal (or the partial run's state)."""
    import urllib.parse

    key = ODD_KEY if "JSON" in where else "k3y" if where == "short query" else KEY
    echo = {"error body": KEY, "error body, URL-quoted": urllib.parse.quote(f"Bearer {KEY}", safe=""),
            "error body, JSON-escaped": json.dumps(key), "error body, JSON-escaped with \\/":
            json.dumps(key).replace("/", "\\/"), "bad reply": f"not json {KEY}", "query": f"echo {key}",
            "short query": f"echo {key}", "path": f"echo {KEY} at /k/{KEY}/v1/embeddings"}[where]  # fmt: skip
    status = 200 if where in ("bad reply", "query", "short query", "path") else 403
    server = raw(lambda r: http_reply(status, f"Authorization: {echo}\nmore".encode()))
    url = server.url + {"query": f"/v1/embeddings?api_key={key}", "short query": f"/v1/embeddings?key={key}",
                        "path": f"/k/{KEY}/v1/embeddings"}.get(where, "")  # fmt: skip
    if where not in ("query", "short query", "path"):
        monkeypatch.setenv("V2T_EMBEDDER_API_KEY", key)
    np.save(tmp_path / "v.npy", np.ones((1, 384), np.float32))
    code = cli.main(["invert", "--embeddings", str(tmp_path / "v.npy"), "--output", str(tmp_path / "o.jsonl"),
                     "--quiet", "--steps", "1", "--embedder-url", url])  # fmt: skip
    line = _one_line(capsys, code)
    assert key not in line and urllib.parse.quote(key) not in line and json.dumps(key)[1:-1] not in line, line
    assert json.dumps(key)[1:-1].replace("/", "\\/") not in line
    if where.startswith("error body"):
        assert "Authorization: " in line and "***" in line  # the server's words are shown, the key is not


def test_a_url_with_credentials_and_a_key_that_cannot_be_a_header_are_refused(monkeypatch):
    with pytest.raises(RemoteError, match="carries credentials") as e:
        RemoteEmbedder(f"http://user:{KEY}@127.0.0.1:9", "m")
    assert KEY not in str(e.value)
    monkeypatch.setenv("BAD_KEY", "sk-abc\r\nX-Injected: 1")
    with pytest.raises(RemoteError, match="cannot carry"):
        RemoteEmbedder("http://127.0.0.1:9", "m", api_key_env="BAD_KEY")


@pytest.mark.parametrize(
    "timeout",
    ["nan", "inf", "-1", "0", "1e9"],
)
def test_a_timeout_that_is_not_a_number_of_seconds_is_one_line(capsys, tmp_path, timeout):
    np.save(tmp_path / "v.npy", np.ones((1, 384), np.float32))
    code = cli.main(["invert", "--embeddings", str(tmp_path / "v.npy"), "--output", str(tmp_path / "o.jsonl"),
                     "--quiet", "--steps", "1", "--embedder-url", "http://127.0.0.1:9", "--embedder-timeout",
                     timeout])  # fmt: skip
    assert "embedder timeout must be a number of seconds" in _one_line(capsys, code)


def _nested(depth: int) -> bytes:
    return b'{"data": ' + b"[" * depth + b"]" * depth + b"}"


HOSTILE = {
    # name: (reply for every request, what the one line says)
    "bad status line": (b"HTTP/1.1 two hundred OK\r\n\r\n", "malformed reply"),
    "not HTTP at all": (b"SSH-2.0-OpenSSH_9.6\r\n", "malformed reply"),
    "empty reply": (b"", "malformed reply"),
    "truncated body": (http_reply(200, b'{"data": [{"index": 0, "embe', length=5000), "malformed reply"),
    "header too long": (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", "malformed reply"),
    "deeply nested JSON": (http_reply(200, _nested(100000)), "answered something else"),
    "JSON that is a list": (http_reply(200, b"[1, 2]"), "without a `data` list"),
    "rows out of order, repeated index": (
        http_reply(200, embeddings_reply(0, rows=[{"index": 1, "embedding": [1.0] * 384}] * 2)),
        "`index` values [1, 1] where 0..1 were due",
    ),
    "index past the rows": (
        http_reply(200, embeddings_reply(0, rows=[{"index": i + 1, "embedding": [1.0] * 384} for i in range(2)])),
        "`index` values [1, 2] where 0..1 were due",
    ),
    "index as text": (
        http_reply(200, embeddings_reply(0, rows=[{"index": str(i), "embedding": [1.0] * 384} for i in range(2)])),
        "not an integer",
    ),
    "numbers as text": (
        http_reply(200, embeddings_reply(0, rows=[{"index": i, "embedding": ["1.0"] * 384} for i in range(2)])),
        "without a list of numbers",
    ),
    "NaN in a vector": (
        http_reply(200, b'{"data": [{"index": 0, "embedding": [NaN]}, {"index": 1, "embedding": [1.0]}]}'),
        "NaN, infinite",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_replies_are_one_line(capsys, tmp_path, raw, case):
    reply, message = HOSTILE[case]
    server = raw(lambda r: reply)
    remote = RemoteEmbedder(server.url, "m", retries=1, backoff_s=0.0, timeout_s=5)
    with pytest.raises(RemoteError) as e:
        remote(["one", "two"])
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_reply_dripped_past_the_deadline_is_cut_off(raw):
    """The timeout used to apply per socket read: a server sending one byte every 0.2 s held a 1 s client
    for as long as it liked. Now each request has a total deadline."""
    body = http_reply(200, embeddings_reply(2, 384))
    server = raw(lambda r: [(body[i : i + 1], 0.2) for i in range(len(body))])
    remote = RemoteEmbedder(server.url, "m", retries=1, backoff_s=0.0, timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="timed out after 2 tries"):
        remote(["one", "two"])
    assert time.monotonic() - t0 < 6  # two tries of 1 s each (the drip alone would take minutes)


def test_rows_given_in_any_order_are_put_in_index_order(raw):
    rows = [{"index": 1, "embedding": [0.0, 2.0]}, {"index": 0, "embedding": [1.0, 0.0]}]
    server = raw(lambda r: http_reply(200, embeddings_reply(0, rows=rows)))
    np.testing.assert_array_equal(RemoteEmbedder(server.url, "m")(["a", "b"]), [[1.0, 0.0], [0.0, 2.0]])


def test_an_http_proxy_from_the_environment_is_used(raw, monkeypatch):
    proxy = raw(lambda r: http_reply(200, embeddings_reply(len(r["json"]["input"]), 2)))
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "")
    out = RemoteEmbedder("http://embeddings.example:8080", "m")(["a"])
    assert out.shape == (1, 2)
    assert proxy.requests[0]["line"] == "POST http://embeddings.example:8080/v1/embeddings HTTP/1.1"


AUDIT_WITH_AN_ENDPOINT = """
import sys
from v2t_jax import cli
sys.exit(cli.main(["audit", sys.argv[1], "--output", sys.argv[2], "--steps", "1", "--sbeam", "1", "--limit", "1",
                   "--embedder-url", sys.argv[3], *sys.argv[4:]]))
"""


@pytest.mark.parametrize("where", ["query", "short query", "path", "path and query, flag=value"])
def test_a_key_in_the_url_reaches_no_file_and_no_message(tmp_path, fresh, minilm, sentences, where):
    """A key given in --embedder-url's path or query (some APIs take it there) is in no file of the output (the
    report names its command with the endpoint as scheme://host:port), no line printed, and not in the state of
    an interrupted run. In a fresh process: the secrets a process knows are process-wide, so an earlier test in
    the same process could have registered the key and hidden a leak."""
    import subprocess
    import sys

    from conftest import cache_env

    key = "k3y" if where == "short query" else KEY
    url = fresh.url + {"query": f"/v1/embeddings?api_key={key}", "short query": f"/v1/embeddings?key={key}",
                       "path": f"/key/{key}/v1/embeddings",
                       "path and query, flag=value": f"/key/{key}/v1/embeddings?api_key={key}"}[where]  # fmt: skip
    np.save(tmp_path / "v.npy", minilm.embed_texts(sentences[:2]))
    out = tmp_path / "report"
    argv = [str(tmp_path / "v.npy"), str(out), url]
    if where.endswith("flag=value"):  # the report shows --embedder-url=... as typed, less the key
        argv = [str(tmp_path / "v.npy"), str(out), fresh.url, f"--embedder-url={url}"]
    import os

    env = {**os.environ, **cache_env()}
    done = subprocess.run([sys.executable, "-c", AUDIT_WITH_AN_ENDPOINT, *argv], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert fresh.seen and all(key in s["path"] for s in fresh.seen)  # (it was sent where the user said)
    assert key not in done.stdout and key not in done.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"report.md", "summary.json", "records.jsonl"}
    for p in files:
        assert key.encode() not in p.read_bytes(), p
    assert f"{fresh.url}/…" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "retry_after, waits",
    [
        (None, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]),
        ("20", [20.0] * 6),
        ("100000", [60.0] * 2),
        ("Wed, 21 Oct 2015 07:28:00 GMT", [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]),
    ],
)
def test_a_rate_limited_server_is_waited_out_as_it_asks_without_spending_retries(raw, monkeypatch, retry_after,
                                                                                 waits):  # fmt: skip
    """Retry-After was ignored and a 429 spent a retry (a rate-limited API's 4 retries were gone in ~7.5 s of
    backoff and the audit stopped); now a rate limit waits as asked (seconds or an HTTP date; a date past, or
    none: the backoff), each wait at most MAX_WAIT_S, spends no retry, and gives up only past `rate_wait_s`."""
    from v2t_jax.audit import remote

    clock, slept = [1000.0], []

    def sleep(s):
        slept.append(s)
        clock[0] += s

    monkeypatch.setattr(remote.time, "sleep", sleep)
    monkeypatch.setattr(remote.time, "monotonic", lambda: clock[0])
    server = raw(lambda r: http_reply(429, b"slow down", {"Retry-After": retry_after} if retry_after else {}))
    with pytest.raises(RemoteError, match=f"HTTP 429: slow down: still rate-limited after {len(waits) + 1} tries"):
        RemoteEmbedder(server.url, "m", retries=0, rate_wait_s=130)(["a"])
    assert slept == pytest.approx(waits) and len(server.requests) == len(waits) + 1


def test_a_rate_limit_that_lifts_costs_no_retry(raw, monkeypatch):
    """Three 429s then vectors, with no retries allowed: the rate limit was waited out, not failed on."""
    from v2t_jax.audit import remote

    slept = []
    monkeypatch.setattr(remote.time, "sleep", slept.append)
    replies = iter([http_reply(429, b"later", {"Retry-After": "1"})] * 3)
    server = raw(lambda r: next(replies, None) or http_reply(200, embeddings_reply(1)))
    assert RemoteEmbedder(server.url, "m", retries=0)(["a"]).shape == (1, 4)
    assert len(server.requests) == 4 and len(slept) == 3 and all(0.9 < s <= 1.0 for s in slept)


def test_all_retries_end_within_one_bound(raw, monkeypatch):
    """--embedder-retries 20 against a 503 server backed off for up to 6 days (0.5 s doubling 19 times); now every
    wait is at most MAX_WAIT_S and the tries of one batch end within `bound_s()`, however many are allowed."""
    from v2t_jax.audit import remote

    clock = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        clock[0] += s

    monkeypatch.setattr(remote.time, "sleep", sleep)
    monkeypatch.setattr(remote.time, "monotonic", lambda: clock[0])
    server = raw(lambda r: http_reply(503, b"down"))
    embedder = RemoteEmbedder(server.url, "m", retries=20, timeout_s=2)
    with pytest.raises(RemoteError, match="HTTP 503: down after 21 tries"):
        embedder(["a"])
    assert max(slept) == remote.MAX_WAIT_S and sum(slept) <= embedder.bound_s() < 45 * 60


def test_name_resolution_is_inside_the_deadline(monkeypatch):
    """A name server that never answers waited 33.7 s past --embedder-timeout 2: the system's resolver takes no
    deadline. Now the name is asked in a thread and the request gives up when its deadline passes."""
    import socket
    import time as real_time

    from v2t_jax.audit import remote

    def never_answers(*args, **kwargs):
        real_time.sleep(30)

    monkeypatch.setattr(remote.socket, "getaddrinfo", never_answers)
    embedder = RemoteEmbedder("http://embeddings.invalid:8080", "m", timeout_s=0.5, retries=1, backoff_s=0)
    start = real_time.monotonic()
    with pytest.raises(RemoteError, match="timed out resolving the host name 'embeddings.invalid' after 2 tries"):
        embedder(["a"])
    assert real_time.monotonic() - start < 5  # (two tries of 0.5 s, not two of 30)
    assert socket.getaddrinfo is never_answers
