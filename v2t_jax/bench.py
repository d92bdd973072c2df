"""`v2t bench`: inversions/s and peak memory of the compiled inversion over a grid of (batch, steps, beam).

Each grid point compiles once (timed apart), then runs `repeats` times on the same random unit vectors;
the table reports the median wall time, inversions/s, compile seconds and peak memory (device bytes where
the backend reports them, else the process's peak resident set).
"""

from __future__ import annotations

import itertools
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import jax
import numpy as np


def _peak_memory_bytes() -> tuple[int, str]:
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def run(model, batches, steps, beams, repeats: int = 3, seed: int = 0, progress: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    grid = list(itertools.product(batches, steps, beams))
    if progress:
        from tqdm.auto import tqdm

        grid = tqdm(grid, unit="point", desc="bench", dynamic_ncols=True)
    for b, s, k in grid:
        if s > 0 and model.program.corrector is None:
            continue
        e = rng.normal(size=(b, model.dim)).astype(np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        stop = 2.0
        t0 = time.perf_counter()
        compiled = model._run.lower(model.program, model.params, e, s, k, stop).compile()
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(model.params, e, stop))
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        mem, mem_kind = _peak_memory_bytes()
        rows.append(
            {
                "batch": b,
                "steps": s,
                "beam": k,
                "median_s": med,
                "inversions_per_s": b / med,
                "compile_s": compile_s,
                "peak_memory_mib": mem / 2**20,
                "memory_kind": mem_kind,
                "repeats": repeats,
            }
        )
    return rows


def write(rows: list[dict], out: Path, command: str, model_desc: str) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": command,
        "model": model_desc,
        "device": jax.devices()[0].device_kind,
        "machine": platform.machine(),
        "rows": rows,
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = [
        f"# v2t bench: {model_desc}",
        "",
        f"Command: `{command}`; device: {meta['device']}; "
        f"medians of {rows[0]['repeats'] if rows else 0} runs after compile.",
        "",
        "| batch | steps | beam | median s | inversions/s | compile s | peak memory MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['batch']} | {r['steps']} | {r['beam']} | {r['median_s']:.3f} | {r['inversions_per_s']:.2f} | "
        f"{r['compile_s']:.1f} | {r['peak_memory_mib']:.0f} ({r['memory_kind']}) |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    return text
