"""The output head shared by both towers."""

from __future__ import annotations

from torch import Tensor, nn

from alive_models.layers.norms import Modulation, ZeroInitLinear, layer_norm, modulate


class FinalLayer(nn.Module):
    """AdaLN (shift, scale from t) -> zero-initialised projection to the output channels."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.modulation = Modulation(dim, dim, 2)
        self.proj = ZeroInitLinear(dim, out_dim)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        shift, scale = self.modulation(temb)
        return self.proj(modulate(layer_norm(x), shift, scale))
