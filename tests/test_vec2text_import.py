"""vec2text 0.0.13 checkpoints imported into our models: logits and greedy generations match the reference.

Golden files: tests/golden/vec2text, made by tests/golden/make_vec2text_golden.py in the reference's own venv.
"""

import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from v2t_jax.models import correctors, inverters
from v2t_jax.search import decoding, drivers
from v2t_jax.search.strategies import Search
from v2t_jax.weights import vec2text_import
from v2t_jax.outputs import OutputError
from v2t_jax.models import hf_import, t5

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
    assert isinstance(cfg, inverters.InverterConfig) and cfg.num_repeat_tokens == 4 and cfg.embed_dim == 24
    model = inverters.Inverter(cfg)
    v = {"params": params}
    dec_in = t5.shift_right(jnp.asarray(io["labels"]), 0)
    logits = np.asarray(model.apply(v, jnp.asarray(io["e"]), dec_in))
    assert np.abs(logits - io["inverter_logits"]).max() <= 1e-4

    cache = model.apply(v, jnp.asarray(io["e"]), 7, method=inverters.Inverter.init_cache)
    ids = decoding.greedy(lambda t, c: model.apply(v, t, c, method=inverters.Inverter.decode_step), cache, 3, 7, 0, 1)
    ref = io["inverter_greedy"][:, 1:]  # drop the decoder start token
    np.testing.assert_array_equal(np.asarray(ids)[:, : ref.shape[1]], ref)


def test_corrector_logits_and_greedy_match_reference(io, tmp_path):
    cfg, params = vec2text_import.corrector_from_state_dict(load_file(GOLDEN / "corrector.safetensors"))
    model = correctors.Corrector(cfg)
    v = {"params": params}
    args = [jnp.asarray(io[k]) for k in ("e", "e_hat", "hyp", "hyp_mask")]
    dec_in = t5.shift_right(jnp.asarray(io["labels"]), 0)
    logits = np.asarray(model.apply(v, *args, dec_in))
    assert np.abs(logits - io["corrector_logits"]).max() <= 1e-4

    cache = model.apply(v, *args, 7, method=correctors.Corrector.init_cache)
    ids = decoding.greedy(lambda t, c: model.apply(v, t, c, method=correctors.Corrector.decode_step), cache, 3, 7, 0, 1)
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
    imported inverter + corrector run `drivers.invert_host` with a text black box."""
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
    out = drivers.invert_host(program, params, e, Search(3, 2, skip_repeated=False), decode, black_box)
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
        vec2text_import.model_from(tmp_path / "inverter", tmp_path / "corrector", emb)
    cfg, _ = vec2text_import.load_folder(tmp_path / "corrector", eos_token_id=102)
    assert cfg.t5.eos_token_id == 102
    assert vec2text_import.load_folder(tmp_path / "corrector")[0].t5.eos_token_id == 1


def test_a_bundle_written_as_vec2text_checkpoints_imports_back_to_the_same_model(tmp_path, small_bundle, capsys):
    """`vec2text_export.from_bundle` writes the inverter and corrector as vec2text checkpoint folders (state dict,
    InversionConfig fields, the transformers T5 backbone and tokenizer its config names); the importer reads them
    back to the same parameters and configs, the corrector's lack of a leading start token included, and the
    imported model inverts alike. An existing output and what transformers' T5 cannot express are refused."""
    import dataclasses
    import json

    import jax

    from v2t_jax import api
    from v2t_jax.search import strategies
    from v2t_jax.weights import vec2text_export
    from v2t_jax.vocabulary import Vocabulary

    small, with_t5_ids = small_bundle
    # the fixture's T5 configs keep T5's EOS (1) while the program decodes to [SEP] (102): its corrector separates
    # its inputs with a token vec2text's would not, so that bundle is refused; the same weights with the
    # embedder's ids in the configs are written
    with pytest.raises(ValueError, match="separates its inputs with token 1 and decodes until token 102"):
        vec2text_export.from_bundle(small, tmp_path / "refused")
    assert not (tmp_path / "refused").exists() and not (tmp_path / "refused.partial").exists()
    ids = dict(eos_token_id=102, pad_token_id=0, decoder_start_token_id=0)
    fix = lambda c: dataclasses.replace(c, t5=c.t5.replace(**ids))  # noqa: E731
    p, params = with_t5_ids.program, with_t5_ids.params
    model = api.build(fix(p.inverter), params["inverter"], fix(p.corrector), params["corrector"],
                      with_t5_ids.embedder, with_t5_ids.max_length)  # fmt: skip
    folder = model.save(tmp_path / "bundle")
    out = vec2text_export.from_bundle(folder, tmp_path / "v2t")
    assert sorted(p.name for p in out.iterdir()) == ["corrector", "inversion"]
    meta = json.loads((out / "corrector" / "config.json").read_text())
    assert meta[vec2text_export.START_TOKEN_KEY] is False and meta["architectures"] == ["CorrectorEncoderModel"]
    assert meta["model_name_or_path"] == str((out / "corrector" / "t5").resolve())
    assert meta["embedder_model_name"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["max_seq_length"] == 12
    backbone = hf_import.load_hf_t5(out / "corrector" / "t5")  # the backbone folder vec2text builds from
    assert backbone[0] == model.program.corrector.t5
    jax.tree_util.tree_map(np.testing.assert_array_equal, backbone[1], model.params["corrector"]["t5"])
    tok = json.loads((out / "inversion" / "t5" / "tokenizer_config.json").read_text())
    assert (tok["pad_token"], tok["eos_token"], tok["cls_token"]) == ("[PAD]", "[SEP]", "[CLS]")
    assert Vocabulary.from_folder(out / "inversion" / "t5", 12).size == model.vocab.size

    back = vec2text_import.model_from(out / "inversion", out / "corrector", model.embedder, model.max_length)
    same = dict(t5=back.program.corrector.t5, bottleneck_dim=384)  # (None: the embedding's width, 384)
    assert back.program.corrector == dataclasses.replace(model.program.corrector, **same)
    assert back.program.corrector.t5 == model.program.corrector.t5.replace(dropout_rate=0.0)
    assert not back.program.corrector.hypothesis_start_token
    jax.tree_util.tree_map(np.testing.assert_array_equal, back.params, model.params)
    vectors = model.embedder.embed_texts(["a cat sat on the mat.", "the stock market fell sharply today."])
    search = strategies.Search(3, 2, skip_repeated=False)
    (texts, trace), (want, want_trace) = (
        back.invert(vectors, search, return_trace=True),
        model.invert(vectors, search, return_trace=True),
    )
    assert texts == want and isinstance(back, api.Vec2Text)
    np.testing.assert_array_equal(trace["cosine"], want_trace["cosine"])

    with pytest.raises(OutputError, match="exists"):
        vec2text_export.from_bundle(folder, out)

    # the command: the same checkpoints; what it cannot write, or would overwrite, is one line and exit status 2
    from safetensors.numpy import load_file

    from v2t_jax import cli

    assert cli.main(["export", "vec2text", "--bundle", str(folder), "--output", str(tmp_path / "cli")]) == 0
    assert f"wrote {tmp_path / 'cli' / 'inversion'} and {tmp_path / 'cli' / 'corrector'}" in capsys.readouterr().err
    for name in ("inversion", "corrector"):
        got, want = (load_file(str(d / name / "model.safetensors")) for d in (tmp_path / "cli", out))
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    for argv, message in [
        (["--bundle", str(small), "--output", str(tmp_path / "no")], "separates its inputs with token 1"),
        (["--bundle", str(folder), "--output", str(out)], f"{out} exists; give --output a new folder"),
        (["--bundle", str(folder), "--output", str(tmp_path / "no"), "--weights", "int8"], "--weights is not for"),
    ]:
        assert cli.main(["export", "vec2text", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    for argv, message in [
        (["--output", str(tmp_path / "no")], "v2t export needs --workdir (a training run)"),
        (["--workdir", str(tmp_path), "--bundle", str(folder), "--output", str(tmp_path / "no")], "--bundle is for"),
    ]:
        assert cli.main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "no").exists() and not (tmp_path / "no.partial").exists()
    with pytest.raises(ValueError, match="no vec2text"):
        vec2text_export.t5_state_dict({}, t5.t5_config("tiny", "bert", vocab_size=60))
    with pytest.raises(ValueError, match="rescales the decoder outputs"):
        vec2text_export.t5_state_dict({}, t5.t5_config("tiny", "t5", vocab_size=60, scale_decoder_outputs=False))
