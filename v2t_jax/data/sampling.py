"""Which training rows each batch reads: an epoch permutation when every passage weighs the same (`Sampler`),
else draws weighted by each source's mixture weight (`WeightedSampler`, `config.data.mixture`). Both are
deterministic from (seed, position), and their state is two integers a checkpoint keeps.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from v2t_jax.errors import TrainingError


@dataclasses.dataclass
class Sampler:
    """Deterministic epoch-permutation sampler; its state (epoch, position) is checkpointed."""

    n: int
    batch_size: int
    seed: int
    epoch: int = 0
    position: int = 0

    def __post_init__(self):
        if self.n < self.batch_size:
            raise TrainingError(f"the training split has {self.n} examples, fewer than batch_size {self.batch_size}")
        self._perm_epoch = -1

    def _perm(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            self._cached = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            self._perm_epoch = self.epoch
        return self._cached

    def next_indices(self) -> np.ndarray:
        if self.position + self.batch_size > self.n:  # drop the remainder, start the next epoch
            self.epoch, self.position = self.epoch + 1, 0
        idx = self._perm()[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return np.sort(idx)  # sorted rows read faster from a memory map; order inside a batch is irrelevant

    def state(self) -> dict:
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def restore(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


@dataclasses.dataclass
class WeightedSampler:
    """Draws each batch with replacement, a row with probability proportional to its source's mixture weight
    (`config.data.mixture`), from a generator seeded by (seed, batch number): the state is just how many
    batches were drawn, checkpointed like `Sampler`'s."""

    weights: np.ndarray  # [n] float64, >= 0
    batch_size: int
    seed: int
    epoch: int = 0  # unused; kept so both samplers share one checkpoint format
    position: int = 0  # batches drawn

    def __post_init__(self):
        if len(self.weights) < self.batch_size:
            raise TrainingError(
                f"the training split has {len(self.weights)} examples, fewer than batch_size {self.batch_size}"
            )
        self._cdf = np.cumsum(self.weights, dtype=np.float64)
        self._cdf /= self._cdf[-1]

    def next_indices(self) -> np.ndarray:
        u = np.random.default_rng([self.seed, 1 << 20, self.position]).random(self.batch_size)
        self.position += 1
        return np.sort(np.minimum(np.searchsorted(self._cdf, u, side="right"), len(self._cdf) - 1))

    def state(self) -> dict:
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def restore(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def mixture_weights(spec: str, names: list[str]) -> dict[str, float]:
    """`config.data.mixture` -> a weight per source: "default" (each source's registry weight; 1 for a user
    corpus), "uniform" (every passage alike), or "name=w,..." overriding the defaults."""
    from v2t_jax.data import sources

    defaults = {n: (sources.SOURCES[n].weight if n in sources.SOURCES else 1.0) for n in names}
    spec = (spec or "default").strip()
    if spec == "uniform":
        return {n: 1.0 for n in names}
    if spec == "default":
        return defaults
    out = dict(defaults)
    for item in spec.split(","):
        name, eq, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not eq or weight < 0 or not math.isfinite(weight):
            raise TrainingError(f"config.data.mixture: expected default, uniform or name=weight,..., got {item!r}")
        if name.strip() not in out:
            raise TrainingError(
                f"config.data.mixture names {name.strip()!r}, which is not in this dataset ({', '.join(names)})"
            )
        out[name.strip()] = weight
    if not any(out.values()):
        raise TrainingError("config.data.mixture gives every source weight 0")
    return out


def make_sampler(mixture: str, b, train_rows: np.ndarray, batch_size: int, seed: int):
    """The epoch-permutation `Sampler` when every training passage weighs the same, else a `WeightedSampler`
    over the sources' weights by `mixture` (`config.data.mixture`, `mixture_weights`): rows `train_rows` of
    the prepared dataset `b`."""
    from v2t_jax.data import dataset

    ids, names = dataset.source_ids(b, "train")
    weights = mixture_weights(mixture, names)
    row_w = np.asarray([weights[n] for n in names], np.float64)[ids[train_rows]]
    if np.all(row_w == row_w[0]):
        return Sampler(len(train_rows), batch_size, seed)
    return WeightedSampler(row_w, batch_size, seed)
