"""Inference on every device of a host: one `data` mesh axis over the process's own devices.

Inversion and embedding are row-wise: no row's result depends on another's. So each device runs the very program
one device would run, on its own slice of the rows (`jax.shard_map` over the `data` axis, parameters replicated
once per mesh): nothing crosses devices inside the program, and a row's text is the one a single device gives.
Under `--distributed` each process inverts its own share of the input with its own devices (`process_share`); the
training mesh, which does cross hosts, is `v2t_jax.training.sharding`'s.

    mesh = parallel.local_mesh()             # every local device (or the first n: local_mesh(n))
    fn = parallel.rows_map(f, mesh)          # f(replicated, rows) on each device's rows; batch padded by the caller
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from v2t_jax.errors import V2TError, brief

AXIS = "data"


class DeviceError(V2TError, ValueError):
    pass


def local_mesh(devices: int | None = None) -> Mesh:
    """A one-axis (`data`) mesh over this process's devices: all of them, or the first `devices`."""
    return _local_mesh(devices if devices is None else int(devices))


@functools.lru_cache(maxsize=None)
def _local_mesh(devices: int | None) -> Mesh:
    local = jax.local_devices()
    if devices is not None:
        if not 1 <= devices <= len(local):
            raise DeviceError(
                f"--devices {devices}: this process has {len(local)} {local[0].platform.upper()} device(s); "
                f"give 1 to {len(local)}"
            )
        local = local[:devices]
    return jax.make_mesh((len(local),), (AXIS,), axis_types=(AxisType.Auto,), devices=local)


def size(mesh: Mesh) -> int:
    return int(mesh.devices.size)


def round_up(n: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh's device count that holds n rows (a batch every device gets a share of)."""
    d = size(mesh)
    return -(-n // d) * d


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """x with copies of its last row appended up to `rows` rows (rows that are computed and dropped)."""
    m = len(x)
    return x if m >= rows else np.concatenate([x, np.repeat(x[-1:], rows - m, axis=0)])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """`tree`'s arrays placed whole on every device of `mesh` (once: a program reads them where they are)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def _row_spec(axis: int) -> P:
    return P(*([None] * axis), AXIS)


def rows_map(fn: Callable, mesh: Mesh, out_axis: Callable[[str], int] = lambda name: 0) -> Callable:
    """fn(replicated, rows) -> outputs, run by every device of `mesh` on its slice of `rows` (a tuple of arrays
    split on their first axis; their length a multiple of the mesh size) with `replicated` (a pytree: parameters,
    scalars) whole. The outputs are pytrees of row arrays put back together along the axis `out_axis` gives for
    each leaf's key path (0 by default; 1 for per-step traces [steps, rows, ...]). Trace under `jax.jit`."""

    def wrapped(replicated, rows):
        for r in jax.tree_util.tree_leaves(rows):
            if r.shape[0] % size(mesh):
                raise DeviceError(f"{r.shape[0]} rows do not split over {size(mesh)} devices (pad them first)")
        in_specs = (P(), jax.tree_util.tree_map(lambda _: P(AXIS), rows))
        # one device's outputs (their structure and which key each leaf has), then each put back on its rows' axis
        local = jax.eval_shape(
            jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=False), replicated, rows
        )
        out_specs = jax.tree_util.tree_map_with_path(lambda path, _: _row_spec(out_axis(_key(path))), local)
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)(replicated, rows)

    return wrapped


def _key(path) -> str:
    last = path[-1] if path else None
    return str(getattr(last, "key", getattr(last, "name", "")))


def interleave(x: np.ndarray, mesh: Mesh) -> np.ndarray:
    """Rows reordered so that device k's contiguous slice holds rows k, k + d, k + 2d, … (d devices): each device
    gets an even share of the real rows of a padded queue, and its real rows come first."""
    d = size(mesh)
    return x.reshape((len(x) // d, d) + x.shape[1:]).swapaxes(0, 1).reshape(x.shape)


def deinterleave(x, mesh: Mesh):
    """`interleave`'s inverse (on numpy or jax arrays)."""
    d = size(mesh)
    return x.reshape((d, x.shape[0] // d) + x.shape[1:]).swapaxes(0, 1).reshape(x.shape)


def local_count(count, mesh: Mesh):
    """Inside `rows_map` over an interleaved queue whose first `count` rows are real: how many of this device's
    rows are (a prefix of its slice)."""
    d = size(mesh)
    k = jax.lax.axis_index(AXIS)
    return jax.numpy.maximum(0, (count - k + d - 1) // d).astype(jax.numpy.int32)


# ----------------------------------------------------------------------------- every host


def process_share(n: int, batch: int, index: int | None = None, count: int | None = None) -> list[tuple[int, int]]:
    """The (start, stop) row ranges process `index` of `count` (default: this one of all) works on: whole batches
    of `batch` rows dealt round-robin, so every process gets an even share and the ranges fall on the batch
    boundaries of a one-process run (its rows come out the same)."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    return [(s, min(s + batch, n)) for s in range(index * batch, n, batch * count)]


def share_rows(n: int, batch: int) -> np.ndarray | None:
    """The input rows of this process's batches (`process_share`), in order; None with one process (all rows)."""
    if jax.process_count() == 1:
        return None
    return np.concatenate([np.arange(a, b) for a, b in process_share(n, batch)] or [np.zeros(0, np.int64)])


def join_parts(output, n: int, batch: int) -> None:
    """OUTPUT (JSON lines, `outputs.RowStream`) from the processes' finished parts (`part_path`; whole batches
    dealt in turn by `process_share`), in input order, byte for byte as one process writes it; the parts and
    their states go once it is in place. Run by one process after every part is finished."""
    from pathlib import Path

    from v2t_jax import outputs

    output, count = Path(output), jax.process_count()
    parts = [part_path(output, i, count) for i in range(count)]
    lines = [iter(p.read_bytes().split(b"\n")[:-1]) for p in parts]
    rows = []
    for k, start in enumerate(range(0, n, batch)):
        rows += [next(lines[k % count], None) for _ in range(min(batch, n - start))]
    if None in rows or any(next(rest, None) is not None for rest in lines):
        raise DeviceError(f"the parts of {output} do not hold its {n} rows; delete {output}.part-* and rerun")
    outputs.write_atomic(output, lambda f: f.write(b"".join(r + b"\n" for r in rows)), binary=True)
    for p in parts:
        for f in (p, *outputs.RowStream.paths(p)):
            f.unlink(missing_ok=True)


def describe(mesh: Mesh) -> dict:
    """What a report says about the devices a program ran on."""
    devs = list(mesh.devices.flat)
    return {
        "device": devs[0].device_kind,
        "platform": devs[0].platform,
        "devices": len(devs),
        "processes": jax.process_count(),
    }


# ----------------------------------------------------------------------------- how close to the chip's peak

# Dense bf16 peak FLOP/s per device by `device_kind` (vendor datasheets; sparsity not counted). A device not
# listed (CPUs among them) has no MFU figure.
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def peak_flops(device_kind: str) -> float | None:
    """The device's dense bf16 peak FLOP/s, or None where it is not known (CPUs, unlisted chips)."""
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):  # the longest name that fits: "TPU v5 lite" before "TPU v5"
        if name.lower() in device_kind.lower():
            return PEAK_FLOPS[name]
    return None


def compiled_flops(compiled) -> float | None:
    """One device's FLOPs per call of a compiled program, from XLA's cost analysis (None where the backend gives
    none). XLA counts the body of a loop once, whatever its trip count: for programs that loop (decoding, the
    correction steps) this is a lower bound."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - an optional statistic some backends lack
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    flops = cost.get("flops") if isinstance(cost, dict) else None
    return float(flops) if flops is not None and flops >= 0 else None


# ----------------------------------------------------------------------------- several processes


def initialize(spec: str) -> None:
    """`--distributed`: `auto` (`jax.distributed.initialize()` with what the cluster sets: Cloud TPU, SLURM, Open
    MPI, Kubernetes) or HOST:PORT,NUM_PROCESSES,PROCESS_ID. CPU processes talk through gloo."""
    if spec != "auto":
        parts = spec.split(",")
        ok = len(parts) == 3 and ":" in parts[0] and parts[1].isdigit() and parts[2].isdigit()
        if not ok or not int(parts[2]) < int(parts[1]):
            raise DeviceError(
                f"--distributed {spec!r}: expected auto or HOST:PORT,NUM_PROCESSES,PROCESS_ID with 0 <= PROCESS_ID < "
                "NUM_PROCESSES, e.g. localhost:1234,2,0"
            )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        if spec == "auto":
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(parts[0], num_processes=int(parts[1]), process_id=int(parts[2]))
    except (ValueError, RuntimeError) as e:
        hint = (
            "no cluster JAX recognises set this process up (Cloud TPU, SLURM, Open MPI, Kubernetes): give "
            "HOST:PORT,NUM_PROCESSES,PROCESS_ID"
            if spec == "auto"
            else "check that every process names the same coordinator and count"
        )
        raise DeviceError(f"--distributed {spec}: {brief(e).rstrip('.')}; {hint}") from None


def part_path(output, index: int | None = None, count: int | None = None):
    """Where process `index` of `count` (default: this one of all) keeps its share of `output` until they are put
    together: OUTPUT.part-I-of-N beside it."""
    from pathlib import Path

    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    output = Path(output)
    return output.with_name(f"{output.name}.part-{index}-of-{count}")


def barrier(name: str) -> None:
    """Every process waits here for all the others (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
