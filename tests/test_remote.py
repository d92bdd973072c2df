"""Black-box embedders from the command line: `v2t invert --embedder-url` against a real OpenAI-compatible
embeddings server started here on 127.0.0.1 (serving MiniLM), including its failures."""

import http.server
import json
import threading
import time

import numpy as np
import pytest

from v2t_jax import cli
from v2t_jax.remote import RemoteEmbedder, RemoteError


class _Server:
    """An OpenAI-style `/v1/embeddings` endpoint over MiniLM; `mode` makes it misbehave."""

    def __init__(self, embed):
        self.embed, self.mode, self.fails, self.seen = embed, "ok", 0, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.seen.append({"auth": self.headers.get("Authorization"), "n": len(body["input"]),
                                   "model": body["model"], "path": self.path})  # fmt: skip
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
                vectors = np.asarray(outer.embed(body["input"]))
                if outer.mode == "dim":
                    vectors = vectors[:, :10]
                data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
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


@pytest.fixture(scope="module")
def server(minilm):
    s = _Server(lambda texts: minilm.embed_texts(texts, max_length=32))
    yield s
    s.httpd.shutdown()


@pytest.fixture
def fresh(server):
    server.mode, server.fails, server.seen = "ok", 0, []
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
    want = shipped.invert_embeddings(vectors, num_steps=2, embed_fn=shipped.embed_texts)
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


def test_bad_endpoint_settings_are_refused_before_any_request():
    with pytest.raises(RemoteError, match="must start with http"):
        RemoteEmbedder("ftp://x", "m")
    with pytest.raises(RemoteError, match="batch size must be >= 1"):
        RemoteEmbedder("http://x", "m", batch_size=0)
