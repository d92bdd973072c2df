"""Does a consensus of the search's candidates, or the inverter's reading of them, recover more text than the one
closest to the target?

    python experiments/search_consensus.py --checkpoint BUNDLE --sources all --split validation --n 200
        [--width 16] [--taus 0.005,0.01,0.02,0.05] [--tops 4,8,32] [--lambdas 0.003,0.01,0.03,0.1] [--out OUT]

Minimum-Bayes-risk selection (as in machine translation): of a pool of candidate texts, keep the one with the
highest expected sentence BLEU against the others, each weighted by softmax(cosine to the target / tau) — a text
many good candidates agree with, rather than the single one whose embedding lies closest. The pool of each passage
is every distinct hypothesis the default search (`v2t invert`'s) held as its best over its steps, plus --width
candidates the corrector proposes from its final text (one more step's token beam); every pool text is embedded
here, from its text, so all of them are ranked alike. Rows: the search's own text, the pool's best by cosine,
the consensus of the pool's --tops best by cosine at each tau, and the best by cosine + lambda x the text's mean
log-probability under the inverter given the vector (a second reading of the vector, by the model that was
trained to read it; --lambdas). Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _results_table():
    """experiments/results_table.py, beside this script (the scripts are not a package; sys.path is left alone)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_table", Path(__file__).resolve().parent / "results_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_table = _results_table()
held_out, held_out_args = _table.held_out, _table.held_out_args


def consensus(cos: np.ndarray, tau: float, utility: np.ndarray) -> int:
    """Of k texts with cosines [k] and pairwise utility [k, k] (row: the text; column: the pseudo-reference), the
    index of the one with the highest expected utility under weights softmax(cos / tau)."""
    w = np.exp((cos - cos.max()) / tau)
    return int(np.argmax(utility @ (w / w.sum())))


def inverter_logprobs(model, vectors: np.ndarray, pools: list[list[str]], batch: int = 8) -> list[np.ndarray]:
    """Each pool text's mean log-probability under the inverter given its passage's vector (teacher-forced): how
    likely the model that reads vectors finds the text as this vector's source."""
    import jax
    import jax.numpy as jnp

    from v2t_jax.search import hotflip

    k = max(len(t) for t in pools)  # one compiled shape: pools padded with their first text
    ids = np.stack([model.vocab.encode(t + [t[0]] * (k - len(t))) for t in pools])
    score = jax.jit(lambda e, x: hotflip.inverter_logprob(model.program, model.params, e, x))
    lp = np.concatenate([jax.device_get(score(jnp.asarray(vectors[s : s + batch]), jnp.asarray(ids[s : s + batch])))
                         for s in range(0, len(pools), batch)])  # fmt: skip
    return [row[: len(t)] for row, t in zip(lp, pools)]


def corrector_proposals(model, vectors: np.ndarray, finals: list[str], width: int, batch: int) -> list[list[str]]:
    """`width` candidates the corrector proposes from each final text (its token beam), as texts."""
    import jax
    import jax.numpy as jnp

    from v2t_jax.search import core

    prog, params = model.program, model.params
    ids = model.vocab.encode(finals)
    hyp_emb = model.embed_texts(finals).astype(np.float32)
    propose = jax.jit(lambda e, h, he: core.candidates(prog, params, e, h[:, None], he[:, None], width))
    out = []
    for s in range(0, len(finals), batch):
        cand = jax.device_get(propose(*(jnp.asarray(x[s : s + batch]) for x in (vectors, ids, hyp_emb))))
        out += [[model.decode(r) for r in rows] for rows in cand]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    held_out_args(p)
    p.add_argument("--width", type=int, default=16, help="candidates proposed from each final text")
    p.add_argument("--taus", default="0.005,0.01,0.02,0.05", help="softmax temperatures of the cosine weights")
    p.add_argument("--tops", default="4,8,32", help="pool sizes: the best by cosine that take part")
    p.add_argument("--lambdas", default="0.003,0.01,0.03,0.1", help="weights of the inverter's log-probability")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="experiments/results/search_consensus")
    args = p.parse_args(argv)
    taus = [float(x) for x in args.taus.split(",")]
    tops = [int(x) for x in args.tops.split(",")]
    lambdas = [float(x) for x in args.lambdas.split(",")]

    from v2t_jax import api, metrics
    from v2t_jax.search import strategies

    model = api.load_model(args.checkpoint)
    if model.program.corrector is None or not model.program.in_graph or args.width < 1:
        print(f"{args.checkpoint}: the pool needs a corrector decoding in the embedder's vocabulary, and --width >= 1",
              file=sys.stderr)  # fmt: skip
        return 2
    vectors, scorer, n = held_out(model, args)
    search = strategies.default()
    t0 = time.perf_counter()
    finals, traced = model.invert(
        vectors, search, batch_size=args.batch_size, return_trace=True, progress=True, readable=False
    )
    seconds = time.perf_counter() - t0
    proposals = corrector_proposals(model, vectors, finals, args.width, args.batch_size)

    texts_of = [list(dict.fromkeys([final] + step["hypotheses"] + extra))  # distinct; the search's text first
                for final, step, extra in zip(finals, traced["steps"], proposals)]  # fmt: skip
    emb_all = model.embed_texts([t for texts in texts_of for t in texts])  # one call for every pool
    pools = []
    for v, texts, emb in zip(vectors, texts_of, np.split(emb_all, np.cumsum([len(t) for t in texts_of])[:-1])):
        cos = emb @ v / (np.linalg.norm(emb, axis=1) * np.linalg.norm(v))
        norm = [metrics.normalize(t) for t in texts]
        utility = np.array([[metrics.sentence_bleu(a, b) for b in norm] for a in norm])
        pools.append((texts, cos, utility))

    def row(name: str, picks: list[int]) -> dict:
        texts = [pool[0][j] for pool, j in zip(pools, picks)]
        return {"selection": name, **scorer.score(texts, [float(pool[1][j]) for pool, j in zip(pools, picks)])}

    table = [row(f"the search's text ({search.describe()})", [0] * n)]
    table.append(row(f"best cosine of the pool (+ {args.width} proposals from the final text)",
                     [int(np.argmax(c)) for _, c, _ in pools]))  # fmt: skip
    for top in tops:
        for tau in taus:
            picks = []
            for _, cos, utility in pools:
                k = np.argsort(-cos)[:top]
                picks.append(int(k[consensus(cos[k], tau, utility[np.ix_(k, k)])]))
            table.append(row(f"consensus of the best {top}, tau {tau:g}", picks))
    lps = inverter_logprobs(model, vectors, [t for t, _, _ in pools])
    for lam in lambdas:
        picks = [int(np.argmax(cos + lam * lp)) for (_, cos, _), lp in zip(pools, lps)]
        table.append(row(f"cosine + {lam:g} x the inverter's log-probability", picks))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python experiments/search_consensus.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sizes = [len(t) for t, _, _ in pools]
    result = {"command": command, "n": n, "split": args.split, "search": search.describe(), "width": args.width,
              "pool_mean": float(np.mean(sizes)), "search_s_per_vector": seconds / n, "rows": table}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# Selection among the search's candidates (consensus, the inverter's reading) against the best cosine, {n} "
        f"{args.split} passages",
        "",
        f"Command: `{command}`",
        "",
        f"Pool per passage: {np.mean(sizes):.1f} distinct texts on average (the search's best over its steps + "
        f"{args.width} corrector proposals from its final text), each embedded from its text.",
        "",
        "| selection | BLEU | token F1 | exact % | cosine |",
        "|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(f"| {r['selection']} | {r['bleu']:.2f} | {100 * r['token_f1']:.1f} | {100 * r['exact']:.1f} | "
                     f"{r['cosine']:.3f} |")  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
