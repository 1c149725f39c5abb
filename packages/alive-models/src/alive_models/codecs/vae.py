"""Adapters for real VAEs loaded from local Hugging Face-format directories (diffusers, optional extra).

- Video: Wan2.1 VAE (``AutoencoderKLWan``): 16 channels, 8x spatial, 4x temporal with a causal first
  frame. Latents are normalised per channel with the checkpoint's ``latents_mean`` / ``latents_std``.
  Decoding is causal frame by frame inside diffusers (bounded memory over time); ``tiling=True`` also
  tiles space, for long or large clips.
- Audio: Oobleck (``AutoencoderOobleck``, the Stable Audio Open waveform VAE): continuous latents at
  sample_rate / prod(downsampling_ratios) per second. It is the closest packaged relative of the
  paper's WavVAE (a waveform-domain VAE with continuous latents); configured for 16 kHz mono with
  ratios multiplying to 640 it gives 25 latents/s. Stereo checkpoints get the mono signal on both
  channels and are averaged back on decode.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from alive_models.codecs.base import AudioCodec, AudioGeometry, VideoCodec, VideoGeometry
from alive_models.local_files import local_model_dir


def _diffusers():
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("loading a VAE needs diffusers: pip install 'alive-models[vae]'") from e
    return diffusers


class WanVideoCodec(VideoCodec):
    """A Wan2.1-format video VAE. Build with :meth:`from_pretrained`."""

    def __init__(self, vae: torch.nn.Module, tiling: bool = False) -> None:
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        if tiling:
            vae.enable_tiling()
        self.geometry = VideoGeometry(
            channels=cfg.z_dim,
            spatial_stride=cfg.scale_factor_spatial or 2 ** (len(cfg.dim_mult) - 1),
            temporal_stride=cfg.scale_factor_temporal or 2 ** sum(cfg.temperal_downsample),
            causal_first_frame=True,  # Wan's causal 3D convolutions encode frame 0 on its own
        )
        self._mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        tiling: bool = False,
    ) -> WanVideoCodec:
        vae = _diffusers().AutoencoderKLWan.from_pretrained(local_model_dir(path), torch_dtype=dtype)
        return cls(vae.to(device), tiling=tiling)

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        self.geometry.latent_shape(*video.shape[2:])  # clear error on unsupported sizes
        posterior = self.vae.encode(video.to(self._dtype)).latent_dist
        z = posterior.mode().float()
        return (z - self._mean.to(z.device)) / self._std.to(z.device)

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        z = latent.float() * self._std.to(latent.device) + self._mean.to(latent.device)
        return self.vae.decode(z.to(self._dtype)).sample.float().clamp(-1, 1)


class OobleckAudioCodec(AudioCodec):
    """An Oobleck-format waveform VAE. Build with :meth:`from_pretrained`."""

    def __init__(self, vae: torch.nn.Module) -> None:
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.audio_channels = cfg.audio_channels
        self.geometry = AudioGeometry(
            channels=cfg.decoder_input_channels,
            sample_rate=cfg.sampling_rate,
            hop_length=math.prod(cfg.downsampling_ratios),
        )

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> OobleckAudioCodec:
        vae = _diffusers().AutoencoderOobleck.from_pretrained(local_model_dir(path), torch_dtype=dtype)
        return cls(vae.to(device))

    @torch.no_grad()
    def encode(self, waveform: Tensor) -> Tensor:
        if waveform.ndim != 3 or waveform.shape[1] != 1:
            raise ValueError(f"expected a mono waveform [B, 1, N], got {tuple(waveform.shape)}")
        hop = self.geometry.hop_length
        x = F.pad(waveform, (0, -waveform.shape[-1] % hop)).expand(-1, self.audio_channels, -1)
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(x.to(dtype)).latent_dist.mean.float()

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        wave = self.vae.decode(latent.to(dtype)).sample.float().mean(dim=1, keepdim=True)
        # Transposed convolutions can come out a few samples short; the contract is hop samples per latent.
        n = latent.shape[-1] * self.geometry.hop_length
        return F.pad(wave, (0, max(0, n - wave.shape[-1])))[..., :n]
