"""The model bundle: what `v2t export` writes and `v2t invert` reads, owned here (format, metadata, int8 weights,
digests, validation), apart from the inference API.

A bundle is a folder:
  v2t_model.json          metadata: format, embedder (name + digest of its weights), max_length, the inverter and
                          corrector configs, special token ids, weight format, a sha256 per weights file, and
                          free-form provenance (`source`, `release`)
  inverter.safetensors    flattened ('/'-joined keys) float32 tensors, or int8 + float32 `<key>@scale`
  corrector.safetensors   (absent for an inverter-only bundle)
  (embedder_head)         only when the embedder is read without part of its sentence-transformers head ("none":
                          the encoder's mean pool alone, as vec2text's gtr-base models; absent: "auto", all of it)
  tokenizer.json          only for a model decoding in its own vocabulary (not the embedder's: e.g. T5's
                          SentencePiece, as vec2text's GTR models); its hypotheses are re-embedded through text

Reading checks everything before any model is built or compiled, and every fault is one `ModelError` line: the
JSON, its keys and their types, the config fields, the files' digests (a changed file is refused), each tensor's
dtype (float32/float16, or int8 with a finite positive scale of the shape `quantize_int8` writes), and finite
values. Format 1 bundles (no digests) still read; format 3 is written only for a bundle with its own vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np

from v2t_jax.assets import new_file_mode, sha256_file
from v2t_jax.errors import ModelError, brief  # (ModelError: this module's error, defined with the others)

FILE = "v2t_model.json"
FORMAT = 2  # 2: + files (sha256 per weights file) and embedder_digest; 1 still reads
FORMAT_OWN_VOCABULARY = 3  # 3: + vocabulary (the bundle's tokenizer.json) and cls_id null
VOCABULARY_FILE = "tokenizer.json"

WEIGHT_FORMATS = ("float32", "int8")
SCALE_SUFFIX = "@scale"
_MIN_QUANTIZED_SIZE = 4096  # smaller tensors (norm scales, biases, relative-position tables) stay float32
WEIGHT_FILES = {"inverter": "inverter.safetensors", "corrector": "corrector.safetensors"}
BUNDLE_FILES = (FILE, VOCABULARY_FILE, *WEIGHT_FILES.values())  # all a bundle folder holds


# ----------------------------------------------------------------------------------------------- weights


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:  # (C order: safetensors writes an array's buffer as it lies, so a transposed view would come back
            out[key] = np.ascontiguousarray(v, np.float32)  # transposed)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
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
    """Flattened tensors to save; with weights="int8", every tensor of ≥ 2 dims and ≥ 4096 entries becomes an
    int8 tensor plus a float32 `<key>@scale` tensor."""
    check_weight_format(weights)
    flat = flatten(tree)
    if weights == "float32":
        return flat
    out = {}
    for key, w in flat.items():
        if w.ndim >= 2 and w.size >= _MIN_QUANTIZED_SIZE:
            out[key], out[key + SCALE_SUFFIX] = quantize_int8(w)
        else:
            out[key] = w
    return out


def _scale_fits(w: np.ndarray, scale: np.ndarray) -> bool:
    """The shape `quantize_int8` gives a scale: w's size on its longest axis, 1 on every other."""
    if scale.ndim != w.ndim or w.ndim == 0:
        return False
    axis = int(np.argmax(w.shape))
    return all(s == (w.shape[i] if i == axis else 1) for i, s in enumerate(scale.shape))


def read_params(path: str | os.PathLike) -> dict:
    """A parameter tree from a bundle's .safetensors, int8 tensors dequantized to float32; every tensor checked
    (dtype, int8 scale shape, finite values) with one ModelError line for the first fault."""
    from safetensors.numpy import load_file

    path = Path(path)
    try:
        flat = load_file(str(path))
    except Exception as e:  # truncated, not safetensors, unknown dtype: the library raises several kinds
        raise ModelError(f"{path} cannot be read ({brief(e)}): the bundle is damaged; export it again") from None
    out = {}
    for key, w in flat.items():
        if key.endswith(SCALE_SUFFIX):
            if flat.get(key[: -len(SCALE_SUFFIX)], np.zeros(0)).dtype != np.int8:
                raise ModelError(f"{path}: {key} scales no int8 tensor; the bundle is damaged")
            continue
        if w.dtype == np.int8:
            scale = flat.get(key + SCALE_SUFFIX)
            if scale is None:
                raise ModelError(f"{path}: int8 tensor {key} has no {key}{SCALE_SUFFIX}; the bundle is damaged")
            if scale.dtype != np.float32 or not _scale_fits(w, scale):
                raise ModelError(
                    f"{path}: {key}{SCALE_SUFFIX} is {scale.dtype} {list(scale.shape)}, not the float32 per-row "
                    f"scale of a {list(w.shape)} tensor; the bundle is damaged"
                )
            if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
                raise ModelError(f"{path}: {key}{SCALE_SUFFIX} holds non-finite or non-positive scales")
            w = w.astype(np.float32) * scale
        elif w.dtype in (np.float32, np.float16):
            w = w.astype(np.float32)
        else:
            raise ModelError(
                f"{path}: tensor {key} is {w.dtype}; bundles hold float32 (or int8 with a float32 scale) tensors"
            )
        if not np.all(np.isfinite(w)):
            raise ModelError(f"{path}: tensor {key} holds NaN or infinite values; the bundle is damaged")
        out[key] = w
    return unflatten(out)


# ----------------------------------------------------------------------------------------------- metadata


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    return True  # nested dataclasses are checked by their own call


def typed_config(cls: type, data: Any, where: str, nested: dict[str, type] | None = None):
    """`cls(**data)` for a config dataclass, refusing unknown keys and values of the wrong type in one line."""
    if not isinstance(data, dict):
        raise ModelError(f"{where} must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ModelError(f"{where} has unknown fields ({', '.join(unknown)}): written by a newer v2t_jax?")
    values = dict(data)
    for name, sub in (nested or {}).items():
        if name not in values:
            raise ModelError(f"{where} lacks {name}")
        values[name] = typed_config(sub, values[name], f"{where}.{name}")
    for f in dataclasses.fields(cls):
        if f.name in values and f.name not in (nested or {}) and not _type_ok(values[f.name], hints[f.name]):
            raise ModelError(f"{where}.{f.name} is {values[f.name]!r}, not a {hints[f.name]}")
        if (
            f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        ):
            raise ModelError(f"{where} lacks {f.name}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{where} does not make a config ({brief(e)})") from None


# What a config field may hold: anything outside is refused before a model is built (a bundle claiming 10**6
# layers or an unknown dtype is damaged or hostile, and would allocate without bound or fail deep inside JAX).
# The bounds are generous: T5-11B, mT5's 250k vocabulary and 4k-dimensional embedders all fit.
_DTYPES = ("float32", "bfloat16", "float16")
_BOUNDS: dict[str, tuple[float, float]] = {
    "vocab_size": (2, 1 << 20),
    "d_model": (1, 16384),
    "d_kv": (1, 1024),
    "d_ff": (1, 131072),
    "num_layers": (1, 128),
    "num_decoder_layers": (1, 128),
    "num_heads": (1, 256),
    "relative_attention_num_buckets": (2, 1024),
    "relative_attention_max_distance": (1, 1 << 16),
    "max_position_embeddings": (1, 1 << 16),
    "pad_token_id": (0, 1 << 20),
    "eos_token_id": (0, 1 << 20),
    "decoder_start_token_id": (0, 1 << 20),
    "embed_dim": (1, 65536),
    "bottleneck_dim": (1, 65536),
    "num_repeat_tokens": (1, 1024),
}
_OPEN_UNIT = ("dropout_rate",)  # in [0, 1)
_NON_NEGATIVE = ("noise_level", "training_noise")
_POSITIVE_SMALL = ("layer_norm_epsilon", "layer_norm_eps")  # in (0, 1)


def check_bounds(cfg: Any, where: str) -> None:
    """ModelError unless every field of the config dataclass `cfg` (and of its `t5`) is within its bounds."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            check_bounds(v, f"{where}.{f.name}")
            continue
        if v is None or isinstance(v, bool):
            continue
        name = f"{where}.{f.name}"
        if f.name in _BOUNDS:
            lo, hi = _BOUNDS[f.name]
            if not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ModelError(f"{name} is {v!r}, outside {lo}..{hi}: the bundle is damaged")
        elif (f.name in _OPEN_UNIT + _NON_NEGATIVE + _POSITIVE_SMALL) and not isinstance(v, (int, float)):
            raise ModelError(f"{name} is {v!r}, not a number: the bundle is damaged")
        elif f.name in _OPEN_UNIT and not 0 <= v < 1:
            raise ModelError(f"{name} is {v!r}, not in [0, 1): the bundle is damaged")
        elif f.name in _NON_NEGATIVE and not v >= 0:
            raise ModelError(f"{name} is {v!r}, not >= 0: the bundle is damaged")
        elif f.name in _POSITIVE_SMALL and not 0 < v < 1:
            raise ModelError(f"{name} is {v!r}, not in (0, 1): the bundle is damaged")
        elif f.name in ("dtype", "param_dtype") and v not in _DTYPES:
            raise ModelError(f"{name} is {v!r}, not one of {', '.join(_DTYPES)}: the bundle is damaged")


@dataclasses.dataclass(frozen=True)
class Meta:
    """A bundle's validated metadata; `extra` keeps the provenance keys (`source`, `release`, ...)."""

    embedder: str
    max_length: int
    inverter: Any  # inverters.InverterConfig
    corrector: Any  # correctors.CorrectorConfig | None
    cls_id: int | None  # None: the decoders emit ids of the bundle's own vocabulary (`vocabulary`)
    eos_id: int
    pad_id: int
    weights: str
    embedder_digest: str | None = None
    vocabulary: str | None = None  # VOCABULARY_FILE when the bundle has its own; None: the embedder's
    files: dict | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    embedder_head: str = "auto"  # how the embedder's sentence-transformers head is read (embedders.load_embedder)

    def to_json(self) -> dict:
        out = {
            "format": FORMAT if self.vocabulary is None else FORMAT_OWN_VOCABULARY,
            "embedder": self.embedder,
            "embedder_digest": self.embedder_digest,
            "max_length": self.max_length,
            "inverter": dataclasses.asdict(self.inverter),
            "corrector": dataclasses.asdict(self.corrector) if self.corrector is not None else None,
            "cls_id": self.cls_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "weights": self.weights,
            "files": self.files,
        }
        if self.vocabulary is not None:
            out["vocabulary"] = self.vocabulary
        if self.embedder_head != "auto":
            out["embedder_head"] = self.embedder_head
        return {**out, **self.extra}


_CORE = {"format", "embedder", "embedder_digest", "max_length", "inverter", "corrector", "cls_id", "eos_id",
         "pad_id", "weights", "files", "vocabulary", "embedder_head"}  # fmt: skip
EMBEDDER_HEADS = ("auto", "none", "normalize")  # embedders.load_embedder's


def read_meta(folder: str | os.PathLike) -> Meta:
    """The validated metadata of bundle `folder` (one ModelError line for whatever is wrong)."""
    folder = Path(folder)
    path = folder / FILE
    if not folder.is_dir() or not path.is_file():
        raise ModelError(f"{folder} is not a v2t model bundle (no {FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON ({brief(e)}): the bundle is damaged; export it again") from None
    meta = meta_from_json(data, path)
    wanted = [WEIGHT_FILES["inverter"]] + ([WEIGHT_FILES["corrector"]] if meta.corrector is not None else [])
    wanted += [meta.vocabulary] if meta.vocabulary is not None else []
    missing = [f for f in wanted if not (folder / f).is_file()]
    if missing:
        raise ModelError(f"{folder} is incomplete: missing {', '.join(missing)}")
    return meta


def meta_from_json(data: Any, path: str | os.PathLike) -> Meta:
    """The metadata a bundle's JSON `data` holds, every check of `read_meta` made (one ModelError line naming
    `path`); `write` makes the same checks before it writes anything."""
    from v2t_jax.models import correctors, inverters
    from v2t_jax.models import t5

    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object: the bundle is damaged")
    fmt = data.get("format")
    if fmt not in (1, FORMAT, FORMAT_OWN_VOCABULARY) or isinstance(fmt, bool):
        raise ModelError(
            f"{path}: bundle format {fmt!r} is not one this v2t_jax reads (1, {FORMAT}, {FORMAT_OWN_VOCABULARY}); "
            "upgrade it"
        )

    def need(key: str, kind: type | tuple, ok=lambda v: True, what: str = ""):
        if key not in data:
            raise ModelError(f"{path} lacks {key!r}: the bundle is damaged")
        v = data[key]
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool or not ok(v):
            raise ModelError(f"{path}: {key} is {v!r}, not {what or kind}")
        return v

    embedder = need("embedder", str, lambda v: bool(v.strip()), "an embedder name")
    max_length = need("max_length", int, lambda v: 2 <= v <= 4096, "a token count in 2..4096")
    vocabulary = data.get("vocabulary")
    if vocabulary is not None and (fmt != FORMAT_OWN_VOCABULARY or vocabulary != VOCABULARY_FILE):
        raise ModelError(f"{path}: vocabulary is {vocabulary!r}, not {VOCABULARY_FILE!r} (in a format-3 bundle)")
    if vocabulary is None and fmt == FORMAT_OWN_VOCABULARY:
        raise ModelError(f"{path}: a format-3 bundle names its vocabulary ({VOCABULARY_FILE!r}): the bundle is damaged")
    ids = {k: need(k, int, lambda v: v >= 0, "a token id") for k in ("eos_id", "pad_id")}
    if vocabulary is None:
        ids["cls_id"] = need("cls_id", int, lambda v: v >= 0, "a token id")
    elif data.get("cls_id") is not None:
        raise ModelError(f"{path}: cls_id must be null in a bundle with its own vocabulary")
    else:
        ids["cls_id"] = None
    weights = need("weights", str, lambda v: v in WEIGHT_FORMATS, f"one of {', '.join(WEIGHT_FORMATS)}")
    inverter = typed_config(inverters.InverterConfig, data.get("inverter"), "inverter", {"t5": t5.T5Config})
    corrector = None
    if data.get("corrector") is not None:
        corrector = typed_config(correctors.CorrectorConfig, data["corrector"], "corrector", {"t5": t5.T5Config})
    for where, cfg in (("inverter", inverter), ("corrector", corrector)):
        if cfg is not None:
            check_bounds(cfg, f"{path}: {where}")
            for k, v in ids.items():
                if v is not None and v >= cfg.t5.vocab_size:
                    raise ModelError(f"{path}: {k} {v} is past the {where}'s {cfg.t5.vocab_size}-token vocabulary")
    digest = data.get("embedder_digest")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
        raise ModelError(f"{path}: embedder_digest is {digest!r}, not a sha256")
    files = data.get("files")
    if files is not None and not (
        isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
    ):
        raise ModelError(f"{path}: files must map file names to sha256 digests")
    head = data.get("embedder_head", "auto")
    if head not in EMBEDDER_HEADS:
        raise ModelError(f"{path}: embedder_head is {head!r}, not one of {', '.join(EMBEDDER_HEADS)}")
    extra = {k: v for k, v in data.items() if k not in _CORE}
    return Meta(embedder, max_length, inverter, corrector, weights=weights, embedder_digest=digest, files=files,
                vocabulary=vocabulary, extra=extra, embedder_head=head, **ids)  # fmt: skip


def read(folder: str | os.PathLike) -> tuple[Meta, dict, dict | None]:
    """(metadata, inverter params, corrector params or None) of bundle `folder`, every file checked against its
    recorded digest before it is parsed."""
    folder = Path(folder)
    meta = read_meta(folder)
    names = [WEIGHT_FILES["inverter"]] + ([WEIGHT_FILES["corrector"]] if meta.corrector is not None else [])
    for name in names + ([meta.vocabulary] if meta.vocabulary is not None else []):
        want = (meta.files or {}).get(name)
        if want is not None and sha256_file(folder / name) != want:
            raise ModelError(
                f"{folder / name} does not match the digest in {FILE}: it was changed after export; export it again"
            )
    inverter = read_params(folder / names[0])
    corrector = read_params(folder / names[1]) if meta.corrector is not None else None
    return meta, inverter, corrector


def write(
    folder: str | os.PathLike, meta: Meta, inverter: dict, corrector: dict | None, vocabulary: str | None = None
) -> Path:
    """Writes a bundle (weights in `meta.weights`; `vocabulary`: the JSON of its own tokenizer, for a model
    not decoding in the embedder's vocabulary), digests recorded; the metadata is written last, so a folder
    without it was never finished."""
    from safetensors.numpy import save_file

    check_weight_format(meta.weights)  # before writing anything: what the loader would refuse is not written
    vocab_name = VOCABULARY_FILE if vocabulary is not None else None
    meta_from_json(dataclasses.replace(meta, vocabulary=vocab_name).to_json(), "the bundle to write")
    for where, tree in (("inverter", inverter), ("corrector", corrector)):
        for key, w in flatten(tree or {}).items():
            w = np.asarray(w)
            if w.dtype.kind != "f" and w.dtype.name != "bfloat16":
                raise ModelError(f"the {where}'s tensor {key} is {w.dtype}: a model's weights are floating point "
                                 "(integer or boolean ones would run as garbage); not written")  # fmt: skip
            if not np.all(np.isfinite(np.asarray(w, np.float32))):
                raise ModelError(f"the {where}'s tensor {key} holds NaN or infinite values; not written")
    encoded = {WEIGHT_FILES["inverter"]: encode_params(inverter, meta.weights)}
    if corrector is not None:
        encoded[WEIGHT_FILES["corrector"]] = encode_params(corrector, meta.weights)
    folder = Path(folder)
    from v2t_jax import outputs

    for name in [*encoded, VOCABULARY_FILE, FILE]:  # a link or device is never written through
        try:
            outputs.check_regular(folder / name, "bundle file")
        except outputs.OutputError as e:
            raise ModelError(str(e)) from None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FILE).unlink(missing_ok=True)
    mode = new_file_mode()
    files = {}
    for name, tensors in encoded.items():
        save_file(tensors, str(folder / name))
        os.chmod(folder / name, mode)  # safetensors writes 0600 whatever the umask
        files[name] = sha256_file(folder / name)
    (folder / VOCABULARY_FILE).unlink(missing_ok=True)  # an earlier bundle's, if this one has none
    if vocabulary is not None:
        (folder / VOCABULARY_FILE).write_text(vocabulary, encoding="utf-8")
        os.chmod(folder / VOCABULARY_FILE, mode)
        files[VOCABULARY_FILE] = sha256_file(folder / VOCABULARY_FILE)
    meta = dataclasses.replace(meta, files=files, vocabulary=VOCABULARY_FILE if vocabulary is not None else None)
    (folder / FILE).write_text(json.dumps(meta.to_json(), indent=1) + "\n")
    return folder
