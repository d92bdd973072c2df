"""JAX sentence embedders against PyTorch: real all-MiniLM-L6-v2, and GTR-style random T5 encoders."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from v2t_jax.models import embedders, t5  # noqa: E402


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("max_length", [32, 128])
def test_minilm_matches_sentence_transformers(minilm, minilm_dir, sentences, max_length):
    """300 real sentences, 2-80 words, padded batches in length order: vectors agree with PyTorch."""
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    st.max_seq_length = max_length
    ref = st.encode(sentences, batch_size=50, convert_to_numpy=True)
    ours = minilm.embed_texts(sentences, max_length=max_length, batch_size=64)
    assert len(sentences) >= 200
    assert ours.shape == ref.shape == (len(sentences), 384) and ours.dtype == np.float32
    assert _cos(ours, ref).min() >= 0.99999
    assert np.abs(ours - ref).max() <= 1e-5
    lengths = [len(r) for r in minilm.tokenize(sentences, max_length)]
    assert min(lengths) < 12 and max(lengths) >= min(max_length, 64)  # the batches really mix lengths


def test_minilm_tokenization_matches_sentence_transformers(minilm, minilm_dir, sentences):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_dir), device="cpu")
    st.max_seq_length = 32
    feats = st.preprocess(sentences[:64]) if hasattr(st, "preprocess") else st.tokenize(sentences[:64])
    ours = minilm.tokenize(sentences[:64], 32)
    for i, row in enumerate(ours):
        ref = feats["input_ids"][i][feats["attention_mask"][i].bool()].tolist()
        assert row == ref


def test_embed_is_order_and_batch_invariant(minilm, sentences):
    texts = sentences[:40]
    a = minilm.embed_texts(texts, batch_size=16)
    b = minilm.embed_texts(texts[::-1], batch_size=7)[::-1]
    np.testing.assert_allclose(a, b, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)


def test_pure_embed_function_on_ids(minilm, sentences):
    ids, mask = minilm.pad(minilm.tokenize(sentences[:8], 32), 32)
    direct = np.asarray(embedders.embed(minilm.config, minilm.params, jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(direct, minilm.embed_texts(sentences[:8]), atol=2e-6)


# ----------------------------------------------------------------------------- GTR-style T5 encoder


def _write_gtr_folder(folder, with_head: bool):
    """A sentence-transformers folder: T5 encoder + mean pooling [+ Dense(no bias) + Normalize]."""
    torch.manual_seed(11)
    cfg = transformers.T5Config(
        vocab_size=200, d_model=48, d_kv=12, d_ff=96, num_layers=2, num_heads=4, feed_forward_proj="relu"
    )
    enc = transformers.T5EncoderModel(cfg).eval()
    enc.save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 48, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False})
    )
    dense = None
    if with_head:
        dense = torch.nn.Linear(48, 32, bias=False)
        (folder / "2_Dense").mkdir()
        (folder / "2_Dense" / "config.json").write_text(
            json.dumps(
                {
                    "in_features": 48,
                    "out_features": 32,
                    "bias": False,
                    "activation_function": "torch.nn.modules.linear.Identity",
                }
            )
        )
        from safetensors.torch import save_file

        save_file({"linear.weight": dense.weight.detach().contiguous()}, str(folder / "2_Dense" / "model.safetensors"))
        modules += [
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
            {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
    (folder / "modules.json").write_text(json.dumps(modules))
    return enc, dense


def _torch_gtr(enc, dense, ids, mask):
    with torch.no_grad():
        h = enc(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask[..., None].float()
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if dense is not None:
            pooled = torch.nn.functional.normalize(dense(pooled), dim=-1)
    return pooled.numpy()


@pytest.mark.parametrize("with_head", [False, True])
def test_gtr_style_t5_encoder_matches_pytorch(tmp_path, with_head):
    enc, dense = _write_gtr_folder(tmp_path, with_head)
    config, params = embedders.load_embedder_config_and_params(tmp_path)
    assert isinstance(config.backbone, t5.T5Config)
    assert (config.dense is not None) == with_head and config.normalize == with_head
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, 200, (6, 24), generator=g)
    mask = torch.ones_like(ids)
    for i, n in enumerate([24, 20, 13, 7, 3, 1]):
        mask[i, n:] = 0
    ref = _torch_gtr(enc, dense, ids, mask)
    ours = np.asarray(embedders.embed(config, params, jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy())))
    assert _cos(ours, ref).min() >= 0.99999
    assert np.abs(ours - ref).max() <= 1e-5


def test_gtr_head_none_is_vec2text_style(tmp_path):
    """head='none' drops Dense and normalisation even when the folder has them (vec2text's gtr_base)."""
    enc, _ = _write_gtr_folder(tmp_path, with_head=True)
    config, params = embedders.load_embedder_config_and_params(tmp_path, head="none")
    assert config.dense is None and not config.normalize and config.dim == 48
    ids = torch.randint(2, 200, (2, 10))
    mask = torch.ones_like(ids)
    ref = _torch_gtr(enc, None, ids, mask)
    ours = np.asarray(embedders.embed(config, params, jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy())))
    assert np.abs(ours - ref).max() <= 1e-5


def test_unsupported_backbone_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"backbone 'gpt2' is not supported \(bert, mpnet, t5\)"):
        embedders.load_embedder_config_and_params(tmp_path)


def test_every_backbone_is_one_registry_entry(minilm):
    """`embedders.BACKBONES`: each entry's config type maps back to it, and the embedder's width and position
    limit come from it (MiniLM: a BERT, 384 wide, 512 positions; T5: relative positions, no limit)."""
    from v2t_jax.models import t5

    assert set(embedders.BACKBONES) == {"bert", "mpnet", "t5"}
    for name, b in embedders.BACKBONES.items():
        assert b.model_type == name
    assert embedders.backbone_of(minilm.config.backbone) is embedders.BACKBONES["bert"]
    assert (minilm.config.dim, minilm.config.max_positions) == (384, 512)
    cfg = embedders.EmbedderConfig(t5.t5_config("tiny", vocab_size=64, d_model=24, d_kv=8, d_ff=32, num_layers=1))
    assert embedders.backbone_of(cfg.backbone) is embedders.BACKBONES["t5"]
    assert (cfg.dim, cfg.max_positions) == (24, None)
    with pytest.raises(ValueError, match="no registered embedder backbone for dict"):
        embedders.backbone_of({})
