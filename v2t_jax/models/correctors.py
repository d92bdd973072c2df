"""The corrector: rewrites a hypothesis given the target embedding e, the hypothesis embedding ê and
the hypothesis tokens (vec2text's `CorrectorEncoderModel`).

Encoder input, 4 + 3 * R + n positions (R = num_repeat_tokens, n hypothesis tokens):

    [SEP, proj_e(e), SEP, proj_h(ê), SEP, proj_d(e - ê), SEP, token_embeddings(hypothesis)]

then one LayerNorm over the whole sequence. SEP is the embedding of the backbone's EOS token. The paper
omits the separators and the LayerNorm; the reference code has them, and checkpoint import needs them.
`ignore_hypothesis_embedding` is the "no feedback" ablation: ê is replaced by e (so e - ê = 0).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from v2t_jax.models import t5 as t5_lib
from v2t_jax.models.inverters import EmbeddingTransform

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CorrectorConfig:
    t5: t5_lib.T5Config
    embed_dim: int = 384
    bottleneck_dim: int | None = None  # defaults to embed_dim
    num_repeat_tokens: int = 16
    dropout_rate: float = 0.0  # of the three projections (vec2text 0.0.13: 0)
    ignore_hypothesis_embedding: bool = False
    training_noise: float = 0.0  # Gaussian noise on e and ê in training (vec2text 0.0.13: 0; later versions 1e-5)
    layer_norm_eps: float = 1e-5  # torch.nn.LayerNorm's default
    # vec2text feeds each hypothesis back as `generate` returns it, led by the decoder start token (pad, masked
    # out), so its hypothesis tokens sit one position later and its correctors were trained so: imported
    # correctors set this. Ours are trained on hypotheses without it.
    hypothesis_start_token: bool = False

    @property
    def bottleneck(self) -> int:
        return self.bottleneck_dim or self.embed_dim

    @property
    def prefix_length(self) -> int:
        return 4 + 3 * self.num_repeat_tokens


class Corrector(nn.Module):
    config: CorrectorConfig

    def setup(self):
        cfg = self.config

        def transform(name):
            return EmbeddingTransform(
                cfg.embed_dim,
                cfg.bottleneck,
                cfg.t5.d_model,
                cfg.num_repeat_tokens,
                cfg.dropout_rate,
                name=name,
            )

        self.transform_target = transform("transform_target")
        self.transform_hypothesis = transform("transform_hypothesis")
        self.transform_diff = transform("transform_diff")
        self.layernorm = nn.LayerNorm(
            epsilon=cfg.layer_norm_eps,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        )
        self.t5 = t5_lib.T5(cfg.t5)

    def encoder_inputs(
        self, e: Array, e_hat: Array, hyp_ids: Array, hyp_mask: Array, deterministic: bool = True
    ) -> tuple[Array, Array]:
        """e, ê [b, d_emb]; hypothesis ids/mask [b, n] -> inputs_embeds [b, 4 + 3R + n, d_model], mask."""
        cfg = self.config
        e = e.astype(jnp.float32)
        e_hat = e_hat.astype(jnp.float32)
        if cfg.training_noise > 0 and not deterministic:
            r1, r2 = jax.random.split(self.make_rng("noise"))
            e = e + cfg.training_noise * jax.random.normal(r1, e.shape)
            e_hat = e_hat + cfg.training_noise * jax.random.normal(r2, e_hat.shape)
        if cfg.ignore_hypothesis_embedding:
            e_hat = e
        b = e.shape[0]
        sep = jnp.broadcast_to(self.t5.embed(jnp.full((b, 1), cfg.t5.eos_token_id, jnp.int32)), (b, 1, cfg.t5.d_model))
        parts = [
            sep,
            self.transform_target(e, deterministic),
            sep,
            self.transform_hypothesis(e_hat, deterministic),
            sep,
            self.transform_diff(e - e_hat, deterministic),
            sep,
            self.t5.embed(hyp_ids),
        ]
        x = self.layernorm(jnp.concatenate([p.astype(jnp.float32) for p in parts], axis=1))
        mask = jnp.concatenate([jnp.ones((b, cfg.prefix_length), bool), hyp_mask.astype(bool)], axis=1)
        return x, mask

    def encode(self, e, e_hat, hyp_ids, hyp_mask, deterministic: bool = True) -> tuple[Array, Array]:
        x, mask = self.encoder_inputs(e, e_hat, hyp_ids, hyp_mask, deterministic)
        return self.t5.encode(inputs_embeds=x, attention_mask=mask, deterministic=deterministic), mask

    def __call__(self, e, e_hat, hyp_ids, hyp_mask, decoder_input_ids, deterministic: bool = True) -> Array:
        enc, mask = self.encode(e, e_hat, hyp_ids, hyp_mask, deterministic)
        return self.t5.decode(decoder_input_ids, enc, mask, None, deterministic)

    def init_cache(self, e, e_hat, hyp_ids, hyp_mask, max_length: int) -> t5_lib.DecoderCache:
        enc, mask = self.encode(e, e_hat, hyp_ids, hyp_mask, True)
        return self.t5.init_cache(enc, mask, max_length)

    def decode_step(self, ids: Array, cache: t5_lib.DecoderCache) -> tuple[Array, t5_lib.DecoderCache]:
        return self.t5.decode_step(ids, cache)
