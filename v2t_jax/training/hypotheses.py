"""Corrector training data: the frozen inverter's greedy hypotheses for every passage, re-embedded.

    v2t data hypotheses --inverter BUNDLE [--data-dir DIR] [--sources ...] [--corpus FILE]

For each split, beside the targets (`<targets dir>/hypotheses-<inverter digest>/`):
  `<split>.hyp_ids.npy`        int32   [N, L-1]  decoder ids `t1 .. tn [SEP] 0 ..` (embedder vocabulary)
  `<split>.hyp_embeddings.npy` float32 [N, D]    the hypotheses re-embedded (in the same compiled program)
  `<split>.exact.npy`          bool    [N]       hypothesis == target: the reference drops these from
                                                 corrector training (corrector configs choose)
An inverter with a vocabulary of its own (a pretrained T5's SentencePiece, say) writes ids of that vocabulary
(`t1 .. tn </s> 0 ..`, its decoder length), re-embeds each hypothesis through its text, and counts a hypothesis
exact when the embedder reads its text as the target's tokens.
Chunked and resumable like the targets; the digest ties the cache to the inverter's weights.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np

from v2t_jax.data import targets


def inverter_digest(bundle: Path) -> str:
    """12 hex digits of the sha256 of a bundle's inverter weights (hashed once per unchanged file)."""
    path = Path(bundle) / "inverter.safetensors"
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    from v2t_jax.assets import sha256_file

    return sha256_file(Path(path))[:12]


def hypotheses_dir(targets_dir: Path, bundle: Path) -> Path:
    return Path(targets_dir) / f"hypotheses-{inverter_digest(bundle)}"


def make_step(model):
    """(params, embeddings [b, D]) -> (hypothesis ids [b, L-1], their embeddings [b, D]), compiled, each device of
    `model.mesh` on its share of the rows (padded to a share each; the outputs then have the padded rows too)."""
    from v2t_jax.search import core
    from v2t_jax import parallel

    program = model.program
    mesh = model.mesh

    def per_device(params, rows):
        ids, emb, _ = core.initial_hypotheses(program, params, rows[0])
        return ids, emb

    run = jax.jit(parallel.rows_map(per_device, mesh))

    def step(params, e):
        placed = model.device_params() if params is model.params else params
        return run(placed, (parallel.pad_rows(np.asarray(e), parallel.round_up(len(e), mesh)),))

    return step


def make_host_step(model):
    """`make_step` for a model decoding in its own vocabulary: greedy ids compiled, then their texts embedded by
    the embedder (on the host, as `drivers.invert_host` re-embeds)."""
    from v2t_jax.search import core

    greedy = jax.jit(core.greedy_hypotheses, static_argnums=0)

    def step(params, e):
        ids = np.asarray(greedy(model.program, params, e))
        texts = [model.vocab.decode(r) for r in ids]
        return ids, model.embedder.embed_texts(texts, max_length=model.max_length, batch_size=len(texts))

    return step


def precompute(
    model,
    embeddings: np.ndarray,
    ids: np.ndarray,
    out_dir: Path,
    split: str,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Path]:
    """Greedy hypotheses of `model`'s inverter for rows of (embeddings, target ids)."""
    in_graph = model.program.in_graph
    step = make_step(model) if in_graph else make_host_step(model)
    length = model.program.length

    def compute(start: int, stop: int) -> dict[str, np.ndarray]:
        hyp_ids, hyp_emb = [], []
        for s in range(start, stop, batch_size):
            e = np.asarray(embeddings[s : min(s + batch_size, stop)], np.float32)
            m = len(e)
            if m < batch_size:  # one compiled shape
                e = np.concatenate([e, np.repeat(e[-1:], batch_size - m, axis=0)])
            a, b = jax.device_get(step(model.params, e))
            hyp_ids.append(a[:m])
            hyp_emb.append(b[:m])
        h = np.concatenate(hyp_ids).astype(np.int32)
        if in_graph:
            exact = (h == np.asarray(ids[start:stop])[:, 1 : 1 + length]).all(axis=1)
        else:  # as the embedder reads the hypothesis's text: the target's tokens (pad 0 after them)
            max_length = ids.shape[1]
            read = model.embedder.tokenize([model.vocab.decode(r) for r in h], max_length)
            exact = np.array([list(np.asarray(t)[: len(r)]) == r and not np.asarray(t)[len(r) :].any()
                              for r, t in zip(read, np.asarray(ids[start:stop]))])  # fmt: skip
        return {"hyp_ids": h, "hyp_embeddings": np.concatenate(hyp_emb), "exact": exact}

    return targets.chunked(
        len(embeddings), Path(out_dir), split, ("hyp_ids", "hyp_embeddings", "exact"), compute, "hypotheses", progress
    )


def ensure(
    model,
    targets_dir: Path,
    bundle: Path,
    splits=("train", "validation", "test"),
    batch_size: int = 64,
    progress: bool = True,
) -> Path:
    """Computes whatever is missing of `bundle`'s hypotheses for `splits`; returns their folder."""
    out = hypotheses_dir(targets_dir, bundle)
    for split in splits:
        emb, ids = targets.load(targets_dir, split)
        precompute(model, emb, ids, out, split, batch_size, progress=progress)
    return out


def load(hyp_dir: Path, split: str) -> dict[str, np.ndarray]:
    """{"hyp_ids", "hyp_embeddings", "exact"} of one split, memory-mapped."""
    paths = {name: Path(hyp_dir) / f"{split}.{name}.npy" for name in ("hyp_ids", "hyp_embeddings", "exact")}
    missing = [p.name for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{hyp_dir} lacks {', '.join(missing)}")
    return {name: np.load(p, mmap_mode="r") for name, p in paths.items()}
