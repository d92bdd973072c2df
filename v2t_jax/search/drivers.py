"""The search's drivers: one batch as one compiled program (`invert`), a queue of examples through a fixed number
of slots as one compiled program (`invert_stream`, continuous batching), and the same search with its hypotheses
re-embedded through text between compiled steps (`invert_host`). All three run `core`'s pieces, so one example's
search is the same in each. `sharded.py` runs them over a device mesh and picks one for a `Search`.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from v2t_jax.search import core, hotflip
from v2t_jax.search.strategies import Search

Array = jax.Array

POLISH_TOP = 16  # token swaps re-embedded exactly per round of polish (the most promising by the gradient)


def invert(
    program: core.InversionProgram,
    params: dict,
    embeddings: Array,
    search: Search,
    stop_cosine: float | Array | None = None,
    score: bool = True,
) -> dict:
    """`search` on a batch as one program (jit it with program, search and score static, so that the stop
    cosine, given apart from the search's, is traced: one program for every stop), for a program that decodes
    in the embedder's vocabulary (`program.in_graph`).

    params: {"inverter": ..., "corrector": ..., "embedder": ...}; embeddings [B, D]; stop_cosine None: the
    search's own (`search.stop`). In the search's terms (`v2t_jax.search.strategies.Search`), with W its token
    beam (None: its sequence beam B, vec2text's coupling):
    Step 0 is the inverter's greedy decode. Step 1 decodes W continuations of that one hypothesis; each
    later step W continuations of each of the B current hypotheses (a token beam search; W 1:
    greedy decoding), re-embeds the candidates, scores them by cosine to the target and keeps the top B
    unique ones. The best hypothesis seen at any step is tracked; an example whose best cosine reaches the stop
    cosine stops.
    With no correction steps, a W > 1 is the inverter's: its W-wide token beam search, re-embedded,
    and the best by cosine (+ prior) kept; None or 1 is its greedy decode, whatever B. (With correction
    steps step 0 stays greedy: a beam there, tried, did not change what the steps end with.)

    skip_repeated: an example whose hypotheses come back unchanged from a step has reached a fixed point (every
    later step would repeat it exactly), and one whose hypotheses come back as they were two steps before is in
    a 2-cycle (both of its states already scored), so it stops; stopped examples leave the batch, and only
    distinct new candidates are re-embedded (`core._propose_in_graph`). The texts are those of the full loop, up to
    floating-point rounding in near-ties, at a fraction of its work on a trained model.
    score: False skips re-embedding the step-0 hypothesis when there are no correction steps (its cosine is
    then NaN): the inverter's work alone, as vec2text does.
    prior: the language prior's weight λ. 0 (vec2text) ranks hypotheses by cosine alone; λ > 0 ranks them by
    cosine + λ · their mean log-probability under the model that proposed them (the corrector; the inverter for
    step 0), which keeps the search from drifting to word salad that embeds close to the target. The best
    hypothesis seen is then the best by that score, and its cosine is the one returned.
    patience: with k > 0 an example also stops once k correction steps have not improved its best (an opt-in
    trade of a little fidelity for time; 0: off).
    polish: rounds of gradient-guided token swaps on the best hypothesis after the search (`hotflip.polish`,
    POLISH_TOP exactly re-embedded swaps per round, kept only if they raise the score); the per-step
    outputs then end with one more entry, the polished hypothesis, and `polish_kept` [polish, B] says which
    rows took a swap in each round. With a prior the swaps are ranked by cosine + λ · the inverter's mean
    log-probability of the text given e (a swap has no proposing corrector), so the polished entry's score is
    on that scale.

    Returns ids [B, L] and cosine [B] of the best hypothesis, per-step best ids [S+1, B, L] and best
    cosines [S+1, B] (step 0 first), and with correction steps their scores [S+1, B], which examples worked at
    each step [S, B] and the last step's top hypothesis [B, L] (what vec2text returns; the best seen may come
    from an earlier step).
    """
    if not program.in_graph:
        raise ValueError("this program decodes in another vocabulary than the embedder's: use invert_host")
    num_steps, beam, width, prior, polish = search.steps, search.beam, search.width, search.prior, search.polish
    skip_repeated, patience, polish_top = search.skip_repeated, search.patience, POLISH_TOP
    stop_cosine = search.stop if stop_cosine is None else stop_cosine
    core._check_steps(program, num_steps)
    e = embeddings.astype(jnp.float32)
    k = search.inverter_width
    if k > 1:  # the inverter's token beam, the best kept; in pieces, as a correction step's candidates
        per_row = functools.partial(core.beam_hypotheses, program, params, width=k)
        ids, lp = core._in_chunks(per_row, (e,), max(1, core.DECODE_ROWS // k))
        B, _, L = ids.shape
        per_seq = functools.partial(core._embed_hypotheses, program, params["embedder"])
        cos = core._cosine(
            core._in_chunks(per_seq, (ids.reshape(B * k, L),), core.EMBED_ROWS).reshape(B, k, -1), e[:, None]
        )
        ids0, cos0, _ = core._best_of(ids, cos, core._scored(cos, lp, prior))
        return _polished(program, params, e, core._result(ids0, cos0, None, None), polish, polish_top, prior)
    if num_steps == 0:
        ids0 = core.greedy_hypotheses(program, params, e)
        if not score:
            return core._result(ids0, jnp.full(ids0.shape[:1], jnp.nan, jnp.float32), None, None)
        cos0 = core._cosine(core._embed_hypotheses(program, params["embedder"], ids0), e)
        return _polished(program, params, e, core._result(ids0, cos0, None, None), polish, polish_top, prior)
    ids0, emb0, cos0, score0 = core._scored_start(program, params, e, prior)

    def step(state: core.SearchState, _):
        active = core._active(state, stop_cosine, patience)
        cand, cand_emb, first, lp = core._propose_in_graph(
            program, params, e, state, active, width, skip_repeated, prior
        )
        new = core._select(state, cand, cand_emb, first, e, beam, lp, prior)
        return core._advance(state, new, active, num_steps, skip_repeated)

    # step 1 works from the one hypothesis of step 0 (width candidates per example, not beam·width from copies)
    state, trace1 = step(core._start(ids0, emb0, cos0, score0), None)
    trace = jax.tree_util.tree_map(lambda x: x[None], trace1)
    if num_steps > 1:
        state, rest = jax.lax.scan(step, state, None, length=num_steps - 1)
        trace = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), trace, rest)
    return _polished(program, params, e, core._result(ids0, cos0, trace, state, score0), polish, polish_top, prior)


# ----------------------------------------------------------------------------- continuous batching


class StreamState(NamedTuple):
    """`invert_stream`'s loop carry: B slots, each holding one example's search (or none), over N examples."""

    search: core.SearchState  # [B, beam, ...] one example's search per slot; `t` [B] its correction steps done
    idx: Array  # [B] the example each slot holds (N: none)
    next: Array  # [] the next example to load
    ids: Array  # [N, L] each finished example's best hypothesis
    cos: Array  # [N] its cosine
    steps: Array  # [N] the correction steps it took
    rounds: Array  # [] loop rounds: slot-batch steps run


def _widened(ids0: Array, emb0: Array, cos0: Array, score0: Array, beam: int, pad_id: int) -> core.SearchState:
    """The search before its first correction step, beam-wide: the inverter's hypothesis in slot 0, the other
    slots empty (padding, cosine -inf: their candidates never count), so that examples at any step share one
    state shape."""
    B, L = ids0.shape
    first = jnp.arange(beam)[None] == 0

    def slot0(x, empty):
        x = jnp.broadcast_to(x[:, None], (B, beam) + x.shape[1:])
        return jnp.where(first.reshape(first.shape + (1,) * (x.ndim - 2)), x, jnp.asarray(empty, x.dtype))

    no = jnp.zeros((B,), bool)
    return core.SearchState(
        slot0(ids0, pad_id), slot0(emb0, 0.0), slot0(cos0, -jnp.inf), slot0(score0, -jnp.inf), ids0, cos0, score0,
        no, jnp.full((B, beam, L), -1, jnp.int32), jnp.zeros((B,), jnp.int32), ids0, no, jnp.zeros((B,), jnp.int32),
    )  # fmt: skip


def invert_stream(
    program: core.InversionProgram,
    params: dict,
    embeddings: Array,
    count: Array,
    slots: int,
    search: Search,
    stop_cosine: float | Array | None = None,
) -> dict:
    """`invert` of a search with skip_repeated and correction steps over a queue of N examples (the first `count` of
    `embeddings` [N, D]; N a multiple of `slots`) through `slots` rows of work, as one program (jit it with program,
    slots and search static; stop_cosine as in `invert`): continuous batching. Step 0 runs for every example, a slot
    batch at a time; then each round of a `lax.while_loop` loads pending examples into free slots, takes one
    correction step on the slots that work, and retires the examples that are done (their steps run, a fixed point
    or 2-cycle, or the stop cosine), writing their results back by index. A slot never idles while examples wait,
    where a batch costs a whole batch until its slowest example ends.

    Each example's search is the one `invert` runs on it (the same candidates, selection and stopping), so the
    texts are the same. Returns ids [N, L] and cosine [N] of each example's best hypothesis, steps [N] (the
    correction steps it took) and rounds [] (slot-batch steps run)."""
    if not program.in_graph:
        raise ValueError("this program decodes in another vocabulary than the embedder's: use invert_host")
    num_steps, beam, width = search.steps, search.beam, search.width
    prior, patience = search.prior, search.patience
    stop_cosine = search.stop if stop_cosine is None else stop_cosine
    if num_steps < 1:
        raise ValueError("invert_stream needs correction steps (num_steps >= 1); step 0 alone is `invert`")
    if not search.skip_repeated or search.polish:
        raise ValueError("invert_stream runs a search with skip_repeated and without polish; others are `invert`'s")
    core._check_steps(program, num_steps)
    e_all = embeddings.astype(jnp.float32)
    N, D = e_all.shape
    if N % slots:
        raise ValueError(f"{N} examples are not a whole number of {slots}-slot batches")
    L = program.length

    step0 = functools.partial(core._scored_start, program, params, prior=prior)

    def step0_or_none(args):  # a slot batch of padding (at or past `count`) is not decoded
        x, k = args
        shapes = jax.eval_shape(step0, x)
        nothing = lambda _: jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)  # noqa: E731
        return jax.lax.cond(k * slots < count, step0, nothing, x)

    pieces = jax.lax.map(step0_or_none, (e_all.reshape(N // slots, slots, D), jnp.arange(N // slots)))
    ids0, emb0, cos0, score0 = (x.reshape((N,) + x.shape[2:]) for x in pieces)

    def load(state: core.SearchState, take: Array, j: Array) -> core.SearchState:
        fresh = _widened(ids0[j], emb0[j], cos0[j], score0[j], beam, program.pad_id)
        return jax.tree_util.tree_map(
            lambda old, new: jnp.where(take.reshape(take.shape + (1,) * (new.ndim - 1)), new, old), state, fresh
        )

    def done(state: core.SearchState, idx: Array) -> Array:
        return (idx < N) & ((state.t >= num_steps) | ~core._active(state, stop_cosine, patience))

    def body(c: StreamState) -> StreamState:
        free = c.idx >= N
        new = c.next + jnp.cumsum(free) - 1
        take = free & (new < count)
        state = load(c.search, take, jnp.where(take, new, 0))
        idx = jnp.where(take, new, c.idx)
        e = e_all[jnp.minimum(idx, N - 1)]
        active = (idx < N) & core._active(state, stop_cosine, patience) & (state.t < num_steps)
        cand, cand_emb, first, lp = core._propose_in_graph(program, params, e, state, active, width, True, prior)
        sel = core._select(state, cand, cand_emb, first, e, beam, lp, prior)
        widening = (state.t == 0) if beam > 1 else None
        after, _ = core._advance(state, sel, active, num_steps, True, widening)
        after = after._replace(t=state.t + active)
        fin = done(after, idx)
        at = jnp.where(fin, idx, N)  # out of range: dropped
        return StreamState(
            after, jnp.where(fin, N, idx), c.next + take.sum(),
            c.ids.at[at].set(after.best_ids, mode="drop"), c.cos.at[at].set(after.best_cos, mode="drop"),
            c.steps.at[at].set(after.t, mode="drop"), c.rounds + 1,
        )  # fmt: skip

    def more(c: StreamState) -> Array:
        return (c.next < count) | jnp.any(c.idx < N)

    empty = _widened(
        jnp.zeros((slots, L), jnp.int32), jnp.zeros((slots, D), jnp.float32), jnp.full((slots,), -jnp.inf),
        jnp.full((slots,), -jnp.inf), beam, program.pad_id,
    )  # fmt: skip
    c = StreamState(
        empty, jnp.full((slots,), N, jnp.int32), jnp.int32(0), jnp.full((N, L), program.pad_id, jnp.int32),
        jnp.full((N,), -jnp.inf, jnp.float32), jnp.zeros((N,), jnp.int32), jnp.int32(0),
    )  # fmt: skip
    c = jax.lax.while_loop(more, body, c)
    return {"ids": c.ids, "cosine": c.cos, "steps": c.steps, "rounds": c.rounds}


def _polished(program: core.InversionProgram, params: dict, e: Array, out: dict, rounds: int, top: int, prior: float):
    """`out` with its best hypothesis polished by `rounds` of token swaps, appended to the per-step outputs."""
    if not rounds:
        return out
    ids, cos, score, kept = hotflip.polish(program, params, e, out["ids"], out["cosine"], rounds, top, prior)
    out = dict(out, ids=ids, cosine=cos, polish_kept=kept)
    out["step_ids"] = jnp.concatenate([out["step_ids"], ids[None]])
    out["step_cosine"] = jnp.concatenate([out["step_cosine"], cos[None]])
    if "step_score" in out:
        out["step_score"] = jnp.concatenate([out["step_score"], score[None]])
    return out


# ----------------------------------------------------------------------------- the same search through text

_greedy_jit = jax.jit(core.greedy_hypotheses, static_argnums=(0, 3))
_beam_jit = jax.jit(core.beam_hypotheses, static_argnums=(0, 3))
_candidates_jit = jax.jit(core.candidates, static_argnums=0, static_argnames=("width", "with_logprob"))


@functools.partial(jax.jit, static_argnames=("beam", "num_steps", "skip_repeated", "prior"))
def _host_step(
    state, cand, cand_emb, first, lp, e, active, beam: int, num_steps: int, skip_repeated: bool, prior: float
):  # fmt: skip
    new = core._select(state, cand, cand_emb, first, e, beam, lp, prior)
    return core._advance(state, new, active, num_steps, skip_repeated)


def invert_host(
    program: core.InversionProgram,
    params: dict,
    embeddings,
    search: Search,
    decode: Callable[[np.ndarray], str],
    embed_fn: Callable[[list[str]], np.ndarray],
) -> dict:
    """`invert` for hypotheses that are re-embedded through text: a model decoding in another vocabulary than
    the embedder's, or a black-box embedder (a remote API).

    The decoding stays compiled (`core.greedy_hypotheses`, `core.candidates`) and so does the selection (`core._select`,
    `core._advance`: the same search as `invert`); between them each step's candidates are decoded to strings on the
    host and `embed_fn(list of strings) -> [n, D]` embeds them, one call per step. Repeats are by string (what
    the embedder sees); each distinct string is embedded once per call (a memo across steps), and candidates of
    finished examples are not embedded at all. Returns what `invert` returns, as numpy arrays. (No token swaps
    here: they need the embedder's gradients.)
    """
    num_steps, beam, width = search.steps, search.beam, search.width
    prior, patience = search.prior, search.patience
    skip_repeated, stop_cosine = search.skip_repeated, search.stop
    if search.polish:
        raise ValueError("polish (token swaps) needs the embedder's gradients: not through text (invert_host)")
    core._check_steps(program, num_steps)
    start = search.inverter_width
    e = np.asarray(embeddings, np.float32)
    B, D = e.shape
    memo: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if t not in memo))
        if new:
            out = np.asarray(embed_fn(new))
            if out.shape != (len(new), D):
                raise ValueError(
                    f"embed_fn returned shape {out.shape} for {len(new)} texts; expected ({len(new)}, {D})"
                )
            memo.update(zip(new, out.astype(np.float32)))
        return np.stack([memo[t] for t in texts]) if texts else np.zeros((0, D), np.float32)

    if start > 1:
        ids, lp = (np.asarray(x) for x in _beam_jit(program, params, e, start))
        cos = np.asarray(core._cosine(embed([decode(r) for r in ids.reshape(B * start, -1)]).reshape(B, start, D),
                                 e[:, None]))  # fmt: skip
        ids0, cos0, _ = core._best_of(ids, cos, core._scored(cos, lp, prior))
        return jax.device_get(core._result(ids0, cos0, None, None))
    with_lp = bool(prior) and num_steps > 0
    ids0, lp0 = _greedy_jit(program, params, e, True) if with_lp else (_greedy_jit(program, params, e, False), None)
    ids0 = np.asarray(ids0)
    emb0 = embed([decode(r) for r in ids0])
    cos0 = np.asarray(core._cosine(emb0, e))
    if num_steps == 0:
        return jax.device_get(core._result(ids0, cos0, None, None))
    score0 = core._scored(jnp.asarray(cos0), lp0, prior)
    state = core._start(jnp.asarray(ids0), jnp.asarray(emb0), jnp.asarray(cos0), score0)
    traces = []
    for _ in range(num_steps):
        active = np.asarray(core._active(state, stop_cosine, patience))
        m = state.hyps.shape[1]
        n = m * width
        first = np.tile(np.arange(n), (B, 1))
        cand_emb = np.zeros((B, n, D), np.float32)
        lp = np.full((B, n), -np.inf, np.float32) if with_lp else None
        if active.any():
            out = _candidates_jit(program, params, e, state.hyps, state.emb, width=width, with_logprob=with_lp)
            cand, lp = (np.asarray(out[0]), np.asarray(out[1])) if with_lp else (np.asarray(out), None)
            valid = np.repeat(np.isfinite(np.asarray(state.cos)), width, axis=1) & active[:, None]
            where = [(b, j) for b in range(B) for j in np.flatnonzero(valid[b])]
            texts = [decode(cand[b, j]) for b, j in where]
            for (b, j), v in zip(where, embed(texts)):
                cand_emb[b, j] = v
            seen: dict[tuple[int, str], int] = {}
            for (b, j), t in zip(where, texts):
                first[b, j] = seen.setdefault((b, t), j)
        else:  # nothing to work on: the step keeps every hypothesis
            cand = np.repeat(np.asarray(state.hyps), width, axis=1)
        state, trace = _host_step(state, cand, cand_emb, first, lp, e, active, beam, num_steps, skip_repeated, prior)
        traces.append(trace)
    trace = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *traces)
    return jax.device_get(core._result(jnp.asarray(ids0), jnp.asarray(cos0), trace, state, score0))
