"""Inversion API in the reference's shape, over a saved model bundle.

    model = v2t_jax.api.load_model("path/to/bundle")          # inverter + corrector + embedder name
    texts = v2t_jax.api.invert_embeddings(vectors, model, num_steps=20, sequence_beam_width=4)
    texts, trace = model.invert_embeddings(vectors, num_steps=5, return_trace=True)

A bundle folder holds `v2t_model.json` (configs, token ids, embedder name, max length), `inverter.safetensors`
and `corrector.safetensors` (parameters flattened with '/'-joined keys); an inverter-only bundle (no
corrector) inverts with 0 correction steps. The embedder is loaded by name
(`v2t_jax.assets`). The whole N-step inversion of a batch is one compiled program
(`correction.invert`); one compile per (batch, steps, beam).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from v2t_jax import correction, inversion
from v2t_jax.models import embedders, t5

BUNDLE_FILE = "v2t_model.json"


class ModelError(ValueError):
    """A bundle is missing, incomplete or does not fit the input; the message says what to do."""


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = np.asarray(v, np.float32)
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _t5_from(d: dict) -> t5.T5Config:
    return t5.T5Config(**d)


@dataclasses.dataclass
class Vec2Text:
    """A loaded inverter + corrector + embedder."""

    program: correction.InversionProgram
    params: dict  # {"inverter", "corrector", "embedder"}
    embedder: embedders.Embedder
    max_length: int  # embedder tokens incl. [CLS]/[SEP]

    def __post_init__(self):
        self._run = jax.jit(correction.invert, static_argnums=(0, 3, 4))

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def check_embeddings(self, embeddings) -> np.ndarray:
        """Validates a [N, D] array of vectors; returns it as float32. Raises ModelError with what is wrong."""
        arr = np.asarray(embeddings)
        if arr.dtype.kind != "f":
            raise ModelError(f"embeddings must be floating point, got dtype {arr.dtype}")
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ModelError(f"embeddings must be a non-empty [N, D] array, got shape {arr.shape}")
        if arr.shape[1] != self.dim:
            raise ModelError(
                f"embeddings have dimension {arr.shape[1]} but this model inverts {self.embedder.name} "
                f"vectors of dimension {self.dim}"
            )
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise ModelError(f"row {int(np.argmax(bad))} holds NaN or inf ({int(bad.sum())} such rows)")
        zero = ~np.any(arr != 0, axis=1)
        if zero.any():
            raise ModelError(
                f"row {int(np.argmax(zero))} is all zeros ({int(zero.sum())} such rows): nothing to invert"
            )
        arr = arr.astype(np.float32)
        if self.embedder.config.normalize:
            # the embedder L2-normalises its outputs: scale does not carry information, so treat it alike
            arr = arr / np.linalg.norm(arr, axis=1, keepdims=True)
        return arr

    def invert_embeddings(
        self,
        embeddings,
        num_steps: int = 0,
        sequence_beam_width: int = 1,
        stop_cosine: float | None = None,
        batch_size: int = 32,
        return_trace: bool = False,
        progress: bool = False,
        embed_fn=None,
    ):
        """Texts for [N, D] vectors; with return_trace also per-step hypotheses and cosines.

        embed_fn: re-embed hypotheses with this black box (list of strings -> [n, D] array), e.g. a remote
        API, on the host between compiled decoding steps, instead of the bundle's embedder inside the program
        (`correction.invert_host`)."""
        if num_steps < 0 or sequence_beam_width < 1 or batch_size < 1:
            raise ModelError("num_steps must be >= 0, sequence_beam_width >= 1 and batch_size >= 1")
        if num_steps > 0 and self.program.corrector is None:
            raise ModelError("this model is an inverter only (no corrector): use 0 correction steps")
        e = self.check_embeddings(embeddings)
        n = len(e)
        bs = min(batch_size, n)
        texts: list[str] = []
        cosines: list[float] = []
        steps_text: list[list[str]] = []
        steps_cos: list[np.ndarray] = []
        starts = range(0, n, bs)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, total=-(-n // bs), unit="batch", desc="invert", dynamic_ncols=True)
        stop = 2.0 if stop_cosine is None else float(stop_cosine)
        for s in starts:
            chunk = e[s : s + bs]
            m = len(chunk)
            if m < bs:  # one compiled shape: pad the last batch with copies of its last row
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - m, axis=0)])
            if embed_fn is None:
                out = jax.device_get(self._run(self.program, self.params, chunk, num_steps, sequence_beam_width, stop))
            else:
                out = correction.invert_host(
                    self.program, self.params, chunk, num_steps, sequence_beam_width, self.decode, embed_fn, stop
                )
            texts += [self.decode(row) for row in out["ids"][:m]]
            cosines += out["cosine"][:m].tolist()
            if return_trace:
                steps_text += [[self.decode(row) for row in step[:m]] for step in out["step_ids"]]
                steps_cos.append(out["step_cosine"][:, :m])
        if not return_trace:
            return texts
        per_step = []
        n_steps = num_steps + 1
        for i in range(n):
            b, j = divmod(i, bs)
            per_step.append(
                {
                    "hypotheses": [steps_text[b * n_steps + t][j] for t in range(n_steps)],
                    "cosines": [float(steps_cos[b][t, j]) for t in range(n_steps)],
                }
            )
        return texts, {"cosine": cosines, "steps": per_step}

    def invert_strings(self, texts: Sequence[str], **kwargs):
        return self.invert_embeddings(self.embedder.embed_texts(list(texts), max_length=self.max_length), **kwargs)

    def decode(self, ids) -> str:
        return self.embedder.tokenizer.decode([int(t) for t in ids], skip_special_tokens=True)

    def save(self, folder: str | os.PathLike) -> None:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        p = self.program
        meta = {
            "format": 1,
            "embedder": self.embedder.name,
            "max_length": self.max_length,
            "inverter": _config_to_dict(p.inverter),
            "corrector": _config_to_dict(p.corrector) if p.corrector is not None else None,
            "cls_id": p.cls_id,
            "eos_id": p.eos_id,
            "pad_id": p.pad_id,
        }
        save_file(_flatten(self.params["inverter"]), str(folder / "inverter.safetensors"))
        if p.corrector is not None:
            save_file(_flatten(self.params["corrector"]), str(folder / "corrector.safetensors"))
        (folder / BUNDLE_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def build(inverter_cfg, inverter_params, corrector_cfg, corrector_params, embedder, max_length: int = 32) -> Vec2Text:
    """A Vec2Text from configs and parameters decoding in the embedder's own vocabulary."""
    tok = embedder.tokenizer
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise ModelError(
            "the embedder's tokenizer has no [CLS]/[SEP]: in-graph inversion needs the embedder's vocabulary"
        )
    program = correction.InversionProgram(
        inverter_cfg, corrector_cfg, embedder.config, max_length - 1, cls_id, sep_id, embedder.pad_token_id
    )
    params = {"inverter": inverter_params, "embedder": embedder.params}
    if corrector_cfg is not None:
        params["corrector"] = corrector_params
    return Vec2Text(program, jax.tree_util.tree_map(np.asarray, params), embedder, max_length)


def load_model(folder: str | os.PathLike, cache_dir: str | None = None) -> Vec2Text:
    from safetensors.numpy import load_file

    folder = Path(folder)
    meta_path = folder / BUNDLE_FILE
    if not meta_path.exists():
        raise ModelError(f"{folder} is not a v2t model bundle (no {BUNDLE_FILE})")
    meta = json.loads(meta_path.read_text())
    has_corrector = meta.get("corrector") is not None
    wanted = ["inverter.safetensors"] + (["corrector.safetensors"] if has_corrector else [])
    missing = [f for f in wanted if not (folder / f).exists()]
    if missing:
        raise ModelError(f"{folder} is incomplete: missing {', '.join(missing)}")
    inv = dict(meta["inverter"])
    inv["t5"] = _t5_from(inv["t5"])
    inverter_cfg = inversion.InverterConfig(**inv)
    corrector_cfg = None
    if has_corrector:
        cor = dict(meta["corrector"])
        cor["t5"] = _t5_from(cor["t5"])
        corrector_cfg = correction.CorrectorConfig(**cor)
    emb = embedders.load_embedder(meta["embedder"], cache_dir=cache_dir)
    if emb.dim != inverter_cfg.embed_dim or (corrector_cfg is not None and emb.dim != corrector_cfg.embed_dim):
        raise ModelError(
            f"{folder}: the embedder {meta['embedder']!r} has dimension {emb.dim}, the models expect "
            f"{inverter_cfg.embed_dim}"
        )
    model = build(
        inverter_cfg,
        _unflatten(load_file(str(folder / "inverter.safetensors"))),
        corrector_cfg,
        _unflatten(load_file(str(folder / "corrector.safetensors"))) if has_corrector else None,
        emb,
        meta["max_length"],
    )
    _check_params_fit(model)
    return model


def _check_params_fit(model: Vec2Text) -> None:
    """Compares the loaded parameter shapes with what the configs build (a mismatched bundle fails here)."""
    import jax.numpy as jnp

    p = model.program
    e = jnp.zeros((1, p.inverter.embed_dim))
    ids = jnp.zeros((1, p.length), jnp.int32)
    expected = {"inverter": jax.eval_shape(lambda: inversion.Inverter(p.inverter).init(jax.random.PRNGKey(0), e, ids))}
    if p.corrector is not None:
        expected["corrector"] = jax.eval_shape(
            lambda: correction.Corrector(p.corrector).init(jax.random.PRNGKey(0), e, e, ids, ids != 0, ids)
        )
    import flax.linen as nn

    for name, shapes in expected.items():
        want = jax.tree_util.tree_map(lambda x: x.shape, nn.unbox(shapes["params"]))
        have = jax.tree_util.tree_map(lambda x: x.shape, model.params[name])
        if want != have:
            raise ModelError(f"the {name} parameters do not match its config; the bundle is damaged or mixed up")


def export(workdir: str | os.PathLike, folder: str | os.PathLike, step: int | None = None) -> Path:
    """A model bundle from a `v2t train` run directory (its latest checkpoint, or `step`): an inverter run gives
    an inverter-only bundle; a corrector run gives its inverter bundle's inverter + the trained corrector."""
    import ml_collections

    from v2t_jax import checkpoint, train

    workdir = Path(workdir)
    if not (workdir / "config.json").exists():
        raise ModelError(f"{workdir} is not a v2t train run directory (no config.json)")
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
    if not steps:
        raise ModelError(f"{workdir} has no finished checkpoint yet")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ModelError(f"{workdir} has no checkpoint at step {step} (it has {', '.join(map(str, steps))})")
    emb = embedders.load_embedder(config.embedder)
    vocab = train.target_vocab(config, emb)
    if not vocab.in_graph:
        raise ModelError("only models that decode in the embedder's vocabulary can be exported as bundles")
    cfg = train.model_config(config, emb.dim, vocab.size, vocab.pad_id, vocab.eos_id)
    params = checkpoint.read_state_as_numpy(workdir, step)["params"]
    source = {"workdir": str(workdir.absolute()), "step": step}
    if config.model == "corrector":
        try:
            inverter = load_model(train.inverter_bundle(config))
        except train.TrainingError as e:
            raise ModelError(str(e)) from e
        model = build(inverter.program.inverter, inverter.params["inverter"], cfg, params, emb, config.max_length)
        source["inverter"] = str(Path(config.inverter).expanduser().absolute())
    else:
        model = build(cfg, params, None, None, emb, config.max_length)
    _check_params_fit(model)
    model.save(folder)
    meta_path = Path(folder) / BUNDLE_FILE
    meta = json.loads(meta_path.read_text())
    meta["source"] = source
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return Path(folder)


def invert_embeddings(
    embeddings, corrector: Vec2Text, num_steps: int | None = None, sequence_beam_width: int = 0, **kw
):
    """The reference's call shape: num_steps None (or 0) = inverter only; sequence_beam_width 0 = greedy."""
    return corrector.invert_embeddings(
        embeddings, num_steps=num_steps or 0, sequence_beam_width=max(1, sequence_beam_width), **kw
    )


def invert_strings(
    strings: Sequence[str], corrector: Vec2Text, num_steps: int | None = None, sequence_beam_width: int = 0, **kw
):
    return corrector.invert_strings(
        strings, num_steps=num_steps or 0, sequence_beam_width=max(1, sequence_beam_width), **kw
    )


__all__: list[Any] = ["Vec2Text", "ModelError", "load_model", "build", "invert_embeddings", "invert_strings"]
