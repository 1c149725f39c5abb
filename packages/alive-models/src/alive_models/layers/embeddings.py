"""Timestep embedding, MLP and the latent <-> token patchify of the video tower."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """t: [B] in [0, 1] (rectified-flow time). Scaled by 1000 so the frequencies span the range well."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of t -> 2-layer MLP -> width ``dim``."""

    def __init__(self, freq_dim: int, dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, t: Tensor) -> Tensor:
        emb = sinusoidal_embedding(t, self.freq_dim).to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(emb)))


class MLP(nn.Module):
    """GELU(tanh) feed-forward, hidden width ``ratio * dim``."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def patchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """[B, C, T, H, W] -> [B, (T/pt)(H/ph)(W/pw), C*pt*ph*pw], tokens in (t, h, w) raster order."""
    b, c, t, h, w = x.shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent {tuple(x.shape[2:])} is not divisible by patch {patch}")
    x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify(
    tokens: Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int], channels: int
) -> Tensor:
    """Inverse of :func:`patchify` for a token grid (T/pt, H/ph, W/pw)."""
    b = tokens.shape[0]
    gt, gh, gw = grid
    pt, ph, pw = patch
    x = tokens.reshape(b, gt, gh, gw, channels, pt, ph, pw)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, channels, gt * pt, gh * ph, gw * pw)


def video_grid_positions(grid: tuple[int, int, int], t_offset: float = 0.0) -> Tensor:
    """(t, h, w) float64 positions [T*H*W, 3] of a token grid in raster order; t shifted by ``t_offset``."""
    gt, gh, gw = grid
    t, h, w = torch.meshgrid(
        torch.arange(gt, dtype=torch.float64) + t_offset,
        torch.arange(gh, dtype=torch.float64),
        torch.arange(gw, dtype=torch.float64),
        indexing="ij",
    )
    return torch.stack([t, h, w], dim=-1).reshape(-1, 3)
