"""Rotary position embeddings over real-valued, multi-axis positions.

One module serves the video tower's 3D (t, h, w) RoPE, the audio tower's 1D RoPE and the temporal
RoPE inside TA-CrossAttn: positions are floats (UniTemp positions and reference offsets are not
integers), each axis owns a slice of head_dim. Rotate-half layout (what liger-kernel's fused kernel
expects), so cos/sin are [.., L, D] with the frequency vector repeated twice.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alive_models.layers.kernels import use_liger


class RotaryEmbedding(nn.Module):
    """Turns positions [B, L, n_axes] into (cos, sin) [B, L, head_dim] for :func:`apply_rotary`."""

    inv_freq: Tensor

    def __init__(self, axes_dims: tuple[int, ...], theta: float = 10_000.0) -> None:
        super().__init__()
        if any(d % 2 for d in axes_dims):
            raise ValueError(f"every RoPE axis needs an even dim, got {axes_dims}")
        self.axes_dims = tuple(axes_dims)
        self.theta = theta
        self.register_buffer("inv_freq", torch.empty(sum(axes_dims) // 2), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        freqs = [
            1.0 / self.theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=self.inv_freq.device) / d)
            for d in self.axes_dims
        ]
        with torch.no_grad():
            self.inv_freq.copy_(torch.cat(freqs).to(self.inv_freq.dtype))

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        if positions.shape[-1] != len(self.axes_dims):
            raise ValueError(f"positions have {positions.shape[-1]} axes, RoPE expects {len(self.axes_dims)}")
        # Each frequency belongs to one axis; gather that axis' position for it. fp32 keeps large
        # positions (long clips, -phi*k offsets) exact enough; cos/sin are cast at use.
        axis_of_freq = torch.repeat_interleave(
            torch.arange(len(self.axes_dims), device=positions.device),
            torch.tensor([d // 2 for d in self.axes_dims], device=positions.device),
        )
        angles = positions.float()[..., axis_of_freq] * self.inv_freq.float()
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, L, H, D]; cos, sin: [B or 1, L, D]. Plain PyTorch (torch.compile fuses it per block)."""
    cos, sin = cos[:, :, None].to(x.dtype), sin[:, :, None].to(x.dtype)
    return x * cos + _rotate_half(x) * sin


def apply_rotary_qk(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate queries and keys that share positions (self-attention): liger's fused kernel on CUDA."""
    if use_liger(q):
        from liger_kernel.ops.rope import LigerRopeFunction

        # liger wants [B, H, L, D] and cos/sin in q's dtype.
        qt, kt = LigerRopeFunction.apply(
            q.transpose(1, 2), k.transpose(1, 2), cos.to(q.dtype), sin.to(q.dtype), None, 1
        )
        return qt.transpose(1, 2), kt.transpose(1, 2)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
