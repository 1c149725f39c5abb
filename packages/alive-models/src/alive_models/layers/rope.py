"""Rotary position embeddings over real-valued, multi-axis positions.

One module serves the video tower's 3D (t, h, w) RoPE, the audio tower's 1D RoPE and the temporal
RoPE inside TA-CrossAttn: positions are floats (UniTemp positions and reference offsets are not
integers), each axis owns a slice of head_dim. Rotate-half layout (what liger-kernel's fused kernel
expects), so cos/sin are [.., L, D] with the frequency vector repeated twice.

Positions depend only on shapes, so :meth:`RotaryEmbedding.table` caches (cos, sin) per
(key, device, dtype): sampler steps, guidance passes and training steps with the same shapes reuse
them, and a warm forward builds no table and copies nothing from the host.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from torch import Tensor, nn

from alive_models.layers.kernels import use_liger

Rope = tuple[Tensor, Tensor]


class RotaryEmbedding(nn.Module):
    """Turns positions [B, L, n_axes] into (cos, sin) [B, L, head_dim] for :func:`apply_rotary`.

    Owns no tensors: the frequencies are recomputed in float64 whenever a table is built (rarely, see
    :meth:`table`), so casting the model to bf16 cannot degrade them.
    """

    def __init__(self, axes_dims: tuple[int, ...], theta: float = 10_000.0, cache_size: int = 32) -> None:
        super().__init__()
        if any(d % 2 for d in axes_dims):
            raise ValueError(f"every RoPE axis needs an even dim, got {axes_dims}")
        self.axes_dims = tuple(axes_dims)
        self.theta = theta
        self.cache_size = cache_size
        self._tables: OrderedDict[Hashable, Rope] = OrderedDict()

    def inv_freq(self, device: torch.device | str = "cpu") -> list[Tensor]:
        """Per axis, the float64 inverse frequencies theta^(-2i/d) of its slice of head_dim."""
        return [
            1.0 / self.theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
            for d in self.axes_dims
        ]

    def forward(self, positions: Tensor) -> Rope:
        """float64 (cos, sin) for ``positions`` [..., L, n_axes] on their device (no caching)."""
        if positions.shape[-1] != len(self.axes_dims):
            raise ValueError(f"positions have {positions.shape[-1]} axes, RoPE expects {len(self.axes_dims)}")
        angles = torch.cat(
            [
                positions[..., axis, None].double() * freqs
                for axis, freqs in enumerate(self.inv_freq(positions.device))
            ],
            dim=-1,
        )
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def table(
        self, key: Hashable, positions: Callable[[], Tensor], device: torch.device, dtype: torch.dtype
    ) -> Rope:
        """Cached (cos, sin) [1, L, head_dim] in ``dtype`` on ``device``.

        ``positions()`` builds the [L, n_axes] positions on the host; it runs only on a cache miss, so
        ``key`` must determine them (the shapes they come from). The table is built outside autograd
        and outside inference mode, so one built during sampling serves training too.
        """
        full_key = (key, torch.device(device), dtype)
        hit = self._tables.get(full_key)
        if hit is not None:
            self._tables.move_to_end(full_key)
            return hit
        with torch.inference_mode(False), torch.no_grad():
            cos, sin = self(positions()[None])
            hit = (cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype))
        self._tables[full_key] = hit
        if len(self._tables) > self.cache_size:
            self._tables.popitem(last=False)
        return hit


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
