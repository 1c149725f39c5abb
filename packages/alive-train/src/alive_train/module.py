"""The shared base LightningModule of every stage, and the stages of seed 000 Table 2.

The base owns what every stage does the same way: the model on the shared FSDP2 plan, parameter
groups, the batch adapter, the flow-matching loss per modality with per-sample masks and weights,
seeded noise, the sharded EMA, the non-finite-loss guard, the pre-emption agreement, logging and
validation. A stage class overrides only what its config cannot say:

- ``t2a`` (:class:`T2AStage`): the audio tower alone (``streams = "audio"``), checks that only audio
  parameters train, no validation;
- ``joint`` (:class:`JointStage`): nothing (T2VA, I2VA, CT and SFT differ only by config);
- ``reference`` (:class:`ReferenceStage`): checks the data trains eq. 9's three states; R2VA validation;
- ``refiner`` (:class:`RefinerStage`): the adapter's refiner flow, checks the audio side is frozen,
  refiner validation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import threading
import time
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

from alive_data.world import WorldClip
from alive_models import JointAVDiT, JointConfig, JointOutputs, get_preset, materialize
from alive_models.codecs import AudioCodec, VideoCodec, audio_codec_from_spec, video_codec_from_spec
from alive_models.flops import forward_flops
from alive_models.flow import flow_loss, refiner_source
from alive_models.parallel import ParallelPlan, parallelize_joint
from alive_models.text import TextConditioner, TranscriptTokenizer
from alive_train import evaluation, preemption, validation
from alive_train.adapter import (
    TASK_NAMES,
    BatchAdapter,
    FlowBatch,
    RefinerFlow,
    degrade_and_upsample,
    to_pixels,
)
from alive_train.config import ConfigError, ModelConfig, OptimConfig, StageConfig, world_config
from alive_train.ema import ShardedEMA
from alive_train.export import PipelineParts
from alive_train.metrics import LossTracker, ThroughputMeter
from alive_train.param_groups import ResolvedGroup, canonical_name, optimizer_groups, resolve_param_groups
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


def pipeline_parts(config: StageConfig) -> PipelineParts:
    """The codecs, caption encoders and sampling shift an export of this stage is served with."""
    t = config.text
    return PipelineParts(
        config.codecs.video,
        config.codecs.audio,
        t.t5,
        t.qwen,
        t.transcript,
        t.max_length,
        t.dtype,
        config.flow.shift,
    )


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

    streams: Literal["both", "audio"] = "both"  # the towers a step runs
    validates = True  # generates and measures clips (needs both towers)

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
        self.world = world_config(config.validation)  # validation's prompts and metrics
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
        self._fixed_batches: list | None = None

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
        self.check_trainable()
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

    def check_trainable(self) -> None:
        """Stages whose recipe fixes what may train check the resolved groups here."""

    def _trainable_outside(self, prefixes: tuple[str, ...]) -> list[str]:
        return [
            canonical_name(n)
            for n, p in self.model.named_parameters()
            if p.requires_grad and not canonical_name(n).startswith(prefixes)
        ]

    def weights_in_use(self, weights: Literal["ema", "model"]) -> contextlib.AbstractContextManager:
        """A context with the EMA weights swapped into the model (``"ema"``, when the run keeps an
        EMA) or the model's own weights (``"model"``): what validation, evaluation and export run on."""
        return self.ema.swapped() if weights == "ema" and self.ema is not None else contextlib.nullcontext()

    def sharded_extra_state(self) -> dict[str, dict[str, Tensor]]:
        """Tensors saved and loaded with the model's shards (the strategy reads this)."""
        return {"ema": self.ema.state_dict()} if self.ema is not None else {}

    # -- data and conditioning -----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.adapter is not None:
            return
        c = self.config
        device = self.trainer.strategy.root_device
        if c.pipeline().format.video is not None:
            c.pipeline().format.check_timeline(self.joint_config.timeline)
        text, transcript = None, None
        if c.text.t5 is not None:
            dtype = getattr(torch, c.text.dtype) if device.type == "cuda" else torch.float32
            text = TextConditioner.from_pretrained(
                c.text.t5,
                c.text.qwen,
                c.text.transcript,
                dtype=dtype,
                device=device,
                max_length=c.text.max_length,
            )
        else:
            transcript = TranscriptTokenizer.from_pretrained(c.text.transcript, c.text.max_length)
        video_codec = video_codec_from_spec(c.codecs.video, device=device)
        audio_codec = audio_codec_from_spec(c.codecs.audio, device=device)
        fmt = c.pipeline().format
        for which, declared, codec in (("video", fmt.video, video_codec), ("audio", fmt.audio, audio_codec)):
            if declared is not None and declared != codec.geometry:
                raise ConfigError(
                    f"data.pipeline.format.{which} is {declared}, but codecs.{which} has {codec.geometry}"
                )
        self.adapter = self.build_adapter(text, transcript, video_codec, audio_codec)
        self.loss_tracker = LossTracker(TASK_NAMES, device)
        peak = c.monitor.peak_tflops * 1e12 if c.monitor.peak_tflops else self._device_peak(device)
        self.throughput = ThroughputMeter(self.trainer.world_size, c.monitor.window, peak)

    def build_adapter(
        self,
        text: TextConditioner | None,
        transcript: TranscriptTokenizer | None,
        video_codec: VideoCodec,
        audio_codec: AudioCodec,
        **options: Any,
    ) -> BatchAdapter:
        """The stage's batch adapter (stages with their own inputs pass more ``options``)."""
        c = self.config
        return BatchAdapter(
            self.joint_config,
            c.flow,
            text,
            video_codec,
            audio_codec,
            caption=c.text.caption,
            transcript=transcript,
            streams=self.streams,
            **options,
        )

    def _device_peak(self, device: torch.device) -> float | None:
        if device.type != "cuda":
            return None
        from lightning.fabric.utilities.throughput import get_available_flops

        return get_available_flops(device, getattr(torch, self.config.parallel.param_dtype))

    def flow_batch(self, batch: Any, generator: torch.Generator) -> FlowBatch:
        """Data batch -> model inputs and targets (the adapter; its options are the stage's)."""
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
        """Per-modality flow-matching losses (masked means over samples) and their weighted sum; a
        stream that did not run contributes zero."""
        zero = out.audio.new_zeros(()) if out.audio is not None else out.video.new_zeros(())
        video = zero if out.video is None else flow_loss(out.video, batch.target_video, batch.video_loss_mask)
        audio = zero if out.audio is None else flow_loss(out.audio, batch.target_audio, batch.audio_loss_mask)
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
        self.throughput.add_step(
            fb.size,
            fb.tokens(self.joint_config.video.patch_size),
            forward_flops(self.joint_config, fb.lengths, fb.size),
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
        for modality in ("video", "audio"):
            prediction = getattr(out, modality)
            if prediction is not None:
                target, mask = getattr(fb, f"target_{modality}"), getattr(fb, f"{modality}_loss_mask")
                self.loss_tracker.add(modality, prediction, target, mask, fb.tasks)
        self.loss_tracker.add_total(losses["total"])
        self.log("loss_v", losses["video"].detach(), prog_bar=True, logger=False)
        self.log("loss_a", losses["audio"].detach(), prog_bar=True, logger=False)
        return losses["total"]

    # -- validation ----------------------------------------------------------------------------
    def validation_clip(self, prompt: WorldClip, index: int) -> validation.ValidationClip:
        """One validation clip from a held-out prompt: T2VA from its caption."""
        return self.generate(prompt, index)

    def _frames(self) -> int:
        return self.config.validation.frames or self.world.num_frames

    def _audio_samples(self, frames: int) -> int:
        return round(frames / self.world.fps * self.world.sample_rate)

    def _velocity(self, caption: str, references: Tensor | None = None):
        """The sampler's velocity for one caption (``validation.guidance``), on the training model."""
        from alive_infer.guidance import Guidance, GuidedVelocity

        text = self.adapter.text
        unguided = self.config.validation.guidance == "unguided"
        guidance = Guidance.unguided() if unguided else Guidance()
        negative = None if unguided else text.null(1)
        return GuidedVelocity(self.model, text.encode([caption]), negative, guidance, references=references)

    @torch.no_grad()
    def generate(
        self, prompt: WorldClip, index: int, references: list[np.ndarray] | None = None
    ) -> validation.ValidationClip:
        """Sample a clip for ``prompt`` (with reference images when given) and decode it."""
        from alive_infer.sampling import initial_noise, sample

        v, device = self.config.validation, self.trainer.strategy.root_device
        frames = self._frames()
        a = self.adapter
        t, h, w = a.video_codec.geometry.latent_shape(frames, self.world.height, self.world.width)
        n = self._audio_samples(frames)
        generator = torch.Generator().manual_seed(v.seed + index)
        video = initial_noise((1, self.joint_config.video.latent_channels, t, h, w), generator, device)
        audio = initial_noise(
            (1, self.joint_config.audio.in_channels, a.audio_codec.geometry.num_latents(n)), generator, device
        )
        refs = None
        if references:
            refs = a.encode_references(torch.from_numpy(np.stack(references))[None].to(device))
        velocity = self._velocity(prompt.caption, refs)
        video, audio = sample(
            velocity, video, audio, steps=v.steps, solver=v.solver, shift=self.config.flow.shift
        )
        wave = a.audio_codec.decode(audio).float().cpu()[0, 0, :n].numpy()
        return validation.ValidationClip(
            index, prompt.caption, validation.uint8_frames(a.video_codec.decode(video)), wave, references
        )

    def run_validation(self) -> dict[str, float] | None:
        """Generate, measure and log (every rank calls this at the same step; rank 0 logs)."""
        if not (self.validates and self.config.validation.enabled):
            return None
        v = self.config.validation
        prompts = validation.prompts(v.num_clips, v.seed, self.world)
        share = validation.my_share(v.num_clips, self.global_rank, self.trainer.world_size)
        with self.weights_in_use(v.weights):
            made = [self.validation_clip(prompts[i or 0], i or 0) for i in share]
        clips = validation.gather_clips([clip for clip, i in zip(made, share, strict=True) if i is not None])
        if not self.trainer.is_global_zero:
            return None
        metrics = validation.measure(clips, self.world)
        if self.logger is not None:
            validation.log_to_mlflow(self.logger, self.global_step, clips, metrics, self.world)
        print("validation " + progress_line(self.global_step, metrics), flush=True)
        return metrics

    # -- fixed-batch loss ------------------------------------------------------------------------
    @torch.no_grad()
    def fixed_batch_loss(self) -> dict[str, float]:
        """``eval/loss/*`` of the current weights on the fixed batches (``alive_train.evaluation``);
        every rank calls this (a collective)."""
        if self._fixed_batches is None:
            self._fixed_batches = evaluation.fixed_batches(self.config)
        seed, device = self.config.evaluation.seed, self.trainer.strategy.root_device
        count = len(self._fixed_batches)
        sums = torch.zeros(len(evaluation.PARTS) + 1, device=device)
        for i in validation.my_share(count, self.global_rank, self.trainer.world_size):
            fb = self.flow_batch(
                self._fixed_batches[i or 0], evaluation.batch_generator(seed, i or 0, device)
            )
            losses = self.losses(fb, self.model(fb.inputs))
            if i is not None:
                sums += torch.stack(
                    [*(losses[p].detach().float() for p in evaluation.PARTS), sums.new_ones(())]
                )
        return evaluation.mean_losses(sums)

    def log_fixed_batch_loss(self, when: str) -> dict[str, float]:
        """Evaluate with the weights the stage exports (at step 0: the ones it starts from), log to
        MLflow at the current step and print one line."""
        with self.weights_in_use(self.config.export.weights):
            metrics = self.fixed_batch_loss()
        if self.trainer.is_global_zero:
            if self.logger is not None:
                self.logger.log_metrics(metrics, step=self.global_step)
            parts = "  ".join(f"{k.rsplit('/', 1)[1]} {v:.4f}" for k, v in metrics.items())
            n = len(self._fixed_batches)
            print(f"fixed-batch loss {when} (step {self.global_step}, {n} batches): {parts}", flush=True)
        return metrics

    # -- logging -------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        if self.config.evaluation.enabled and self.global_step == 0:
            self.log_fixed_batch_loss("at start")
        self.throughput.start(time.perf_counter())

    def on_train_end(self) -> None:
        finished = self.global_step >= self.trainer.max_steps
        if self.config.evaluation.enabled and finished and not self.preempted and self.stop_reason is None:
            self.log_fixed_batch_loss("at end")

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
        for reason, count in skips.items():  # "filter:rule" reasons: MLflow metric names take no ':'
            name = "kept" if reason == "kept" else "skipped/" + reason.replace(":", "/")
            metrics[f"data/{name}"] = count
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
            "pipeline": dataclasses.asdict(pipeline_parts(self.config)),
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
    for key in ("val/av_offset_ms", "val/transcript_cer", "val/psnr_refined", "val/psnr_upsampled"):
        if key in metrics:
            parts.append(f"{key[4:]} {metrics[key]:.3g}")
    return "  ".join(parts)


class T2AStage(StageModule):
    """T2A stages I and II (seed 000 §4.1; seed 004 §4.5): the audio tower alone through the joint
    model's one-stream forward (``JointInputs.video`` None: the video tower and the fusion do not run),
    only audio parameters trainable; weights keep the joint model's ``audio.`` names, so the export
    loads straight into the joint stage."""

    streams = "audio"
    validates = False  # the world's metrics need pictures

    def check_trainable(self) -> None:
        outside = self._trainable_outside(("audio.",))
        if outside:
            raise ConfigError(
                f"T2A trains the audio tower alone (seed 004 §4.5); {len(outside)} trainable parameters "
                f"outside audio., e.g. {outside[:3]}: freeze them (lr: null or optim.unmatched=frozen)"
            )


class JointStage(StageModule):
    """T2VA joint training, and by config T2VA + I2VA, CT and SFT (seed 000 Table 2): the base as it is."""


class ReferenceStage(StageModule):
    """Reference joint tuning (seed 000 §4.1 RJT, §5.1): reference images, encoded by the video codec
    at the clip's resolution, go in as reference tokens (Ref-Temporal PE offset, eq. 8; the adapter).
    Dual CFG (eq. 9) needs three states trained: (text, references) from r2va samples, (text, no
    references) from pair samples drawn as t2va (reference dropout: ``1 - tasks.reference_prob``) and
    from the SFT data, (no text, no references) from caption dropout; this stage refuses data configs
    that lack one. Validation generates R2VA clips from the world's reference images."""

    def __init__(self, config: StageConfig, resuming: bool = False) -> None:
        tasks = config.data.pipeline.get("tasks", {})
        buckets = config.data.pipeline.get("buckets", {})
        p_ref = tasks.get("reference_prob", 0.0)
        if not 0 < p_ref < 1 or tasks.get("caption_dropout", 0.1) <= 0:
            raise ConfigError(
                "reference stage: data.pipeline.tasks needs 0 < reference_prob < 1 (reference dropout: the "
                "null-reference state of eq. 9) and caption_dropout > 0 (its null-text state); got "
                f"reference_prob={p_ref}, caption_dropout={tasks.get('caption_dropout', 0.1)}"
            )
        if buckets.get("batch_size", 1) > 1 and not buckets.get("by_reference_count", False):
            raise ConfigError(
                "reference stage: with batch_size > 1 set data.pipeline.buckets.by_reference_count=true, so "
                "a batch never mixes reference counts (JointInputs has no per-slot reference mask)"
            )
        super().__init__(config, resuming)

    def validation_clip(self, prompt: WorldClip, index: int) -> validation.ValidationClip:
        return self.generate(prompt, index, references=prompt.references)


class RefinerStage(StageModule):
    """The 1080p audio-video refiner (seed 000 §2.2): the adapter's refiner flow (degrade, upsample,
    encode, noise to t0; see ``alive_train.adapter``), clean audio at t = 0 through a frozen AudioDiT and
    its cross-attention, video loss only. Validation refines the world's high-resolution clips
    degraded the same way and measures them against the truth."""

    def check_trainable(self) -> None:
        frozen = ("audio.", "fusion.audio_from_video.", "fusion.audio_time_mod.")
        trainable = [canonical_name(n) for n, p in self.model.named_parameters() if p.requires_grad]
        wrong = [n for n in trainable if n.startswith(frozen)]
        if wrong:
            raise ConfigError(
                f"the refiner keeps the AudioDiT and its cross-attention frozen (seed 000 §2.2); "
                f"{len(wrong)} of their parameters would train, e.g. {wrong[:3]}"
            )

    def build_adapter(self, text, transcript, video_codec, audio_codec, **options) -> BatchAdapter:
        r = self.config.refiner
        refiner = RefinerFlow(r.t_start, r.degrade_factor)
        return super().build_adapter(text, transcript, video_codec, audio_codec, refiner=refiner, **options)

    @torch.no_grad()
    def validation_clip(self, prompt: WorldClip, index: int) -> validation.ValidationClip:
        from alive_infer.sampling import initial_noise, sample

        v, r, a = self.config.validation, self.config.refiner, self.adapter
        device = self.trainer.strategy.root_device
        frames, n = self._frames(), self._audio_samples(self._frames())
        truth = prompt.hires_frames[:frames]
        upsampled = degrade_and_upsample(
            to_pixels(torch.from_numpy(truth)[None].to(device)), r.degrade_factor
        )
        generator = torch.Generator().manual_seed(v.seed + index)
        z_up = a.encode_video(upsampled)
        source = refiner_source(z_up, initial_noise(z_up.shape, generator, device), r.t_start)
        wave = prompt.audio[:n]
        audio = a.audio_codec.encode(torch.from_numpy(wave)[None, None].to(device)).float()
        video, _ = sample(
            self._velocity(prompt.caption),
            source,
            audio,
            steps=v.steps,
            solver=v.solver,
            shift=self.config.flow.shift,
            t_start=r.t_start,
            clean_audio=True,
        )
        return validation.ValidationClip(
            index,
            prompt.caption,
            validation.uint8_frames(a.video_codec.decode(video)),
            wave,
            truth=truth,
            upsampled=validation.uint8_frames(upsampled),
        )


STAGES: dict[str, type[StageModule]] = {
    "t2a": T2AStage,
    "joint": JointStage,
    "reference": ReferenceStage,
    "refiner": RefinerStage,
}


def build_stage(config: StageConfig, resuming: bool = False) -> StageModule:
    """The LightningModule of ``config.module``."""
    return STAGES[config.module](config, resuming)
