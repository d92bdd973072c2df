"""Device mesh and the one logical-axis rules table.

Mesh axes: `data` (pure data parallelism) and `fsdp` (data parallelism with parameters and optimizer
state sharded along their `embed` dimension). The batch is split over both.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from v2t_jax.errors import V2TError

# logical name -> mesh axis (or axes). Rules are tried in order; a mesh axis used once in an array is
# skipped for later dimensions, so activations [batch, length, embed] keep `embed` unsharded.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("embed_in", None),
    ("vocab", None),
    ("mlp", None),
    ("heads", None),
    ("kv", None),
    ("joined_kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("positions", None),
)


class MeshError(V2TError, ValueError):
    pass


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A (data, fsdp) mesh over all devices (of every process), laid out by `jax.make_mesh` to follow the device
    topology; -1 in one axis takes what the other leaves."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise MeshError("mesh: at most one of data and fsdp may be -1")
    if data == -1:
        data = n // fsdp if fsdp > 0 and n % fsdp == 0 else 0
    if fsdp == -1:
        fsdp = n // data if data > 0 and n % data == 0 else 0
    if data <= 0 or fsdp <= 0 or data * fsdp != n:
        raise MeshError(
            f"mesh data={data} x fsdp={fsdp} does not cover the {n} available devices: set --config.mesh.data and "
            f"--config.mesh.fsdp so that their product is {n} (-1 in one of them takes what the other leaves)"
        )
    try:  # topology-aware: neighbouring chips of the interconnect share an fsdp group
        return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)
    except (ValueError, NotImplementedError, AssertionError):  # a shape the topology cannot be cut into: in order
        grid = np.asarray(devices).reshape(data, fsdp)
        return Mesh(grid, ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))


def logical_shardings(mesh: Mesh, logical_specs):
    """PartitionSpecs of logical names -> NamedShardings on `mesh` under LOGICAL_RULES."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_RULES)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
