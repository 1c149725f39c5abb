"""Benchmarks for alive-train, printed as ratios measured in one run (no timed assertions anywhere).

    uv run python tooling/bench_train.py [--steps 30] [--rounds 3] [--workers 0 1 2]

1. Framework overhead: the median step time of the joint stage (Lightning Trainer, AliveStrategy,
   the stage module: adapter, masked losses, non-finite guard and pre-emption all-reduce, EMA, loss
   bookkeeping, logging every 10 steps) against a plain PyTorch loop doing the same work (adapter,
   forward, losses, backward, clipping, AdamW, EMA) on the same FSDP2-wrapped model and the same
   batch. Rounds alternate between the two, to share the machine's noise. Target: under 3%.
   Also shown: the plain loop on the unwrapped model (what FSDP2 costs on one rank).
2. Data: samples/s of the stage's pipeline (cached latents from real shards, N workers) against the
   samples/s the model consumes in training steps.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from alive_data.batch import AVBatch
from alive_data.loader import ResumableLoader
from alive_data.stream import AVStream
from alive_models import build_model
from alive_models.flow import flow_loss
from alive_train.callbacks import Checkpointing
from alive_train.config import load_config
from alive_train.ema import ShardedEMA
from alive_train.module import build_optimizer, build_stage
from alive_train.param_groups import optimizer_groups, resolve_param_groups
from alive_train.run import build_trainer
from alive_train.testing import write_stage, write_test_data

# Wider than the test model, so a step is compute, not interpreter: 128-wide towers, 6 video blocks.
BENCH_MODEL = {
    "video": {
        "num_heads": 4,
        "head_dim": 32,
        "rope_axes_dims": [8, 12, 12],
        "num_dual_blocks": 2,
        "num_single_blocks": 4,
    },
    "audio": {"num_heads": 4, "head_dim": 32, "num_blocks": 4},
    "fusion": {"num_heads": 4, "head_dim": 32},
}


class StepTimes(Callback):
    """Wall time between consecutive batch starts: everything one step costs, hooks included."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, *args) -> None:
        self.starts.append(time.perf_counter())

    def steps(self, skip: int) -> list[float]:
        return [b - a for a, b in zip(self.starts[skip:], self.starts[skip + 1 :], strict=False)]


class OneBatch(L.LightningDataModule):
    """The same real batch, forever (the loader is measured on its own, in part 2)."""

    def __init__(self, batch: AVBatch) -> None:
        super().__init__()
        self.batch = batch

    def train_dataloader(self):
        def forever():
            while True:
                yield copy.copy(self.batch)

        return forever()


def stage_steps(config, batch: AVBatch, steps: int, warmup: int) -> tuple[list[float], object]:
    timer = StepTimes()
    trainer = build_trainer(config, Checkpointing(config.checkpoint.dir, 10**9, 1))
    trainer.callbacks.append(timer)
    trainer.fit_loop.epoch_loop.max_steps = steps + warmup
    with trainer.init_module(empty_init=True):
        module = build_stage(config)
    trainer.fit(module, datamodule=OneBatch(batch))
    return timer.steps(warmup), module


def plain_steps(module, model, batch: AVBatch, steps: int, warmup: int) -> list[float]:
    """The loop one would write by hand: same adapter, losses, clipping, AdamW and EMA."""
    config = module.config
    groups = resolve_param_groups(model, config.optim)
    optimizer = build_optimizer(optimizer_groups(groups), config.optim)
    ema = ShardedEMA(model, config.ema.decay, config.ema.warmup)
    params = [p for g in groups if not g.frozen for p in g.params]
    times = []
    for step in range(steps + warmup):
        start = time.perf_counter()
        fb = module.adapter(batch, torch.Generator().manual_seed(step), "cpu")
        out = model(fb.inputs)
        loss = flow_loss(out.video, fb.target_video, fb.video_loss_mask) + flow_loss(
            out.audio, fb.target_audio, fb.audio_loss_mask
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def loader_rate(config, workers: int, batches: int) -> float:
    loader = ResumableLoader(AVStream(config.pipeline()), num_workers=workers)
    seen, start, it = 0, None, iter(loader)
    for _ in range(batches + 2):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        if start is None:  # the first batch pays for worker start-up
            start = time.perf_counter()
            continue
        seen += batch.batch_size
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="bench_train_"))
    shards, text = write_test_data(root / "data", clips=24)
    path = write_stage(
        root / "stage.yaml",
        shards,
        text,
        model={"preset": "tiny", "overrides": _bench_overrides()},
        trainer={"accelerator": "cpu", "devices": 1, "log_every_n_steps": 10, "progress_bar": False},
        tracking={"uri": f"sqlite:///{root / 'mlflow.db'}"},
    )
    config = load_config(path, ["ema.decay=0.999"])
    batch = next(iter(ResumableLoader(AVStream(config.pipeline()), num_workers=0)))
    dist.init_process_group("gloo", init_method=f"file://{root / 'pg'}", rank=0, world_size=1)

    stage, plain, unwrapped, ratios = [], [], [], []
    for round_ in range(args.rounds + 1):  # round 0 warms caches and allocators; not counted
        times, module = stage_steps(config, batch, args.steps, args.warmup)
        plain_times = plain_steps(module, module.model, batch, args.steps, args.warmup)
        bare = build_model(module.joint_config, seed=0)
        bare_times = plain_steps(module, bare, batch, args.steps, args.warmup)
        if round_ == 0:
            continue
        stage += times
        plain += plain_times
        unwrapped += bare_times
        ratios.append(statistics.median(times) / statistics.median(plain_times))
    s, p, u = (statistics.median(x) for x in (stage, plain, unwrapped))
    params = sum(t.numel() for t in module.model.parameters())
    print(f"model: {params:,} parameters, batch {batch.batch_size}")
    print(
        f"step time, median of {len(stage)} steps in {args.rounds} alternating rounds after a warm-up round:"
    )
    print(f"  stage (Lightning + alive-train)  {s * 1e3:8.2f} ms")
    print(f"  plain loop, same FSDP2 model     {p * 1e3:8.2f} ms")
    print(f"  plain loop, unwrapped model      {u * 1e3:8.2f} ms")
    overhead = f"{s / p:.3f} ({(s / p - 1) * 100:+.1f}%; target < +3%)"
    print(f"framework overhead (stage / plain, same model): {overhead}")
    print(f"  per round: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"FSDP2 on one rank (plain FSDP2 / plain unwrapped): {p / u:.3f}")
    consumed = batch.batch_size / s
    print(f"model consumes {consumed:.2f} samples/s")
    for workers in args.workers:
        rate = loader_rate(config, workers, batches=20)
        print(f"  loader, {workers} worker(s): {rate:8.2f} samples/s = {rate / consumed:.2f}x consumption")


def _bench_overrides() -> dict:
    from alive_train.testing import TINY_MODEL

    merged = copy.deepcopy(TINY_MODEL["overrides"])
    for tower, values in BENCH_MODEL.items():
        merged.setdefault(tower, {}).update(values)
    return merged


if __name__ == "__main__":
    main()
