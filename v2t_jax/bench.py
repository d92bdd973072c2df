"""`v2t bench`: inversions/s and peak memory of the compiled inversion over a grid of (batch, steps, beam).

Each grid point compiles once (timed apart), then runs `repeats` times on the same random unit vectors;
the table reports the median wall time, inversions/s, compile seconds and peak memory (device bytes where
the backend reports them, else the process's peak resident set). A model that re-embeds through text (its own
vocabulary, e.g. an imported vec2text gtr-base bundle) has no single compiled program: its points time the
host-side loop (`drivers.invert_host`), and "compile s" is its first run's excess over the median (the
compilations of its steps).
"""

from __future__ import annotations

import itertools
import platform
import resource
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from v2t_jax import outputs, parallel, profiling
from v2t_jax.search import strategies


def reset_peak_memory() -> None:
    """Starts a new peak-memory window: the process's peak resident set (Linux VmHWM, reset through
    /proc/self/clear_refs) and, where the backend keeps one, the device's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    for dev in jax.local_devices():
        if hasattr(dev, "reset_memory_stats"):  # not every backend has it
            try:
                dev.reset_memory_stats()
            except Exception:  # noqa: BLE001 - an optional statistic
                pass


def _peak_rss_bytes() -> tuple[int, bool]:
    """(peak resident set, whether it is the window since `reset_peak_memory` rather than the process's life)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, Path("/proc/self/clear_refs").exists()
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, False


def _peak_memory_bytes(mesh) -> tuple[int, str]:
    """The highest peak of the mesh's devices where the backend keeps one, else the process's peak resident set."""
    peaks = []
    for dev in mesh.devices.flat:
        stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    if peaks:
        return max(peaks), "device peak" if len(peaks) == 1 else "peak of one device"
    rss, windowed = _peak_rss_bytes()
    return rss, "peak RSS of this point" if windowed else "process peak RSS"


def random_model(pair):
    """A Vec2Text with randomly initialised inverter and corrector, `pair` = (inverter task, corrector task) of
    `tasks.benchmark_pair(config)`. Untrained decoders rarely emit EOS, so decoding runs its full length (beam
    search may stop early once every beam has ended): an upper bound on a trained model's time; the
    per-example early stop is off in `run`."""
    import flax.linen as nn

    from v2t_jax import api

    inv, cor = pair
    params = [
        nn.unbox(jax.jit(lambda r, t=t: t.init_variables(r, t.vocab.length))(jax.random.PRNGKey(i))["params"])
        for i, t in enumerate(pair)
    ]
    return api.build(inv.model_config, params[0], cor.model_config, params[1], inv.embedder, inv.max_length)


def random_model_of_shape(embedder, t5_config, num_repeat_tokens: int = 16, max_length: int = 32):
    """A Vec2Text with a random inverter (`PRNGKey(0)`) and corrector (`PRNGKey(1)`) of one T5 shape
    (`models.t5.t5_config`) around `embedder`: the small models of tests and benchmarks (`random_model` builds
    them from a training config instead)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from v2t_jax import api
    from v2t_jax.models import correctors, inverters

    icfg = inverters.InverterConfig(t5=t5_config, embed_dim=embedder.dim, num_repeat_tokens=num_repeat_tokens)
    ccfg = correctors.CorrectorConfig(t5=t5_config, embed_dim=embedder.dim, num_repeat_tokens=num_repeat_tokens)
    e, ids = jnp.zeros((1, embedder.dim)), jnp.zeros((1, max_length - 1), jnp.int32)
    ip = nn.unbox(inverters.Inverter(icfg).init(jax.random.PRNGKey(0), e, ids)["params"])
    cp = nn.unbox(correctors.Corrector(ccfg).init(jax.random.PRNGKey(1), e, e, ids, ids != 0, ids)["params"])
    return api.build(icfg, ip, ccfg, cp, embedder, max_length=max_length)


def run(
    model,
    batches,
    steps,
    beams,
    repeats: int = 3,
    seed: int = 0,
    progress: bool = True,
    skip_repeated: bool = False,
    profile: Path | None = None,
) -> list[dict]:
    """Times `model`'s compiled inversion over the grid, on every device of its mesh (each device inverts its
    share of a batch); the greedy step-0 points do not score their hypothesis (the inverter's work alone; with a
    token beam its candidates are scored to choose one); `skip_repeated` as in `drivers.invert` (off: the full
    loop). `beams`: sequence beam widths B (vec2text's search: token beams of B) or (B, W) pairs (token beams of
    W, `Search.token_beam`). `profile`: a `jax.profiler` trace of the timed runs of the first point goes there."""
    beams = [(k, None) if isinstance(k, int) else (k[0], k[1]) for k in beams]
    rng = np.random.default_rng(seed)
    rows = []
    grid = list(itertools.product(batches, steps, beams))
    if progress:
        from tqdm.auto import tqdm

        grid = tqdm(grid, unit="point", desc="bench", dynamic_ncols=True)
    timed = set()
    mesh = model.mesh
    devices = parallel.size(mesh)
    peak = parallel.peak_flops(mesh.devices.flat[0].device_kind)
    params = model.device_params() if model.program.in_graph else model.params
    for b, s, (k, w) in grid:
        if s > 0 and model.program.corrector is None:
            continue
        if s == 0:  # the inverter alone: its token beam (none: its greedy decode); the sequence beam does not enter
            k = 1
        search = strategies.Search(s, k, skip_repeated=skip_repeated, token_beam=w)  # (with steps BxB is B)
        if (b, s, search.beam, search.token_beam) in timed:
            continue
        timed.add((b, s, search.beam, search.token_beam))
        e = rng.normal(size=(b, model.dim)).astype(np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        t0 = time.perf_counter()
        if model.program.in_graph:
            compiled = model.compiled(b, search)
        else:
            compiled = _host_loop(model, search)
            jax.block_until_ready(compiled(params, e))
        compile_s = time.perf_counter() - t0
        times = []
        reset_peak_memory()
        with profiling.trace(profile if not rows else None):
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(params, e))
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        if not model.program.in_graph:
            compile_s = max(compile_s - med, 0.0)
        mem, mem_kind = _peak_memory_bytes(mesh)
        flops = getattr(compiled, "flops", None)  # one device's per call, XLA's count (loop bodies once)
        rows.append(
            {
                "batch": b,
                "steps": s,
                "beam": k,
                "token_beam": search.token_beam or k,
                "median_s": med,
                "inversions_per_s": b / med,
                "devices": devices,
                "inversions_per_s_per_device": b / med / devices,
                "compile_s": compile_s,
                "peak_memory_mib": mem / 2**20,
                "memory_kind": mem_kind,
                "xla_flops_per_device": flops,
                "xla_tflops_per_s": flops * devices / med / 1e12 if flops else None,
                "mfu_at_least": flops / med / peak if flops and peak else None,
                "repeats": repeats,
                "skip_repeated": skip_repeated,
            }
        )
    return rows


def _host_loop(model, search: strategies.Search):
    """(params, embeddings) -> `drivers.invert_host`'s outputs for `search` (its stop cosine ignored, as the
    compiled program's)."""
    from v2t_jax.search import drivers

    def run(params, e):
        return drivers.invert_host(model.program, params, e, search.without_stop(), model.decode, model.embed_texts)

    return run


def _maybe(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def write(rows: list[dict], out: Path, command: str, model_desc: str, mesh=None) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    where = parallel.describe(mesh if mesh is not None else parallel.local_mesh())
    peak = parallel.peak_flops(where["device"])
    meta = {
        "command": command,
        "model": model_desc,
        **where,
        "peak_flops_per_device": peak,
        "machine": platform.machine(),
        "rows": rows,
    }
    outputs.write_text_atomic(out.with_suffix(".json"), outputs.dumps(meta, indent=1) + "\n")
    lines = [
        f"# v2t bench: {model_desc}",
        "",
        f"Command: `{command}`; {where['devices']} × {where['device']} ({where['platform']}), each inverting its "
        f"share of a batch; medians of {rows[0]['repeats'] if rows else 0} runs after compile.",
        "",
        "TFLOP/s and MFU come from XLA's cost analysis of the compiled program, which counts a loop's body once "
        "(decoding, correction steps): lower bounds. "
        + (
            f"MFU against {peak / 1e12:.0f} TFLOP/s per device (dense bf16)."
            if peak
            else f"No MFU: the peak of a {where['device']} is not known."
        ),
        "",
        "| batch | steps | beam | median s | inversions/s | per device | compile s | peak memory MiB | TFLOP/s ≥ "
        "| MFU ≥ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['batch']} | {r['steps']} | {strategies.widths_label(r['beam'], r['token_beam'])} | "
        f"{r['median_s']:.3f} | "
        f"{r['inversions_per_s']:.2f} | {r['inversions_per_s_per_device']:.2f} | "
        f"{r['compile_s']:.1f} | {r['peak_memory_mib']:.0f} ({r['memory_kind']}) | "
        f"{_maybe(r['xla_tflops_per_s'], '.3f')} | {_maybe(r['mfu_at_least'], '.1%')} |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    outputs.write_text_atomic(out.with_suffix(".md"), text)
    return text
