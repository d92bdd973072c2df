"""The eval curve of a training run, as a markdown table, from its metrics.jsonl.

python experiments/eval_curve.py RUN_DIR [--out experiments/results/NAME.md] [--command "the train command"]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    p.add_argument("--command", default="", help="the command that ran the training, recorded in the table")
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = {r["step"]: r for r in rows if r["kind"] == "eval"}  # a resumed run may log a step twice: keep the last
    trains = [r for r in rows if r["kind"] == "train"]
    if not evals:
        print(f"{run}: no eval rows yet", file=sys.stderr)
        return 1
    wall = trains[-1]["time"] - rows[0]["time"] if trains else 0.0
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    lines = [
        f"# Eval curve: {run.name}",
        "",
        f"Training command: `{args.command}`" if args.command else "",
        f"Config: T5 {config.get('t5', {}).get('size', '?')} ({config.get('t5', {}).get('variant', '?')}), "
        f"batch {config.get('batch_size', '?')}, lr {config.get('learning_rate', '?')}, "
        f"{config.get('num_steps', '?')} scheduled steps; embedder {config.get('embedder', '?')}.",
        f"Logged wall time from the first to the last row: {wall / 60:.1f} min (includes pauses for resumption).",
        "Validation split; BLEU / token F1 / exact on greedy decodes of `eval_samples` passages, case-folded and",
        "whitespace-normalised (the embedder is uncased); cosine of the re-embedded hypothesis to the target.",
    ]
    corrector = any("hypothesis_bleu" in r for r in evals.values())
    if corrector:  # the eval decodes one greedy correction of the inverter's cached hypotheses x⁰
        lines += [
            "Corrector run: the scores are of one greedy correction of the inverter's hypothesis x⁰ (cached);",
            "the x⁰ columns score x⁰ itself on the same passages, so the gain of one step is the difference.",
        ]
    extra_head, extra_rule = (" x⁰ BLEU | x⁰ cosine |", "---|---|") if corrector else ("", "")
    lines += [
        "",
        f"| step | val loss | token acc | BLEU | token F1 | exact | cosine |{extra_head} example |",
        f"|---|---|---|---|---|---|---|{extra_rule}---|",
    ]
    for step in sorted(evals):
        r = evals[step]
        ex = r.get("example_pred", "").replace("|", "/")[:60]
        extra = f" {r['hypothesis_bleu']:.2f} | {r['hypothesis_cosine']:.3f} |" if corrector else ""
        lines.append(
            f"| {step} | {r.get('loss', float('nan')):.3f} | {r.get('token_accuracy', float('nan')):.3f} | "
            f"{r['bleu']:.2f} | {r['token_f1']:.3f} | {r['exact']:.3f} | {r['cosine']:.3f} |{extra} {ex} |"
        )
    last = evals[max(evals)]
    lines += ["", f"Reference of the example: {last.get('example_ref', '')[:120]}"]
    text = "\n".join(line for line in lines if line is not None) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
