"""Generic FSDP2 helpers, model-agnostic (torchtitan's ``distributed/`` split).

Order matters and is the one torchtitan uses: activation checkpointing wraps each block, then
per-block ``torch.compile``, then ``fully_shard`` on each block and finally on the root, so every
block is one all-gather / reduce-scatter unit and the root holds what is left (embeddings, heads).
Every helper is idempotent: applying it twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed._composable import checkpoint
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard


def mixed_precision(
    param_dtype: torch.dtype | None = torch.bfloat16, reduce_dtype: torch.dtype | None = torch.float32
):
    """Compute in ``param_dtype``, reduce gradients in ``reduce_dtype``; master weights stay fp32.

    ``None`` keeps the parameters' own dtype (fp32 everywhere: the exact-parity setting for tests).
    """
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)


def apply_activation_checkpointing(blocks: nn.ModuleList) -> None:
    """Recompute each block's activations in backward (non-reentrant), keeping only block inputs.

    The composable API installs hooks on the block itself instead of wrapping it, so parameter names
    (state dicts, regex parameter groups) are the same with and without checkpointing.
    """
    for block in blocks:
        if checkpoint.state(block) is None:
            checkpoint(block, preserve_rng_state=False)


def apply_compile(blocks: nn.ModuleList, backend: str = "inductor") -> None:
    """``torch.compile`` each block in place with ``module.compile()`` (same module, same names).

    Blocks of one kind share a compiled graph: parameters are graph inputs, not constants.
    """
    for block in blocks:
        if getattr(block, "_compiled_call_impl", None) is None:
            block.compile(backend=backend, fullgraph=False)


def apply_fsdp(
    blocks: Iterable[nn.Module],
    root: nn.Module,
    mesh: DeviceMesh | None,
    mp_policy: MixedPrecisionPolicy,
    reshard_after_forward: bool = True,
) -> None:
    """``fully_shard`` each block, then the root (which gathers everything not inside a block)."""
    for block in blocks:
        if not isinstance(block, FSDPModule):
            fully_shard(block, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
    if not isinstance(root, FSDPModule):
        # The root's parameters are needed again right away in backward; keep them gathered.
        fully_shard(root, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=False)
