"""Training loop: mesh, abstract init, a pure jitted train step, orbax checkpoints, evaluation, logging.

    v2t train --config configs/inverter.py:tiny --workdir DIR [--config.KEY=VALUE ...]
    v2t train --config configs/corrector.py:tiny --workdir DIR --config.inverter=BUNDLE

The same loop trains the inverter (embedding -> text) and the corrector ((e, hypothesis, ê) -> text, on the
frozen inverter's cached greedy hypotheses, `v2t_jax.training.hypotheses`; computed on first use).

Rerunning the same command resumes from the latest finished checkpoint in DIR/checkpoints.
Metrics go to DIR/metrics.jsonl (one JSON object per log or eval event) and DIR/tb (TensorBoard).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.experimental import multihost_utils

from v2t_jax.training import checkpoint, sharding, tasks
from v2t_jax import evaluate, metrics, outputs, paths, vocabulary
from v2t_jax.data import sampling
from v2t_jax.errors import TrainingError

Array = jax.Array

# Keys that may change between a run and its resumption (the rest must match the saved config). The
# learning-rate schedule is a pure function of the checked keys: `num_steps` ends the linear decay of a step-based
# run, so it is checked there; a time-boxed run (train_minutes > 0) decays to 0 at its deadline and uses
# `num_steps` only as a cap, which may change as long as the warmup stays whole (see `_schedule_keys_changed`).
RESUMABLE_KEYS = {
    "log_every",
    "eval_every",
    "eval_batches",
    "eval_samples",
    "checkpoint_every",
    "keep_checkpoints",
    "progress",
}


@struct.dataclass
class TrainState:
    step: Array  # [] int32
    params: Any
    opt_state: Any
    rng: Array  # [2] uint32 key data


# ----------------------------------------------------------------------------- model and optimizer


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The optimizer's settings, decoded from the config once (`Optimizer.of`); `make_optimizer` builds it."""

    learning_rate: float
    warmup_steps: int
    num_steps: int
    train_minutes: float  # > 0: warmup only; the host decays the rate to 0 at the deadline (`lr_scale_at`)
    grad_clip: float
    weight_decay: float

    @classmethod
    def of(cls, config: ml_collections.ConfigDict) -> Optimizer:
        return _fields_of(cls, config)


def make_optimizer(opt: Optimizer) -> optax.GradientTransformation:
    warmup = max(1, min(opt.warmup_steps, opt.num_steps))
    if opt.train_minutes > 0:  # time-boxed: warmup here, the decay to 0 at the deadline by `lr_scale_at`
        schedule = optax.linear_schedule(0.0, opt.learning_rate, warmup)
    else:
        schedule = optax.join_schedules(
            [
                optax.linear_schedule(0.0, opt.learning_rate, warmup),
                optax.linear_schedule(opt.learning_rate, 0.0, max(1, opt.num_steps - warmup)),
            ],
            [warmup],
        )
    return optax.chain(
        optax.clip_by_global_norm(opt.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=opt.weight_decay),
    )


def lr_scale_at(elapsed_s: float, budget_s: float, decay_start: float = 0.0) -> float:
    """A time-boxed run's learning-rate factor: 1 until `decay_start` of the budget has passed, then linear to 0
    at the deadline (so the schedule ends when the time does, whatever the step rate turns out to be)."""
    frac = min(1.0, max(0.0, elapsed_s / budget_s))
    if frac <= decay_start:
        return 1.0
    return max(0.0, (1.0 - frac) / (1.0 - decay_start))


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Data:
    """Which prepared dataset a run trains on, decoded from `config.data` (and the embedder and length the
    targets were made for) once (`Data.of`); the sources are checked then, before anything loads."""

    sources: tuple[str, ...]
    corpus: str | None
    data_dir: str | None
    seed: int
    mixture: str
    embedder: str
    max_length: int

    @classmethod
    def of(cls, config: ml_collections.ConfigDict) -> Data:
        from v2t_jax.data import sources

        try:
            names = sources.expand(tuple(config.data.sources))
        except sources.SourceError as e:
            raise TrainingError(f"config.data.sources: {e}") from e
        d = config.data
        return cls(names, d.corpus or None, d.data_dir or None, d.seed, d.get("mixture", "default"),
                   config.embedder, config.max_length)  # fmt: skip


@dataclasses.dataclass
class SplitData:
    embeddings: np.ndarray  # [n, d] float32 (memory map)
    ids: np.ndarray  # [n, L] int32 embedder ids incl. [CLS]/[SEP]
    texts: list[str] | None = None
    hyp_ids: np.ndarray | None = None  # corrector: the inverter's hypotheses [n, L-1] (decoder ids)
    hyp_embeddings: np.ndarray | None = None  # [n, D]
    rows: np.ndarray | None = None  # training rows to sample from (None: all); the corrector drops exact ones


def _dataset(data: Data):
    """(TFDS builder, targets folder, the `v2t data prepare` command that makes them) of `data`."""
    from v2t_jax.data import dataset

    spec = dataset.DatasetSpec(
        sources=data.sources, corpus=data.corpus, embedder=data.embedder, max_tokens=data.max_length, seed=data.seed
    )
    try:
        found = dataset.prepared(spec, data.data_dir)
    except dataset.NotPrepared as e:
        raise TrainingError(str(e)) from None
    return found.builder, found.targets_dir, found.command


def load_data(data: Data, task: tasks.Task) -> tuple[Any, dict[str, SplitData]]:
    """(TFDS builder, {train, validation: SplitData}) of `data`, with what `task` reads attached."""
    from v2t_jax.data import dataset, targets

    need_texts = not task.vocab.in_graph
    b, tdir, command = _dataset(data)
    out = {}
    for split in ("train", "validation"):
        try:
            emb, ids = targets.load(tdir, split)
        except FileNotFoundError as e:
            raise TrainingError(f"no target embeddings for {split!r}; run: {command}") from e
        out[split] = SplitData(emb, ids, dataset.texts(b, split) if (need_texts or split == "validation") else None)
    task.attach(tdir, out)
    return b, out


# ----------------------------------------------------------------------------- steps


def make_train_step(task: tasks.Task, tx: optax.GradientTransformation):
    def train_step(state: TrainState, batch: dict, lr_scale: Array) -> tuple[TrainState, dict]:
        """`lr_scale` [] float32 multiplies the update (1.0 but in a time-boxed run, where the host decays it
        to 0 at the deadline: `lr_scale_at`)."""
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        (_, aux), grads = jax.value_and_grad(lambda p: task.loss_fn(p, batch, rng), has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree_util.tree_map(lambda u: u * lr_scale.astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        aux = {**aux, "grad_norm": optax.global_norm(grads)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), aux

    return train_step


# ----------------------------------------------------------------------------- logging


class Logger:
    def __init__(self, workdir: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = workdir / "metrics.jsonl"
        # an object holds no appends: in an object store the file is written whole each time (its rows kept here)
        self.rows: list[str] | None = [] if paths.is_remote(workdir) else None
        self.tb = None
        if enabled and self.path.exists():
            self._drop_rows_after(resume_step)
        if enabled:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(workdir / "tb"))
            except ImportError:
                self.tb = None

    def _drop_rows_after(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: the interrupted run's rows for them go (as does a
        torn last line), so that every (step, kind) appears once. A run starting afresh keeps none."""
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if step > 0 and isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line)
        if self.rows is not None:
            self.rows = kept
            self.path.write_text("".join(line + "\n" for line in kept))
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, step: int, kind: str, values: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "kind": kind, "time": time.time(), **{k: _py(v) for k, v in values.items()}}
        line = outputs.dumps(row)  # strict JSON: a NaN loss is written null
        if self.rows is not None:
            self.rows.append(line)
            self.path.write_text("".join(x + "\n" for x in self.rows))
        else:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float, np.floating, np.integer)) or (hasattr(v, "shape") and v.shape == ()):
                    self.tb.add_scalar(f"{kind}/{k}", float(v), int(step))
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _py(v):
    if hasattr(v, "item"):
        return v.item()
    return v


# ----------------------------------------------------------------------------- the loop


def _strip_boxes(tree):
    """Logical-partitioning boxes -> their values, without the sharding constraint nn.unbox applies."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    return jax.tree_util.tree_map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


@dataclasses.dataclass
class Setup:
    model: Any  # the task's Flax module (inverters.Inverter, correctors.Corrector)
    tx: optax.GradientTransformation
    abstract: Any  # TrainState of ShapeDtypeStructs carrying their shardings
    state_sh: Any
    batch_sh: dict
    init_fn: Any  # rng -> TrainState, jitted, sharded
    train_step: Any  # (state, batch) -> (state, metrics), jitted, state donated
    eval_step: Any  # (params, batch) -> metrics
    n_params: int


def build(task: tasks.Task, tx: optax.GradientTransformation, mesh, seed: int = 0, dec_len: int | None = None) -> Setup:
    """`task`'s sharded abstract state and its jitted init/train/eval functions for `mesh`, trained by `tx`
    (`make_optimizer`); `dec_len`: decoder positions (default: the task's max_length - 1).

    Call inside `jax.set_mesh(mesh)` and `nn.logical_axis_rules(sharding.LOGICAL_RULES)`."""

    def init_boxed(rng):
        p_rng, s_rng = jax.random.split(rng)
        params = task.init_variables(p_rng, dec_len)["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key_data(s_rng))

    # Abstract init -> logical specs -> shardings -> jitted, sharded init (big_vision's "shard & transfer").
    abstract_boxed = jax.eval_shape(init_boxed, jax.random.PRNGKey(seed))
    state_sh = sharding.logical_shardings(mesh, nn.get_partition_spec(abstract_boxed))
    abstract = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), _strip_boxes(abstract_boxed), state_sh
    )
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(_strip_boxes(abstract_boxed.params)))
    rep = sharding.replicated(mesh)
    b2 = sharding.batch_sharding(mesh, 2)
    batch_sh = {k: b2 for k in task.batch_keys}
    init_fn = jax.jit(lambda r: nn.unbox(init_boxed(r)), out_shardings=state_sh)
    train_step = jax.jit(
        make_train_step(task, tx),
        in_shardings=(state_sh, batch_sh, rep),
        out_shardings=(state_sh, rep),
        donate_argnums=0,
    )
    eval_step = jax.jit(task.eval_metrics, in_shardings=(state_sh.params, batch_sh), out_shardings=rep)
    return Setup(task.model, tx, abstract, state_sh, batch_sh, init_fn, train_step, eval_step, n_params)


def build_from_config(config: ml_collections.ConfigDict, mesh, embed_dim: int, vocab_size: int) -> Setup:
    """`build` of a config's task and optimizer for shapes alone (no embedder or data): abstract builds of
    full-size configs, the sharding tests, `experiments/bench_train.py`."""
    task = tasks.build_abstract(config, embed_dim, vocab_size)
    return build(task, make_optimizer(Optimizer.of(config)), mesh, config.seed)


# Config keys added after runs were saved, with the value that reproduces what those runs did.
NEW_KEY_DEFAULTS = {
    ("data", "mixture"): "default",
    ("t5", "dtype"): "float32",
    ("train_minutes",): 0.0,
    ("init_token_embeddings",): "random",
    ("init_from",): "",
    ("init_layers",): "random",
    ("t5", "num_decoder_layers"): 0,
    ("t5", "init"): "",
}


def _with_new_defaults(saved: dict) -> dict:
    for path, value in NEW_KEY_DEFAULTS.items():
        node = saved
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(path[-1], value)
    return saved


def _check_config_against_saved(config: ml_collections.ConfigDict, workdir: Path) -> None:
    path = workdir / "config.json"
    current = json.loads(config.to_json())
    has_checkpoints = any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*"))
    if path.exists() and has_checkpoints:  # a run that never saved a step may start over with any config
        saved = _with_new_defaults(json.loads(path.read_text()))
        diff = sorted(
            k
            for k in set(saved) | set(current)
            if k not in RESUMABLE_KEYS | {"num_steps"} and saved.get(k) != current.get(k)
        )
        if not diff and _schedule_keys_changed(saved, current):
            raise TrainingError(
                f"{workdir} was started with num_steps={saved.get('num_steps')}, where its learning-rate decay "
                f"ends; resume with --config.num_steps={saved.get('num_steps')} or use a new --workdir "
                "(a time-boxed run, train_minutes > 0, may change it)"
            )
        if diff:
            raise TrainingError(
                f"{workdir} holds a run with a different config ({', '.join(diff)}); use a new --workdir to start over"
            )
    if jax.process_index() == 0:
        path.write_text(outputs.dumps(current, indent=2) + "\n")


def _schedule_keys_changed(saved: dict, current: dict) -> bool:
    """Whether resuming `saved` with `current` would reshape the learning-rate schedule through num_steps."""
    old, new = saved.get("num_steps"), current.get("num_steps")
    if old == new:
        return False
    if (current.get("train_minutes") or 0) > 0:  # the decay ends at the deadline; num_steps caps the run
        return min(old or 0, new or 0) < current.get("warmup_steps", 0)  # ... unless it cut the warmup short
    return True


def _say(message: str) -> None:
    print(f"v2t train: {message}", file=sys.stderr)


def check_numbers(config: ml_collections.ConfigDict) -> None:
    """One-line errors for counts and rates that cannot work, before anything is created or compiled."""
    limits = (("batch_size", 1), ("num_steps", 1), ("log_every", 1), ("eval_every", 0), ("checkpoint_every", 1))
    for key, least in limits:
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            what = "a positive integer" if least else "an integer >= 0 (0: no evaluation)"
            raise TrainingError(f"config.{key} must be {what}, got {value!r}")
    if config.get("warmup_steps") is not None and config.warmup_steps < 0:
        raise TrainingError(f"config.warmup_steps must be >= 0, got {config.warmup_steps!r}")
    if config.get("learning_rate") is not None and not config.learning_rate > 0:
        raise TrainingError(f"config.learning_rate must be > 0, got {config.learning_rate!r}")
    minutes = config.get("train_minutes")
    if minutes is not None and not minutes >= 0:
        raise TrainingError(f"config.train_minutes must be >= 0 (0: no time box), got {minutes!r}")


@dataclasses.dataclass(frozen=True)
class Loop:
    """The training loop's settings, decoded from the config and checked once (`Loop.of`)."""

    batch_size: int
    num_steps: int
    train_minutes: float  # > 0: time-boxed (the learning rate decays to 0 at the deadline)
    log_every: int
    eval_every: int  # 0: no evaluation
    eval_batches: int  # validation loss over this many whole batches
    eval_samples: int  # validation passages decoded and scored
    checkpoint_every: int
    keep_checkpoints: int
    seed: int
    progress: bool
    max_length: int  # embedder tokens of a passage (re-embedding through text)

    @classmethod
    def of(cls, config: ml_collections.ConfigDict) -> Loop:
        check_numbers(config)
        return _fields_of(cls, config)


def _fields_of(cls, config: ml_collections.ConfigDict):
    """`cls` (a dataclass of int / float / bool fields) from the config keys of the same names."""
    cast = {"int": int, "float": float, "bool": bool}  # the field annotations, as strings
    return cls(**{f.name: cast[f.type](config[f.name]) for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class Run:
    """Everything a training run is made of, built from the config once (`prepare`): the loop reads this,
    never the config."""

    loop: Loop
    task: tasks.Task
    embedder: Any  # embedders.Embedder
    vocab: vocabulary.Vocabulary
    data: dict[str, SplitData]  # train, validation
    labels: dict[str, np.ndarray]  # [n, L] decoder targets per split
    setup: Setup
    train_rows: np.ndarray  # training rows the sampler draws from
    sampler: Any  # sampling.Sampler | sampling.WeightedSampler
    fresh_state: Any  # () -> TrainState: initialised and warm-started (the task's `initial_params`)


def train(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, profile: str | os.PathLike | None = None
) -> dict:
    """Trains (or resumes) the model described by `config` in `workdir`; returns the last metrics. The only
    place the trainer reads the config: it is decoded here into the loop's, the data's and the optimizer's
    settings and the task (`tasks.load`), which is all the rest receives. `profile`: a folder for a
    `jax.profiler` trace of a few steps after the compile. SIGTERM (a preemption) saves the step in progress and
    raises `Preempted`."""
    loop, data, opt = Loop.of(config), Data.of(config), Optimizer.of(config)
    task = tasks.load(config)
    task.prepare(lambda: _dataset(data))
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    workdir = paths.run_folder(workdir)  # (a local folder, or gs://… through etils.epath)
    # Tracing happens at the first call of each jitted function: keep mesh and rules active throughout.
    with workdir_lock(workdir), jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        _check_config_against_saved(config, workdir)
        return run_loop(prepare(loop, data, opt, task, workdir, mesh), workdir, mesh, profile)


LOCK_FILE = "train.lock"


def _lowered_flops(step_fn, *args) -> float | None:
    """FLOPs of one call of a jitted function from XLA's cost analysis of its lowered program (the whole
    computation, before it is split over devices); None where the backend gives none. Lowering does not compile."""
    try:
        cost = step_fn.lower(*args).cost_analysis()
    except Exception:  # noqa: BLE001 - an optional statistic
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    flops = cost.get("flops") if isinstance(cost, dict) else None
    return float(flops) if flops and flops > 0 else None


def _rates(steps_per_s: float, batch_size: int, chips: dict, step_flops: float | None, peak: float | None) -> dict:
    """The training log's throughput figures: examples/s in all and per device, TFLOP/s from the step's FLOPs
    (XLA's count), and MFU against the device's dense bf16 peak where it is known."""
    n = chips["devices"]
    out = {
        "examples_per_second": steps_per_s * batch_size,
        "examples_per_second_per_device": steps_per_s * batch_size / n,
    }
    if step_flops:
        out["tflops_per_second"] = step_flops * steps_per_s / 1e12
        if peak:
            out["mfu"] = step_flops * steps_per_s / (n * peak)
    return out


def clock() -> float:
    """The clock a time-boxed run (config.train_minutes) reads, in seconds; the only one it reads, so that a test
    can replace it and time-boxing does not depend on how fast the machine is at that moment."""
    return time.perf_counter()


@contextlib.contextmanager
def workdir_lock(workdir: Path):
    """One `v2t train` per workdir: process 0 holds an advisory lock on WORKDIR/train.lock (with its pid) for
    the whole run; a second run on the same workdir stops with a one-line error before touching anything.
    The lock goes with the process, so a killed run never leaves the workdir locked."""
    if jax.process_index() != 0:
        yield
        return
    workdir.mkdir(parents=True, exist_ok=True)
    if paths.is_remote(workdir):  # an object store has no advisory locks: one run per workdir is the user's to keep
        yield
        return
    fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise TrainingError(
                f"{workdir} is in use by another v2t train (pid {holder}); wait for it to end or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def prepare(loop: Loop, data: Data, opt: Optimizer, task: tasks.Task, workdir: Path, mesh) -> Run:
    """A `Run` around `task` (`tasks.build`): data and labels, optimizer, jitted steps, sampler, and how a fresh
    state starts."""
    n_dev = mesh.devices.size
    if loop.batch_size % n_dev:
        raise TrainingError(f"batch_size {loop.batch_size} is not divisible by the {n_dev} devices of the mesh")
    if loop.batch_size % jax.process_count():
        raise TrainingError(f"batch_size {loop.batch_size} is not divisible by {jax.process_count()} processes")

    embedder, vocab = task.embedder, task.vocab
    task.check_run(workdir)
    b, split_data = load_data(data, task)
    labels = {split: vocab.labels(d) for split, d in split_data.items()}
    setup = build(task, make_optimizer(opt), mesh, loop.seed, vocab.length)
    train_data = split_data["train"]
    train_rows = train_data.rows if train_data.rows is not None else np.arange(len(train_data.ids))
    sampler = sampling.make_sampler(data.mixture, b, train_rows, loop.batch_size, loop.seed)

    def fresh_state() -> TrainState:
        state = setup.init_fn(jax.random.PRNGKey(loop.seed))
        return state.replace(params=task.initial_params(state.params, setup.state_sh.params))

    return Run(loop, task, embedder, vocab, split_data, labels, setup, train_rows, sampler, fresh_state)


class Preempted(TrainingError):
    """SIGTERM stopped the run after saving the step it was at: rerunning the command resumes there."""

    EXIT_STATUS = 75  # EX_TEMPFAIL: stopped for now, to be run again

    def __init__(self, step: int, workdir: Path):
        super().__init__(
            f"stopped by SIGTERM; step {step} is saved in {workdir}: rerun the same command to resume there"
        )
        self.step = step


class _Preemption:
    """Whether the run was asked to stop (SIGTERM), agreed on by every process at a step. One process: a signal
    handler sets a flag the loop reads between steps. Several: orbax's preemption sync (jax.distributed's
    coordination service catches SIGTERM on any host and every host learns of it at the same step), so that all
    save the same step."""

    def __init__(self, mngr):
        self.mngr, self.flag, self.old = mngr, False, None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGTERM, self._set)

    def _set(self, signum, frame) -> None:
        self.flag = True

    def at(self, step: int) -> bool:
        if jax.process_count() > 1:
            return bool(self.mngr.reached_preemption(step))
        return self.flag

    def close(self) -> None:
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
            self.old = None


def run_loop(run: Run, workdir: Path, mesh, profile: str | os.PathLike | None = None) -> dict:
    """Trains `run` in `workdir` (resuming from its newest readable checkpoint); returns the last metrics."""
    from v2t_jax import parallel, profiling
    from v2t_jax.models import embedders

    is_main = jax.process_index() == 0
    loop, task, embedder, vocab, data, labels = run.loop, run.task, run.embedder, run.vocab, run.data, run.labels
    train_data, val_data = data["train"], data["validation"]
    setup, sampler = run.setup, run.sampler
    state_sh, batch_sh, abstract = setup.state_sh, setup.batch_sh, setup.abstract
    train_step, eval_step = setup.train_step, setup.eval_step
    n_params = setup.n_params
    b2, b1 = sharding.batch_sharding(mesh, 2), sharding.batch_sharding(mesh, 1)

    def generate_and_score(params, batch):
        """Greedy outputs (hypotheses, or one greedy correction of the cached hypotheses) and, with the
        embedder's vocabulary, their cosine to the target, in one program."""
        gen = task.predict_batch(params, batch)
        emb = batch["embeddings"]
        if not vocab.in_graph:
            return gen, jnp.zeros(gen.shape[:1])
        e_hat = embedders.embed_decoder_ids(embedder.config, embedder.params, gen, vocab.cls_id, vocab.pad_id)
        return gen, embedders.cosine(e_hat, emb)

    gen_score = jax.jit(generate_and_score, in_shardings=(state_sh.params, batch_sh), out_shardings=(b2, b1))

    mngr = checkpoint.manager(workdir, loop.keep_checkpoints)
    train_rows = run.train_rows
    try:
        restored = checkpoint.restore_latest(mngr, abstract, warn=_say if is_main else None)
    except checkpoint.DamagedCheckpoints as e:
        raise TrainingError(str(e)) from None
    if restored is None:
        state = run.fresh_state()
        start = 0
    else:
        state, data_state, start = restored
        sampler.restore(data_state)
    logger = Logger(workdir, is_main, start)
    chips = parallel.describe(mesh)
    peak = parallel.peak_flops(chips["device"])
    if is_main:
        where = "resuming at step" if start else "starting at step"
        print(
            f"v2t train: {task.name} {n_params / 1e6:.1f}M params, mesh {dict(mesh.shape)} over {chips['devices']} × "
            f"{chips['device']} in {chips['processes']} process(es), {where} {start}"
            + task.rows_note(train_data, train_rows),
            file=sys.stderr,
        )

    local = slice(
        jax.process_index() * loop.batch_size // jax.process_count(),
        (jax.process_index() + 1) * loop.batch_size // jax.process_count(),
    )

    def make_batch(split: str, idx: np.ndarray) -> dict:
        idx = idx[local]
        lab = labels[split][idx]
        host = {
            "embeddings": np.asarray(data[split].embeddings[idx], np.float32),
            "labels": lab,
            "mask": (lab != vocab.pad_id).astype(np.int32),
        }
        host.update(task.host_batch(data[split], idx))
        return {k: jax.make_array_from_process_local_data(batch_sh[k], v) for k, v in host.items()}

    def padded(start: int, stop: int) -> tuple[np.ndarray, int]:
        """Row indices [start, stop) padded to a whole batch by repeating the last row."""
        idx = np.arange(start, stop)
        return np.concatenate([idx, np.full(loop.batch_size - len(idx), idx[-1])]), len(idx)

    n_gen = min(loop.eval_samples, len(val_data.ids))

    def predict_validation(params) -> tuple[list[str], list[float]]:
        """Greedy outputs for the first `n_gen` validation rows and their cosines to the targets (with a
        vocabulary of the model's own, re-embedded on the host)."""
        preds, coss = [], []
        for s in range(0, n_gen, loop.batch_size):
            idx, n = padded(s, min(s + loop.batch_size, n_gen))
            gen, cos = gen_score(params, make_batch("validation", idx))
            gen = np.asarray(multihost_utils.process_allgather(gen, tiled=True))[:n]
            cos = np.asarray(multihost_utils.process_allgather(cos, tiled=True))[:n]
            batch_preds = [vocab.decode(row) for row in gen]
            if not vocab.in_graph:
                e_hat = embedder.embed_texts(batch_preds, max_length=loop.max_length)
                cos = np.asarray(embedders.cosine(e_hat, np.asarray(val_data.embeddings[idx[:n]])))
            preds += batch_preds
            coss.extend(np.asarray(cos).tolist())
        return preds, coss

    # the references, made once: both sides through the same uncased detokenisation (or, with a vocabulary of
    # the model's own, the text as far as the embedder reads it)
    if vocab.in_graph:
        val_eval = evaluate.Evaluator.of_ids(vocab, embedder, np.asarray(val_data.ids[:n_gen]), predict_validation)
    else:
        texts = list(val_data.texts[:n_gen])
        val_eval = evaluate.Evaluator.of_texts(vocab, embedder, texts, loop.max_length, predict_validation)

    def run_eval(step: int, params) -> dict:
        n_val = len(val_data.ids)
        bs = loop.batch_size
        sums = {"loss": 0.0, "token_accuracy": 0.0, "tokens": 0.0}
        for s in range(0, min(loop.eval_batches * bs, n_val), bs):
            idx, n = padded(s, min(s + bs, n_val))
            if n < bs:
                break  # loss over whole batches only
            m = jax.device_get(eval_step(params, make_batch("validation", idx)))
            for k in ("loss", "token_accuracy"):
                sums[k] += float(m[k]) * float(m["tokens"])
            sums["tokens"] += float(m["tokens"])
        out = {k: sums[k] / sums["tokens"] for k in ("loss", "token_accuracy")} if sums["tokens"] else {}
        if n_gen:
            scores = val_eval.run(params)
            out["example_pred"], out["example_ref"] = scores.pop("example"), metrics.normalize(val_eval.references[0])
            out.update(scores)
            out.update(task.eval_extra(val_data, val_eval))
        logger.write(step, "eval", out)
        return out

    last: dict = {}
    if start >= loop.num_steps:
        if is_main:
            print(f"v2t train: already at step {start} of {loop.num_steps}; nothing to do", file=sys.stderr)
        mngr.close()
        logger.close()
        return last
    if start == 0 and loop.eval_every > 0:
        last = run_eval(0, state.params)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=loop.num_steps,
        initial=start,
        unit="step",
        disable=not (is_main and loop.progress),
        dynamic_ncols=True,
    )
    pending: tuple[int, dict] | None = None
    last_saved = start if restored is not None else None
    step_flops: float | None = None  # the whole step's (every device), XLA's cost analysis of the lowered program
    window = profiling.Window(profile, start + 2, 5)  # steps 3 to 7 of this run: after the compile
    preemption = _Preemption(mngr)
    preempted_at: int | None = None
    t_log, steps_since = time.perf_counter(), 0

    def check(step: int, aux: dict) -> dict:
        host = {k: float(v) for k, v in jax.device_get(aux).items()}
        if not math.isfinite(host["loss"]) or not math.isfinite(host["grad_norm"]):
            mngr.wait_until_finished()
            kept = (
                f"the last good checkpoint (step {mngr.latest_step()}) is kept"
                if mngr.latest_step()
                else "no checkpoint was written"
            )
            raise TrainingError(f"non-finite loss or gradient at step {step} (loss {host['loss']}); {kept}")
        return host

    budget_s = 60.0 * loop.train_minutes
    elapsed_before = float(data_state.get("elapsed_s", 0.0)) if restored is not None else 0.0
    t_start = clock()

    def elapsed() -> float:
        """Seconds of this run so far (by `clock`); with several processes, process 0's clock, so that every
        process takes the same learning-rate factor and stops at the same step."""
        t = elapsed_before + clock() - t_start
        if budget_s > 0 and jax.process_count() > 1:
            t = float(multihost_utils.broadcast_one_to_all(np.float64(t)))
        return t

    def data_checkpoint() -> dict:
        return {**sampler.state(), "elapsed_s": elapsed()}

    try:
        # a time-boxed run stops after the step that crosses its deadline (saved as the final step); one resumed
        # with no time left does nothing
        no_time = budget_s > 0 and elapsed() >= budget_s
        final = False
        for step in range(start, start if no_time else loop.num_steps):
            now_s = elapsed() if budget_s > 0 else 0.0
            batch = make_batch("train", np.sort(train_rows[sampler.next_indices()]))
            scale = np.float32(lr_scale_at(now_s, budget_s) if budget_s > 0 else 1.0)
            if step == start:
                step_flops = _lowered_flops(train_step, state, batch, scale)
            window.step(step)
            state, aux = train_step(state, batch, scale)
            if pending is not None:  # check the previous step while this one runs
                check(*pending)
            pending = (step + 1, aux)
            bar.update(1)
            steps_since += 1
            done = step + 1
            # the last step: num_steps, or (time-boxed) the step that crosses the deadline
            final = done == loop.num_steps or (budget_s > 0 and elapsed() >= budget_s)  # agreed, as above
            if done % loop.log_every == 0 or final:
                host = check(*pending)
                now = time.perf_counter()
                host["steps_per_second"] = steps_since / (now - t_log)
                host.update(_rates(host["steps_per_second"], loop.batch_size, chips, step_flops, peak))
                if budget_s > 0:
                    host["lr_scale"], host["elapsed_minutes"] = float(scale), now_s / 60
                t_log, steps_since = now, 0
                logger.write(done, "train", host)
                bar.set_postfix(loss=f"{host['loss']:.3f}", acc=f"{host['token_accuracy']:.3f}")
                last = {"train_" + k: v for k, v in host.items()}
            if loop.eval_every > 0 and (done % loop.eval_every == 0 or final):
                last.update({"eval_" + k: v for k, v in run_eval(done, state.params).items()})
            stop = not final and preemption.at(done)
            if done % loop.checkpoint_every == 0 or final or stop:
                check(*pending)
                checkpoint.save(mngr, done, state, data_checkpoint())
                last_saved = done
            if stop:
                preempted_at = done
                break
            if final:
                break
        if pending is not None:
            check(*pending)
        if budget_s > 0 and is_main and (no_time or final):
            at = start if no_time else done
            print(f"v2t train: the {loop.train_minutes:g}-minute budget is spent at step {at}", file=sys.stderr)
    finally:
        window.close()
        preemption.close()
        bar.close()
        mngr.wait_until_finished()
        mngr.close()
        logger.close()
    if preempted_at is not None:
        raise Preempted(preempted_at, workdir)
    if is_main:
        print(
            f"v2t train: finished at step {int(jax.device_get(state.step))}; "
            f"checkpoint at step {last_saved} in {workdir}",
            file=sys.stderr,
        )
    last["params"] = state.params
    return last
