"""Inversion API in the reference's shape, over a saved model bundle.

    model = v2t_jax.api.load_model()                          # the shipped all-MiniLM-L6-v2 model
    model = v2t_jax.api.load_model("path/to/bundle")          # or a bundle: inverter + corrector + embedder name
    texts = model.invert(vectors, strategies.sequence_beam(20, 4))   # the search as a value (v2t_jax.search.strategies)
    texts, trace = model.invert(vectors, strategies.greedy(5), return_trace=True)
    texts = v2t_jax.api.invert_embeddings(vectors, model, num_steps=20, sequence_beam_width=4)  # vec2text's call

The bundle format (metadata, int8 weights, digests, validation) is `v2t_jax.bundle`; bundles are written by
`v2t_jax.export` from a training run. An inverter-only bundle (no corrector) inverts with 0 correction steps.
The embedder is loaded by name (`v2t_jax.assets`) and must be the one the bundle was trained for (its
weights' digest is recorded). A model decoding in the embedder's vocabulary runs the whole N-step inversion of a
batch as one compiled program (`drivers.invert`; one compile per (batch shape, search)); one with its own
vocabulary (a bundle holding tokenizer.json, e.g. T5 SentencePiece) runs the same search with its hypotheses
re-embedded through text between compiled steps (`drivers.invert_host`), as does any model given `embed_fn`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from v2t_jax import bundle, parallel
from v2t_jax.models import correctors, inverters
from v2t_jax.search import core, hotflip, sharded, strategies
from v2t_jax.bundle import ModelError  # noqa: F401  (the API's error; re-exported)
from v2t_jax.errors import brief
from v2t_jax.models import embedders
from v2t_jax.vocabulary import Vocabulary, VocabularyError

BUNDLE_FILE = bundle.FILE
# The release that ships in the package: all-MiniLM-L6-v2 at 32 tokens, int8 weights (see its v2t_model.json).
SHIPPED_BUNDLE = Path(__file__).parent / "resources" / "v2t_minilm_l6_v2"


@dataclasses.dataclass
class Vec2Text:
    """A loaded inverter + corrector + embedder, and the vocabulary the decoders emit."""

    program: core.InversionProgram
    params: dict  # {"inverter", "corrector", "embedder"}
    embedder: embedders.Embedder
    vocab: Vocabulary
    max_length: int  # embedder tokens incl. [CLS]/[SEP]

    devices: int | None = None  # how many of this process's devices invert (None: all of them; `parallel`)

    def __post_init__(self):
        self._placed: tuple | None = None  # (mesh, params on its devices)

    @property
    def mesh(self):
        """The devices this model inverts on: a one-axis mesh over this process's devices (`parallel.local_mesh`)."""
        return parallel.local_mesh(self.devices)

    def use_devices(self, devices: int | None) -> "Vec2Text":
        """Inverts (and embeds) on the first `devices` of this process's devices (None: all); returns itself."""
        parallel.local_mesh(devices)  # (checked now: a count the host lacks is one line)
        self.devices = devices
        self.embedder.devices = devices
        return self

    def device_params(self) -> dict:
        """The parameters placed whole on every device of the mesh (once per mesh; numpy `params` stay as they are)."""
        mesh = self.mesh
        if self._placed is None or self._placed[0] is not mesh:
            self._placed = (mesh, parallel.replicate(self.params, mesh))
        return self._placed[1]

    def _run(self, embeddings, search: strategies.Search, score: bool = True) -> dict:
        """`drivers.invert` of `search` on every device of the mesh (`sharded.invert_rows`), on the device."""
        return sharded.invert_rows(self.program, self.mesh, self.device_params(), embeddings, search, score)

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def compiled(self, batch: int, search: strategies.Search, score: bool = False):
        """The inversion compiled ahead of time for one shape (`sharded.compiled`: benchmarks; every example runs
        its steps): a function (params, embeddings [batch, D]) -> `drivers.invert`'s outputs; params:
        `device_params()`; its `flops` attribute: one device's FLOPs per call by XLA's cost analysis."""
        if not self.program.in_graph:
            raise ModelError(
                "this model re-embeds through text (its own vocabulary): it has no single compiled program"
            )
        return sharded.compiled(self.program, self.mesh, self.device_params(), batch, self.dim, search, score)

    def compiled_stream(self, queue: int, slots: int, search: strategies.Search):
        """The stream program compiled ahead of time for a queue of `queue` examples through `slots` slots
        (`sharded.compiled_stream`; both multiples of the mesh's device count)."""
        return sharded.compiled_stream(self.program, self.mesh, self.device_params(), queue, slots, self.dim, search)

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
            # the embedder L2-normalises its outputs: scale does not carry information, so treat it alike. Each
            # row is divided by its largest entry in its own dtype (float128's range is far wider than
            # float64's), then normalised in float64, so that rows of any scale (1e-30 or 1e30 in float32, whose
            # squares under- or overflow; 1e4000 in float128) come out unit-length
            scaled = arr / np.abs(arr).max(axis=1, keepdims=True)
            a64 = scaled.astype(np.float64)
            a64 /= np.abs(a64).max(axis=1, keepdims=True)  # (entries that were subnormal in float64 are 0 now)
            arr = a64 / np.linalg.norm(a64, axis=1, keepdims=True)
        elif np.abs(arr).max() > np.finfo(np.float32).max:
            raise ModelError("embeddings hold values beyond float32's range; this embedder's vectors never do")
        return arr.astype(np.float32)

    def invert(
        self,
        embeddings,
        search: strategies.Search | None = None,
        *,
        batch_size: int = 32,
        return_trace: bool = False,
        progress: bool = False,
        embed_fn=None,
        readable: bool = True,
    ):
        """Texts for [N, D] vectors by `search` (`v2t_jax.search.strategies`; default: the inverter alone); with
        return_trace also each text's cosine and per-step hypotheses and cosines.

        readable: texts (and traced hypotheses) as people write them (`Vocabulary.readable`: "elton's", not
        the embedder's decoding "elton ' s"); False gives the decoding itself, which is what `evaluate` scores
        against the embedder's view of a reference (the embedder reads both as the same tokens).

        embed_fn: re-embed hypotheses with this black box (list of strings -> [n, D] array), e.g. a remote
        API, on the host between compiled decoding steps, instead of the bundle's embedder inside the program
        (`drivers.invert_host`). A model with its own vocabulary always re-embeds this way (by default
        with its embedder). With token swaps (`polish`) and return_trace, the polished text is one more entry
        after the last step's."""
        texts: list[str] = []
        cosines: list[float] = []
        per_step: list[dict] = []
        for _, t, c, steps in self.iter_batches(
            embeddings, search, batch_size, trace=return_trace, progress=progress, embed_fn=embed_fn,
            score=return_trace,
        ):  # fmt: skip
            texts += t
            cosines += c
            per_step += steps or []
        if readable:
            texts = self.readable(texts)
            per_step = [{**s, "hypotheses": self.readable(s["hypotheses"])} for s in per_step]
        return (texts, {"cosine": cosines, "steps": per_step}) if return_trace else texts

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
        readable: bool = True,
        prior: float = 0.0,
        polish: int = 0,
    ):
        """`invert` with the search given as the reference's keyword arguments (num_steps, sequence_beam_width)
        and the others of `strategies.Search` (stop_cosine, skip_repeated, prior, polish)."""
        search = strategies.Search(num_steps, sequence_beam_width, prior, polish, stop_cosine, skip_repeated)
        return self.invert(
            embeddings, search, batch_size=batch_size, return_trace=return_trace, progress=progress,
            embed_fn=embed_fn, readable=readable,
        )  # fmt: skip

    def iter_batches(
        self,
        embeddings,
        search: strategies.Search | None = None,
        batch_size: int = 32,
        *,
        trace: bool = False,
        progress: bool = False,
        embed_fn=None,
        start: int = 0,
        score: bool = True,
    ):
        """`invert` one batch at a time: yields (first row, texts, cosines, per-row step traces or None) in
        order, from row `start` (a multiple of the batch size, as a resumed run left off). Every input is checked
        before the first batch runs; the batches are those of a whole run, so the rows come out the same whether
        a run is resumed or not. Each cosine is that of the text's embedding to its target, at 0 steps too;
        `score=False` leaves the step-0 text unembedded at 0 steps (its cosine is then NaN)."""
        search = strategies.inverter_only() if search is None else search
        if not isinstance(search, strategies.Search):
            raise ModelError(f"search must be a v2t_jax.search.strategies.Search, got {type(search).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ModelError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        self.check_search(search, embed_fn)
        e = self.check_embeddings(embeddings)
        n = len(e)
        bs = self.batch_rows(n, batch_size)
        if start % bs or not 0 <= start <= n:
            raise ModelError(f"start row {start} is not a batch boundary (batch {bs}) within the {n} rows")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=-(-n // bs), initial=start // bs, unit="batch", desc="invert", dynamic_ncols=True)
        if embed_fn is None and not self.program.in_graph:
            embed_fn = self.embed_texts
        try:
            for s, out in sharded.batches(
                self.program, self.mesh, self.device_params, self.params, e, search, bs, start, decode=self.decode,
                embed_fn=embed_fn, trace=trace, score=score,
            ):  # fmt: skip
                texts = [self.decode(row) for row in out["ids"]]
                steps = None
                if trace:
                    hyps = [[self.decode(row) for row in step] for step in out["step_ids"]]
                    cos = out["step_cosine"]
                    steps = [
                        {"hypotheses": [h[j] for h in hyps], "cosines": [float(x) for x in cos[:, j]]}
                        for j in range(len(texts))
                    ]
                if bar is not None:
                    bar.update(1)
                yield s, texts, out["cosine"].tolist(), steps
        finally:
            if bar is not None:
                bar.close()

    def streams(self, search: strategies.Search, trace: bool = False, embed_fn=None) -> bool:
        """Whether `iter_batches` runs `search` as a stream (continuous batching; `sharded.streams`)."""
        return sharded.streams(self.program, search, trace, embed_fn is not None)

    @staticmethod
    def batch_rows(n: int, batch_size: int) -> int:
        """The batch size a run over n rows uses (never more than n: one compiled shape, no padding waste)."""
        return max(1, min(batch_size, n))

    def check_search(self, search: strategies.Search, embed_fn=None) -> None:
        """The one place that says whether this model can run `search` (`Search.check_model`: correction steps
        need a corrector, token swaps the embedder's gradients), with `embed_fn` a black-box embedder or None;
        a StrategyError (a ModelError) names what is missing."""
        search.check_model(
            has_corrector=self.program.corrector is not None, in_graph=self.program.in_graph,
            black_box=embed_fn is not None,
        )  # fmt: skip

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """[n, D] vectors of texts, as the targets were made (the embedder at `max_length` tokens)."""
        return np.asarray(self.embedder.embed_texts(list(texts), max_length=self.max_length))

    def invert_strings(self, texts: Sequence[str], **kwargs):
        return self.invert_embeddings(self.embed_texts(texts), **kwargs)

    def embedder_view(self, texts: Sequence[str]) -> list[str]:
        """Each text as far as the embedder reads it (`max_length` tokens), in the form the decoders can
        write it: the most an inversion can recover, and what recovered text is scored against
        (`v2t_jax.evaluate`). In the embedder's uncased WordPiece: lower case, accents stripped, WordPiece
        spacing; in a vocabulary of the model's own, the text cut where the embedder stops reading."""
        from v2t_jax import evaluate

        return evaluate.reference_view(self.vocab, self.embedder, texts, self.max_length)

    def decode(self, ids) -> str:
        return self.vocab.decode(ids)

    def readable(self, texts: Sequence[str]) -> list[str]:
        """Decoded texts (or reference views) as people write them; see `Vocabulary.readable`."""
        return self.vocab.readable(list(texts))

    def save(self, folder: str | os.PathLike, weights: str = "float32", extra: dict | None = None) -> Path:
        """Writes the bundle (`v2t_jax.bundle`); weights="int8" stores the large tensors as int8 + per-row
        scales (~1/4 the size); `extra` adds provenance keys to its metadata."""
        p = self.program
        meta = bundle.Meta(
            embedder=self.embedder.name,
            embedder_digest=self.embedder.binding_digest,
            max_length=self.max_length,
            inverter=p.inverter,
            corrector=p.corrector,
            cls_id=p.cls_id if p.in_graph else None,
            eos_id=p.eos_id,
            pad_id=p.pad_id,
            weights=weights,
            extra=dict(extra or {}),
            embedder_head=self.embedder.head,
        )
        own = None if self.vocab.in_graph else self.vocab.tokenizer.to_str()
        return bundle.write(folder, meta, self.params["inverter"], self.params.get("corrector"), own)


def build(
    inverter_cfg,
    inverter_params,
    corrector_cfg,
    corrector_params,
    embedder,
    max_length: int = 32,
    vocab: Vocabulary | None = None,
) -> Vec2Text:
    """A Vec2Text from configs and parameters decoding in `vocab` (default: the embedder's own vocabulary)."""
    try:
        vocab = vocab or Vocabulary.of_embedder(embedder, max_length)
    except VocabularyError as e:
        raise ModelError(str(e)) from None
    program = core.InversionProgram(
        inverter_cfg,
        corrector_cfg,
        embedder.config,
        length=vocab.length,
        eos_id=vocab.eos_id,
        pad_id=vocab.pad_id,
        cls_id=vocab.cls_id,
        banned=hotflip.banned_ids(vocab.tokenizer, vocab.size) if vocab.in_graph else (),
    )
    params = {"inverter": inverter_params, "embedder": embedder.params}
    if corrector_cfg is not None:
        params["corrector"] = corrector_params
    return Vec2Text(program, jax.tree_util.tree_map(np.asarray, params), embedder, vocab, max_length)


def shipped_bundle() -> Path:
    """The bundle folder of the model that ships with the package (used when no bundle is named)."""
    if not (SHIPPED_BUNDLE / BUNDLE_FILE).exists():
        raise ModelError(
            f"this install lacks the shipped model ({SHIPPED_BUNDLE}); reinstall from the repository "
            "or pass a model bundle folder"
        )
    return SHIPPED_BUNDLE


def load_model(folder: str | os.PathLike | None = None, cache_dir: str | None = None) -> Vec2Text:
    """The model in bundle `folder` (default: the shipped all-MiniLM-L6-v2 model). Everything about the bundle
    is checked before the embedder is loaded (`bundle.read`); the embedder must be the one it was trained for."""
    folder = Path(folder) if folder is not None else shipped_bundle()
    meta, inverter_params, corrector_params = bundle.read(folder)
    from v2t_jax import assets

    try:
        emb = embedders.load_embedder(meta.embedder, cache_dir=cache_dir, head=meta.embedder_head)
    except assets.AssetError:
        raise
    except (ValueError, KeyError, OSError) as e:
        raise ModelError(f"{folder}: its embedder {meta.embedder!r} cannot be loaded ({brief(e)})") from None
    if meta.embedder_digest is not None and emb.binding_digest != meta.embedder_digest:
        raise ModelError(
            f"{folder} was trained for another {meta.embedder!r} (weights digest {meta.embedder_digest[:12]}…, the "
            f"one loaded has {emb.binding_digest[:12]}…): its inversions would be meaningless; use the bundle's own "
            "embedder"
        )
    positions = emb.config.max_positions
    if positions is not None and meta.max_length > positions:
        raise ModelError(
            f"{folder}: max_length {meta.max_length} is past its embedder's {positions} positions: the bundle is "
            "damaged"
        )
    dims = {meta.inverter.embed_dim} | ({meta.corrector.embed_dim} if meta.corrector is not None else set())
    if dims != {emb.dim}:
        raise ModelError(
            f"{folder}: the embedder {meta.embedder!r} has dimension {emb.dim}, the models expect "
            f"{meta.inverter.embed_dim}"
        )
    vocab = None
    if meta.vocabulary is not None:
        try:
            vocab = Vocabulary.from_folder(folder, meta.max_length)
        except Exception as e:  # tokenizers raises a plain Exception for a damaged tokenizer.json
            raise ModelError(f"{folder}: its {meta.vocabulary} does not load ({brief(e)})") from None
        if (vocab.pad_id, vocab.eos_id) != (meta.pad_id, meta.eos_id):
            raise ModelError(f"{folder}: its {meta.vocabulary} does not have the bundle's pad/eos ids: it is damaged")
    model = build(meta.inverter, inverter_params, meta.corrector, corrector_params, emb, meta.max_length, vocab)
    check_params_fit(model)
    return model


def check_params_fit(model: Vec2Text) -> None:
    """Compares the loaded parameter shapes with what the configs build (a mismatched bundle fails here)."""
    import jax.numpy as jnp

    p = model.program
    e = jnp.zeros((1, p.inverter.embed_dim))
    ids = jnp.zeros((1, p.length), jnp.int32)
    if model.vocab.size > p.inverter.t5.vocab_size:  # (T5's 32,100-token tokenizer has 32,128 embeddings)
        raise ModelError(
            f"the decoders' vocabulary has {p.inverter.t5.vocab_size} tokens, the tokenizer {model.vocab.size}: the "
            "bundle is damaged or mixed up"
        )
    expected = {"inverter": jax.eval_shape(lambda: inverters.Inverter(p.inverter).init(jax.random.PRNGKey(0), e, ids))}
    if p.corrector is not None:
        expected["corrector"] = jax.eval_shape(
            lambda: correctors.Corrector(p.corrector).init(jax.random.PRNGKey(0), e, e, ids, ids != 0, ids)
        )
    import flax.linen as nn

    for name, shapes in expected.items():
        want = jax.tree_util.tree_map(lambda x: x.shape, nn.unbox(shapes["params"]))
        have = jax.tree_util.tree_map(lambda x: x.shape, model.params[name])
        if want != have:
            raise ModelError(f"the {name} parameters do not match its config; the bundle is damaged or mixed up")


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
