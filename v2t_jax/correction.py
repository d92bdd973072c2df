"""The corrector: rewrites a hypothesis given the target embedding e, the hypothesis embedding ê and
the hypothesis tokens (vec2text's `CorrectorEncoderModel`).

Encoder input, 4 + 3 * R + n positions (R = num_repeat_tokens, n hypothesis tokens):

    [SEP, proj_e(e), SEP, proj_h(ê), SEP, proj_d(e - ê), SEP, token_embeddings(hypothesis)]

then one LayerNorm over the whole sequence. SEP is the embedding of the backbone's EOS token. The paper
omits the separators and the LayerNorm; the reference code has them, and checkpoint import needs them.
`ignore_hypothesis_embedding` is the "no feedback" ablation: ê is replaced by e (so e - ê = 0).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from v2t_jax import decoding, hotflip, inversion
from v2t_jax.inversion import EmbeddingTransform
from v2t_jax.models import embedders
from v2t_jax.models import t5 as t5_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CorrectorConfig:
    t5: t5_lib.T5Config
    embed_dim: int = 384
    bottleneck_dim: int | None = None  # defaults to embed_dim
    num_repeat_tokens: int = 16
    dropout_rate: float = 0.0  # of the three projections (vec2text 0.0.13: 0)
    ignore_hypothesis_embedding: bool = False
    training_noise: float = 0.0  # Gaussian noise on e and ê in training (vec2text 0.0.13: 0; later versions 1e-5)
    layer_norm_eps: float = 1e-5  # torch.nn.LayerNorm's default
    # vec2text feeds each hypothesis back as `generate` returns it, led by the decoder start token (pad, masked
    # out), so its hypothesis tokens sit one position later and its correctors were trained so: imported
    # correctors set this. Ours are trained on hypotheses without it.
    hypothesis_start_token: bool = False

    @property
    def bottleneck(self) -> int:
        return self.bottleneck_dim or self.embed_dim

    @property
    def prefix_length(self) -> int:
        return 4 + 3 * self.num_repeat_tokens


class Corrector(nn.Module):
    config: CorrectorConfig

    def setup(self):
        cfg = self.config

        def transform(name):
            return EmbeddingTransform(
                cfg.embed_dim,
                cfg.bottleneck,
                cfg.t5.d_model,
                cfg.num_repeat_tokens,
                cfg.dropout_rate,
                name=name,
            )

        self.transform_target = transform("transform_target")
        self.transform_hypothesis = transform("transform_hypothesis")
        self.transform_diff = transform("transform_diff")
        self.layernorm = nn.LayerNorm(
            epsilon=cfg.layer_norm_eps,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        )
        self.t5 = t5_lib.T5(cfg.t5)

    def encoder_inputs(
        self, e: Array, e_hat: Array, hyp_ids: Array, hyp_mask: Array, deterministic: bool = True
    ) -> tuple[Array, Array]:
        """e, ê [b, d_emb]; hypothesis ids/mask [b, n] -> inputs_embeds [b, 4 + 3R + n, d_model], mask."""
        cfg = self.config
        e = e.astype(jnp.float32)
        e_hat = e_hat.astype(jnp.float32)
        if cfg.training_noise > 0 and not deterministic:
            r1, r2 = jax.random.split(self.make_rng("noise"))
            e = e + cfg.training_noise * jax.random.normal(r1, e.shape)
            e_hat = e_hat + cfg.training_noise * jax.random.normal(r2, e_hat.shape)
        if cfg.ignore_hypothesis_embedding:
            e_hat = e
        b = e.shape[0]
        sep = jnp.broadcast_to(self.t5.embed(jnp.full((b, 1), cfg.t5.eos_token_id, jnp.int32)), (b, 1, cfg.t5.d_model))
        parts = [
            sep,
            self.transform_target(e, deterministic),
            sep,
            self.transform_hypothesis(e_hat, deterministic),
            sep,
            self.transform_diff(e - e_hat, deterministic),
            sep,
            self.t5.embed(hyp_ids),
        ]
        x = self.layernorm(jnp.concatenate([p.astype(jnp.float32) for p in parts], axis=1))
        mask = jnp.concatenate([jnp.ones((b, cfg.prefix_length), bool), hyp_mask.astype(bool)], axis=1)
        return x, mask

    def encode(self, e, e_hat, hyp_ids, hyp_mask, deterministic: bool = True) -> tuple[Array, Array]:
        x, mask = self.encoder_inputs(e, e_hat, hyp_ids, hyp_mask, deterministic)
        return self.t5.encode(inputs_embeds=x, attention_mask=mask, deterministic=deterministic), mask

    def __call__(self, e, e_hat, hyp_ids, hyp_mask, decoder_input_ids, deterministic: bool = True) -> Array:
        enc, mask = self.encode(e, e_hat, hyp_ids, hyp_mask, deterministic)
        return self.t5.decode(decoder_input_ids, enc, mask, None, deterministic)

    def init_cache(self, e, e_hat, hyp_ids, hyp_mask, max_length: int) -> t5_lib.DecoderCache:
        enc, mask = self.encode(e, e_hat, hyp_ids, hyp_mask, True)
        return self.t5.init_cache(enc, mask, max_length)

    def decode_step(self, ids: Array, cache: t5_lib.DecoderCache) -> tuple[Array, t5_lib.DecoderCache]:
        return self.t5.decode_step(ids, cache)


# ----------------------------------------------------------------------------- the compiled inversion program
# ----------------------------------------------------------------------------- the search


@dataclasses.dataclass(frozen=True)
class InversionProgram:
    """Everything static about an inversion: model configs and token ids. Hashable (a jit static argument).

    The decoders emit ids `t1 .. tn EOS pad ..` in the vocabulary they were trained in. In the embedder's own
    vocabulary (`cls_id` set) a hypothesis is re-embedded as `[CLS] t1 .. tn [SEP]` inside the same program
    (`invert`); in another one (`cls_id` None: T5's SentencePiece, as vec2text's GTR models) it goes through
    text to the embedder (`invert_host`). Both run the same search (`SearchState`, `_select`, `_advance`)."""

    inverter: inversion.InverterConfig
    corrector: CorrectorConfig | None  # None: an inverter-only model (num_steps must be 0)
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
    inv = inversion.Inverter(program.inverter)
    vi = {"params": params["inverter"]}
    cache = inv.apply(vi, e, program.length, method=inversion.Inverter.init_cache)
    return (lambda t, c: inv.apply(vi, t, c, method=inversion.Inverter.decode_step)), cache


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


def _inverter_width(num_steps: int, width: int | None) -> int:
    """The inverter's token beam width: `width` with no correction steps, else 1 (greedy; None is greedy too)."""
    return width if num_steps == 0 and width is not None and width > 1 else 1


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
    cor = Corrector(program.corrector)
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
        method=Corrector.init_cache,
    )
    step = lambda t, cc: cor.apply(vc, t, cc, method=Corrector.decode_step)  # noqa: E731
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


def _check_width(beam: int, width: int | None) -> int:
    """The token beam width of a search keeping `beam` hypotheses: `width` (None: `beam`, as vec2text), at least
    `beam` (a step from one hypothesis must propose enough candidates to fill the beam)."""
    width = beam if width is None else width
    if width < beam:
        raise ValueError(f"the token beam width ({width}) must be at least the sequence beam width ({beam})")
    return width


def invert(
    program: InversionProgram,
    params: dict,
    embeddings: Array,
    num_steps: int,
    beam: int,
    stop_cosine: float = 2.0,
    skip_repeated: bool = False,
    score: bool = True,
    prior: float = 0.0,
    polish: int = 0,
    polish_top: int = 16,
    patience: int = 0,
    width: int | None = None,
) -> dict:
    """The whole N-step inversion as one program (jit it with program, num_steps, beam, skip_repeated and
    score static), for a program that decodes in the embedder's vocabulary (`program.in_graph`).

    params: {"inverter": ..., "corrector": ..., "embedder": ...}; embeddings [B, D].
    Step 0 is the inverter's greedy decode. Step 1 decodes `width` continuations of that one hypothesis; each
    later step `width` continuations of each of the `beam` current hypotheses (a token beam search; width 1:
    greedy decoding), re-embeds the candidates, scores them by cosine to the target and keeps the top `beam`
    unique ones. width None is `beam` (vec2text's sequence beam: beam² candidates); width >= beam. The best
    hypothesis seen at any step is tracked; an example whose best cosine reaches `stop_cosine` stops.
    With no correction steps, a `width` > 1 is the inverter's: its width-wide token beam search, re-embedded,
    and the best by cosine (+ prior) kept; None or 1 is its greedy decode, whatever `beam`. (With correction
    steps step 0 stays greedy: a beam there, tried, did not change what the steps end with.)

    skip_repeated: an example whose hypotheses come back unchanged from a step has reached a fixed point (every
    later step would repeat it exactly), and one whose hypotheses come back as they were two steps before is in
    a 2-cycle (both of its states already scored), so it stops; stopped examples leave the batch, and only
    distinct new candidates are re-embedded (`_propose_in_graph`). The texts are those of the full loop, up to
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
    `polish_top` exactly re-embedded swaps per round, kept only if they raise the score); the per-step
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
    _check_steps(program, num_steps)
    e = embeddings.astype(jnp.float32)
    k = _inverter_width(num_steps, width)
    if k > 1:  # the inverter's token beam, the best kept; in pieces, as a correction step's candidates
        per_row = functools.partial(beam_hypotheses, program, params, width=k)
        ids, lp = _in_chunks(per_row, (e,), max(1, DECODE_ROWS // k))
        B, _, L = ids.shape
        per_seq = functools.partial(_embed_hypotheses, program, params["embedder"])
        cos = _cosine(_in_chunks(per_seq, (ids.reshape(B * k, L),), EMBED_ROWS).reshape(B, k, -1), e[:, None])
        ids0, cos0, _ = _best_of(ids, cos, _scored(cos, lp, prior))
        return _polished(program, params, e, _result(ids0, cos0, None, None), polish, polish_top, prior)
    if num_steps == 0:
        ids0 = greedy_hypotheses(program, params, e)
        if not score:
            return _result(ids0, jnp.full(ids0.shape[:1], jnp.nan, jnp.float32), None, None)
        cos0 = _cosine(_embed_hypotheses(program, params["embedder"], ids0), e)
        return _polished(program, params, e, _result(ids0, cos0, None, None), polish, polish_top, prior)
    width = _check_width(beam, width)
    ids0, emb0, cos0, score0 = _scored_start(program, params, e, prior)

    def step(state: SearchState, _):
        active = _active(state, stop_cosine, patience)
        cand, cand_emb, first, lp = _propose_in_graph(program, params, e, state, active, width, skip_repeated, prior)
        new = _select(state, cand, cand_emb, first, e, beam, lp, prior)
        return _advance(state, new, active, num_steps, skip_repeated)

    # step 1 works from the one hypothesis of step 0 (width candidates per example, not beam·width from copies)
    state, trace1 = step(_start(ids0, emb0, cos0, score0), None)
    trace = jax.tree_util.tree_map(lambda x: x[None], trace1)
    if num_steps > 1:
        state, rest = jax.lax.scan(step, state, None, length=num_steps - 1)
        trace = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), trace, rest)
    return _polished(program, params, e, _result(ids0, cos0, trace, state, score0), polish, polish_top, prior)


# ----------------------------------------------------------------------------- continuous batching


class StreamState(NamedTuple):
    """`invert_stream`'s loop carry: B slots, each holding one example's search (or none), over N examples."""

    search: SearchState  # [B, beam, ...] one example's search per slot; `t` [B] its correction steps done
    idx: Array  # [B] the example each slot holds (N: none)
    next: Array  # [] the next example to load
    ids: Array  # [N, L] each finished example's best hypothesis
    cos: Array  # [N] its cosine
    steps: Array  # [N] the correction steps it took
    rounds: Array  # [] loop rounds: slot-batch steps run


def _widened(ids0: Array, emb0: Array, cos0: Array, score0: Array, beam: int, pad_id: int) -> SearchState:
    """The search before its first correction step, beam-wide: the inverter's hypothesis in slot 0, the other
    slots empty (padding, cosine -inf: their candidates never count), so that examples at any step share one
    state shape."""
    B, L = ids0.shape
    first = jnp.arange(beam)[None] == 0

    def slot0(x, empty):
        x = jnp.broadcast_to(x[:, None], (B, beam) + x.shape[1:])
        return jnp.where(first.reshape(first.shape + (1,) * (x.ndim - 2)), x, jnp.asarray(empty, x.dtype))

    no = jnp.zeros((B,), bool)
    return SearchState(
        slot0(ids0, pad_id), slot0(emb0, 0.0), slot0(cos0, -jnp.inf), slot0(score0, -jnp.inf), ids0, cos0, score0,
        no, jnp.full((B, beam, L), -1, jnp.int32), jnp.zeros((B,), jnp.int32), ids0, no, jnp.zeros((B,), jnp.int32),
    )  # fmt: skip


def invert_stream(
    program: InversionProgram,
    params: dict,
    embeddings: Array,
    count: Array,
    slots: int,
    num_steps: int,
    beam: int,
    stop_cosine: float = 2.0,
    prior: float = 0.0,
    patience: int = 0,
    width: int | None = None,
) -> dict:
    """`invert` with skip_repeated over a queue of N examples (the first `count` of `embeddings` [N, D]; N a
    multiple of `slots`) through `slots` rows of work, as one program (jit it with program, slots, num_steps,
    beam, prior, patience and width static): continuous batching. Step 0 runs for every example, a slot batch at
    a time; then each round of a `lax.while_loop` loads pending examples into free slots, takes one correction
    step on the slots that work, and retires the examples that are done (their steps run, a fixed point or
    2-cycle, or the stop cosine), writing their results back by index. A slot never idles while examples wait,
    where a batch costs a whole batch until its slowest example ends.

    Each example's search is the one `invert` runs on it (the same candidates, selection and stopping), so the
    texts are the same. Returns ids [N, L] and cosine [N] of each example's best hypothesis, steps [N] (the
    correction steps it took) and rounds [] (slot-batch steps run)."""
    if not program.in_graph:
        raise ValueError("this program decodes in another vocabulary than the embedder's: use invert_host")
    if num_steps < 1:
        raise ValueError("invert_stream needs correction steps (num_steps >= 1); step 0 alone is `invert`")
    _check_steps(program, num_steps)
    width = _check_width(beam, width)
    e_all = embeddings.astype(jnp.float32)
    N, D = e_all.shape
    if N % slots:
        raise ValueError(f"{N} examples are not a whole number of {slots}-slot batches")
    L = program.length

    step0 = functools.partial(_scored_start, program, params, prior=prior)

    def step0_or_none(args):  # a slot batch of padding (at or past `count`) is not decoded
        x, k = args
        shapes = jax.eval_shape(step0, x)
        nothing = lambda _: jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)  # noqa: E731
        return jax.lax.cond(k * slots < count, step0, nothing, x)

    pieces = jax.lax.map(step0_or_none, (e_all.reshape(N // slots, slots, D), jnp.arange(N // slots)))
    ids0, emb0, cos0, score0 = (x.reshape((N,) + x.shape[2:]) for x in pieces)

    def load(state: SearchState, take: Array, j: Array) -> SearchState:
        fresh = _widened(ids0[j], emb0[j], cos0[j], score0[j], beam, program.pad_id)
        return jax.tree_util.tree_map(
            lambda old, new: jnp.where(take.reshape(take.shape + (1,) * (new.ndim - 1)), new, old), state, fresh
        )

    def done(state: SearchState, idx: Array) -> Array:
        return (idx < N) & ((state.t >= num_steps) | ~_active(state, stop_cosine, patience))

    def body(c: StreamState) -> StreamState:
        free = c.idx >= N
        new = c.next + jnp.cumsum(free) - 1
        take = free & (new < count)
        state = load(c.search, take, jnp.where(take, new, 0))
        idx = jnp.where(take, new, c.idx)
        e = e_all[jnp.minimum(idx, N - 1)]
        active = (idx < N) & _active(state, stop_cosine, patience) & (state.t < num_steps)
        cand, cand_emb, first, lp = _propose_in_graph(program, params, e, state, active, width, True, prior)
        sel = _select(state, cand, cand_emb, first, e, beam, lp, prior)
        widening = (state.t == 0) if beam > 1 else None
        after, _ = _advance(state, sel, active, num_steps, True, widening)
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


def _polished(program: InversionProgram, params: dict, e: Array, out: dict, rounds: int, top: int, prior: float):
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

_greedy_jit = jax.jit(greedy_hypotheses, static_argnums=(0, 3))
_beam_jit = jax.jit(beam_hypotheses, static_argnums=(0, 3))
_candidates_jit = jax.jit(candidates, static_argnums=0, static_argnames=("width", "with_logprob"))


@functools.partial(jax.jit, static_argnames=("beam", "num_steps", "skip_repeated", "prior"))
def _host_step(
    state, cand, cand_emb, first, lp, e, active, beam: int, num_steps: int, skip_repeated: bool, prior: float
):  # fmt: skip
    new = _select(state, cand, cand_emb, first, e, beam, lp, prior)
    return _advance(state, new, active, num_steps, skip_repeated)


def invert_host(
    program: InversionProgram,
    params: dict,
    embeddings,
    num_steps: int,
    beam: int,
    decode: Callable[[np.ndarray], str],
    embed_fn: Callable[[list[str]], np.ndarray],
    stop_cosine: float = 2.0,
    skip_repeated: bool = False,
    prior: float = 0.0,
    patience: int = 0,
    width: int | None = None,
) -> dict:
    """`invert` for hypotheses that are re-embedded through text: a model decoding in another vocabulary than
    the embedder's, or a black-box embedder (a remote API).

    The decoding stays compiled (`greedy_hypotheses`, `candidates`) and so does the selection (`_select`,
    `_advance`: the same search as `invert`); between them each step's candidates are decoded to strings on the
    host and `embed_fn(list of strings) -> [n, D]` embeds them, one call per step. Repeats are by string (what
    the embedder sees); each distinct string is embedded once per call (a memo across steps), and candidates of
    finished examples are not embedded at all. Returns what `invert` returns, as numpy arrays.
    """
    _check_steps(program, num_steps)
    start = _inverter_width(num_steps, width)
    width = _check_width(beam, width) if num_steps else width  # (no sequence beam to fill at 0 steps)
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
        cos = np.asarray(_cosine(embed([decode(r) for r in ids.reshape(B * start, -1)]).reshape(B, start, D),
                                 e[:, None]))  # fmt: skip
        ids0, cos0, _ = _best_of(ids, cos, _scored(cos, lp, prior))
        return jax.device_get(_result(ids0, cos0, None, None))
    with_lp = bool(prior) and num_steps > 0
    ids0, lp0 = _greedy_jit(program, params, e, True) if with_lp else (_greedy_jit(program, params, e, False), None)
    ids0 = np.asarray(ids0)
    emb0 = embed([decode(r) for r in ids0])
    cos0 = np.asarray(_cosine(emb0, e))
    if num_steps == 0:
        return jax.device_get(_result(ids0, cos0, None, None))
    score0 = _scored(jnp.asarray(cos0), lp0, prior)
    state = _start(jnp.asarray(ids0), jnp.asarray(emb0), jnp.asarray(cos0), score0)
    traces = []
    for _ in range(num_steps):
        active = np.asarray(_active(state, stop_cosine, patience))
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
    return jax.device_get(_result(jnp.asarray(ids0), jnp.asarray(cos0), trace, state, score0))
