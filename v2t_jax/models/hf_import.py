"""Hugging Face folders as this project's parameters: reading a folder's state dict (safetensors, or a PyTorch
`.bin` with weights_only), and a T5 folder (config.json + weights) as a `T5Config` and `models.t5` parameters.
The embedders' backbones (`embedders.BACKBONES`) read their folders through `read_hf_state_dict` too.
"""

from __future__ import annotations

import json
import os
import pickle
from typing import Any

import jax
import numpy as np

from v2t_jax.models.t5 import T5Config


def join_inside(folder: str | os.PathLike, rel: str, what: str) -> str:
    """`folder/rel`, refusing a `rel` that leaves `folder` (absolute, or `..` past it): a model folder's own files
    (modules.json, a safetensors index) name only files inside it. Checked on the names, so links inside the
    folder (a hub cache's snapshot links to its blobs) still read."""
    base = os.path.normpath(os.path.abspath(folder))
    path = os.path.normpath(os.path.join(base, rel)) if isinstance(rel, str) else ""
    if not isinstance(rel, str) or os.path.isabs(rel) or os.path.commonpath([base, path]) != base:
        raise ValueError(f"{folder}: {what} names {rel!r}, outside the model folder; the folder is damaged or unsafe")
    return path


def read_hf_state_dict(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads `model.safetensors` (or sharded safetensors, or `pytorch_model.bin` with weights_only); each file
    checked to be a regular file first (`outputs.input_file`: a FIFO would never end). A .bin that is not a
    plain state dict of tensors is `ModelError`, one line."""
    from v2t_jax.outputs import input_file

    folder = os.fspath(folder)
    st_path = os.path.join(folder, "model.safetensors")
    index_path = os.path.join(folder, "model.safetensors.index.json")
    bin_path = os.path.join(folder, "pytorch_model.bin")
    if os.path.exists(st_path) or os.path.exists(index_path):
        from safetensors.numpy import load_file

        if os.path.exists(st_path):
            files = [st_path]
        else:
            with open(input_file(index_path, "weights index")) as f:
                names = set(json.load(f)["weight_map"].values())
            files = sorted(join_inside(folder, v, "model.safetensors.index.json") for v in names)
        out: dict[str, np.ndarray] = {}
        for path in files:
            input_file(path, "weights file")
            try:
                out.update(load_file(path))
            except Exception as e:  # bf16 safetensors cannot be read into numpy directly
                out.update(_load_safetensors_via_torch(path, e))
        return out
    if os.path.exists(bin_path):
        try:
            import torch
        except ImportError as e:
            raise RuntimeError(
                f"{bin_path} is a PyTorch pickle; reading it needs torch (pip install torch), "
                "or convert the checkpoint to model.safetensors"
            ) from e
        from v2t_jax.errors import ModelError, brief

        try:
            sd = torch.load(input_file(bin_path, "weights file"), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
            # weights_only refuses a pickle that would run code or build anything but tensors (UnpicklingError)
            why = f"{bin_path} is not a plain PyTorch state dict of tensors ({brief(e)})"
            raise ModelError(f"{why}; v2t loads no other pickle: convert it to model.safetensors") from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ModelError(f"{bin_path} holds no state dict of tensors; convert it to model.safetensors")
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {folder}")


def _load_safetensors_via_torch(path: str, original: Exception) -> dict[str, np.ndarray]:
    try:
        import torch  # noqa: F401
        from safetensors.torch import load_file

        tensors = load_file(path)
    except Exception:
        raise ValueError(f"cannot read {path}: {original}") from original
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in tensors.items()}


def _attn_from_hf(sd, prefix, cfg: T5Config) -> dict:
    e, h, d = cfg.d_model, cfg.num_heads, cfg.d_kv
    # torch Linear weight is [out, in]; ours is [in, heads, head_dim] / [heads, head_dim, out]
    return {
        "q": sd[prefix + "q.weight"].T.reshape(e, h, d),
        "k": sd[prefix + "k.weight"].T.reshape(e, h, d),
        "v": sd[prefix + "v.weight"].T.reshape(e, h, d),
        "o": sd[prefix + "o.weight"].T.reshape(h, d, e),
    }


def _ffn_from_hf(sd, prefix, cfg: T5Config) -> dict:
    if cfg.is_gated:
        return {
            "wi_0": sd[prefix + "wi_0.weight"].T,
            "wi_1": sd[prefix + "wi_1.weight"].T,
            "wo": sd[prefix + "wo.weight"].T,
        }
    return {"wi": sd[prefix + "wi.weight"].T, "wo": sd[prefix + "wo.weight"].T}


def _stack_from_hf(sd: dict[str, np.ndarray], cfg: T5Config, prefix: str, layers: int, sublayers) -> dict:
    """A T5 stack's parameters: its relative position table, its final norm and, per block, each sublayer with
    its norm; `sublayers`: (our name, transformers' module) in the order of the block's layer.0, layer.1, ..."""
    p: dict[str, Any] = {
        "relpos": {"embedding": sd[prefix + "block.0.layer.0.SelfAttention.relative_attention_bias.weight"]},
        "final_norm": {"scale": sd[prefix + "final_layer_norm.weight"]},
    }
    for i in range(layers):
        block = {}
        for j, (name, theirs) in enumerate(sublayers):
            at = f"{prefix}block.{i}.layer.{j}."
            block[f"{name}_norm"] = {"scale": sd[at + "layer_norm.weight"]}
            read = _ffn_from_hf if theirs == "DenseReluDense" else _attn_from_hf
            block[name] = read(sd, f"{at}{theirs}.", cfg)
        p[f"layers_{i}"] = block
    return p


def encoder_params_from_hf(sd: dict[str, np.ndarray], cfg: T5Config, prefix: str = "encoder.") -> dict:
    return _stack_from_hf(sd, cfg, prefix, cfg.num_layers, (("attn", "SelfAttention"), ("ffn", "DenseReluDense")))


def decoder_params_from_hf(sd: dict[str, np.ndarray], cfg: T5Config, prefix: str = "decoder.") -> dict:
    sublayers = (("self_attn", "SelfAttention"), ("cross_attn", "EncDecAttention"), ("ffn", "DenseReluDense"))
    return _stack_from_hf(sd, cfg, prefix, cfg.num_decoder_layers, sublayers)


def _shared_from_hf(sd: dict[str, np.ndarray]) -> np.ndarray:
    for key in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if key in sd:
            return sd[key]
    raise KeyError("checkpoint has no shared.weight (token embedding)")


def params_from_hf_state_dict(sd: dict[str, np.ndarray], cfg: T5Config, encoder_only: bool = False) -> dict:
    """Maps a transformers T5 state dict (numpy) onto our parameter tree (float32 numpy)."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    params: dict[str, Any] = {"shared": _shared_from_hf(sd), "encoder": encoder_params_from_hf(sd, cfg)}
    if not encoder_only:
        params["decoder"] = decoder_params_from_hf(sd, cfg)
        if not cfg.tie_word_embeddings:
            params["lm_head"] = (sd["lm_head.weight"] if "lm_head.weight" in sd else params["shared"]).T
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)


def load_hf_t5(folder: str | os.PathLike, encoder_only: bool = False, **config_overrides) -> tuple[T5Config, dict]:
    """Loads a Hugging Face T5 checkpoint folder into (config, Flax params).

    The LM head is untied when the checkpoint carries its own `lm_head.weight` that differs
    from the embedding (v1.1 checkpoints), whatever transformers wrote for tie_word_embeddings.
    """
    folder = os.fspath(folder)
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{folder} is not a T5 checkpoint folder: no config.json")
    from v2t_jax.outputs import input_file

    with open(input_file(cfg_path, "T5 config")) as f:
        hf = json.load(f)
    if not isinstance(hf, dict):
        raise ValueError(f"{cfg_path} holds a JSON {type(hf).__name__}, not a config object")
    if hf.get("model_type", "t5") not in ("t5", "mt5", "umt5"):
        raise ValueError(f"{folder} holds a {hf.get('model_type')!r} model, not T5")
    sd = read_hf_state_dict(folder)
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    cfg = T5Config.from_hf_dict(hf, **config_overrides)
    if not encoder_only and "lm_head.weight" in sd:
        untied = not np.array_equal(sd["lm_head.weight"], _shared_from_hf(sd))
        if untied != (not cfg.tie_word_embeddings):
            cfg = cfg.replace(tie_word_embeddings=not untied)
    return cfg, params_from_hf_state_dict(sd, cfg, encoder_only=encoder_only)
