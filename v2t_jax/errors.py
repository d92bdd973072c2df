"""The one base class of every error v2t explains in one line, and the secrets no message may carry.

Each module keeps its own error class (`bundle.ModelError`, `stores.StoreError`, `remote.RemoteError`, ...); they
all derive from `V2TError`, so `v2t` prints any of them that reaches it as `v2t <command>: error: <message>`
with exit status 2, never as a traceback. Whatever is registered with `add_secret` (an API key) is replaced by
`***` in every such message (`redact`). Stdlib only: `v2t --help` stays fast.
"""

from __future__ import annotations

import json
import re
import urllib.parse

REDACTED = "***"
_SECRETS: set[str] = set()
_SHORT = 8  # a secret shorter than this is redacted where it stands alone (not inside a longer word)


class V2TError(Exception):
    """An error whose message is one line that says what is wrong and what to do."""


class TrainingError(V2TError, RuntimeError):
    """A training run cannot start or continue; the message says what to do."""


class ModelError(V2TError, ValueError):
    """A bundle is missing, incomplete, damaged or does not fit the input; the message says what to do
    (`bundle.ModelError`, `api.ModelError`: defined here so that stdlib-only modules can raise it)."""


def brief(e: Exception) -> str:
    """One line naming an exception: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def add_secret(secret: str | None) -> None:
    """`secret` never appears in a message that goes through `redact`, nor in the forms a server echoes it in:
    URL-quoted, JSON-escaped (`\\"`, `\\\\`, `\\/` for `/`, `\\uXXXX`). No length lets one through: a secret
    shorter than 8 characters is redacted wherever it stands alone (not inside a longer word, so a one-letter
    query value does not blank every such letter of a message)."""
    if secret:
        escaped = json.dumps(secret)[1:-1]
        _SECRETS.update({
            secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret), urllib.parse.quote(secret),
            escaped, escaped.replace("/", "\\/"), json.dumps(secret, ensure_ascii=False)[1:-1],
        })  # fmt: skip


def redact(text: str) -> str:
    for secret in sorted(_SECRETS, key=len, reverse=True):  # longest first: a quoted form may contain the raw one
        if len(secret) >= _SHORT:
            text = text.replace(secret, REDACTED)
        else:
            text = re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", REDACTED, text)
    return text


def add_url_secrets(url: str | None) -> None:
    """Everything of an endpoint URL but its scheme, host and port is secret-bearing (a key may be in its
    userinfo, path or query): each part, each path segment and each query value is registered (`add_secret`),
    so no message shows it. Call before anything is written or printed."""
    if not isinstance(url, str) or not url:
        return
    try:
        parts = urllib.parse.urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    except ValueError:
        return add_secret(url)  # (refused where it is parsed; the whole URL is kept out of messages)
    own = [segment for segment in parts.path.split("/") if segment not in _API_WORDS]
    if own or parts.query or parts.fragment or userinfo:
        add_secret(url)
    for secret in (userinfo, *userinfo.split(":"), parts.query, parts.fragment):
        add_secret(secret)
    if own or parts.query:  # (a path of the API's own words alone holds nothing secret)
        add_secret(parts.path)
        add_secret(parts.path.rstrip("/") + (f"?{parts.query}" if parts.query else ""))
    for segment in own:
        add_secret(segment)
        add_secret(urllib.parse.unquote(segment))
    for _, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        add_secret(value)


_API_WORDS = {"", "v1", "embeddings"}  # path segments every embeddings endpoint has: not secrets


def shown_url(url: str) -> str:
    """What a message, report or state file may say of an endpoint URL: scheme://host:port, and its path where
    that is the API's own words alone (`/v1/embeddings`), else `/…` (a path or query may hold a key)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an endpoint URL that does not parse"
    host = f"[{host}]" if ":" in host else host
    plain = all(segment in _API_WORDS for segment in parts.path.split("/"))  # (/v1/embeddings: nothing secret)
    rest = parts.path if plain and not (parts.query or parts.fragment) else "/…"
    return f"{parts.scheme}://{host}{port}{rest}"


def one_line(text: str, limit: int = 400) -> str:
    """`text` redacted, its control characters (a server's newlines, escape sequences) shown as spaces, cut."""
    text = "".join(c if c.isprintable() else " " for c in redact(str(text))).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["V2TError", "ModelError", "add_secret", "add_url_secrets", "shown_url", "redact", "one_line", "REDACTED"]
