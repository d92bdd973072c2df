"""Gradient-guided token swaps (v2t_jax/search/hotflip.py): the gradient is the embedder's, the swaps are the ones the
first-order gain ranks best, and polishing never lowers the score."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_drivers import _program

from v2t_jax.search import core, drivers, hotflip
from v2t_jax.search.strategies import Search
from v2t_jax.models import embedders


@pytest.mark.slow
def test_token_gradients_match_finite_differences():
    """d cos / d (word vector at position p), checked along random directions by central differences."""
    prog, params, targets = _program()
    emb = params["embedder"]
    ids = jnp.array([[5, 9, 12, 1, 0, 0, 0, 0], [7, 7, 30, 41, 22, 1, 0, 0]])
    cos, g = hotflip.token_gradients(prog.embedder, emb, ids, prog.cls_id, prog.pad_id, targets[:2])
    want = embedders.cosine(embedders.embed_decoder_ids(prog.embedder, emb, ids, prog.cls_id, prog.pad_id), targets[:2])
    np.testing.assert_allclose(np.asarray(cos), np.asarray(want), atol=1e-6)
    assert g.shape == ids.shape + (emb["backbone"]["word_embeddings"].shape[1],)
    full = jnp.concatenate([jnp.full((2, 1), prog.cls_id), ids], axis=1)
    mask = (full != 0).astype(jnp.int32)

    def cos_with(delta):  # delta [2, L+1, d] added to the input word vectors
        v = {"params": emb, "perturbations": {"backbone": {embedders.TOKEN_PERTURBATION: delta}}}
        return embedders.cosine(embedders.SentenceEmbedder(prog.embedder).apply(v, full, mask), targets[:2])

    rng = np.random.default_rng(0)
    for p in (0, 2):
        u = np.zeros((2, 9, g.shape[-1]), np.float32)
        u[:, p + 1] = rng.normal(size=(2, g.shape[-1]))
        u /= np.linalg.norm(u, axis=(1, 2), keepdims=True)
        eps = 1e-3
        fd = (np.asarray(cos_with(jnp.asarray(eps * u))) - np.asarray(cos_with(jnp.asarray(-eps * u)))) / (2 * eps)
        np.testing.assert_allclose(fd, np.sum(np.asarray(g)[:, p] * u[:, p + 1], -1), rtol=1e-2, atol=2e-4)


def test_without_perturbations_the_embedder_is_unchanged():
    prog, params, _ = _program()
    ids = jnp.array([[2, 5, 9, 12, 1, 0]])
    plain = embedders.embed(prog.embedder, params["embedder"], ids, (ids != 0).astype(jnp.int32))
    zero = {"backbone": {embedders.TOKEN_PERTURBATION: jnp.zeros(ids.shape + (24,))}}
    v = {"params": params["embedder"], "perturbations": zero}
    same = embedders.SentenceEmbedder(prog.embedder).apply(v, ids, (ids != 0).astype(jnp.int32))
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(same))


def test_swaps_are_the_best_first_order_gains_at_editable_positions():
    """Known answer on a 5-token vocabulary in 2-d: gain(p, v) = (W_v - W_{x_p}) · g_p; banned tokens, the
    current token and non-editable positions are never chosen; each candidate differs in one position."""
    word = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [3.0, 3.0]])
    ids = jnp.array([[1, 2, 0]])
    grads = jnp.array([[[0.0, 1.0], [1.0, 0.0], [5.0, 5.0]]])
    editable = jnp.array([[True, True, False]])
    banned = jnp.array([True, False, False, False, True])  # 0 (pad) and 4 (the best by far) never written
    cand = np.asarray(hotflip.swap_candidates(word, ids, grads, editable, banned, 3))[0]
    # gains: pos 0 (x=1, W=[1,0], g=[0,1]): v2 +1, v3 0; pos 1 (x=2, W=[0,1], g=[1,0]): v1 +1, v3 -1
    assert sorted(map(tuple, cand[:2].tolist())) == [(1, 1, 0), (2, 2, 0)]
    assert cand[2].tolist() in ([3, 2, 0], [1, 3, 0])  # then the next best, never position 2 or tokens 0/4
    assert all(int((row != np.asarray(ids[0])).sum()) == 1 for row in cand)


def test_banned_ids_are_the_special_and_unused_tokens(minilm):
    tok = minilm.tokenizer
    banned = set(hotflip.banned_ids(tok, tok.get_vocab_size()))
    for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused993]"):
        assert tok.token_to_id(t) in banned, t
    for t in ("the", "##s", "[", "]", "<", "a"):
        assert tok.token_to_id(t) not in banned, t


@pytest.mark.slow
@pytest.mark.parametrize("prior", [0.0, 0.5])
def test_polish_never_lowers_the_score_and_reports_what_it_did(prior):
    prog, params, targets = _program()
    prog = dataclasses.replace(prog, banned=(0, 1, 2))  # pad, EOS, CLS
    run = jax.jit(drivers.invert, static_argnums=(0, 3), static_argnames=("score",))
    plain = jax.device_get(run(prog, params, targets, Search(2, 2, prior=prior, skip_repeated=False)))
    out = jax.device_get(run(prog, params, targets, Search(2, 2, prior=prior, polish=3, skip_repeated=False)))
    np.testing.assert_array_equal(out["step_ids"][:3], plain["step_ids"])  # the search is the same
    assert out["step_ids"].shape[0] == 4 and out["polish_kept"].shape == (3, 5)
    np.testing.assert_array_equal(out["step_ids"][-1], out["ids"])
    again = core._cosine(core._embed_hypotheses(prog, params["embedder"], out["ids"]), targets)
    np.testing.assert_allclose(np.asarray(again), out["cosine"], atol=1e-5)
    if not prior:  # the score is the cosine: it never falls
        assert (out["cosine"] >= plain["cosine"] - 1e-6).all()
        np.testing.assert_array_equal(out["step_score"][-1], out["cosine"])
    took = out["polish_kept"].any(axis=0)
    diff = out["ids"] != plain["ids"]
    np.testing.assert_array_equal(took, diff.any(axis=1))  # a row changes exactly when a round kept a swap
    assert took.any()  # a random tiny model's hypotheses have better neighbours
    assert (diff.sum(axis=1) <= out["polish_kept"].sum(axis=0)).all()  # one token per kept swap at most
    assert not np.isin(out["ids"][diff], prog.banned).any()  # never a banned token
    assert not (diff & np.isin(plain["ids"], [prog.pad_id, prog.eos_id])).any()  # pad and EOS stay
