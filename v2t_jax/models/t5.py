"""T5 encoder-decoder in Flax (linen), matching Hugging Face's PyTorch T5 numerically.

Both families are covered by one config, and a third layout by the parts it is built from (`LAYOUTS`: the
blocks read a `Layout`'s parts, never its name):
  * original T5: ReLU feed-forward, LM head tied to the shared embedding, decoder output
    rescaled by d_model**-0.5 before the head;
  * T5 v1.1: gated-GELU (tanh approximation) feed-forward, separate LM head, no rescale;
  * the "bert" layout (BERT2BERT, Rothe et al. 2020; transformers' `EncoderDecoderModel` of two BERTs):
    post-LN layers with biases, scaled attention, learned absolute positions with an embedding layer norm,
    and BERT's masked-LM head (dense, GELU, layer norm, then the tied embedding plus a bias). It exists so
    that both stacks can start from a BERT embedder's own layers (`bert_layers_to_t5`).

The encoder takes token ids *or* input embeddings (the inverter feeds projected vectors).
The decoder runs either on a whole sequence (teacher forcing) or incrementally with an
explicit KV cache (`DecoderCache`), so that decoding is a pure function
`tokens_to_logits(ids, cache) -> (logits, cache)`.

Every parameter carries logical axis names ('vocab', 'embed', 'heads', 'kv', 'mlp',
'relpos_buckets', 'layers' is not used: layers are unrolled); `v2t_jax.training.sharding` maps them
to mesh axes.

Shapes use suffixes: b batch, l/q query length, k key length, h heads, d head dim,
e d_model, f d_ff, v vocab.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array
PyTree = Any

# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyperparameters of a T5 encoder-decoder; hashable so it can be a static jit argument."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None  # defaults to num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    # "relu" (original T5) or "gated-gelu" (v1.1); also "gelu", "gated-relu", "gated-silu".
    feed_forward_proj: str = "relu"
    # LM head shares the embedding matrix (original T5) or has its own weights (v1.1).
    tie_word_embeddings: bool = True
    # Multiply decoder outputs by d_model**-0.5 before the LM head; defaults to tie_word_embeddings.
    scale_decoder_outputs: bool | None = None
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    dtype: str = "float32"  # computation dtype
    param_dtype: str = "float32"
    # "t5" (pre-RMSNorm, relative position buckets) or "bert" (post-LN, biases, absolute positions, MLM head)
    layout: str = "t5"
    max_position_embeddings: int = 512  # the "bert" layout's position table (each stack has its own)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r} is not supported; use one of {', '.join(map(repr, LAYOUTS))}")
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)
        if self.scale_decoder_outputs is None:
            object.__setattr__(self, "scale_decoder_outputs", self.tie_word_embeddings and self.layout == "t5")
        act = self.feed_forward_proj.split("-")
        if len(act) > 2 or (len(act) == 2 and act[0] != "gated") or act[-1] not in _ACTIVATIONS:
            raise ValueError(
                f"feed_forward_proj={self.feed_forward_proj!r} is not supported; use one of "
                "'relu', 'gelu', 'gated-gelu', 'gated-relu', 'gated-silu'"
            )
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}")

    @property
    def parts(self) -> Layout:
        """What this config's layout builds its blocks from (`LAYOUTS[layout]`)."""
        return LAYOUTS[self.layout]

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> Callable[[Array], Array]:
        return _ACTIVATIONS[self.feed_forward_proj.split("-")[-1]]

    def replace(self, **kwargs) -> "T5Config":
        return dataclasses.replace(self, **kwargs)

    @classmethod
    def from_hf_dict(cls, d: dict, **overrides) -> "T5Config":
        """Builds a config from a Hugging Face `config.json` dict (transformers 4.x or 5.x)."""
        tie = d.get("tie_word_embeddings", True)
        # transformers 5 stores tie_word_embeddings=True always and records the rescale apart.
        scale = d.get("scale_decoder_outputs", tie is not False)
        kwargs = dict(
            vocab_size=d["vocab_size"],
            d_model=d["d_model"],
            d_kv=d["d_kv"],
            d_ff=d["d_ff"],
            num_layers=d["num_layers"],
            num_decoder_layers=d.get("num_decoder_layers"),
            num_heads=d["num_heads"],
            relative_attention_num_buckets=d.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=d.get("relative_attention_max_distance", 128),
            dropout_rate=d.get("dropout_rate", 0.1),
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-6),
            feed_forward_proj=d.get("feed_forward_proj", "relu"),
            tie_word_embeddings=tie is not False,
            scale_decoder_outputs=bool(scale),
            pad_token_id=d.get("pad_token_id", 0) or 0,
            eos_token_id=_first(d.get("eos_token_id", 1)),
            decoder_start_token_id=d.get("decoder_start_token_id", 0) or 0,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict:
        """The `config.json` fields transformers needs to rebuild this model (T5 layout only)."""
        if self.layout != "t5":
            raise ValueError(f"a {self.layout!r}-layout model has no transformers T5 config")
        return dict(
            architectures=["T5ForConditionalGeneration"],
            model_type="t5",
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            d_kv=self.d_kv,
            d_ff=self.d_ff,
            num_layers=self.num_layers,
            num_decoder_layers=self.num_decoder_layers,
            num_heads=self.num_heads,
            relative_attention_num_buckets=self.relative_attention_num_buckets,
            relative_attention_max_distance=self.relative_attention_max_distance,
            dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
            feed_forward_proj=self.feed_forward_proj,
            tie_word_embeddings=self.tie_word_embeddings,
            scale_decoder_outputs=self.scale_decoder_outputs,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.decoder_start_token_id,
            is_encoder_decoder=True,
        )


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a layout's blocks are made of: the network reads these parts, never the layout's name."""

    norm: str  # "rms": T5's RMSNorm (scale only) | "layer": mean and variance, scale and bias (BERT)
    post_norm: bool  # the norm after each residual sum (BERT) rather than before each sublayer (T5)
    biases: bool  # a bias on every projection (attention, feed-forward, output logits)
    absolute_positions: bool  # a learned position table + embedding norm (BERT), not T5's relative buckets
    scaled_attention: bool  # scores scaled by d_kv**-0.5 (T5 folds the scale into its init)
    final_norm: bool  # a norm (and dropout) after the last layer of each stack
    mlm_head: bool  # BERT's masked-LM transform (dense, GELU, norm) before the tied output embedding
    init_std: float | None  # every weight from normal(init_std) (BERT's 0.02); None: T5's fan-in scaled init


# "t5": pre-RMSNorm, relative position buckets; "bert" (BERT2BERT: transformers' EncoderDecoderModel of two BERTs):
# post-LN layers with biases, scaled attention, absolute positions, BERT's masked-LM head. A layout is one entry.
LAYOUTS = {
    "t5": Layout("rms", post_norm=False, biases=False, absolute_positions=False, scaled_attention=False,
                 final_norm=True, mlm_head=False, init_std=None),
    "bert": Layout("layer", post_norm=True, biases=True, absolute_positions=True, scaled_attention=True,
                   final_norm=False, mlm_head=True, init_std=0.02),
}  # fmt: skip


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}
# "gated-gelu" means the tanh approximation (transformers' "gelu_new"); an ungated "gelu" is exact.
_ACTIVATIONS_GATED = {"gelu": _ACTIVATIONS["gelu_new"]}

# Named shapes. `variant` picks the family: "v1.1" (gated-GELU, untied head) or "t5" (ReLU, tied).
_SIZES = {
    "tiny": dict(d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_heads=4),
    "small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),
    "base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
}
_VARIANTS = {
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "t5": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "bert": dict(layout="bert", feed_forward_proj="gelu", tie_word_embeddings=True, layer_norm_epsilon=1e-12),
}


def t5_config(size: str = "tiny", variant: str = "v1.1", **overrides) -> T5Config:
    """A named T5 shape ('tiny', 'small', 'base') in a family ('v1.1', 't5' or 'bert'), with overrides."""
    if size not in _SIZES:
        raise ValueError(f"unknown T5 size {size!r}; choose one of {sorted(_SIZES)} or pass a T5Config")
    if variant not in _VARIANTS:
        raise ValueError(f"unknown T5 variant {variant!r}; choose one of {sorted(_VARIANTS)}")
    return T5Config(**{**_SIZES[size], **_VARIANTS[variant], **overrides})


# ----------------------------------------------------------------------------- building blocks


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def _normal(std: float):
    return nn.initializers.normal(stddev=std)


def _weight_init(cfg: "T5Config", std: float):
    """T5's scaled normal init, or BERT's normal(0.02) in the "bert" layout."""
    return _normal(std if cfg.parts.init_std is None else cfg.parts.init_std)


def _bias(module: nn.Module, name: str, shape, axes, cfg: "T5Config"):
    return _param(module, name, nn.initializers.zeros, shape, axes, cfg.param_dtype)


def _matmul(x: Array, w: Array, n_in: int = 1) -> Array:
    """Contracts the last `n_in` dims of x with the first `n_in` of w as one 2-D matrix product.

    XLA:CPU runs a [tokens, in] @ [in, out] product (and its gradient) several times faster than the
    same contraction written as a 3-D einsum."""
    lead, k = x.shape[: x.ndim - n_in], int(np.prod(x.shape[x.ndim - n_in :]))
    out = x.reshape(-1, k) @ w.reshape(k, -1)
    return out.reshape(lead + w.shape[n_in:])


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, statistics in float32."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        scale = _param(self, "scale", nn.initializers.ones, (cfg.d_model,), ("embed",), cfg.param_dtype)
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + cfg.layer_norm_epsilon)
        return (jnp.asarray(scale, jnp.float32) * y).astype(cfg.dtype)


class LayerNorm(nn.Module):
    """BERT's layer norm (the "bert" layout): mean and variance, scale and bias, statistics in float32."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        scale = _param(self, "scale", nn.initializers.ones, (cfg.d_model,), ("embed",), cfg.param_dtype)
        bias = _bias(self, "bias", (cfg.d_model,), ("embed",), cfg)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.layer_norm_epsilon)
        return (y * jnp.asarray(scale, jnp.float32) + jnp.asarray(bias, jnp.float32)).astype(cfg.dtype)


def _norm(cfg: T5Config) -> nn.Module:
    return LayerNorm(cfg) if cfg.parts.norm == "layer" else RMSNorm(cfg)


def relative_position_bucket(rel_pos: Array, bidirectional: bool, num_buckets: int, max_distance: int) -> Array:
    """Maps key_pos - query_pos to a bucket id, exactly as Mesh TensorFlow / HF T5 do."""
    buckets = jnp.zeros_like(rel_pos)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel_pos > 0).astype(rel_pos.dtype) * num_buckets
        n = jnp.abs(rel_pos)
    else:
        n = -jnp.minimum(rel_pos, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # float32 arithmetic in the same order as the reference so that bucket edges agree.
    nf = jnp.maximum(n, 1).astype(jnp.float32)
    large = max_exact + (
        jnp.log(nf / np.float32(max_exact))
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(num_buckets - max_exact)
    ).astype(rel_pos.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """Learned per-head bias over relative-position buckets, shared by all layers of a stack."""

    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, q_pos: Array, k_pos: Array) -> Array:
        """q_pos [q], k_pos [k] int32 -> bias [1, h, q, k]."""
        cfg = self.config
        table = _param(
            self,
            "embedding",
            _normal(cfg.d_model**-0.5),
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            ("relpos_buckets", "heads"),
            cfg.param_dtype,
        )
        rel = k_pos[None, :] - q_pos[:, None]  # [q, k]
        bucket = relative_position_bucket(
            rel, self.bidirectional, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        )
        bias_qkh = jnp.take(jnp.asarray(table, jnp.float32), bucket, axis=0)
        return jnp.transpose(bias_qkh, (2, 0, 1))[None]


class Attention(nn.Module):
    """Multi-head attention: T5's has no score scaling (folded into the initialisation) and no biases; the
    "bert" layout's scales scores by d_kv**-0.5 and has a bias on every projection."""

    config: T5Config

    def setup(self):
        cfg = self.config
        e, h, d = cfg.d_model, cfg.num_heads, cfg.d_kv
        pd = cfg.param_dtype
        self.q = _param(self, "q", _weight_init(cfg, (e * d) ** -0.5), (e, h, d), ("embed", "heads", "kv"), pd)
        self.k = _param(self, "k", _weight_init(cfg, e**-0.5), (e, h, d), ("embed", "heads", "kv"), pd)
        self.v = _param(self, "v", _weight_init(cfg, e**-0.5), (e, h, d), ("embed", "heads", "kv"), pd)
        self.o = _param(self, "o", _weight_init(cfg, (h * d) ** -0.5), (h, d, e), ("heads", "kv", "embed"), pd)
        if cfg.parts.biases:
            self.q_bias = _bias(self, "q_bias", (h, d), ("heads", "kv"), cfg)
            self.k_bias = _bias(self, "k_bias", (h, d), ("heads", "kv"), cfg)
            self.v_bias = _bias(self, "v_bias", (h, d), ("heads", "kv"), cfg)
            self.o_bias = _bias(self, "o_bias", (e,), ("embed",), cfg)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def project_kv(self, x_bke: Array) -> tuple[Array, Array]:
        """Keys and values of x [b, k, e], heads-major [b, h, k, d]: the layout the two attention products
        read without a transpose (decoder caches are kept in it)."""
        dt = self.config.dtype
        k = _matmul(x_bke.astype(dt), jnp.asarray(self.k, dt))  # [b, k, h, d]
        v = _matmul(x_bke.astype(dt), jnp.asarray(self.v, dt))
        if self.config.parts.biases:
            k, v = k + jnp.asarray(self.k_bias, dt), v + jnp.asarray(self.v_bias, dt)
        return jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)

    def __call__(
        self,
        x_bqe: Array,
        k_bhkd: Array,
        v_bhkd: Array,
        bias_bhqk: Array,
        deterministic: bool,
    ) -> Array:
        """Attends queries from x to precomputed keys/values [b, h, k, d]; bias already holds the mask."""
        dt = self.config.dtype
        q = _matmul(x_bqe.astype(dt), jnp.asarray(self.q, dt))  # [b, q, h, d]
        if self.config.parts.biases:
            q = q + jnp.asarray(self.q_bias, dt)
        if self.config.parts.scaled_attention:
            q = q * np.asarray(self.config.d_kv**-0.5, dt)
        rows, n_q = k_bhkd.shape[0], q.shape[1]
        group = q.shape[0] // rows  # > 1: beams of a row attend to the row's shared keys/values
        if group > 1:
            q = q.reshape((rows, group * n_q) + q.shape[2:])
        # [b, h, l, d] layout for the two batched products (several times faster on XLA:CPU than [b, l, h, d])
        q_bhqd = jnp.swapaxes(q, 1, 2)
        scores = jnp.einsum("bhqd,bhkd->bhqk", q_bhqd, k_bhkd).astype(jnp.float32) + bias_bhqk
        probs = jax.nn.softmax(scores, axis=-1)
        probs = self.dropout(probs, deterministic=deterministic).astype(dt)
        out = jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", probs, v_bhkd), 1, 2)  # [b, q, h, d]
        if group > 1:
            out = out.reshape((rows * group, n_q) + out.shape[2:])
        out = _matmul(out, jnp.asarray(self.o, dt), n_in=2)
        return out + jnp.asarray(self.o_bias, dt) if self.config.parts.biases else out


class FeedForward(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x_ble: Array, deterministic: bool) -> Array:
        cfg = self.config
        e, f, dt, pd = cfg.d_model, cfg.d_ff, cfg.dtype, cfg.param_dtype
        x = x_ble.astype(dt)
        act_name = cfg.feed_forward_proj.split("-")[-1]

        def dense(name, n_in, n_out, axes, std, y):  # with a bias where the layout has biases
            w = _param(self, name, _weight_init(cfg, std), (n_in, n_out), axes, pd)
            out = _matmul(y, jnp.asarray(w, dt))
            return (
                out + jnp.asarray(_bias(self, name + "_bias", (n_out,), axes[1:], cfg), dt) if cfg.parts.biases else out
            )

        if cfg.is_gated:
            act = _ACTIVATIONS_GATED.get(act_name, _ACTIVATIONS[act_name])
            h = act(dense("wi_0", e, f, ("embed", "mlp"), e**-0.5, x)) * dense(
                "wi_1", e, f, ("embed", "mlp"), e**-0.5, x
            )
        else:
            h = _ACTIVATIONS[act_name](dense("wi", e, f, ("embed", "mlp"), e**-0.5, x))
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return dense("wo", f, e, ("mlp", "embed"), f**-0.5, h)


# ----------------------------------------------------------------------------- layers and stacks


def _residual(norm: nn.Module, x: Array, sublayer: Callable[[Array], Array], post: bool) -> Array:
    """x + sublayer(norm(x)) (T5's pre-norm), or norm(x + sublayer(x)) (BERT's post-norm)."""
    return norm(x + sublayer(x)) if post else x + sublayer(norm(x))


class EncoderLayer(nn.Module):
    config: T5Config

    def setup(self):
        self.attn_norm = _norm(self.config)
        self.attn = Attention(self.config)
        self.ffn_norm = _norm(self.config)
        self.ffn = FeedForward(self.config)
        self.dropout = nn.Dropout(self.config.dropout_rate)

    def __call__(self, x: Array, bias_bhqk: Array, deterministic: bool) -> Array:
        drop = lambda y: self.dropout(y, deterministic=deterministic)  # noqa: E731
        post = self.config.parts.post_norm

        def attend(h):
            k, v = self.attn.project_kv(h)
            return drop(self.attn(h, k, v, bias_bhqk, deterministic))

        x = _residual(self.attn_norm, x, attend, post)
        x = _residual(self.ffn_norm, x, lambda h: drop(self.ffn(h, deterministic)), post)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
    config: T5Config

    def setup(self):
        self.self_attn_norm = _norm(self.config)
        self.self_attn = Attention(self.config)
        self.cross_attn_norm = _norm(self.config)
        self.cross_attn = Attention(self.config)
        self.ffn_norm = _norm(self.config)
        self.ffn = FeedForward(self.config)
        self.dropout = nn.Dropout(self.config.dropout_rate)

    def cross_kv(self, encoder_states: Array) -> tuple[Array, Array]:
        return self.cross_attn.project_kv(encoder_states)

    def __call__(
        self,
        x: Array,
        self_bias: Array,
        cross_kv: tuple[Array, Array],
        cross_bias: Array,
        deterministic: bool,
        self_cache: tuple[Array, Array] | None = None,
        cache_index: Array | None = None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        drop = lambda y: self.dropout(y, deterministic=deterministic)  # noqa: E731
        post = self.config.parts.post_norm
        written = []

        def attend_self(h):
            k, v = self.self_attn.project_kv(h)
            if self_cache is not None:  # write the new keys/values at cache_index, attend over the whole cache
                ck, cv = self_cache
                k = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), cache_index, axis=2)
                v = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), cache_index, axis=2)
                written.append((k, v))
            return drop(self.self_attn(h, k, v, self_bias, deterministic))

        x = _residual(self.self_attn_norm, x, attend_self, post)
        x = _residual(
            self.cross_attn_norm,
            x,
            lambda h: drop(self.cross_attn(h, cross_kv[0], cross_kv[1], cross_bias, deterministic)),
            post,
        )
        x = _residual(self.ffn_norm, x, lambda h: drop(self.ffn(h, deterministic)), post)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), (written[0] if written else None)


def _mask_to_bias(mask: Array) -> Array:
    """bool mask [..., q, k] (True = attend) -> additive float32 bias."""
    return jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


class AbsolutePositions(nn.Module):
    """The "bert" layout's input: token vectors + a learned vector per position, then a layer norm."""

    config: T5Config

    @nn.compact
    def __call__(self, x_ble: Array, positions: Array) -> Array:
        """x [b, l, e], positions [l] int32 -> [b, l, e]."""
        cfg = self.config
        table = _param(
            self,
            "embedding",
            _normal(0.02),
            (cfg.max_position_embeddings, cfg.d_model),
            ("positions", "embed"),
            cfg.param_dtype,
        )
        x = x_ble.astype(jnp.float32) + jnp.take(jnp.asarray(table, jnp.float32), positions, axis=0)[None]
        return LayerNorm(cfg, name="norm")(x)


def _check_positions(cfg: T5Config, length: int, what: str) -> None:
    if cfg.parts.absolute_positions and length > cfg.max_position_embeddings:
        raise ValueError(f"{what} of {length} positions exceeds max_position_embeddings={cfg.max_position_embeddings}")


class Encoder(nn.Module):
    """T5: relative position bias, pre-norm layers, a final norm. "bert": absolute positions, post-norm layers."""

    config: T5Config

    def setup(self):
        cfg = self.config
        if cfg.parts.absolute_positions:
            self.positions = AbsolutePositions(cfg)
        else:
            self.relpos = RelativePositionBias(cfg, bidirectional=True)
        if cfg.parts.final_norm:
            self.final_norm = _norm(cfg)
        self.layers = [EncoderLayer(cfg) for _ in range(cfg.num_layers)]
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def __call__(self, x_ble: Array, mask_bl: Array, deterministic: bool) -> Array:
        cfg = self.config
        length = x_ble.shape[1]
        _check_positions(cfg, length, "an encoder input")
        pos = jnp.arange(length, dtype=jnp.int32)
        bias = _mask_to_bias(mask_bl[:, None, None, :].astype(bool))
        if cfg.parts.absolute_positions:
            x_ble = self.positions(x_ble, pos)
        else:
            bias = bias + self.relpos(pos, pos)
        x = self.dropout(x_ble.astype(cfg.dtype), deterministic=deterministic)
        for layer in self.layers:
            x = layer(x, bias, deterministic)
        return self.dropout(self.final_norm(x), deterministic=deterministic) if cfg.parts.final_norm else x


@struct.dataclass
class DecoderCache:
    """Incremental-decoding state. Every array leaf is batch-first except `index`."""

    self_k: tuple[Array, ...]  # per layer [b, h, max_len, d] (heads-major, see Attention.project_kv)
    self_v: tuple[Array, ...]  # per layer [b, h, max_len, d]
    cross_k: tuple[Array, ...]  # per layer [b, h, enc_len, d]
    cross_v: tuple[Array, ...]  # per layer [b, h, enc_len, d]
    encoder_mask: Array  # [b, enc_len] bool
    index: Array  # [] int32, number of decoder positions already written

    @property
    def max_length(self) -> int:
        return self.self_k[0].shape[2]

    def map_beams(self, fn) -> "DecoderCache":
        """fn applied to the self-attention cache only: in beam search the k beams of a row share the row's
        cross-attention keys/values and encoder mask ([b, ...]; attention groups the b·k queries by row),
        so they are neither repeated k times nor reordered at every step."""
        return self.replace(self_k=tuple(map(fn, self.self_k)), self_v=tuple(map(fn, self.self_v)))


class Decoder(nn.Module):
    config: T5Config

    def setup(self):
        cfg = self.config
        if cfg.parts.absolute_positions:
            self.positions = AbsolutePositions(cfg)
        else:
            self.relpos = RelativePositionBias(cfg, bidirectional=False)
        if cfg.parts.final_norm:
            self.final_norm = _norm(cfg)
        self.layers = [DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers)]
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def _inputs(self, x_ble: Array, q_pos: Array, k_pos: Array, allowed: Array) -> tuple[Array, Array]:
        """(the first layer's input, the self-attention bias) for queries at q_pos over keys at k_pos."""
        if self.config.parts.absolute_positions:
            return self.positions(x_ble, q_pos), _mask_to_bias(allowed)
        return x_ble, self.relpos(q_pos, k_pos) + _mask_to_bias(allowed)

    def _out(self, x: Array, deterministic: bool) -> Array:
        return self.dropout(self.final_norm(x), deterministic=deterministic) if self.config.parts.final_norm else x

    def cross_kv(self, encoder_states: Array) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
        kvs = [layer.cross_kv(encoder_states) for layer in self.layers]
        return tuple(k for k, _ in kvs), tuple(v for _, v in kvs)

    def __call__(
        self,
        x_ble: Array,
        encoder_states: Array,
        encoder_mask: Array,
        decoder_mask: Array | None,
        deterministic: bool,
    ) -> Array:
        """Full-sequence (teacher-forced) pass: causal self-attention, cross-attention."""
        length = x_ble.shape[1]
        _check_positions(self.config, length, "a decoder input")
        pos = jnp.arange(length, dtype=jnp.int32)
        allowed = (pos[None, :] <= pos[:, None])[None, None]  # [1, 1, q, k]
        if decoder_mask is not None:
            allowed = allowed & decoder_mask[:, None, None, :].astype(bool)
        x, self_bias = self._inputs(x_ble, pos, pos, allowed)
        cross_bias = _mask_to_bias(encoder_mask[:, None, None, :].astype(bool))
        ck, cv = self.cross_kv(encoder_states)
        x = self.dropout(x.astype(self.config.dtype), deterministic=deterministic)
        for i, layer in enumerate(self.layers):
            x, _ = layer(x, self_bias, (ck[i], cv[i]), cross_bias, deterministic)
        return self._out(x, deterministic)

    def step(self, x_ble: Array, cache: DecoderCache) -> tuple[Array, DecoderCache]:
        """Incremental pass over `l` new positions starting at cache.index (deterministic)."""
        length = x_ble.shape[1]
        _check_positions(self.config, cache.max_length, "a decoder cache")
        q_pos = cache.index + jnp.arange(length, dtype=jnp.int32)
        k_pos = jnp.arange(cache.max_length, dtype=jnp.int32)
        allowed = (k_pos[None, :] <= q_pos[:, None])[None, None]
        x, self_bias = self._inputs(x_ble, q_pos, k_pos, allowed)
        cross_bias = _mask_to_bias(cache.encoder_mask[:, None, None, :])
        x = x.astype(self.config.dtype)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            x, (k, v) = layer(
                x,
                self_bias,
                (cache.cross_k[i], cache.cross_v[i]),
                cross_bias,
                True,
                self_cache=(cache.self_k[i], cache.self_v[i]),
                cache_index=cache.index,
            )
            new_k.append(k)
            new_v.append(v)
        cache = cache.replace(self_k=tuple(new_k), self_v=tuple(new_v), index=cache.index + length)
        return self._out(x, True), cache


# ----------------------------------------------------------------------------- models


def _shared_embedding(module: nn.Module, cfg: T5Config):
    init = _weight_init(cfg, 1.0)
    return _param(module, "shared", init, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.param_dtype)


class MaskedLMHead(nn.Module):
    """BERT's masked-LM transform before the tied output embedding ("bert" layout): dense, GELU, layer norm."""

    config: T5Config

    @nn.compact
    def __call__(self, h_ble: Array) -> Array:
        cfg = self.config
        dt = cfg.dtype
        w = _param(self, "kernel", _normal(0.02), (cfg.d_model, cfg.d_model), ("embed", "embed_in"), cfg.param_dtype)
        b = _bias(self, "bias", (cfg.d_model,), ("embed_in",), cfg)
        y = _ACTIVATIONS["gelu"](_matmul(h_ble.astype(dt), jnp.asarray(w, dt)) + jnp.asarray(b, dt))
        return LayerNorm(cfg, name="norm")(y)


class T5(nn.Module):
    """T5 encoder-decoder with an LM head. Params: shared, encoder, decoder, [lm_head] ("bert": head, lm_bias)."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.shared = _shared_embedding(self, cfg)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(
                # d_model**-0.5 (not HF's 1.0) keeps initial logits O(1) for training from scratch with Adam.
                self,
                "lm_head",
                _normal(cfg.d_model**-0.5),
                (cfg.d_model, cfg.vocab_size),
                ("embed", "vocab"),
                cfg.param_dtype,
            )
        if cfg.parts.mlm_head:
            self.head = MaskedLMHead(cfg)
        if cfg.parts.biases:
            self.lm_bias = _bias(self, "lm_bias", (cfg.vocab_size,), ("vocab",), cfg)

    def embed(self, ids: Array) -> Array:
        return jnp.take(jnp.asarray(self.shared, self.config.dtype), ids, axis=0)

    def encode(
        self,
        input_ids: Array | None = None,
        attention_mask: Array | None = None,
        inputs_embeds: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """Token ids [b, l] or embeddings [b, l, e] -> encoder states [b, l, e]."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is None:
            attention_mask = jnp.ones(x.shape[:2], dtype=bool)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return self.encoder(x, attention_mask, deterministic)

    def logits(self, h_ble: Array) -> Array:
        cfg = self.config
        if cfg.parts.mlm_head:
            h_ble = self.head(h_ble)
        if cfg.scale_decoder_outputs:
            h_ble = h_ble * (cfg.d_model**-0.5)
        if cfg.tie_word_embeddings:
            w = jnp.asarray(self.shared, cfg.dtype).T
        else:
            w = jnp.asarray(self.lm_head, cfg.dtype)
        out = _matmul(h_ble.astype(cfg.dtype), w)
        if cfg.parts.biases:
            out = out + jnp.asarray(self.lm_bias, cfg.dtype)
        return nn.with_logical_constraint(out.astype(jnp.float32), ("batch", "length", "vocab"))

    def decode(
        self,
        decoder_input_ids: Array,
        encoder_states: Array,
        encoder_mask: Array,
        decoder_mask: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """Teacher-forced decoder pass -> logits [b, l, v] (float32)."""
        h = self.decoder(self.embed(decoder_input_ids), encoder_states, encoder_mask, decoder_mask, deterministic)
        return self.logits(h)

    def __call__(
        self,
        input_ids: Array | None = None,
        attention_mask: Array | None = None,
        decoder_input_ids: Array | None = None,
        decoder_attention_mask: Array | None = None,
        inputs_embeds: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        enc = self.encode(input_ids, attention_mask, inputs_embeds, deterministic)
        if attention_mask is None:
            attention_mask = jnp.ones(enc.shape[:2], dtype=bool)
        return self.decode(decoder_input_ids, enc, attention_mask, decoder_attention_mask, deterministic)

    def init_cache(self, encoder_states: Array, encoder_mask: Array, max_length: int) -> DecoderCache:
        """Empty self-attention cache of `max_length` positions plus precomputed cross-attention K/V."""
        cfg = self.config
        b = encoder_states.shape[0]
        ck, cv = self.decoder.cross_kv(encoder_states)
        zeros = jnp.zeros((b, cfg.num_heads, max_length, cfg.d_kv), cfg.dtype)
        n = cfg.num_decoder_layers
        return DecoderCache(
            self_k=(zeros,) * n,
            self_v=(zeros,) * n,
            cross_k=ck,
            cross_v=cv,
            encoder_mask=encoder_mask.astype(bool),
            index=jnp.zeros((), jnp.int32),
        )

    def decode_step(self, decoder_input_ids: Array, cache: DecoderCache) -> tuple[Array, DecoderCache]:
        """ids [b, l] written at cache.index -> (logits [b, l, v], updated cache)."""
        h, cache = self.decoder.step(self.embed(decoder_input_ids), cache)
        return self.logits(h), cache


class T5EncoderModel(nn.Module):
    """Encoder-only T5 (GTR-style embedders). Params: shared, encoder — same names as in `T5`."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.shared = _shared_embedding(self, cfg)
        self.encoder = Encoder(cfg)

    def __call__(self, input_ids: Array, attention_mask: Array, deterministic: bool = True) -> Array:
        x = jnp.take(jnp.asarray(self.shared, self.config.dtype), input_ids, axis=0)
        return self.encoder(x, attention_mask, deterministic)


def shift_right(labels: Array, decoder_start_token_id: int, pad_token_id: int = 0) -> Array:
    """Teacher-forcing decoder inputs: [start, y_0, ..., y_{n-2}]; -100 labels become pad."""
    start = jnp.full(labels.shape[:-1] + (1,), decoder_start_token_id, labels.dtype)
    shifted = jnp.concatenate([start, labels[..., :-1]], axis=-1)
    return jnp.where(shifted == -100, pad_token_id, shifted)


# ----------------------------------------------------------------------------- initialisation


def _init_fn(model: nn.Module, enc_len: int, dec_len: int) -> Callable[[Array], PyTree]:
    ids = jnp.zeros((1, enc_len), jnp.int32)
    mask = jnp.ones((1, enc_len), bool)
    if isinstance(model, T5):
        return lambda rng: model.init(rng, ids, mask, jnp.zeros((1, dec_len), jnp.int32))
    return lambda rng: model.init(rng, ids, mask)


def init_params(model: nn.Module, rng: Array, enc_len: int = 8, dec_len: int = 4) -> PyTree:
    """Jitted init of a `T5` or `T5EncoderModel`; returns unboxed params."""
    init = _init_fn(model, enc_len, dec_len)
    return jax.jit(lambda r: nn.unbox(init(r)["params"]))(rng)


def logical_axes(model: nn.Module, enc_len: int = 8, dec_len: int = 4) -> PyTree:
    """Logical axis names of every parameter (a PartitionSpec per leaf), from an abstract init."""
    abstract = jax.eval_shape(_init_fn(model, enc_len, dec_len), jax.random.PRNGKey(0))
    return nn.get_partition_spec(abstract)["params"]
