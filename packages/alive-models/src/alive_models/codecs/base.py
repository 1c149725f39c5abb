"""The codec interface: encode/decode plus the geometry the rest of the code needs.

Every consumer of temporal or spatial strides (UniTemp-RoPE, latent shapes, data caching) reads
them from a codec's geometry, never from constants.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

from torch import Tensor

from alive_models.geometry import Timeline


@dataclass(frozen=True)
class VideoGeometry:
    """Latent channels and strides of a video codec. Pixel video is [B, 3, F, H, W] in [-1, 1]."""

    channels: int
    spatial_stride: int
    temporal_stride: int
    causal_first_frame: bool

    @property
    def timeline(self) -> Timeline:
        """The temporal part of this geometry (frame <-> latent counts); fps and audio rate are defaults."""
        return Timeline(temporal_stride=self.temporal_stride, causal_first_frame=self.causal_first_frame)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T, H, W) of the latent for a clip; raises on sizes the codec cannot take."""
        s = self.spatial_stride
        if height % s or width % s:
            raise ValueError(f"{height}x{width} frames: height and width must be multiples of {s}")
        return self.timeline.num_video_latents(frames), height // s, width // s


@dataclass(frozen=True)
class AudioGeometry:
    """Latent channels and rate of an audio codec. Waveforms are [B, 1, N] mono at ``sample_rate``."""

    channels: int
    sample_rate: int
    hop_length: int  # waveform samples per latent

    @property
    def latent_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def num_latents(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.hop_length)


class VideoCodec(abc.ABC):
    """Pixels [B, 3, F, H, W] in [-1, 1] <-> latents [B, C, T, H/s, W/s]."""

    geometry: VideoGeometry

    @abc.abstractmethod
    def encode(self, video: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def decode(self, latent: Tensor) -> Tensor: ...


class AudioCodec(abc.ABC):
    """Mono waveform [B, 1, N] at ``geometry.sample_rate`` <-> latents [B, C, ceil(N / hop)]."""

    geometry: AudioGeometry

    @abc.abstractmethod
    def encode(self, waveform: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def decode(self, latent: Tensor) -> Tensor: ...


def timeline_for(video: VideoGeometry, audio: AudioGeometry, fps: float) -> Timeline:
    """The shared timeline (UniTemp-RoPE) implied by a pair of codecs and the video frame rate."""
    return Timeline(
        fps=fps,
        temporal_stride=video.temporal_stride,
        causal_first_frame=video.causal_first_frame,
        audio_latent_rate=audio.latent_rate,
    )
