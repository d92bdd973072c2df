"""The search over the devices of a mesh: each device runs a driver (`drivers.py`) on its share of the rows, and
`batches` picks the driver for a `Search` (one compiled batch, a stream through slots, or through text).

A `Search` goes in whole: the programs are compiled for the search without its stop cosine
(`Search.without_stop`), which goes in traced, so a run that changes only the stop compiles nothing new.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import jax
import numpy as np

from v2t_jax import parallel
from v2t_jax.search import core, drivers
from v2t_jax.search.strategies import NO_STOP, Search

# Batches of examples one stream program takes in (`batches`): a longer queue keeps the slots fuller (only its last
# examples run in a part-empty batch) but writes its rows later. 0: the batch loop throughout.
STREAM_BATCHES = 8

_TRACE_KEYS = ("step_", "polish_kept")  # `drivers.invert`'s outputs per step: [steps, rows, ...]


def row_axis(key: str) -> int:
    """The rows' axis of a `drivers.invert` output."""
    return 1 if key.startswith(_TRACE_KEYS) else 0


def first_rows(out: dict, m: int) -> dict:
    """`drivers.invert`'s outputs of its first m rows."""
    return {k: v[(slice(None),) * row_axis(k) + (slice(0, m),)] for k, v in out.items()}


@functools.partial(jax.jit, static_argnums=(0, 1, 4), static_argnames=("score",))
def _invert_rows(program, mesh, params, embeddings, search: Search, stop_cosine, score: bool = True) -> dict:
    """`drivers.invert` of [B, D] embeddings (B a multiple of the mesh's devices), each device on its B / d rows."""

    def per_device(replicated, rows):
        p, stop = replicated
        return drivers.invert(program, p, rows[0], search, stop, score)

    return parallel.rows_map(per_device, mesh, row_axis)((params, stop_cosine), (embeddings,))


@functools.partial(jax.jit, static_argnums=(0, 1, 5, 6))
def _stream_rows(program, mesh, params, queue, count, slots: int, search: Search, stop_cosine) -> dict:
    """`drivers.invert_stream` over a queue (`parallel.interleave`d; its first `count` examples real) through
    `slots` slots, as one stream per device over its share of both (`stream_result` puts the rows back)."""
    d = parallel.size(mesh)

    def per_device(replicated, rows):
        p, n, stop = replicated
        out = drivers.invert_stream(program, p, rows[0], parallel.local_count(n, mesh), slots // d, search, stop)
        return dict(out, rounds=out["rounds"][None])

    return parallel.rows_map(per_device, mesh)((params, count, stop_cosine), (queue,))


def stream_result(out: dict, mesh) -> dict:
    """`_stream_rows`'s outputs on the host in queue order; rounds: the most slot-batch steps one device ran."""
    out = jax.device_get(out)
    return {k: (v.max() if k == "rounds" else parallel.deinterleave(v, mesh)) for k, v in out.items()}


def invert_rows(program, mesh, params, embeddings: np.ndarray, search: Search, score: bool = True) -> dict:
    """`drivers.invert` of `search` on [m, D] embeddings over every device of the mesh, each on its share of the
    rows (padded to a share each with copies of the last row); the outputs are the given rows', on the device."""
    m = len(embeddings)
    rows = parallel.pad_rows(np.asarray(embeddings), parallel.round_up(m, mesh))
    return first_rows(_invert_rows(program, mesh, params, rows, search.without_stop(), search.stop, score=score), m)


def streams(program: core.InversionProgram, search: Search, trace: bool = False, black_box: bool = False) -> bool:
    """Whether `batches` runs `search` as a stream (`drivers.invert_stream`, continuous batching): correction
    steps with skip_repeated, in the compiled program, without per-step traces or token swaps."""
    return (
        STREAM_BATCHES > 0 and search.steps > 0 and search.skip_repeated and not search.polish and not trace
        and not black_box and program.in_graph
    )  # fmt: skip


def batches(
    program: core.InversionProgram,
    mesh,
    params: Callable[[], dict],
    host_params: dict,
    e: np.ndarray,
    search: Search,
    bs: int,
    start: int = 0,
    *,
    decode: Callable[[np.ndarray], str],
    embed_fn: Callable[[list[str]], np.ndarray] | None = None,
    trace: bool = False,
    score: bool = True,
) -> Iterator[tuple[int, dict]]:
    """`search` on the rows of `e` [N, D], batch by batch of `bs` rows from row `start` (a resumed run's is past
    0; a multiple of bs): yields (start, outputs of its rows: ids [m, L], cosine [m], with `trace` step_ids
    [S, m, L] and step_cosine [S, m]) in order. The driver is the search's: with `embed_fn` (a black box, or a
    model with its own vocabulary) `drivers.invert_host` on each batch; a search that `streams` runs as one
    stream program per `STREAM_BATCHES` batches (each device streams its share of the queue through its share of
    the slots); the rest one compiled batch at a time (`drivers.invert` on every device). params: the parameters
    placed on the mesh (called once a device program runs); host_params: as loaded, for the host driver."""
    if streams(program, search, trace, embed_fn is not None):
        yield from _stream_batches(program, mesh, params(), e, search, bs, start)
        return
    score = score or trace or search.steps > 0  # (with correction steps every hypothesis is embedded anyway)
    for s in range(start, len(e), bs):
        chunk = e[s : s + bs]
        m = len(chunk)
        if m < bs:  # one compiled shape: pad the last batch with copies of its last row
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - m, axis=0)])
        if embed_fn is None:
            out = jax.device_get(invert_rows(program, mesh, params(), chunk, search, score))
        else:
            out = drivers.invert_host(program, host_params, chunk, search, decode, embed_fn)
        keys = ("ids", "cosine") + (("step_ids", "step_cosine") if trace else ())
        yield s, first_rows({k: np.asarray(out[k]) for k in keys}, m)


def _stream_batches(program, mesh, params: dict, e: np.ndarray, search: Search, bs: int, start: int):
    """`batches` through the stream program: each `STREAM_BATCHES` batches' examples form one queue through `bs`
    slots (rounded up to a multiple of the devices); its rows are yielded batch by batch, as the batch loop yields
    them."""
    slots = parallel.round_up(bs, mesh)
    window = bs * STREAM_BATCHES
    for w in range(start, len(e), window):
        chunk = e[w : w + window]
        m = len(chunk)
        # one compiled shape per run; padded with copies of the last row, never worked on (count = m)
        size = slots * STREAM_BATCHES if len(e) - start > window else -(-m // slots) * slots
        queue = parallel.interleave(parallel.pad_rows(chunk, size), mesh)
        out = stream_result(
            _stream_rows(program, mesh, params, queue, np.int32(m), slots, search.without_stop(), search.stop), mesh
        )
        for s in range(0, m, bs):
            j = slice(s, min(s + bs, m))
            yield w + s, {"ids": out["ids"][j], "cosine": out["cosine"][j]}


def compiled(program, mesh, params: dict, batch: int, dim: int, search: Search, score: bool = False):
    """The inversion compiled ahead of time for one shape: a function (params, embeddings [batch, D]) ->
    `drivers.invert`'s outputs for `search` (benchmarks; its stop cosine is ignored: every example runs its steps;
    `score` as in `drivers.invert`). Every device of the mesh inverts its share of the batch (padded to a multiple
    of the device count); params: placed on the mesh (numpy ones are copied each call); its `flops` attribute:
    one device's FLOPs per call by XLA's cost analysis."""
    rows = parallel.round_up(batch, mesh)  # (a batch every device gets a share of: padded with copies)
    e = jax.ShapeDtypeStruct((rows, dim), np.float32)
    fn = _invert_rows.lower(program, mesh, params, e, search.without_stop(), NO_STOP, score=score).compile()

    def run(params, embeddings):
        out = fn(params, parallel.pad_rows(np.asarray(embeddings), rows), NO_STOP)
        return out if rows == batch else first_rows(out, batch)  # the batch's

    run.flops = parallel.compiled_flops(fn)  # one device's, per call (XLA's count: loop bodies once)
    return run


def compiled_stream(program, mesh, params: dict, queue: int, slots: int, dim: int, search: Search):
    """The stream program (`drivers.invert_stream`) compiled ahead of time for a queue of `queue` examples
    through `slots` slots (both multiples of the mesh's device count: each device runs a stream of its own
    over `slots / devices` slots): a function (params, embeddings [queue, D], count) -> its outputs
    (benchmarks; every example runs until its steps end or it settles: the stop cosine is ignored)."""
    e = jax.ShapeDtypeStruct((queue, dim), np.float32)
    fn = _stream_rows.lower(program, mesh, params, e, np.int32(queue), slots, search.without_stop(), NO_STOP).compile()

    def run(params, embeddings, count):
        queue = parallel.interleave(np.asarray(embeddings), mesh)
        return stream_result(fn(params, queue, np.int32(count), NO_STOP), mesh)

    run.flops = parallel.compiled_flops(fn)
    return run
