"""What skipping repeated work saves on a trained model: the compiled loop with and without `skip_repeated`
(fixed-point exit, finished examples out of the batch, duplicate candidates embedded once), same vectors.

    python experiments/skip_repeated.py [--checkpoint BUNDLE] [--n 64] [--rows 20:1,20:4] [--batch-size 16]
        [--out experiments/results/skip_repeated]

Vectors: a fixed random sample (seed 0) of the held-out test passages of `v2t data prepare`'s default dataset
(prepare it first), embedded by the bundle's embedder. For each STEPS:BEAM row both variants run over all
passages in batches, alternating batch by batch (so machine load falls on both alike), each batch compiled
and warmed first; the table gives the total seconds of each, the speed-up, the share of example-steps the
skipping loop did not work on (fixed points and repeats), and whether the output texts are the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="model bundle (default: the shipped model)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--rows", default="20:1,20:4", help="STEPS:BEAM,...")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default="experiments/results/skip_repeated")
    args = p.parse_args(argv)

    import jax

    from v2t_jax import api, strategies
    from v2t_jax.data import dataset, targets

    model = api.load_model(args.checkpoint)
    spec = dataset.DatasetSpec(embedder=model.embedder.name, max_tokens=model.max_length)
    tdir = targets.targets_dir(dataset.builder(spec, None).data_dir, model.embedder.name, model.max_length)
    try:
        emb, _ = targets.load(tdir, "test")
    except (FileNotFoundError, OSError) as exc:
        print(f"skip_repeated: error: no prepared test split ({exc}); run: v2t data prepare", file=sys.stderr)
        return 2
    n = min(args.n, len(emb)) // args.batch_size * args.batch_size
    pick = np.sort(np.random.default_rng(0).permutation(len(emb))[:n])
    vectors = model.check_embeddings(np.asarray(emb[pick], np.float32))
    bs = args.batch_size
    table = []
    for item in args.rows.split(","):
        steps, _, beam = item.partition(":")
        steps, beam = int(steps), int(beam or 1)
        fns = {
            skip: model.compiled(bs, strategies.Search(steps, beam, skip_repeated=skip), score=True)
            for skip in (False, True)
        }
        for fn in fns.values():
            jax.block_until_ready(fn(model.params, vectors[:bs]))
        seconds = {False: 0.0, True: 0.0}
        ids = {False: [], True: []}
        active = []
        for s in range(0, n, bs):
            chunk = vectors[s : s + bs]
            for skip in (False, True):
                t0 = time.perf_counter()
                out = jax.device_get(fns[skip](model.params, chunk))
                seconds[skip] += time.perf_counter() - t0
                ids[skip].append(out["ids"])
                if skip:
                    active.append(out["step_active"])
        full, fast = np.concatenate(ids[False]), np.concatenate(ids[True])
        worked = float(np.concatenate(active, axis=1).mean())
        same_ids = int((full == fast).all(axis=1).sum())
        same_text = sum(model.decode(a) == model.decode(b) for a, b in zip(full, fast))
        row = {
            "steps": steps,
            "beam": beam,
            "n": n,
            "full_s": seconds[False],
            "skip_s": seconds[True],
            "speedup": seconds[False] / seconds[True],
            "example_steps_skipped": 1.0 - worked,
            "same_texts": same_text,
        }
        table.append(row)
        print(
            f"{steps}:{beam}: full {seconds[False]:.1f}s, skipping {seconds[True]:.1f}s -> {row['speedup']:.2f}x; "
            f"{100 * (1 - worked):.0f}% of example-steps skipped; same texts {same_text}/{n} (ids {same_ids})",
            flush=True,
        )
    command = "python experiments/skip_repeated.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "checkpoint": str(args.checkpoint or "shipped"), "batch_size": bs, "rows": table}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = [
        "# Skipping repeated work on a trained model",
        "",
        f"Command: `{command.strip()}`; model {meta['checkpoint']}; {n} test passages, batch {bs}, "
        f"{jax.devices()[0].device_kind}. Full = every example runs every step; skipping = `skip_repeated`.",
        "",
        "| steps | sbeam | full s | skipping s | speed-up | example-steps skipped | same texts |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['steps']} | {r['beam']} | {r['full_s']:.1f} | {r['skip_s']:.1f} | **{r['speedup']:.2f}×** | "
        f"{100 * r['example_steps_skipped']:.0f}% | {r['same_texts']}/{r['n']} |"
        for r in table
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
