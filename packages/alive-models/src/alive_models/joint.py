"""The Joint Audio-Video DiT: video tower + audio tower + the fusion between them."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from alive_models.audio_dit import AudioDiT
from alive_models.config import JointConfig
from alive_models.fusion import build_fusion
from alive_models.video_dit import VideoDiT


@dataclass
class JointInputs:
    """Everything one forward of the joint model reads. Shapes use B for the batch.

    video: [B, C_v, T, H, W] noisy video latent; audio: [B, C_a, L_a] noisy audio latent;
    t_video, t_audio: [B] flow times (separate, so the refiner can feed clean audio at t=0);
    video_texts: one [B, L_i, D_i] encoding per caption encoder, video_text_masks their [B, L_i] masks;
    audio_caption: [B, L_c, D_c] (+ mask); transcript_ids: [B, L_w] speech tokens (+ mask);
    video_condition: [B, C_v + mask, T, H, W] for I2V (see :func:`i2v_condition`);
    references: [B, K, C_v, H, W] reference-image latents;
    mutual: [B] bool, False = "indep" (no cross-modal exchange) for that sample.
    """

    video: Tensor
    audio: Tensor
    t_video: Tensor
    t_audio: Tensor
    video_texts: list[Tensor]
    audio_caption: Tensor
    video_text_masks: list[Tensor | None] | None = None
    audio_caption_mask: Tensor | None = None
    transcript_ids: Tensor | None = None
    transcript_mask: Tensor | None = None
    video_condition: Tensor | None = None
    references: Tensor | None = None
    mutual: Tensor | None = None

    def map(self, fn) -> JointInputs:
        """Apply ``fn`` to every tensor (lists included): moves, casts, repeats for batched guidance."""

        def apply(value):
            if isinstance(value, Tensor):
                return fn(value)
            if isinstance(value, list):
                return [apply(v) for v in value]
            return value

        return JointInputs(**{f.name: apply(getattr(self, f.name)) for f in fields(self)})


@dataclass
class JointOutputs:
    """Velocity predictions, shaped like the noisy latents."""

    video: Tensor
    audio: Tensor


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
        vs = self.video.embed(
            inputs.video,
            inputs.t_video,
            inputs.video_texts,
            inputs.video_text_masks,
            condition=inputs.video_condition,
            references=inputs.references,
        )
        as_ = self.audio.embed(
            inputs.audio,
            inputs.t_audio,
            inputs.audio_caption,
            inputs.audio_caption_mask,
            inputs.transcript_ids,
            inputs.transcript_mask,
        )
        mutual = inputs.mutual
        if mutual is not None and mutual.shape != (inputs.video.shape[0],):
            raise ValueError(f"mutual must be a [B] bool tensor, got shape {tuple(mutual.shape)}")
        vs, as_ = self.fusion(self.video, self.audio, vs, as_, mutual)
        return JointOutputs(self.video.head(vs), self.audio.head(as_))


def reset_all(module: nn.Module) -> None:
    """Call ``reset_parameters`` on every submodule that owns parameters or buffers directly."""
    for name, m in module.named_modules():
        owns = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        if not owns:
            continue
        if not hasattr(m, "reset_parameters"):
            raise TypeError(f"{name or 'root'} ({type(m).__name__}) owns tensors but has no reset_parameters")
        m.reset_parameters()


def build_model(
    config: JointConfig, device: str | torch.device = "cpu", seed: int | None = None
) -> JointAVDiT:
    """Build on ``device``; on "meta" the model has shapes only (summaries, FSDP before materialising)."""
    with torch.device("meta"):
        model = JointAVDiT(config)
    if torch.device(device).type != "meta":
        materialize(model, device, seed)
    return model


def materialize(model: nn.Module, device: str | torch.device, seed: int | None = None) -> None:
    """Allocate a meta-built (or FSDP-sharded) model on ``device`` and run the one init path."""
    model.to_empty(device=device)
    with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            reset_all(model)
