"""A black-box embedder behind an OpenAI-compatible `/v1/embeddings` endpoint, for the host-side search
(`correction.invert_host`): `RemoteEmbedder(url, model)(texts) -> float32 [n, D]`.

What an attacker who can only query an embedding API has: the inverter and corrector come from a bundle trained
for that embedder, and every hypothesis is re-embedded by the API. Requests are JSON `{"model", "input"}` of at
most `batch_size` texts; the answer's `data[i].embedding` (ordered by `index`) are the vectors. The API key, if
any, is read from an environment variable (never from the command line, where `ps` shows it) and sent as
`Authorization: Bearer`. Timeouts, connection failures, 429 and 5xx answers are retried with exponential
backoff; any other failure, an answer that is not the vectors asked for, or running out of retries is one
`RemoteError` line.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np

DEFAULT_KEY_ENV = "V2T_EMBEDDER_API_KEY"
RETRIED_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class RemoteError(RuntimeError):
    """The endpoint is down, refuses, or answers something that is not the embeddings asked for."""


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
    ):
        if not url.startswith(("http://", "https://")):
            raise RemoteError(f"embedder URL {url!r} must start with http:// or https://")
        if batch_size < 1 or timeout_s <= 0 or retries < 0:
            raise RemoteError("batch size must be >= 1, timeout > 0 and retries >= 0")
        self.url = url if url.rstrip("/").endswith("/embeddings") else url.rstrip("/") + "/v1/embeddings"
        self.model = model
        self.key = os.environ.get(api_key_env) or None
        self.batch_size, self.timeout_s, self.retries, self.backoff_s = batch_size, timeout_s, retries, backoff_s
        self.requests = 0  # sent, retries included
        self.dim: int | None = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        texts = list(texts)
        chunks = [self._post(texts[s : s + self.batch_size]) for s in range(0, len(texts), self.batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim or 0), np.float32)

    def _post(self, texts: list[str]) -> np.ndarray:
        body = json.dumps({"model": self.model, "input": texts}).encode()
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        why = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.requests += 1
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as e:
                detail = _brief(e.read())
                if e.code not in RETRIED_STATUS:
                    raise RemoteError(f"{self.url} answered HTTP {e.code}{detail}") from None
                why = f"HTTP {e.code}{detail}"
                continue
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                why = "timed out" if isinstance(reason, TimeoutError) else f"unreachable ({reason})"
                continue
            return self._vectors(raw, len(texts))
        raise RemoteError(f"{self.url}: {why} after {self.retries + 1} tries; is the embedding server up?")

    def _vectors(self, raw: bytes, n: int) -> np.ndarray:
        import numpy as np

        def bad(what: str) -> RemoteError:
            return RemoteError(f"{self.url} answered {what}, not OpenAI-style embeddings of the {n} texts sent")

        try:
            data = json.loads(raw)["data"]
            rows = sorted(data, key=lambda r: r.get("index", 0)) if all(isinstance(r, dict) for r in data) else None
        except (ValueError, KeyError, TypeError):
            raise bad("something else") from None
        if rows is None or len(rows) != n:
            raise bad(f"{len(data) if isinstance(data, list) else 'no'} rows")
        try:
            out = np.asarray([r["embedding"] for r in rows], np.float64)
        except (KeyError, TypeError, ValueError):
            raise bad("rows without a numeric `embedding`") from None
        if out.ndim != 2 or out.shape[1] == 0:
            raise bad("rows of different lengths")
        if not np.isfinite(out).all() or np.abs(out).max() > np.finfo(np.float32).max:
            raise bad("NaN, infinite or out-of-range numbers")
        if self.dim is not None and out.shape[1] != self.dim:
            raise bad(f"{out.shape[1]}-dimensional vectors after {self.dim}-dimensional ones")
        self.dim = out.shape[1]
        return out.astype(np.float32)

    def check_dim(self, dim: int) -> None:
        """One request: RemoteError unless the endpoint's vectors have `dim` dimensions (the bundle's)."""
        got = self(["dimension check"]).shape[1]
        if got != dim:
            raise RemoteError(
                f"{self.url} ({self.model}) answers {got}-dimensional vectors; the model inverts {dim}-dimensional "
                "ones: use the embedder the bundle was trained for"
            )


def _brief(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip().splitlines()
    return f": {text[0][:160]}" if text else ""


__all__ = ["RemoteEmbedder", "RemoteError", "DEFAULT_KEY_ENV"]
