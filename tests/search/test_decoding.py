"""Greedy and beam search on a toy model whose best path is known by hand, and cached == uncached."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from v2t_jax.search import decoding
from v2t_jax.models import t5

PAD, EOS, A, B = 0, 1, 2, 3
# Markov chain over the previous token: P(next | prev). Greedy takes A (0.6) and keeps taking A, never
# ending; the best finished sequence is B EOS with probability 0.4 * 0.9 = 0.36.
T = np.array(
    [
        [0.0, 0.0, 0.6, 0.4],  # after start (PAD)
        [0.0, 1.0, 0.0, 0.0],  # after EOS (unused)
        [0.0, 0.2, 0.45, 0.35],  # after A
        [0.0, 0.9, 0.05, 0.05],  # after B
    ]
)


def toy(ids, cache):
    """ids [n, 1] -> logits [n, 1, 4]; the cache counts steps per row (a batch-shaped leaf)."""
    logits = jnp.log(jnp.asarray(T, jnp.float32) + 1e-30)[ids[:, 0]][:, None, :]
    return logits, {"steps": cache["steps"] + 1, "index": cache["index"] + 1}


def brute_force_ranking(max_len):
    """Every finished sequence (ends in EOS, or reaches max_len) with its log-probability, best first."""
    out = []
    for n in range(1, max_len + 1):
        for seq in itertools.product([EOS, A, B], repeat=n):
            if EOS in seq[:-1] or (n < max_len and seq[-1] != EOS):
                continue
            prev, lp = PAD, 0.0
            for t in seq:
                lp += math.log(T[prev, t]) if T[prev, t] > 0 else -math.inf
                prev = t
            out.append((lp, seq))
    return sorted(out, reverse=True)


def _cache(b):
    return {"steps": jnp.zeros((b,), jnp.int32), "index": jnp.zeros((), jnp.int32)}


def test_greedy_follows_the_locally_best_token():
    ids = decoding.greedy(toy, _cache(2), 2, 4, PAD, EOS)
    assert ids.tolist() == [[A, A, A, A]] * 2


def test_greedy_log_probability_is_the_sum_over_its_tokens():
    """with_logprob: the same ids, and each row's log-probability of them (A A A A: 0.6 * 0.45^3)."""
    ids, lp = decoding.greedy(toy, _cache(2), 2, 4, PAD, EOS, with_logprob=True)
    assert ids.tolist() == decoding.greedy(toy, _cache(2), 2, 4, PAD, EOS).tolist()
    np.testing.assert_allclose(np.asarray(lp), [math.log(0.6 * 0.45**3)] * 2, rtol=1e-5)


def test_greedy_log_probability_stops_at_eos():
    """Tokens after EOS (pad) add nothing: rows ending at different steps get their own sums."""
    ends = jnp.array([1, 3])  # row 0 emits EOS at step 1, row 1 at step 3

    def fn(ids, t):
        # row r: token 2 with probability 0.7 until its end step, then EOS with probability 0.7
        tok = jnp.where(t + 1 >= ends, EOS, 2)
        probs = jnp.full((2, 4), 0.1).at[jnp.arange(2), tok].set(0.7)
        return jnp.log(probs)[:, None, :], t + 1

    ids, lp = decoding.greedy(fn, jnp.zeros((), jnp.int32), 2, 5, PAD, EOS, with_logprob=True)
    assert ids.tolist() == [[EOS, PAD, PAD, PAD, PAD], [2, 2, EOS, PAD, PAD]]
    np.testing.assert_allclose(np.asarray(lp), [math.log(0.7), 3 * math.log(0.7)], rtol=1e-5)


def test_beam_search_finds_the_hand_computed_best_path():
    seqs, scores = decoding.beam_search(toy, _cache(3), 3, 2, 4, PAD, EOS)
    ranking = brute_force_ranking(4)
    assert ranking[0][1] == (B, EOS) and ranking[0][0] == pytest.approx(math.log(0.4 * 0.9))
    assert ranking[1][1] == (A, B, EOS) and ranking[1][0] == pytest.approx(math.log(0.6 * 0.35 * 0.9))
    for row in range(3):
        assert seqs[row, 0].tolist() == [B, EOS, PAD, PAD]
        assert seqs[row, 1].tolist() == [A, B, EOS, PAD]
        np.testing.assert_allclose(np.asarray(scores[row]), [ranking[0][0], ranking[1][0]], atol=1e-5)


def test_beam_of_one_is_greedy_when_nothing_finishes():
    seqs, _ = decoding.beam_search(toy, _cache(1), 1, 1, 4, PAD, EOS)
    assert seqs[0, 0].tolist() == decoding.greedy(toy, _cache(1), 1, 4, PAD, EOS)[0].tolist()


def test_length_penalty_changes_the_ranking():
    # with a strong length normalisation the longer A A A A path (score/len) can outrank shorter ones
    _, plain = decoding.beam_search(toy, _cache(1), 1, 3, 4, PAD, EOS)
    _, normed = decoding.beam_search(toy, _cache(1), 1, 3, 4, PAD, EOS, length_penalty=1.0)
    assert not np.allclose(np.asarray(plain), np.asarray(normed))


def _small_t5(b):
    cfg = t5.t5_config("tiny", vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    model = t5.T5(cfg)
    v = {"params": t5.init_params(model, jax.random.PRNGKey(3))}
    ids = jax.random.randint(jax.random.PRNGKey(1), (b, 9), 2, 50)
    mask = jnp.ones((b, 9), bool).at[1, 6:].set(False)
    return cfg, model, v, model.apply(v, ids, mask, method=t5.T5.encode), mask


def test_cached_beam_search_equals_uncached_on_a_t5():
    b, k, L = 2, 3, 7
    cfg, model, v, enc, mask = _small_t5(b)

    def cached(tok, cache):
        return model.apply(v, tok, cache, method=t5.T5.decode_step)

    def uncached(tok, c):
        seq = jax.lax.dynamic_update_slice_in_dim(c["seq"], tok, c["index"], axis=1)
        logits = model.apply(v, seq, c["enc"], c["mask"], method=t5.T5.decode)
        step_logits = jax.lax.dynamic_slice_in_dim(logits, c["index"], 1, axis=1)
        return step_logits, {**c, "seq": seq, "index": c["index"] + 1}

    cache = model.apply(v, enc, mask, L, method=t5.T5.init_cache)
    s1, p1 = jax.jit(lambda c: decoding.beam_search(cached, c, b, k, L, 0, cfg.eos_token_id))(cache)
    plain = {"seq": jnp.zeros((b, L), jnp.int32), "enc": enc, "mask": mask, "index": jnp.zeros((), jnp.int32)}
    s2, p2 = jax.jit(lambda c: decoding.beam_search(uncached, c, b, k, L, 0, cfg.eos_token_id))(plain)
    np.testing.assert_array_equal(np.asarray(s1), np.asarray(s2))
    np.testing.assert_allclose(np.asarray(p1), np.asarray(p2), atol=1e-4)
    assert (np.diff(np.asarray(p1), axis=1) <= 1e-6).all()  # best first


def test_beams_share_their_rows_cross_attention_cache():
    """T5's cache keeps cross-attention K/V once per row ([b, ...], `DecoderCache.map_beams`); the result equals
    the layout where every cache leaf is repeated and reordered per beam."""
    b, k, L = 2, 4, 6
    cfg, model, v, enc, mask = _small_t5(b)
    cache = model.apply(v, enc, mask, L, method=t5.T5.init_cache)

    def shared(tok, c):
        return model.apply(v, tok, c, method=t5.T5.decode_step)

    def per_beam(tok, c):  # a plain tuple: beam search repeats and gathers every [b*k, ...] leaf
        logits, new = model.apply(v, tok, t5.DecoderCache(*c), method=t5.T5.decode_step)
        return logits, (new.self_k, new.self_v, new.cross_k, new.cross_v, new.encoder_mask, new.index)

    plain = (cache.self_k, cache.self_v, cache.cross_k, cache.cross_v, cache.encoder_mask, cache.index)
    s1, p1 = jax.jit(lambda c: decoding.beam_search(shared, c, b, k, L, 0, cfg.eos_token_id))(cache)
    s2, p2 = jax.jit(lambda c: decoding.beam_search(per_beam, c, b, k, L, 0, cfg.eos_token_id))(plain)
    np.testing.assert_array_equal(np.asarray(s1), np.asarray(s2))
    np.testing.assert_allclose(np.asarray(p1), np.asarray(p2), atol=1e-5)


def test_fast_argmax_and_top_k_match_jax_including_ties():
    """The vectorised argmax and the chunked top-k return exactly what jnp.argmax / lax.top_k return: values,
    indices, and the lower index first among equal values (ties across and within chunks, a short last chunk)."""
    rng = np.random.default_rng(0)
    for V in (50, 30522, 1000):
        x = rng.normal(size=(7, V)).astype(np.float32)
        x[1, :] = 0.0  # a row of ties
        x[2, [3, V - 1, V // 2]] = 9.0  # ties of the maximum far apart
        x[3, V - 5 :] = 8.0  # the best values in the short last chunk
        x[4] = np.round(x[4])  # many ties everywhere
        np.testing.assert_array_equal(np.asarray(decoding.argmax_last(jnp.asarray(x))), np.argmax(x, -1))
        for k in (1, 8):
            want = jax.lax.top_k(jnp.asarray(x), k)
            got = jax.jit(decoding.top_k_last, static_argnums=(1, 2))(jnp.asarray(x), k, 16)
            np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
            np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))


def test_greedy_stops_once_every_row_has_ended():
    """Greedy decoding stops when every row has emitted EOS: the model is called no more often than that."""
    calls = []
    V, eos = 5, 1

    def tokens_to_logits(prev, cache):
        jax.debug.callback(lambda: calls.append(1))
        # row 0 ends at its 2nd token, row 1 at its 3rd
        t = cache
        logits = jnp.full((2, 1, V), -1.0)
        ends = jnp.array([t >= 1, t >= 2])
        logits = logits.at[:, 0, eos].set(jnp.where(ends, 5.0, -5.0)).at[:, 0, 3].set(0.0)
        return logits, cache + 1

    ids = decoding.greedy(tokens_to_logits, jnp.zeros((), jnp.int32), 2, 10, 0, eos, 0)
    np.testing.assert_array_equal(np.asarray(ids), [[3, 1] + [0] * 8, [3, 3, 1] + [0] * 7])
    assert len(calls) == 3
