"""The paper's Table 1 at our scale: inversion quality on held-out passages after 0, 1, 5, 20 correction
steps, with sequence beam search, plus a plot of BLEU and cosine against the number of steps.

    python experiments/results_table.py --checkpoint BUNDLE [--n 500] [--split test]
        [--rows 0:1,1:1,5:1,20:1,20:4,50:8] [--out experiments/results/table1]

Each row is STEPS:BEAM. One inversion run per beam width, as long as that width's longest row: the trace of
best-so-far hypotheses gives every shorter row (N steps of the loop are a prefix of M > N steps). Passages are
a fixed random sample (seed 0) of the split of the dataset named by --sources (default: `v2t data prepare`'s)
or --corpus. Comparison is
case-folded and whitespace-normalised against each passage *as the uncased embedder sees it* (its tokenizer's
round trip: lower case, accents stripped, WordPiece spacing), since nothing else is recoverable from the
vector. Writes OUT.md, OUT.json and OUT.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def parse_rows(text: str) -> list[tuple[int, int]]:
    rows = []
    for item in text.split(","):
        steps, _, beam = item.partition(":")
        rows.append((int(steps), int(beam or 1)))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="model bundle (inverter + corrector)")
    p.add_argument("--n", type=int, default=500, help="passages (default %(default)s)")
    p.add_argument("--split", default="test")
    p.add_argument("--rows", default="0:1,1:1,5:1,20:1,20:4,50:8", help="STEPS:BEAM,... (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--corpus", default=None, help="a user corpus prepared with v2t data prepare --corpus")
    p.add_argument("--sources", nargs="+", default=["wiki", "bbc", "sotu", "moby"], help="built-in sources (or all)")
    p.add_argument("--out", default="experiments/results/table1")
    args = p.parse_args(argv)

    from v2t_jax import api, evaluate
    from v2t_jax.data import dataset, sources, targets

    rows = parse_rows(args.rows)
    model = api.load_model(args.checkpoint)
    if model.program.corrector is None and any(s for s, _ in rows):
        print(f"{args.checkpoint} has no corrector: only 0-step rows are possible", file=sys.stderr)
        return 2
    spec = dataset.DatasetSpec(
        sources=sources.expand(args.sources),
        corpus=args.corpus,
        embedder=model.embedder.name,
        max_tokens=model.max_length,
    )
    b = dataset.builder(spec, args.data_dir)
    emb, ids = targets.load(targets.targets_dir(b.data_dir, model.embedder.name, model.max_length), args.split)
    n = min(args.n, len(emb))
    pick = np.sort(np.random.default_rng(0).permutation(len(emb))[:n])
    vectors = np.asarray(emb[pick], np.float32)
    refs = evaluate.views_of_ids(model.vocab, model.embedder, np.asarray(ids[pick]))

    runs = {}
    for beam in sorted({k for _, k in rows}):
        steps = max(s for s, k in rows if k == beam)
        t0 = time.perf_counter()
        _, trace = model.invert_embeddings(
            vectors,
            num_steps=steps,
            sequence_beam_width=beam,
            batch_size=args.batch_size,
            return_trace=True,
            progress=True,
            readable=False,  # the decoding itself: scored against the embedder's view
        )
        runs[beam] = {"steps": steps, "trace": trace["steps"], "seconds": time.perf_counter() - t0}

    def scores(beam: int, step: int) -> dict:
        tr = runs[beam]["trace"]
        return evaluate.score([t["hypotheses"][step] for t in tr], refs, [t["cosines"][step] for t in tr])

    table = [{"steps": s, "beam": k, **scores(k, s)} for s, k in rows]
    curves = {k: [scores(k, s) for s in range(r["steps"] + 1)] for k, r in runs.items()}
    examples = [
        {"reference": refs[i], **{f"{s}:{k}": runs[k]["trace"][i]["hypotheses"][s] for s, k in rows}}
        for i in range(min(5, n))
    ]
    command = "python experiments/results_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "command": command,
                "checkpoint": str(args.checkpoint),
                "split": args.split,
                "n": n,
                "rows": table,
                "curves": {str(k): v for k, v in curves.items()},
                "seconds": {str(k): r["seconds"] for k, r in runs.items()},
                "examples": examples,
            },
            indent=1,
        )
        + "\n"
    )
    lines = [
        f"# Inversion quality on the {args.split} split ({n} passages)",
        "",
        f"Command: `{command}`",
        "",
        f"Model: `{args.checkpoint}` (embedder {model.embedder.name}, {model.max_length} tokens). Text compared",
        "case-folded and whitespace-normalised against each passage as the uncased embedder sees it; BLEU is",
        "sacrebleu sentence BLEU averaged over passages; cosine of the re-embedded output to the target.",
        "",
        "| method | BLEU | token F1 | exact % | cosine |",
        "|---|---|---|---|---|",
    ]
    for r in table:
        name = (
            "step 0 (inverter)"
            if r["steps"] == 0
            else f"{r['steps']} steps" + (f" + sbeam {r['beam']}" if r["beam"] > 1 else "")
        )
        lines.append(
            f"| {name} | {r['bleu']:.2f} | {100 * r['token_f1']:.1f} | {100 * r['exact']:.1f} | {r['cosine']:.3f} |"
        )
    lines += [
        "",
        "Wall time per run: "
        + ", ".join(f"beam {k}, {r['steps']} steps: {r['seconds'] / 60:.1f} min" for k, r in runs.items())
        + ".",
        "",
        "Examples:",
        "",
    ]
    for ex in examples:
        lines.append(f"- reference: {ex['reference']}")
        for s, k in rows:
            lines.append(f"  - {s}:{k}: {ex[f'{s}:{k}']}")
    lines += ["", f"![BLEU and cosine against correction steps]({out.with_suffix('.png').name})"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for k, curve in curves.items():
        x = np.arange(len(curve))
        ax1.plot(x, [c["bleu"] for c in curve], marker=".", label=f"sbeam {k}")
        ax2.plot(x, [c["cosine"] for c in curve], marker=".", label=f"sbeam {k}")
    ax1.set(xlabel="correction steps", ylabel="BLEU", title=f"BLEU ({args.split}, n={n})")
    ax2.set(xlabel="correction steps", ylabel="cosine to target", title="cosine")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
