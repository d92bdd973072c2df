"""The factor a user sees: `v2t invert` as it runs by default against vec2text's `invert_embeddings` on the
same weights (the shipped model, written as vec2text checkpoints by `v2t_jax.weights.vec2text_export`), interleaved in
one run.

    bash experiments/vec2text_venv.sh                     # once: the reference's own venv
    python experiments/user_factor.py [--n 256] [--steps 20] [--sbeam 4] [--parts 2] [--sources all]
        [--out experiments/results/user_factor]

Vectors: a fixed random sample (seed 0) of the held-out test passages of a prepared dataset (`--sources`), as the
results table draws them. They are cut into `--parts` parts; for each part, in turn: vec2text (0.0.13, PyTorch,
its own venv: experiments/vec2text_reference.py --load) inverts it by `invert_embeddings` calls of `--ref-batch`
vectors, then `v2t invert` runs on it as a user runs it (a new process each time: start-up, model load and
compilation included; default search and batch), then `v2t invert --patience 0` (the same search without the
default's early stop, so nearer vec2text's work). Machine load falls on all three alike. The reference's time
excludes its model load (one process answers every part). Each side's peak resident memory is its process's
(VmHWM; the reference's reset per part). Every text is scored the same way (`evaluate.Evaluator`: BLEU, token F1,
exact match against the passages as the embedder reads them; cosine of the text re-embedded by the bundle's
embedder to its target).

The reference runs the shipped corrector as it was trained: without the start token leading its hypotheses (see
experiments/vec2text_reference.py `load`). vec2text's greedy loop feeds each step its last hypothesis; ours keeps
the best, so texts may differ after correction steps even on equal weights (`agree` counts equal texts).

Parts finished are kept in OUT.parts.json and a rerun with the same settings continues after them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path.home() / ".cache" / "v2t_jax" / "vec2text-venv"
# `v2t invert` in a process that reports its own peak resident memory (VmHWM, KiB) on its last stderr line
PEAK = (
    "import sys\nfrom v2t_jax import cli\nrc = cli.main(sys.argv[1:])\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
    "print('VmHWM_KiB', hwm, file=sys.stderr)\nsys.exit(rc)\n"
)


def _test_sample(args, model):
    from v2t_jax import evaluate
    from v2t_jax.data import dataset, sources, targets

    spec = dataset.DatasetSpec(
        sources=sources.expand(args.sources), embedder=model.embedder.name, max_tokens=model.max_length
    )
    emb, ids = targets.load(dataset.prepared(spec).targets_dir, "test")
    n = min(args.n, len(emb))
    pick = np.sort(np.random.default_rng(0).permutation(len(emb))[:n])
    scorer = evaluate.Evaluator.of_ids(model.vocab, model.embedder, np.asarray(ids[pick]))
    return np.asarray(emb[pick], np.float32), scorer


class Reference:
    """experiments/vec2text_reference.py --load, one process answering one request per part."""

    def __init__(self, venv: Path, embedder: Path, exported: Path, threads: int):
        cmd = [str(venv / "bin" / "python"), str(ROOT / "experiments" / "vec2text_reference.py"), "--embedder",
               str(embedder), "--load", str(exported), "--threads", str(threads)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(self.proc.stdout.readline() or "{}")
        if not ready.get("ready"):
            raise SystemExit("user_factor: the reference did not start (see its stderr above)")
        self.about = ready

    def invert(self, path: Path, steps: int, beam: int) -> dict:
        self.proc.stdin.write(json.dumps({"embeddings": str(path), "steps": steps, "beam": beam}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def ours(path: Path, out: Path, args, extra: list[str]) -> dict:
    """`v2t invert` on one part, as a user runs it; its wall time, peak memory and texts."""
    cmd = [sys.executable, "-c", PEAK, "invert", "--embeddings", str(path), "--output", str(out), "--steps",
           str(args.steps), "--sbeam", str(args.sbeam), "--quiet", *extra]  # fmt: skip
    # the compilation cache `v2t invert` keeps (`commands.compile_cache`), here a folder that starts empty
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(path.parent / "xla")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"user_factor: v2t invert failed:\n{proc.stderr[-3000:]}")
    hwm = [line for line in proc.stderr.splitlines() if line.startswith("VmHWM_KiB")][-1]
    texts = [json.loads(x)["text"] for x in out.read_text().splitlines()]
    out.unlink()
    return {"seconds": seconds, "peak_rss_mib": int(hwm.split()[1]) / 1024, "texts": texts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sbeam", type=int, default=4)
    p.add_argument("--parts", type=int, default=2, help="the vectors are cut into this many parts, run in turn")
    p.add_argument("--ref-batch", type=int, default=16, help="vectors per invert_embeddings call (its memory)")
    p.add_argument("--sources", nargs="+", default=["all"], help="a prepared dataset's")
    p.add_argument("--venv", default=str(DEFAULT_VENV))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the reference")
    p.add_argument("--out", default="experiments/results/user_factor")
    args = p.parse_args(argv)

    from v2t_jax import api, assets, metrics
    from v2t_jax.weights import vec2text_export

    venv = Path(args.venv)
    if not (venv / "bin" / "python").exists():
        print(f"user_factor: no vec2text venv at {venv}: run bash experiments/vec2text_venv.sh", file=sys.stderr)
        return 2
    model = api.load_model()
    try:
        vectors, scorer = _test_sample(args, model)
    except (FileNotFoundError, OSError) as exc:
        print(f"user_factor: error: no prepared test split ({exc}); run v2t data prepare", file=sys.stderr)
        return 2
    n = len(vectors)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    key = {"n": n, "steps": args.steps, "sbeam": args.sbeam, "parts": args.parts, "ref_batch": args.ref_batch,
           "vectors": hashlib.sha256(vectors.tobytes()).hexdigest(),
           "bundle": assets.sha256_file(api.shipped_bundle() / "v2t_model.json")}  # fmt: skip
    state_path = out.with_name(out.name + ".parts.json")
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("key") != key:
        state = {"key": key, "parts": {}}
    sides = {"vec2text": None, "v2t invert": [], "v2t invert --patience 0": ["--patience", "0"]}
    bounds = np.linspace(0, n, args.parts + 1).astype(int)
    with tempfile.TemporaryDirectory(prefix="v2t-user-factor-") as tmp:
        tmp = Path(tmp)
        ref = None
        for i in range(args.parts):
            part = vectors[bounds[i] : bounds[i + 1]]
            for side, extra in sides.items():
                name = f"{side}:{i}"
                if name in state["parts"]:
                    continue
                if side == "vec2text":
                    if ref is None:
                        exported = vec2text_export.from_bundle(None, tmp / "exported")
                        embedder = assets.resolve_embedder(model.embedder.name)
                        ref = Reference(venv, embedder, exported, args.threads)
                    got = {"seconds": 0.0, "peak_rss_mib": 0.0, "texts": []}
                    for s in range(0, len(part), args.ref_batch):
                        np.save(tmp / "batch.npy", part[s : s + args.ref_batch])
                        r = ref.invert(tmp / "batch.npy", args.steps, args.sbeam)
                        got["seconds"] += r["seconds"]
                        got["peak_rss_mib"] = max(got["peak_rss_mib"], r["peak_rss_mib"])
                        got["texts"] += model.readable(r["texts"])  # (decoded; `v2t invert` writes readable)
                else:
                    np.save(tmp / "part.npy", part)
                    got = ours(tmp / "part.npy", tmp / "out.jsonl", args, extra)
                got["load"] = os.getloadavg()[0]
                state["parts"][name] = got
                state_path.write_text(json.dumps(state) + "\n")
                print(f"user_factor: {name}: {len(part)} vectors in {got['seconds']:.1f} s, peak "
                      f"{got['peak_rss_mib']:.0f} MiB", flush=True)  # fmt: skip
        if ref is not None:
            ref.close()

    rows = []
    for side in sides:
        parts = [state["parts"][f"{side}:{i}"] for i in range(args.parts)]
        texts = [t for part in parts for t in part["texts"]]
        cosines = np.asarray(model.embedder.embed_texts(texts, max_length=model.max_length), np.float32)
        cos = (cosines * vectors).sum(1) / np.linalg.norm(cosines, axis=1) / np.linalg.norm(vectors, axis=1)
        scores = scorer.score(texts, cos.tolist())
        seconds = sum(part["seconds"] for part in parts)
        rows.append({"side": side, "seconds": seconds, "per_vector_s": seconds / n,
                     "part_seconds": [part["seconds"] for part in parts],
                     "peak_rss_mib": max(part["peak_rss_mib"] for part in parts), "texts": texts,
                     "load": statistics.mean(part["load"] for part in parts), **scores})  # fmt: skip
    base = rows[0]
    for row in rows:
        row["speedup"] = base["seconds"] / row["seconds"]
        row["agree"] = sum(metrics.normalize(a) == metrics.normalize(b) for a, b in zip(row["texts"], base["texts"]))
    command = "python experiments/user_factor.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"command": command, "n": n, "steps": args.steps, "sbeam": args.sbeam, "parts": args.parts,
            "ref_batch": args.ref_batch, "reference": ref.about if ref is not None else None,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores"}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        f"# The factor a user sees: the shipped model, {args.steps} steps + sbeam {args.sbeam}, {n} held-out test "
        "vectors",
        "",
        f"Command: `{command}` ({meta['machine']}; parts run in turn: vec2text, `v2t invert`, `v2t invert "
        "--patience 0`). vec2text 0.0.13 `invert_embeddings` on the same weights (exported by "
        f"`v2t_jax.weights.vec2text_export`), {args.ref_batch} vectors per call, model load excluded; "
        "`v2t invert` as a "
        "user runs it, one process per part, start-up, load and compilation included (the first part compiles; "
        "the later ones read the programs from the compilation cache `v2t invert` keeps, here a folder that starts "
        "empty, as a user's second run does). Peak = resident memory "
        "(VmHWM) of each side's process. Scores as the results table's; cosine of the re-embedded text.",
        "",
        "| side | seconds (per part) | s / vector | speed-up | peak MiB | BLEU | token F1 | exact % | cosine | "
        "agree with vec2text |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['side']} | {r['seconds']:.1f} ({' + '.join(f'{x:.1f}' for x in r['part_seconds'])}) | "
            f"{r['per_vector_s']:.2f} | **{r['speedup']:.2f}×** | "
            f"{r['peak_rss_mib']:.0f} | {r['bleu']:.2f} | {100 * r['token_f1']:.1f} | {100 * r['exact']:.1f} | "
            f"{r['cosine']:.3f} | {r['agree']}/{n} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
