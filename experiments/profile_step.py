"""Where one correction step's time goes, at the shipped model's shape and at the tiny shape of
`compare_vec2text_cpu.md`: each part of the step compiled and timed on its own, with XLA's FLOP count of its
compiled program (`cost_analysis`), its rate and its share of this machine's jitted float32 matmul rate.

    python experiments/profile_step.py [--batch 16] [--sbeam 4] [--repeats 5] [--trace DIR]
        [--out experiments/results/profile_step]

The step is vec2text's (every row decoded, every candidate embedded: `skip_repeated` off) at `--sbeam` m: the
corrector reads each of the m hypotheses of each target with the target (`init_cache`: the encoder over
[e, ê, e−ê, hypothesis] and the cross-attention keys and values), its token beam of width m proposes m
candidates from each (`candidates`: the encoder, then the decoder's beam search with the LM head each token),
the embedder re-embeds the B·m·m candidates at the model's length, and `_select` scores them and gathers the
best m (the beam cache's gathers are inside `candidates`). Rows: the parts, the LM head alone (one product of
the beam's rows with the tied embedding, times the tokens decoded), and the whole step compiled as one program.

The hypotheses are the inverter's (beam m) for real sentences (tests/data/sentences.txt embedded by MiniLM),
so the decoder stops where real outputs stop. The token beam at the shipped shape is also traced once
(`jax.profiler`, kept in `--trace DIR`, else a temporary folder; TensorBoard / Perfetto read it) and its time
listed by the operations XLA's metadata names. Last, the whole step's share of the matmul rate by model FLOPs
(`compare_vec2text.loop_gflops` at the tokens the candidates decode: the count of `compare_vec2text_cpu.md`), for
both shapes; every time is the median of `--repeats` runs, with their spread (fastest–slowest).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from compare_vec2text import loop_gflops, matmul_gflops

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn, args, repeats: int) -> tuple[list[float], float | None]:
    """Seconds of each of `repeats` runs of `fn(*args)` after a compile-and-warm-up call, and the compiled
    program's FLOPs."""
    import jax

    from v2t_jax import parallel

    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        seconds.append(time.perf_counter() - t0)
    return seconds, parallel.compiled_flops(compiled)


def _tiny_model(embedder):
    """compare_vec2text's shape on random weights: T5 tiny (d 256, 4 layers, vocab 32,128), MiniLM."""
    from v2t_jax import bench
    from v2t_jax.models import t5

    cfg = t5.t5_config("tiny", vocab_size=32128, d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_heads=4)
    return bench.random_model_of_shape(embedder, cfg, num_repeat_tokens=16, max_length=32)


def profile(model, e: np.ndarray, m: int, repeats: int, trace: Path | None) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from v2t_jax.models import correctors
    from v2t_jax.search import core

    program, params = model.program, model.device_params()
    e = jnp.asarray(e)
    B = e.shape[0]
    hyps, _ = core.beam_hypotheses(program, params, e, m)  # [B, m, L]
    L = hyps.shape[-1]
    hyp_emb = core._embed_hypotheses(program, params["embedder"], hyps.reshape(B * m, L)).reshape(B, m, -1)
    cor = correctors.Corrector(program.corrector)
    flat = hyps.reshape(B * m, L)
    if program.corrector.hypothesis_start_token:
        flat = jnp.concatenate([jnp.full((B * m, 1), program.pad_id, flat.dtype), flat], axis=1)

    def init_cache(p, e, hyp_emb, flat):
        return cor.apply({"params": p["corrector"]}, jnp.repeat(e, m, axis=0), hyp_emb.reshape(B * m, -1), flat,
                         flat != program.pad_id, L, method=correctors.Corrector.init_cache)  # fmt: skip

    def propose(p, e, hyps, hyp_emb):
        return core.candidates(program, p, e, hyps, hyp_emb, m)

    cand = jax.jit(propose)(params, e, hyps, hyp_emb)  # [B, m·m, L]
    n = cand.shape[1]
    tokens = float(np.mean(np.sum(np.asarray(cand) != program.pad_id, axis=-1))) + 1  # (+ EOS) decoded per row

    def embed(p, ids):
        return core._embed_hypotheses(program, p["embedder"], ids)

    cand_emb = jax.jit(embed)(params, cand.reshape(B * n, L)).reshape(B, n, -1)
    state = types.SimpleNamespace(cos=jnp.zeros((B, m)))  # (what `_select` reads of the search state)
    first = core._first_equal(cand, jnp.ones((B, n), bool))

    def select(cand, cand_emb, first, e):
        return core._select(state, cand, cand_emb, first, e, m)

    def step(p, e, hyps, hyp_emb):
        c = core.candidates(program, p, e, hyps, hyp_emb, m)
        ce = core._embed_hypotheses(program, p["embedder"], c.reshape(B * n, L)).reshape(B, n, -1)
        return core._select(state, c, ce, core._first_equal(c, jnp.ones((B, n), bool)), e, m)

    shared = params["corrector"]["t5"]["shared"] if "t5" in params["corrector"] else None
    if shared is None:  # (the tied embedding: wherever the corrector keeps it)
        shared = next(v for k, v in jax.tree_util.tree_flatten_with_path(params["corrector"])[0]
                      if "shared" in jax.tree_util.keystr(k))  # fmt: skip
    shared = jnp.asarray(shared)
    h = jnp.ones((B * m * m, shared.shape[1]), jnp.float32)

    parts = [
        ("encoder + cross K/V (`init_cache`)", init_cache, (params, e, hyp_emb, flat), B * m),
        ("token beam: encoder + decoder + LM head (`candidates`)", propose, (params, e, hyps, hyp_emb), B * m),
        ("LM head, one token (× tokens decoded below)", lambda h, w: h @ w.T, (h, shared), B * m * m),
        (f"re-embedding the {B * n} candidates (MiniLM, {L} tokens)", embed, (params, cand.reshape(B * n, L)), B * n),
        ("scoring and gathers (`_select`)", select, (cand, cand_emb, first, e), B * n),
        ("the whole step, one program", step, (params, e, hyps, hyp_emb), B),
    ]
    rows = []
    for name, fn, args, n_rows in parts:
        seconds, flops = _timed(fn, args, repeats)
        s = statistics.median(seconds)
        rows.append({"part": name, "rows": n_rows, "s": s, "min_s": min(seconds), "max_s": max(seconds),
                     "flops": flops})  # fmt: skip
        print(f"  {name}: {s * 1e3:.1f} ms, {(flops or 0) / 1e9:.2f} GFLOP", file=sys.stderr, flush=True)
    head = rows[2]
    for key in ("s", "min_s", "max_s"):
        head[key] *= tokens
    head["flops"] = head["flops"] * tokens if head["flops"] else None
    head["part"] = f"LM head ({tokens:.1f} tokens × {B * m * m} beam rows, vocab {shared.shape[0]:,})"
    ops = _ops(propose, (params, e, hyps, hyp_emb), trace) if trace is not None else []
    t5 = program.corrector.t5
    shape = dict(d_model=t5.d_model, num_heads=t5.num_heads, d_kv=t5.d_kv, d_ff=t5.d_ff, num_layers=t5.num_layers)
    later, first = (loop_gflops(shape, s, m, B, L - 1, vocab=t5.vocab_size, decoded=tokens) for s in (2, 1))
    model_gflop = {k: later[k] - first[k] for k in later}  # one later step: B·m hypotheses, B·m·m candidates
    return rows, tokens, ops, model_gflop


def _ops(fn, args, folder: Path) -> list[dict]:
    """One traced run of `fn` (a `jax.profiler` trace under `folder`, with its Perfetto JSON): the time of each
    operation of the compiled program, summed by the source operation XLA's metadata names (`op_name`)."""
    import collections
    import gzip
    import re

    import jax

    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    with jax.profiler.trace(str(folder), create_perfetto_trace=True):
        jax.block_until_ready(compiled(*args))
    events = json.load(gzip.open(sorted(folder.rglob("*.trace.json.gz"))[-1]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    names = dict(re.findall(r'%([\w.\-]+) = [^\n]*?op_name="([^"]+)"', compiled.as_text()))
    total, calls = collections.Counter(), collections.Counter()
    for x in events:
        if x.get("ph") == "X" and x.get("name") in names:
            op = re.sub(r"^jit\([^)]*\)/", "", names[x["name"]]).replace("while/body/", "")
            total[op] += x["dur"] / 1e3
            calls[op] += 1
    return [{"op": op, "ms": ms, "calls": calls[op]} for op, ms in total.most_common(12)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--sbeam", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--trace", type=Path, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "profile_step")
    args = p.parse_args()

    from v2t_jax import api

    shipped = api.load_model()
    texts = [t for t in (ROOT / "tests" / "data" / "sentences.txt").read_text().splitlines() if t.strip()]
    e = shipped.embed_texts(texts[: args.batch])
    rate = matmul_gflops()
    print(f"matmul rate: {rate:.0f} GFLOP/s", file=sys.stderr)
    shapes = {}
    for name, model in (("shipped (d 384, vocab 30,522)", shipped), ("tiny (d 256, vocab 32,128)",
                                                                       _tiny_model(shipped.embedder))):  # fmt: skip
        print(name, file=sys.stderr)
        trace = (args.trace or Path(tempfile.mkdtemp(prefix="v2t-profile-"))) if "shipped" in name else None
        rows, tokens, ops, model_gflop = profile(model, e, args.sbeam, args.repeats, trace)
        shapes[name] = {"rows": rows, "tokens": tokens, "ops": ops, "model_gflop": model_gflop}
    command = "python experiments/profile_step.py " + " ".join(sys.argv[1:])
    out = [
        f"# One correction step, part by part\n\nCommand: `{command.strip()}` ({time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, batch {args.batch}, sbeam {args.sbeam} (token beam {args.sbeam}: "
        f"{args.batch * args.sbeam**2} candidates), medians of {args.repeats} after compiling; this machine's "
        f"jitted float32 matmul rate {rate:.0f} GFLOP/s (1024² products)). GFLOP: XLA's count of each compiled "
        "program (a loop's body counted once: the decoder's is one token; `candidates` and the step are lower "
        "bounds). Share: of the whole step's time. The parts overlap: `candidates` includes `init_cache` and "
        "the LM head.\n"
    ]
    for name, shape in shapes.items():
        rows = shape["rows"]
        whole = rows[-1]["s"]
        out.append(f"\n## {name}: {shape['tokens']:.1f} tokens decoded per candidate\n\n")
        out.append("| part | rows | ms | min–max ms | share | GFLOP | GFLOP/s | % matmul |\n" + "|---" * 8 + "|\n")
        for r in rows:
            gf = (r["flops"] or 0) / 1e9
            exact = "init_cache" in r["part"] or "LM head" in r["part"] or "re-embedding" in r["part"]
            rate_s = f"{gf / r['s']:.0f}" if exact and gf else "—"
            pct = f"{100 * gf / r['s'] / rate:.0f}%" if exact and gf else "—"
            spread = f"{r['min_s'] * 1e3:.0f}–{r['max_s'] * 1e3:.0f}" if "min_s" in r else "—"
            out.append(f"| {r['part']} | {r['rows']} | {r['s'] * 1e3:.1f} | {spread} | {100 * r['s'] / whole:.0f}% | "
                       f"{gf:.2f} | {rate_s} | {pct} |\n")  # fmt: skip
        if shape["ops"]:
            out.append("\nThe token beam (`candidates`) by XLA operation, from a `jax.profiler` trace of one run (the "
                       "12 longest, summed over the decoder's loop; `calls`: how often it ran):\n\n"
                       "| operation (XLA metadata) | ms | calls |\n|---|---|---|\n")  # fmt: skip
            out.extend(f"| `{o['op']}` | {o['ms']:.1f} | {o['calls']} |\n" for o in shape["ops"])
    out.append(
        "\n## The whole step by model FLOPs\n\nModel GFLOP: the multiply-adds a correction step must compute "
        "(`compare_vec2text.loop_gflops`, the count behind the % matmul of `compare_vec2text_cpu.md`) at the "
        "tokens its candidates decode; % matmul: that work per second over this machine's matmul rate.\n\n"
        "| shape | tokens decoded | encoder | decoder layers | LM head | embedder | model GFLOP | median s | "
        "min–max s | GFLOP/s | % matmul |\n" + "|---" * 11 + "|\n"
    )
    for name, shape in shapes.items():
        g, w = shape["model_gflop"], shape["rows"][-1]
        out.append(f"| {name} | {shape['tokens']:.1f} | {g['encoder']:.0f} | {g['decoder layers']:.0f} | "
                   f"{g['LM head']:.0f} | {g['embedder']:.0f} | {g['total']:.0f} | {w['s']:.3f} | "
                   f"{w['min_s']:.3f}–{w['max_s']:.3f} | {g['total'] / w['s']:.0f} | "
                   f"{100 * g['total'] / w['s'] / rate:.0f}% |\n")  # fmt: skip
    text = "".join(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "matmul_gflops": rate,
                                                         "shapes": shapes}, indent=1))  # fmt: skip
    print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "experiments"))
    sys.exit(main())
