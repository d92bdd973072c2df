"""Ablations that steer the release recipe: short inverter runs of the same wall-clock budget
(`config.train_minutes`), each scored the same way: its final validation loss, then its exported inverter's
step-0 BLEU / token F1 / cosine on the same held-out test passages (`results_table.py --rows 0:1`).

    python experiments/ablations.py [--minutes 4] [--runs base,data92k,...] [--seeds 0,1] [--jobs 2]
        [--sources all] [--train-docs 0.08] [--n 300] [--out experiments/results/ablations]
        [--workdir ~/.cache/v2t_jax/runs/ablations]

Runs (all at warmup 50 steps, the same seed, on `--sources` unless said otherwise):
  base        configs/inverter.py:cpu_small (T5 v1.1 d 256, 4+4 layers, 26.8M), batch 64, lr 1e-3
  data92k     base on the four default sources (92k passages) instead of the full corpus
  deep        base narrower and deeper: d 192, 3 heads, 6+6 layers
  gpu_shape   configs/inverter.py:gpu's shape (T5 family, tied, d 384, 4+4, ff 1024) in float32, batch 64
  gpu_embinit gpu_shape with token embeddings from MiniLM's word embeddings (its release setting)
  gpu_warm    configs/inverter.py:gpu_warm in float32, batch 64: the "bert" layout whose encoder and decoder
              start from MiniLM's first 3 layers (BERT2BERT), 27.2M params against gpu_embinit's 27.6M
  gpu_warm_lr3e-4  gpu_warm at learning rate 3e-4 (pretrained layers may want a gentler rate)
  lr3e-3      base at learning rate 3e-3
  lr3e-4      base at learning rate 3e-4
  batch128    base at batch 128
Runs already in the workdir are not trained again (delete a run's folder to redo it). Scored on the test split
of `--sources` (documents of the default sources' test split are in it: the split hashes document ids).
--seeds: each run once per seed (`config.seed`: initialisation and batch order; seed 0 keeps the run's name,
seed s is NAME@sS). --jobs N: N runs at a time, each pinned to its own core (with N = the cores, every run gets
one core for its whole budget: equal compute, however the runs are ordered).
--train-docs F: train on a fixed sample of `--sources` instead of all of it: the training documents whose id hash
(gpu_kit.doc_hash) is below F and the held-out ones below 0.1, written as a corpus (`WORKDIR/sample_F.jsonl`,
gpu_kit's format: same passages, same splits) and prepared with its targets. A run of minutes sees a few
thousand passages, so this costs it nothing, and spares embedding a million training passages first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUNS = {
    "base": ("cpu_small", []),
    "data92k": ("cpu_small", ["--config.data.sources=('wiki','bbc','sotu','moby')"]),
    "deep": ("cpu_small", ["--config.t5.d_model=192", "--config.t5.num_heads=3", "--config.t5.num_layers=6"]),
    "gpu_shape": (
        "gpu",
        ["--config.t5.dtype=float32", "--config.init_token_embeddings=random", "--config.batch_size=64"],
    ),
    "gpu_embinit": ("gpu", ["--config.t5.dtype=float32", "--config.batch_size=64"]),
    "gpu_warm": ("gpu_warm", ["--config.t5.dtype=float32", "--config.batch_size=64"]),
    "gpu_warm_lr3e-4": (
        "gpu_warm",
        ["--config.t5.dtype=float32", "--config.batch_size=64", "--config.learning_rate=3e-4"],
    ),
    "lr3e-3": ("cpu_small", ["--config.learning_rate=3e-3"]),
    "lr3e-4": ("cpu_small", ["--config.learning_rate=3e-4"]),
    "batch128": ("cpu_small", ["--config.batch_size=128"]),
}


def _pinned(cores):
    """preexec_fn keeping a child process (and its threads) on `cores`; None: wherever the OS puts it."""
    return None if cores is None else (lambda: os.sched_setaffinity(0, cores))


def v2t(*args: str, cores=None) -> None:
    subprocess.run(
        [sys.executable, "-m", "v2t_jax.cli", *args],
        cwd=ROOT,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        preexec_fn=_pinned(cores),
    )


def split_seed(run: str) -> tuple[str, int]:
    """ "gpu_warm@s1" -> ("gpu_warm", 1); a bare name is seed 0."""
    name, _, seed = run.partition("@s")
    return name, int(seed) if seed else 0


def _params(path: Path) -> int:
    import numpy as np
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())


def one(label: str, args, root: Path, data_args: list[str], cores=None) -> dict:
    name, seed = split_seed(label)
    variant, overrides = RUNS[name]
    overrides = overrides + ([f"--config.seed={seed}"] if seed else [])
    run, bundle, table = root / label, root / f"{label}_bundle", root / f"{label}_table"
    sources = [a for a in overrides if a.startswith("--config.data.sources")]
    common = [
        f"--config.train_minutes={args.minutes}",
        "--config.num_steps=100000000",
        "--config.warmup_steps=50",
        "--config.eval_every=100000000",  # one eval, at the deadline
        "--config.eval_samples=32",
        "--config.eval_batches=8",
        "--config.checkpoint_every=100000000",
        "--config.log_every=10",
        "--config.progress=false",
    ] + ([] if sources else data_args)
    t0 = time.perf_counter()
    if not (run / "checkpoints").exists() or not any(p.name.isdigit() for p in (run / "checkpoints").iterdir()):
        v2t(
            "train",
            "--config",
            f"configs/inverter.py:{variant}",
            "--workdir",
            str(run),
            *common,
            *overrides,
            cores=cores,
        )
    if not (bundle / "v2t_model.json").exists():
        v2t("export", "--workdir", str(run), "--output", str(bundle), cores=cores)
    if not table.with_suffix(".json").exists():
        data = ["--corpus", args.corpus] if args.corpus else ["--sources", *args.sources]
        data += ["--data-dir", args.data_dir] if args.data_dir else []
        cmd = [
            sys.executable,
            "experiments/results_table.py",
            "--checkpoint",
            str(bundle),
            "--rows",
            "0:1",
            "--n",
            str(args.n),
            "--split",
            "test",
            *data,
            "--out",
            str(table),
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, preexec_fn=_pinned(cores))
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    config = json.loads((run / "config.json").read_text())
    steps = train_rows[-1]["step"]
    score = json.loads(table.with_suffix(".json").read_text())["rows"][0]
    return {
        "run": label,
        "seed": seed,
        "variant": variant,
        "overrides": overrides,
        "params_m": round(_params(bundle / "inverter.safetensors") / 1e6, 1),
        "steps": steps,
        "passages_per_s": round(steps * config["batch_size"] / (60 * train_rows[-1]["elapsed_minutes"]), 1),
        "val_loss": round(evals[-1]["loss"], 3) if "loss" in evals[-1] else None,  # whole batches only
        "bleu": round(score["bleu"], 2),
        "token_f1": round(100 * score["token_f1"], 1),
        "cosine": round(score["cosine"], 3),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def sample_corpus(sources: list[str], fraction: float, path: Path, data_dir=None, held_out: float = 0.1) -> Path:
    """`path`: the passages of `--sources`' built dataset (`v2t data prepare`) whose documents' hash is below
    `fraction` (training) or `held_out` (validation, test), as a corpus that rebuilds them in the same splits."""
    if path.exists():
        return path
    from gpu_kit import doc_hash

    from v2t_jax.data import dataset, sources as sources_lib

    from v2t_jax import outputs

    b = dataset.prepared(dataset.DatasetSpec(sources=sources_lib.expand(sources)), data_dir).builder  # or NotPrepared

    def write(f) -> None:
        for split in ("validation", "test", "train"):
            limit = fraction if split == "train" else held_out
            for r in dataset.rows(b, split):
                doc = dataset._str(r["doc_id"])
                if doc_hash(doc) < limit:
                    obj = {"source": dataset._str(r["source"]), "doc_id": doc, "text": dataset._str(r["text"])}
                    f.write(json.dumps(obj, ensure_ascii=False) + "\n")

    outputs.write_atomic(path, write, binary=False)
    return path


def seed_means(results: list[dict]) -> list[str]:
    """Markdown rows of each run's mean (and spread) over its seeds; nothing when every run has one seed."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(split_seed(r["run"])[0], []).append(r)
    if all(len(g) == 1 for g in groups.values()):
        return []
    lines = [
        "",
        "Mean over seeds (min–max):",
        "",
        "| run | seeds | val loss | BLEU | token F1 | cosine |",
        "|---|---|---|---|---|---|",
    ]
    for name, g in groups.items():
        cells = []
        for key, digits in (("val_loss", 3), ("bleu", 2), ("token_f1", 1), ("cosine", 3)):
            vals = [r[key] for r in g if r[key] is not None]
            cells.append(
                f"{sum(vals) / len(vals):.{digits}f} ({min(vals):.{digits}f}–{max(vals):.{digits}f})" if vals else "–"
            )
        lines.append(f"| {name} | {len(g)} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--seeds", default="0", help="comma-separated config.seed values; each run once per seed")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each pinned to one core (default 1: unpinned)")
    p.add_argument("--sources", nargs="+", default=["all"])
    p.add_argument("--corpus", default=None, help="a user corpus instead of --sources (tests)")
    p.add_argument("--data-dir", default=None, help="where the prepared dataset lives (default: v2t's cache)")
    p.add_argument("--train-docs", type=float, default=None, help="train on this fraction of --sources' documents")
    p.add_argument("--n", type=int, default=300, help="test passages scored per run")
    p.add_argument("--workdir", default=str(Path.home() / ".cache/v2t_jax/runs/ablations"))
    p.add_argument("--out", default=str(ROOT / "experiments/results/ablations"))
    args = p.parse_args(argv)
    names = [n for n in args.runs.split(",") if n]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        p.error(f"unknown run {unknown[0]!r}; choose from {', '.join(RUNS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    cores = sorted(os.sched_getaffinity(0))
    if not 1 <= args.jobs <= len(cores):
        p.error(f"--jobs must be 1..{len(cores)} (the cores this process may use), got {args.jobs}")
    labels = [n if s == 0 else f"{n}@s{s}" for s in seeds for n in names]  # seed-major: a pair finishes together
    root = Path(args.workdir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if args.train_docs is not None:
        if not 0 < args.train_docs <= 1 or args.corpus:
            p.error("--train-docs takes a fraction in (0, 1] of --sources' documents (not with --corpus)")
        sample = root / f"sample_{args.train_docs:g}.jsonl"
        from v2t_jax.errors import V2TError

        try:
            args.corpus = str(sample_corpus(args.sources, args.train_docs, sample, args.data_dir))
        except V2TError as e:  # (a source that does not exist, a dataset not prepared: what to run)
            print(f"ablations: error: {e}", file=sys.stderr)
            return 2
        v2t("data", "prepare", "--corpus", args.corpus, *(["--data-dir", args.data_dir] if args.data_dir else []))
    data_args = (
        [f"--config.data.corpus={args.corpus}"] if args.corpus else [f"--config.data.sources={tuple(args.sources)!r}"]
    ) + ([f"--config.data.data_dir={args.data_dir}"] if args.data_dir else [])
    if args.jobs == 1:
        results = []
        for label in labels:
            results.append(one(label, args, root, data_args))
            print(json.dumps(results[-1]), flush=True)
    else:  # slot i of each wave of `jobs` runs on core i
        results = []
        for start in range(0, len(labels), args.jobs):
            wave = labels[start : start + args.jobs]
            with ThreadPoolExecutor(len(wave)) as pool:
                futures = [pool.submit(one, lb, args, root, data_args, {cores[i]}) for i, lb in enumerate(wave)]
                for f in futures:
                    results.append(f.result())
                    print(json.dumps(results[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python experiments/ablations.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.with_suffix(".json").write_text(
        json.dumps({"command": cmd, "minutes": args.minutes, "jobs": args.jobs, "runs": results}, indent=1)
    )
    each = f"one core each, {args.jobs} at a time" if args.jobs > 1 else f"{len(cores)} cores"
    lines = [
        f"# Ablations: inverter runs of {args.minutes:g} minutes each on this machine ({each})",
        "",
        f"`{cmd}`",
        "",
        f"Scored on {args.n} test passages (step 0, greedy); val loss at the deadline.",
        "",
        "| run | what changes | params | steps | passages/s | val loss | BLEU | token F1 | cosine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        what = f"{r['variant']} " + " ".join(o.replace("--config.", "") for o in r["overrides"])
        lines.append(
            f"| {r['run']} | {what.strip()} | {r['params_m']}M | {r['steps']} | {r['passages_per_s']} "
            f"| {r['val_loss']} | {r['bleu']} | {r['token_f1']} | {r['cosine']} |"
        )
    lines += seed_means(results)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
