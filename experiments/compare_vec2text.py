"""v2t_jax against the reference vec2text 0.0.13 on one machine: the same random weights on both sides, timed
interleaved over one grid.

    bash experiments/vec2text_venv.sh                      # once: the reference's own venv (pins inside)
    python experiments/compare_vec2text.py                 # -> experiments/results/compare_vec2text_cpu.{md,json}

The reference side (experiments/vec2text_reference.py, in its venv) builds vec2text's InversionModel and
CorrectorEncoderModel around random T5 backbones (default: the reference's tiny shape, d_model 256, 4+4 layers,
untied head) decoding in the MiniLM embedder's WordPiece vocabulary, and writes them as vec2text checkpoints;
this side loads those same weights through the project's importer (`vec2text_import.model_from`). Then, for each
grid point (steps, sequence beam, batch), both sides invert the same random unit vectors `--repeats` times,
alternating reference and v2t_jax run by run so that machine load falls on both alike. The table gives medians,
the ratio, each side's peak resident memory over that point (Linux VmHWM, reset per point), the mean generated
length (tokens incl. EOS: equal work needs equal lengths; random decoders rarely stop early), the load average,
and how many texts agree between the two sides (at step 0 this is the first hypothesis on shared weights,
after correction steps the last step's top hypothesis, which is what vec2text returns; float rounding may fork
a search in near-ties).

Both sides run their whole loop: v2t_jax's early exits (`--exit`) are off unless asked for, so the comparison is
of equal work; `--exit fixed` adds the rows a user gets with the exact fixed-point exit and de-duplication.
"""

from __future__ import annotations

import argparse
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
SHAPES = {
    "tiny": dict(d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=4),
    "small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
}
# (steps, sequence beam, batch)
GRID = [(0, 1, 16), (0, 1, 64), (5, 1, 16), (5, 1, 64), (5, 4, 16), (20, 4, 16)]


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """This machine's jitted float32 matrix-product rate (GFLOP/s, median of `repeats` n×n @ n×n)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, a))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, a))
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def loop_gflops(
    t5: dict,
    steps: int,
    beam: int,
    batch: int,
    length: int = 31,
    repeat: int = 16,
    vocab: int = 30522,
    decoded: float | None = None,
) -> dict:
    """Model FLOPs of one inversion (multiply-adds × 2; what both implementations must compute), by part.

    T5 (d, h·d_kv, gated FFN d_ff, vocabulary V = 30,522): an encoder token costs layers × (8·d·hd + 6·d·ff) +
    attention; a decoded token per beam row layers × (8·d·hd self + 4·d·hd cross q/o + 6·d·ff + attention over
    its `length` self and encoder positions) + 2·d·V for the LM head; cross keys/values 4·d·hd per encoder token
    per layer. MiniLM-L6 (d 384, ff 1,536, 32 tokens): 0.69 GFLOP per embedded sequence. Step 0 is the inverter
    (R = 16 encoder positions) and its greedy decode; with correction steps its hypothesis is embedded, step 1
    decodes `beam` candidates of each example's one hypothesis, each later step `beam` of each of `beam`, from
    corrector encoder inputs of 4 + 3R + 1 + length positions (the start token leads the hypothesis), and every
    candidate is embedded. `decoded`: tokens decoded per candidate where fewer than `length` (the mean a real
    search decodes: the useful work), `vocab` the LM head's width."""
    d, hd, ff, layers = t5["d_model"], t5["num_heads"] * t5["d_kv"], t5["d_ff"], t5["num_layers"]
    V = vocab
    dec = length if decoded is None else decoded
    enc_tok = lambda n: layers * (8 * d * hd + 6 * d * ff + 4 * n * hd) + layers * 4 * d * hd  # noqa: E731
    dec_tok = lambda n: layers * (12 * d * hd + 6 * d * ff + 4 * hd * (length + n))  # noqa: E731
    head = 2 * d * V
    emb_seq = 32 * 6 * (8 * 384 * 384 + 4 * 384 * 1536 + 4 * 32 * 384)
    parts = {"encoder": 0.0, "decoder layers": 0.0, "LM head": 0.0, "embedder": 0.0}
    parts["encoder"] += batch * repeat * enc_tok(repeat)
    parts["decoder layers"] += batch * length * dec_tok(repeat)
    parts["LM head"] += batch * length * head
    if steps:
        parts["embedder"] += batch * emb_seq
        n_enc = 4 + 3 * repeat + length + 1  # the hypothesis led by the decoder start token (vec2text)
        for s in range(steps):
            rows = batch * (1 if s == 0 else beam)
            parts["encoder"] += rows * n_enc * enc_tok(n_enc)
            parts["decoder layers"] += rows * beam * dec * dec_tok(n_enc)
            parts["LM head"] += rows * beam * dec * head
            parts["embedder"] += rows * beam * emb_seq
    parts = {k: v / 1e9 for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


class Reference:
    """The vec2text server process: one JSON request per line, one JSON reply per line."""

    def __init__(self, python: Path, embedder: str, out: Path, seed: int, shape: dict, length: int, threads: int):
        cmd = [
            str(python),
            str(ROOT / "experiments" / "vec2text_reference.py"),
            "--embedder",
            embedder,
            "--out",
            str(out),
            "--seed",
            str(seed),
            "--shape",
            json.dumps(shape),
            "--length",
            str(length),
            "--threads",
            str(threads),
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.log = open(out / "reference.log", "w")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )
        self.info = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"compare_vec2text: error: the reference process stopped; see {self.log.name}")
        return json.loads(line)

    def run(self, npy: Path, steps: int, beam: int) -> dict:
        self.proc.stdin.write(json.dumps({"embeddings": str(npy), "steps": steps, "beam": beam}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


def ours_runner(model, exit_mode: str):
    """A function (embeddings, steps, beam) -> reply like the reference's, compiling once per grid point."""
    import jax

    from v2t_jax import bench
    from v2t_jax.search import strategies

    compiled: dict = {}  # (shape, steps, beam) -> (function, compile seconds)

    def run(e: np.ndarray, steps: int, beam: int) -> dict:
        key = (e.shape, steps, beam)
        if key not in compiled:
            t0 = time.perf_counter()
            fn = model.compiled(e.shape[0], strategies.Search(steps, beam, skip_repeated=exit_mode == "fixed"))
            compiled[key] = fn, time.perf_counter() - t0
        fn, compile_s = compiled[key]
        bench.reset_peak_memory()
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(model.device_params(), e))
        seconds = time.perf_counter() - t0
        ids = np.asarray(out.get("last_ids", out["ids"]))  # vec2text returns the last step's hypothesis
        rss, _ = bench._peak_rss_bytes()
        return {
            "seconds": seconds,
            "peak_rss_mib": rss / 2**20,
            "texts": [model.decode(r) for r in ids],
            "mean_tokens": float((ids != model.program.pad_id).sum(1).mean()),
            "compile_s": compile_s,
        }

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="the reference venv (experiments/vec2text_venv.sh)")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "compare_vec2text_cpu"))
    p.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--grid", default="", help="points as steps:beam:batch,... (default: the issue's grid)")
    p.add_argument("--exit", default="none", choices=["none", "fixed", "both"], help="v2t_jax early exit")
    a = p.parse_args()
    python = Path(a.venv) / "bin" / "python"
    if not python.exists():
        raise SystemExit(
            f"compare_vec2text: error: no reference venv at {a.venv}; build it with bash experiments/vec2text_venv.sh"
        )
    grid = [tuple(int(x) for x in pt.split(":")) for pt in a.grid.split(",")] if a.grid else GRID
    exits = ["none", "fixed"] if a.exit == "both" else [a.exit]

    from v2t_jax import assets
    from v2t_jax.weights import vec2text_import
    from v2t_jax.models import embedders

    embedder_folder = str(assets.resolve_embedder("all-MiniLM-L6-v2"))
    work = Path(tempfile.mkdtemp(prefix="v2t-compare-"))
    length = 32
    print(f"compare: building the reference's random models in {work} ...", flush=True)
    ref = Reference(python, embedder_folder, work, a.seed, SHAPES[a.shape], length, a.threads)
    emb = embedders.load_embedder(embedder_folder)
    model = vec2text_import.model_from(work / "inverter", work / "corrector", emb, max_length=length)
    runners = {x: ours_runner(model, x) for x in exits}
    rate = matmul_gflops()
    print(f"compare: jitted float32 matmul rate {rate:.0f} GFLOP/s", flush=True)
    rng = np.random.default_rng(a.seed)
    rows = []
    for steps, beam, batch in grid:
        e = rng.normal(size=(batch, emb.dim)).astype(np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        npy = work / f"e_{batch}.npy"
        np.save(npy, e)
        load = os.getloadavg()[0]
        for x in exits:  # compile (and warm) outside the timed runs
            runners[x](e, steps, beam)
        if steps <= 5:  # the reference's first call warms its allocator
            ref.run(npy, steps, beam)
        ours_runs, ref_runs = {x: [] for x in exits}, []
        for _ in range(a.repeats):
            ref_runs.append(ref.run(npy, steps, beam))
            for x in exits:
                ours_runs[x].append(runners[x](e, steps, beam))
        ref_s = statistics.median(r["seconds"] for r in ref_runs)
        flops = loop_gflops(SHAPES[a.shape], steps, beam, batch)
        for x in exits:
            ours = ours_runs[x]
            our_s = statistics.median(o["seconds"] for o in ours)
            agree = sum(t1 == t2 for t1, t2 in zip(ref_runs[-1]["texts"], ours[-1]["texts"]))
            rows.append(
                {
                    "steps": steps,
                    "beam": beam,
                    "batch": batch,
                    "exit": x,
                    "reference_s": ref_s,
                    "ours_s": our_s,
                    "speedup": ref_s / our_s,
                    "reference_per_s": batch / ref_s,
                    "ours_per_s": batch / our_s,
                    "reference_peak_mib": max(r["peak_rss_mib"] for r in ref_runs),
                    "ours_peak_mib": max(o["peak_rss_mib"] for o in ours),
                    "reference_tokens": ref_runs[-1]["mean_tokens"],
                    "ours_tokens": ours[-1]["mean_tokens"],
                    "agree": agree,
                    "compile_s": ours[0]["compile_s"],
                    "load": load,
                    "gflop": flops,
                    "ours_matmul_fraction": flops["total"] / our_s / rate,
                    "reference_matmul_fraction": flops["total"] / ref_s / rate,
                    "reference_runs": [r["seconds"] for r in ref_runs],
                    "ours_runs": [o["seconds"] for o in ours],
                }
            )
            print(
                f"steps {steps} beam {beam} batch {batch} exit {x}: reference {ref_s:.3f}s ours {our_s:.3f}s "
                f"-> {ref_s / our_s:.2f}x; agree {agree}/{batch}",
                flush=True,
            )
    ref.close()
    command = " ".join(["python", "experiments/compare_vec2text.py"] + sys.argv[1:])
    write(rows, Path(a.out), command, a, {**ref.info, "matmul_gflops": rate})


def write(rows: list[dict], out: Path, command: str, a, info: dict) -> None:
    import jax

    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": command,
        "shape": a.shape,
        "t5": SHAPES[a.shape],
        "repeats": a.repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "jax": jax.__version__,
        "reference": {"vec2text": "0.0.13", **info},
        "rows": rows,
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = [
        "# v2t_jax vs vec2text 0.0.13: same random weights, interleaved",
        "",
        f"Command: `{command}`. T5 `{a.shape}` {SHAPES[a.shape]}, MiniLM-L6 embedder, 32-token outputs; "
        f"{meta['machine']}; torch {info.get('torch')} with {info.get('threads')} threads, jax {jax.__version__}. "
        f"Medians of {a.repeats} runs after a warm-up; peak = resident memory over the point (VmHWM reset per point);"
        " tokens = mean generated tokens incl. EOS; agree = texts equal on both sides (last run).",
        "",
        f"GFLOP = model FLOPs of the inversion (`loop_gflops`); % matmul = GFLOP / time / this machine's jitted"
        f" float32 matmul rate ({info['matmul_gflops']:.0f} GFLOP/s, 1024² products).",
        "",
        "| steps | sbeam | batch | exit | vec2text s | v2t_jax s | speed-up | vec2text /s | v2t_jax /s "
        "| vec2text peak MiB | v2t_jax peak MiB | tokens (ref / ours) | agree | GFLOP | % matmul (ref / ours) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['steps']} | {r['beam']} | {r['batch']} | {r['exit']} | {r['reference_s']:.3f} | {r['ours_s']:.3f} | "
        f"**{r['speedup']:.2f}×** | {r['reference_per_s']:.2f} | {r['ours_per_s']:.2f} | "
        f"{r['reference_peak_mib']:.0f} | {r['ours_peak_mib']:.0f} | "
        f"{r['reference_tokens']:.1f} / {r['ours_tokens']:.1f} | {r['agree']}/{r['batch']} | "
        f"{r['gflop']['total']:.0f} | "
        f"{100 * r['reference_matmul_fraction']:.0f} / {100 * r['ours_matmul_fraction']:.0f} | {r['load']:.1f} |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
