"""Gradient-guided token swaps (HotFlip: Ebrahimi et al., ACL 2018) as a polishing step after the correction
search: a proposal source only a differentiable embedder allows.

One round, for a batch of hypotheses x [B, L] (decoder ids in the embedder's vocabulary) and targets e [B, D]:
1. the gradient g_p of cos(embed(x), e) with respect to each input token's word vector (`embedders`'s
   `_token_vectors` perturbation);
2. the first-order gain of putting token v at position p, (W_v - W_{x_p}) · g_p, for every content position
   and every token the decoders can write (not special or unused ones), and the `top` best (position, token)
   swaps per hypothesis;
3. those `top` single-token variants re-embedded exactly in one batch; the best replaces x only if it raises
   the score (the cosine, plus `prior` x the inverter's mean log-probability of the text given e when a
   language prior is set: the same ranking as the search's).

Pure functions: `polish` runs inside `drivers.invert`'s compiled program.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from v2t_jax.search import decoding
from v2t_jax.models import inverters
from v2t_jax.models import embedders

Array = jax.Array


def banned_ids(tokenizer, size: int) -> tuple[int, ...]:
    """Ids a swap never writes: the tokenizer's special tokens and the bracketed placeholders of a WordPiece or
    BPE vocabulary ("[unused12]", "[MASK]", "<mask>"), which no text tokenises to."""
    out = set()
    for i in range(size):
        t = tokenizer.id_to_token(i)
        if t is None or re.fullmatch(r"\[[^\]]+\]|<[^>]+>", t):
            out.add(i)
    for i, tok in getattr(tokenizer, "get_added_tokens_decoder", dict)().items():
        if getattr(tok, "special", False):
            out.add(int(i))
    return tuple(sorted(out))


def token_gradients(config: embedders.EmbedderConfig, params, ids: Array, cls_id: int, pad_id: int, e: Array):
    """(cosines [B], gradients [B, L, d] of each one's cosine to e with respect to the word vectors of decoder ids
    [B, L]) — the embedder sees `[CLS] + ids`, as `embedders.embed_decoder_ids` builds it."""
    full, mask = embedders.decoder_inputs(ids, cls_id, pad_id)
    d = params["backbone"]["word_embeddings"].shape[-1]

    def total(delta):
        variables = {"params": params, "perturbations": {"backbone": {embedders.TOKEN_PERTURBATION: delta}}}
        cos = embedders.cosine(embedders.SentenceEmbedder(config).apply(variables, full, mask), e)
        return jnp.sum(cos), cos

    (_, cos), g = jax.value_and_grad(total, has_aux=True)(jnp.zeros(full.shape + (d,), jnp.float32))
    return cos, g[:, 1:]


def swap_candidates(word: Array, ids: Array, grads: Array, editable: Array, banned: Array, top: int) -> Array:
    """The `top` single-token variants [B, top, L] of ids [B, L] with the largest first-order gain
    (W_v - W_{x_p}) · g_p over editable positions p ([B, L] bool) and allowed tokens v (`banned` [V] bool)."""
    B, L = ids.shape
    V = word.shape[0]
    w = word.astype(jnp.float32)
    gain = jnp.einsum("bld,vd->blv", grads, w) - jnp.sum(grads * jnp.take(w, ids, axis=0), -1, keepdims=True)
    same = jax.nn.one_hot(ids, V, dtype=bool)
    gain = jnp.where(editable[..., None] & ~banned[None, None] & ~same, gain, -jnp.inf)
    k = min(top, V)
    per_pos, tok = decoding.top_k_last(gain.reshape(B * L, V), k)  # each position's best k tokens
    per_pos, tok = per_pos.reshape(B, L * k), tok.reshape(B, L * k)
    _, j = jax.lax.top_k(per_pos, top)  # the best `top` (position, token) pairs of a hypothesis
    pos, tok = j // k, jnp.take_along_axis(tok, j, axis=1)
    cand = jnp.broadcast_to(ids[:, None], (B, top, L))
    return jnp.where(jnp.arange(L)[None, None] == pos[..., None], tok[..., None], cand)


def inverter_logprob(program, params, e: Array, ids: Array) -> Array:
    """The inverter's mean log-probability of decoder ids [B, n, L] given e [B, D] (teacher-forced) -> [B, n]."""
    B, n, L = ids.shape
    inv = inverters.Inverter(program.inverter)
    flat = ids.reshape(B * n, L)
    dec_in = jnp.concatenate([jnp.full((B * n, 1), program.pad_id, flat.dtype), flat[:, :-1]], axis=1)
    logits = inv.apply({"params": params["inverter"]}, jnp.repeat(e, n, axis=0), dec_in).astype(jnp.float32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), flat[..., None], axis=-1)[..., 0]
    total = jnp.sum(jnp.where(flat != program.pad_id, logp, 0.0), -1)
    return decoding.mean_logprob(flat, total, program.pad_id).reshape(B, n)


def polish(program, params, e: Array, ids: Array, cos: Array, rounds: int, top: int, prior: float = 0.0):
    """`rounds` rounds of gradient-guided swaps on hypotheses ids [B, L] (their cosines to e [B], as the search
    measured them) -> (ids [B, L], cosine [B], score [B],
    kept [rounds, B]: which rows took a swap in each round). Each round keeps a swap only if it raises the
    score (see the module docstring), so neither falls."""
    cfg, emb = program.embedder, params["embedder"]
    banned = jnp.zeros((cfg.backbone.vocab_size,), bool).at[jnp.asarray(program.banned, jnp.int32)].set(True)
    word = emb["backbone"]["word_embeddings"]

    def score_of(cand, cos):  # cand [B, n, L], cos [B, n]
        return cos if not prior else cos + prior * inverter_logprob(program, params, e, cand)

    def one(carry, _):
        ids, cos, score = carry
        _, g = token_gradients(cfg, emb, ids, program.cls_id, program.pad_id, e)
        editable = (ids != program.pad_id) & (ids != program.eos_id)
        cand = swap_candidates(word, ids, g, editable, banned, top)
        flat = cand.reshape(-1, cand.shape[-1])
        cand_emb = embedders.embed_decoder_ids(cfg, emb, flat, program.cls_id, program.pad_id)
        cand_cos = embedders.cosine(cand_emb.reshape(cand.shape[:2] + (-1,)), e[:, None])
        cand_score = score_of(cand, cand_cos)
        best = jnp.argmax(cand_score, axis=1)
        take = jnp.take_along_axis(cand_score, best[:, None], axis=1)[:, 0] > score
        ids = jnp.where(take[:, None], jnp.take_along_axis(cand, best[:, None, None], axis=1)[:, 0], ids)
        cos = jnp.where(take, jnp.take_along_axis(cand_cos, best[:, None], axis=1)[:, 0], cos)
        score = jnp.where(take, jnp.take_along_axis(cand_score, best[:, None], axis=1)[:, 0], score)
        return (ids, cos, score), take

    score0 = score_of(ids[:, None], cos[:, None])[:, 0]
    (ids, cos, score), kept = jax.lax.scan(one, (ids, cos, score0), None, length=rounds)
    return ids, cos, score, kept
