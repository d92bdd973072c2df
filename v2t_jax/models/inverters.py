"""The inverter ("hypothesizer", step 0): embedding -> 16 pseudo-tokens -> T5 -> text.

As in vec2text's `InversionModel`: Linear(d_emb -> d_bottleneck) -> Dropout -> GELU ->
Linear(d_bottleneck -> d_model * num_repeat_tokens); the resulting [b, 16, d_model] is the *whole*
encoder input (mask all ones). The decoder is trained with teacher forcing on the true text.

By default the decoder vocabulary is the embedder's own (WordPiece for MiniLM): decoder start = [PAD] (0),
EOS = [SEP], so a hypothesis can be re-embedded by prepending [CLS] without leaving the compiled program.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from v2t_jax.models import t5 as t5_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class InverterConfig:
    t5: t5_lib.T5Config
    embed_dim: int = 384
    bottleneck_dim: int | None = None  # defaults to embed_dim, as in the reference
    num_repeat_tokens: int = 16
    dropout_rate: float = 0.1
    noise_level: float = 0.0  # Gaussian noise added to the embedding in training (a defense ablation)

    @property
    def bottleneck(self) -> int:
        return self.bottleneck_dim or self.embed_dim


class EmbeddingTransform(nn.Module):
    """Linear -> Dropout -> GELU -> Linear, reshaped to [b, repeat, d_model]."""

    in_dim: int
    bottleneck: int
    d_model: int
    repeat: int
    dropout_rate: float

    @nn.compact
    def __call__(self, e_bd: Array, deterministic: bool) -> Array:
        h = nn.Dense(
            self.bottleneck,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed_in", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
            name="in_proj",
        )(e_bd)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        h = jax.nn.gelu(h, approximate=False)
        h = nn.Dense(
            self.d_model * self.repeat,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="out_proj",
        )(h)
        return h.reshape(e_bd.shape[0], self.repeat, self.d_model)


class Inverter(nn.Module):
    config: InverterConfig

    def setup(self):
        cfg = self.config
        self.transform = EmbeddingTransform(
            cfg.embed_dim, cfg.bottleneck, cfg.t5.d_model, cfg.num_repeat_tokens, cfg.dropout_rate
        )
        self.t5 = t5_lib.T5(cfg.t5)

    def encode(self, embeddings: Array, deterministic: bool = True) -> tuple[Array, Array]:
        """[b, d_emb] -> encoder states [b, repeat, d_model] and their all-ones mask."""
        e = embeddings.astype(jnp.float32)
        if self.config.noise_level > 0 and not deterministic:
            e = e + self.config.noise_level * jax.random.normal(self.make_rng("noise"), e.shape)
        x = self.transform(e, deterministic)
        mask = jnp.ones(x.shape[:2], bool)
        return self.t5.encode(inputs_embeds=x, attention_mask=mask, deterministic=deterministic), mask

    def __call__(self, embeddings: Array, decoder_input_ids: Array, deterministic: bool = True) -> Array:
        enc, mask = self.encode(embeddings, deterministic)
        return self.t5.decode(decoder_input_ids, enc, mask, None, deterministic)

    def init_cache(self, embeddings: Array, max_length: int) -> t5_lib.DecoderCache:
        enc, mask = self.encode(embeddings, True)
        return self.t5.init_cache(enc, mask, max_length)

    def decode_step(self, ids: Array, cache: t5_lib.DecoderCache) -> tuple[Array, t5_lib.DecoderCache]:
        return self.t5.decode_step(ids, cache)


def cross_entropy(logits: Array, labels: Array, mask: Array) -> tuple[Array, dict]:
    """Mean token cross-entropy over `mask`; also token accuracy and the token count."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    m = mask.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    loss = (losses * m).sum() / n
    acc = ((jnp.argmax(logits, -1) == labels) * m).sum() / n
    return loss, {"loss": loss, "token_accuracy": acc, "tokens": m.sum()}
