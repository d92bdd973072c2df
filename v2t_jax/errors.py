"""The one base class of every error v2t explains in one line, and the secrets no message may carry.

Each module keeps its own error class (`bundle.ModelError`, `stores.StoreError`, `remote.RemoteError`, ...); they
all derive from `V2TError`, so `v2t` prints any of them that reaches it as `v2t <command>: error: <message>`
with exit status 2, never as a traceback. Whatever is registered with `add_secret` (an API key) is replaced by
`***` in every such message (`redact`). Stdlib only: `v2t --help` stays fast.
"""

from __future__ import annotations

import urllib.parse

REDACTED = "***"
_SECRETS: set[str] = set()


class V2TError(Exception):
    """An error whose message is one line that says what is wrong and what to do."""


class ModelError(V2TError, ValueError):
    """A bundle is missing, incomplete, damaged or does not fit the input; the message says what to do
    (`bundle.ModelError`, `api.ModelError`: defined here so that stdlib-only modules can raise it)."""


def add_secret(secret: str | None) -> None:
    """`secret` (and its URL-quoted forms) never appears in a message that goes through `redact`."""
    if secret:
        _SECRETS.update({secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)})


def redact(text: str) -> str:
    for secret in sorted(_SECRETS, key=len, reverse=True):  # longest first: a quoted form may contain the raw one
        text = text.replace(secret, REDACTED)
    return text


def one_line(text: str, limit: int = 400) -> str:
    """`text` redacted, its control characters (a server's newlines, escape sequences) shown as spaces, cut."""
    text = "".join(c if c.isprintable() else " " for c in redact(str(text))).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["V2TError", "ModelError", "add_secret", "redact", "one_line", "REDACTED"]
