"""A black-box embedder behind an OpenAI-compatible `/v1/embeddings` endpoint, for the host-side search
(`drivers.invert_host`): `RemoteEmbedder(url, model)(texts) -> float32 [n, D]`.

What an attacker who can only query an embedding API has: the inverter and corrector come from a bundle trained
for that embedder, and every hypothesis is re-embedded by the API. Requests are JSON `{"model", "input"}` of at
most `batch_size` texts; the answer's `data[i].embedding` (ordered by `index`) are the vectors.

What it guarantees (`tests/test_remote.py`, against real local servers):
- **The key stays with its origin.** The API key, if any, is read from an environment variable (never from the
  command line, where `ps` shows it) and sent as `Authorization: Bearer` to the URL's host only. Redirects are
  never followed (a 3xx is one line naming where it points, without the key); a URL that carries credentials
  (`user:pass@`) is refused. The key is redacted (`errors.redact`) from every message, the server's words
  included, also where a server echoes it URL-quoted or JSON-escaped; the URL's userinfo, path and query are
  treated as secret too (`errors.add_url_secrets`), and messages, reports and state files name the endpoint as
  scheme://host:port only (`errors.shown_url`).
- **Every request has a total deadline** (`timeout_s`: resolving the host name, connecting, sending and reading
  the whole reply): a server that drips its reply a byte at a time is cut off when it passes, as is one that
  never answers and a name server that never replies. One batch with all its tries and waits ends within
  `bound_s()`: a wait is what the server's Retry-After asks, else the doubling backoff, each at most MAX_WAIT_S.
- **Replies are checked against the request**: `data` holds exactly one row per text sent, each `index` an
  integer in 0..n-1 and no two alike (rows are put in `index` order; with no `index` at all, in the order
  sent), each `embedding` a list of finite numbers of one length, the same for every reply. A reply over
  `MAX_REPLY_BYTES` is cut off.
- **Failures are one `RemoteError` line.** Timeouts, connection failures, malformed HTTP (a bad status line, a
  truncated body) and 408/409/425/429/5xx answers are retried with exponential backoff; any other status, an
  answer that is not the vectors asked for, or running out of retries is not.
- **Throughput at API scale.** The batches of one call go out `concurrency` at a time (rows kept in order), each
  thread keeping its connection open between requests (HTTP/1.1 keep-alive; a connection the server closed while
  idle is reopened at once). A rate limit (429, or 503 with Retry-After) is waited out as the server asks, every
  thread pausing together, and does not spend a retry: a batch gives up on one only after `rate_wait_s` of
  waiting in all. `dimensions` is sent for APIs that shorten their vectors (text-embedding-3) and the reply's
  width checked against it.
Proxies named by the usual environment variables (`https_proxy`, `http_proxy`, `no_proxy`) are used.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from concurrent import futures
from typing import TYPE_CHECKING, Sequence

from v2t_jax.errors import V2TError, add_secret, add_url_secrets, one_line, shown_url

if TYPE_CHECKING:
    import numpy as np

DEFAULT_KEY_ENV = "V2T_EMBEDDER_API_KEY"
RETRIED_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_TIMEOUT_S = 3600.0
MAX_RETRIES = 20
MAX_REPLY_BYTES = 256 * 1024 * 1024
MAX_WAIT_S = 60.0  # the longest wait between two tries (a backoff, or what Retry-After asks)
DEFAULT_CONCURRENCY = 8  # requests in flight at once
MAX_CONCURRENCY = 64
DEFAULT_RATE_WAIT_S = 600.0  # the longest one batch waits on an API's rate limit, all its waits together
_RECONNECT = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, http.client.CannotSendRequest)


class RemoteError(V2TError, RuntimeError):
    """The endpoint is down, refuses, or answers something that is not the embeddings asked for."""

    def __init__(self, message: str):
        super().__init__(one_line(message, limit=600))  # redacted, control characters out, bounded


class _Retry(Exception):
    """A failure worth another try (the reason, in words)."""


class RemoteEmbedder:
    def __init__(
        self,
        url: str,
        model: str,
        api_key_env: str = DEFAULT_KEY_ENV,
        batch_size: int = 64,
        timeout_s: float = 30.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        concurrency: int = DEFAULT_CONCURRENCY,
        dimensions: int | None = None,
        rate_wait_s: float = DEFAULT_RATE_WAIT_S,
    ):
        self.key = os.environ.get(api_key_env) or None
        add_secret(self.key)
        add_url_secrets(url)  # (userinfo, path and query may hold a key: no message shows them)
        if self.key is not None and not (self.key.isascii() and self.key.isprintable() and " " not in self.key):
            raise RemoteError(f"the key in ${api_key_env} holds characters an HTTP header cannot carry; check it")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise RemoteError(f"embedder URL {url!r} must start with http:// or https://")
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise RemoteError(f"embedder URL {url!r} is malformed ({e})") from None
        if parts.username is not None or parts.password is not None:
            raise RemoteError(
                "the embedder URL carries credentials (user:password@): pass the key through the environment "
                f"variable {api_key_env} instead"
            )
        if not parts.hostname:
            raise RemoteError(f"embedder URL {url!r} names no host")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise RemoteError(f"the embedder batch size must be >= 1 (an integer), got {batch_size!r}")
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and 0 < timeout_s <= MAX_TIMEOUT_S):
            raise RemoteError(
                f"the embedder timeout must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], got {timeout_s!r}"
            )
        if not (isinstance(retries, int) and 0 <= retries <= MAX_RETRIES):
            raise RemoteError(f"the embedder retries must be an integer in 0..{MAX_RETRIES}, got {retries!r}")
        if not (isinstance(backoff_s, (int, float)) and math.isfinite(backoff_s) and 0 <= backoff_s <= 60):
            raise RemoteError(f"the backoff must be a number of seconds in [0, 60], got {backoff_s!r}")
        if not (isinstance(concurrency, int) and 1 <= concurrency <= MAX_CONCURRENCY):
            raise RemoteError(
                f"the embedder concurrency must be an integer in 1..{MAX_CONCURRENCY}, got {concurrency!r}"
            )
        if dimensions is not None and not (isinstance(dimensions, int) and dimensions >= 1):
            raise RemoteError(f"the embedder dimensions must be a positive integer, got {dimensions!r}")
        if not (isinstance(rate_wait_s, (int, float)) and math.isfinite(rate_wait_s) and 0 <= rate_wait_s <= 86400):
            raise RemoteError(f"the rate-limit wait must be a number of seconds in [0, 86400], got {rate_wait_s!r}")
        path = parts.path.rstrip("/")
        if not path.endswith("/embeddings"):
            path += "/v1/embeddings"
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, port
        self.target = path + (f"?{parts.query}" if parts.query else "")
        netloc = parts.netloc
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, path, parts.query, ""))
        self.shown_url = shown_url(url)  # scheme://host:port only: what messages, reports and state files say
        self.model = model
        self.batch_size, self.timeout_s, self.retries, self.backoff_s = batch_size, float(timeout_s), retries, backoff_s
        self.concurrency, self.dimensions, self.rate_wait_s = concurrency, dimensions, float(rate_wait_s)
        self.requests = 0  # sent, retries included
        self.connections = 0  # opened (keep-alive: far fewer than requests)
        self.dim: int | None = None
        self._lock = threading.Lock()
        self._not_before = 0.0  # (time.monotonic) no request before this: a rate limit's pause, for every thread
        self._local = threading.local()  # each thread's open connection
        self._pool: futures.ThreadPoolExecutor | None = None

    @property
    def identity(self) -> list:
        """What names the vectors this endpoint gives (recorded with a run's rows; a resume must match it)."""
        return [self.shown_url, self.model] + ([self.dimensions] if self.dimensions else [])

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        texts = list(texts)
        chunks = [texts[s : s + self.batch_size] for s in range(0, len(texts), self.batch_size)]
        if self.concurrency == 1 or len(chunks) <= 1:
            out = [self._post(chunk) for chunk in chunks]
        else:
            if self._pool is None:
                self._pool = futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="v2t-embedder")
            running = [self._pool.submit(self._post, chunk) for chunk in chunks]
            try:
                out = [f.result() for f in running]  # in order; the first failure raises
            finally:
                for f in running:
                    f.cancel()  # (those not started yet; a failure ends the call)
        return np.concatenate(out) if out else np.zeros((0, self.dim or 0), np.float32)

    def close(self) -> None:
        """Ends the worker threads (their connections close with them)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._drop()

    # ------------------------------------------------------------------------------------------- transport

    def _connection(self, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
        """A connection to the endpoint (through the environment's proxy, if one applies) and the request target,
        its host name resolved first within `timeout_s` (`_resolve`): the system's resolver has no deadline."""
        https = self.scheme == "https"
        port = self.port or (443 if https else 80)
        proxy = urllib.request.getproxies().get(self.scheme)
        target = self.target
        if proxy and not urllib.request.proxy_bypass(self.host):
            p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if https:
                # TCP to the proxy, CONNECT, then TLS to the endpoint through the tunnel
                conn = http.client.HTTPSConnection(p.hostname, p.port or 80, timeout=timeout_s)
                conn.set_tunnel(self.host, port)  # CONNECT: the proxy sees no header, the key included
            else:
                conn, target = http.client.HTTPConnection(p.hostname, p.port or 80, timeout=timeout_s), self.url
        else:
            cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
            conn = cls(self.host, port, timeout=timeout_s)
        addresses = _resolve(conn.host, conn.port, timeout_s)

        # (connect to the addresses resolved; TLS still checks the certificate against the host name)
        def connect(_, timeout, source=None):
            conn.raw_sock = _connect(addresses, timeout, source)  # (the deadline's timer shuts it down)
            with self._lock:
                self.connections += 1
            return conn.raw_sock

        conn._create_connection = connect
        return conn, target

    def _drop(self) -> None:
        """Closes this thread's connection (after a failure, or a reply that ends it)."""
        held = getattr(self._local, "conn", None)
        self._local.conn = None
        if held is not None:
            held[0].close()

    def _exchange(self, body: bytes, headers: dict, timeout_s: float) -> tuple[int, dict, bytes]:
        """One request within `timeout_s` in all (name resolution, connecting, sending, reading the whole reply):
        a timer shuts the socket down when the deadline passes, so no read (however slowly the server drips)
        outlives it. The thread's connection is reused when the last reply left it open; one the server closed
        while idle is reopened once, at once, within the same deadline."""
        expired = threading.Event()
        conn = None

        def cut_off():
            expired.set()
            sock = getattr(conn, "raw_sock", None) if conn is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(timeout_s, cut_off)
        timer.daemon = True
        timer.start()
        ok = False
        try:
            held = getattr(self._local, "conn", None)
            for fresh in (False, True) if held is not None else (True,):
                if fresh:
                    self._drop()
                    conn, target = self._connection(timeout_s)
                    self._local.conn = (conn, target)
                else:
                    conn, target = held
                conn.timeout = timeout_s
                if conn.sock is not None:
                    conn.sock.settimeout(timeout_s)
                try:
                    conn.request("POST", target, body=body, headers=headers)
                    response = conn.getresponse()
                    break
                except _RECONNECT:
                    if fresh or expired.is_set():
                        raise
            raw = response.read(MAX_REPLY_BYTES + 1)
            if len(raw) > MAX_REPLY_BYTES:
                raise RemoteError(f"{self.shown_url} answered more than {MAX_REPLY_BYTES >> 20} MiB; not embeddings")
            if expired.is_set():
                raise _Retry("timed out")
            if response.length:  # what Content-Length promised and the connection did not bring
                raise _Retry(f"malformed reply (its body ends {response.length} bytes short of its Content-Length)")
            ok = True
            return response.status, {k.lower(): v for k, v in response.getheaders()}, raw
        except (RemoteError, _Retry):
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:
            # ValueError: http.client's own (a header it cannot parse); OSError: refused, reset, TLS, timeouts
            if expired.is_set() or isinstance(e, (TimeoutError, socket.timeout)):
                raise _Retry("timed out") from None
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise _Retry(f"unreachable or malformed reply ({type(e).__name__}: {reason})") from None
        finally:
            timer.cancel()
            if not ok or expired.is_set():
                self._drop()

    def bound_s(self) -> float:
        """The longest one batch of texts can take, every try and every wait between them included (a rate
        limit's waits: at most `rate_wait_s` of them)."""
        return self.timeout_s * (self.retries + 1) + MAX_WAIT_S * self.retries + self.rate_wait_s

    def _post(self, texts: list[str]) -> np.ndarray:
        """The vectors of `texts` within `bound_s()`: at most `retries + 1` failed tries (a wait between two is what
        the server's Retry-After asks, else the backoff, `backoff_s` doubling), each wait at most MAX_WAIT_S and
        never past the bound. A rate limit (429, or 503 with Retry-After) spends no try: it pauses every thread
        for what it asks (else the backoff), up to `rate_wait_s` of waits in all for this batch."""
        request = {"model": self.model, "input": texts}
        if self.dimensions:
            request["dimensions"] = self.dimensions
        body = json.dumps(request).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        why, wait, tries, failures, limited, rate_waited = "", 0.0, 0, 0, 0, 0.0
        deadline = time.monotonic() + self.bound_s()
        while True:
            if tries:
                if limited:  # a rate limit: every thread pauses for what it asks (or the backoff)
                    wait = min(wait if wait > 0 else self.backoff_s * 2 ** min(limited - 1, 16), MAX_WAIT_S)
                    if rate_waited + wait > self.rate_wait_s:
                        break
                    rate_waited += wait
                    with self._lock:
                        self._not_before = max(self._not_before, time.monotonic() + wait)
                else:
                    if failures > self.retries:
                        break
                    wait = min(wait if wait > 0 else self.backoff_s * 2 ** (failures - 1), MAX_WAIT_S)
                    if time.monotonic() + wait >= deadline:
                        break
                    time.sleep(wait)
            with self._lock:
                pause = self._not_before - time.monotonic()  # (this thread's rate limit, or another's)
            if pause > 0:
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with self._lock:
                self.requests += 1
            tries += 1
            wait = 0.0
            try:
                status, reply_headers, raw = self._exchange(body, headers, min(self.timeout_s, left))
            except _Retry as e:
                why = str(e)
                failures += 1
                limited = 0
                continue
            if 300 <= status < 400:
                raise RemoteError(self._redirect(status, reply_headers.get("location", "")))
            if status in RETRIED_STATUS:
                why = f"HTTP {status}{_brief(raw)}"
                asked = reply_headers.get("retry-after")
                wait = _retry_after(asked)
                if status == 429 or (status == 503 and asked is not None):
                    limited += 1
                else:
                    failures += 1
                    limited = 0
                continue
            if status != 200:
                raise RemoteError(f"{self.shown_url} answered HTTP {status}{_brief(raw)}")
            return self._vectors(raw, len(texts))
        if limited:
            raise RemoteError(
                f"{self.shown_url}: {why}: still rate-limited after {tries} tries and {rate_waited:g} s of waits; "
                "lower --embedder-concurrency or allow a longer --embedder-rate-wait (rows done are kept)"
            )
        raise RemoteError(f"{self.shown_url}: {why} after {tries} tries; is the embedding server up?")

    def _redirect(self, status: int, location: str) -> str:
        try:
            to = urllib.parse.urlsplit(urllib.parse.urljoin(self.url, location))
            where = shown_url(urllib.parse.urlunsplit(to))  # scheme://host:port: its path or query may hold a key
        except ValueError:
            where = "somewhere it does not say clearly"
        return (
            f"{self.shown_url} answered HTTP {status}, a redirect to {where}: v2t does not follow redirects, so "
            "that the key goes only where it was meant to; pass the URL it redirects to as --embedder-url"
        )

    # ------------------------------------------------------------------------------------------- the reply

    def _vectors(self, raw: bytes, n: int) -> np.ndarray:
        import numpy as np

        def bad(what: str) -> RemoteError:
            return RemoteError(f"{self.shown_url} answered {what}, not OpenAI-style embeddings of the {n} texts sent")

        try:
            reply = json.loads(raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; nesting past the stack
            raise bad("something else") from None
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise bad("JSON without a `data` list of objects")
        if len(data) != n:
            raise bad(f"{len(data)} rows")
        indices = [r.get("index") for r in data]
        if any(i is not None for i in indices):
            if not all(type(i) is int for i in indices):
                raise bad("rows whose `index` is missing or not an integer")
            if sorted(indices) != list(range(n)):
                raise bad(f"`index` values {_few(indices)} where 0..{n - 1} were due, each once")
            data = sorted(data, key=lambda r: r["index"])
        rows = [r.get("embedding") for r in data]
        if not all(isinstance(v, list) and v and all(type(x) in (int, float) for x in v) for v in rows):
            raise bad("rows without a list of numbers as `embedding`")
        if len({len(v) for v in rows}) != 1:
            raise bad("rows of different lengths")
        out = np.asarray(rows, np.float64)
        if not np.isfinite(out).all() or np.abs(out).max() > np.finfo(np.float32).max:
            raise bad("NaN, infinite or out-of-range numbers")
        if self.dimensions and out.shape[1] != self.dimensions:
            raise bad(f"{out.shape[1]}-dimensional vectors where dimensions={self.dimensions} was asked")
        with self._lock:
            if self.dim is not None and out.shape[1] != self.dim:
                raise bad(f"{out.shape[1]}-dimensional vectors after {self.dim}-dimensional ones")
            self.dim = out.shape[1]
        return out.astype(np.float32)

    def check_dim(self, dim: int) -> None:
        """One request: RemoteError unless the endpoint's vectors have `dim` dimensions (the bundle's)."""
        if self.dimensions and self.dimensions != dim:
            raise RemoteError(
                f"--embedder-dimensions {self.dimensions}: the model inverts {dim}-dimensional vectors; give "
                f"--embedder-dimensions {dim} or leave it out"
            )
        got = self(["dimension check"]).shape[1]
        if got != dim:
            raise RemoteError(
                f"{self.shown_url} ({self.model}) answers {got}-dimensional vectors; the model inverts "
                f"{dim}-dimensional ones: use the embedder the bundle was trained for"
            )


def _resolve(host: str, port: int, timeout_s: float) -> list:
    """`socket.getaddrinfo(host, port)` within `timeout_s` (asked in a thread of its own: the system's resolver
    takes no deadline, and a name that never resolves waited 33.7 s past a 2 s timeout)."""
    found: list = []

    def ask():
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            found.append(e)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(timeout_s)
    if not found:
        raise _Retry(f"timed out resolving the host name {host!r}")
    if isinstance(found[0], OSError):
        raise _Retry(f"cannot resolve the host name {host!r} ({found[0].strerror or found[0]})")
    return found[0]


def _connect(addresses: list, timeout_s: float | None, source=None) -> socket.socket:
    """A TCP connection to the first of the resolved `addresses` that answers (as socket.create_connection)."""
    error: OSError | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout_s)
            if source:
                sock.bind(source)
            sock.connect(address)
            return sock
        except OSError as e:
            error = e
            sock.close()
    raise error or OSError("no address to connect to")


def _retry_after(value: str | None) -> float:
    """The seconds a Retry-After header asks for (a number, or an HTTP date), 0 if it asks nothing readable."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value)) if math.isfinite(float(value)) else 0.0
    except ValueError:
        pass
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return 0.0


def _brief(body: bytes) -> str:
    text = body[:4096].decode("utf-8", errors="replace").strip().splitlines()
    return f": {one_line(text[0], limit=160)}" if text else ""


def _few(values: list) -> str:
    shown = ", ".join(repr(v) for v in values[:6])
    return f"[{shown}{', …' if len(values) > 6 else ''}]"


__all__ = ["RemoteEmbedder", "RemoteError", "DEFAULT_KEY_ENV", "DEFAULT_CONCURRENCY", "DEFAULT_RATE_WAIT_S"]
