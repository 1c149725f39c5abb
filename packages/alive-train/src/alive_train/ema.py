"""An exponential moving average of the trainable weights that lives on the same shards as they do.

Lightning's ``WeightAveraging`` keeps a full copy of the model, which a sharded 14B model cannot
afford. Here each rank keeps an fp32 copy of its own local shards only and updates it in place with
one ``torch._foreach_lerp_`` per step (no communication). The copies are DTensors with the
parameters' placements, so distributed checkpointing saves and reloads them shard by shard, and the
export reads them like the weights themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from alive_train.param_groups import canonical_name


def _local(t: Tensor) -> Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


class ShardedEMA:
    """EMA of ``model``'s parameters that require grad, keyed by canonical parameter name.

    ``decay`` is the target; with ``warmup`` the decay used after n updates is
    min(decay, (1 + n) / (10 + n)), so early averages are not dominated by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        named = [(canonical_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        with torch.no_grad():
            self.shadow: list[Tensor] = [p.detach().clone().float() for p in self._params]
            # Views of the shadows' local storage: updated in place, and DCP loads into it in place.
            self._shadow_local = [_local(s) for s in self.shadow]

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> float:
        """shadow <- decay * shadow + (1 - decay) * param, on the local shards; returns the decay used."""
        decay = self.current_decay()
        params = [_local(p.detach()) for p in self._params]
        if any(p.dtype != torch.float32 for p in params):
            params = [p.float() for p in params]
        torch._foreach_lerp_(self._shadow_local, params, 1.0 - decay)
        self.updates += 1
        return decay

    def state_dict(self) -> dict[str, Tensor]:
        """Name -> shadow tensor (DTensors on a sharded model): load in place, e.g. by DCP."""
        return dict(zip(self.names, self.shadow, strict=True))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averages into ``model``'s matching parameters (same sharding)."""
        own = dict(zip(self.names, self.shadow, strict=True))
        for name, p in model.named_parameters():
            shadow = own.get(canonical_name(name))
            if shadow is not None:
                _local(p).copy_(_local(shadow))

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averages in the tracked parameters for the duration (validation), the training weights
        restored after, bit for bit; local shards only, no communication."""
        params = [_local(p.detach()) for p in self._params]
        with torch.no_grad():
            backup = [p.clone() for p in params]
            torch._foreach_copy_(params, self._shadow_local)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, backup)
