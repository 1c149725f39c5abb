"""The Joint Audio-Video DiT: video tower + audio tower + the fusion between them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from alive_models.audio_dit import AudioDiT
from alive_models.config import JointConfig
from alive_models.fusion import ExchangeRoutes, build_fusion
from alive_models.geometry import Timeline
from alive_models.pretrained import match_weights, read_config, save_weights
from alive_models.video_dit import VideoDiT, VideoState

log = logging.getLogger(__name__)


@dataclass
class JointInputs:
    """Everything one forward of the joint model reads. Shapes use B for the batch.

    video: [B, C_v, T, H, W] noisy video latent; audio: [B, C_a, L_a] noisy audio latent. Either may
    be None for a video-only (T2V) or audio-only (T2A) forward; that stream's other fields are then
    ignored.
    t_video, t_audio: [B] flow times (separate, so a stream can be given clean at t=0);
    video_texts: one [B, L_i, D_i] encoding per caption encoder, video_text_masks their [B, L_i] masks;
    audio_caption: [B, L_c, D_c] (+ mask); transcript_ids: [B, L_w] speech tokens (+ mask);
    video_condition: [B, C_v + mask, T, H, W] for I2V (see :func:`i2v_condition`);
    references: [B, K, C_v, H, W] reference-image latents;
    reference_mask: [B] bool, False = that sample ignores the references (their keys are masked in
    every video attention, so its clip equals a forward without references): eq. 9's no-reference
    guidance states and per-sample reference dropout share one batch with the others; None = all use
    them;
    video_reads_audio, audio_reads_video: [B] bool, the per-sample routes of the exchange (seed 002
    Dynamic Context Routing; :data:`alive_models.fusion.TASK_ROUTES` maps tasks to them);
    mutual: [B] bool, shorthand for both routes (False = neither: the "indep" state); routes and
    mutual combine with AND; None = on for every sample;
    audio_mask: [B, L_a] bool, False on padded audio latents (keys of audio self-attention and of the
    video -> audio exchange); None = no padding;
    video_clean, audio_clean: [B] bool, True = that stream is given clean (t=0) as a condition (a2v,
    v2a): the other tower reads it detached, no gradient flows back into it through the exchange;
    reference_audio: [B, C_a, L_ref] reference-audio latents (voice cloning, seed 004 §4.4; needs
    ``AudioDiTConfig.reference_audio``) with reference_audio_mask [B, L_ref] (all False = no
    reference for that sample, so a batch can mix samples with and without).

    Masks are used as given: pass None, not an all-True mask, when nothing is padded (keeps the fused
    attention kernels; the model never reads mask values on the host to find out).
    """

    video: Tensor | None = None
    audio: Tensor | None = None
    t_video: Tensor | None = None
    t_audio: Tensor | None = None
    video_texts: list[Tensor] | None = None
    audio_caption: Tensor | None = None
    video_text_masks: list[Tensor | None] | None = None
    audio_caption_mask: Tensor | None = None
    transcript_ids: Tensor | None = None
    transcript_mask: Tensor | None = None
    video_condition: Tensor | None = None
    references: Tensor | None = None
    reference_mask: Tensor | None = None
    mutual: Tensor | None = None
    audio_mask: Tensor | None = None
    video_clean: Tensor | None = None
    audio_clean: Tensor | None = None
    video_reads_audio: Tensor | None = None
    audio_reads_video: Tensor | None = None
    reference_audio: Tensor | None = None
    reference_audio_mask: Tensor | None = None

    def map(self, fn) -> JointInputs:
        """Apply ``fn`` to every tensor (lists included): moves, casts, repeats for batched guidance."""

        def apply(value):
            if isinstance(value, Tensor):
                return fn(value)
            if isinstance(value, list):
                return [apply(v) for v in value]
            return value

        return JointInputs(**{f.name: apply(getattr(self, f.name)) for f in fields(self)})

    @property
    def batch_size(self) -> int:
        stream = self.video if self.video is not None else self.audio
        if stream is None:
            raise ValueError("JointInputs needs video, audio or both")
        return stream.shape[0]

    @property
    def routes(self) -> ExchangeRoutes:
        """The per-sample routes of the exchange: the per-direction switches AND ``mutual``."""
        return ExchangeRoutes.resolve(self.mutual, self.video_reads_audio, self.audio_reads_video)

    def validate(self, timeline: Timeline) -> None:
        """Shape checks with clear errors; reads no tensor values (no host sync)."""
        b = self.batch_size
        if self.video is not None and (self.t_video is None or self.video_texts is None):
            raise ValueError("a video stream needs t_video and video_texts")
        if self.audio is not None and (self.t_audio is None or self.audio_caption is None):
            raise ValueError("an audio stream needs t_audio and audio_caption")
        for name in (
            "mutual",
            "video_clean",
            "audio_clean",
            "video_reads_audio",
            "audio_reads_video",
            "reference_mask",
        ):
            flags = getattr(self, name)
            if flags is not None and (flags.shape != (b,) or flags.dtype != torch.bool):
                raise ValueError(
                    f"{name} must be a [B] = [{b}] bool tensor, got {flags.dtype} {tuple(flags.shape)}"
                )
        if self.video is not None and self.audio is not None:
            latents = self.video.shape[2]
            expected = timeline.audio_latents_for(latents)
            length = self.audio.shape[-1]
            if abs(length - expected) > 1:
                raise ValueError(
                    f"audio has {length} latents but the clip's {latents} video latents "
                    f"({timeline.num_frames(latents)} frames at {timeline.fps:g} fps) span {expected:.2f} "
                    f"audio latents at {timeline.audio_latent_rate:g}/s; UniTemp alignment needs them to "
                    "agree within one latent (trim or pad the audio, or use an audio-only forward)"
                )


@dataclass
class JointOutputs:
    """Velocity predictions, shaped like the noisy latents (None for a stream that was not given)."""

    video: Tensor | None
    audio: Tensor | None


def _mask_references(state: VideoState, keep: Tensor) -> VideoState:
    """Hide the reference tokens from every query of the samples where ``keep`` is False.

    Keys are ordered [caption; references; clip] in every video block (dual and single stream), and
    reference tokens take no part in the fusion, so masking their keys makes those samples' clip
    tokens exactly what a forward without references computes (up to float summation order). The
    same graph runs whatever ``keep`` holds (FSDP-safe) and nothing is read on the host.
    """
    device = state.x.device
    length = state.text_len + state.x.shape[1]
    position = torch.arange(length, device=device)
    is_ref = (position >= state.text_len) & (position < state.text_len + state.n_ref)
    visible = ~is_ref[None, :] | keep[:, None]
    key_mask = visible if state.key_mask is None else state.key_mask & visible
    return replace(state, key_mask=key_mask)


def i2v_condition(first_frame_latent: Tensor, num_latent_frames: int, mask_channels: int = 4) -> Tensor:
    """Condition channels for I2V: the first-frame latent at t=0 plus its frame mask.

    first_frame_latent: [B, C, 1, H, W] (the codec's encoding of the image as a one-frame clip).
    The mask marks which pixel frames are given; with a causal first frame latent 0 covers exactly the
    first pixel frame, so all ``mask_channels`` (the temporal stride, folded into channels as in Wan2.1
    I2V) are one at t=0 and zero elsewhere. Returns [B, C + mask_channels, T, H, W].
    """
    b, c, _, h, w = first_frame_latent.shape
    latent = first_frame_latent.new_zeros(b, c, num_latent_frames, h, w)
    latent[:, :, :1] = first_frame_latent
    mask = first_frame_latent.new_zeros(b, mask_channels, num_latent_frames, h, w)
    mask[:, :, 0] = 1.0
    return torch.cat([latent, mask], dim=1)


class JointAVDiT(nn.Module):
    """ALIVE's joint model. ``video`` and ``audio`` are complete towers; ``fusion`` holds the exchange.

    Parameter names are stable prefixes (``video.``, ``audio.``, ``fusion.``) so an audio-only
    pre-training checkpoint loads straight into the joint model.
    """

    def __init__(self, config: JointConfig) -> None:
        super().__init__()
        self.config = config
        self.video = VideoDiT(config.video)
        self.audio = AudioDiT(config.audio)
        self.fusion = build_fusion(config)

    def forward(self, inputs: JointInputs) -> JointOutputs:
        """Velocities for the streams given.

        With both streams the fusion runs every exchange module for every batch (see
        ``fusion.ta_cross_attn``). With one stream (``inputs.video`` or ``inputs.audio`` None) only that
        tower runs and the fusion does not: whether a stream is present is a property of the whole
        batch and of the training stage (T2A, T2V), the same on every rank, so FSDP's collectives still
        match. Calling ``model.audio`` directly instead would bypass the root FSDP unit.
        """
        inputs.validate(self.config.timeline)
        vs = as_ = None
        if inputs.video is not None:
            vs = self.video.embed(
                inputs.video,
                inputs.t_video,
                inputs.video_texts,
                inputs.video_text_masks,
                condition=inputs.video_condition,
                references=inputs.references,
            )
            if inputs.reference_mask is not None and inputs.references is not None:
                vs = _mask_references(vs, inputs.reference_mask)
        if inputs.audio is not None:
            as_ = self.audio.embed(
                inputs.audio,
                inputs.t_audio,
                inputs.audio_caption,
                inputs.audio_caption_mask,
                inputs.transcript_ids,
                inputs.transcript_mask,
                latent_mask=inputs.audio_mask,
                reference_audio=inputs.reference_audio,
                reference_audio_mask=inputs.reference_audio_mask,
            )
        if as_ is None:
            return JointOutputs(self.video.head(self.video.run_blocks(vs)), None)
        if vs is None:
            return JointOutputs(None, self.audio.head(self.audio.run_blocks(as_)))
        vs, as_ = self.fusion(
            self.video,
            self.audio,
            vs,
            as_,
            routes=inputs.routes,
            video_clean=inputs.video_clean,
            audio_clean=inputs.audio_clean,
        )
        return JointOutputs(self.video.head(vs), self.audio.head(as_))

    def save_pretrained(self, path: str | Path, max_shard_size: int | str = "5GB", dtype=None) -> None:
        """Write ``config.json`` and the weights as safetensors (``model.safetensors``, or
        ``model-0000k-of-0000n.safetensors`` shards + ``model.safetensors.index.json``).

        On an FSDP-sharded model every rank must call it (the full weights are gathered); rank 0 writes.
        The directory appears complete or not at all.
        """
        save_weights(
            self, path, {"_class_name": JointAVDiT.__name__, **self.config.to_dict()}, max_shard_size, dtype
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        strict: bool = True,
        parallelize: Callable[[JointAVDiT], object] | None = None,
        seed: int = 0,
    ) -> JointAVDiT:
        """Load a directory written by :meth:`save_pretrained`.

        Built on the meta device, cast to ``dtype``, optionally parallelised (e.g.
        ``lambda m: parallelize_joint(m, mesh, plan)``: each rank then allocates and reads only its
        shard), then allocated on ``device`` and filled. ``strict``: raise, before allocating anything,
        on missing, unexpected or mis-shaped weights; otherwise log them and initialise what is missing
        from ``seed``.
        """
        config = JointConfig.from_dict(read_config(path, cls.__name__))
        with torch.device("meta"):
            model = cls(config)
        if dtype is not None:
            model.to(dtype)
        if parallelize is not None:
            parallelize(model)
        plan = match_weights(model, path)
        if strict:
            plan.report.raise_if_incomplete()
        if plan.report.missing or plan.report.mismatched:
            materialize(model, device, seed)
        else:
            model.to_empty(device=device)
        plan.load_into(model)
        if not plan.report.complete:
            log.warning("%s", plan.report)
        return model


def reset_all(module: nn.Module) -> None:
    """Call ``reset_parameters`` on every submodule that owns parameters or buffers directly.

    A module whose parameters are sharded (DTensors, after ``fully_shard``) is initialised at its full
    shape and each rank keeps its shard: the random streams then cannot tell a shard from the whole,
    so a sharded init equals an unsharded one from the same seed, bitwise, at any world size.
    """
    for name, m in module.named_modules():
        owns = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        if not owns:
            continue
        if not hasattr(m, "reset_parameters"):
            raise TypeError(f"{name or 'root'} ({type(m).__name__}) owns tensors but has no reset_parameters")
        if any(isinstance(p, DTensor) for p in m.parameters(recurse=False)):
            _reset_at_full_shape(m)
        else:
            m.reset_parameters()


def _reset_at_full_shape(module: nn.Module) -> None:
    """``reset_parameters`` on full-shape stand-ins for the module's DTensor parameters, then keep the
    local shard of each (no communication: every rank computes the same full values)."""
    sharded = {n: p for n, p in module._parameters.items() if isinstance(p, DTensor)}
    for n, p in sharded.items():
        full = torch.empty(p.shape, dtype=p.dtype, device=p.to_local().device)
        module._parameters[n] = nn.Parameter(full, requires_grad=p.requires_grad)
    try:
        module.reset_parameters()
        for n, p in sharded.items():
            full = module._parameters[n].detach()
            p.to_local().copy_(
                distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
            )
    finally:
        module._parameters.update(sharded)


def build_model(
    config: JointConfig, device: str | torch.device = "cpu", seed: int | None = None
) -> JointAVDiT:
    """Build on ``device``; on "meta" the model has shapes only (summaries, FSDP before materialising)."""
    with torch.device("meta"):
        model = JointAVDiT(config)
    if torch.device(device).type != "meta":
        materialize(model, device, seed)
    return model


def _fork_rng(device: torch.device):
    """Fork the CPU generator and, for an accelerator, that device's generator."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    index = (
        device.index if device.index is not None else torch.get_device_module(device.type).current_device()
    )
    return torch.random.fork_rng(devices=[index], device_type=device.type)


def materialize(model: nn.Module, device: str | torch.device, seed: int | None = None) -> None:
    """Allocate a meta-built (or FSDP-sharded) model on ``device`` and run the one init path."""
    device = torch.device(device)
    model.to_empty(device=device)
    with _fork_rng(device) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            reset_all(model)
