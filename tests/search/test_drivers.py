"""Corrector: encoder input layout, the no-feedback ablation, cached decoding."""

import functools
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from v2t_jax.models import correctors, inverters
from v2t_jax.search import core, decoding, drivers
from v2t_jax.search.strategies import Search
from v2t_jax.models import t5


def _setup(ignore=False):
    t5cfg = t5.t5_config("tiny", vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    cfg = correctors.CorrectorConfig(t5=t5cfg, embed_dim=24, num_repeat_tokens=4, ignore_hypothesis_embedding=ignore)
    model = correctors.Corrector(cfg)
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    e, e_hat = jax.random.normal(k[0], (3, 24)), jax.random.normal(k[1], (3, 24))
    ids = jax.random.randint(k[2], (3, 10), 2, 120)
    mask = jnp.ones((3, 10), bool).at[1, 6:].set(False)
    dec = jax.random.randint(k[3], (3, 7), 2, 120)
    params = jax.jit(lambda r: model.init(r, e, e_hat, ids, mask, dec))(jax.random.PRNGKey(1))["params"]
    return model, nn_unbox(params), (e, e_hat, ids, mask, dec)


def nn_unbox(tree):
    import flax.linen as nn

    return nn.unbox(tree)


def test_encoder_input_layout():
    model, params, (e, e_hat, ids, mask, _) = _setup()
    x, m = model.apply({"params": params}, e, e_hat, ids, mask, method=correctors.Corrector.encoder_inputs)
    assert x.shape == (3, 4 + 3 * 4 + 10, 32) and m.shape == (3, 26)
    assert m[:, :16].all() and (np.asarray(m[:, 16:]) == np.asarray(mask)).all()
    # LayerNorm over d_model: every position has ~zero mean and unit variance (scale 1, bias 0 at init)
    np.testing.assert_allclose(np.asarray(x.mean(-1)), 0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(x.var(-1)), 1, atol=1e-3)
    # the four separators are the same (embedded EOS) vector
    for pos in (5, 10, 15):
        np.testing.assert_allclose(np.asarray(x[:, pos]), np.asarray(x[:, 0]), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("ignore", [False, True])
def test_hypothesis_embedding_feedback_flag(ignore):
    model, params, (e, e_hat, ids, mask, dec) = _setup(ignore)
    a = model.apply({"params": params}, e, e_hat, ids, mask, dec)
    b = model.apply({"params": params}, e, e_hat + 1.0, ids, mask, dec)
    assert a.shape == (3, 7, 120)
    assert np.allclose(np.asarray(a), np.asarray(b)) == ignore  # no feedback: ê does not matter


@pytest.mark.slow
def test_training_noise_and_dropout_need_rngs_and_change_outputs():
    model, params, (e, e_hat, ids, mask, dec) = _setup()
    model = correctors.Corrector(dataclasses.replace(model.config, training_noise=1e-5))
    det = model.apply({"params": params}, e, e_hat, ids, mask, dec)
    rngs = {"dropout": jax.random.PRNGKey(2), "noise": jax.random.PRNGKey(3)}
    train = model.apply({"params": params}, e, e_hat, ids, mask, dec, deterministic=False, rngs=rngs)
    assert not np.allclose(np.asarray(det), np.asarray(train))


def test_cached_greedy_equals_full_forward_argmax():
    model, params, (e, e_hat, ids, mask, _) = _setup()
    v = {"params": params}
    cache = model.apply(v, e, e_hat, ids, mask, 6, method=correctors.Corrector.init_cache)

    def step(tok, c):
        return model.apply(v, tok, c, method=correctors.Corrector.decode_step)

    out = decoding.greedy(step, cache, 3, 6, 0, 1)
    # teacher-forcing the greedy output reproduces it as the argmax at every position before EOS
    dec_in = t5.shift_right(out, 0)
    logits = model.apply(v, e, e_hat, ids, mask, dec_in)
    arg = np.asarray(jnp.argmax(logits, -1))
    o = np.asarray(out)
    for r in range(3):
        n = int(np.argmax(o[r] == 1)) + 1 if (o[r] == 1).any() else 6
        assert (arg[r, :n] == o[r, :n]).all()


def test_first_equal_points_repeats_at_the_first_valid_copy():
    """Repeats point at the first *valid* equal candidate (a candidate of an empty beam slot never stands for
    a valid one), and only first copies are kept by the selection."""
    seqs = jnp.array([[[1, 2], [3, 4], [1, 2], [5, 6], [3, 4], [1, 2]]])
    valid = jnp.array([[False, True, True, True, True, True]])
    np.testing.assert_array_equal(np.asarray(core._first_equal(seqs, valid))[0], [2, 1, 2, 3, 1, 2])
    e = jnp.ones((1, 3))
    emb = jnp.array([[[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]]], jnp.float32)
    state = core._start(seqs[:, 0], emb[:, 0], jnp.zeros((1,)), jnp.zeros((1,)))  # one hypothesis, beam 6
    state = state._replace(cos=jnp.array([[0.0]]))
    first = core._first_equal(seqs, jnp.ones((1, 6), bool))
    hyps, _, cos, _ = core._select(state, seqs, emb, first, e, beam=6)
    # three distinct candidates, best first; the other three slots are empty (-inf)
    np.testing.assert_array_equal(np.asarray(hyps)[0, :3], [[5, 6], [3, 4], [1, 2]])
    assert np.isfinite(np.asarray(cos)[0, :3]).all() and np.isneginf(np.asarray(cos)[0, 3:]).all()


def test_prior_ranks_by_cosine_plus_weighted_mean_log_probability():
    """Known answer: candidate 0 embeds closest (cos 1.0, mean log-prob -3), candidate 1 reads better
    (cos 0.6, log-prob -0.1). By cosine alone 0 wins; with prior 0.5: 1.0 - 1.5 < 0.6 - 0.05, so 1 wins. The
    selection keeps each candidate's own cosine and reports its score."""
    seqs = jnp.array([[[1, 2], [3, 4]]])
    emb = jnp.array([[[1.0, 0.0], [0.6, 0.8]]])
    e = jnp.array([[1.0, 0.0]])
    lp = jnp.array([[-3.0, -0.1]])
    state = core._start(seqs[:, 0], emb[:, 0], jnp.ones((1,)), jnp.ones((1,)))
    first = core._first_equal(seqs, jnp.ones((1, 2), bool))
    hyps, _, cos, score = core._select(state, seqs, emb, first, e, 2)
    assert np.asarray(hyps)[0, 0].tolist() == [1, 2]
    np.testing.assert_allclose(np.asarray(score), np.asarray(cos))  # no prior: the score is the cosine
    hyps, _, cos, score = core._select(state, seqs, emb, first, e, 2, lp, 0.5)
    assert np.asarray(hyps)[0].tolist() == [[3, 4], [1, 2]]
    np.testing.assert_allclose(np.asarray(cos)[0], [0.6, 1.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(score)[0], [0.55, -0.5], atol=1e-6)


@pytest.mark.slow
def test_mean_log_probability_counts_tokens_up_to_eos():
    prog, _, _ = _program()  # pad 0, EOS 1, L 8
    ids = jnp.array([[5, 6, 1, 0, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10, 11, 12]])
    got = core.mean_logprob(prog, ids, jnp.array([-3.0, -4.0]))
    np.testing.assert_allclose(np.asarray(got), [-1.0, -0.5])
    assert np.isneginf(np.asarray(core.mean_logprob(prog, ids[:1], jnp.array([-1.0e7])))).all()


def _program():
    """(program, params, targets) of a tiny inverter + corrector + BERT embedder; built once per session (its
    eager initialisation takes seconds), each call gets its own top-level params dict."""
    prog, params, targets = _built_program()
    return prog, dict(params), targets


@functools.cache
def _built_program():
    from v2t_jax.models import embedders

    V, L = 60, 8
    t5cfg = t5.t5_config("tiny", vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    bert = embedders.BertConfig(vocab_size=V, hidden_size=24, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=48, max_position_embeddings=16)  # fmt: skip
    ecfg = embedders.EmbedderConfig(bert)
    icfg = inverters.InverterConfig(t5=t5cfg, embed_dim=24, num_repeat_tokens=2)
    ccfg = correctors.CorrectorConfig(t5=t5cfg, embed_dim=24, num_repeat_tokens=2)
    prog = core.InversionProgram(icfg, ccfg, ecfg, length=L, cls_id=2, eos_id=1, pad_id=0)
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    e = jnp.zeros((1, 24))
    ids = jnp.zeros((1, L), jnp.int32)
    params = {
        "inverter": nn_unbox(inverters.Inverter(icfg).init(k[0], e, ids)["params"]),
        "corrector": nn_unbox(correctors.Corrector(ccfg).init(k[1], e, e, ids, ids != 0, ids)["params"]),
        "embedder": nn_unbox(embedders.SentenceEmbedder(ecfg).init(k[2], ids, jnp.ones_like(ids))["params"]),
    }
    targets = embedders.embed(ecfg, params["embedder"], jax.random.randint(k[2], (5, L), 3, V), jnp.ones((5, L)))
    return prog, params, targets


@pytest.mark.parametrize("beam", [1, 3])
def test_compiled_inversion_program(beam):
    prog, params, targets = _program()
    run = jax.jit(drivers.invert, static_argnums=(0, 3), static_argnames=("score",))
    out = run(prog, params, targets, Search(4, beam, skip_repeated=False))
    assert out["ids"].shape == (5, 8) and out["step_ids"].shape == (5, 5, 8) and out["step_cosine"].shape == (5, 5)
    cos = np.asarray(out["step_cosine"])
    assert (np.diff(cos, axis=0) >= -1e-6).all()  # the best-so-far cosine never decreases
    np.testing.assert_allclose(np.asarray(out["cosine"]), cos[-1], atol=1e-6)
    # the reported cosine is the cosine of the reported ids
    again = core._cosine(core._embed_hypotheses(prog, params["embedder"], out["ids"]), targets)
    np.testing.assert_allclose(np.asarray(again), np.asarray(out["cosine"]), atol=1e-5)
    same = run(prog, params, targets, Search(4, beam, skip_repeated=False))  # deterministic
    np.testing.assert_array_equal(np.asarray(same["ids"]), np.asarray(out["ids"]))


@pytest.mark.slow
@pytest.mark.parametrize("beam", [1, 3])
def test_language_prior_in_the_compiled_program(beam):
    """With a prior the best is the best by cosine + λ · mean log-probability: that score never falls from step
    to step, the reported cosine is the reported text's, and step 0's score is its cosine plus λ times the
    inverter's own mean log-probability of it (teacher-forced here, independently of greedy decoding)."""
    prog, params, targets = _program()
    lam = 0.3
    run = jax.jit(drivers.invert, static_argnums=(0, 3), static_argnames=("score",))
    out = jax.device_get(run(prog, params, targets, Search(4, beam, prior=lam, skip_repeated=False)))
    score = out["step_score"]
    assert (np.diff(score, axis=0) >= -1e-6).all()
    assert (score <= out["step_cosine"] + 1e-6).all()  # a log-probability is never positive
    again = core._cosine(core._embed_hypotheses(prog, params["embedder"], out["ids"]), targets)
    np.testing.assert_allclose(np.asarray(again), out["cosine"], atol=1e-5)
    ids0 = jnp.asarray(out["step_ids"][0])
    inv = inverters.Inverter(prog.inverter)
    dec_in = jnp.concatenate([jnp.zeros((5, 1), jnp.int32), ids0[:, :-1]], axis=1)
    logp = jax.nn.log_softmax(inv.apply({"params": params["inverter"]}, targets, dec_in).astype(jnp.float32))
    tok_lp = jnp.take_along_axis(logp, ids0[..., None], axis=-1)[..., 0]
    mask = ids0 != prog.pad_id
    want = out["step_cosine"][0] + lam * np.asarray((tok_lp * mask).sum(-1) / mask.sum(-1))
    np.testing.assert_allclose(score[0], want, atol=1e-4)
    # skipping fixed points and repeats changes the work, not the result, with a prior too
    fast = jax.device_get(run(prog, params, targets, Search(4, beam, prior=lam, skip_repeated=True)))
    np.testing.assert_array_equal(fast["step_ids"], out["step_ids"])
    np.testing.assert_allclose(fast["step_score"], out["step_score"], atol=1e-6)
    plain = jax.device_get(run(prog, params, targets, Search(4, beam, skip_repeated=False)))
    np.testing.assert_array_equal(plain["step_score"], plain["step_cosine"])  # no prior: score = cosine


def test_stop_cosine_freezes_finished_examples():
    prog, params, targets = _program()
    out = drivers.invert(
        prog, params, targets, Search(3, 2, stop_cosine=-1.0, skip_repeated=False)
    )  # every example is done at once
    cos = np.asarray(out["step_cosine"])
    assert (cos == cos[0]).all()
    np.testing.assert_array_equal(np.asarray(out["ids"]), np.asarray(out["step_ids"][0]))


def test_on_rows_runs_only_the_masked_rows():
    """`_on_rows` gives fn's values on the masked rows and the fill elsewhere, and fn sees only a capacity's
    worth of rows (the smallest one holding them), none when no row is masked."""
    x = jnp.arange(8.0)[:, None] * jnp.ones((8, 3))
    fill = -jnp.ones((8, 3))
    seen = []

    def fn(rows):
        seen.append(rows.shape[0])  # traced once per branch: the capacities compiled
        return rows * 10

    caps = core._buckets(8, 2)
    assert caps == [2, 4, 8]
    for mask in ([0, 1, 0, 0, 0, 0, 1, 0], [1] * 8, [0] * 8, [1, 1, 1, 0, 0, 0, 0, 0]):
        m = jnp.asarray(mask, bool)
        out = np.asarray(jax.jit(lambda m: core._on_rows(m, fn, (x,), fill, caps))(m))
        want = np.where(np.asarray(m)[:, None], np.asarray(x) * 10, -1.0)
        np.testing.assert_array_equal(out, want)
    assert sorted(set(seen)) == caps


def test_greedy_correction_is_the_corrector_greedy_decode():
    """Width 1 is greedy decoding (the reference's generate with one beam), not a one-wide beam search."""
    from v2t_jax.search import decoding

    prog, params, targets = _program()
    ids = core.greedy_hypotheses(prog, params, targets)
    emb = core._embed_hypotheses(prog, params["embedder"], ids)
    cand = core.candidates(prog, params, targets, ids[:, None], emb[:, None], width=1)
    cor = correctors.Corrector(prog.corrector)
    vc = {"params": params["corrector"]}
    cache = cor.apply(vc, targets, emb, ids, ids != 0, prog.length, method=correctors.Corrector.init_cache)
    want = decoding.greedy(
        lambda t, c: cor.apply(vc, t, c, method=correctors.Corrector.decode_step), cache, 5, prog.length, 0, 1, 0
    )
    np.testing.assert_array_equal(np.asarray(cand[:, 0]), np.asarray(want))


def test_a_token_beam_proposes_width_candidates_per_hypothesis():
    """A sequence beam of 1 with a token beam of 3: the step's hypothesis is the one of the corrector's 3 beam
    candidates that embeds closest to the target, and each later step works from 2 hypotheses' 3 candidates."""
    prog, params, targets = _program()
    ids0, emb0, cos0 = core.initial_hypotheses(prog, params, targets)
    cand = core.candidates(prog, params, targets, ids0[:, None], emb0[:, None], 3)  # [5, 3, L]
    cos = core._cosine(core._embed_hypotheses(prog, params["embedder"], cand.reshape(15, -1)).reshape(
        5, 3, -1), targets[:, None])  # fmt: skip
    out = jax.device_get(drivers.invert(prog, params, targets, Search(1, 1, token_beam=3, skip_repeated=False)))
    want = np.take_along_axis(np.asarray(cand), np.asarray(jnp.argmax(cos, 1))[:, None, None], 1)[:, 0]
    np.testing.assert_array_equal(out["last_ids"], want)
    np.testing.assert_allclose(out["cosine"], np.maximum(np.asarray(cos0), np.asarray(cos.max(1))), atol=1e-6)
    assert np.asarray(
        drivers.invert(prog, params, targets, Search(2, 2, token_beam=3, skip_repeated=False))["step_ids"]
    ).shape == (3, 5, 8)
    same = jax.device_get(drivers.invert(prog, params, targets, Search(2, 2, token_beam=2, skip_repeated=False)))
    coupled = jax.device_get(drivers.invert(prog, params, targets, Search(2, 2, skip_repeated=False)))
    np.testing.assert_array_equal(same["step_ids"], coupled["step_ids"])
    with pytest.raises(ValueError, match=r"token beam width must be in \[3, 64\] \(at least the sequence beam width 3"):
        drivers.invert(prog, params, targets, Search(2, 3, token_beam=2, skip_repeated=False))


def test_at_zero_steps_the_token_beam_is_the_inverters_best_by_cosine():
    """No correction steps and a token beam of 3: the inverter's 3 beam candidates are re-embedded and the one
    closest to the target is the result (with a prior, by cosine + prior x mean log-probability); without a
    token beam it is the greedy decode, whatever the sequence beam (vec2text's step 0)."""
    prog, params, targets = _program()
    cand, lp = core.beam_hypotheses(prog, params, targets, 3)  # [5, 3, L], [5, 3]
    cos = np.asarray(core._cosine(core._embed_hypotheses(prog, params["embedder"], cand.reshape(15, -1))
                                        .reshape(5, 3, -1), targets[:, None]))  # fmt: skip
    cand, lp = np.asarray(cand), np.asarray(lp)
    out = jax.device_get(drivers.invert(prog, params, targets, Search(0, 1, token_beam=3, skip_repeated=False)))
    at = cos.argmax(1)
    np.testing.assert_array_equal(out["ids"], cand[np.arange(5), at])
    np.testing.assert_allclose(out["cosine"], cos.max(1), atol=1e-6)
    by_prior = (cos + 10.0 * lp).argmax(1)
    assert (at != 0).any() and (at != by_prior).any(), "the checks below would not tell the rankings apart"
    ranked = jax.device_get(
        drivers.invert(prog, params, targets, Search(0, 1, prior=10.0, token_beam=3, skip_repeated=False))
    )
    np.testing.assert_array_equal(ranked["ids"], cand[np.arange(5), by_prior])
    greedy = np.asarray(core.greedy_hypotheses(prog, params, targets))
    for beam, width in ((1, None), (1, 1), (4, None), (4, 1)):  # (no sequence beam to fill at 0 steps)
        search = Search(0, beam, token_beam=width, skip_repeated=False)
        np.testing.assert_array_equal(np.asarray(drivers.invert(prog, params, targets, search)["ids"]), greedy)


@pytest.mark.slow
@pytest.mark.parametrize("beam,width", [(1, None), (3, None), (2, 3)])
def test_skip_repeated_gives_the_full_loops_outputs(beam, width):
    """Skipping fixed points and repeated candidates changes the work, not the result; an example that stopped
    has reached a fixed point: its best never changes after."""
    prog, params, targets = _program()
    run = jax.jit(drivers.invert, static_argnums=(0, 3), static_argnames=("score",))
    full = jax.device_get(run(prog, params, targets, Search(6, beam, token_beam=width, skip_repeated=False)))
    fast = jax.device_get(run(prog, params, targets, Search(6, beam, token_beam=width, skip_repeated=True)))
    np.testing.assert_array_equal(fast["step_ids"], full["step_ids"])
    np.testing.assert_allclose(fast["step_cosine"], full["step_cosine"], atol=1e-6)
    np.testing.assert_array_equal(fast["last_ids"], full["last_ids"])
    assert full["step_active"].all()  # without skipping every example works at every step
    active = fast["step_active"]
    assert not active.all()  # random small models settle quickly: some work was skipped
    for t, b in zip(*np.nonzero(~active)):
        assert not active[t:, b].any()  # once stopped, stopped
        np.testing.assert_array_equal(fast["step_ids"][t + 1 :, b], fast["step_ids"][t : t + 1, b].repeat(6 - t, 0))


def test_step_zero_without_scoring_skips_the_embedder():
    prog, params, targets = _program()
    scored = drivers.invert(prog, params, targets, Search(0, 1, skip_repeated=False))
    bare = drivers.invert(prog, params, targets, Search(0, 1, skip_repeated=False), score=False)
    np.testing.assert_array_equal(np.asarray(bare["ids"]), np.asarray(scored["ids"]))
    assert np.isnan(np.asarray(bare["cosine"])).all() and np.isfinite(np.asarray(scored["cosine"])).all()


@pytest.mark.slow
def test_pieces_bound_memory_and_change_nothing(monkeypatch):
    """Big batches decode and re-embed in pieces (`_in_chunks`, padded last piece): same outputs as in one go."""
    x = jnp.arange(10.0).reshape(5, 2)
    out = core._in_chunks(lambda a: (a * 2, a.sum(-1)), (x,), 2)  # 3 pieces of 2, one padded row
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(x) * 2)
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(x).sum(-1))
    prog, params, targets = _program()
    whole = jax.device_get(drivers.invert(prog, params, targets, Search(2, 3, skip_repeated=False)))
    whole0 = jax.device_get(
        drivers.invert(prog, params, targets, Search(0, 1, token_beam=3, skip_repeated=False))
    )  # the inverter's token beam
    monkeypatch.setattr(core, "DECODE_ROWS", 6)  # two examples' 3x3 beam rows at a time
    monkeypatch.setattr(core, "EMBED_ROWS", 4)
    pieces = jax.device_get(drivers.invert(prog, params, targets, Search(2, 3, skip_repeated=False)))
    np.testing.assert_array_equal(pieces["step_ids"], whole["step_ids"])
    np.testing.assert_allclose(pieces["step_cosine"], whole["step_cosine"], atol=1e-6)
    pieces0 = jax.device_get(drivers.invert(prog, params, targets, Search(0, 1, token_beam=3, skip_repeated=False)))
    np.testing.assert_array_equal(pieces0["ids"], whole0["ids"])
    np.testing.assert_allclose(pieces0["cosine"], whole0["cosine"], atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("skip", [False, True])
def test_examples_stopped_at_step_zero_keep_their_hypothesis(skip):
    """stop_cosine reached by the step-0 hypothesis: nothing changes after, including the last-step hypothesis."""
    prog, params, targets = _program()
    out = jax.device_get(drivers.invert(prog, params, targets, Search(3, 2, stop_cosine=-1.0, skip_repeated=skip)))
    np.testing.assert_array_equal(out["last_ids"], out["step_ids"][0])
    assert not out["step_active"].any()


@pytest.mark.slow  # (the default tier checks the stream's texts through the API: test_strategies.py)
@pytest.mark.parametrize("beam,width", [(1, None), (3, None), (2, 4)])
def test_stream_gives_each_example_the_batch_loops_result(beam, width):
    """Continuous batching (`invert_stream`): 5 examples through 2 slots (a queue of 6, its last row padding)
    end with the texts and cosines of the batch loop with skip_repeated, after the same number of correction
    steps each; freed slots take the next example, so the stream runs fewer slot-batch rounds than batches of
    2 would run steps; padding is never worked on."""
    prog, params, targets = _program()
    steps = 6
    batch = jax.device_get(
        drivers.invert(prog, params, targets, Search(steps, beam, token_beam=width, skip_repeated=True))
    )
    queue = jnp.concatenate([targets, targets[:1]])
    run = jax.jit(drivers.invert_stream, static_argnums=0, static_argnames=("slots", "search"))
    out = jax.device_get(run(prog, params, queue, 5, slots=2, search=Search(steps, beam, token_beam=width)))
    np.testing.assert_array_equal(out["ids"][:5], batch["ids"])
    np.testing.assert_allclose(out["cosine"][:5], batch["cosine"], atol=1e-6)
    np.testing.assert_array_equal(out["steps"][:5], batch["step_active"].sum(0))
    assert out["steps"][5] == 0 and np.isneginf(out["cosine"][5])  # the padding row: never loaded
    assert out["steps"].min() < steps  # some examples settled early (random small models do) ...
    assert out["rounds"] < 3 * steps  # ... and their slots went on to the next example
    # an example at the stop cosine from step 0 takes no step, and keeps its hypothesis
    done = jax.device_get(
        run(prog, params, queue, 5, slots=2, search=Search(steps, beam, stop_cosine=-1.0, token_beam=width))
    )
    np.testing.assert_array_equal(done["ids"][:5], batch["step_ids"][0])
    assert not done["steps"].any()


def test_stream_refuses_what_it_cannot_run():
    prog, params, targets = _program()
    with pytest.raises(ValueError, match="not a whole number of 2-slot batches"):
        drivers.invert_stream(prog, params, targets, 5, 2, Search(2, 1))
    with pytest.raises(ValueError, match="needs correction steps"):
        drivers.invert_stream(prog, params, targets, 5, 5, Search(0, 1))


@pytest.mark.slow
def test_patience_stops_examples_whose_best_stopped_improving():
    """patience=k (opt-in): an example stops once k steps in a row left its best as it was; patience past the
    step count changes nothing; the stream stops the same examples at the same steps as the batch loop."""
    prog, params, targets = _program()
    run = jax.jit(drivers.invert, static_argnums=(0, 3), static_argnames=("score",))
    plain = jax.device_get(run(prog, params, targets, Search(6, 2, skip_repeated=False)))
    np.testing.assert_array_equal(
        jax.device_get(run(prog, params, targets, Search(6, 2, patience=6, skip_repeated=False)))["ids"], plain["ids"]
    )
    out = jax.device_get(run(prog, params, targets, Search(6, 2, patience=1, skip_repeated=False)))
    active, score = out["step_active"], out["step_score"]  # [S, B] worked on step j+1; [S+1, B]
    assert not active.all() and active[0].all()
    for b in range(targets.shape[0]):
        worked = np.flatnonzero(active[:, b])
        assert (worked == np.arange(len(worked))).all()  # once stopped, stopped
        last = len(worked)  # the last step it worked on
        if last < 6:  # stopped by patience: that step did not improve its best
            assert score[last, b] == score[last - 1, b]
        assert (score[1:last, b] > score[: last - 1, b]).all()  # every earlier step did
    queue = jnp.concatenate([targets, targets[:1]])
    stream = jax.jit(drivers.invert_stream, static_argnums=0, static_argnames=("slots", "search"))  # fmt: skip
    both = jax.device_get(run(prog, params, targets, Search(6, 2, patience=1, skip_repeated=True)))
    got = jax.device_get(stream(prog, params, queue, 5, slots=2, search=Search(6, 2, patience=1)))
    np.testing.assert_array_equal(got["ids"][:5], both["ids"])
    np.testing.assert_array_equal(got["steps"][:5], both["step_active"].sum(0))
