"""The search's pieces, shared by its drivers (`drivers.py`): what is static about an inversion
(`InversionProgram`), the beam between steps (`SearchState`), the inverter's first hypotheses, a step's candidates
from the corrector, their selection and the step's bookkeeping. Every function is pure and traceable: the drivers
compile them into one program (`invert`, `invert_stream`) or call them between host steps (`invert_host`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from v2t_jax.models import correctors, embedders, inverters
from v2t_jax.search import decoding

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class InversionProgram:
    """Everything static about an inversion: model configs and token ids. Hashable (a jit static argument).

    The decoders emit ids `t1 .. tn EOS pad ..` in the vocabulary they were trained in. In the embedder's own
    vocabulary (`cls_id` set) a hypothesis is re-embedded as `[CLS] t1 .. tn [SEP]` inside the same program
    (`invert`); in another one (`cls_id` None: T5's SentencePiece, as vec2text's GTR models) it goes through
    text to the embedder (`invert_host`). Both run the same search (`SearchState`, `_select`, `_advance`)."""

    inverter: inverters.InverterConfig
    corrector: correctors.CorrectorConfig | None  # None: an inverter-only model (num_steps must be 0)
    embedder: embedders.EmbedderConfig | None  # None: hypotheses are re-embedded through text only
    length: int  # decoder positions
    eos_id: int
    pad_id: int = 0  # also the decoder start token
    cls_id: int | None = None  # the embedder's [CLS]: set when the decoders emit the embedder's own ids
    banned: tuple[int, ...] = ()  # ids a token swap never writes (`hotflip.banned_ids`: special, unused)

    @property
    def in_graph(self) -> bool:
        return self.cls_id is not None and self.embedder is not None


class SearchState(NamedTuple):
    """A batch's sequence-level beam between correction steps (a `lax.scan` carry, or arrays on the host)."""

    hyps: Array  # [B, m, L] live hypotheses: m = 1 before the first step, the beam width after it
    emb: Array  # [B, m, D] their embeddings
    cos: Array  # [B, m] their cosines to the target; -inf marks an empty slot
    score: Array  # [B, m] what ranks them: the cosine, plus prior x log-probability with a language prior
    best_ids: Array  # [B, L] the best hypothesis seen at any step (highest score)
    best_cos: Array  # [B] its cosine
    best_score: Array  # [B] its score
    settled: Array  # [B] bool: at a fixed point or in a 2-cycle (skip_repeated)
    prev: Array  # [B, m, L] the hypotheses one step before (-1: none yet)
    t: Array  # correction steps done
    alt: Array  # [B, L] in a 2-cycle: the top hypothesis of the cycle's other state
    odd: Array  # [B] bool: the full loop would end on `alt`
    stale: Array  # [B] correction steps worked since the best last improved (`patience`)


def _embed_hypotheses(program: InversionProgram, params, ids: Array) -> Array:
    return embedders.embed_decoder_ids(program.embedder, params, ids, program.cls_id, program.pad_id)


def _cosine(a: Array, b: Array) -> Array:
    return embedders.cosine(a, b)


def _first_equal(cand: Array, valid: Array) -> Array:
    """cand [B, n, L], valid [B, n] -> [B, n]: for each candidate the index of the first valid candidate equal
    to it (itself when there is none). A candidate is kept only where this is its own index."""
    n = cand.shape[1]
    same = jnp.all(cand[:, :, None] == cand[:, None], axis=-1) & valid[:, None, :]  # [B, i, j]: j valid, = i
    return jnp.where(jnp.any(same, axis=-1), jnp.argmax(same, axis=-1), jnp.arange(n)[None])


def mean_logprob(program: InversionProgram, ids: Array, logprob: Array) -> Array:
    """Sequence log-probabilities [...] of decoder ids [..., L] divided by their lengths (tokens up to and
    including EOS): the language prior's term, comparable across lengths."""
    return decoding.mean_logprob(ids, logprob, program.pad_id)


def _inverter_decoder(program: InversionProgram, params: dict, e: Array):
    """The inverter's decoding step function and its cache for e [B, D] (what greedy and beam decoding run)."""
    inv = inverters.Inverter(program.inverter)
    vi = {"params": params["inverter"]}
    cache = inv.apply(vi, e, program.length, method=inverters.Inverter.init_cache)
    return (lambda t, c: inv.apply(vi, t, c, method=inverters.Inverter.decode_step)), cache


def greedy_hypotheses(program: InversionProgram, params: dict, e: Array, with_logprob: bool = False):
    """The inverter's greedy decode of e [B, D] -> decoder ids [B, L] (with_logprob: and `mean_logprob` [B])."""
    step, cache = _inverter_decoder(program, params, e)
    out = decoding.greedy(step, cache, e.shape[0], program.length, program.pad_id, program.eos_id, program.pad_id,
                          with_logprob=with_logprob)  # fmt: skip
    return (out[0], mean_logprob(program, *out)) if with_logprob else out


def beam_hypotheses(program: InversionProgram, params: dict, e: Array, width: int) -> tuple[Array, Array]:
    """The inverter's `width`-wide token beam search from e [B, D] -> ids [B, width, L] and each one's
    `mean_logprob` [B, width]."""
    step, cache = _inverter_decoder(program, params, e)
    ids, lp = decoding.beam_search(step, cache, e.shape[0], width, program.length, program.pad_id, program.eos_id,
                                   program.pad_id)  # fmt: skip
    return ids, mean_logprob(program, ids, lp)


def _best_of(ids: Array, cos: Array, score: Array) -> tuple[Array, Array, Array]:
    """Of k candidates per example (ids [B, k, L], cosines and scores [B, k]): the best by score (the first of
    equals) -> ids [B, L], its cosine [B] and score [B]."""
    at = jnp.argmax(score, axis=1)
    take = lambda x: jnp.take_along_axis(x, at.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]  # noqa: E731
    return take(ids), take(cos), take(score)


def initial_hypotheses(program: InversionProgram, params: dict, e: Array) -> tuple[Array, Array, Array]:
    """Step 0: the inverter's greedy decode of e [B, D] -> ids [B, L], their embeddings [B, D], cosine [B]."""
    ids = greedy_hypotheses(program, params, e)
    emb = _embed_hypotheses(program, params["embedder"], ids)
    return ids, emb, _cosine(emb, e)


def candidates(
    program: InversionProgram, params: dict, e: Array, hyps: Array, hyp_emb: Array, width: int,
    with_logprob: bool = False,
):  # fmt: skip
    """One correction step's proposals: for each of the m hypotheses [B, m, L] (embeddings [B, m, D]) of each
    target e [B, D], the corrector's `width`-wide token beam search -> m·width candidates [B, m·width, L].
    Width 1 is greedy decoding (what the reference's `generate` does with one beam). with_logprob: also each
    candidate's `mean_logprob` under the corrector [B, m·width] (the language prior)."""
    B, m, L = hyps.shape
    cor = correctors.Corrector(program.corrector)
    vc = {"params": params["corrector"]}
    flat_ids = hyps.reshape(B * m, L)
    if program.corrector.hypothesis_start_token:
        flat_ids = jnp.concatenate([jnp.full((B * m, 1), program.pad_id, flat_ids.dtype), flat_ids], axis=1)
    c = cor.apply(
        vc,
        jnp.repeat(e, m, axis=0),
        hyp_emb.reshape(B * m, -1),
        flat_ids,
        flat_ids != program.pad_id,
        L,
        method=correctors.Corrector.init_cache,
    )
    step = lambda t, cc: cor.apply(vc, t, cc, method=correctors.Corrector.decode_step)  # noqa: E731
    if width == 1:
        out = decoding.greedy(step, c, B * m, L, program.pad_id, program.eos_id, program.pad_id, with_logprob)
        cand, lp = out if with_logprob else (out, None)
    else:
        cand, lp = decoding.beam_search(step, c, B * m, width, L, program.pad_id, program.eos_id, program.pad_id)
    cand = cand.reshape(B, m * width, L)
    return (cand, mean_logprob(program, cand, lp.reshape(B, m * width))) if with_logprob else cand


# Work per piece inside one correction step: decoded beam rows and re-embedded sequences. Bigger batches run in
# pieces of this size (`_in_chunks`), so memory stays that of a batch-16, beam-4 step (the matrix products
# are as large as at 256 rows already; more rows per piece gain little speed on a CPU).
DECODE_ROWS = 256
EMBED_ROWS = 256


def _in_chunks(fn, inputs: tuple, size: int):
    """fn(*inputs) computed over the leading axis in equal pieces of at most `size` rows (`lax.map`, the last
    piece padded with copies of row 0), for memory bounded by the piece rather than the whole batch."""
    n = inputs[0].shape[0]
    if n <= size:
        return fn(*inputs)
    pieces = -(-n // size)
    size = -(-n // pieces)
    pad = pieces * size - n
    if pad:
        inputs = tuple(jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) for x in inputs)
    out = jax.lax.map(lambda xs: fn(*xs), tuple(x.reshape((pieces, size) + x.shape[1:]) for x in inputs))
    return jax.tree_util.tree_map(lambda y: y.reshape((pieces * size,) + y.shape[2:])[:n], out)


def _buckets(n: int, smallest: int) -> list[int]:
    """Row capacities n, n/2, n/4, ... down to `smallest` (rounded up), for `_on_rows`."""
    caps, c = {n}, n
    while c > smallest:
        c = -(-c // 2)
        caps.add(c)
    return sorted(caps)


def _on_rows(mask: Array, fn, inputs: tuple, fill, caps: list[int]):
    """fn(*inputs) on only the rows where `mask` [N] holds: those rows are moved to the front and fn runs on
    the smallest capacity in `caps` that holds them (one `lax.switch` branch per capacity, and one that runs
    nothing when no row does), so that rows left out cost no work. Outputs (leading dim N, as `fill`) take
    fn's values on the masked rows and `fill` elsewhere."""
    order = jnp.argsort(~mask, stable=True)  # masked rows first, in order
    count = mask.sum()

    def branch(cap):
        def run(_):
            idx = order[:cap]
            out = fn(*(jax.tree_util.tree_map(lambda x: x[idx], a) for a in inputs))
            ok = mask[idx]

            def put(f, o):
                sel = ok.reshape(ok.shape + (1,) * (o.ndim - 1))
                return f.at[idx].set(jnp.where(sel, o.astype(f.dtype), f[idx]))

            return jax.tree_util.tree_map(put, fill, out)

        return run

    branches = [lambda _: fill] + [branch(c) for c in caps]
    which = jnp.where(count == 0, 0, 1 + jnp.searchsorted(jnp.asarray(caps), count))
    return jax.lax.switch(which, branches, None)


def _start(ids0: Array, emb0: Array, cos0: Array, score0: Array) -> SearchState:
    """The search before its first correction step: the inverter's one hypothesis per example."""
    no = jnp.zeros(cos0.shape, bool)
    none = jnp.full(ids0[:, None].shape, -1, jnp.int32)
    return SearchState(
        ids0[:, None], emb0[:, None], cos0[:, None], score0[:, None], ids0, cos0, score0, no, none, jnp.int32(0),
        ids0, no, jnp.zeros(cos0.shape, jnp.int32),
    )  # fmt: skip


def _scored(cos: Array, logprob: Array | None, prior: float) -> Array:
    """The search's ranking: cosine + prior x mean log-probability (prior 0: the cosine alone, as vec2text)."""
    return cos if not prior else cos + prior * logprob


def _scored_start(program: InversionProgram, params: dict, e: Array, prior: float = 0.0):
    """Step 0 before correction steps: the inverter's greedy ids [B, L], their embeddings [B, D], cosines [B]
    and scores [B] (with a prior, by the inverter's mean log-probability)."""
    if prior:
        ids, lp = greedy_hypotheses(program, params, e, True)
    else:
        ids, lp = greedy_hypotheses(program, params, e), None
    emb = _embed_hypotheses(program, params["embedder"], ids)
    cos = _cosine(emb, e)
    return ids, emb, cos, _scored(cos, lp, prior)


def _active(state: SearchState, stop_cosine, patience: int = 0) -> Array:
    """[B]: the examples the next step works on (not at the stop cosine, not settled, and with `patience` > 0
    not `patience` steps past their best's last improvement)."""
    out = (state.best_cos < stop_cosine) & ~state.settled
    return out & (state.stale < patience) if patience else out


def _propose_in_graph(
    program: InversionProgram, params: dict, e: Array, state: SearchState, active: Array, width: int,
    skip_repeated: bool, prior: float = 0.0,
) -> tuple[Array, Array, Array, Array | None]:  # fmt: skip
    """One step's candidates [B, n, L] (n = m·width: a `width`-wide token beam from each of the m hypotheses),
    their embeddings [B, n, D], `_first_equal` [B, n] and (with a prior) their mean log-probabilities [B, n],
    with the embedder inside the program.

    skip_repeated: only the `active` rows are decoded (`_on_rows`), and only the distinct new candidates are
    embedded: a candidate equal to a current hypothesis takes its stored embedding, a repeat of another
    candidate the first one's. Without it every row and candidate costs a full decode and embedding."""
    hyps, hyp_emb = state.hyps, state.emb
    B, m, L = hyps.shape
    D = e.shape[-1]
    n = m * width
    per_row = functools.partial(candidates, program, params, width=width, with_logprob=bool(prior))
    per_seq = functools.partial(_embed_hypotheses, program, params["embedder"])

    def propose(e, hyps, hyp_emb):
        return _in_chunks(per_row, (e, hyps, hyp_emb), max(1, DECODE_ROWS // n))

    def embed(ids):  # [rows, L] -> [rows, D]
        return _in_chunks(per_seq, (ids,), EMBED_ROWS)

    valid = jnp.repeat(jnp.isfinite(state.cos), width, axis=1)  # candidates of empty slots do not count
    if not skip_repeated:
        out = propose(e, hyps, hyp_emb)
        cand, lp = out if prior else (out, None)
        return cand, embed(cand.reshape(B * n, L)).reshape(B, n, D), _first_equal(cand, valid), lp
    row_caps = _buckets(B, max(1, B // 8))
    fill = jnp.full((B, n, L), program.pad_id, jnp.int32)
    if prior:
        cand, lp = _on_rows(active, propose, (e, hyps, hyp_emb), (fill, jnp.full((B, n), -jnp.inf)), row_caps)
    else:
        cand, lp = _on_rows(active, propose, (e, hyps, hyp_emb), fill, row_caps), None
    first = _first_equal(cand, valid)
    is_hyp = jnp.all(cand[:, :, None] == hyps[:, None], axis=-1) & jnp.isfinite(state.cos)[:, None]  # [B, n, m]
    known = jnp.any(is_hyp, axis=-1)
    need = active[:, None] & valid & (first == jnp.arange(n)[None]) & ~known
    fresh = _on_rows(
        need.reshape(-1), embed, (cand.reshape(B * n, L),), jnp.zeros((B * n, D), jnp.float32),
        _buckets(B * n, max(1, B * n // 16)),
    ).reshape(B, n, D)  # fmt: skip
    fresh = jnp.take_along_axis(fresh, first[..., None], axis=1)
    stored = jnp.take_along_axis(hyp_emb, jnp.argmax(is_hyp, axis=-1)[..., None], axis=1)
    return cand, jnp.where(known[..., None], stored, fresh), first, lp


def _select(
    state: SearchState, cand: Array, cand_emb: Array, first: Array, e: Array, beam: int,
    logprob: Array | None = None, prior: float = 0.0,
) -> tuple[Array, Array, Array, Array]:  # fmt: skip
    """Scores candidates [B, n, L] (embeddings [B, n, D]) by cosine to e [B, D] (with a prior, plus prior x
    their mean log-probabilities [B, n]; n a multiple of the m current hypotheses, n >= beam) and keeps the top
    `beam` distinct ones (`first`: `_first_equal`, by ids or by text) -> hyps [B, beam, L], embeddings,
    cosines, scores; candidates of empty slots and repeats score -inf (a row with fewer distinct ones gets
    empty slots)."""
    n = cand.shape[1]
    valid = jnp.repeat(jnp.isfinite(state.cos), n // state.cos.shape[1], axis=1)  # each hypothesis' candidates
    cand_cos = _cosine(cand_emb, e[:, None])
    ok = valid & (first == jnp.arange(n)[None])
    score = jnp.where(ok, _scored(cand_cos, logprob, prior), -jnp.inf)
    top, j = jax.lax.top_k(score, beam)
    cos = jnp.take_along_axis(jnp.where(ok, cand_cos, -jnp.inf), j, axis=1)
    return (
        jnp.take_along_axis(cand, j[..., None], axis=1),
        jnp.take_along_axis(cand_emb, j[..., None], axis=1),
        jnp.where(jnp.isfinite(top), cos, -jnp.inf),
        top,
    )


def _advance(
    state: SearchState, new: tuple[Array, Array, Array, Array], active: Array, num_steps: int, skip_repeated: bool,
    widening: Array | None = None,
) -> tuple[SearchState, tuple[Array, Array, Array]]:  # fmt: skip
    """The state after a step whose selection (`_select`) is `new`, applied to the `active` rows (the others
    keep their hypotheses), and the step's trace (best ids [B, L], best cosine [B], active [B], best score
    [B]). widening [B]: rows whose one hypothesis sits in a beam-wide state (`_widened`) and takes its first
    step now; like a batch's first step, it neither settles them nor is remembered as their previous state."""
    new_hyps, new_emb, new_cos, new_score = new
    B, m, L = state.hyps.shape
    k = new_hyps.shape[1]
    hyps, emb, cos, score = state.hyps, state.emb, state.cos, state.score
    if m != k:  # step 1 widens one hypothesis to k: a row that does not work keeps it in slot 0, the rest empty
        hyps = jnp.broadcast_to(hyps[:, :1], (B, k, L))
        emb = jnp.broadcast_to(emb[:, :1], (B, k, emb.shape[-1]))
        cos = jnp.where(jnp.arange(k)[None] == 0, cos[:, :1], -jnp.inf)
        score = jnp.where(jnp.arange(k)[None] == 0, score[:, :1], -jnp.inf)
    keep = ~active
    new_hyps = jnp.where(keep[:, None, None], hyps, new_hyps)
    new_emb = jnp.where(keep[:, None, None], emb, new_emb)
    new_cos = jnp.where(keep[:, None], cos, new_cos)
    new_score = jnp.where(keep[:, None], score, new_score)
    settled, alt, odd = state.settled, state.alt, state.odd
    if skip_repeated and m == k:
        # a step is a fixed function of the hypotheses: a repeat of the last state (a fixed point) or of the one
        # before (a 2-cycle) repeats forever, and both states of a cycle have been scored already
        fixed = jnp.all(new_hyps == state.hyps, axis=(1, 2))
        if widening is not None:
            fixed = fixed & ~widening
        cycle = active & ~fixed & jnp.all(new_hyps == state.prev, axis=(1, 2))
        # the full loop's last state alternates: after an odd number of further steps it is the current one
        alt = jnp.where(cycle[:, None], state.hyps[:, 0], alt)
        odd = jnp.where(cycle, (num_steps - state.t - 1) % 2 == 1, odd)
        settled = settled | fixed | cycle
    better = (new_score[:, 0] > state.best_score) & active
    best_ids = jnp.where(better[:, None], new_hyps[:, 0], state.best_ids)
    best_cos = jnp.where(better, new_cos[:, 0], state.best_cos)
    best_score = jnp.where(better, new_score[:, 0], state.best_score)
    stale = jnp.where(better, 0, state.stale + active)
    prev = state.hyps if m == k else jnp.full(new_hyps.shape, -1, jnp.int32)
    if widening is not None:
        prev = jnp.where(widening[:, None, None], -1, prev)
    out = SearchState(
        new_hyps, new_emb, new_cos, new_score, best_ids, best_cos, best_score, settled, prev, state.t + 1, alt, odd,
        stale,
    )  # fmt: skip
    return out, (best_ids, best_cos, active, best_score)


def _result(
    ids0: Array, cos0: Array, trace: tuple | None, state: SearchState | None, score0: Array | None = None
) -> dict:
    """The search's outputs (see `invert`) from step 0 (score0: its score, the cosine by default) and the
    stacked per-step traces."""
    if trace is None:
        return {"ids": ids0, "cosine": cos0, "step_ids": ids0[None], "step_cosine": cos0[None]}
    step_ids = jnp.concatenate([ids0[None], trace[0]])
    step_cos = jnp.concatenate([cos0[None], trace[1]])
    return {
        "ids": step_ids[-1],
        "cosine": step_cos[-1],
        "step_ids": step_ids,
        "step_cosine": step_cos,
        # [S+1, B]: the best's score (the cosine without a prior); it never falls from one step to the next
        "step_score": jnp.concatenate([(cos0 if score0 is None else score0)[None], trace[3]]),
        "step_active": trace[2],  # [S, B]: which examples did the work of each correction step
        # [B, L]: the last step's top hypothesis (vec2text returns this one), as the full loop would end a cycle
        "last_ids": jnp.where(state.odd[:, None], state.alt, state.hyps[:, 0]),
    }


def _check_steps(program: InversionProgram, num_steps: int) -> None:
    if num_steps > 0 and program.corrector is None:
        raise ValueError("this model has no corrector: only num_steps=0 (inverter only) is possible")
