"""Write a model bundle as checkpoints of the reference `vec2text` package (the inverse of `vec2text_import`).

    from v2t_jax.weights import vec2text_export
    vec2text_export.from_bundle("v2t_jax/resources/v2t_minilm_l6_v2", "exported")   # None: the shipped model

gives, for the inverter and (if the bundle has one) the corrector, a folder that vec2text 0.0.13 loads as an
`InversionModel` / `CorrectorEncoderModel` (`config.json` + `model.safetensors`, float32), with beside it the
transformers T5 backbone its config names (`t5/`: config, weights, the bundle's tokenizer), so
`InversionModel(InversionConfig(**config))` builds the right shape before the state dict is loaded over it:

    exported/inversion/{config.json, model.safetensors, t5/}
    exported/corrector/{config.json, model.safetensors, t5/}

`vec2text_import.model_from(exported/inversion, exported/corrector, embedder)` reads them back to the same
parameters (tested). What vec2text cannot express is refused (a "bert"-layout backbone; a rescale of the decoder
outputs that differs from transformers', which rescales exactly when the head is tied; a corrector separating its
inputs with another token than the EOS it decodes to: vec2text's uses one for both) or recorded: a corrector
trained without the start token leading its hypotheses (`hypothesis_start_token: false`, as the shipped one)
says so as `v2t_hypothesis_start_token: false` in its config.json, which vec2text ignores and our importer
reads; run by vec2text as is, such a corrector sees its hypotheses one position late (experiments/
vec2text_reference.py --load drops the start token to run it as trained).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from v2t_jax.weights import vec2text_import
from v2t_jax.models import t5 as t5_lib

START_TOKEN_KEY = vec2text_import.START_TOKEN_KEY  # what the importer reads back


def _attn(p: dict, prefix: str, cfg: t5_lib.T5Config) -> dict:
    e, hd = cfg.d_model, cfg.num_heads * cfg.d_kv
    out = {prefix + n + ".weight": np.reshape(p[n], (e, hd)).T for n in ("q", "k", "v")}
    out[prefix + "o.weight"] = np.reshape(p["o"], (hd, e)).T
    return out


def _ffn(p: dict, prefix: str) -> dict:
    return {prefix + name + ".weight": np.asarray(w).T for name, w in p.items()}


def t5_state_dict(params: dict, cfg: t5_lib.T5Config) -> dict[str, np.ndarray]:
    """Our T5 parameters as a transformers `T5ForConditionalGeneration` state dict (numpy float32; the inverse of
    `hf_import.params_from_hf_state_dict`). Refuses what transformers' T5 cannot express."""
    if cfg.layout != "t5":
        raise ValueError(f"a {cfg.layout!r}-layout backbone has no vec2text (transformers T5) form")
    if cfg.scale_decoder_outputs != cfg.tie_word_embeddings:
        raise ValueError(
            "transformers' T5 rescales the decoder outputs exactly when the head is tied; this backbone "
            f"(tie_word_embeddings={cfg.tie_word_embeddings}, scale_decoder_outputs={cfg.scale_decoder_outputs}) "
            "has no vec2text form"
        )
    shared = np.asarray(params["shared"])
    sd = {"shared.weight": shared, "encoder.embed_tokens.weight": shared, "decoder.embed_tokens.weight": shared}
    sd["lm_head.weight"] = shared if cfg.tie_word_embeddings else np.asarray(params["lm_head"]).T
    for stack, layers in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        p = params[stack]
        sd[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = p["relpos"]["embedding"]
        sd[f"{stack}.final_layer_norm.weight"] = p["final_norm"]["scale"]
        for i in range(layers):
            b, layer = f"{stack}.block.{i}.", p[f"layers_{i}"]
            if stack == "encoder":
                parts = [("attn", "layer.0.SelfAttention."), ("ffn", "layer.1.DenseReluDense.")]
            else:
                parts = [("self_attn", "layer.0.SelfAttention."), ("cross_attn", "layer.1.EncDecAttention."),
                         ("ffn", "layer.2.DenseReluDense.")]  # fmt: skip
            for j, (name, where) in enumerate(parts):
                sd[f"{b}layer.{j}.layer_norm.weight"] = layer[name + "_norm"]["scale"]
                sd.update(_ffn(layer[name], b + where) if name == "ffn" else _attn(layer[name], b + where, cfg))
    return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def _transform(p: dict, prefix: str) -> dict:
    return {
        prefix + ".0.weight": np.asarray(p["in_proj"]["kernel"]).T,
        prefix + ".0.bias": np.asarray(p["in_proj"]["bias"]),
        prefix + ".3.weight": np.asarray(p["out_proj"]["kernel"]).T,
        prefix + ".3.bias": np.asarray(p["out_proj"]["bias"]),
    }


def _check_bottleneck(cfg, what: str) -> None:
    if cfg.bottleneck != cfg.embed_dim:
        raise ValueError(f"vec2text's {what} projects through the embedding's width ({cfg.embed_dim}); this one "
                         f"through {cfg.bottleneck}")  # fmt: skip


def inverter_state_dict(cfg, params: dict) -> dict[str, np.ndarray]:
    """An `inverters.Inverter`'s parameters as a vec2text `InversionModel` state dict (embedder excluded)."""
    _check_bottleneck(cfg, "inverter")
    sd = _transform(params["transform"], "embedding_transform")
    sd.update({"encoder_decoder." + k: v for k, v in t5_state_dict(params["t5"], cfg.t5).items()})
    return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def corrector_state_dict(cfg, params: dict) -> dict[str, np.ndarray]:
    """A `correctors.Corrector`'s parameters as a vec2text `CorrectorEncoderModel` state dict."""
    _check_bottleneck(cfg, "corrector")
    sd = {}
    for ours, theirs in (("target", 1), ("diff", 2), ("hypothesis", 3)):
        sd.update(_transform(params[f"transform_{ours}"], f"embedding_transform_{theirs}"))
    sd["layernorm.weight"] = np.asarray(params["layernorm"]["scale"])
    sd["layernorm.bias"] = np.asarray(params["layernorm"]["bias"])
    sd.update({"encoder_decoder." + k: v for k, v in t5_state_dict(params["t5"], cfg.t5).items()})
    return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def _hub_name(embedder_name: str) -> str:
    from v2t_jax import assets

    key = assets.packaged_key(embedder_name) or assets.packaged_key(Path(embedder_name).name)
    return f"sentence-transformers/{assets.PACKAGED_EMBEDDERS[key].name}" if key else embedder_name


def _tokenizer_files(vocab, folder: Path, cfg: t5_lib.T5Config, max_length: int) -> None:
    """The bundle's tokenizer as a transformers fast tokenizer (tokenizer.json + the special tokens by name)."""
    tok = vocab.tokenizer
    (folder / "tokenizer.json").write_text(tok.to_str())
    names = {"pad_token": cfg.pad_token_id, "eos_token": cfg.eos_token_id}
    if vocab.in_graph:  # the embedder's WordPiece vocabulary: [CLS] ... [SEP] around every text
        names.update(cls_token=vocab.cls_id, sep_token=vocab.eos_id)
    special = {k: tok.id_to_token(int(i)) for k, i in names.items() if i is not None and i >= 0}
    unk = next((t for t in ("[UNK]", "<unk>") if tok.token_to_id(t) is not None), None)
    special.update({"unk_token": unk} if unk else {})
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")


def _write(folder: Path, sd: dict, config: dict, t5cfg: t5_lib.T5Config, vocab) -> None:
    """The vec2text checkpoint (state dict + config) and the backbone it names (its tied copies of the token
    embedding left to transformers)."""
    from safetensors.numpy import save_file

    backbone = folder / "t5"
    backbone.mkdir(parents=True)
    (backbone / "config.json").write_text(json.dumps(t5cfg.to_hf_dict(), indent=1) + "\n")
    prefix = "encoder_decoder."
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    tied |= {"lm_head.weight"} if t5cfg.tie_word_embeddings else set()
    t5_sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    save_file({k: v for k, v in t5_sd.items() if k not in tied}, str(backbone / "model.safetensors"))
    _tokenizer_files(vocab, backbone, t5cfg, config["max_seq_length"])
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")


def from_bundle(bundle_folder: str | os.PathLike | None, output: str | os.PathLike) -> Path:
    """Writes the bundle (None: the shipped model) as vec2text checkpoint folders `output/inversion` and
    `output/corrector` (see the module docstring); `output` must not exist. Returns `output`."""
    from v2t_jax import api

    from v2t_jax import outputs

    out = Path(output)
    if out.exists() or out.is_symlink():
        raise outputs.OutputError(f"{out} exists; give --output a new folder (vec2text's two checkpoints go in it)")
    model = api.load_model(bundle_folder)
    program, params = model.program, model.params
    common = dict(
        architectures=["InversionModel"],
        embedder_model_name=_hub_name(model.embedder.name),
        embedder_model_api=None,
        embedder_torch_dtype="float32",
        embedder_no_grad=True,
        embedder_fake_with_zeros=False,
        use_frozen_embeddings_as_input=False,
        embeddings_from_layer_n=None,
        encoder_dropout_disabled=False,
        decoder_dropout_disabled=False,
        use_lora=False,
        max_seq_length=model.max_length,
    )
    # the token ids the program decodes with (an inverter's T5 config may carry T5's defaults, unused in its
    # computation): vec2text's generate stops at its backbone config's EOS
    ids = dict(pad_token_id=program.pad_id, decoder_start_token_id=program.pad_id, eos_token_id=program.eos_id)
    inv = dataclasses.replace(program.inverter, t5=program.inverter.t5.replace(**ids))
    parts = {"inversion": (inverter_state_dict(inv, params["inverter"]),
                           {**common, "num_repeat_tokens": inv.num_repeat_tokens}, inv.t5)}  # fmt: skip
    cor = program.corrector
    if cor is not None:
        if cor.t5.eos_token_id != program.eos_id:
            raise ValueError(
                f"the corrector separates its inputs with token {cor.t5.eos_token_id} and decodes until token "
                f"{program.eos_id}; vec2text's uses its EOS for both: this bundle has no vec2text form"
            )
        cor = dataclasses.replace(cor, t5=cor.t5.replace(**ids))
        config = {**common, "architectures": ["CorrectorEncoderModel"], "num_repeat_tokens": cor.num_repeat_tokens,
                  "corrector_ignore_hypothesis_embedding": cor.ignore_hypothesis_embedding,
                  START_TOKEN_KEY: cor.hypothesis_start_token}  # fmt: skip
        parts["corrector"] = (corrector_state_dict(cor, params["corrector"]), config, cor.t5)
    with outputs.new_folder(out, "export") as tmp:  # (whole or not at all; one export per output)
        for name, (sd, config, t5cfg) in parts.items():  # model_name_or_path: the backbone where it will be
            _write(tmp / name, sd, {**config, "model_name_or_path": str((out / name / "t5").resolve())}, t5cfg,
                   model.vocab)  # fmt: skip
        outputs.fix_modes(tmp)
    return out


__all__ = ["from_bundle", "t5_state_dict", "inverter_state_dict", "corrector_state_dict", "START_TOKEN_KEY"]
