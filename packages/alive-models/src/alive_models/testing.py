"""Random inputs of the right shapes for a config: tests, benchmarks and ``alive-models smoke``."""

from __future__ import annotations

import math

import torch

from alive_models.config import JointConfig
from alive_models.joint import JointInputs, i2v_condition


def random_inputs(
    config: JointConfig,
    batch: int = 2,
    latent_frames: int = 3,
    height: int = 4,
    width: int = 6,
    text_lengths: tuple[int, ...] | None = None,
    caption_length: int = 7,
    transcript_length: int = 4,
    i2v: bool = False,
    references: int = 0,
    generator: torch.Generator | None = None,
) -> JointInputs:
    """Gaussian latents and encodings; the audio length follows the clip duration on the timeline."""
    v, a, tl = config.video, config.audio, config.timeline
    frames = (
        (latent_frames - 1) * tl.temporal_stride + 1
        if tl.causal_first_frame
        else latent_frames * tl.temporal_stride
    )
    audio_length = math.ceil(frames / tl.fps * tl.audio_latent_rate)
    text_lengths = text_lengths or tuple(5 + 2 * i for i in range(len(v.text_dims)))

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    video = randn(batch, v.latent_channels, latent_frames, height, width)
    condition = None
    if i2v:
        condition = i2v_condition(
            randn(batch, v.latent_channels, 1, height, width), latent_frames, v.mask_channels
        )
    return JointInputs(
        video=video,
        audio=randn(batch, a.in_channels, audio_length),
        t_video=torch.rand(batch, generator=generator),
        t_audio=torch.rand(batch, generator=generator),
        video_texts=[randn(batch, n, d) for n, d in zip(text_lengths, v.text_dims, strict=True)],
        audio_caption=randn(batch, caption_length, a.caption_dim),
        transcript_ids=torch.randint(
            0, a.transcript_vocab_size, (batch, transcript_length), generator=generator
        ),
        video_condition=condition,
        references=randn(batch, references, v.latent_channels, height, width) if references else None,
    )


def randomize_zero_inits(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Give zero-initialised parameters (AdaLN-Zero gates, heads, fusion gates) random values, so a
    freshly built model exercises every path as a trained one would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
