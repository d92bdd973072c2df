"""Where v2t writes, and how: every output is a regular file (or a path that does not exist yet), written whole,
by one run at a time, as strict JSON.

- `check_file` / `check_folder` before any work: an output that exists without --overwrite, that is a directory,
  a symbolic link, a device, a FIFO or a socket, that sits under a regular file, or in a folder that is
  read-only or full, is one `OutputError` line. A symbolic link is refused rather than renamed over (the link
  would become a file; a link to `/dev/stdout` or a device would be replaced).
- `write_atomic`: into a temporary file beside the output, then renamed into place with the mode the replaced
  file had (or the umask's); nothing is left behind on failure.
- `lock`: one writer per output. A second run on the same output stops at once with the holder's pid; the lock
  goes with the process, so a killed run never leaves its output locked.
- `dumps`: JSON that strict parsers read (no NaN or Infinity: a number that is not finite is written `null`).
- `RowStream`: rows streamed in order to OUTPUT.partial, synced per batch, and resumed after an interruption.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from v2t_jax import assets
from v2t_jax.errors import V2TError

_PROBE_BYTES = 64 * 1024  # what a folder must take before any work starts (a full disk is found here)


class OutputError(V2TError, ValueError):
    """An output that cannot or must not be written; the message says what to do."""


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


class InputError(V2TError, ValueError):
    """An input that is not there or not a file v2t reads; the message says what to do."""


def input_file(path: str | os.PathLike, what: str = "input") -> Path:
    """`path`, checked to be a regular file (a link to one is fine) before anything reads it: a FIFO, device or
    socket given as an input would make a read wait forever or never end (/dev/zero), so it is one line."""
    path = Path(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise InputError(f"cannot read {what} {path} ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{what} {path} is a directory; pass a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} {path} is {file_kind(st.st_mode)}, not a regular file: v2t reads inputs from files "
                         "(save the stream to a file first)")  # fmt: skip
    return path


def check_regular(path: Path, what: str = "output") -> bool:
    """True if `path` is a regular file, False if nothing is there; OutputError for anything else (a link is not
    followed: v2t would rename a finished file over it)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # (a file on the way is for the caller to name)
        return False
    except OSError as e:
        raise OutputError(f"cannot use {what} {path} ({e.strerror or e})") from None
    if stat.S_ISREG(st.st_mode):
        return True
    hint = "pass a file path"
    if stat.S_ISLNK(st.st_mode):
        try:
            to = os.stat(path).st_mode
            hint = f"pass the file it points to ({os.path.realpath(path)})" if stat.S_ISREG(to) else (
                f"it points to {file_kind(to)}; pass a file path")  # fmt: skip
        except OSError:
            hint = "it points to nothing; pass a file path"
    raise OutputError(f"{what} {path} is {file_kind(st.st_mode)}, not a regular file: {hint}")


def _errno_words(e: OSError) -> str:
    if e.errno == errno.EROFS:
        return "the file system is read-only"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    return e.strerror or str(e)


def probe(folder: Path, what: str) -> None:
    """OutputError unless `folder` takes a new file of `_PROBE_BYTES` (read-only, full or unwritable folders are
    found before any work)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".v2t-probe-{os.getpid()}-") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputError(f"cannot write {what}: {_errno_words(e)} in {folder}") from None


_NAME_ROOM = 48  # bytes v2t adds to an output's name for its temporary, partial, lock and state files


def check_name(path: Path, what: str) -> None:
    """OutputError unless every part of `path` fits the file system's name limit, with room for the temporary,
    partial and lock files v2t names after an output (`.NAME.tmp-PID-...`, `NAME.partial.json`)."""
    try:
        limit = os.pathconf(_nearest_existing(path.absolute()), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    parts = path.absolute().parts
    too_long = next((p for p in parts[:-1] if len(os.fsencode(p)) > limit), None)
    if too_long is not None:
        raise OutputError(f"cannot write {what}: a folder name on its path is {len(os.fsencode(too_long))} bytes, "
                          f"past the file system's {limit}")  # fmt: skip
    n = len(os.fsencode(path.name))
    if n + _NAME_ROOM > limit:
        raise OutputError(f"the {what}'s name is {n} bytes long; the file system allows {limit}, and v2t needs "
                          f"{_NAME_ROOM} of them for its temporary files: pick a name of at most "
                          f"{limit - _NAME_ROOM} bytes")  # fmt: skip


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        try:
            if candidate.is_dir():
                return candidate
        except OSError:
            continue
    return Path("/")


def _existing_parent(path: Path, what: str) -> Path:
    """The folder `path` would be made in: its nearest existing ancestor, which must be a directory."""
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():
            raise OutputError(f"cannot write {what} {path}: {parent} is a broken symbolic link")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is a file, not a folder")
    return parent


def check_file(
    path: str | os.PathLike, overwrite: bool, inputs: Sequence[str | os.PathLike] = (), what: str = "output"
) -> Path:
    """Fails early (before any work) if the output file cannot or must not be written, or is one of `inputs`."""
    path = Path(path)
    check_name(path, what)
    for inp in inputs:
        if path.exists() and Path(inp).exists() and os.path.samefile(path, inp):
            raise OutputError(f"{what} {path} is the input {inp}; write the {what} to another path")
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{what} {path} is a directory; pass a file path such as vectors.npy")
    exists = check_regular(path, what)
    if exists and not overwrite:
        raise OutputError(f"{what} {path} already exists; pass --overwrite to replace it")
    parent = path.parent
    if not parent.is_dir():
        _existing_parent(path, what)  # a file on the way is named as such
        raise OutputError(f"cannot write {path}: directory {parent} does not exist")
    probe(parent, str(path))
    return path


def check_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Fails early if the folder `path` (made by the run, with its parents) cannot be made or written."""
    path = Path(path)
    check_name(path, what)
    if path.is_symlink() and not path.is_dir():
        raise OutputError(f"{what} {path} is a broken symbolic link; pass a folder")
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"{path} is a file; pass a folder for the {what.removesuffix(' folder')}")
        probe(path, f"in {path}")
    else:
        probe(_existing_parent(path, what), str(path))
    return path


def mode_for(path: Path) -> int:
    """The mode an output gets: the replaced file's, or for a new file what the umask allows of 0666 (mkstemp
    creates its temporary file 0600 whatever the umask)."""
    return path.stat().st_mode & 0o7777 if check_regular(path) else assets.new_file_mode()


def write_atomic(path: Path, write: Callable[[Any], None], binary: bool) -> None:
    """write(file) into a temporary file beside `path`, then renamed into place with `mode_for`'s mode; nothing
    is left behind on failure, and nothing but a regular file (or nothing) at `path` is ever replaced."""
    path = Path(path)
    mode = mode_for(path)
    parent = path.parent
    assets.sweep_stale(parent, f".{path.name}.", ".")  # what a killed run left beside this output
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        check_regular(path)  # (again: it may have changed while the work ran)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text), binary=False)


def save_npy_atomic(path: Path, array) -> None:
    import numpy as np

    write_atomic(path, lambda f: np.save(f, array), binary=True)


# ----------------------------------------------------------------------------------------------- strict JSON


def finite(value: Any) -> Any:
    """`value` with every float that is not finite (NaN, ±inf) made None, through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(obj: Any, **kw) -> str:
    """Strict JSON (RFC 8259): a number that is not finite is written null, never NaN or Infinity."""
    return json.dumps(finite(obj), ensure_ascii=False, allow_nan=False, **kw)


# ----------------------------------------------------------------------------------------------- one writer


def lock_path(output: Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


@contextlib.contextmanager
def lock(output: Path, command: str) -> Iterator[None]:
    """One run per output: an advisory lock on `.OUTPUT.lock` beside it (with the holder's pid) for the whole
    run; a second run on the same output stops with a one-line OutputError. The lock file is removed when the
    run ends; one a killed run left holds no lock and is taken over."""
    path = lock_path(output)
    while True:
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise OutputError(f"{path} (the lock of {output}) is not a regular file; remove it")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise OutputError(f"cannot lock {output} ({_errno_words(e)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(
                f"{output} is being written by another v2t {command} (pid {holder}); wait for it to end or pass "
                "another --output"
            ) from None
        try:  # the file locked may have been removed by the run that held it: lock the one at `path`
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still locked: a waiting run then finds no file, or a new one
        os.close(fd)


def check_new_folder(
    output: str | os.PathLike, command: str, overwrite: bool = False, replaceable: Sequence[str] = ()
) -> Path:
    """OutputError unless `new_folder` may write `output` (its rules; a command calls this before any work too)."""
    output = Path(output)
    check_name(output, "output folder")
    try:
        st = os.lstat(output)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"cannot use {output} ({_errno_words(e)})") from None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{output} is {file_kind(st.st_mode)}, not a folder: pass a new folder for the {command}")
    try:
        held = sorted(p.name for p in output.iterdir()) if st is not None else []
    except OSError as e:
        raise OutputError(f"cannot use {output} ({_errno_words(e)})") from None
    if held and not overwrite:
        raise OutputError(f"{output} exists and is not empty; pass --overwrite to replace it, or a new folder")
    other = next((name for name in held if name not in replaceable), None)
    if other is not None:
        raise OutputError(f"{output} holds {other}, which v2t did not write there; --overwrite replaces a folder "
                          "of v2t's own only: move it, or give another folder")  # fmt: skip
    return output


@contextlib.contextmanager
def new_folder(
    output: str | os.PathLike, command: str, overwrite: bool = False, replaceable: Sequence[str] = ()
) -> Iterator[Path]:
    """A folder output (a bundle, vec2text checkpoints) that appears whole or not at all, with the rules of every
    output: `output` may not be a link, file, device or FIFO, nor a folder with something in it unless
    `overwrite`; one run per output (`lock`). Yields a new folder beside it (`.NAME.v2t-PID-...`, made here, its
    modes the umask's) to write into; when the block ends without error it is renamed to `output` (a folder
    there is first renamed aside and removed only once the new one is in place: a failure never costs the old
    one); it may hold only the files named in `replaceable` (what v2t writes there), so that nothing else of the
    user's is replaced with it. On any error the folder made here is removed and nothing else is touched: nothing
    of the user's (a `NAME.partial` of their own included) is ever deleted."""
    output = check_new_folder(output, command, overwrite, replaceable)
    parent = output.absolute().parent
    existing = _existing_parent(output.absolute(), "output folder")
    probe(existing, str(output))
    parent.mkdir(parents=True, exist_ok=True)
    try:
        with _folder_made(output, command, parent) as tmp:
            yield tmp
    except BaseException:
        for folder in (parent, *parent.parents):  # the folders made for it, if nothing else went in them
            if folder == existing:
                break
            try:
                folder.rmdir()
            except OSError:
                break
        raise


@contextlib.contextmanager
def _folder_made(output: Path, command: str, parent: Path) -> Iterator[Path]:
    """`new_folder`'s work once its checks pass: the lock, the folder beside `output`, the renames."""
    stem = f".{output.name}.v2t-"
    assets.sweep_stale(parent, stem, "-")  # (what a killed run of this kind left)
    with lock(output, command):
        tmp = Path(tempfile.mkdtemp(prefix=f"{stem}{os.getpid()}-", dir=parent))
        os.chmod(tmp, 0o777 & ~assets.umask())
        aside = None
        try:
            yield tmp
            if output.exists():
                aside = parent / f"{stem}old-{os.getpid()}"  # (not swept: after a crash here it is the old one)
                os.rename(output, aside)
            os.rename(tmp, output)
        except BaseException:
            if aside is not None and not output.exists():
                os.rename(aside, output)  # (the old one back where it was)
                aside = None
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)


def fix_modes(folder: Path) -> None:
    """Every file under `folder` given the mode the umask allows of 0666 (safetensors and mkstemp write 0600)."""
    mode = assets.new_file_mode()
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)


# ----------------------------------------------------------------------------------------------- streamed rows


def _no_follow(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW, 0o666)


class RowStream:
    """JSON lines written in order to OUTPUT.partial as batches finish, with OUTPUT.partial.json naming the run
    (inputs and settings); `done` rows are on disk (whole batches: a torn last batch is cut off) and a rerun of
    the same run continues after them. `finish` renames the rows into place with the output's mode.

    `complete`: OUTPUT is there already with the state of this same run beside it (a run stopped after its rows
    and before what it does with them, e.g. `v2t audit`'s report); the caller only finishes that part."""

    def __init__(self, output: Path, run: dict, batch: int, command: str):
        self.output, self.run, self.command = Path(output), run, command
        self.partial, self.state = self.paths(self.output)
        self.done = 0
        self.complete = False
        has_state, has_partial = check_regular(self.state), check_regular(self.partial)
        if not (has_state or has_partial):
            return
        try:
            saved = json.loads(self.state.read_text())
        except (OSError, ValueError):
            saved = None
        if saved != json.loads(dumps(run)):
            raise OutputError(
                f"{self.partial} holds an interrupted run of other inputs or settings; rerun that command to "
                f"finish it, or delete {self.partial} and {self.state}"
            )
        if not has_partial and check_regular(self.output):
            self.complete = True
            with self.output.open("rb") as f:
                self.done = sum(1 for _ in f)
            return
        lines = self.partial.read_bytes().split(b"\n") if has_partial else [b""]
        whole = len(lines) - 1  # the last piece has no newline: empty, or a torn row
        self.done = whole - whole % batch
        damaged = next((i for i, line in enumerate(lines[: self.done]) if not _is_row(line)), None)
        if damaged is not None:  # a row changed on disk is computed again, never copied into the output
            self.done = damaged - damaged % batch
            print(f"v2t {command}: row {damaged + 1} of {self.partial} is damaged (not a JSON object); its batch "
                  "and the rows after it are computed again", file=sys.stderr)  # fmt: skip
        if has_partial:
            with open(self.partial, "r+b") as f:
                f.truncate(sum(len(x) + 1 for x in lines[: self.done]))
        print(f"v2t {command}: resuming after the {self.done} rows in {self.partial}", file=sys.stderr)

    @staticmethod
    def paths(output: Path) -> tuple[Path, Path]:
        """(OUTPUT.partial, OUTPUT.partial.json)."""
        return output.with_name(output.name + ".partial"), output.with_name(output.name + ".partial.json")

    @staticmethod
    def check(output: Path) -> None:
        """OutputError unless the stream's files are regular files or missing (before any work)."""
        for path, what in zip(RowStream.paths(Path(output)), ("partial output", "state file")):
            check_regular(path, what)

    def append(self, rows: list[dict]) -> None:
        try:
            self._save_state()
            check_regular(self.partial, "partial output")
            with open(self.partial, "a", encoding="utf-8", opener=_no_follow) as f:
                f.write("".join(dumps(r) + "\n" for r in rows))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OutputError(
                f"cannot write {self.partial} ({e.strerror or e}); the {self.done} rows done are kept: free space "
                "and rerun the same command to continue"
            ) from None
        self.done += len(rows)

    def kept(self, e: Exception, what: str = "rows") -> Exception:
        """`e` of the same kind, its message ending with what stays of this run for its rerun."""
        return type(e)(f"{e}; the {self.done} {what} done are kept: rerun the same command to continue")

    def finish(self, keep_state: bool = False) -> None:
        """OUTPUT.partial becomes OUTPUT; the run's state is removed unless `keep_state` (the caller still has
        work to do with the rows, and removes it with `close`)."""
        if self.complete:
            return
        if not check_regular(self.partial, "partial output"):  # no rows at all
            write_text_atomic(self.partial, "")
        self._save_state()
        os.chmod(self.partial, mode_for(self.output))
        check_regular(self.output)
        os.replace(self.partial, self.output)
        if not keep_state:
            self.close()

    def _save_state(self) -> None:
        """OUTPUT.partial.json names the run, written once before its first rows (or before an empty finish)."""
        if not check_regular(self.state, "state file"):
            write_text_atomic(self.state, dumps(self.run) + "\n")

    def close(self) -> None:
        self.state.unlink(missing_ok=True)

    def rows(self) -> list[dict]:
        """The output's rows; OutputError naming the first that is not a JSON object (changed on disk)."""
        return list(self.iter_rows())

    def iter_rows(self):
        """The output's rows one at a time (read line by line: a long output is never whole in memory);
        OutputError at the first that is not a JSON object (changed on disk)."""
        with self.output.open("rb") as f:
            for i, line in enumerate(f):
                if not line.endswith(b"\n"):
                    break  # (a torn last piece: `finish` writes whole lines)
                row = _row(line)
                if row is None:
                    raise OutputError(f"row {i + 1} of {self.output} is damaged (not a JSON object); delete "
                                      f"{self.output} and rerun the command")  # fmt: skip
                yield row

    def last_row(self) -> dict:
        """The last of the `done` rows written so far (OUTPUT.partial, else OUTPUT), {} if none."""
        path = self.partial if check_regular(self.partial) else self.output
        last = b""
        with path.open("rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    last = line
        return _row(last) or {}


def _row(line: bytes) -> dict | None:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return None
    return row if isinstance(row, dict) else None


def _is_row(line: bytes) -> bool:
    return _row(line) is not None


__all__ = ["OutputError", "check_file", "check_folder", "check_regular", "write_atomic", "write_text_atomic",
           "save_npy_atomic", "dumps", "finite", "lock", "RowStream"]  # fmt: skip
