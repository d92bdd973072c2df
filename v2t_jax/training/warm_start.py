"""How a training run's parameters start, when not from noise: a pretrained Hugging Face T5 (`config.t5.init`),
the embedder's own token embeddings or layers (`init_token_embeddings` / `init_layers="embedder"`: BERT2BERT, the
BERT layers written into a "bert"-layout T5), a bundle's parameters (`init_from`), and the corrector from its
inverter's (`init_from_inverter`); with the check of the bundle whose inverter feeds a corrector. `tasks.Task`
calls these once, as it builds its parameters.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import numpy as np
import ml_collections

from v2t_jax.errors import TrainingError, brief
from v2t_jax.models import embedders, hf_import
from v2t_jax.models import t5 as t5_lib
from v2t_jax.models.t5 import T5Config


def pretrained_t5_folder(config: ml_collections.ConfigDict) -> Path | None:
    """`config.t5.init`, checked to be a Hugging Face T5 folder (config.json + weights), or None."""
    init = config.t5.get("init") or ""
    if not init:
        return None
    folder = Path(init).expanduser()
    if not (folder / "config.json").is_file():
        raise TrainingError(f"config.t5.init: {folder} is not a Hugging Face T5 folder (no config.json)")
    if not any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json",
                                                "pytorch_model.bin")):  # fmt: skip
        raise TrainingError(f"config.t5.init: {folder} holds no weights (model.safetensors or pytorch_model.bin)")
    return folder


@functools.lru_cache(maxsize=4)
def pretrained_t5_config(folder: str) -> t5_lib.T5Config:
    """The T5Config of a pretrained folder, its LM head's tying read off the weights (`hf_import.load_hf_t5`)."""
    from v2t_jax import bundle

    try:
        cfg = hf_import.load_hf_t5(folder)[0]
        bundle.check_bounds(cfg, "its config.json")  # (0 heads, 10^6 layers, ...: what a bundle may not hold)
        return cfg
    except (ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError, ZeroDivisionError) as e:
        # (a config.json that is a list, lacks a field, holds text where numbers go, nests past the stack)
        raise TrainingError(f"config.t5.init: {folder} does not load as T5 ({brief(e)})") from None


def pretrained_t5(params: dict, folder: Path, cfg: t5_lib.T5Config, shardings: Any) -> dict:
    """T5 parameters from the pretrained folder `folder` (`config.t5.init`), in place of the fresh ones; the
    rest (the embedding projections) keeps its fresh initialisation."""
    _, t5 = hf_import.load_hf_t5(folder, tie_word_embeddings=cfg.tie_word_embeddings)
    new = dict(params, t5=t5)
    _check_same_shapes(new, params, f"config.t5.init: the T5 in {folder} has another shape than this config")
    t5 = jax.tree_util.tree_map(lambda x, old, s: jax.device_put(np.asarray(x).astype(old.dtype), s), t5,
                                params["t5"], shardings["t5"])  # fmt: skip
    return dict(params, t5=t5)


def embedder_token_embeddings(params: dict, embedder, vocab, shardings: Any) -> dict:
    """T5 token embeddings started from the embedder's own word embeddings (`config.init_token_embeddings=
    "embedder"`): same vocabulary, same width required; rescaled to the random init's unit standard deviation."""
    word = embedder.params.get("backbone", {}).get("word_embeddings") if isinstance(embedder.params, dict) else None
    shared = params["t5"]["shared"]
    if word is None or not vocab.in_graph or tuple(np.shape(word)) != tuple(shared.shape):
        raise TrainingError(
            f"init_token_embeddings=embedder needs vocab=embedder and t5.d_model equal to the embedder's width "
            f"({np.shape(word)[-1] if word is not None else '?'}); got a T5 embedding of shape {tuple(shared.shape)}"
        )
    w = np.asarray(word, np.float32)
    w = w / w.std()
    t5 = dict(params["t5"], shared=jax.device_put(w.astype(shared.dtype), shardings["t5"]["shared"]))
    return dict(params, t5=t5)


def embedder_layers(params: dict, cfg, embedder, vocab, shardings: Any) -> dict:
    """T5 ("bert" layout, config `cfg`) whose encoder and decoder layers, token and position embeddings start as
    the BERT embedder's own (`config.init_layers="embedder"`; BERT2BERT, Rothe et al. 2020):
    `bert_layers_to_t5`."""
    backbone = getattr(getattr(embedder, "config", None), "backbone", None)
    if not isinstance(backbone, embedders.BertConfig) or not vocab.in_graph:
        raise TrainingError(
            "init_layers=embedder needs a BERT-backbone embedder (all-MiniLM-L6-v2, say) and vocab=embedder; "
            f"got a {type(backbone).__name__} backbone"
        )
    try:
        host = jax.tree_util.tree_map(np.asarray, params["t5"])
        t5 = bert_layers_to_t5(jax.tree_util.tree_map(np.asarray, embedder.params["backbone"]), cfg, host)
    except ValueError as e:
        raise TrainingError(
            f"init_layers=embedder: {e} (use --config configs/inverter.py:gpu_warm's t5 shape)"
        ) from None
    t5 = jax.tree_util.tree_map(
        lambda x, old, s: jax.device_put(x.astype(old.dtype), s), t5, params["t5"], shardings["t5"]
    )
    return dict(params, t5=t5)


# ------------------------------------------------------------------------------- the corrector's inverter


def inverter_bundle(inverter: str, embedder: str, max_length: int, own_vocabulary: bool = False) -> Path:
    """A corrector config's `inverter`: a model bundle whose inverter made (or will make) the hypotheses, of
    the config's `embedder` at `max_length` tokens, decoding in the embedder's vocabulary (or, own_vocabulary:
    in a vocabulary of its own, as the corrector)."""
    from v2t_jax import bundle as bundle_lib

    if not inverter:
        raise TrainingError("a corrector needs the inverter that makes its hypotheses: --config.inverter=BUNDLE")
    bundle = Path(inverter).expanduser()
    if (bundle / "config.json").exists() and (bundle / "checkpoints").is_dir():
        raise TrainingError(
            f"{bundle} is a training run; export a bundle first: v2t export --workdir {bundle} --output BUNDLE"
        )
    try:
        meta = bundle_lib.read_meta(bundle)
    except bundle_lib.ModelError as e:
        raise TrainingError(f"inverter: {e}") from None
    if meta.vocabulary is not None and not own_vocabulary:
        raise TrainingError(f"inverter {bundle} decodes in its own vocabulary; a corrector reads the embedder's")
    if meta.vocabulary is None and own_vocabulary:
        raise TrainingError(
            f"inverter {bundle} decodes in the embedder's vocabulary; this corrector in its own (config.t5.init or "
            "config.vocab): train both in one vocabulary"
        )
    if meta.embedder != embedder or meta.max_length != max_length:
        raise TrainingError(
            f"inverter {bundle} inverts {meta.embedder} at {meta.max_length} tokens, "
            f"the config {embedder} at {max_length}"
        )
    return bundle


def from_bundle(params: dict, bundle: Path, kind: str, shardings: Any) -> dict:
    """The `kind` ("inverter" or "corrector") parameters of model bundle `bundle`, in place of `params` (same
    structure and shapes required), on `shardings`."""
    from v2t_jax import bundle as bundle_lib

    try:
        _, inverter, corrector = bundle_lib.read(bundle)
    except bundle_lib.ModelError as e:
        raise TrainingError(f"init_from: {e}") from None
    new = inverter if kind == "inverter" else corrector
    if new is None:
        raise TrainingError(f"init_from: {bundle} has no {kind}")
    _check_same_shapes(new, params, f"init_from: the {kind} in {bundle} has another shape than this config")
    return jax.tree_util.tree_map(lambda x, s: jax.device_put(np.asarray(x, np.float32), s), new, shardings)


def _check_same_shapes(new: dict, params: dict, what: str, hint: str = "") -> None:
    same = jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params) and all(
        np.shape(a) == np.shape(b) for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(params))
    )
    if not same:
        raise TrainingError(f"{what} (T5 size, vocabulary or embedding width){hint}")


def warm_start(params: dict, bundle: Path, shardings: Any) -> dict:
    """Corrector parameters whose T5 and two embedding projections start as the inverter's.

    The inverter already maps an embedding to text; the corrector starts from that instead of from noise:
    its T5 takes the inverter's T5, its projections of e and ê take the inverter's projection of e, and the
    projection of e - ê and the input layer norm keep their fresh initialisation. The reference starts both
    models from the same pretrained T5; with none here, the trained inverter is the closest thing."""
    from v2t_jax import bundle as bundle_lib

    try:
        inv = bundle_lib.read(bundle)[1]
    except bundle_lib.ModelError as e:
        raise TrainingError(f"inverter: {e}") from None
    new = dict(params, t5=inv["t5"], transform_target=inv["transform"], transform_hypothesis=inv["transform"])
    what = f"init_from_inverter: the inverter in {bundle} has another shape than this corrector config"
    _check_same_shapes(new, params, what, "; set --config.init_from_inverter=false")
    return jax.tree_util.tree_map(lambda x, s: jax.device_put(np.asarray(x, np.float32), s), new, shardings)


# ------------------------------------------------------------------------------- starting from a BERT


def _bert_attention(layer: dict, cfg: T5Config) -> dict:
    e, h, d = cfg.d_model, cfg.num_heads, cfg.d_kv
    out = {}
    for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
        out[ours] = np.reshape(layer[theirs]["kernel"], (e, h, d))
        out[ours + "_bias"] = np.reshape(layer[theirs]["bias"], (h, d))
    out["o"] = np.reshape(layer["attn_out"]["kernel"], (h, d, e))
    out["o_bias"] = np.asarray(layer["attn_out"]["bias"])
    return out


def _bert_ffn(layer: dict) -> dict:
    return {
        "wi": layer["ffn_in"]["kernel"],
        "wi_bias": layer["ffn_in"]["bias"],
        "wo": layer["ffn_out"]["kernel"],
        "wo_bias": layer["ffn_out"]["bias"],
    }


def bert_layers_to_t5(bert: dict, cfg: T5Config, params: dict) -> dict:
    """`params` of a "bert"-layout T5 with both stacks started from a BERT encoder's own (BERT2BERT warm start).

    `bert` is a BERT backbone's parameters as `v2t_jax.models.embedders.Bert` names them. The shared token
    embedding (so the tied output layer too) is BERT's word embedding; each stack gets BERT's position table
    (plus its token-type-0 vector) and embedding layer norm; encoder layer i and decoder layer i start as BERT's
    layer i (self-attention, feed-forward and their norms). What BERT has no counterpart for keeps its value in
    `params`: the decoder's cross-attention and its norm, the masked-LM head and its bias. The decoder's
    self-attention becomes causal by how it is applied, not by its weights."""
    word = np.asarray(bert["word_embeddings"])
    n_bert = sum(1 for k in bert if k.startswith("layers_"))
    layer0 = bert.get("layers_0", {})
    wants = {
        "layout": (cfg.layout, "bert"),
        "vocab_size": (cfg.vocab_size, word.shape[0]),
        "d_model": (cfg.d_model, word.shape[1]),
        "num_heads * d_kv": (cfg.num_heads * cfg.d_kv, word.shape[1]),
        "d_ff": (cfg.d_ff, np.shape(layer0.get("ffn_in", {}).get("kernel", np.zeros((0, 0))))[1]),
        "feed_forward_proj": (cfg.feed_forward_proj, "gelu"),
        "max_position_embeddings": (cfg.max_position_embeddings, np.shape(bert["position_embeddings"])[0]),
    }
    for name, (have, want) in wants.items():
        if have != want:
            raise ValueError(f"starting from the embedder's layers needs {name} = {want} (the embedder's); got {have}")
    if max(cfg.num_layers, cfg.num_decoder_layers) > n_bert:
        raise ValueError(
            f"the embedder has {n_bert} layers; a stack cannot have more "
            f"(got {cfg.num_layers} encoder + {cfg.num_decoder_layers} decoder layers)"
        )
    positions = {
        "embedding": np.asarray(bert["position_embeddings"]) + np.asarray(bert["token_type_embeddings"])[0],
        "norm": dict(bert["embeddings_norm"]),
    }
    encoder = dict(params["encoder"], positions=positions)
    for i in range(cfg.num_layers):
        b = bert[f"layers_{i}"]
        encoder[f"layers_{i}"] = {
            "attn": _bert_attention(b, cfg),
            "attn_norm": dict(b["attn_norm"]),
            "ffn": _bert_ffn(b),
            "ffn_norm": dict(b["ffn_norm"]),
        }
    decoder = dict(params["decoder"], positions=positions)
    for i in range(cfg.num_decoder_layers):
        b = bert[f"layers_{i}"]
        decoder[f"layers_{i}"] = dict(
            params["decoder"][f"layers_{i}"],
            self_attn=_bert_attention(b, cfg),
            self_attn_norm=dict(b["attn_norm"]),
            ffn=_bert_ffn(b),
            ffn_norm=dict(b["ffn_norm"]),
        )
    out = dict(params, shared=word, encoder=encoder, decoder=decoder)
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), out)
