"""Run folders on this machine or in an object store.

A training run's folder (`v2t train --workdir`, what `v2t export --workdir` reads) may be a local path or a
`gs://bucket/path` URL (and `s3://`), served by `etils.epath` through fsspec (gcsfs / s3fs) for files and by
TensorStore for checkpoint arrays: every host of a pod then reads and writes one place. Any other `scheme://` is
one line, never a local folder named after the scheme.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

from v2t_jax.errors import V2TError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SERVED = {"gs": "gcsfs", "s3": "s3fs"}  # scheme -> the fsspec package that serves it


class PathError(V2TError, ValueError):
    pass


def scheme(path: str | os.PathLike) -> str | None:
    """The URL scheme of `path` ("gs" for gs://bucket/x), or None for a path on this machine."""
    m = _SCHEME.match(str(path)) if isinstance(path, str) else None
    return m.group(1).lower() if m else None


def is_remote(path) -> bool:
    """Whether `path` (a string or a path object) lives in an object store."""
    return scheme(str(path)) is not None


def run_folder(path: str | os.PathLike, flag: str = "--workdir"):
    """`path` as a path object: `pathlib.Path` on this machine, `etils.epath.Path` in an object store (checked
    to be served: PathError in one line otherwise)."""
    name = scheme(str(path))
    if name is None:
        return Path(path)
    if name not in SERVED:
        raise PathError(f"{flag} {path}: {name}:// is not served; give a folder on this machine, gs:// or s3://")
    try:
        importlib.import_module(SERVED[name])
    except ImportError:
        raise PathError(
            f"{flag} {path}: {name}:// needs the {SERVED[name]} package: pip install {SERVED[name]}"
        ) from None
    from etils import epath

    return epath.Path(str(path))


def absolute(path) -> str:
    """`path` as the string a record keeps: absolute on this machine, the URL in an object store."""
    return str(path) if is_remote(path) else str(Path(path).absolute())
