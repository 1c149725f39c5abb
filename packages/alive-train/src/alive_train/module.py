"""The shared base LightningModule of every stage, and the joint stage (T2VA / I2VA / CT / SFT).

The base owns what every stage does the same way: the model on the shared FSDP2 plan, parameter
groups, the batch adapter, the flow-matching loss per modality with per-sample masks and weights,
seeded noise, the sharded EMA, the non-finite-loss guard, the pre-emption agreement and logging. A
stage class overrides only what its config cannot say (:meth:`StageModule.flow_batch`,
:meth:`StageModule.losses`).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

from alive_models import JointAVDiT, JointConfig, JointOutputs, get_preset, materialize
from alive_models.codecs import audio_codec_from_spec, video_codec_from_spec
from alive_models.flops import forward_flops
from alive_models.flow import flow_loss
from alive_models.parallel import ParallelPlan, parallelize_joint
from alive_train import preemption
from alive_train.adapter import TASK_NAMES, BatchAdapter, FlowBatch
from alive_train.config import ModelConfig, OptimConfig, StageConfig
from alive_train.ema import ShardedEMA
from alive_train.metrics import LossTracker, ThroughputMeter
from alive_train.param_groups import ResolvedGroup, optimizer_groups, resolve_param_groups
from alive_train.strategy import INFO, SHARDED_EXTRA
from alive_train.weights import load_init_weights


def joint_config(model: ModelConfig) -> JointConfig:
    """A preset with the config's nested overrides applied."""

    def merge(base: dict, extra: dict) -> dict:
        out = dict(base)
        for key, value in extra.items():
            out[key] = (
                merge(out[key], value)
                if isinstance(value, dict) and isinstance(out.get(key), dict)
                else value
            )
        return out

    return JointConfig.from_dict(merge(get_preset(model.preset).to_dict(), dict(model.overrides)))


def build_optimizer(groups: list[dict], config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over torch parameter groups (each with its own lr and weight decay)."""
    kind = {"foreach": {"foreach": True}, "fused": {"fused": True}, "auto": {}}[config.implementation]
    return torch.optim.AdamW(
        groups, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay, **kind
    )


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


class StageModule(L.LightningModule):
    """Base of every stage. Build it under ``trainer.init_module(empty_init=True)``: the model is
    created on the meta device and materialised shard by shard in :meth:`configure_model`.

    ``resuming``: a checkpoint will be loaded, so ``init_from`` is not read.
    """

    def __init__(self, config: StageConfig, resuming: bool = False) -> None:
        super().__init__()
        self.config = config
        self.joint_config = joint_config(config.model)
        self.model = JointAVDiT(self.joint_config)
        self.resuming = resuming
        self.ema: ShardedEMA | None = None
        self.adapter: BatchAdapter | None = None
        self.param_groups: list[ResolvedGroup] = []
        self.init_report = None
        # Robustness and pre-emption state.
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self.stop_reason: str | None = None
        self.preempt_signal: threading.Event = preemption.REQUESTED
        self.preempt_requested = False
        self.preempted = False
        self.run_info: dict[str, Any] = {}  # MLflow run and code version, recorded in checkpoints
        self._skipped = False
        self._configured = False
        self._last_logged = -1
        self._ema_decay = float("nan")
        self._grad_norms: list[Tensor] = []

    # -- model -----------------------------------------------------------------------------------
    @property
    def on_gpu_device(self) -> bool:
        return self.trainer.strategy.root_device.type == "cuda"

    def parallel_plan(self) -> ParallelPlan:
        p = self.config.parallel
        gpu = self.on_gpu_device
        return ParallelPlan(
            activation_checkpointing=p.activation_checkpointing,
            compile=p.compile,
            param_dtype=getattr(torch, p.param_dtype) if gpu else None,  # fp32 compute on CPU
            reduce_dtype=getattr(torch, p.reduce_dtype) if gpu else None,
            reshard_after_forward=p.reshard_after_forward,
        )

    def configure_model(self) -> None:
        """Freeze, shard, materialise, load ``init_from``, start the EMA. Idempotent."""
        if self._configured:
            return
        c = self.config
        resolve_param_groups(self.model, c.optim)  # requires_grad before sharding
        mesh = self.device_mesh["data_parallel"] if self._device_mesh is not None else None
        parallelize_joint(self.model, mesh, self.parallel_plan())
        materialize(self.model, self.trainer.strategy.root_device, seed=c.run.seed)
        if c.init_from and not self.resuming:
            self.init_report = load_init_weights(self.model, list(c.init_from))
            if self.trainer.is_global_zero:
                print(self.init_report.summary(), flush=True)
        self.param_groups = resolve_param_groups(self.model, c.optim)
        if c.ema.enabled:
            self.ema = ShardedEMA(self.model, c.ema.decay, c.ema.warmup)
        self._configured = True

    def sharded_extra_state(self) -> dict[str, dict[str, Tensor]]:
        """Tensors saved and loaded with the model's shards (the strategy reads this)."""
        return {"ema": self.ema.state_dict()} if self.ema is not None else {}

    # -- data and conditioning -----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.adapter is not None:
            return
        c = self.config
        device = self.trainer.strategy.root_device
        text = None
        if c.text.t5 is not None:
            from alive_models.text import TextConditioner

            dtype = getattr(torch, c.text.dtype) if device.type == "cuda" else torch.float32
            # Loading adds the <W>/<I> tokens to the Qwen vocabulary with randomly initialised
            # embeddings: seed it, or every process (rank, resumed run) would encode differently.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(c.run.seed)
                text = TextConditioner.from_pretrained(
                    c.text.t5,
                    c.text.qwen,
                    c.text.transcript,
                    dtype=dtype,
                    device=device,
                    max_length=c.text.max_length,
                )
        cached = c.pipeline().latents is not None
        self.adapter = BatchAdapter(
            self.joint_config,
            c.flow,
            text,
            None if cached else video_codec_from_spec(c.codecs.video, device=device),
            None if cached else audio_codec_from_spec(c.codecs.audio, device=device),
            caption=c.text.caption,
        )
        self.loss_tracker = LossTracker(TASK_NAMES, device)
        peak = c.monitor.peak_tflops * 1e12 if c.monitor.peak_tflops else self._device_peak(device)
        self.throughput = ThroughputMeter(self.trainer.world_size, c.monitor.window, peak)

    def _device_peak(self, device: torch.device) -> float | None:
        if device.type != "cuda":
            return None
        from lightning.fabric.utilities.throughput import get_available_flops

        return get_available_flops(device, getattr(torch, self.config.parallel.param_dtype))

    def flow_batch(self, batch: Any, generator: torch.Generator) -> FlowBatch:
        """Data batch -> model inputs and targets. Stages with special inputs override this."""
        return self.adapter(batch, generator, self.trainer.strategy.root_device)

    def step_generator(self, batch_idx: int) -> torch.Generator:
        """Noise and times of a step depend only on (seed, rank, step, micro-batch): resumable exactly."""
        device = self.trainer.strategy.root_device
        micro = batch_idx % self.trainer.accumulate_grad_batches
        generator = torch.Generator(device=device)
        generator.manual_seed(_seed(self.config.run.seed, self.global_rank, self.global_step, micro))
        return generator

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        c = self.config.optim
        groups = optimizer_groups(self.param_groups)
        if not groups:
            raise ValueError("no trainable parameters: every parameter group is frozen")
        optimizer = build_optimizer(groups, c)
        total = self.config.max_steps(self.trainer.world_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(step, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_factor(self, step: int, total: int) -> float:
        """Linear warm-up to the configured rates, then constant or cosine down to ``min_lr_ratio``."""
        c = self.config.optim
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - c.warmup_steps) / max(1, total - c.warmup_steps))
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        max_norm = self.config.optim.grad_clip or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        self._grad_norms.append((norm.full_tensor() if isinstance(norm, DTensor) else norm).detach())

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None and not self._skipped:
            self._ema_decay = self.ema.update()

    # -- the step ------------------------------------------------------------------------------
    def losses(self, batch: FlowBatch, out: JointOutputs) -> dict[str, Tensor]:
        """Per-modality flow-matching losses (masked means over samples) and their weighted sum."""
        video = flow_loss(out.video, batch.target_video, batch.video_loss_mask)
        audio = flow_loss(out.audio, batch.target_audio, batch.audio_loss_mask)
        total = self.config.loss.video_weight * video + self.config.loss.audio_weight * audio
        return {"video": video, "audio": audio, "total": total}

    def _agree(self, nonfinite: Tensor) -> tuple[bool, bool]:
        """(any rank's loss non-finite, any rank pre-empted): one small all-reduce per step."""
        flags = torch.stack(
            [nonfinite.float(), torch.tensor(float(self.preempt_signal.is_set()), device=nonfinite.device)]
        )
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad, preempt = flags.tolist()
        return bool(bad), bool(preempt)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        fb = self.flow_batch(batch, self.step_generator(batch_idx))
        out = self.model(fb.inputs)
        losses = self.losses(fb, out)
        mutual = fb.inputs.mutual is None or bool(fb.inputs.mutual.any())
        self.throughput.add_step(
            fb.size,
            fb.tokens(self.joint_config.video.patch_size),
            forward_flops(self.joint_config, fb.lengths, fb.size, mutual),
        )
        nonfinite, preempt = self._agree(~torch.isfinite(losses["total"]))
        self.preempt_requested = self.preempt_requested or preempt
        self._skipped = nonfinite
        if nonfinite:  # every rank skips backward and the optimizer step together
            self.nonfinite_total += 1
            self.nonfinite_in_a_row += 1
            limit = self.config.monitor.max_nonfinite_in_a_row
            print(
                f"rank {self.global_rank}: non-finite loss at step {self.global_step} "
                f"({self.nonfinite_in_a_row} in a row, {self.nonfinite_total} in total): step skipped",
                flush=True,
            )
            if self.nonfinite_in_a_row >= limit:
                self.stop_reason = (
                    f"{self.nonfinite_in_a_row} non-finite losses in a row (limit {limit}) "
                    f"at step {self.global_step}"
                )
            return None
        self.nonfinite_in_a_row = 0
        self.loss_tracker.add("video", out.video, fb.target_video, fb.video_loss_mask, fb.tasks)
        self.loss_tracker.add("audio", out.audio, fb.target_audio, fb.audio_loss_mask, fb.tasks)
        self.loss_tracker.add_total(losses["total"])
        self.log("loss_v", losses["video"].detach(), prog_bar=True, logger=False)
        self.log("loss_a", losses["audio"].detach(), prog_bar=True, logger=False)
        return losses["total"]

    # -- logging -------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.throughput.start(time.perf_counter())

    def pause_throughput_clock(self, seconds: float) -> None:
        self.throughput.pause(seconds)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step
        if step == self._last_logged or step % self.trainer.log_every_n_steps != 0:
            return
        self._last_logged = step
        metrics = self.loss_tracker.flush()  # collective: every rank is here at the same step
        datamodule = self.trainer.datamodule
        skips = datamodule.skip_counts() if hasattr(datamodule, "skip_counts") else {}
        if self.on_gpu_device:
            torch.cuda.synchronize()
        metrics.update(self.throughput.compute(time.perf_counter()))
        for group in self.trainer.optimizers[0].param_groups:
            metrics[f"lr/{group['name']}"] = group["lr"]
        if self._grad_norms:
            metrics["train/grad_norm"] = torch.stack(self._grad_norms).mean().item()
            self._grad_norms.clear()
        metrics["train/nonfinite_skipped"] = self.nonfinite_total
        if self.ema is not None:
            metrics["train/ema_decay"] = self._ema_decay
        if hasattr(datamodule, "epoch"):
            metrics["data/epoch"] = datamodule.epoch
        for reason, count in skips.items():
            metrics[f"data/{'kept' if reason == 'kept' else 'skipped/' + reason}"] = count
        if "throughput/samples_per_sec" in metrics:
            self.log(
                "samples/s",
                metrics["throughput/samples_per_sec"],
                prog_bar=True,
                logger=False,
                rank_zero_only=True,
            )
        if self.trainer.is_global_zero:
            if self.logger is not None:
                self.logger.log_metrics(metrics, step=step)
            if not self.config.trainer.progress_bar:  # batch jobs: one plain line per log interval
                print(progress_line(step, metrics), flush=True)

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint[SHARDED_EXTRA] = self.sharded_extra_state()
        rng = {"cpu": torch.get_rng_state()}
        if self.on_gpu_device:
            rng["cuda"] = torch.cuda.get_rng_state()
        gathered: list[Any] = [rng]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, rng)
        checkpoint["alive"] = {
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "rng": gathered,
        }
        checkpoint[INFO] = {
            "stage": self.config.stage,
            "step": self.global_step,
            "model_config": self.joint_config.to_dict(),
            "ema": self.ema is not None,
            **self.run_info,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("alive", {})
        self.nonfinite_total = state.get("nonfinite_total", 0)
        self.nonfinite_in_a_row = state.get("nonfinite_in_a_row", 0)
        if self.ema is not None:
            self.ema.updates = state.get("ema_updates", 0)
        rng = state.get("rng", [])
        if len(rng) == self.trainer.world_size:
            torch.set_rng_state(rng[self.global_rank]["cpu"])
            if self.on_gpu_device and "cuda" in rng[self.global_rank]:
                torch.cuda.set_rng_state(rng[self.global_rank]["cuda"])


def progress_line(step: int, metrics: dict[str, float]) -> str:
    parts = [f"step {step}"]
    for key, label in (("loss/total", "loss"), ("loss/video", "video"), ("loss/audio", "audio")):
        if key in metrics:
            parts.append(f"{label} {metrics[key]:.4f}")
    if "throughput/samples_per_sec" in metrics:
        parts.append(f"{metrics['throughput/samples_per_sec']:.2f} samples/s")
    if "throughput/mfu" in metrics:
        parts.append(f"MFU {100 * metrics['throughput/mfu']:.1f}%")
    return "  ".join(parts)


class JointStage(StageModule):
    """T2VA joint training, and by config T2VA + I2VA, CT and SFT (seed 000 Table 2): the base as it is."""


class _NotYet(StageModule):
    reason = ""

    def __init__(self, config: StageConfig, resuming: bool = False) -> None:
        raise NotImplementedError(f"stage module {config.module!r}: {self.reason}")


class T2AStage(_NotYet):
    reason = "needs the audio-only forward of JointAVDiT (JointInputs.video=None), not available yet"


class ReferenceStage(_NotYet):
    reason = "needs reference batches and reference dropout in the batch adapter, not available yet"


class RefinerStage(_NotYet):
    reason = (
        "needs the clean-stream inputs (audio at t=0, detached) and the degrade/upsample path, "
        "not available yet"
    )


STAGES: dict[str, type[StageModule]] = {
    "joint": JointStage,
    "t2a": T2AStage,
    "reference": ReferenceStage,
    "refiner": RefinerStage,
}


def build_stage(config: StageConfig, resuming: bool = False) -> StageModule:
    """The LightningModule of ``config.module``."""
    return STAGES[config.module](config, resuming)
