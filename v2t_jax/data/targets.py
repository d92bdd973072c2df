"""Target embeddings and token ids, computed once per (dataset, embedder, max length) with the JAX embedder.

Stored beside the dataset, `<dataset dir>/targets/<embedder key>-<max_length>/` (`assets.embedder_key`):
  `<split>.embeddings.npy` float32 [N, D]   the vectors to invert
  `<split>.ids.npy`        int32   [N, L]   embedder token ids incl. [CLS]/[SEP], 0-padded (training labels)
Work is written in chunks (`<split>.parts/NNNNN.npz`); an interrupted run resumes at the first missing
chunk, and the parts are joined and removed once all exist.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

CHUNK = 4096


def targets_dir(dataset_dir: str | os.PathLike, embedder_name: str, max_length: int) -> Path:
    from v2t_jax import assets

    return Path(dataset_dir) / "targets" / f"{assets.embedder_key(embedder_name)}-{max_length}"


def default_batch_size() -> int:
    """128 on CPU (no gain beyond); 2048 on an accelerator, where small batches leave it idle."""
    import jax

    return 128 if jax.default_backend() == "cpu" else 2048


def exists(out_dir: Path, split: str) -> bool:
    return (out_dir / f"{split}.embeddings.npy").exists() and (out_dir / f"{split}.ids.npy").exists()


def chunked(
    n: int, out_dir: Path, split: str, names: tuple[str, ...], compute, desc: str, progress: bool = True
) -> dict[str, Path]:
    """Runs `compute(start, stop) -> {name: array}` over [0, n) in CHUNK-row pieces saved as
    `<split>.parts/NNNNN.npz`; an interrupted run resumes at the first missing piece. When all exist they
    are joined into `<split>.<name>.npy` (written atomically) and the pieces removed. With several processes
    (`--distributed`) each computes the pieces dealt to it in turn (piece c: process c mod count) and the first
    joins them once all are there; every process gets the paths."""
    import jax

    from v2t_jax import parallel

    paths = {name: out_dir / f"{split}.{name}.npy" for name in names}
    if all(p.exists() for p in paths.values()):
        return paths
    parts = out_dir / f"{split}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    n_chunks = -(-n // CHUNK)
    index, count = jax.process_index(), jax.process_count()
    todo = [c for c in range(n_chunks) if c % count == index and not (parts / f"{c:05d}.npz").exists()]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        mine = sum(min(CHUNK, n - c * CHUNK) for c in range(index, n_chunks, count))  # (this process's share)
        done = mine - sum(min(CHUNK, n - c * CHUNK) for c in todo)
        bar = tqdm(total=mine, initial=done, unit="passage", desc=f"{desc} {split}", dynamic_ncols=True)
    for c in todo:
        start, stop = c * CHUNK, min((c + 1) * CHUNK, n)
        arrays = compute(start, stop)
        tmp = parts / f".{c:05d}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, parts / f"{c:05d}.npz")
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()
    parallel.barrier(f"v2t {desc} {split}: every piece written")
    if index == 0:
        loaded = [np.load(parts / f"{c:05d}.npz") for c in range(n_chunks)]
        for name, path in paths.items():
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, np.concatenate([x[name] for x in loaded]) if loaded else np.zeros((0,)))
            os.replace(tmp, path)
        shutil.rmtree(parts)
    parallel.barrier(f"v2t {desc} {split}: pieces joined")
    return paths


def precompute(
    texts: list[str], embedder, out_dir: Path, split: str, max_length: int, batch_size: int = 128, progress: bool = True
) -> tuple[Path, Path]:
    def compute(start, stop):
        chunk = texts[start:stop]
        ids, _ = embedder.pad(embedder.tokenize(chunk, max_length), max_length)
        return {"embeddings": embedder.embed_texts(chunk, max_length=max_length, batch_size=batch_size), "ids": ids}

    paths = chunked(len(texts), out_dir, split, ("embeddings", "ids"), compute, "embed", progress)
    return paths["embeddings"], paths["ids"]


def load(out_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, D] float32, ids [N, L] int32), memory-mapped."""
    emb_path, ids_path = out_dir / f"{split}.embeddings.npy", out_dir / f"{split}.ids.npy"
    if not (emb_path.exists() and ids_path.exists()):
        raise FileNotFoundError(f"no targets for split {split!r} in {out_dir}; run `v2t data prepare` first")
    return np.load(emb_path, mmap_mode="r"), np.load(ids_path, mmap_mode="r")
