"""Exactly invertible codecs for tests and the demo: pure rearrangements, no weights.

The video codec folds space (pixel unshuffle) and time (stride frames per latent) into channels, so
it has any geometry, including Wan2.1's (8x spatial, 4x temporal, causal first frame: latent 0 holds
frame 0 repeated). The audio codec folds ``hop_length`` samples into channels. decode(encode(x)) == x
bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alive_models.codecs.base import AudioCodec, AudioGeometry, VideoCodec, VideoGeometry


class DeterministicVideoCodec(VideoCodec):
    """Space- and time-to-depth. Latent channels = 3 * temporal_stride * spatial_stride**2."""

    def __init__(
        self, spatial_stride: int = 8, temporal_stride: int = 4, causal_first_frame: bool = True
    ) -> None:
        channels = 3 * temporal_stride * spatial_stride**2
        self.geometry = VideoGeometry(channels, spatial_stride, temporal_stride, causal_first_frame)

    def encode(self, video: Tensor) -> Tensor:
        g = self.geometry
        b, c, f, h, w = video.shape
        if c != 3:
            raise ValueError(f"video must have 3 channels, got {c}")
        t, _, _ = g.latent_shape(f, h, w)
        if g.causal_first_frame:  # latent 0 covers frame 0 alone: pad it to a full group
            video = torch.cat([video[:, :, :1].expand(-1, -1, g.temporal_stride - 1, -1, -1), video], dim=2)
        x = video.reshape(b, 3, t, g.temporal_stride, h, w).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, 3 * g.temporal_stride, t, h, w).transpose(1, 2)  # [B, T, 3*ts, H, W]
        x = F.pixel_unshuffle(x.reshape(b * t, 3 * g.temporal_stride, h, w), g.spatial_stride)
        return x.reshape(b, t, g.channels, h // g.spatial_stride, w // g.spatial_stride).transpose(1, 2)

    def decode(self, latent: Tensor) -> Tensor:
        g = self.geometry
        b, c, t, lh, lw = latent.shape
        if c != g.channels:
            raise ValueError(f"latent has {c} channels, codec has {g.channels}")
        h, w = lh * g.spatial_stride, lw * g.spatial_stride
        x = F.pixel_shuffle(latent.transpose(1, 2).reshape(b * t, c, lh, lw), g.spatial_stride)
        x = x.reshape(b, t, 3, g.temporal_stride, h, w).permute(0, 2, 1, 3, 4, 5)
        x = x.reshape(b, 3, t * g.temporal_stride, h, w)
        return x[:, :, g.temporal_stride - 1 :] if g.causal_first_frame else x


class DeterministicAudioCodec(AudioCodec):
    """Frames of ``hop_length`` samples become the channels of one latent (zero-padded at the end)."""

    def __init__(self, sample_rate: int = 16_000, hop_length: int = 640) -> None:
        self.geometry = AudioGeometry(channels=hop_length, sample_rate=sample_rate, hop_length=hop_length)

    def encode(self, waveform: Tensor) -> Tensor:
        if waveform.ndim != 3 or waveform.shape[1] != 1:
            raise ValueError(f"expected a mono waveform [B, 1, N], got {tuple(waveform.shape)}")
        hop = self.geometry.hop_length
        n = waveform.shape[-1]
        x = F.pad(waveform[:, 0], (0, -n % hop))
        return x.reshape(x.shape[0], -1, hop).transpose(1, 2)

    def decode(self, latent: Tensor) -> Tensor:
        return latent.transpose(1, 2).reshape(latent.shape[0], 1, -1)
