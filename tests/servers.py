"""A raw TCP server for tests of the HTTP client: it reads each request whole and answers whatever bytes the test
scripts (a bad status line, a truncated body, a reply dripped a byte at a time), so the client meets replies no
well-behaved HTTP server library would send."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Callable


class RawServer:
    """`reply(request) -> bytes | list[tuple[bytes, float]]`: the bytes to send (or chunks, each followed by a
    pause in seconds); `requests` keeps every request's line, headers (lower-case) and parsed JSON body."""

    def __init__(self, reply: Callable[[dict], bytes | list]):
        self.reply = reply
        self.requests: list[dict] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket):
        conn.settimeout(10)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            while len(body) < int(headers.get("content-length", 0)):
                body += conn.recv(65536)
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            request = {"line": lines[0], "headers": headers, "json": parsed}
            self.requests.append(request)
            out = self.reply(request)
            for chunk, pause in [(out, 0.0)] if isinstance(out, bytes) else out:
                conn.sendall(chunk)
                if pause:
                    time.sleep(pause)
        except OSError:
            pass  # the client hung up (a deadline test)
        finally:
            conn.close()

    def close(self):
        self._stop = True
        self.sock.close()


def http_reply(status: int, body: bytes, headers: dict | None = None, length: int | None = None) -> bytes:
    """A well-formed HTTP/1.1 reply (Content-Length `length`, default the body's), closing the connection."""
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body) if length is None else length}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def embeddings_reply(n: int, dim: int = 4, rows: list | None = None) -> bytes:
    """An OpenAI-style reply of `n` rows (index i, a constant vector), or the given `rows`."""
    rows = rows if rows is not None else [{"index": i, "embedding": [float(i + 1)] * dim} for i in range(n)]
    return json.dumps({"object": "list", "data": rows}).encode()
