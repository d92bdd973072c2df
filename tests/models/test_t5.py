"""Flax T5 against transformers' PyTorch T5 on small random models saved with save_pretrained."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from v2t_jax.models import hf_import, t5  # noqa: E402

VOCAB = 150


def _hf_model(variant: str):
    torch.manual_seed(0 if variant == "t5" else 1)
    cfg = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=3,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=24,  # short so that the logarithmic buckets are exercised
        feed_forward_proj="relu" if variant == "t5" else "gated-gelu",
        tie_word_embeddings=variant == "t5",
        decoder_start_token_id=0,
    )
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    if variant == "v1.1":
        # transformers 5 always ties the head; a v1.1 checkpoint carries its own, so untie it here.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 64) * 0.5)
    return model


def _save(model, folder, variant, fmt="safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    if variant == "t5" and fmt == "safetensors":
        model.save_pretrained(folder)
        return
    # v1.1: write the untied head ourselves, with the config a v1.1 checkpoint has.
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if "embed_tokens" not in k}
    conf = model.config.to_dict()
    conf["tie_word_embeddings"] = variant == "t5"
    conf["scale_decoder_outputs"] = variant == "t5"
    conf.pop("dense_act_fn", None), conf.pop("is_gated_act", None)
    (folder / "config.json").write_text(json.dumps(conf))
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(folder / "model.safetensors"))
    else:
        torch.save(sd, folder / "pytorch_model.bin")


def _inputs(seed=0, b=3, enc_len=30, dec_len=20):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (b, enc_len), generator=g)
    mask = torch.ones(b, enc_len, dtype=torch.long)
    mask[1, 21:] = 0
    mask[2, 6:] = 0
    dec = torch.randint(2, VOCAB, (b, dec_len), generator=g)
    dec[:, 0] = 0
    return ids, mask, dec


@pytest.fixture(scope="module", params=["t5", "v1.1"])
def pair(request, tmp_path_factory):
    variant = request.param
    hf = _hf_model(variant)
    folder = tmp_path_factory.mktemp(f"hf_{variant}")
    _save(hf, folder, variant)
    cfg, params = hf_import.load_hf_t5(folder)
    return variant, hf, cfg, params


def test_config_family_detected(pair):
    variant, _, cfg, _ = pair
    assert cfg.is_gated == (variant == "v1.1")
    assert cfg.tie_word_embeddings == (variant == "t5")
    assert cfg.scale_decoder_outputs == (variant == "t5")


def test_encoder_and_logits_match_pytorch(pair):
    _, hf, cfg, params = pair
    ids, mask, dec = _inputs()
    with torch.no_grad():
        ref_enc = hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
        ref_logits = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.numpy()
    model = t5.T5(cfg)
    v = {"params": params}
    enc = model.apply(v, jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy()), method=t5.T5.encode)
    logits = model.apply(v, jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy()), jnp.asarray(dec.numpy()))
    assert np.abs(np.asarray(enc) - ref_enc).max() <= 1e-4
    assert np.abs(np.asarray(logits) - ref_logits).max() <= 1e-4
    assert np.abs(ref_logits).max() > 1.0  # the comparison is not between near-zero tensors


def test_decoder_attention_mask_matches_pytorch(pair):
    _, hf, cfg, params = pair
    ids, mask, dec = _inputs(seed=3)
    dmask = torch.ones_like(dec)
    dmask[0, 12:] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask).logits.numpy()
    ours = t5.T5(cfg).apply(
        {"params": params},
        jnp.asarray(ids.numpy()),
        jnp.asarray(mask.numpy()),
        jnp.asarray(dec.numpy()),
        jnp.asarray(dmask.numpy()),
    )
    keep = dmask.numpy().astype(bool)  # rows of padded decoder positions are not meaningful
    assert np.abs(np.asarray(ours) - ref)[keep].max() <= 1e-4


def test_inputs_embeds_path_equals_ids_path(pair):
    _, hf, cfg, params = pair
    ids, mask, _ = _inputs()
    model = t5.T5(cfg)
    v = {"params": params}
    from_ids = model.apply(v, jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy()), method=t5.T5.encode)
    embeds = jnp.asarray(params["shared"])[jnp.asarray(ids.numpy())]
    from_embeds = model.apply(v, None, jnp.asarray(mask.numpy()), embeds, method=t5.T5.encode)
    np.testing.assert_array_equal(np.asarray(from_ids), np.asarray(from_embeds))
    with torch.no_grad():  # and inputs_embeds agrees with PyTorch's inputs_embeds path
        ref = hf.encoder(inputs_embeds=torch.from_numpy(np.array(embeds)), attention_mask=mask).last_hidden_state
    assert np.abs(np.asarray(from_embeds) - ref.numpy()).max() <= 1e-4


def test_incremental_decoding_equals_full_forward(pair):
    """Feeding one token at a time through the KV cache reproduces the teacher-forced logits.

    Tolerance 1e-5 relative to the logit scale: the two paths multiply matrices of different
    shapes, so float32 rounding differs at ~5e-7 of the largest logit.
    """
    _, _, cfg, params = pair
    ids, mask, dec = (jnp.asarray(x.numpy()) for x in _inputs(seed=5))
    model = t5.T5(cfg)
    v = {"params": params}
    full = np.asarray(model.apply(v, ids, mask, dec))
    enc = model.apply(v, ids, mask, method=t5.T5.encode)
    max_len = dec.shape[1] + 4  # a cache longer than what is decoded
    cache = model.apply(v, enc, mask, max_len, method=t5.T5.init_cache)

    @jax.jit
    def step(tok, cache):
        return model.apply(v, tok, cache, method=t5.T5.decode_step)

    out = []
    for i in range(dec.shape[1]):
        logits, cache = step(dec[:, i : i + 1], cache)
        out.append(np.asarray(logits))
    inc = np.concatenate(out, axis=1)
    assert int(cache.index) == dec.shape[1]
    assert np.abs(inc - full).max() <= 1e-5 * max(1.0, np.abs(full).max())
    # prefill several positions at once, then continue one by one
    cache = model.apply(v, enc, mask, max_len, method=t5.T5.init_cache)
    head, cache = model.apply(v, dec[:, :7], cache, method=t5.T5.decode_step)
    tail, cache = model.apply(v, dec[:, 7:8], cache, method=t5.T5.decode_step)
    both = np.concatenate([np.asarray(head), np.asarray(tail)], axis=1)
    assert np.abs(both - full[:, :8]).max() <= 1e-5 * max(1.0, np.abs(full).max())


def test_pytorch_bin_checkpoint_loads(tmp_path):
    hf = _hf_model("v1.1")
    _save(hf, tmp_path, "v1.1", fmt="bin")
    cfg, params = hf_import.load_hf_t5(tmp_path)
    assert not cfg.tie_word_embeddings
    ids, mask, dec = _inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.numpy()
    ours = t5.T5(cfg).apply({"params": params}, *(jnp.asarray(x.numpy()) for x in (ids, mask, dec)))
    assert np.abs(np.asarray(ours) - ref).max() <= 1e-4


def test_relative_position_buckets_match_reference():
    rel = torch.arange(-300, 301)[None, :]
    attn = transformers.models.t5.modeling_t5.T5Attention
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (16, 24)):
            ref = attn._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md)
            ours = t5.relative_position_bucket(jnp.asarray(rel.numpy(), jnp.int32), bidirectional, nb, md)
            np.testing.assert_array_equal(np.asarray(ours), ref.numpy())


@pytest.mark.parametrize(
    "size,variant,hf_kwargs",
    [
        ("small", "t5", dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8)),
        (
            "tiny",
            "v1.1",
            dict(d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_heads=4, feed_forward_proj="gated-gelu"),
        ),
    ],
)
def test_named_sizes_have_reference_parameter_counts(size, variant, hf_kwargs):
    cfg = t5.t5_config(size, variant, vocab_size=32128)
    model = t5.T5(cfg)
    shapes = jax.eval_shape(lambda r: t5.init_params(model, r), jax.random.PRNGKey(0))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    with torch.device("meta"):
        hf = transformers.T5ForConditionalGeneration(transformers.T5Config(vocab_size=32128, **hf_kwargs))
    ref = sum(p.numel() for n, p in hf.named_parameters())  # tied: shared counted once
    if variant == "v1.1":
        ref += 32128 * cfg.d_model  # our untied head (transformers 5 ties it)
    assert ours == ref
    if size == "small":
        assert ours == 60_506_624  # t5-small


@pytest.mark.parametrize("variant", ["v1.1", "bert"])
def test_every_parameter_has_logical_axes(variant):
    cfg = t5.t5_config("tiny", variant, vocab_size=100)
    axes = t5.logical_axes(t5.T5(cfg))
    shapes = jax.eval_shape(lambda r: t5.init_params(t5.T5(cfg), r), jax.random.PRNGKey(0))
    flat_axes = jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree_util.tree_leaves(shapes)
    assert len(flat_axes) == len(flat_shapes)
    for spec, shape in zip(flat_axes, flat_shapes):
        assert len(spec) == len(shape.shape) and all(isinstance(a, str) for a in spec)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="feed_forward_proj"):
        t5.T5Config(feed_forward_proj="swish-swish")
    with pytest.raises(ValueError, match="unknown T5 size"):
        t5.t5_config("huge")
