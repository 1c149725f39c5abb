"""Benchmarks for alive-models, printed as ratios measured in one run (no timed assertions anywhere).

    uv run python tooling/bench_models.py [--steps 3] [--rounds 3] [--threads 1] [--before-src DIR]
                                          [--sections step,dispatch,ac]

1. step: forward+backward time of a training step and the host synchronisations in it, for the tiny
   preset and a medium config (4096 video tokens). With ``--before-src`` (the ``src`` directory of
   another checkout of alive-models, e.g. ``git worktree add /tmp/before <commit>``) the same
   measurement runs on that code too, in its own process, and the table shows before / after.
   Syncs are counted with ``alive_models.host_sync.HostSyncCounter`` on any device; on CUDA the
   count of ``torch.cuda.set_sync_debug_mode`` warnings is printed as well.
2. dispatch: ``alive_models.layers.attention.attention`` against calling SDPA directly, on a small
   and on real shapes, with SDPA given the same [B, L, H, D] layout (transposed views) and given
   contiguous [B, H, L, D] inputs, to separate Python overhead from layout.
3. ac: activation checkpointing: activations kept for backward and peak memory, with / without.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

HOST_SYNC = Path(__file__).resolve().parents[1] / "packages/alive-models/src/alive_models/host_sync.py"


def host_sync_counter():
    """This checkout's HostSyncCounter, loaded by path so that it also measures another checkout."""
    spec = importlib.util.spec_from_file_location("bench_host_sync", HOST_SYNC)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.HostSyncCounter


def configs():
    from alive_models import get_preset
    from alive_models.config import FusionConfig

    tiny = get_preset("tiny")
    # Only fields every version has, so the same config runs before and after.
    medium = dataclasses.replace(
        tiny,
        video=dataclasses.replace(
            tiny.video,
            num_heads=4,
            head_dim=64,
            rope_axes_dims=(16, 24, 24),
            num_dual_blocks=2,
            num_single_blocks=2,
        ),
        audio=dataclasses.replace(tiny.audio, num_heads=4, head_dim=32, num_blocks=4),
        fusion=FusionConfig(num_heads=4, head_dim=32),
    )
    # (config, batch, latent_frames, height, width): medium has 16 x 16 x 16 = 4096 video tokens.
    return {"tiny": (tiny, 2, 3, 4, 6), "medium": (medium, 1, 16, 32, 32)}


def step_inputs(config, batch, frames, height, width, device):
    from alive_models.testing import random_inputs

    inputs = random_inputs(
        config,
        batch,
        frames,
        height,
        width,
        i2v=True,
        references=1,
        generator=torch.Generator().manual_seed(0),
    )
    # What training feeds: padded captions, and "mutual" on for some samples only.
    inputs.mutual = torch.arange(batch) % 2 == 0
    inputs.video_text_masks = [
        torch.arange(t.shape[1]).expand(batch, -1) < t.shape[1] - 2 for t in inputs.video_texts
    ]
    inputs.audio_caption_mask = torch.arange(inputs.audio_caption.shape[1]).expand(batch, -1) < 5
    return inputs.map(lambda x: x.to(device))


def clock(device: str) -> float:
    """Wall time on an accelerator; on the CPU this process's CPU time, which (with one thread) is
    the compute the step needs, unaffected by other work on a shared machine."""
    return time.perf_counter() if device != "cpu" else time.process_time()


def measure_step(name: str, steps: int, device: str) -> dict:
    """One configuration on the alive_models this process imports (before or after)."""
    from alive_models import build_model
    from alive_models.flow import flow_loss
    from alive_models.testing import randomize_zero_inits

    config, *shape = configs()[name]
    model = build_model(config, device=device, seed=0)
    randomize_zero_inits(model)
    inputs = step_inputs(config, *shape, device)

    def step() -> None:
        out = model(inputs)
        loss = flow_loss(out.video, torch.zeros_like(out.video)) + flow_loss(
            out.audio, torch.zeros_like(out.audio)
        )
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, caches
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = clock(device)
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(clock(device) - start)
    counter = host_sync_counter()
    with counter() as forward_syncs, torch.no_grad():
        model(inputs)
    with counter() as step_syncs:
        step()
    result = {
        "step_ms": 1000 * statistics.median(times),
        "forward_syncs": forward_syncs.count,
        "step_syncs": step_syncs.count,
        "sync_sites": sorted({e.split(" at ")[1] for e in step_syncs.events}),
    }
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
        torch.cuda.set_sync_debug_mode(0)
        result["cuda_sync_warnings"] = len(caught)
    return result


def run_child(args: list[str], src: str | None) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()), "--child", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_step(steps: int, rounds: int, device: str, before_src: str | None) -> None:
    versions = {"after": None} if before_src is None else {"before": before_src, "after": None}
    print(
        f"training step (forward+backward) on {device} ({'wall' if device != 'cpu' else 'process CPU'} "
        f"time): best of {rounds} alternating runs of the median of {steps} steps; host syncs counted"
    )
    for name in configs():
        runs = {v: [] for v in versions}
        for _ in range(rounds):  # alternate, so load on a shared machine hits both alike
            for version, src in versions.items():
                runs[version].append(
                    run_child(["step", name, "--steps", str(steps), "--device", device], src)
                )
        rows = {v: min(r, key=lambda x: x["step_ms"]) for v, r in runs.items()}
        for version, r in rows.items():
            extra = f"  cuda sync warnings {r['cuda_sync_warnings']}" if "cuda_sync_warnings" in r else ""
            print(
                f"  {name:<7} {version:<7} {r['step_ms']:9.1f} ms   syncs: forward {r['forward_syncs']:3d}, "
                f"forward+backward {r['step_syncs']:3d}{extra}"
            )
            if r["sync_sites"]:
                print(f"                  at {', '.join(r['sync_sites'])}")
        if "before" in rows:
            ratio = rows["after"]["step_ms"] / rows["before"]["step_ms"]
            print(f"  {name:<7} after/before step time = {ratio:.2f}")


def bench_dispatch(device: str) -> None:
    from alive_models.layers.attention import attention

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shapes = {"small (1x64x4x32)": ((1, 64, 4, 32), 300), "medium (1x4608x4x64)": ((1, 4608, 4, 64), 5)}
    if device == "cuda":
        shapes["alive-14b 480p 5 s (1x49k x24x128)"] = ((1, 48_872, 24, 128), 5)

    def timed(fn, args, repeats) -> float:
        for _ in range(3):
            fn(*args)
        if device == "cuda":
            torch.cuda.synchronize()
        start = clock(device)
        for _ in range(repeats):
            fn(*args)
        if device == "cuda":
            torch.cuda.synchronize()
        return (clock(device) - start) / repeats

    def same_layout(q, k, v):
        return F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        ).transpose(1, 2)

    print(f"attention dispatch vs direct SDPA on {device} ({dtype}): time ratio, 1.00 = no overhead")
    for name, (shape, repeats) in shapes.items():
        q, k, v = (torch.randn(*shape, device=device, dtype=dtype) for _ in range(3))
        contiguous = tuple(x.transpose(1, 2).contiguous() for x in (q, k, v))
        direct = timed(F.scaled_dot_product_attention, contiguous, repeats)
        layout = timed(same_layout, (q, k, v), repeats)
        dispatched = timed(attention, (q, k, v), repeats)
        print(
            f"  {name:<36} dispatch/same-layout {dispatched / layout:.3f}   dispatch/contiguous "
            f"{dispatched / direct:.3f}   ({dispatched * 1e6:.0f} us vs {layout * 1e6:.0f} us)"
        )


def ac_config():
    """Big enough that activations, not weights or the interpreter, dominate memory."""
    return configs()["medium"][0]


def measure_ac(checkpointing: bool, steps: int, device: str) -> dict[str, float]:
    from alive_models import build_model
    from alive_models.flow import flow_loss
    from alive_models.parallel import ParallelPlan, parallelize_joint
    from alive_models.testing import random_inputs, randomize_zero_inits

    config = ac_config()
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


def bench_ac(steps: int, device: str) -> None:
    # Peak RSS is per process and never goes down, so each setting runs in its own interpreter.
    without = run_child(["ac", "0", "--steps", str(steps), "--device", device], None)
    with_ac = run_child(["ac", "1", "--steps", str(steps), "--device", device], None)
    print(f"activation checkpointing on {device}, {steps} training steps of a small joint model")
    for label, key in (
        ("activations kept for backward", "saved_bytes"),
        ("peak process memory", "peak_bytes"),
    ):
        off, on = without[key], with_ac[key]
        print(f"  {label:<30} {off / 2**20:8.1f} MiB -> {on / 2**20:8.1f} MiB  with/without {on / off:.3f}")
    ratio = with_ac["step_seconds"] / without["step_seconds"]
    print(f"  step time ratio with/without = {ratio:.2f} (the recompute cost)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternating before/after runs (step)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier on a shared box)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--before-src", default=None, help="src dir of another alive-models checkout")
    parser.add_argument("--sections", default="step,dispatch,ac")
    parser.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.child is not None:
        kind, value = args.child
        if kind == "step":
            print(json.dumps(measure_step(value, args.steps, args.device)))
        else:
            print(json.dumps(measure_ac(bool(int(value)), args.steps, args.device)))
        return
    sections = args.sections.split(",")
    if "step" in sections:
        bench_step(args.steps, args.rounds, args.device, args.before_src)
    if "dispatch" in sections:
        bench_dispatch(args.device)
    if "ac" in sections:
        bench_ac(args.steps, args.device)


if __name__ == "__main__":
    main()
