"""`v2t data prepare` throughput, before and after: the same command run by an earlier commit of the project (a
git worktree) and by this checkout, on the same sources, fetched beforehand (so only reading, splitting,
tokenising, writing TFDS and counting are timed), into fresh data folders, one after the other.

    python experiments/bench_prepare.py [--before ea7ba26] [--sources wiki bbc sotu moby wordnet pydocs]
        [--targets] [--out experiments/results/prepare_throughput]

Reports wall seconds and passages/s (passages written / wall time of the whole command, start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(code_root: Path, sources: list[str], data_dir: Path, targets: bool, workers: int | None) -> dict:
    cmd = [sys.executable, "-m", "v2t_jax.cli", "data", "prepare", "--sources", *sources, "--data-dir", str(data_dir)]
    if not targets:
        cmd.append("--no-targets")
    if workers:
        cmd += ["--workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=str(code_root))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + ["--quiet"], cwd=code_root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    counts = json.loads(next(Path(data_dir).rglob("counts.json")).read_text())
    n = sum(counts[s]["passages"] for s in ("train", "validation", "test") if s in counts)
    return {"seconds": round(wall, 1), "passages": n, "passages_per_s": round(n / wall), "command": " ".join(cmd)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default="ea7ba26", help="commit to compare with (default: the last before 1.1.0)")
    p.add_argument("--sources", nargs="+", default=["wiki", "bbc", "sotu", "moby", "wordnet", "pydocs"])
    p.add_argument("--targets", action="store_true", help="include the target embeddings")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "experiments/results/prepare_throughput"))
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before_tree = tmp / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before_tree), args.before],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            before = run(before_tree, args.sources, tmp / "data_before", args.targets, None)
            after = run(ROOT, args.sources, tmp / "data_after", args.targets, args.workers)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    cores = len(os.sched_getaffinity(0))
    result = {
        "before_commit": args.before,
        "after_commit": head.strip(),
        "cores": cores,
        "sources": args.sources,
        "targets": args.targets,
        "before": before,
        "after": after,
        "speedup": round(after["passages_per_s"] / before["passages_per_s"], 2),
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    cmd = "python experiments/bench_prepare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# `v2t data prepare` throughput, {cores} cores ({'with' if args.targets else 'without'} targets)",
        "",
        f"`{cmd}` — sources {' '.join(args.sources)}, fetched beforehand; each command's whole wall time.",
        "",
        "| code | passages written | seconds | passages/s |",
        "|---|---|---|---|",
        f"| before ({args.before}: one process, counts read back) | {before['passages']:,} "
        f"| {before['seconds']} | {before['passages_per_s']:,} |",
        f"| after ({head.strip()}: every core, de-duplicated, counts while writing) | {after['passages']:,} "
        f"| {after['seconds']} | {after['passages_per_s']:,} |",
        "",
        f"Speed-up: **{result['speedup']}×** passages/s (the after build writes fewer passages: duplicates dropped).",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
