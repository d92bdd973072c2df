"""What skipping repeated work and continuous batching save on a trained model: the full loop, the batch loop with
`skip_repeated` (fixed-point and 2-cycle exit, finished examples out of the batch, duplicate candidates embedded
once) and the stream (`drivers.invert_stream`: freed slots take the next vector), on the same vectors.

    python experiments/skip_repeated.py [--checkpoint BUNDLE] [--n 64] [--rows 20:1,20:4] [--batch-size 16]
        [--sources all] [--texts FILE | --random] [--queue-batches 8] [--out experiments/results/skip_repeated]

Vectors: a fixed random sample (seed 0) of the held-out test passages of a prepared dataset (`--sources`, as
`v2t data prepare` made it), or the first N lines of `--texts` (out of domain), embedded by the bundle's
embedder, or N random unit vectors (`--random`). For each STEPS:BEAM row the three run over all vectors a queue
at a time (`--queue-batches` batches, what `v2t invert` streams per program), one after the other on each queue
(so machine load falls on all alike), each compiled ahead of time first (compile seconds apart). The table gives
each one's seconds, the speed-ups, the share of example-steps the skipping loops did not work on, and whether
the texts are the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _vectors(args, model) -> tuple[np.ndarray, str]:
    if args.random:  # no text behind them: what few examples settle on
        v = np.random.default_rng(0).standard_normal((args.n, model.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True), f"{args.n} random unit vectors (seed 0)"
    if args.texts:
        texts = [t.strip() for t in Path(args.texts).read_text(encoding="utf-8").splitlines() if t.strip()]
        texts = texts[: args.n]
        return np.asarray(model.embedder.embed_texts(texts, max_length=model.max_length), np.float32), (
            f"the first {len(texts)} lines of {args.texts}"
        )
    from v2t_jax.data import dataset, sources, targets

    spec = dataset.DatasetSpec(
        sources=sources.expand(args.sources), embedder=model.embedder.name, max_tokens=model.max_length
    )
    emb, _ = targets.load(dataset.prepared(spec).targets_dir, "test")
    n = min(args.n, len(emb))
    pick = np.sort(np.random.default_rng(0).permutation(len(emb))[:n])
    return np.asarray(emb[pick], np.float32), f"{n} test passages of --sources {' '.join(args.sources)}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="model bundle (default: the shipped model)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--rows", default="20:1,20:4", help="STEPS:BEAM,...")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--sources", nargs="+", default=["wiki", "bbc", "sotu", "moby"], help="a prepared dataset's")
    p.add_argument("--texts", default=None, help="a text file, one passage per line, instead of a dataset")
    p.add_argument("--random", action="store_true", help="random unit vectors instead (none has a text)")
    p.add_argument("--queue-batches", type=int, default=None, help="batches per stream queue (default: v2t's)")
    p.add_argument("--out", default="experiments/results/skip_repeated")
    args = p.parse_args(argv)

    import jax

    from v2t_jax import api
    from v2t_jax.search import sharded, strategies

    model = api.load_model(args.checkpoint)
    try:
        raw, what = _vectors(args, model)
    except (FileNotFoundError, OSError) as exc:
        print(f"skip_repeated: error: no such data ({exc}); run: v2t data prepare, or pass --texts", file=sys.stderr)
        return 2
    bs = args.batch_size
    n = len(raw) // bs * bs
    vectors = model.check_embeddings(raw[:n])
    qb = args.queue_batches or sharded.STREAM_BATCHES
    queue = min(n, bs * qb)
    names = ("full", "skip", "stream")
    table = []
    for item in args.rows.split(","):
        steps, _, beam = item.partition(":")
        steps, beam = int(steps), int(beam or 1)
        compile_s, fns = {}, {}
        for name in names:
            t0 = time.perf_counter()
            if name == "stream":
                fns[name] = model.compiled_stream(queue, bs, strategies.Search(steps, beam))
            else:
                fns[name] = model.compiled(bs, strategies.Search(steps, beam, skip_repeated=name == "skip"), True)
            compile_s[name] = time.perf_counter() - t0
        seconds = dict.fromkeys(names, 0.0)
        ids = {name: [] for name in names}
        active, taken, rounds = [], [], 0
        for q in range(0, n, queue):
            chunk = vectors[q : q + queue]
            m = len(chunk)
            for name in names:
                t0 = time.perf_counter()
                if name == "stream":
                    pad = np.concatenate([chunk, np.repeat(chunk[-1:], queue - m, axis=0)]) if m < queue else chunk
                    out = jax.device_get(fns[name](model.params, pad, m))
                    ids[name].append(out["ids"][:m])
                    taken.append(out["steps"][:m])
                    rounds += int(out["rounds"])
                else:
                    for s in range(0, m, bs):
                        out = jax.device_get(fns[name](model.params, chunk[s : s + bs]))
                        ids[name].append(out["ids"])
                        if name == "skip":
                            active.append(out["step_active"])
                seconds[name] += time.perf_counter() - t0
        got = {name: np.concatenate(ids[name]) for name in names}
        worked = float(np.concatenate(active, axis=1).mean())
        same = {
            name: sum(model.decode(a) == model.decode(b) for a, b in zip(got["full"], got[name]))
            for name in ("skip", "stream")
        }
        row = {
            "steps": steps, "beam": beam, "n": n, "queue": queue,
            **{f"{name}_s": seconds[name] for name in names},
            **{f"{name}_compile_s": compile_s[name] for name in names},
            "skip_speedup": seconds["full"] / seconds["skip"],
            "stream_speedup": seconds["full"] / seconds["stream"],
            "stream_over_skip": seconds["skip"] / seconds["stream"],
            "example_steps_skipped": 1.0 - worked,
            "stream_rounds": rounds,
            "stream_example_steps": int(np.concatenate(taken).sum()),
            "same_texts_skip": same["skip"], "same_texts_stream": same["stream"],
        }  # fmt: skip
        table.append(row)
        print(
            f"{steps}:{beam}: full {seconds['full']:.1f}s, skipping {seconds['skip']:.1f}s, stream "
            f"{seconds['stream']:.1f}s -> stream {row['stream_over_skip']:.2f}x the skipping loop, "
            f"{row['stream_speedup']:.2f}x the full loop; same texts {same['skip']}/{n}, {same['stream']}/{n}",
            flush=True,
        )
    command = "python experiments/skip_repeated.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "checkpoint": str(args.checkpoint or "shipped"), "vectors": what, "batch_size": bs,
            "rows": table}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = [
        "# Skipping repeated work and continuous batching on a trained model",
        "",
        f"Command: `{command.strip()}`; model {meta['checkpoint']}; {what}; batch {bs} (the stream: {bs} slots, "
        f"queues of {queue}); {jax.devices()[0].device_kind}. Full = every example runs every step; skipping = "
        "the batch loop with `skip_repeated`; stream = `invert_stream` (the default of `v2t invert`/`audit`). "
        "Seconds exclude compiling (each compiled ahead of time; compile seconds in the JSON).",
        "",
        "| steps | sbeam | full s | skipping s | stream s | stream vs skipping | stream vs full | example-steps "
        "skipped | slot-batch rounds (stream) | same texts (skipping, stream) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['steps']} | {r['beam']} | {r['full_s']:.1f} | {r['skip_s']:.1f} | {r['stream_s']:.1f} | "
        f"**{r['stream_over_skip']:.2f}×** | {r['stream_speedup']:.2f}× | {100 * r['example_steps_skipped']:.0f}% | "
        f"{r['stream_rounds']} (batches: {r['n'] // bs * r['steps']}) | {r['same_texts_skip']}/{r['n']}, "
        f"{r['same_texts_stream']}/{r['n']} |"
        for r in table
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
