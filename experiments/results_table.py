"""The paper's Table 1 at our scale: inversion quality on held-out passages after 0, 1, 5, 20 correction
steps, with sequence beam search, plus a plot of BLEU and cosine against the number of steps.

    python experiments/results_table.py --checkpoint BUNDLE [--n 500] [--split test]
        [--rows 0:1,1:1,5:1,20:1,20:4,50:8,20:4:0.1] [--out experiments/results/table1]

Each row is STEPS:BEAM[:PRIOR[:POLISH[:PATIENCE]]], BEAM either a sequence beam width (vec2text's search, each
hypothesis proposing as many candidates) or BxW, a sequence beam B whose hypotheses propose W candidates each
(`v2t invert --sbeam B --token-beam W`; at 0 steps BxW is the inverter's token beam of W, written `1xW`, its best
candidate by cosine kept) (PRIOR: the language prior's weight, `v2t invert --prior`;
POLISH: rounds of token swaps, `--polish`; PATIENCE: stop an example after that many steps without a better
hypothesis, `--patience`; each default 0). One inversion run per (beam width, prior, patience), as long as its
longest row: the trace of best-so-far hypotheses gives every shorter row (N steps of the loop are a prefix of
M > N steps). Seconds per vector are those of each run, shown on its longest row; with --time-each every row is
its own run, so every row has its time. With --untraced every row is its own run on the path `v2t invert`
takes (the stream, continuous batching, no per-step trace), timed and scored on its final texts: the time a
user sees against what it recovers (OUT.png then plots BLEU and cosine against seconds per vector). Passages are
a fixed random sample (seed 0) of the split of the dataset named by --sources (default: `v2t data prepare`'s)
or --corpus; or, with --texts FILE, the first --n lines of a text file, embedded here (each cut where the
embedder stops reading: an out-of-domain set such as `experiments/data/ood_fortunes.txt`).
Each finished run is kept in OUT.runs/ (its trace, time and what it ran on), so a sweep that is stopped and
rerun with the same command redoes only the unfinished runs; the folder goes once the table is written.
Comparison is
case-folded and whitespace-normalised against each passage *as the uncased embedder sees it* (its tokenizer's
round trip: lower case, accents stripped, WordPiece spacing), since nothing else is recoverable from the
vector. Writes OUT.md, OUT.json and OUT.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from v2t_jax.search import strategies


class Row(NamedTuple):
    steps: int
    beam: int = 1
    prior: float = 0.0  # the language prior's weight (no effect at 0 steps)
    polish: int = 0  # rounds of token swaps after the last step
    patience: int = 0  # stop an example after this many steps without a better hypothesis (0: never)
    token_beam: int = 0  # candidates each hypothesis proposes (0: `beam`, as vec2text)

    def run(self, each: bool = False) -> tuple:
        """The run a row reads from: one per (beam, prior, polish, patience, token beam); a polished one per row
        (the polish comes after that row's last step), the others as long as their longest row. With `each`, every
        row has its own run (so its own time)."""
        prior, patience = (self.prior, self.patience) if self.steps else (0.0, 0)
        # (parse_rows writes a BxB row's token beam as 0; at 0 steps the token beam is the inverter's)
        return (self.beam, prior, self.polish, patience, self.steps if self.polish or each else None, self.token_beam)

    @property
    def label(self) -> str:
        beam = f"{self.beam}x{self.token_beam}" if self.token_beam else str(self.beam)
        fields = [str(self.steps), beam, f"{self.prior if self.steps else 0:g}", str(self.polish)]
        fields.append(str(self.patience if self.steps else 0))
        while len(fields) > 2 and fields[-1] == "0":  # the fields left at their defaults are not written
            fields.pop()
        return ":".join(fields)

    @property
    def name(self) -> str:
        if self.steps == 0 and not self.polish:
            return f"step 0 (inverter, token beam {self.token_beam})" if self.token_beam else "step 0 (inverter)"
        out = "step 0" if self.steps == 0 else f"{self.steps} steps"
        if self.token_beam and self.steps:
            out += f" + sbeam {self.beam} x token beam {self.token_beam}"
        else:
            out += f" + sbeam {self.beam}" if self.beam > 1 and self.steps else ""
            out += f" + token beam {self.token_beam}" if self.token_beam else ""
        out += f" + prior {self.prior:g}" if self.prior and self.steps else ""
        out += f" + patience {self.patience}" if self.patience and self.steps else ""
        return out + (f" + {self.polish} swap rounds" if self.polish else "")


def parse_rows(text: str) -> list[Row]:
    rows = []
    for item in text.split(","):
        steps, beam, prior, polish, patience = (item.split(":") + ["", "", "", ""])[:5]
        beam, token_beam = strategies.parse_widths(beam or "1")
        if int(steps) == 0 and token_beam:  # the inverter's token beam: no sequence beam at 0 steps (1xW)
            beam, tb = 1, (0 if token_beam == 1 else token_beam)
        else:
            tb = 0 if (token_beam or 0) == beam else (token_beam or 0)  # BxB is vec2text's search
        rows.append(Row(int(steps), beam, float(prior or 0.0), int(polish or 0), int(patience or 0), tb))
    return rows


def run_name(run: tuple) -> str:
    """A run's name in OUT.json: its beam width (and token beam), then its prior, polish and patience when set, then
    its steps when it has its own ("4", "2x8", "4p0.1", "1s4@20", "1k3", "4@50")."""
    beam, prior, polish, patience, steps, token_beam = run
    return (
        strategies.widths_label(beam, token_beam)
        + (f"p{prior:g}" if prior else "")
        + (f"s{polish}" if polish else "")
        + (f"k{patience}" if patience else "")
        + (f"@{steps}" if steps is not None else "")
    )


def _run_store(out: Path, key: dict):
    """(load, save, drop) of finished runs in OUT.runs/: a run is reused only under the same `key` (bundle,
    passages, batch size) and for the same number of steps."""
    folder = out.parent / (out.name + ".runs")

    def path(run: tuple) -> Path:
        return folder / f"{run_name(run)}.json"

    def load(run: tuple, steps: int) -> dict | None:
        try:
            saved = json.loads(path(run).read_text())
        except (OSError, ValueError):
            return None
        return saved if saved.get("key") == key and saved.get("steps") == steps else None

    def save(run: tuple, result: dict) -> None:
        from v2t_jax import outputs

        folder.mkdir(parents=True, exist_ok=True)
        outputs.write_text_atomic(path(run), json.dumps({"key": key, **result}))

    def drop() -> None:
        shutil.rmtree(folder, ignore_errors=True)

    return load, save, drop


def held_out_args(p: argparse.ArgumentParser) -> None:
    """The bundle and the passages to score (`held_out`): --checkpoint, --n, --split, --data-dir, --corpus,
    --sources, --texts."""
    p.add_argument("--checkpoint", required=True, help="model bundle (inverter + corrector)")
    p.add_argument("--n", type=int, default=500, help="passages (default %(default)s)")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--corpus", default=None, help="a user corpus prepared with v2t data prepare --corpus")
    p.add_argument("--sources", nargs="+", default=["wiki", "bbc", "sotu", "moby"], help="built-in sources (or all)")
    p.add_argument("--texts", default=None, help="a text file, one passage per line, instead of a dataset split")


def held_out(model, args) -> tuple:
    """The passages a table scores, as `held_out_args` name them -> (vectors [n, D] float32, an
    `evaluate.Evaluator` of their references, n)."""
    from v2t_jax import evaluate
    from v2t_jax.data import dataset, sources, targets

    if args.texts:
        texts = [t.strip() for t in Path(args.texts).read_text(encoding="utf-8").splitlines() if t.strip()]
        n = min(args.n, len(texts))
        vectors = np.asarray(model.embedder.embed_texts(texts[:n], max_length=model.max_length), np.float32)
        scorer = evaluate.Evaluator(model.embedder_view(texts[:n]))
    else:
        spec = dataset.DatasetSpec(
            sources=sources.expand(args.sources),
            corpus=args.corpus,
            embedder=model.embedder.name,
            max_tokens=model.max_length,
        )
        emb, ids = targets.load(dataset.prepared(spec, args.data_dir).targets_dir, args.split)
        n = min(args.n, len(emb))
        pick = np.sort(np.random.default_rng(0).permutation(len(emb))[:n])
        vectors = np.asarray(emb[pick], np.float32)
        scorer = evaluate.Evaluator.of_ids(model.vocab, model.embedder, np.asarray(ids[pick]))
    return vectors, scorer, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    held_out_args(p)
    p.add_argument(
        "--rows",
        default="0:1,1:1,5:1,20:1,20:4,50:8",
        help="STEPS:BEAM[:PRIOR[:POLISH[:PATIENCE]]],... (default %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--time-each", action="store_true", help="one run per row, so every row has its own seconds per vector"
    )
    p.add_argument(
        "--untraced",
        action="store_true",
        help="one run per row on v2t invert's path (the stream, no per-step trace), scored on its final texts",
    )
    p.add_argument("--out", default="experiments/results/table1")
    args = p.parse_args(argv)

    from v2t_jax import api

    rows = parse_rows(args.rows)
    each = args.time_each or args.untraced
    model = api.load_model(args.checkpoint)
    if model.program.corrector is None and any(r.steps for r in rows):
        print(f"{args.checkpoint} has no corrector: only 0-step rows are possible", file=sys.stderr)
        return 2
    vectors, scorer, n = held_out(model, args)
    if args.texts:
        args.split = Path(args.texts).name

    from v2t_jax import assets

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    key = {
        "bundle": assets.folder_digest(args.checkpoint),
        "vectors": hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest(),
        "batch_size": args.batch_size,
        "untraced": args.untraced,
    }
    load, save, drop = _run_store(out, key)
    runs = {}
    for run in sorted({r.run(each) for r in rows}, key=str):
        beam, prior, polish, patience, _, token_beam = run
        steps = max(r.steps for r in rows if r.run(each) == run)
        kept = load(run, steps)
        if kept is not None:
            print(f"results_table: run {run_name(run)} read back from {args.out}.runs/", file=sys.stderr)
            runs[run] = {k: v for k, v in kept.items() if k != "key"}
            continue
        search = strategies.Search(steps, beam, prior, polish, patience=patience, token_beam=token_beam or None)
        t0 = time.perf_counter()
        if args.untraced:  # as `v2t invert` runs it; its texts are the decoding itself, as traced ones below
            trace = []
            for _, texts, cosines, _ in model.iter_batches(vectors, search, args.batch_size, progress=True):
                trace += [{"hypotheses": [t], "cosines": [float(c)]} for t, c in zip(texts, cosines)]
        else:
            _, traced = model.invert(
                vectors,
                search,
                batch_size=args.batch_size,
                return_trace=True,
                progress=True,
                readable=False,  # the decoding itself: scored against the embedder's view
            )
            trace = [{"hypotheses": list(t["hypotheses"]), "cosines": [float(c) for c in t["cosines"]]}
                     for t in traced["steps"]]  # fmt: skip
        runs[run] = {
            "steps": steps, "beam": beam, "prior": prior, "polish": polish, "patience": patience,
            "token_beam": token_beam, "untraced": args.untraced, "trace": trace, "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        save(run, runs[run])

    def scores(run: tuple, step: int) -> dict:
        tr = runs[run]["trace"]
        return scorer.score([t["hypotheses"][step] for t in tr], [t["cosines"][step] for t in tr])

    def at(r: Row) -> int:  # the row's entry in its run's trace: a polished text follows the last step's
        if args.untraced:  # the final text only
            return 0
        return r.steps + (1 if r.polish else 0)

    table = []
    for r in rows:
        run = runs[r.run(each)]
        # each run's time, on its longest row (shorter rows are prefixes of its trace)
        spv = run["seconds"] / n if r.steps == run["steps"] else None
        table.append(
            {"steps": r.steps, "beam": r.beam, "token_beam": r.run(each)[5], "prior": r.prior if r.steps else 0.0,
             "polish": r.polish, "patience": r.patience if r.steps else 0, **scores(r.run(each), at(r)),
             "s_per_vector": spv}
        )  # fmt: skip
    # per-step curves of the traced runs (an untraced run has its final texts only)
    curves = (
        {} if args.untraced else {run_name(k): [scores(k, s) for s in range(v["steps"] + 1)] for k, v in runs.items()}
    )
    examples = [
        {
            "reference": scorer.references[i],
            **{r.label: runs[r.run(each)]["trace"][i]["hypotheses"][at(r)] for r in rows},
        }
        for i in range(min(5, n))
    ]
    command = "python experiments/results_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "command": command,
                "checkpoint": str(args.checkpoint),
                "split": args.split,
                "n": n,
                "rows": table,
                "curves": {str(k): v for k, v in curves.items()},
                "seconds": {run_name(k): r["seconds"] for k, r in runs.items()},
                "examples": examples,
            },
            indent=1,
        )
        + "\n"
    )
    lines = [
        f"# Inversion quality on {args.split} ({n} passages)"
        if args.texts
        else f"# Inversion quality on the {args.split} split ({n} passages)",
        "",
        f"Command: `{command}`",
        "",
        f"Model: `{args.checkpoint}` (embedder {model.embedder.name}, {model.max_length} tokens). Text compared",
        "case-folded and whitespace-normalised against each passage as the uncased embedder sees it; BLEU is",
        "sacrebleu sentence BLEU averaged over passages; cosine of the re-embedded output to the target.",
        "",
        "| method | BLEU | token F1 | exact % | cosine | s / vector |",
        "|---|---|---|---|---|---|",
    ]
    for row, r in zip(rows, table):
        spv = "" if r["s_per_vector"] is None else f"{r['s_per_vector']:.2f}"
        lines.append(
            f"| {row.name} | {r['bleu']:.2f} | {100 * r['token_f1']:.1f} | {100 * r['exact']:.1f} | "
            f"{r['cosine']:.3f} | {spv} |"
        )
    lines += [
        "",
        "Wall time per run (batch "
        + f"{args.batch_size}, this machine): "
        + ", ".join(
            f"beam {r['beam']}"
            + (f" token beam {r['token_beam']}" if r.get("token_beam") else "")
            + (f" prior {r['prior']:g}" if r["prior"] else "")
            + (f" polish {r['polish']}" if r["polish"] else "")
            + (f" patience {r['patience']}" if r["patience"] else "")
            + f", {r['steps']} steps: {r['seconds'] / 60:.1f} min"
            for r in runs.values()
        )
        + ".",
        "",
        "Examples:",
        "",
    ]
    for ex in examples:
        lines.append(f"- reference: {ex['reference']}")
        for r in rows:
            lines.append(f"  - {r.label}: {ex[r.label]}")
    against = "seconds per vector" if args.untraced else "correction steps"
    lines += ["", f"![BLEU and cosine against {against}]({out.with_suffix('.png').name})"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if args.untraced:  # each row a point: what it recovers against the seconds it took
        for row, r in zip(rows, table):
            for ax, key in ((ax1, "bleu"), (ax2, "cosine")):
                ax.plot(r["s_per_vector"], r[key], marker="o", label=row.name)
        xlabel = "seconds per vector (this machine)"
    for curve, run in zip(curves.values(), runs.values()):
        x = np.arange(len(curve))
        name = f"sbeam {run['beam']}" + (f", prior {run['prior']:g}" if run["prior"] else "")
        name += f", polish {run['polish']}" if run["polish"] else ""
        name += f", patience {run['patience']}" if run["patience"] else ""
        ax1.plot(x, [c["bleu"] for c in curve], marker=".", label=name)
        ax2.plot(x, [c["cosine"] for c in curve], marker=".", label=name)
        xlabel = "correction steps"
    ax1.set(xlabel=xlabel, ylabel="BLEU", title=f"BLEU ({args.split}, n={n})")
    ax2.set(xlabel=xlabel, ylabel="cosine to target", title="cosine")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    drop()  # the table holds it all now
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
