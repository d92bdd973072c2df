"""Ablations that steer the release recipe: short inverter runs of the same wall-clock budget
(`config.train_minutes`), each scored the same way: its final validation loss, then its exported inverter's
step-0 BLEU / token F1 / cosine on the same held-out test passages (`results_table.py --rows 0:1`).

    python experiments/ablations.py [--minutes 4] [--runs base,data92k,...] [--sources all] [--n 300]
        [--out experiments/results/ablations] [--workdir ~/.cache/v2t_jax/runs/ablations]

Runs (all at warmup 50 steps, the same seed, on `--sources` unless said otherwise):
  base        configs/inverter.py:cpu_small (T5 v1.1 d 256, 4+4 layers, 26.8M), batch 64, lr 1e-3
  data92k     base on the four default sources (92k passages) instead of the full corpus
  deep        base narrower and deeper: d 192, 3 heads, 6+6 layers
  gpu_shape   configs/inverter.py:gpu's shape (T5 family, tied, d 384, 4+4, ff 1024) in float32, batch 64
  gpu_embinit gpu_shape with token embeddings from MiniLM's word embeddings (its release setting)
  lr3e-3      base at learning rate 3e-3
  lr3e-4      base at learning rate 3e-4
  batch128    base at batch 128
Runs already in the workdir are not trained again (delete a run's folder to redo it). Scored on the test split
of `--sources` (documents of the default sources' test split are in it: the split hashes document ids).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
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
    "lr3e-3": ("cpu_small", ["--config.learning_rate=3e-3"]),
    "lr3e-4": ("cpu_small", ["--config.learning_rate=3e-4"]),
    "batch128": ("cpu_small", ["--config.batch_size=128"]),
}


def v2t(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "v2t_jax.cli", *args], cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT))
    )


def _params(path: Path) -> int:
    import numpy as np
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())


def one(name: str, args, root: Path, data_args: list[str]) -> dict:
    variant, overrides = RUNS[name]
    run, bundle, table = root / name, root / f"{name}_bundle", root / f"{name}_table"
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
        v2t("train", "--config", f"configs/inverter.py:{variant}", "--workdir", str(run), *common, *overrides)
    if not (bundle / "v2t_model.json").exists():
        v2t("export", "--workdir", str(run), "--output", str(bundle))
    if not table.with_suffix(".json").exists():
        data = ["--corpus", args.corpus] if args.corpus else ["--sources", *args.sources]
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
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    config = json.loads((run / "config.json").read_text())
    steps = train_rows[-1]["step"]
    score = json.loads(table.with_suffix(".json").read_text())["rows"][0]
    return {
        "run": name,
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--sources", nargs="+", default=["all"])
    p.add_argument("--corpus", default=None, help="a user corpus instead of --sources (tests)")
    p.add_argument("--n", type=int, default=300, help="test passages scored per run")
    p.add_argument("--workdir", default=str(Path.home() / ".cache/v2t_jax/runs/ablations"))
    p.add_argument("--out", default=str(ROOT / "experiments/results/ablations"))
    args = p.parse_args(argv)
    names = [n for n in args.runs.split(",") if n]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        p.error(f"unknown run {unknown[0]!r}; choose from {', '.join(RUNS)}")
    data_args = (
        [f"--config.data.corpus={args.corpus}"] if args.corpus else [f"--config.data.sources={tuple(args.sources)!r}"]
    )
    root = Path(args.workdir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        results.append(one(name, args, root, data_args))
        print(json.dumps(results[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python experiments/ablations.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.with_suffix(".json").write_text(
        json.dumps({"command": cmd, "minutes": args.minutes, "runs": results}, indent=1)
    )
    lines = [
        f"# Ablations: inverter runs of {args.minutes:g} minutes each on this machine "
        f"({len(os.sched_getaffinity(0))} cores)",
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
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
