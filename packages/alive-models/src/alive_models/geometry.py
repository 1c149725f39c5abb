"""Codec geometry and the shared audio-video timeline (UniTemp-RoPE, seed 000 eq. 1-2).

Audio latents are the reference coordinate system: latent j has position j (eq. 1). A video latent
takes the real-valued position of the centre of its temporal receptive field on that axis (eq. 2).

Conventions (the seed leaves them implicit; these are our decisions):
- pixel frame f stands for the time interval [f / fps, (f + 1) / fps);
- audio latent j stands for [j / rate, (j + 1) / rate), so its centre (j + 0.5) / rate maps to j;
- with a causal first frame and temporal stride s, latent 0 covers pixel frame 0 alone and latent
  i >= 1 covers frames s(i-1)+1 .. s*i (the Wan2.1 VAE layout); without it latent i covers s*i .. s*i+s-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Timeline:
    """Temporal geometry shared by both towers: video frame rate, video codec stride, audio latent rate.

    Filled from the codecs in use (``VideoCodec.geometry`` / ``AudioCodec.geometry``), never guessed.
    """

    fps: float = 24.0
    temporal_stride: int = 4
    causal_first_frame: bool = True
    audio_latent_rate: float = 25.0  # audio latents per second (16 kHz / 640 hop)

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.audio_latent_rate <= 0 or self.temporal_stride < 1:
            raise ValueError(f"invalid timeline {self}")

    def num_video_latents(self, num_frames: int, strict: bool = True) -> int:
        """Latent frames a codec with this geometry produces for ``num_frames`` pixel frames.

        ``strict``: raise unless the frames fill whole latents; otherwise count the latents the
        frames fill completely (the rest would be trimmed).
        """
        s = self.temporal_stride
        if self.causal_first_frame:
            if strict and (num_frames < 1 or (num_frames - 1) % s):
                raise ValueError(f"{num_frames} frames: a causal codec with stride {s} needs 1 + {s}k frames")
            return (num_frames - 1) // s + 1
        if strict and num_frames % s:
            raise ValueError(f"{num_frames} frames: stride {s} needs a multiple of {s}")
        return num_frames // s

    def num_frames(self, num_latents: int) -> int:
        """Pixel frames that ``num_latents`` video latents cover (inverse of :meth:`num_video_latents`)."""
        s = self.temporal_stride
        return 1 + (num_latents - 1) * s if self.causal_first_frame else num_latents * s

    def audio_latents_for(self, num_video_latents: int) -> float:
        """Audio latents that span the clip of ``num_video_latents`` video latents (not rounded)."""
        return self.num_frames(num_video_latents) / self.fps * self.audio_latent_rate

    def video_latent_spans(self, num_latents: int) -> Tensor:
        """[num_latents, 2] first and last (inclusive) pixel frame covered by each video latent."""
        i = torch.arange(num_latents, dtype=torch.float64)
        s = self.temporal_stride
        if self.causal_first_frame:
            first = torch.where(i == 0, 0.0, s * (i - 1) + 1)
            last = s * i
        else:
            first, last = s * i, s * i + s - 1
        return torch.stack([first, last], dim=-1)


def unitemp_video_positions(num_latents: int, timeline: Timeline) -> Tensor:
    """Phi(i) of seed 000 eq. 2: each video latent's receptive-field centre, in audio-latent units.

    Returns float64 [num_latents]; RoPE casts as it needs. Centre time of frames [a, b] is
    (a + b + 1) / (2 fps); an audio latent's centre (j + 0.5) / rate sits at position j.
    """
    spans = timeline.video_latent_spans(num_latents)
    centre_seconds = (spans[:, 0] + spans[:, 1] + 1.0) / (2.0 * timeline.fps)
    return centre_seconds * timeline.audio_latent_rate - 0.5


def unitemp_audio_positions(num_latents: int) -> Tensor:
    """Seed 000 eq. 1: audio latent positions are the integers 0 .. L_a - 1 (float64)."""
    return torch.arange(num_latents, dtype=torch.float64)
