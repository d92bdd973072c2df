"""Sentence embedders in Flax: the frozen models whose vectors get inverted.

Two backbones, one pooling head:
  * BERT family (sentence-transformers' all-MiniLM-L6-v2 and friends): BERT -> mean pooling over
    the attention mask -> L2 normalise.
  * GTR-style T5 encoder: T5 encoder -> mean pooling [-> Dense -> L2 normalise]. The vec2text
    reference's "gtr_base" uses *no* Dense and *no* normalisation; sentence-transformers' GTR has both.

The core is the pure function `embed(config, params, input_ids, attention_mask)`, usable inside
any jitted program (the correction loop re-embeds candidate ids in-graph). `Embedder` adds the
tokenizer and a batched text-in convenience around it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from v2t_jax.models import hf_import
from v2t_jax.models import t5 as t5_lib

Array = jax.Array
PyTree = Any

# ----------------------------------------------------------------------------- BERT


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    dtype: str = "float32"

    @classmethod
    def from_hf_dict(cls, d: dict) -> "BertConfig":
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"BERT position_embedding_type={d['position_embedding_type']!r} is not supported")
        return cls(**_encoder_fields(cls, d, "BERT"), type_vocab_size=d.get("type_vocab_size", 2))


def _encoder_fields(cls, d: dict, what: str) -> dict:
    """The sizes a transformers config.json gives a post-LN encoder config `cls` (its defaults where absent)."""
    if d.get("hidden_act", "gelu") not in _BERT_ACTIVATIONS:
        raise ValueError(f"{what} hidden_act={d['hidden_act']!r} is not supported")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    optional = ("hidden_act", "max_position_embeddings", "layer_norm_eps", "pad_token_id")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    out = {k: d[k] for k in required}
    out.update({k: defaults[k] if d.get(k) is None else d[k] for k in optional})
    return out


_BERT_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


class _Dense(nn.Module):
    features: int
    axes: tuple[str, str]
    dtype: str = "float32"
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), self.axes),
            (x.shape[-1], self.features),
            jnp.float32,
        )
        y = x.astype(self.dtype) @ jnp.asarray(kernel, self.dtype)
        if self.use_bias:
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]), (self.features,)
            )
            y = y + jnp.asarray(bias, self.dtype)
        return y


class _DenseParams(nn.Module):
    """The kernel and bias of a dense layer, returned unapplied (for fusing several into one product)."""

    features: int
    axes: tuple[str, str]

    @nn.compact
    def __call__(self, in_features: int) -> dict:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), self.axes),
            (in_features, self.features),
        )
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]), (self.features,))
        return {"kernel": kernel, "bias": bias}


class _LayerNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (d,))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,))
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        return ((x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias).astype(x.dtype)


class BertLayer(nn.Module):
    """Post-LN BERT layer. Dense layers run on token-major [b*l, e] matrices and Q, K, V share one
    matrix product; attention runs in [b, h, l, d] layout (both measurably faster on XLA:CPU)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x_ne: Array, bias_b11k: Array) -> Array:
        cfg = self.config
        e, h = cfg.hidden_size, cfg.num_attention_heads
        d = e // h
        dt = cfg.dtype
        b, length = bias_b11k.shape[0], bias_b11k.shape[-1]
        kernels, biases = [], []
        for name in ("query", "key", "value"):
            p = _DenseParams(e, ("embed", "joined_kv"), name=name)(e)
            kernels.append(p["kernel"])
            biases.append(p["bias"])
        qkv = x_ne.astype(dt) @ jnp.concatenate(kernels, 1).astype(dt) + jnp.concatenate(biases).astype(dt)
        qkv = qkv.reshape(b, length, 3, h, d).transpose(2, 0, 3, 1, 4)  # [3, b, h, l, d]
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) / np.float32(np.sqrt(d)) + bias_b11k
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        ctx = jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3).reshape(b * length, e)
        attn = _Dense(e, ("joined_kv", "embed"), dt, name="attn_out")(ctx)
        x = _LayerNorm(cfg.layer_norm_eps, name="attn_norm")(attn + x_ne)
        hdn = _BERT_ACTIVATIONS[cfg.hidden_act](_Dense(cfg.intermediate_size, ("embed", "mlp"), dt, name="ffn_in")(x))
        out = _Dense(e, ("mlp", "embed"), dt, name="ffn_out")(hdn)
        return _LayerNorm(cfg.layer_norm_eps, name="ffn_norm")(out + x)


TOKEN_PERTURBATION = "token_embeddings"


def _token_vectors(module: nn.Module, word: Array, input_ids: Array) -> Array:
    """The input tokens' word vectors [b, l, e], through a zero perturbation (`nn.Module.perturb`): applied with
    a "perturbations" collection, the gradient with respect to it is the gradient with respect to each input
    token's vector (`v2t_jax.search.hotflip`); without one (every other use) it is a no-op."""
    x = jnp.take(word, input_ids, axis=0)
    return x if module.is_initializing() else module.perturb(TOKEN_PERTURBATION, x)


class Bert(nn.Module):
    """BERT encoder (inference only: embedders are frozen). Returns token states [b, l, e]."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array) -> Array:
        cfg = self.config

        def table(name, n):
            return self.param(
                name,
                nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
                (n, cfg.hidden_size),
            )

        word = table("word_embeddings", cfg.vocab_size)
        position = table("position_embeddings", cfg.max_position_embeddings)
        token_type = table("token_type_embeddings", cfg.type_vocab_size)
        length = input_ids.shape[1]
        if length > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds BERT max_position_embeddings {cfg.max_position_embeddings}"
            )
        x = _token_vectors(self, word, input_ids) + position[None, :length] + token_type[0][None, None]
        x = _LayerNorm(cfg.layer_norm_eps, name="embeddings_norm")(x).astype(cfg.dtype)
        bias = jnp.where(attention_mask[:, None, None, :].astype(bool), 0.0, jnp.finfo(jnp.float32).min)
        x = x.reshape(-1, cfg.hidden_size)  # token-major [b*l, e] through the layers
        for i in range(cfg.num_hidden_layers):
            x = BertLayer(cfg, name=f"layers_{i}")(x, bias)
        return x.reshape(input_ids.shape + (cfg.hidden_size,))


def bert_params_from_hf_state_dict(sd: dict[str, np.ndarray], cfg: BertConfig) -> dict:
    """Maps a transformers BertModel state dict (with or without a 'bert.' prefix) onto ours."""
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    # Very old checkpoints name LayerNorm parameters gamma/beta.
    sd = {
        k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
        for k, v in sd.items()
    }
    tables = ("word_embeddings", "position_embeddings", "token_type_embeddings")
    attention = {"query": "self.query", "key": "self.key", "value": "self.value", "attn_out": "output.dense",
                 "attn_norm": "output.LayerNorm"}  # fmt: skip
    return _post_ln_encoder_params(sd, {t: f"embeddings.{t}.weight" for t in tables}, attention, cfg.num_hidden_layers)


def _post_ln_encoder_params(sd: dict, tables: dict[str, str], attention: dict[str, str], num_layers: int) -> dict:
    """Our parameters of a post-LN encoder (`BertLayer`s) from a transformers state dict: `tables` maps our
    embedding tables to their keys, `attention` our attention parameters to the keys under `attention.`."""

    def dense(prefix):
        return {"kernel": sd[prefix + ".weight"].T, "bias": sd[prefix + ".bias"]}

    def norm(prefix):
        return {"scale": sd[prefix + ".weight"], "bias": sd[prefix + ".bias"]}

    p: dict[str, Any] = {name: sd[key] for name, key in tables.items()}
    p["embeddings_norm"] = norm("embeddings.LayerNorm")
    layer = {name: "attention." + key for name, key in attention.items()}
    layer.update(ffn_in="intermediate.dense", ffn_out="output.dense", ffn_norm="output.LayerNorm")
    for i in range(num_layers):
        p[f"layers_{i}"] = {
            name: (norm if name.endswith("_norm") else dense)(f"encoder.layer.{i}.{key}") for name, key in layer.items()
        }
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), p)


# ----------------------------------------------------------------------------- MPNet


@dataclasses.dataclass(frozen=True)
class MPNetConfig:
    """MPNet (the backbone of all-mpnet-base-v2): BERT's post-LN layers, no token types, positions counted from
    `pad_token_id + 1` over non-pad tokens, and one learned relative-position attention bias (T5's bidirectional
    buckets) shared by every layer."""

    vocab_size: int = 30527
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dtype: str = "float32"

    @classmethod
    def from_hf_dict(cls, d: dict) -> "MPNetConfig":
        buckets = d.get("relative_attention_num_buckets", 32)
        return cls(**_encoder_fields(cls, d, "MPNet"), relative_attention_num_buckets=buckets)

    @property
    def layer(self) -> BertConfig:
        """What each layer is: a BERT layer of these sizes."""
        return BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
            pad_token_id=self.pad_token_id,
            dtype=self.dtype,
        )

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings - self.pad_token_id - 1


class MPNet(nn.Module):
    """MPNet encoder (inference only). Returns token states [b, l, e]."""

    config: MPNetConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array) -> Array:
        cfg = self.config

        def table(name, n, d, axes):
            return self.param(name, nn.with_logical_partitioning(nn.initializers.normal(0.02), axes), (n, d))

        word = table("word_embeddings", cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"))
        position = table("position_embeddings", cfg.max_position_embeddings, cfg.hidden_size, ("vocab", "embed"))
        rel_bias = table("relative_attention_bias", cfg.relative_attention_num_buckets, cfg.num_attention_heads,
                         (None, "heads"))  # fmt: skip
        length = input_ids.shape[1]
        if length > cfg.max_positions:
            raise ValueError(f"sequence length {length} exceeds MPNet's {cfg.max_positions} positions")
        real = (input_ids != cfg.pad_token_id).astype(jnp.int32)  # positions skip pad tokens, as the reference's
        positions = jnp.cumsum(real, axis=1) * real + cfg.pad_token_id
        x = _token_vectors(self, word, input_ids) + jnp.take(position, positions, axis=0)
        x = _LayerNorm(cfg.layer_norm_eps, name="embeddings_norm")(x).astype(cfg.dtype)
        rel = jnp.arange(length)[None, :] - jnp.arange(length)[:, None]  # key position - query position
        bucket = t5_lib.relative_position_bucket(
            rel, True, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        )
        position_bias = jnp.take(rel_bias, bucket, axis=0).transpose(2, 0, 1)[None]  # [1, h, q, k]
        bias = jnp.where(attention_mask[:, None, None, :].astype(bool), 0.0, jnp.finfo(jnp.float32).min)
        bias = bias + position_bias.astype(jnp.float32)  # [b, h, q, k]
        x = x.reshape(-1, cfg.hidden_size)
        for i in range(cfg.num_hidden_layers):
            x = BertLayer(cfg.layer, name=f"layers_{i}")(x, bias)
        return x.reshape(input_ids.shape + (cfg.hidden_size,))


def mpnet_params_from_hf_state_dict(sd: dict[str, np.ndarray], cfg: MPNetConfig) -> dict:
    """Maps a transformers MPNetModel state dict (with or without an 'mpnet.' prefix) onto ours."""
    sd = {k.removeprefix("mpnet."): v for k, v in sd.items()}
    tables = {t: f"embeddings.{t}.weight" for t in ("word_embeddings", "position_embeddings")}
    tables["relative_attention_bias"] = "encoder.relative_attention_bias.weight"
    attention = {"query": "attn.q", "key": "attn.k", "value": "attn.v", "attn_out": "attn.o", "attn_norm": "LayerNorm"}
    return _post_ln_encoder_params(sd, tables, attention, cfg.num_hidden_layers)


# ----------------------------------------------------------------------------- sentence embedder


@dataclasses.dataclass(frozen=True)
class DenseHead:
    """sentence-transformers `Dense` module: Linear(in, out[, bias]) then an activation."""

    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "identity"  # "identity" or "tanh"


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One kind of transformer under a sentence embedder: everything the rest of v2t asks of it. A new backbone
    is its module (config, Flax module, weights from Hugging Face) plus one entry in `BACKBONES`."""

    model_type: str  # Hugging Face config.json's "model_type"
    config_type: type
    module: Callable[..., nn.Module]  # module(config, name=...)(input_ids, attention_mask) -> states [b, l, width]
    config_from_hf: Callable[[dict], Any]
    params_from_hf: Callable[[dict, Any], dict]  # (state dict, config) -> Flax params
    width: Callable[[Any], int]
    max_positions: Callable[[Any], int | None]  # None: no learned position table (relative positions)


BACKBONES: dict[str, Backbone] = {
    b.model_type: b
    for b in (
        Backbone("bert", BertConfig, Bert, BertConfig.from_hf_dict, bert_params_from_hf_state_dict,
                 lambda c: c.hidden_size, lambda c: c.max_position_embeddings),
        Backbone("mpnet", MPNetConfig, MPNet, MPNetConfig.from_hf_dict, mpnet_params_from_hf_state_dict,
                 lambda c: c.hidden_size, lambda c: c.max_positions),
        Backbone("t5", t5_lib.T5Config, t5_lib.T5EncoderModel, t5_lib.T5Config.from_hf_dict,
                 lambda sd, c: hf_import.params_from_hf_state_dict(sd, c, encoder_only=True), lambda c: c.d_model,
                 lambda c: None),
    )
}  # fmt: skip


def backbone_of(config) -> Backbone:
    """The registered backbone of a backbone config."""
    for b in BACKBONES.values():
        if type(config) is b.config_type:
            return b
    raise ValueError(f"no registered embedder backbone for {type(config).__name__}")


@dataclasses.dataclass(frozen=True)
class EmbedderConfig:
    """A whole sentence embedder: backbone, pooling, optional Dense, optional L2 normalisation."""

    backbone: BertConfig | MPNetConfig | t5_lib.T5Config  # (one of BACKBONES' config types)
    pooling: str = "mean"  # "mean" or "cls"
    dense: DenseHead | None = None
    normalize: bool = True

    @property
    def dim(self) -> int:
        if self.dense is not None:
            return self.dense.out_features
        return backbone_of(self.backbone).width(self.backbone)

    @property
    def max_positions(self) -> int | None:
        return backbone_of(self.backbone).max_positions(self.backbone)


class SentenceEmbedder(nn.Module):
    config: EmbedderConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array) -> Array:
        cfg = self.config
        states = backbone_of(cfg.backbone).module(cfg.backbone, name="backbone")(input_ids, attention_mask)
        states = states.astype(jnp.float32)
        mask = attention_mask.astype(jnp.float32)[..., None]  # [b, l, 1]
        if cfg.pooling == "mean":
            pooled = jnp.sum(states * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
        elif cfg.pooling == "cls":
            pooled = states[:, 0]
        else:
            raise ValueError(f"unknown pooling {cfg.pooling!r}")
        if cfg.dense is not None:
            pooled = _Dense(cfg.dense.out_features, ("embed", "embed_out"), use_bias=cfg.dense.bias, name="dense")(
                pooled
            )
            if cfg.dense.activation == "tanh":
                pooled = jnp.tanh(pooled)
        if cfg.normalize:
            norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
            pooled = pooled / jnp.maximum(norm, 1e-12)
        return pooled


def embed(config: EmbedderConfig, params: PyTree, input_ids: Array, attention_mask: Array) -> Array:
    """Pure embedding function: ids [b, l] int32, mask [b, l] -> float32 [b, dim]."""
    return SentenceEmbedder(config).apply({"params": params}, input_ids, attention_mask)


_embed_jit = jax.jit(embed, static_argnums=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _embed_rows(config: EmbedderConfig, mesh, params: PyTree, input_ids: Array, attention_mask: Array) -> Array:
    """`embed` with each device of `mesh` embedding its share of the rows."""
    from v2t_jax import parallel

    per_device = lambda p, rows: embed(config, p, *rows)  # noqa: E731
    return parallel.rows_map(per_device, mesh)(params, (input_ids, attention_mask))


def embed_decoder_ids(config: EmbedderConfig, params: PyTree, ids: Array, cls_id: int, pad_id: int = 0) -> Array:
    """Re-embeds decoder outputs in the embedder's vocabulary, `t1 .. tn [SEP] pad ..` [..., L] -> [..., dim].

    The embedder sees `[CLS] t1 .. tn [SEP]`; a hypothesis that never emitted [SEP] is embedded without one."""
    flat = ids.reshape(-1, ids.shape[-1])
    vec = embed(config, params, *decoder_inputs(flat, cls_id, pad_id))
    return vec.reshape(ids.shape[:-1] + vec.shape[-1:])


def decoder_inputs(ids: Array, cls_id: int, pad_id: int = 0) -> tuple[Array, Array]:
    """Decoder ids [B, L] as the embedder reads them: `[CLS] + ids` [B, L+1] and its attention mask."""
    full = jnp.concatenate([jnp.full((ids.shape[0], 1), cls_id, ids.dtype), ids], axis=1)
    return full, (full != pad_id).astype(jnp.int32)


def cosine(a: Array, b: Array) -> Array:
    """Cosine similarity along the last axis."""
    return jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + 1e-12)


# ----------------------------------------------------------------------------- loading


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _st_modules(folder: str) -> list[dict]:
    path = os.path.join(folder, "modules.json")
    if os.path.exists(path):
        return _read_json(path)
    # A bare transformers folder: treat it as Transformer + mean pooling, no normalisation.
    return [{"type": "sentence_transformers.models.Transformer", "path": ""}]


def load_embedder_config_and_params(folder: str | os.PathLike, head: str = "auto") -> tuple[EmbedderConfig, dict]:
    """Reads a sentence-transformers (or bare transformers) folder into (EmbedderConfig, params).

    head: "auto" follows modules.json; "none" keeps only backbone + mean pooling (vec2text's GTR);
    "normalize" forces L2 normalisation without any Dense layer.
    """
    folder = os.fspath(folder)
    modules = _st_modules(folder)
    pooling, dense, normalize = "mean", None, False
    backbone_dir = folder
    for m in modules:
        kind = m.get("type", "").rsplit(".", 1)[-1]
        sub = hf_import.join_inside(folder, m.get("path", ""), "modules.json")
        if kind == "Transformer":
            backbone_dir = sub
        elif kind == "Pooling":
            pc = _read_json(os.path.join(sub, "config.json"))
            if pc.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif pc.get("pooling_mode_mean_tokens", True):
                pooling = "mean"
            else:
                raise ValueError(f"{folder}: only mean or CLS pooling is supported, got {pc}")
        elif kind == "Dense":
            dc = _read_json(os.path.join(sub, "config.json"))
            act = dc.get("activation_function", "torch.nn.modules.linear.Identity").rsplit(".", 1)[-1].lower()
            if act not in ("identity", "tanh"):
                raise ValueError(f"{folder}: Dense activation {act!r} is not supported")
            dense = (sub, DenseHead(dc["in_features"], dc["out_features"], dc.get("bias", True), act))
        elif kind == "Normalize":
            normalize = True
        else:
            raise ValueError(f"{folder}: sentence-transformers module {kind!r} is not supported")
    if head == "none":
        dense, normalize = None, False
    elif head == "normalize":
        dense, normalize = None, True
    elif head != "auto":
        raise ValueError(f"head must be 'auto', 'none' or 'normalize', got {head!r}")

    hf = _read_json(os.path.join(backbone_dir, "config.json"))
    kind = BACKBONES.get(hf.get("model_type"))
    if kind is None:
        raise ValueError(
            f"{backbone_dir}: embedder backbone {hf.get('model_type')!r} is not supported ({', '.join(BACKBONES)})"
        )
    backbone = kind.config_from_hf(hf)
    backbone_params = kind.params_from_hf(hf_import.read_hf_state_dict(backbone_dir), backbone)

    params: dict[str, Any] = {"backbone": backbone_params}
    dense_head = None
    if dense is not None:
        dense_dir, dense_head = dense
        dsd = hf_import.read_hf_state_dict(dense_dir) if _has_weights(dense_dir) else {}
        if not dsd:
            raise FileNotFoundError(f"{dense_dir}: Dense layer weights not found")
        params["dense"] = {"kernel": np.asarray(dsd["linear.weight"], np.float32).T}
        if dense_head.bias:
            params["dense"]["bias"] = np.asarray(dsd["linear.bias"], np.float32)
    return EmbedderConfig(backbone, pooling, dense_head, normalize), params


def max_positions_of(folder: str | os.PathLike) -> int | None:
    """The tokens an embedder folder's backbone can read (its config's position table, less the two a RoBERTa-style
    table keeps for padding); None where it has no learned positions (T5) or no config says."""
    path = os.path.join(os.fspath(folder), "config.json")
    if not os.path.isfile(path):
        return None
    cfg = _read_json(path)
    n = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return None
    return n - 2 if cfg.get("model_type") in ("mpnet", "roberta", "xlm-roberta") else n


def _has_weights(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, f)) for f in ("model.safetensors", "pytorch_model.bin"))


def load_tokenizer(folder: str | os.PathLike):
    """A `tokenizers.Tokenizer` with padding and truncation switched off (we set our own)."""
    import tokenizers

    folder = os.fspath(folder)
    path = os.path.join(folder, "tokenizer.json")
    if os.path.exists(path):
        from v2t_jax.outputs import input_file

        tok = tokenizers.Tokenizer.from_file(str(input_file(path, "tokenizer file")))  # (a FIFO would never end)
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder).backend_tokenizer
    tok.no_padding()
    tok.no_truncation()
    return tok


def _bucket_length(n: int, max_length: int, multiple: int = 8) -> int:
    return min(max_length, max(multiple, -(-n // multiple) * multiple))


@dataclasses.dataclass
class Embedder:
    """A loaded sentence embedder: config + params + tokenizer."""

    name: str
    config: EmbedderConfig
    params: PyTree
    tokenizer: Any
    pad_token_id: int = 0
    # set when the folder declares itself a stand-in for another embedder's weights (STAND_IN_FILE): e.g. the GPU
    # kit's int8-dequantised MiniLM, whose bundles are meant for (and measured with) the float32 one
    declared_digest: str | None = None
    head: str = "auto"  # how the folder's sentence-transformers head was read (`load_embedder`'s head)
    devices: int | None = None  # how many of this process's devices embed (None: all of them; `v2t_jax.parallel`)

    @property
    def dim(self) -> int:
        return self.config.dim

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the weights as float32 (names, shapes, values): what a bundle records to bind itself to the
        embedder it was trained for, whatever folder or file format holds them."""
        h = hashlib.sha256()
        leaves = jax.tree_util.tree_flatten_with_path(self.params)[0]
        for path, leaf in sorted(leaves, key=lambda x: jax.tree_util.keystr(x[0])):
            a = np.ascontiguousarray(np.asarray(leaf, np.float32))
            h.update(f"{jax.tree_util.keystr(path)}{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    @property
    def binding_digest(self) -> str:
        """The digest a bundle trained with this embedder records and is checked against: the weights' own, or
        the one a stand-in folder declares."""
        return self.declared_digest or self.digest

    def embed_ids(self, input_ids: Array, attention_mask: Array) -> Array:
        """[b, D] vectors of token ids: every device of the mesh embeds its share of the rows (b a multiple of the
        device count: `embed_texts` pads its batches so)."""
        from v2t_jax import parallel

        mesh = parallel.local_mesh(self.devices)
        if parallel.size(mesh) == 1:
            return _embed_jit(self.config, self.params, input_ids, attention_mask)
        placed = self.__dict__.get("_placed")
        if placed is None or placed[0] is not mesh:
            placed = self.__dict__["_placed"] = (mesh, parallel.replicate(self.params, mesh))
        return _embed_rows(self.config, mesh, placed[1], input_ids, attention_mask)

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Token ids per text, truncated to `max_length` tokens including special tokens."""
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        if self.config.max_positions is not None and max_length > self.config.max_positions:
            raise ValueError(f"max_length {max_length} exceeds the embedder's {self.config.max_positions} positions")
        self.tokenizer.enable_truncation(max_length)
        try:
            return [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]
        finally:
            self.tokenizer.no_truncation()

    def pad(self, ids: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
        out = np.full((len(ids), length), self.pad_token_id, np.int32)
        mask = np.zeros((len(ids), length), np.int32)
        for i, row in enumerate(ids):
            out[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return out, mask

    def embed_texts(
        self,
        texts: Sequence[str],
        max_length: int = 32,
        batch_size: int = 128,
        progress: bool = False,
    ) -> np.ndarray:
        """Embeds texts -> float32 [n, dim].

        Texts are sorted by token length and each batch is padded to a multiple of 8 tokens, so
        short texts cost less; a batch is always padded to `batch_size` rows (rounded up to a multiple of the
        devices), so each padded length compiles once.
        """
        return self.embed_share(texts, max_length, batch_size, progress)[1]

    def embed_share(
        self,
        texts: Sequence[str],
        max_length: int = 32,
        batch_size: int = 128,
        progress: bool = False,
        share: tuple[int, int] = (0, 1),
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, their vectors) of the batches of `embed_texts` that part `share` = (index, count) of the work
        takes (batches index, index + count, …: what one process of several embeds); (0, 1) is every row, in
        order. Each batch holds the rows it holds in a run of one part, so the vectors are the same."""
        index, count = share
        ids = self.tokenize(texts, max_length)
        n = len(ids)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        order = np.argsort([len(r) for r in ids], kind="stable")
        from v2t_jax import parallel

        bs = min(batch_size, n)
        rows_per_call = parallel.round_up(bs, parallel.local_mesh(self.devices))  # every device gets a share
        starts = range(index * bs, n, bs * count)
        mine = np.concatenate([order[s : s + bs] for s in starts] or [np.zeros(0, np.int64)])
        out = np.zeros((n, self.dim), np.float32)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, total=len(starts), unit="batch", desc="embed", dynamic_ncols=True)
        pending: list[tuple[np.ndarray, Array]] = []
        for s in starts:
            idx = order[s : s + bs]
            rows = [ids[i] for i in idx]
            length = _bucket_length(max(len(r) for r in rows), max_length)
            rows = rows + [[]] * (rows_per_call - len(rows))
            tok, mask = self.pad(rows, length)
            mask[len(idx) :, 0] = 1  # keep filler rows finite
            # Dispatch is asynchronous: the next batch is padded while this one runs.
            pending.append((idx, self.embed_ids(tok, mask)))
            if len(pending) > 2:
                done_idx, vec = pending.pop(0)
                out[done_idx] = np.asarray(vec)[: len(done_idx)]
        for done_idx, vec in pending:
            out[done_idx] = np.asarray(vec)[: len(done_idx)]
        if count == 1:
            return np.arange(n), out
        mine = np.sort(mine)
        return mine, out[mine]


def load_embedder(name_or_path: str | os.PathLike, cache_dir: str | None = None, head: str = "auto") -> Embedder:
    """Loads an embedder by packaged name, local folder or hub id (see `v2t_jax.assets`)."""
    from v2t_jax import assets

    folder = assets.resolve_embedder(name_or_path, cache_dir=cache_dir)
    config, params = load_embedder_config_and_params(folder, head=head)
    tok = load_tokenizer(_tokenizer_folder(folder))
    params = jax.tree_util.tree_map(jnp.asarray, params)
    pad_id = config.backbone.pad_token_id
    declared = None
    stand_in = os.path.join(folder, STAND_IN_FILE)
    if os.path.exists(stand_in):
        declared = _read_json(stand_in).get("digest")
        if not (isinstance(declared, str) and len(declared) == 64):
            raise ValueError(f"{stand_in}: 'digest' must be the sha256 of the weights this folder stands in for")
    return Embedder(str(name_or_path), config, params, tok, pad_id, declared, head)


# A folder holding this file ({"digest": <Embedder.digest of the weights it approximates>, "note": ...}) stands in
# for those weights: bundles trained with it bind to them (`Embedder.binding_digest`).
STAND_IN_FILE = "v2t_stands_for.json"


def _tokenizer_folder(folder: str) -> str:
    for m in _st_modules(os.fspath(folder)):
        if m.get("type", "").endswith("Transformer"):
            sub = hf_import.join_inside(folder, m.get("path", ""), "modules.json")
            if os.path.exists(os.path.join(sub, "tokenizer.json")) or os.path.exists(
                os.path.join(sub, "tokenizer_config.json")
            ):
                return sub
    return os.fspath(folder)
