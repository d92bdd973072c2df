"""Import checkpoints of the reference `vec2text` package (PyTorch) into our Flax models.

Maps `InversionModel` and `CorrectorEncoderModel` state dicts — e.g. the published `jxm/gtr__nq__32` and
`jxm/gtr__nq__32__correct` folders (`config.json` + `model.safetensors` or `pytorch_model.bin`) — onto
`inverters.Inverter` / `correctors.Corrector` parameters. The T5 backbone's shape is read off the weights;
the embedder's weights, if the state dict carries them, are ignored (load the embedder separately).
`to_bundle` (`v2t import vec2text`) writes such checkpoints as a model bundle that every command runs.

Layout of the reference state dicts:
  embedding_transform.{0,3}.{weight,bias}                       Linear -> Dropout -> GELU -> Linear
  embedding_transform_{1,2,3}.{0,3}.{weight,bias}              corrector: for e, e - ê, ê
  layernorm.{weight,bias}                                      corrector: LayerNorm over the encoder input
  encoder_decoder.*                                            transformers T5ForConditionalGeneration
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from v2t_jax.models import correctors, hf_import, inverters
from v2t_jax.search import core
from v2t_jax.models import t5 as t5_lib

BACKBONE = "encoder_decoder."
# in a corrector's config.json (written by `vec2text_export`): whether its hypotheses are led by the start token;
# absent: vec2text's way (True)
START_TOKEN_KEY = "v2t_hypothesis_start_token"


def infer_t5_config(sd: dict[str, np.ndarray], prefix: str = BACKBONE, max_distance: int = 128) -> t5_lib.T5Config:
    """A T5Config from the shapes of a T5ForConditionalGeneration state dict (under `prefix`)."""
    shared = sd.get(prefix + "shared.weight", sd.get(prefix + "encoder.embed_tokens.weight"))
    if shared is None:
        raise ValueError("not a vec2text checkpoint: no encoder_decoder.shared.weight")
    vocab, d_model = shared.shape
    blocks = lambda part: {int(m.group(1)) for k in sd for m in [re.match(rf"{prefix}{part}\.block\.(\d+)\.", k)] if m}  # noqa: E731
    need = [prefix + "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            prefix + "encoder.block.0.layer.0.SelfAttention.q.weight"]  # fmt: skip
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(f"not a vec2text checkpoint: no {missing[0]}")
    rel, q = sd[need[0]], sd[need[1]]
    if rel.ndim != 2 or shared.ndim != 2 or q.ndim != 2:
        raise ValueError("not a vec2text checkpoint: its embedding or attention tensors are not matrices")
    buckets, heads = rel.shape
    if heads < 1 or buckets < 2 or q.shape[0] % heads:
        raise ValueError(f"not a T5 backbone v2t can run: {heads} attention heads, {buckets} relative-position "
                         f"buckets, queries of {q.shape[0]} features")  # fmt: skip
    gated = prefix + "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
    wi = sd[prefix + "encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"]
    lm_head = sd.get(prefix + "lm_head.weight")
    tied = lm_head is None or np.array_equal(lm_head, shared)
    cfg = t5_lib.T5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=q.shape[0] // heads,
        d_ff=wi.shape[0],
        num_layers=len(blocks("encoder")),
        num_decoder_layers=len(blocks("decoder")),
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=max_distance,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=tied,
        dropout_rate=0.0,
    )
    from v2t_jax import bundle

    bundle.check_bounds(cfg, "the checkpoint's T5 backbone")  # (as a bundle's loader would; ModelError)
    return cfg


def _transform(sd: dict, prefix: str) -> dict:
    return {
        "in_proj": {"kernel": sd[prefix + ".0.weight"].T, "bias": sd[prefix + ".0.bias"]},
        "out_proj": {"kernel": sd[prefix + ".3.weight"].T, "bias": sd[prefix + ".3.bias"]},
    }


def _backbone(sd: dict, cfg: t5_lib.T5Config) -> dict:
    sub = {k[len(BACKBONE) :]: v for k, v in sd.items() if k.startswith(BACKBONE)}
    return hf_import.params_from_hf_state_dict(sub, cfg)


def _f32(tree):
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), tree)


def inverter_from_state_dict(sd: dict[str, np.ndarray], **t5_overrides) -> tuple[inverters.InverterConfig, dict]:
    t5cfg = infer_t5_config(sd).replace(**t5_overrides) if t5_overrides else infer_t5_config(sd)
    w0, w3 = sd["embedding_transform.0.weight"], sd["embedding_transform.3.weight"]
    cfg = inverters.InverterConfig(
        t5=t5cfg, embed_dim=w0.shape[1], bottleneck_dim=w0.shape[0], num_repeat_tokens=w3.shape[0] // t5cfg.d_model
    )
    params = {"transform": _transform(sd, "embedding_transform"), "t5": _backbone(sd, t5cfg)}
    return cfg, _f32(params)


def corrector_from_state_dict(
    sd: dict[str, np.ndarray],
    ignore_hypothesis_embedding: bool = False,
    hypothesis_start_token: bool = True,
    **t5_overrides,
) -> tuple[correctors.CorrectorConfig, dict]:
    t5cfg = infer_t5_config(sd).replace(**t5_overrides) if t5_overrides else infer_t5_config(sd)
    w0, w3 = sd["embedding_transform_1.0.weight"], sd["embedding_transform_1.3.weight"]
    cfg = correctors.CorrectorConfig(
        t5=t5cfg,
        embed_dim=w0.shape[1],
        bottleneck_dim=w0.shape[0],
        num_repeat_tokens=w3.shape[0] // t5cfg.d_model,
        ignore_hypothesis_embedding=ignore_hypothesis_embedding,
        # vec2text's hypotheses come back from generate led by the start token; a corrector exported from a
        # bundle trained without it says so (START_TOKEN_KEY)
        hypothesis_start_token=hypothesis_start_token,
    )
    params = {
        "transform_target": _transform(sd, "embedding_transform_1"),
        "transform_diff": _transform(sd, "embedding_transform_2"),
        "transform_hypothesis": _transform(sd, "embedding_transform_3"),
        "layernorm": {"scale": sd["layernorm.weight"], "bias": sd["layernorm.bias"]},
        "t5": _backbone(sd, t5cfg),
    }
    return cfg, _f32(params)


def load_folder(folder: str | os.PathLike, **t5_overrides):
    """A vec2text checkpoint folder -> (config, params) of an Inverter or a Corrector, by its contents.

    The special token ids are not in a vec2text checkpoint (its config.json is the InversionConfig): they default
    to T5's (pad = decoder start = 0, EOS = 1); a backbone decoding in another vocabulary must say its own, e.g.
    `eos_token_id=102` for a WordPiece ([SEP]) backbone (or use `model_from`, which reads them off the embedder)."""
    folder = Path(folder)
    sd = hf_import.read_hf_state_dict(folder)
    sd = {k: v for k, v in sd.items() if not k.startswith("embedder.")}
    for key, w in sd.items():  # (an int or bool tensor would be cast to float and run as garbage)
        dtype = np.asarray(w).dtype
        if dtype.kind != "f" and dtype.name != "bfloat16":
            raise ValueError(f"{folder}: tensor {key} is {dtype}; a model's weights are floating point")
    meta = _config(folder)
    if "embedding_transform_1.0.weight" in sd:
        ignore = bool(meta.get("corrector_ignore_hypothesis_embedding", False))
        start = bool(meta.get(START_TOKEN_KEY, True))
        return corrector_from_state_dict(sd, ignore, start, **t5_overrides)
    if "embedding_transform.0.weight" in sd:
        return inverter_from_state_dict(sd, **t5_overrides)
    raise ValueError(f"{folder}: neither a vec2text InversionModel nor a CorrectorEncoderModel checkpoint")


def model_from(inverter_folder, corrector_folder, embedder, max_length: int = 32):
    """An `api.Vec2Text` from vec2text checkpoint folders whose backbones decode in the embedder's own WordPiece
    vocabulary (pad = decoder start = [PAD], EOS = [SEP]), so hypotheses are re-embedded inside the compiled
    program. The token ids come from the embedder's tokenizer, never T5's defaults; a backbone with another
    vocabulary (T5 SentencePiece, as the published GTR models) is refused: run it with `inversion_program` and
    `drivers.invert_host`."""
    from v2t_jax import api
    from v2t_jax.vocabulary import Vocabulary

    vocab = Vocabulary.of_embedder(embedder, max_length)  # VocabularyError (a ValueError) without [CLS]/[SEP]
    ids = dict(eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id, decoder_start_token_id=vocab.pad_id)
    inv_cfg, inv_params = load_folder(inverter_folder, **ids)
    if not isinstance(inv_cfg, inverters.InverterConfig):
        raise ValueError(f"{inverter_folder}: not a vec2text InversionModel checkpoint")
    if inv_cfg.t5.vocab_size != vocab.size:
        raise ValueError(
            f"{inverter_folder}: its backbone's vocabulary ({inv_cfg.t5.vocab_size} tokens) is not the embedder's "
            f"({vocab.size}): run it through text with inversion_program + drivers.invert_host"
        )
    cor_cfg = cor_params = None
    if corrector_folder is not None:
        cor_cfg, cor_params = load_folder(corrector_folder, **ids)
        if not isinstance(cor_cfg, correctors.CorrectorConfig):
            raise ValueError(f"{corrector_folder}: not a vec2text CorrectorEncoderModel checkpoint")
    return api.build(inv_cfg, inv_params, cor_cfg, cor_params, embedder, max_length)


def inversion_program(
    inverter_cfg: inverters.InverterConfig, corrector_cfg: correctors.CorrectorConfig | None, length: int = 32
) -> core.InversionProgram:
    """An `InversionProgram` for imported models, which decode in T5's vocabulary (pad = start = 0, EOS = 1)
    rather than the embedder's: run it with `drivers.invert_host` (hypotheses go through text to the
    embedder), giving `decode` = the T5 tokenizer's decode and `embed_fn` = the embedder (e.g. GTR).

        program = vec2text_import.inversion_program(inv_cfg, cor_cfg, length=32)
        params = {"inverter": inv_params, "corrector": cor_params}
        out = drivers.invert_host(program, params, vectors, strategies.sequence_beam(20, 4), decode, embed_fn)
    """
    return core.InversionProgram(
        inverter_cfg, corrector_cfg, None, length=length, eos_id=inverter_cfg.t5.eos_token_id, pad_id=0
    )


def _config(folder: Path) -> dict:
    """The checkpoint's config.json (vec2text's InversionConfig) as a JSON object, {} where there is none."""
    from v2t_jax.outputs import input_file

    path = folder / "config.json"
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        meta = json.loads(input_file(path, "checkpoint config").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # (json's errors are ValueErrors)
        raise ValueError(f"{path} is not a JSON config ({str(e).splitlines()[0][:160] if str(e) else e!r})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds a JSON {type(meta).__name__}, not the object of a vec2text config")
    return meta


def _max_length(given: int | None, meta: dict, where: Path) -> int:
    """The embedder's token budget: `given`, else the config's max_seq_length, else 32; an integer in 2..4096 (the
    bundle's bound; the embedder's positions are checked once it is loaded)."""
    value = given if given is not None else meta.get("max_seq_length", 32)
    if value is None:
        value = 32
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 4096:
        said = "--max-length" if given is not None else f"{where / 'config.json'}: max_seq_length"
        raise ValueError(f"{said} is {value!r}: a token count in 2..4096 (the embedder's budget) is due")
    return value


def _tokenizer_folder(inversion_folder: Path, meta: dict) -> Path:
    """Where the backbone's tokenizer is: the inversion folder itself, or the local folder its config names as
    `model_name_or_path` (the T5 it was trained from)."""
    candidates = [inversion_folder]
    named = meta.get("model_name_or_path")
    if isinstance(named, str) and named:
        candidates.append(Path(named).expanduser())
    for folder in candidates:
        if (folder / "tokenizer.json").is_file():
            return folder
    raise ValueError(
        f"{inversion_folder} holds no tokenizer.json and its model_name_or_path ({named!r}) is no local folder with "
        "one: pass --tokenizer DIR (a folder with the T5 tokenizer.json, e.g. t5-base's)"
    )


def to_bundle(
    inversion_folder: str | os.PathLike,
    corrector_folder: str | os.PathLike | None,
    embedder: str | os.PathLike,
    output: str | os.PathLike,
    weights: str = "float32",
    tokenizer: str | os.PathLike | None = None,
    max_length: int | None = None,
    embedder_head: str | None = None,
    overwrite: bool = False,
) -> Path:
    """A model bundle (`v2t_jax.bundle`) from vec2text checkpoint folders, which `v2t invert`, `v2t audit`,
    `v2t bench` and `api.load_model` run as any bundle.

    The backbones decode in T5's SentencePiece vocabulary, so the bundle holds that tokenizer (`tokenizer`, default:
    the inversion folder's, or its config's local `model_name_or_path`) and its hypotheses are re-embedded through
    text. `max_length` (default: the checkpoint's `max_seq_length`, else 32) is the embedder's token budget.
    `embedder_head` (default: "none" for vec2text's `gtr_base`, whose embedding is the GTR encoder's mean pool
    without Dense or normalisation; "auto" otherwise) is recorded, so the bundle always embeds as it was trained.
    Raises ValueError (or `bundle.ModelError`) with one line saying what is wrong, before anything is written."""
    from v2t_jax import api, bundle
    from v2t_jax.models import embedders
    from v2t_jax.vocabulary import Vocabulary

    inversion_folder = Path(inversion_folder)
    meta = _config(inversion_folder)
    max_length = _max_length(max_length, meta, inversion_folder)
    head = embedder_head or ("none" if meta.get("embedder_model_name") == "gtr_base" else "auto")
    if head not in bundle.EMBEDDER_HEADS:
        raise ValueError(f"embedder head {head!r} is not one of {', '.join(bundle.EMBEDDER_HEADS)}")
    tok_folder = Path(tokenizer) if tokenizer is not None else _tokenizer_folder(inversion_folder, meta)
    vocab = Vocabulary.from_folder(tok_folder, max_length)
    ids = dict(pad_token_id=vocab.pad_id, decoder_start_token_id=vocab.pad_id, eos_token_id=vocab.eos_id)
    inv_cfg, inv_params = load_folder(inversion_folder, **ids)
    if not isinstance(inv_cfg, inverters.InverterConfig):
        raise ValueError(f"{inversion_folder}: a CorrectorEncoderModel checkpoint; give the InversionModel first")
    cor_cfg = cor_params = None
    if corrector_folder is not None:
        cor_cfg, cor_params = load_folder(corrector_folder, **ids)
        if not isinstance(cor_cfg, correctors.CorrectorConfig):
            raise ValueError(f"{corrector_folder}: not a vec2text CorrectorEncoderModel checkpoint")
    for where, cfg in ((inversion_folder, inv_cfg), (corrector_folder, cor_cfg)):
        if cfg is not None and vocab.size > cfg.t5.vocab_size:
            raise ValueError(
                f"{where}: its backbone embeds {cfg.t5.vocab_size} tokens, the tokenizer in {tok_folder} has "
                f"{vocab.size}: give the tokenizer the checkpoint was trained with (--tokenizer)"
            )
    name = str(Path(embedder).resolve()) if Path(embedder).is_dir() else str(embedder)
    emb = embedders.load_embedder(name, head=head)
    if emb.config.max_positions is not None and max_length > emb.config.max_positions:
        raise ValueError(f"a token budget of {max_length} is past the {emb.config.max_positions} positions of the "
                         f"embedder {name}: give --max-length {emb.config.max_positions} or less")  # fmt: skip
    for where, cfg in ((inversion_folder, inv_cfg), (corrector_folder, cor_cfg)):
        if cfg is not None and cfg.embed_dim != emb.dim:
            raise ValueError(
                f"{where} inverts {cfg.embed_dim}-dimensional embeddings; the embedder {name} (head {head}) gives "
                f"{emb.dim}"
            )
    model = api.build(inv_cfg, inv_params, cor_cfg, cor_params, emb, max_length, vocab)
    api.check_params_fit(model)
    source = {"vec2text": {"inversion": str(inversion_folder.resolve()),
                           "corrector": str(Path(corrector_folder).resolve()) if corrector_folder else None,
                           "tokenizer": str(tok_folder.resolve())}}  # fmt: skip
    from v2t_jax import outputs

    with outputs.new_folder(
        output, "import", overwrite, bundle.BUNDLE_FILES
    ) as tmp:  # (whole or not at all; the old one kept till then)
        model.save(tmp, weights, extra={"source": source})
    return Path(output)
