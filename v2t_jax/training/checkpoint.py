"""Orbax checkpoints of a training run: the train state (params, optimizer state, step, rng) and the
data iterator position, saved together as one step.

Resume order (train.py): build the abstract state with its shardings -> find the latest *finished*
checkpoint (orbax writes to a temporary folder and renames it when complete, so a run killed mid-save
leaves the previous one as latest) -> restore the state into the abstract sharded target and the
iterator position -> continue at the restored step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import orbax.checkpoint as ocp

from v2t_jax.errors import brief as describe_error  # one line naming an exception


def manager(workdir: str | Path, keep: int = 3) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(_root(workdir) / "checkpoints", options=options, item_names=("state", "data"))


def _root(workdir):
    """The run folder: absolute on this machine, or its object-store path (`paths.run_folder`)."""
    from v2t_jax import paths

    folder = paths.run_folder(workdir)
    return folder if paths.is_remote(folder) else Path(folder).absolute()


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_state: dict) -> None:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))


class DamagedCheckpoints(RuntimeError):
    """No checkpoint of a run can be read; the message says which and what to do."""


def set_aside(workdir: str | Path, step: int) -> Path:
    """Moves a damaged step folder out of checkpoints/ (to damaged_checkpoints/<step>): kept, never read again."""
    src = _root(workdir) / "checkpoints" / str(step)
    dst = _root(workdir) / "damaged_checkpoints" / str(step)
    dst.parent.mkdir(exist_ok=True)
    n = 1
    while dst.exists():
        dst, n = dst.with_name(f"{step}.{n}"), n + 1
    src.rename(dst)
    return dst


def _newest_readable(steps, read: Callable[[int], Any], warn: Callable[[str], None] | None):
    """(what `read(step)` gives for the newest step that reads back, that step, the newer damaged steps); value
    and step None when none reads. Each damaged step is reported through `warn`."""
    damaged = []
    for step in sorted(steps, reverse=True):
        try:
            return read(step), step, damaged
        except Exception as e:  # orbax/tensorstore raise many kinds for unreadable files
            damaged.append(step)
            if warn:
                warn(f"checkpoint at step {step} is damaged ({describe_error(e)}); trying the one before")
    return None, None, damaged


def restore_latest(
    mngr: ocp.CheckpointManager, abstract_state: Any, warn: Callable[[str], None] | None = None
) -> tuple[Any, dict, int] | None:
    """The newest checkpoint that reads back whole, or None when there is none. A damaged newer one (a disk
    fault, a hand edit: orbax's own rename already covers a kill mid-save) is reported through `warn` and set
    aside, so that the run continues from the previous intact step and saves its steps again."""
    import jax
    from jax.experimental import multihost_utils

    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    restored, step, damaged = _newest_readable(mngr.all_steps(), lambda s: mngr.restore(s, args=args), warn)
    if step is None:
        if damaged:
            raise DamagedCheckpoints(
                f"no checkpoint in {mngr.directory} can be read (steps {', '.join(map(str, damaged))} are damaged); "
                "move that folder aside to start the run over"
            )
        return None
    if damaged:
        if jax.process_index() == 0:
            for bad in damaged:
                where = set_aside(mngr.directory.parent, bad)
                if warn:
                    warn(f"moved the damaged step {bad} to {where}; continuing from step {step}")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("v2t checkpoints set aside")
        mngr.reload()
    return restored["state"], dict(restored["data"]), step


def read_latest_as_numpy(
    workdir: str | Path, steps: list[int], warn: Callable[[str], None] | None = None
) -> tuple[dict, int]:
    """The newest of `steps` that reads back (see `read_state_as_numpy`), warning about each damaged one."""
    state, step, damaged = _newest_readable(steps, lambda s: read_state_as_numpy(workdir, s), warn)
    if step is None:
        raise DamagedCheckpoints(
            f"no checkpoint in {_root(workdir) / 'checkpoints'} can be read "
            f"(steps {', '.join(map(str, damaged))} are damaged)"
        )
    return state, step


def read_state_as_numpy(workdir: str | Path, step: int) -> dict:
    """A saved train state as host numpy arrays, whatever mesh or process count wrote it."""
    import jax
    import numpy as np

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns about metadata it does not need here
    path = _root(workdir) / "checkpoints" / str(step) / "state"
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = tree.tree if hasattr(tree, "tree") else tree
    args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
