"""Orbax checkpoints of a training run: the train state (params, optimizer state, step, rng) and the
data iterator position, saved together as one step.

Resume order (train.py): build the abstract state with its shardings -> find the latest *finished*
checkpoint (orbax writes to a temporary folder and renames it when complete, so a run killed mid-save
leaves the previous one as latest) -> restore the state into the abstract sharded target and the
iterator position -> continue at the restored step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


def manager(workdir: str | Path, keep: int = 3) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(
        Path(workdir).absolute() / "checkpoints", options=options, item_names=("state", "data")
    )


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_state: dict) -> None:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict, int] | None:
    step = mngr.latest_step()
    if step is None:
        return None
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
    )
    return restored["state"], dict(restored["data"]), step


def read_state_as_numpy(workdir: str | Path, step: int) -> dict:
    """A saved train state as host numpy arrays, whatever mesh or process count wrote it."""
    import jax
    import numpy as np

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns about metadata it does not need here
    path = Path(workdir).absolute() / "checkpoints" / str(step) / "state"
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = tree.tree if hasattr(tree, "tree") else tree
    args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
