"""Training throughput: our jitted inverter train step vs PyTorch transformers T5 + AdamW, same run.

    python experiments/bench_train.py [--size tiny] [--batch-size 64] [--steps 20] [--torch-threads 2]

Same T5 shape (v1.1: gated-GELU, untied head), the embedder's vocabulary (30,522), the inverter's
encoder input (16 projected vectors from a 384-d embedding) and 31 decoder tokens; AdamW with global
norm clipping on both sides; float32. Tokens/s counts decoder target tokens. Medians over steps after
warm-up (JAX compile excluded and reported apart).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def bench_jax(args) -> dict:
    import flax.linen as nn
    import jax
    import numpy as np

    from v2t_jax.training import config_loading, sharding, train

    config = config_loading.load(str(HERE.parent / "configs" / "inverter.py") + ":cpu_small")
    config.t5.size = args.size
    config.batch_size = args.batch_size
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    batch = {
        "embeddings": rng.normal(size=(args.batch_size, 384)).astype(np.float32),
        "labels": rng.integers(1000, 30000, size=(args.batch_size, 31)).astype(np.int32),
        "mask": np.ones((args.batch_size, 31), np.int32),
    }
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        s = train.build_from_config(config, mesh, 384, 30522)
        state = s.init_fn(jax.random.PRNGKey(0))
        b = {k: jax.device_put(v, s.batch_sh[k]) for k, v in batch.items()}
        t0 = time.perf_counter()
        state, aux = s.train_step(state, b, 1.0)
        jax.block_until_ready(aux)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, aux = s.train_step(state, b, 1.0)
            jax.block_until_ready(aux)
            times.append(time.perf_counter() - t0)
    return {
        "median_step_s": statistics.median(times),
        "compile_s": compile_s,
        "params": s.n_params,
        "device": jax.devices()[0].device_kind,
    }


def bench_torch(args) -> dict:
    import torch
    import transformers

    from v2t_jax.models import t5 as t5_lib

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    ours = t5_lib.t5_config(args.size, "v1.1", vocab_size=30522)
    cfg = transformers.T5Config(
        vocab_size=30522,
        d_model=ours.d_model,
        d_kv=ours.d_kv,
        d_ff=ours.d_ff,
        num_layers=ours.num_layers,
        num_heads=ours.num_heads,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        dropout_rate=0.1,
    )
    device = "cuda" if args.torch_device == "cuda" else "cpu"
    if device == "cuda":  # JAX's default float32 matmuls on GPUs use TF32; let PyTorch do the same
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = transformers.T5ForConditionalGeneration(cfg).to(device).train()
    model.lm_head = torch.nn.Linear(ours.d_model, 30522, bias=False).to(device)  # untied, as ours
    transform = torch.nn.Sequential(
        torch.nn.Linear(384, 384), torch.nn.Dropout(0.1), torch.nn.GELU(), torch.nn.Linear(384, ours.d_model * 16)
    ).to(device)
    params = list(model.parameters()) + list(transform.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    emb = torch.randn(args.batch_size, 384, device=device)
    labels = torch.randint(1000, 30000, (args.batch_size, 31), device=device)

    def step():
        x = transform(emb).view(args.batch_size, 16, ours.d_model)
        loss = model(inputs_embeds=x, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step().item()  # .item() waits for the GPU
        times.append(time.perf_counter() - t0)
    return {
        "median_step_s": statistics.median(times),
        "params": sum(p.numel() for p in params),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu, {args.torch_threads} threads",
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--torch-device", default="cpu")
    p.add_argument("--out", default=str(HERE / "results" / "bench_train"))
    args = p.parse_args(argv)
    j, t = bench_jax(args), bench_torch(args)
    tokens = args.batch_size * 31
    res = {
        "command": "python experiments/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}",
        "size": args.size,
        "batch_size": args.batch_size,
        "jax": j,
        "torch": t,
        "jax_tokens_per_s": tokens / j["median_step_s"],
        "torch_tokens_per_s": tokens / t["median_step_s"],
        "ratio": t["median_step_s"] / j["median_step_s"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md = [
        f"# Inverter train step: T5 {args.size} (v1.1), batch {args.batch_size}, 16 encoder / 31 decoder tokens",
        "",
        f"Command: `{res['command'].strip()}`; medians of {args.steps} steps after warm-up.",
        "",
        "| implementation | params | median step s | target tokens/s |",
        "|---|---|---|---|",
        f"| v2t_jax ({j['device']}) | {j['params'] / 1e6:.1f}M | {j['median_step_s']:.3f} | "
        f"{res['jax_tokens_per_s']:.0f} |",
        f"| PyTorch transformers T5 + AdamW ({t['device']}) | {t['params'] / 1e6:.1f}M | {t['median_step_s']:.3f} | "
        f"{res['torch_tokens_per_s']:.0f} |",
        "",
        f"- ratio (ours / PyTorch tokens/s): **{res['ratio']:.2f}x**; JAX compile: {j['compile_s']:.1f} s",
    ]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
