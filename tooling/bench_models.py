"""Benchmarks for alive-models, printed as ratios measured in one run (no timed assertions anywhere).

    uv run python tooling/bench_models.py [--steps 3]

1. Activation checkpointing: memory of a few training steps of a small joint model, with / without.
   Two figures: bytes of activations kept for backward (exact, from saved-tensor hooks) and the peak
   resident memory of a fresh process running the steps (real, includes the allocator). On CUDA the
   peak is torch.cuda.max_memory_allocated instead.
2. Attention dispatch overhead: alive_models.layers.attention.attention vs calling SDPA directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from alive_models import build_model, get_preset
from alive_models.config import FusionConfig
from alive_models.flow import flow_loss
from alive_models.layers.attention import attention
from alive_models.parallel import ParallelPlan, parallelize_joint
from alive_models.testing import random_inputs, randomize_zero_inits


def bench_config():
    """Big enough that activations, not weights or the interpreter, dominate memory."""
    tiny = get_preset("tiny")
    return dataclasses.replace(
        tiny,
        video=dataclasses.replace(
            tiny.video,
            num_heads=4,
            head_dim=32,
            rope_axes_dims=(8, 12, 12),
            num_dual_blocks=3,
            num_single_blocks=5,
        ),
        audio=dataclasses.replace(tiny.audio, num_heads=4, head_dim=32, num_blocks=4),
        fusion=FusionConfig(num_heads=4, head_dim=32),
    )


def run_steps(checkpointing: bool, steps: int, device: str) -> dict[str, float]:
    config = bench_config()
    model = build_model(config, device=device, seed=0)
    randomize_zero_inits(model)
    parallelize_joint(model, None, ParallelPlan(activation_checkpointing=checkpointing, fsdp=False))
    inputs = random_inputs(
        config, batch=2, latent_frames=5, height=24, width=32, generator=torch.Generator().manual_seed(0)
    ).map(lambda x: x.to(device))
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.untyped_storage().nbytes()
        return t

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        saved = 0
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(inputs)
            loss = flow_loss(out.video, torch.zeros_like(out.video)) + flow_loss(
                out.audio, torch.zeros_like(out.audio)
            )
        loss.backward()
        model.zero_grad(set_to_none=True)
    seconds = (time.perf_counter() - start) / steps
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {"saved_bytes": saved, "peak_bytes": peak, "step_seconds": seconds}


def measure_in_fresh_process(checkpointing: bool, steps: int, device: str) -> dict[str, float]:
    """Peak RSS is per process and never goes down, so each setting runs in its own interpreter."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(int(checkpointing)),
        "--steps",
        str(steps),
        "--device",
        device,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_dispatch(repeats: int = 200) -> list[tuple[str, float]]:
    rows = []
    for name, (b, lq, h, d) in {
        "small (1x64x4x32)": (1, 64, 4, 32),
        "medium (2x1024x8x64)": (2, 1024, 8, 64),
    }.items():
        q, k, v = (torch.randn(b, lq, h, d) for _ in range(3))
        qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))

        def timed(fn, args) -> float:
            for _ in range(5):
                fn(*args)
            start = time.perf_counter()
            for _ in range(repeats):
                fn(*args)
            return (time.perf_counter() - start) / repeats

        direct = timed(F.scaled_dot_product_attention, (qt, kt, vt))
        dispatched = timed(attention, (q, k, v))
        rows.append((name, dispatched / direct))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_steps(bool(args.child), args.steps, args.device)))
        return

    without = measure_in_fresh_process(False, args.steps, args.device)
    with_ac = measure_in_fresh_process(True, args.steps, args.device)
    print(f"activation checkpointing on {args.device}, {args.steps} training steps of a small joint model")
    for label, key in (
        ("activations kept for backward", "saved_bytes"),
        ("peak process memory", "peak_bytes"),
    ):
        off, on = without[key], with_ac[key]
        print(f"  {label:<30} {off / 2**20:8.1f} MiB -> {on / 2**20:8.1f} MiB  with/without {on / off:.3f}")
    ratio = with_ac["step_seconds"] / without["step_seconds"]
    print(f"  step time ratio with/without = {ratio:.2f} (the recompute cost)")
    print("attention dispatch vs direct SDPA (time ratio, 1.00 = no overhead)")
    for name, ratio in bench_dispatch():
        print(f"  {name:<24} {ratio:.3f}")


if __name__ == "__main__":
    main()
