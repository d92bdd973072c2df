"""The `v2t` command.

    v2t embed --embedder all-MiniLM-L6-v2 --input texts.txt --output vectors.npy [--max-length 32]

Every user error is one line on stderr, `v2t <command>: error: ...`, with exit status 2;
nothing is written unless the whole job succeeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence


class UsageError(Exception):
    """A problem with the user's input; printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- input / output helpers


def read_texts(path: str | os.PathLike) -> list[str]:
    """One text per line (blank lines skipped), or `.jsonl` objects with a `text` field."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"input file {path} does not exist")
    if path.is_dir():
        raise UsageError(f"input {path} is a directory; pass a .txt or .jsonl file")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"input {path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    texts: list[str] = []
    if path.suffix.lower() == ".jsonl":
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise UsageError(f'{path}:{lineno}: expected an object with a string field "text"')
            texts.append(obj["text"])
    else:
        texts = [line for line in raw.splitlines() if line.strip()]
    if not texts:
        raise UsageError(f"input file {path} holds no texts")
    return texts


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fails early (before any work) if the output cannot or must not be written."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"output {path} is a directory; pass a file path such as vectors.npy")
    if path.exists() and not overwrite:
        raise UsageError(f"output {path} already exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: directory {parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".v2t-probe-"):
            pass
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from e
    return path


def save_npy_atomic(path: Path, array) -> None:
    """Writes to a temporary file beside `path`, then renames it into place."""
    import numpy as np

    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- commands


def cmd_embed(args: argparse.Namespace) -> int:
    if args.max_length < 2:
        raise UsageError(f"--max-length must be at least 2 tokens, got {args.max_length}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    texts = read_texts(args.input)
    output = check_output(args.output, args.overwrite)

    from v2t_jax import assets
    from v2t_jax.models import embedders

    try:
        embedder = embedders.load_embedder(args.embedder, cache_dir=args.cache_dir, head=args.head)
    except assets.AssetError as e:
        raise UsageError(str(e)) from e
    except (ValueError, KeyError, OSError) as e:
        raise UsageError(f"cannot load embedder {args.embedder!r}: {e}") from e
    if embedder.config.max_positions is not None and args.max_length > embedder.config.max_positions:
        raise UsageError(
            f"--max-length {args.max_length} exceeds the embedder's {embedder.config.max_positions} positions"
        )
    t0 = time.perf_counter()
    vectors = embedder.embed_texts(
        texts, max_length=args.max_length, batch_size=args.batch_size, progress=not args.quiet
    )
    elapsed = time.perf_counter() - t0
    save_npy_atomic(output, vectors.astype("float32"))
    if not args.quiet:
        print(
            f"v2t embed: wrote {output} [{vectors.shape[0]}, {vectors.shape[1]}] float32 "
            f"({len(texts) / elapsed:.1f} texts/s incl. compile)",
            file=sys.stderr,
        )
    return 0


# ----------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other usage error
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="v2t", description="vec2text in JAX: invert text embeddings back to text.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("embed", help="embed texts with a sentence embedder (JAX)")
    e.add_argument(
        "--embedder", default="all-MiniLM-L6-v2", help="packaged name, local folder or hub id (default: %(default)s)"
    )
    e.add_argument(
        "--input",
        required=True,
        help="text file (one text per line; blank lines skipped) or .jsonl with a 'text' field",
    )
    e.add_argument("--output", required=True, help="where to write float32 [N, D] vectors (.npy)")
    e.add_argument(
        "--max-length",
        type=int,
        default=32,
        help="truncate to this many embedder tokens (default: %(default)s, as in the paper)",
    )
    e.add_argument("--batch-size", type=int, default=128, help="texts per jitted batch (default: %(default)s)")
    e.add_argument(
        "--head",
        choices=["auto", "none", "normalize"],
        default="auto",
        help="pooling head: auto follows the folder's modules.json; none = mean pooling only (vec2text's GTR)",
    )
    e.add_argument(
        "--cache-dir", default=None, help="where fetched weights live (default: $V2T_CACHE_DIR or ~/.cache/v2t_jax)"
    )
    e.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    e.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    e.set_defaults(func=cmd_embed)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"v2t {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"v2t {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
