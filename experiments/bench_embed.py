"""Throughput of our JAX embedder vs sentence-transformers (PyTorch), same sentences, same run.

    python experiments/bench_embed.py [--repeats 5] [--batch-size 128] [--out experiments/results/bench_embed]

Both sides embed the same 1,000 real sentences (State of the Union, 30-60 words, so every one is
truncated at 32 tokens) with all-MiniLM-L6-v2. PyTorch runs with torch.set_num_threads(2); JAX uses
its default CPU client. Steady-state numbers are medians over repeats after a warm-up pass (JAX
compile excluded and reported apart); the end-to-end `v2t embed` command (interpreter start,
weight loading, compile, writing the .npy) is timed once as a subprocess.

Needs the test extra (torch, sentence-transformers): pip install -e '.[test]'.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_TEXTS = HERE / "data" / "bench_sentences.txt"


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _random_weight_copy(src: Path, dst: Path) -> Path:
    """Copies a sentence-transformers BERT folder's config and tokenizer, with seeded random weights."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    for item in src.iterdir():
        if item.name in ("model.safetensors", "pytorch_model.bin") or item.name.startswith("."):
            continue
        (shutil.copytree if item.is_dir() else shutil.copy)(item, dst / item.name)
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(str(src))).save_pretrained(str(dst))
    return dst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", default=str(DEFAULT_TEXTS))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--torch-device", default="cpu", help="cpu or cuda (run JAX on the same kind of device)")
    p.add_argument("--embedder", default="all-MiniLM-L6-v2", help="packaged name or local sentence-transformers folder")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="same architecture and tokenizer, random weights (for machines without the real weights; "
        "throughput does not depend on weight values)",
    )
    p.add_argument("--out", default=str(HERE / "results" / "bench_embed"), help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)

    texts = [t for t in Path(args.texts).read_text(encoding="utf-8").splitlines() if t.strip()][: args.n]
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from v2t_jax import assets
    from v2t_jax.models import embedders

    folder = assets.resolve_embedder(args.embedder)
    if args.random_weights:
        folder = _random_weight_copy(folder, Path(tempfile.mkdtemp(prefix="v2t-random-embedder-")))
    n = len(texts)
    rows = {}

    # --- PyTorch / sentence-transformers
    torch.set_num_threads(args.torch_threads)
    st = SentenceTransformer(str(folder), device=args.torch_device)
    torch_desc = f"PyTorch {torch.__version__}, " + (
        f"{args.torch_threads} threads" if args.torch_device == "cpu" else torch.cuda.get_device_name()
    )
    st.max_seq_length = args.max_length
    for bs in sorted({32, args.batch_size}):
        st.encode(texts[:bs], batch_size=bs)  # warm-up
        med, all_t = _median_time(lambda: st.encode(texts, batch_size=bs, convert_to_numpy=True), args.repeats)
        rows[f"sentence-transformers ({torch_desc}), batch {bs}"] = (med, all_t)
    ref = st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)

    # --- ours
    emb = embedders.load_embedder(folder)
    t0 = time.perf_counter()
    ours = emb.embed_texts(texts, max_length=args.max_length, batch_size=args.batch_size)
    first = time.perf_counter() - t0
    med, all_t = _median_time(
        lambda: emb.embed_texts(texts, max_length=args.max_length, batch_size=args.batch_size), args.repeats
    )
    import jax

    ours_key = f"v2t_jax (JAX {jax.__version__}, {jax.devices()[0].device_kind}), batch {args.batch_size}"
    rows[ours_key] = (med, all_t)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)

    # --- end-to-end CLI, once
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "texts.txt"
        src.write_text("\n".join(texts) + "\n", encoding="utf-8")
        cmd = [
            sys.executable,
            "-m",
            "v2t_jax.cli",
            "embed",
            "--embedder",
            str(folder),
            "--input",
            str(src),
            "--output",
            str(Path(tmp) / "v.npy"),
            "--max-length",
            str(args.max_length),
            "--batch-size",
            str(args.batch_size),
            "--quiet",
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        cli_wall = time.perf_counter() - t0

    torch_best = min(v[0] for k, v in rows.items() if k.startswith("sentence-transformers"))
    torch_same_bs = rows[f"sentence-transformers ({torch_desc}), batch {args.batch_size}"][0]
    result = {
        "command": "python experiments/bench_embed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "n_texts": n,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "median_seconds": {k: v[0] for k, v in rows.items()},
        "all_seconds": {k: v[1] for k, v in rows.items()},
        "texts_per_second": {k: n / v[0] for k, v in rows.items()},
        "jax_first_pass_seconds_incl_compile": first,
        "v2t_embed_cli_wall_seconds": cli_wall,
        "ratio_vs_torch_same_batch": torch_same_bs / rows[ours_key][0],
        "ratio_vs_torch_best_batch": torch_best / rows[ours_key][0],
        "min_cosine_to_reference": float(cos.min()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Embedding throughput: all-MiniLM-L6-v2, {n} sentences at {args.max_length} tokens",
        "",
        f"Command: `{result['command'].strip()}` ({result['machine']}; medians of {args.repeats} repeats).",
        "",
        "| implementation | median s | texts/s |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v[0]:.3f} | {n / v[0]:.0f} |" for k, v in rows.items()]
    lines += [
        "",
        f"- ratio v2t_jax / sentence-transformers at the same batch: **{result['ratio_vs_torch_same_batch']:.2f}x**; "
        f"vs its best batch: **{result['ratio_vs_torch_best_batch']:.2f}x**",
        f"- JAX first pass incl. compile: {first:.2f} s; "
        f"`v2t embed` end to end (start, load, compile, write): {cli_wall:.2f} s",
        f"- min cosine between the two sides' vectors: {result['min_cosine_to_reference']:.7f}",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
