"""The "bert" layout of `t5.T5` (BERT2BERT) against transformers' PyTorch `EncoderDecoderModel` of a `BertModel`
encoder and a `BertLMHeadModel` decoder, and the warm start from a BERT embedder's layers (`bert_layers_to_t5`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_t5 import VOCAB, _inputs  # noqa: E402  (the same random ids, masks and decoder inputs)

from v2t_jax.models import embedders, t5  # noqa: E402
from v2t_jax.training import warm_start  # noqa: E402

E, HEADS, FF, POS = 64, 4, 128, 40


def _bert_config(layers: int, decoder: bool) -> "transformers.BertConfig":
    return transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=E,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        intermediate_size=FF,
        max_position_embeddings=POS,
        is_decoder=decoder,
        add_cross_attention=decoder,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


@pytest.fixture(scope="module")
def pair():
    """A random BERT2BERT in PyTorch (3 encoder, 2 decoder layers; the decoder's word embedding is the
    encoder's, as `T5.shared` is one table) and the same weights in our tree."""
    torch.manual_seed(0)
    hf = transformers.EncoderDecoderModel(
        encoder=transformers.BertModel(_bert_config(3, False), add_pooling_layer=False),
        decoder=transformers.BertLMHeadModel(_bert_config(2, True)),
    ).eval()
    enc, dec = hf.encoder, hf.decoder
    with torch.no_grad():  # (after wrapping: EncoderDecoderModel initialises its parts' weights again)
        for p in hf.parameters():  # biases and norms away from their 0 / 1 init
            p.add_(0.05 * torch.randn_like(p))
        dec.bert.embeddings.word_embeddings.weight.copy_(enc.embeddings.word_embeddings.weight)
    assert dec.cls.predictions.decoder.weight.data_ptr() == dec.bert.embeddings.word_embeddings.weight.data_ptr()

    cfg = t5.t5_config(
        "tiny", "bert", vocab_size=VOCAB, d_model=E, d_kv=E // HEADS, d_ff=FF, num_heads=HEADS, num_layers=3,
        num_decoder_layers=2, max_position_embeddings=POS, dropout_rate=0.0,
    )  # fmt: skip
    params = t5.init_params(t5.T5(cfg), jax.random.PRNGKey(0))

    def ours(sd, layers):
        sd = {k: v.detach().numpy() for k, v in sd.items()}
        return sd, embedders.bert_params_from_hf_state_dict(sd, embedders.BertConfig(num_hidden_layers=layers))

    _, bert_enc = ours(enc.state_dict(), 3)
    from_enc = warm_start.bert_layers_to_t5(bert_enc, cfg.replace(num_decoder_layers=0), params)
    params = dict(params, shared=from_enc["shared"], encoder=from_enc["encoder"])
    sd, bert_dec = ours(dec.state_dict(), 2)
    from_dec = warm_start.bert_layers_to_t5(bert_dec, cfg.replace(num_layers=2), params)
    decoder = from_dec["decoder"]
    for i in range(2):  # cross-attention and the head have no counterpart in an encoder: mapped here
        cross = {
            n: {"kernel": sd[f"bert.encoder.layer.{i}.crossattention.{k}.weight"].T,
                "bias": sd[f"bert.encoder.layer.{i}.crossattention.{k}.bias"]}
            for n, k in (("query", "self.query"), ("key", "self.key"), ("value", "self.value"),
                         ("attn_out", "output.dense"))
        }  # fmt: skip
        norm = f"bert.encoder.layer.{i}.crossattention.output.LayerNorm"
        decoder[f"layers_{i}"]["cross_attn"] = warm_start._bert_attention(cross, cfg)
        decoder[f"layers_{i}"]["cross_attn_norm"] = {"scale": sd[norm + ".weight"], "bias": sd[norm + ".bias"]}
    head = "cls.predictions.transform."
    params = dict(
        params,
        decoder=decoder,
        head={
            "kernel": sd[head + "dense.weight"].T,
            "bias": sd[head + "dense.bias"],
            "norm": {"scale": sd[head + "LayerNorm.weight"], "bias": sd[head + "LayerNorm.bias"]},
        },
        lm_bias=sd["cls.predictions.bias"],
    )
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
    return hf, cfg, params


def test_encoder_and_logits_match_pytorch_bert2bert(pair):
    hf, cfg, params = pair
    ids, mask, dec = _inputs()
    with torch.no_grad():
        ref_enc = hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.numpy()
    model, v = t5.T5(cfg), {"params": params}
    enc = model.apply(v, jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy()), method=t5.T5.encode)
    logits = model.apply(v, *(jnp.asarray(x.numpy()) for x in (ids, mask, dec)))
    assert np.abs(np.asarray(enc) - ref_enc).max() <= 1e-4
    assert np.abs(np.asarray(logits) - ref).max() <= 1e-4
    assert np.abs(ref).max() > 1.0  # the comparison is not between near-zero tensors


def test_bert_layout_incremental_decoding_equals_full_forward(pair):
    """The KV cache with absolute positions: one token at a time, and a prefill then one more, give the
    teacher-forced logits."""
    _, cfg, params = pair
    ids, mask, dec = (jnp.asarray(x.numpy()) for x in _inputs(seed=5))
    model, v = t5.T5(cfg), {"params": params}
    full = np.asarray(model.apply(v, ids, mask, dec))
    enc = model.apply(v, ids, mask, method=t5.T5.encode)
    cache = model.apply(v, enc, mask, dec.shape[1] + 4, method=t5.T5.init_cache)
    step = jax.jit(lambda tok, c: model.apply(v, tok, c, method=t5.T5.decode_step))
    out = []
    for i in range(dec.shape[1]):
        logits, cache = step(dec[:, i : i + 1], cache)
        out.append(np.asarray(logits))
    tol = 1e-5 * max(1.0, np.abs(full).max())
    assert np.abs(np.concatenate(out, axis=1) - full).max() <= tol
    cache = model.apply(v, enc, mask, dec.shape[1] + 4, method=t5.T5.init_cache)
    head, cache = model.apply(v, dec[:, :7], cache, method=t5.T5.decode_step)
    tail, _ = model.apply(v, dec[:, 7:8], cache, method=t5.T5.decode_step)
    assert np.abs(np.concatenate([np.asarray(head), np.asarray(tail)], axis=1) - full[:, :8]).max() <= tol


def test_warm_started_encoder_is_the_embedder():
    """With as many layers as the BERT, the warm-started encoder fed token ids computes the BERT's token states
    exactly (same embeddings, positions, layers); the decoder's first layer starts as BERT's first layer."""
    bert_cfg = embedders.BertConfig(vocab_size=VOCAB, hidden_size=E, num_hidden_layers=3, num_attention_heads=HEADS,
                                    intermediate_size=FF, max_position_embeddings=POS)  # fmt: skip
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 1, VOCAB)
    mask = jnp.ones((2, 12), bool).at[1, 9:].set(False)
    bert = embedders.Bert(bert_cfg).init(jax.random.PRNGKey(2), ids, mask)["params"]
    bert = jax.tree_util.tree_map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(3), x.shape), nn_unbox(bert)
    )
    cfg = t5.t5_config("tiny", "bert", vocab_size=VOCAB, d_model=E, d_kv=E // HEADS, d_ff=FF, num_heads=HEADS,
                       num_layers=3, num_decoder_layers=2, max_position_embeddings=POS)  # fmt: skip
    fresh = t5.init_params(t5.T5(cfg), jax.random.PRNGKey(0))
    params = warm_start.bert_layers_to_t5(bert, cfg, fresh)
    ref = embedders.Bert(bert_cfg).apply({"params": bert}, ids, mask)
    ours = t5.T5(cfg).apply({"params": params}, ids, mask, method=t5.T5.encode)
    keep = np.asarray(mask)
    assert np.abs(np.asarray(ours) - np.asarray(ref))[keep].max() <= 1e-5
    np.testing.assert_array_equal(params["shared"], np.asarray(bert["word_embeddings"]))
    np.testing.assert_array_equal(
        params["decoder"]["layers_1"]["ffn"]["wo"], np.asarray(bert["layers_1"]["ffn_out"]["kernel"])
    )
    # what BERT has no counterpart for keeps its fresh value
    np.testing.assert_array_equal(
        params["decoder"]["layers_0"]["cross_attn"]["q"], fresh["decoder"]["layers_0"]["cross_attn"]["q"]
    )
    np.testing.assert_array_equal(params["lm_bias"], fresh["lm_bias"])


def nn_unbox(tree):
    import flax.linen as nn

    return nn.unbox(tree)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(layout="t5", variant=None), "layout = bert"),
        (dict(d_ff=2 * FF), "d_ff = 128"),
        (dict(num_layers=4), "has 3 layers"),
        (dict(num_heads=2, d_kv=E // HEADS), "num_heads \\* d_kv = 64"),
    ],
)
def test_warm_start_refuses_another_shape(change, message):
    bert_cfg = embedders.BertConfig(vocab_size=VOCAB, hidden_size=E, num_hidden_layers=3, num_attention_heads=HEADS,
                                    intermediate_size=FF, max_position_embeddings=POS)  # fmt: skip
    ids = jnp.ones((1, 4), jnp.int32)
    bert = nn_unbox(embedders.Bert(bert_cfg).init(jax.random.PRNGKey(2), ids, ids > 0)["params"])
    kw = dict(vocab_size=VOCAB, d_model=E, d_kv=E // HEADS, d_ff=FF, num_heads=HEADS, num_layers=3,
              max_position_embeddings=POS)  # fmt: skip
    change = dict(change)
    variant = change.pop("variant", "bert") or "t5"
    kw.update(change)
    if variant == "t5":
        kw.pop("layout", None)
    cfg = t5.t5_config("tiny", variant, **kw)
    fresh = t5.init_params(t5.T5(cfg), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=message):
        warm_start.bert_layers_to_t5(bert, cfg, fresh)


def test_bert_layout_has_positions_not_buckets_and_bad_layout_is_refused():
    cfg = t5.t5_config("tiny", "bert", vocab_size=100)
    shapes = jax.eval_shape(lambda r: t5.init_params(t5.T5(cfg), r), jax.random.PRNGKey(0))
    assert "relpos" not in shapes["encoder"] and "positions" in shapes["decoder"] and "lm_bias" in shapes
    with pytest.raises(ValueError, match="layout='gpt'"):
        t5.T5Config(layout="gpt")
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        cfg8 = cfg.replace(max_position_embeddings=8)
        t5.T5(cfg8).init(jax.random.PRNGKey(0), jnp.ones((1, 9), jnp.int32), jnp.ones((1, 9), bool),
                         jnp.ones((1, 2), jnp.int32))  # fmt: skip
