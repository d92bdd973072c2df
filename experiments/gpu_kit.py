"""The kit a lent GPU machine needs to run `experiments/gpu_release.sh` with nothing reachable, small enough to
travel with the working tree (the device tool carries at most 64 MiB, the tracked files included).

    python experiments/gpu_kit.py build [--sources all | --corpus FILE] [--out .gpu_kit] [--budget-mb 58] [--wheels]
    python experiments/gpu_kit.py unpack --kit .gpu_kit --cache DIR     # there: DIR becomes $V2T_CACHE_DIR
    python experiments/gpu_kit.py unpack --kit .gpu_kit --cache DIR --slice 1/4   # a quarter of the training docs

What it holds:
- `minilm.npz` + the small files of all-MiniLM-L6-v2: every matrix as int8 with one float32 scale per row,
  vectors float16 (22 MiB instead of 87; min cosine 0.9990 to the float32 embedder's vectors on 512 test
  passages), or with `--int8 embeddings` only the word embeddings int8 and the rest float16 (32 MiB, 0.99997):
  the 10 MiB saved carry ~300k more training passages. `unpack` writes a float32 `model.safetensors` into
  `DIR/embedders/all-minilm-l6-v2/`, where `--embedder all-MiniLM-L6-v2` finds it, so bundles trained there
  name the packaged embedder. `build` reports the round trip's cosine to the real weights on 512 passages.
- `passages.jsonl.xz`: passages of the built dataset (`v2t data prepare --sources ...`) as a corpus with
  `source` and `doc_id` (`sources.user_file_documents`), so `v2t data prepare --corpus` rebuilds the same
  passages in the same splits. Every validation and test passage goes in; training passages of whole
  documents (chosen by a hash of the document id) fill what the budget leaves.
- `wheels/`: the packages the GPU image lacks (`../shared/tools/gpu_wheels.sh`), with `--wheels`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MINILM_FILES = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "1_Pooling/config.json",
)


def pack_minilm(folder: Path, out: Path, int8: str = "embeddings") -> int:
    """int8 = "embeddings": the word embeddings as int8 (per row), the rest float16; "all": every 2-D tensor
    as int8 with a scale per row (per output unit of a linear layer), vectors float16."""
    from safetensors.numpy import load_file

    weights = load_file(str(folder / "model.safetensors"))
    arrays = {}
    for name, w in weights.items():
        if name == "embeddings.word_embeddings.weight" or (int8 == "all" and w.ndim == 2 and w.size >= 4096):
            scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12) / 127.0
            arrays[f"q8/{name}"] = np.round(w / scale).astype(np.int8)
            arrays[f"scale/{name}"] = scale.astype(np.float32)
        else:
            arrays[f"f16/{name}"] = w.astype(np.float16)
    np.savez(out / "minilm.npz", **arrays)
    (out / "minilm").mkdir(exist_ok=True)
    declare_stand_in(folder, out / "minilm")
    for rel in MINILM_FILES:
        if (folder / rel).exists():
            (out / "minilm" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / rel, out / "minilm" / rel)
    return (out / "minilm.npz").stat().st_size


def declare_stand_in(folder: Path, kit_minilm: Path) -> None:
    """The unpacked (dequantised) MiniLM stands in for the float32 one here: bundles trained with it bind to the
    float32 weights' digest, so they load where the real all-MiniLM-L6-v2 is (and are measured with it)."""
    from v2t_jax.models import embedders

    digest = embedders.load_embedder(folder).digest
    note = "the GPU kit's all-MiniLM-L6-v2 (int8 matrices, dequantised) standing in for the float32 weights"
    (kit_minilm / embedders.STAND_IN_FILE).write_text(json.dumps({"digest": digest, "note": note}) + "\n")


def unpack_minilm(kit: Path, target: Path) -> Path:
    from safetensors.numpy import save_file

    packed = np.load(kit / "minilm.npz")
    weights = {}
    for key in packed.files:
        kind, name = key.split("/", 1)
        if kind == "q8":
            weights[name] = packed[key].astype(np.float32) * packed[f"scale/{name}"]
        elif kind == "f16":
            weights[name] = packed[key].astype(np.float32)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(kit / "minilm", tmp)
    save_file(weights, str(tmp / "model.safetensors"))
    (tmp / ".complete").write_text("unpacked from the GPU kit (int8 word embeddings, float16 rest)\n")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return target


def doc_hash(doc_id: str) -> float:
    """A document's place in [0, 1): documents below a threshold form a fixed, seed-free sample."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64


def write_passages(b, out: Path, budget_bytes: int) -> dict:
    """All validation/test passages + the training documents with the smallest hashes that fit the budget."""
    from v2t_jax.data import dataset

    rows = {split: list(dataset.rows(b, split)) for split in ("validation", "test", "train")}

    def line(r) -> bytes:
        obj = {
            "source": dataset._str(r["source"]),
            "doc_id": dataset._str(r["doc_id"]),
            "text": dataset._str(r["text"]),
        }
        return (json.dumps(obj, ensure_ascii=False) + "\n").encode()

    held_out = b"".join(line(r) for s in ("validation", "test") for r in rows[s])
    # measure the compression of training lines on a sample, then keep documents below a hash threshold
    step = max(1, len(rows["train"]) // 20000)
    sample = b"".join(line(r) for r in rows["train"][::step])
    train_estimate = len(lzma.compress(sample, preset=6)) * step  # compressed bytes of all training lines
    held_size = len(lzma.compress(held_out, preset=6))
    frac = min(1.0, 0.97 * max(0.0, budget_bytes - held_size) / max(1, train_estimate))

    def write(frac: float) -> list:
        kept = [r for r in rows["train"] if doc_hash(dataset._str(r["doc_id"])) < frac]
        with lzma.open(out / "passages.jsonl.xz", "wb", preset=6) as f:
            f.write(held_out)
            for r in kept:
                f.write(line(r))
        return kept

    kept = write(frac)
    size = (out / "passages.jsonl.xz").stat().st_size
    if frac < 1 and size < 0.95 * budget_bytes and size > held_size:  # the sample's estimate was pessimistic
        frac = min(1.0, 0.98 * frac * (budget_bytes - held_size) / (size - held_size))
        kept = write(frac)
    return {
        "train_passages": len(kept),
        "train_of": len(rows["train"]),
        "validation": len(rows["validation"]),
        "test": len(rows["test"]),
        "document_fraction": round(frac, 4),
        "bytes": (out / "passages.jsonl.xz").stat().st_size,
    }


def fidelity(kit: Path, texts: list[str]) -> float:
    """Min cosine between embeddings from the unpacked kit weights and from the real ones."""
    import tempfile

    from v2t_jax.models import embedders

    real = embedders.load_embedder("all-MiniLM-L6-v2")
    with tempfile.TemporaryDirectory() as tmp:
        folder = unpack_minilm(kit, Path(tmp) / "minilm")
        packed = embedders.load_embedder(folder)
        a, b = real.embed_texts(texts), packed.embed_texts(texts)
    return float(np.min(np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def cmd_build(args) -> int:
    from v2t_jax import assets
    from v2t_jax.data import dataset, sources

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    spec = dataset.DatasetSpec(sources=sources.expand(args.sources), corpus=args.corpus)
    b, counts = dataset.prepare(spec, progress=True)
    minilm_bytes = pack_minilm(assets.resolve_embedder("all-MiniLM-L6-v2"), out, args.int8)
    wheel_bytes = 0
    if args.wheels:
        subprocess.run(["bash", str(ROOT.parent / "shared/tools/gpu_wheels.sh"), str(out / "wheels")], check=True)
        wheel_bytes = sum(p.stat().st_size for p in (out / "wheels").glob("*"))
    budget = int(args.budget_mb * 2**20) - minilm_bytes - wheel_bytes
    info = write_passages(b, out, budget)
    texts = dataset.texts(b, "test")[:512]
    manifest = {
        "dataset": spec.config_name,
        "passages": info,
        "minilm_npz_bytes": minilm_bytes,
        "minilm_min_cosine_vs_float32": round(fidelity(out, texts), 7),
        "wheels_bytes": wheel_bytes,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(json.dumps(manifest, indent=1))
    print(f"kit {out}: {total / 2**20:.1f} MiB")
    return 0


def parse_slice(text: str) -> tuple[int, int]:
    """ "K/N" -> (K, N) with 0 <= K < N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"--slice takes K/N (e.g. 1/4), got {text!r}") from None
    if not 0 <= k < n:
        raise SystemExit(f"--slice K/N needs 0 <= K < N, got {text!r}")
    return k, n


def in_slice(doc_id: str, k: int, n: int) -> bool:
    """Training document `doc_id` belongs to slice k of n (a hash of its id, apart from the kit's own choice)."""
    return int.from_bytes(hashlib.sha256(f"slice:{doc_id}".encode()).digest()[:8], "big") % n == k


def write_slice(src, dst, k: int, n: int, seed: int = 0) -> dict:
    """Copies corpus lines: every validation and test document (split as `v2t data prepare` splits them: by a
    hash of seed and document id, so no held-out passage moves to training) and the training documents of slice
    k of n. Returns line counts."""
    from v2t_jax.data import dataset, passages

    kept = dropped = 0
    for raw in src:
        doc_id = json.loads(raw)["doc_id"]
        if passages.split_of(doc_id, seed, dataset.SPLIT_FRACTIONS) != "train" or in_slice(doc_id, k, n):
            dst.write(raw)
            kept += 1
        else:
            dropped += 1
    return {"lines": kept, "dropped": dropped}


def cmd_unpack(args) -> int:
    kit, cache = Path(args.kit), Path(args.cache)
    target = unpack_minilm(kit, cache / "embedders" / "all-minilm-l6-v2")
    corpus = cache / "passages.jsonl"
    with lzma.open(kit / "passages.jsonl.xz", "rb") as src, open(corpus, "wb") as dst:
        if args.slice:
            k, n = parse_slice(args.slice)
            counts = write_slice(src, dst, k, n)
            print(
                f"slice {k}/{n} of the training documents: {counts['lines']:,} lines kept, "
                f"{counts['dropped']:,} left out"
            )
        else:
            shutil.copyfileobj(src, dst, 1 << 22)
    print(f"embedder in {target}; corpus {corpus}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    bp = sub.add_parser("build")
    bp.add_argument("--sources", nargs="+", default=["all"])
    bp.add_argument("--corpus", default=None, help="a user corpus instead of built-in sources (tests)")
    bp.add_argument("--out", default=str(ROOT / ".gpu_kit"))
    bp.add_argument("--budget-mb", type=float, default=58.0, help="MiB for the whole kit (the repo travels too)")
    bp.add_argument("--wheels", action="store_true", help="also download the wheels the GPU image lacks")
    bp.add_argument(
        "--int8",
        choices=["embeddings", "all"],
        default="all",
        help="MiniLM tensors as int8 (all: 22 MiB, min cos 0.999)",
    )
    bp.set_defaults(func=cmd_build)
    up = sub.add_parser("unpack")
    up.add_argument("--kit", required=True)
    up.add_argument("--cache", required=True)
    up.add_argument(
        "--slice",
        default=None,
        help="K/N: only the training documents of slice K of N (all held-out ones): each continued run trains on "
        "another slice",
    )
    up.set_defaults(func=cmd_unpack)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
