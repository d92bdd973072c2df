"""Inversion API in the reference's shape, over a saved model bundle.

    model = v2t_jax.api.load_model()                          # the shipped all-MiniLM-L6-v2 model
    model = v2t_jax.api.load_model("path/to/bundle")          # or a bundle: inverter + corrector + embedder name
    texts = v2t_jax.api.invert_embeddings(vectors, model, num_steps=20, sequence_beam_width=4)
    texts, trace = model.invert_embeddings(vectors, num_steps=5, return_trace=True)

A bundle folder holds `v2t_model.json` (configs, token ids, embedder name, max length), `inverter.safetensors`
and `corrector.safetensors` (parameters flattened with '/'-joined keys; in an int8 bundle each large tensor
is int8 beside a float32 `<key>@scale`, see `encode_params`); an inverter-only bundle (no
corrector) inverts with 0 correction steps. The embedder is loaded by name
(`v2t_jax.assets`). The whole N-step inversion of a batch is one compiled program
(`correction.invert`); one compile per (batch, steps, beam).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from v2t_jax import correction, inversion
from v2t_jax.models import embedders, t5

BUNDLE_FILE = "v2t_model.json"
# The release that ships in the package: all-MiniLM-L6-v2 at 32 tokens, int8 weights (see its v2t_model.json).
SHIPPED_BUNDLE = Path(__file__).parent / "resources" / "v2t_minilm_l6_v2"


class ModelError(ValueError):
    """A bundle is missing, incomplete or does not fit the input; the message says what to do."""


WEIGHT_FORMATS = ("float32", "int8")
SCALE_SUFFIX = "@scale"
_MIN_QUANTIZED_SIZE = 4096  # smaller tensors (norm scales, biases, relative-position tables) stay float32


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = np.asarray(v, np.float32)
    return out


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric weight-only int8: one float32 scale per index of the tensor's longest axis (per vocabulary
    entry of an embedding table or LM head, per output or input unit of a projection), so that each scale
    covers at most a few hundred weights. w ≈ q * scale (broadcast); the error is at most scale / 2."""
    w = np.asarray(w, np.float32)
    axis = int(np.argmax(w.shape))
    others = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.max(np.abs(w), axis=others, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale


def check_weight_format(weights: str) -> None:
    if weights not in WEIGHT_FORMATS:
        raise ModelError(f"unknown weight format {weights!r}; use one of {', '.join(WEIGHT_FORMATS)}")


def encode_params(tree: dict, weights: str = "float32") -> dict[str, np.ndarray]:
    """Flattened ('/'-joined keys) tensors to save; with weights="int8", every tensor of ≥ 2 dims and ≥ 4096
    entries becomes an int8 tensor plus a float32 `<key>@scale` tensor."""
    check_weight_format(weights)
    flat = _flatten(tree)
    if weights == "float32":
        return flat
    out = {}
    for key, w in flat.items():
        if w.ndim >= 2 and w.size >= _MIN_QUANTIZED_SIZE:
            out[key], out[key + SCALE_SUFFIX] = quantize_int8(w)
        else:
            out[key] = w
    return out


def read_params(path: str | os.PathLike) -> dict:
    """A parameter tree from a bundle's .safetensors, int8 tensors dequantized to float32."""
    from safetensors.numpy import load_file

    flat = load_file(str(path))
    out = {}
    for key, w in flat.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        if w.dtype == np.int8:
            if key + SCALE_SUFFIX not in flat:
                raise ModelError(f"{path}: int8 tensor {key} has no {key}{SCALE_SUFFIX}; the bundle is damaged")
            w = w.astype(np.float32) * flat[key + SCALE_SUFFIX]
        out[key] = w
    return unflatten_params(out)


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
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


MAX_SEQUENCE_BEAM = 64  # 4,096 candidates per vector and step; the paper's widest is 8 (64)


@dataclasses.dataclass
class Vec2Text:
    """A loaded inverter + corrector + embedder."""

    program: correction.InversionProgram
    params: dict  # {"inverter", "corrector", "embedder"}
    embedder: embedders.Embedder
    max_length: int  # embedder tokens incl. [CLS]/[SEP]

    def __post_init__(self):
        self._run = jax.jit(correction.invert, static_argnums=(0, 3, 4), static_argnames=("skip_repeated", "score"))

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def compiled(self, batch: int, num_steps: int, beam: int, skip_repeated: bool = False, score: bool = False):
        """The inversion compiled ahead of time for one shape: a function (params, embeddings [batch, D]) ->
        `correction.invert`'s outputs, with no stop cosine (benchmarks; `score` as in `correction.invert`)."""
        e = jax.ShapeDtypeStruct((batch, self.dim), np.float32)
        fn = self._run.lower(
            self.program, self.params, e, num_steps, beam, 2.0, skip_repeated=skip_repeated, score=score
        ).compile()
        return lambda params, embeddings: fn(params, embeddings, 2.0)

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
        if self.embedder.config.normalize:
            # the embedder L2-normalises its outputs: scale does not carry information, so treat it alike. In
            # float64 after dividing by the largest entry, so that rows of any scale (1e-30 or 1e30 in float32,
            # whose squares under- or overflow) come out unit-length
            a64 = arr.astype(np.float64)
            a64 /= np.abs(a64).max(axis=1, keepdims=True)
            arr = a64 / np.linalg.norm(a64, axis=1, keepdims=True)
        elif np.abs(arr).max() > np.finfo(np.float32).max:
            raise ModelError("embeddings hold values beyond float32's range; this embedder's vectors never do")
        return arr.astype(np.float32)

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
        skip_repeated: bool = True,
    ):
        """Texts for [N, D] vectors; with return_trace also per-step hypotheses and cosines.

        skip_repeated: an example stops once a step returns its hypotheses unchanged (a fixed point: every
        later step would repeat it) and duplicate candidates are embedded once (`correction.invert`); the texts
        are the full loop's up to floating-point rounding. False runs every step for every example.

        embed_fn: re-embed hypotheses with this black box (list of strings -> [n, D] array), e.g. a remote
        API, on the host between compiled decoding steps, instead of the bundle's embedder inside the program
        (`correction.invert_host`)."""
        if num_steps < 0 or sequence_beam_width < 1 or batch_size < 1:
            raise ModelError("num_steps must be >= 0, sequence_beam_width >= 1 and batch_size >= 1")
        if sequence_beam_width > MAX_SEQUENCE_BEAM:
            raise ModelError(
                f"sequence_beam_width {sequence_beam_width} is over {MAX_SEQUENCE_BEAM}: a step decodes and re-embeds "
                f"width² candidates per vector ({sequence_beam_width**2:,} here); the paper uses 8"
            )
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
                out = jax.device_get(
                    self._run(
                        self.program,
                        self.params,
                        chunk,
                        num_steps,
                        sequence_beam_width,
                        stop,
                        skip_repeated=skip_repeated,
                        score=return_trace or num_steps > 0,
                    )
                )
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

    def embedder_view(self, texts: Sequence[str]) -> list[str]:
        """Each text as the embedder sees it at `max_length` tokens, decoded back (for an uncased WordPiece
        embedder: lower case, accents stripped, WordPiece spacing): the most an inversion can recover, and
        what recovered text is scored against."""
        return [self.decode(ids) for ids in self.embedder.tokenize(list(texts), self.max_length)]

    def decode(self, ids) -> str:
        return self.embedder.tokenizer.decode([int(t) for t in ids], skip_special_tokens=True)

    def save(self, folder: str | os.PathLike, weights: str = "float32") -> None:
        """Writes the bundle; weights="int8" stores the large tensors as int8 + per-row scales (~1/4 the size)."""
        from safetensors.numpy import save_file

        inverter = encode_params(self.params["inverter"], weights)  # checks `weights` before writing anything
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
            "weights": weights,
        }
        save_file(inverter, str(folder / "inverter.safetensors"))
        if p.corrector is not None:
            save_file(encode_params(self.params["corrector"], weights), str(folder / "corrector.safetensors"))
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


def shipped_bundle() -> Path:
    """The bundle folder of the model that ships with the package (used when no bundle is named)."""
    if not (SHIPPED_BUNDLE / BUNDLE_FILE).exists():
        raise ModelError(
            f"this install lacks the shipped model ({SHIPPED_BUNDLE}); reinstall from the repository "
            "or pass a model bundle folder"
        )
    return SHIPPED_BUNDLE


def load_model(folder: str | os.PathLike | None = None, cache_dir: str | None = None) -> Vec2Text:
    """The model in bundle `folder` (default: the shipped all-MiniLM-L6-v2 model)."""
    if folder is None:
        folder = shipped_bundle()
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
        read_params(folder / "inverter.safetensors"),
        corrector_cfg,
        read_params(folder / "corrector.safetensors") if has_corrector else None,
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


def export(
    workdir: str | os.PathLike, folder: str | os.PathLike, step: int | None = None, weights: str = "float32"
) -> Path:
    """A model bundle from a `v2t train` run directory (its latest checkpoint, or `step`): an inverter run gives
    an inverter-only bundle; a corrector run gives its inverter bundle's inverter + the trained corrector.
    `weights`: "float32", or "int8" (weight-only, per-row scales; see `encode_params`)."""
    import ml_collections

    from v2t_jax import checkpoint, train

    workdir = Path(workdir)
    check_weight_format(weights)  # before any loading
    if not (workdir / "config.json").exists():
        raise ModelError(f"{workdir} is not a v2t train run directory (no config.json)")
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    if "dtype" in config.t5:  # a bundle computes in float32 whatever the run trained in (bfloat16 on accelerators)
        config.t5.dtype = "float32"
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
    if not steps:
        raise ModelError(f"{workdir} has no finished checkpoint yet")
    explicit = step is not None
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ModelError(f"{workdir} has no checkpoint at step {step} (it has {', '.join(map(str, steps))})")
    emb = embedders.load_embedder(config.embedder)
    vocab = train.target_vocab(config, emb)
    if not vocab.in_graph:
        raise ModelError("only models that decode in the embedder's vocabulary can be exported as bundles")
    cfg = train.model_config(config, emb.dim, vocab.size, vocab.pad_id, vocab.eos_id)
    try:
        if explicit:
            params = checkpoint.read_state_as_numpy(workdir, step)["params"]
        else:  # the newest step that reads back
            state, step = checkpoint.read_latest_as_numpy(
                workdir, steps, warn=lambda m: print(f"v2t export: {m}", file=sys.stderr)
            )
            params = state["params"]
    except checkpoint.DamagedCheckpoints as e:
        raise ModelError(str(e)) from None
    except Exception as e:  # a named step that does not read back
        why = checkpoint.describe_error(e)
        raise ModelError(f"the checkpoint at step {step} in {workdir} is damaged ({why})") from None
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
    model.save(folder, weights)
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


__all__: list[Any] = [
    "Vec2Text",
    "ModelError",
    "load_model",
    "shipped_bundle",
    "build",
    "invert_embeddings",
    "invert_strings",
]
