"""`--profile DIR`: a `jax.profiler` trace of a window of a run's steps, viewable in TensorBoard's profile plugin
(`tensorboard --logdir DIR`) or Perfetto (`DIR/plugins/profile/<run>/*.xplane.pb`, `*.trace.json.gz`).

    with profiling.trace(folder):            # everything inside
    window = profiling.Window(folder, first=2, count=3)
    for i, batch in enumerate(batches):
        window.step(i)                       # starts at step `first` (after the compile), stops `count` steps later
        ...
    window.close()                           # (or a `with` block) ends a window the run stopped inside
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import jax

from v2t_jax.errors import V2TError


class ProfileError(V2TError, ValueError):
    pass


def check_folder(folder: str | None) -> Path | None:
    """--profile's folder, made (a file there, or one that cannot be made, is one line before any work)."""
    if folder is None:
        return None
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ProfileError(f"--profile {folder}: not a folder; give a folder for the trace") from None
    except OSError as e:
        raise ProfileError(f"--profile {folder}: cannot make it ({e.strerror or e})") from None
    return path


@contextlib.contextmanager
def trace(folder: str | Path | None):
    """A trace of everything run inside, written under `folder`; nothing when folder is None."""
    if folder is None:
        yield
        return
    with jax.profiler.trace(str(folder)):
        yield


class Window:
    """A trace of steps first .. first + count - 1 of a loop (`step(i)` called before each step; `close()` at the
    end, which also ends a window the loop left early). folder None: nothing."""

    def __init__(self, folder: str | Path | None, first: int, count: int):
        self.folder, self.first, self.count = folder, first, count
        self.on = self.done = False

    def step(self, i: int) -> None:
        if self.folder is None or self.done:
            return
        if not self.on and i >= self.first:
            jax.profiler.start_trace(str(self.folder))
            self.on = True
        elif self.on and i >= self.first + self.count:
            self.close()

    def close(self) -> None:
        if self.on:
            jax.profiler.stop_trace()
            self.on, self.done = False, True

    def __enter__(self) -> "Window":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
