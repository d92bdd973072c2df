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
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from v2t_jax.inversion import EmbeddingTransform
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


@dataclasses.dataclass(frozen=True)
class InversionProgram:
    """Everything static about an inversion: model configs and token ids. Hashable (a jit static argument).

    The decoders emit embedder ids `t1 .. tn [SEP] 0 ..`; a hypothesis is re-embedded as `[CLS] t1 .. tn [SEP]`
    inside the same program."""

    inverter: "object"  # inversion.InverterConfig
    corrector: CorrectorConfig | None  # None: an inverter-only model (num_steps must be 0)
    embedder: "object"  # embedders.EmbedderConfig
    length: int  # decoder positions (embedder max_length - 1)
    cls_id: int
    eos_id: int
    pad_id: int = 0


def _embed_hypotheses(program: InversionProgram, params, ids: Array) -> Array:
    from v2t_jax.models import embedders

    return embedders.embed_decoder_ids(program.embedder, params, ids, program.cls_id, program.pad_id)


def _cosine(a: Array, b: Array) -> Array:
    from v2t_jax.models import embedders

    return embedders.cosine(a, b)


def _first_unique(seqs: Array, scores: Array) -> Array:
    """seqs [B, n, L], scores [B, n] -> scores with every repeat of a better-or-earlier sequence set to -inf."""
    order = jnp.argsort(-scores, axis=1)
    s_sorted = jnp.take_along_axis(seqs, order[..., None], axis=1)
    same = jnp.all(s_sorted[:, :, None, :] == s_sorted[:, None, :, :], axis=-1)  # [B, i, j]
    earlier = jnp.triu(jnp.ones(same.shape[1:], bool), k=1)  # [i, j]: i < j
    dup_sorted = jnp.any(same & earlier[None], axis=1)  # j repeats some better i
    dup = jnp.zeros_like(dup_sorted).at[jnp.arange(seqs.shape[0])[:, None], order].set(dup_sorted)
    return jnp.where(dup, -jnp.inf, scores)


def greedy_hypotheses(program: InversionProgram, params: dict, e: Array) -> Array:
    """The inverter's greedy decode of e [B, D] -> decoder ids [B, L]."""
    from v2t_jax import decoding, inversion

    inv = inversion.Inverter(program.inverter)
    vi = {"params": params["inverter"]}
    cache = inv.apply(vi, e, program.length, method=inversion.Inverter.init_cache)
    return decoding.greedy(
        lambda t, c: inv.apply(vi, t, c, method=inversion.Inverter.decode_step),
        cache,
        e.shape[0],
        program.length,
        program.pad_id,
        program.eos_id,
        program.pad_id,
    )


def initial_hypotheses(program: InversionProgram, params: dict, e: Array) -> tuple[Array, Array, Array]:
    """Step 0: the inverter's greedy decode of e [B, D] -> ids [B, L], their embeddings [B, D], cosine [B]."""
    ids = greedy_hypotheses(program, params, e)
    emb = _embed_hypotheses(program, params["embedder"], ids)
    return ids, emb, _cosine(emb, e)


def candidates(program: InversionProgram, params: dict, e: Array, hyps: Array, hyp_emb: Array, width: int) -> Array:
    """One correction step's proposals: for each of the m hypotheses [B, m, L] (embeddings [B, m, D]) of each
    target e [B, D], the corrector's `width`-wide token beam search -> m·width candidates [B, m·width, L].
    Width 1 is greedy decoding (what the reference's `generate` does with one beam)."""
    from v2t_jax import decoding

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
        cand = decoding.greedy(step, c, B * m, L, program.pad_id, program.eos_id, program.pad_id)
    else:
        cand, _ = decoding.beam_search(step, c, B * m, width, L, program.pad_id, program.eos_id, program.pad_id)
    return cand.reshape(B, m * width, L)


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


def _correct(
    program: InversionProgram,
    params: dict,
    e: Array,
    hyps: Array,
    hyp_emb: Array,
    hyp_cos: Array,
    active: Array,
    beam: int,
    skip_repeated: bool,
) -> tuple[Array, Array, Array]:
    """One correction step for the rows where `active` [B] holds: candidates from the m live hypotheses
    [B, m, L] (empty slots: hyp_cos -inf), re-embedded and scored by cosine to e; the top `beam` unique ones
    -> (hyps [B, beam, L], embeddings, cosines). Inactive rows keep their hypotheses.

    skip_repeated: finished rows leave the batch (`_on_rows`), and only the distinct new candidates are
    re-embedded: a candidate equal to a current hypothesis takes its stored embedding, a repeat of another
    candidate the first one's. Without it every row and candidate costs a full decode and embedding."""
    B, m, L = hyps.shape
    D = e.shape[-1]
    n = m * beam
    per_row = functools.partial(candidates, program, params, width=beam)
    per_seq = functools.partial(_embed_hypotheses, program, params["embedder"])

    def propose(e, hyps, hyp_emb):
        return _in_chunks(per_row, (e, hyps, hyp_emb), max(1, DECODE_ROWS // n))

    def embed(ids):  # [rows, L] -> [rows, D]
        return _in_chunks(per_seq, (ids,), EMBED_ROWS)

    parent_ok = jnp.repeat(jnp.isfinite(hyp_cos), beam, axis=1)  # [B, n]: candidates of empty slots do not count
    if not skip_repeated:
        cand = propose(e, hyps, hyp_emb)
        cand_emb = embed(cand.reshape(B * n, L)).reshape(B, n, D)
    else:
        row_caps = _buckets(B, max(1, B // 8))
        cand = _on_rows(active, propose, (e, hyps, hyp_emb), jnp.full((B, n, L), program.pad_id, jnp.int32), row_caps)
        same = jnp.all(cand[:, :, None] == cand[:, None], axis=-1)  # [B, n, n]
        first = jnp.argmax(same, axis=-1)  # the first candidate equal to each one (itself if none earlier)
        is_hyp = jnp.all(cand[:, :, None] == hyps[:, None], axis=-1) & jnp.isfinite(hyp_cos)[:, None]  # [B, n, m]
        known = jnp.any(is_hyp, axis=-1)
        need = active[:, None] & parent_ok & (first == jnp.arange(n)[None]) & ~known
        flat = cand.reshape(B * n, L)
        fresh = _on_rows(
            need.reshape(-1), embed, (flat,), jnp.zeros((B * n, D), jnp.float32), _buckets(B * n, max(1, B * n // 16))
        ).reshape(B, n, D)
        fresh = jnp.take_along_axis(fresh, first[..., None], axis=1)
        stored = jnp.take_along_axis(hyp_emb, jnp.argmax(is_hyp, axis=-1)[..., None], axis=1)
        cand_emb = jnp.where(known[..., None], stored, fresh)
    cand_cos = _cosine(cand_emb, e[:, None])
    score = _first_unique(cand, jnp.where(parent_ok, cand_cos, -jnp.inf))
    top, j = jax.lax.top_k(score, beam)
    new_hyps = jnp.take_along_axis(cand, j[..., None], axis=1)
    new_emb = jnp.take_along_axis(cand_emb, j[..., None], axis=1)
    if m != beam:  # step 1: a row that does not work keeps its one hypothesis in slot 0, the others empty
        hyps = jnp.broadcast_to(hyps[:, :1], (B, beam, L))
        hyp_emb = jnp.broadcast_to(hyp_emb[:, :1], (B, beam, D))
        hyp_cos = jnp.where(jnp.arange(beam)[None] == 0, hyp_cos[:, :1], -jnp.inf)
    keep = ~active
    return (
        jnp.where(keep[:, None, None], hyps, new_hyps),
        jnp.where(keep[:, None, None], hyp_emb, new_emb),
        jnp.where(keep[:, None], hyp_cos, top),
    )


def invert(
    program: InversionProgram,
    params: dict,
    embeddings: Array,
    num_steps: int,
    beam: int,
    stop_cosine: float = 2.0,
    skip_repeated: bool = False,
    score: bool = True,
) -> dict:
    """The whole N-step inversion as one program (jit it with program, num_steps, beam, skip_repeated and
    score static).

    params: {"inverter": ..., "corrector": ..., "embedder": ...}; embeddings [B, D].
    Step 0 is the inverter's greedy decode. Step 1 decodes `beam` continuations of that one hypothesis; each
    later step `beam` continuations of each of the `beam` current hypotheses (beam 1: greedy decoding), re-embeds
    the candidates, scores them by cosine to the target and keeps the top `beam` unique ones. The best
    hypothesis seen at any step is tracked; an example whose best cosine reaches `stop_cosine` stops.

    skip_repeated: an example whose hypotheses come back unchanged from a step has reached a fixed point (every
    later step would repeat it exactly), and one whose hypotheses come back as they were two steps before is in
    a 2-cycle (both of its states already scored), so it stops; stopped examples leave the batch, and only distinct new
    candidates are re-embedded (`_correct`). The texts are those of the full loop, up to floating-point
    rounding in near-ties, at a fraction of its work on a trained model.
    score: False skips re-embedding the step-0 hypothesis when there are no correction steps (its cosine is
    then NaN): the inverter's work alone, as vec2text does.

    Returns ids [B, L] and cosine [B] of the best hypothesis, per-step best ids [S+1, B, L] and best
    cosines [S+1, B] (step 0 first), and with correction steps which examples worked at each [S, B] and the
    last step's top hypothesis [B, L] (what vec2text returns; the best seen may come from an earlier step).
    """
    e = embeddings.astype(jnp.float32)
    B, k = e.shape[0], beam
    if num_steps > 0 and program.corrector is None:
        raise ValueError("this model has no corrector: only num_steps=0 (inverter only) is possible")

    ids0 = greedy_hypotheses(program, params, e)
    if num_steps == 0 and not score:
        nan = jnp.full((B,), jnp.nan, jnp.float32)
        return {"ids": ids0, "cosine": nan, "step_ids": ids0[None], "step_cosine": nan[None]}
    emb0 = _embed_hypotheses(program, params["embedder"], ids0)
    cos0 = _cosine(emb0, e)
    if num_steps == 0:
        return {"ids": ids0, "cosine": cos0, "step_ids": ids0[None], "step_cosine": cos0[None]}

    def step(carry, _):
        hyps, hyp_emb, hyp_cos, best_ids, best_cos, settled, prev, t, alt, odd = carry
        active = (best_cos < stop_cosine) & ~settled
        new_hyps, new_emb, new_cos = _correct(program, params, e, hyps, hyp_emb, hyp_cos, active, k, skip_repeated)
        if skip_repeated and new_hyps.shape == hyps.shape:  # not at step 1, which widens one hypothesis to k
            # the step is a fixed function of the hypotheses: a repeat of the last state (a fixed point) or of
            # the one before (a 2-cycle) repeats forever, and both states of a cycle have been scored already
            fixed = jnp.all(new_hyps == hyps, axis=(1, 2))
            cycle = active & ~fixed & jnp.all(new_hyps == prev, axis=(1, 2))
            # the full loop's last state alternates: after an odd number of further steps it is `hyps`
            alt = jnp.where(cycle[:, None], hyps[:, 0], alt)
            odd = jnp.where(cycle, (num_steps - t) % 2 == 1, odd)
            settled = settled | fixed | cycle
        better = (new_cos[:, 0] > best_cos) & active
        best_ids = jnp.where(better[:, None], new_hyps[:, 0], best_ids)
        best_cos = jnp.where(better, new_cos[:, 0], best_cos)
        prev = hyps if hyps.shape == new_hyps.shape else jnp.full(new_hyps.shape, -1, jnp.int32)
        out = (new_hyps, new_emb, new_cos, best_ids, best_cos, settled, prev, t + 1, alt, odd)
        return out, (best_ids, best_cos, active)

    # step 1 works from the one hypothesis of step 0 (k candidates per example, not k² from k copies of it)
    none = jnp.full((B, 1, ids0.shape[-1]), -1, jnp.int32)
    no = jnp.zeros((B,), bool)
    first = (ids0[:, None], emb0[:, None], cos0[:, None], ids0, cos0, no, none, jnp.int32(1), ids0, no)
    carry, trace1 = step(first, None)
    trace = jax.tree_util.tree_map(lambda x: x[None], trace1)
    if num_steps > 1:
        carry, rest = jax.lax.scan(step, carry, None, length=num_steps - 1)
        trace = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), trace, rest)
    trace_ids = jnp.concatenate([ids0[None], trace[0]])
    trace_cos = jnp.concatenate([cos0[None], trace[1]])
    return {
        "ids": trace_ids[-1],
        "cosine": trace_cos[-1],
        "step_ids": trace_ids,
        "step_cosine": trace_cos,
        "step_active": trace[2],  # [S, B]: which examples did the work of each correction step
        # [B, L]: the last step's top hypothesis (vec2text returns this one), as the full loop would end a cycle
        "last_ids": jnp.where(carry[9][:, None], carry[8], carry[0][:, 0]),
    }


# ----------------------------------------------------------------------------- host-side re-embedding

_greedy_jit = jax.jit(greedy_hypotheses, static_argnums=0)
_candidates_jit = jax.jit(candidates, static_argnums=0, static_argnames="width")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def invert_host(
    program: InversionProgram,
    params: dict,
    embeddings,
    num_steps: int,
    beam: int,
    decode: Callable[[np.ndarray], str],
    embed_fn: Callable[[list[str]], np.ndarray],
    stop_cosine: float = 2.0,
) -> dict:
    """`invert` for an embedder that cannot run inside the program (a black box such as a remote API).

    The inverter's and corrector's decoding stay compiled (`greedy_hypotheses`, `candidates`); each step's
    candidates are decoded to strings on the host, `embed_fn(list of strings) -> [n, D]` embeds them, and the
    same selection as `invert` follows (cosine to the target, top-`beam` unique, best-so-far, per-example stop).
    Uniqueness is by string (what the embedder sees). Each distinct string is embedded once per call
    (a memo across steps), and candidates of finished examples are not embedded at all.
    Returns what `invert` returns, as numpy arrays.
    """
    e = np.asarray(embeddings, np.float32)
    k = beam
    if num_steps > 0 and program.corrector is None:
        raise ValueError("this model has no corrector: only num_steps=0 (inverter only) is possible")
    target = _unit_rows(e)
    memo: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if t not in memo))
        if new:
            out = np.asarray(embed_fn(new))
            if out.shape != (len(new), e.shape[1]):
                raise ValueError(
                    f"embed_fn returned shape {out.shape} for {len(new)} texts; expected ({len(new)}, {e.shape[1]})"
                )
            memo.update(zip(new, np.asarray(out, np.float32)))
        return np.stack([memo[t] for t in texts]) if texts else np.zeros((0, e.shape[1]), np.float32)

    ids0 = np.asarray(_greedy_jit(program, params, e))
    texts0 = [decode(r) for r in ids0]
    emb0 = embed(texts0)
    cos0 = np.einsum("bd,bd->b", _unit_rows(emb0), target)
    hyps, hyp_emb, hyp_cos = ids0[:, None], emb0[:, None], cos0[:, None]  # step 1: one hypothesis each
    best_ids, best_cos = ids0.copy(), cos0.copy()
    trace_ids, trace_cos = [ids0.copy()], [cos0.copy()]
    for _ in range(num_steps):
        done = best_cos >= stop_cosine
        m = hyps.shape[1]
        if not done.all():
            cand = np.asarray(_candidates_jit(program, params, e, hyps, hyp_emb, width=k))  # [B, m*k, L]
            parent_ok = np.repeat(np.isfinite(hyp_cos), k, axis=1)
            # finished examples keep their hypotheses (copies of the one at step 1)
            new_hyps = np.repeat(hyps[:, :1], k, axis=1) if m != k else hyps.copy()
            new_emb = np.repeat(hyp_emb[:, :1], k, axis=1) if m != k else hyp_emb.copy()
            new_cos = np.repeat(hyp_cos[:, :1], k, axis=1) if m != k else hyp_cos.copy()
            for b in np.flatnonzero(~done):
                valid = np.flatnonzero(parent_ok[b])
                texts = [decode(cand[b, j]) for j in valid]
                emb = embed(texts)
                score = np.full(m * k, -np.inf)
                score[valid] = _unit_rows(emb) @ target[b]
                seen: set[str] = set()
                for j in np.argsort(-score, kind="stable"):  # keep the first (best, then earliest) of each string
                    if not np.isfinite(score[j]):
                        break
                    t = texts[int(np.searchsorted(valid, j))]
                    if t in seen:
                        score[j] = -np.inf
                    seen.add(t)
                top = np.argsort(-score, kind="stable")[:k]
                new_hyps[b] = cand[b, top]
                new_cos[b] = score[top]
                by_index = dict(zip(valid.tolist(), emb))
                new_emb[b] = np.stack([by_index.get(int(j), hyp_emb[b, 0]) for j in top])
                if new_cos[b, 0] > best_cos[b]:
                    best_ids[b], best_cos[b] = new_hyps[b, 0], new_cos[b, 0]
            hyps, hyp_emb, hyp_cos = new_hyps, new_emb, new_cos
        trace_ids.append(best_ids.copy())
        trace_cos.append(best_cos.copy())
    return {"ids": best_ids, "cosine": best_cos, "step_ids": np.stack(trace_ids), "step_cosine": np.stack(trace_cos)}
