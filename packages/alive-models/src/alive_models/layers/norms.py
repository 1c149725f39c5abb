"""Normalisation and timestep modulation (AdaLN-Zero and the TA-CrossAttn output AdaLN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alive_models.layers.kernels import use_liger


class RMSNorm(nn.RMSNorm):
    """RMSNorm with a learnable scale; liger's fused kernel on CUDA, torch's rms_norm elsewhere."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=True)

    def forward(self, x: Tensor) -> Tensor:
        if use_liger(x):
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction

            return LigerRMSNormFunction.apply(x, self.weight, self.eps)
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class ZeroInitLinear(nn.Linear):
    """A Linear whose weight and bias start at zero: AdaLN-Zero gates, output heads, fusion gates."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


def layer_norm(x: Tensor) -> Tensor:
    """Affine-free LayerNorm in fp32, cast back: the modulation supplies scale and shift."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=1e-6).to(x.dtype)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x: [B, L, D]; shift, scale: [B, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Modulation(nn.Module):
    """AdaLN-Zero: SiLU(temb) -> zero-initialised Linear -> ``n`` vectors of width ``dim``.

    Zero init makes every modulated block the identity at initialisation (DiT's AdaLN-Zero).
    """

    def __init__(self, temb_dim: int, dim: int, n: int) -> None:
        super().__init__()
        self.n = n
        self.linear = ZeroInitLinear(temb_dim, n * dim)

    def forward(self, temb: Tensor) -> list[Tensor]:
        return list(self.linear(F.silu(temb)).chunk(self.n, dim=-1))


class OutputAdaLN(nn.Module):
    """Timestep-aware AdaLN on a cross-modal update before the residual add (seed 000 §2.1 TA-CrossAttn).

    The injected signal is normalised, then scaled, shifted and gated from the timestep. The timestep
    part (``time_mod``: [B, 3, dim]) comes from one projection shared by all modules of a direction;
    each module adds its own learned (shift, scale, gate) table (the Wan2.1 / PixArt-alpha layout,
    ~3*dim parameters per module instead of temb_dim*3*dim). Both start at zero, so the gate is zero and
    adding the fusion to pretrained towers changes nothing until it learns to.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.empty(3, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.table)

    def forward(self, update: Tensor, time_mod: Tensor) -> Tensor:
        shift, scale, gate = (time_mod + self.table).unbind(dim=1)
        return gate[:, None] * modulate(layer_norm(update), shift, scale)
