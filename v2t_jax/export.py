"""`v2t export`: a model bundle (`v2t_jax.bundle`) from a `v2t train` run directory. Lives apart from the inference
API: it needs the training side (configs, checkpoints, the target vocabulary), which inference never does."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from v2t_jax import api, bundle, paths
from v2t_jax.training import checkpoint, tasks
from v2t_jax.bundle import ModelError


def export(
    workdir: str | os.PathLike,
    folder: str | os.PathLike,
    step: int | None = None,
    weights: str = "float32",
    inverter: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """A model bundle from a `v2t train` run directory (its latest checkpoint, or `step`): an inverter run gives
    an inverter-only bundle; a corrector run gives its inverter bundle's inverter + the trained corrector.
    `weights`: "float32", or "int8" (weight-only, per-row scales; see `encode_params`).
    inverter: for a corrector run, the bundle whose inverter goes into the export instead of the one the
    corrector trained on (a newer inverter trained alongside it: `experiments/gpu_continue.sh`); it must invert
    the same embedder at the same length. The bundle appears whole or not at all (`outputs.new_folder`: a
    `folder` already there is replaced only with `overwrite`, and kept if the new one cannot be written)."""
    try:
        workdir = paths.run_folder(workdir)  # (a local folder, or gs://… through etils.epath)
    except paths.PathError as e:
        raise ModelError(str(e)) from None
    bundle.check_weight_format(weights)  # before any loading
    if not (workdir / "config.json").exists():
        raise ModelError(f"{workdir} is not a v2t train run directory (no config.json)")
    try:
        config, trained_on = tasks.run_config(workdir, inverter)  # (checked before anything loads)
    except tasks.TrainingError as e:
        raise ModelError(str(e)) from None
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
    if not steps:
        raise ModelError(f"{workdir} has no finished checkpoint yet")
    explicit = step is not None
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ModelError(f"{workdir} has no checkpoint at step {step} (it has {', '.join(map(str, steps))})")
    try:
        task = tasks.load(config)  # an external vocabulary goes into the bundle (tokenizer.json)
    except tasks.TrainingError as e:
        raise ModelError(str(e)) from None
    try:
        if explicit:
            params = checkpoint.read_state_as_numpy(workdir, step)["params"]
        else:  # the newest step that reads back
            state, step = checkpoint.read_latest_as_numpy(
                workdir, steps, warn=lambda m: print(f"v2t export: {m}", file=sys.stderr)
            )
            params = state["params"]
    except checkpoint.DamagedCheckpoints as e:
        raise ModelError(str(e)) from None
    except Exception as e:  # a named step that does not read back
        why = checkpoint.describe_error(e)
        raise ModelError(f"the checkpoint at step {step} in {workdir} is damaged ({why})") from None
    try:
        model, provenance = task.export(params)
    except tasks.TrainingError as e:
        raise ModelError(str(e)) from None
    source = {"workdir": paths.absolute(workdir), "step": step, **provenance}
    if trained_on is not None:  # the corrector learned on another inverter's hypotheses: say which
        source["hypotheses_of"] = str(Path(trained_on).expanduser().absolute())
    api.check_params_fit(model)
    from v2t_jax import outputs

    with outputs.new_folder(folder, "export", overwrite, bundle.BUNDLE_FILES) as tmp:
        model.save(tmp, weights, extra={"source": source})
    return Path(folder)
