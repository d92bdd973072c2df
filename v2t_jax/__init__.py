"""v2t_jax: vec2text in JAX/Flax — recover text from its embedding.

Heavy modules load on first use, so `v2t` reports input errors without importing JAX.
"""

__version__ = "0.1.0"

_LAZY = {
    "load_embedder": ("v2t_jax.models.embedders", "load_embedder"),
    "embed": ("v2t_jax.models.embedders", "embed"),
    "T5Config": ("v2t_jax.models.t5", "T5Config"),
    "load_hf_t5": ("v2t_jax.models.hf_import", "load_hf_t5"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'v2t_jax' has no attribute {name!r}")
