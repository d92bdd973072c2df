"""Decoding as pure functions; the model enters only through `tokens_to_logits(ids, cache) -> (logits, cache)`.

Shapes: b batch, v vocabulary.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Cache = Any
TokensToLogits = Callable[[Array, Cache], tuple[Array, Cache]]


def greedy(
    tokens_to_logits: TokensToLogits,
    cache: Cache,
    batch: int,
    max_length: int,
    start_id: int,
    eos_id: int,
    pad_id: int = 0,
) -> Array:
    """Greedy decoding for `max_length` steps -> ids [b, max_length]; positions after EOS hold `pad_id`."""

    def step(carry, _):
        prev, done, cache = carry
        logits, cache = tokens_to_logits(prev[:, None], cache)  # [b, 1, v]
        nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, pad_id, nxt)
        done = done | (nxt == eos_id)
        return (nxt, done, cache), nxt

    init = (jnp.full((batch,), start_id, jnp.int32), jnp.zeros((batch,), bool), cache)
    _, ids = jax.lax.scan(step, init, None, length=max_length)
    return ids.T
