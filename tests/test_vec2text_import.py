"""vec2text 0.0.13 checkpoints imported into our models: logits and greedy generations match the reference.

Golden files: tests/golden/vec2text, made by tests/golden/make_vec2text_golden.py in the reference's own venv.
"""

import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from v2t_jax import correction, decoding, inversion, vec2text_import
from v2t_jax.models import t5

GOLDEN = Path(__file__).parent / "golden" / "vec2text"


@pytest.fixture(scope="module")
def io():
    return dict(np.load(GOLDEN / "io.npz"))


def test_backbone_shape_is_read_off_the_weights():
    cfg = vec2text_import.infer_t5_config(load_file(GOLDEN / "inverter.safetensors"))
    assert (cfg.vocab_size, cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_layers, cfg.num_heads) == (60, 32, 8, 64, 2, 4)
    assert cfg.is_gated and not cfg.tie_word_embeddings


def test_inverter_logits_and_greedy_match_reference(io, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((GOLDEN / "inverter.safetensors").read_bytes())
    cfg, params = vec2text_import.load_folder(tmp_path)
    assert isinstance(cfg, inversion.InverterConfig) and cfg.num_repeat_tokens == 4 and cfg.embed_dim == 24
    model = inversion.Inverter(cfg)
    v = {"params": params}
    dec_in = t5.shift_right(jnp.asarray(io["labels"]), 0)
    logits = np.asarray(model.apply(v, jnp.asarray(io["e"]), dec_in))
    assert np.abs(logits - io["inverter_logits"]).max() <= 1e-4

    cache = model.apply(v, jnp.asarray(io["e"]), 7, method=inversion.Inverter.init_cache)
    ids = decoding.greedy(lambda t, c: model.apply(v, t, c, method=inversion.Inverter.decode_step), cache, 3, 7, 0, 1)
    ref = io["inverter_greedy"][:, 1:]  # drop the decoder start token
    np.testing.assert_array_equal(np.asarray(ids)[:, : ref.shape[1]], ref)


def test_corrector_logits_and_greedy_match_reference(io, tmp_path):
    cfg, params = vec2text_import.corrector_from_state_dict(load_file(GOLDEN / "corrector.safetensors"))
    model = correction.Corrector(cfg)
    v = {"params": params}
    args = [jnp.asarray(io[k]) for k in ("e", "e_hat", "hyp", "hyp_mask")]
    dec_in = t5.shift_right(jnp.asarray(io["labels"]), 0)
    logits = np.asarray(model.apply(v, *args, dec_in))
    assert np.abs(logits - io["corrector_logits"]).max() <= 1e-4

    cache = model.apply(v, *args, 7, method=correction.Corrector.init_cache)
    ids = decoding.greedy(lambda t, c: model.apply(v, t, c, method=correction.Corrector.decode_step), cache, 3, 7, 0, 1)
    ref = io["corrector_greedy"][:, 1:]
    full_hyp = io["hyp_mask"].all(axis=1)  # rows 0 and 2; row 1's hypothesis is padded
    np.testing.assert_array_equal(np.asarray(ids)[full_hyp, : ref.shape[1]], ref[full_hyp])
    # Row 1: the reference's `generate` departs from its own forward pass when the hypothesis is padded
    # (its teacher-forced logits along its generation pick another token at position 5). We match the
    # forward pass: same logits along that path, hence the same argmax at every position.
    forced = np.asarray(model.apply(v, *args, jnp.asarray(io["corrector_greedy"][:, :-1])))
    assert np.abs(forced - io["corrector_forced_logits"]).max() <= 1e-4
    ref_forward_argmax = io["corrector_forced_logits"].argmax(-1)
    assert (ref_forward_argmax[1] != ref[1]).any()  # the reference's generate/forward mismatch is real


def test_not_a_vec2text_folder(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError):
        vec2text_import.load_folder(tmp_path)


def test_imported_models_invert_through_host_side_re_embedding(io, tmp_path):
    """The reference's models decode in T5's vocabulary, so their correction loop re-embeds through text:
    imported inverter + corrector run `correction.invert_host` with a text black box."""
    inv_cfg, inv_params = vec2text_import.inverter_from_state_dict(load_file(GOLDEN / "inverter.safetensors"))
    cor_cfg, cor_params = vec2text_import.corrector_from_state_dict(load_file(GOLDEN / "corrector.safetensors"))
    program = vec2text_import.inversion_program(inv_cfg, cor_cfg, length=7)
    params = {"inverter": inv_params, "corrector": cor_params}

    def decode(ids):  # a stand-in for the T5 tokenizer: token i -> "w<i>", up to EOS
        ids = [int(t) for t in ids]
        ids = ids[: ids.index(1)] if 1 in ids else ids
        return " ".join(f"w{t}" for t in ids if t != 0)

    def black_box(texts):  # a deterministic text embedder of the right width
        out = np.zeros((len(texts), 24), np.float32)
        for i, t in enumerate(texts):
            for w in t.split():
                out[i] += np.random.default_rng(int(w[1:])).normal(size=24)
        return out + 1e-3

    e = np.asarray(io["e"], np.float32)
    out = correction.invert_host(program, params, e, 3, 2, decode, black_box)
    assert out["step_ids"].shape == (4, 3, 7) and out["step_cosine"].shape == (4, 3)
    assert (np.diff(out["step_cosine"], axis=0) >= 0).all()
    texts = [decode(r) for r in out["ids"]]
    emb = black_box(texts)
    cos = (emb * e).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(e, axis=1)
    np.testing.assert_allclose(out["cosine"], cos, atol=1e-5)


def test_load_model_takes_token_ids_from_the_embedder_and_refuses_another_vocabulary(tmp_path):
    """`load_model` builds an in-graph model only for a backbone decoding in the embedder's vocabulary, with the
    embedder's [SEP] as EOS (not T5's default 1); the golden 60-token backbones are refused in one line."""
    from v2t_jax.models import embedders

    for name in ("inverter", "corrector"):
        (tmp_path / name).mkdir()
        shutil.copy(GOLDEN / f"{name}.safetensors", tmp_path / name / "model.safetensors")
    emb = embedders.load_embedder("all-MiniLM-L6-v2")
    with pytest.raises(ValueError, match="not the embedder's"):
        vec2text_import.load_model(tmp_path / "inverter", tmp_path / "corrector", emb)
    cfg, _ = vec2text_import.load_folder(tmp_path / "corrector", eos_token_id=102)
    assert cfg.t5.eos_token_id == 102
    assert vec2text_import.load_folder(tmp_path / "corrector")[0].t5.eos_token_id == 1
