"""The joint model's parallelize plan, shared by training (Lightning ModelParallelStrategy calls it
from ``configure_model``) and multi-GPU inference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from alive_models.joint import JointAVDiT
from alive_models.parallel.fsdp import (
    apply_activation_checkpointing,
    apply_compile,
    apply_fsdp,
    mixed_precision,
)


@dataclass(frozen=True)
class ParallelPlan:
    """What to apply. Defaults are the training settings on GPU: AC + FSDP with bf16 compute."""

    activation_checkpointing: bool = True
    compile: bool = False
    compile_backend: str = "inductor"  # "aot_eager" traces the same graphs without generating code
    fsdp: bool = True
    param_dtype: torch.dtype | None = torch.bfloat16
    reduce_dtype: torch.dtype | None = torch.float32
    reshard_after_forward: bool = True


def block_lists(model: JointAVDiT) -> list[nn.ModuleList]:
    """The repeated units of the joint model: each is one checkpoint / compile / shard unit."""
    lists = [model.video.dual_blocks, model.video.single_blocks, model.audio.blocks]
    lists += [m for m in model.fusion.children() if isinstance(m, nn.ModuleList)]
    return lists


def parallelize_joint(
    model: JointAVDiT, mesh: DeviceMesh | None, plan: ParallelPlan = ParallelPlan()
) -> JointAVDiT:
    """Apply AC, compile and FSDP2 to ``model`` in place, in that order; idempotent. Returns ``model``.

    Works on a meta-device model (materialise afterwards with ``materialize``, which then allocates
    only the local shards) and on a materialised one.
    """
    lists = block_lists(model)
    if plan.activation_checkpointing:
        for blocks in lists:
            apply_activation_checkpointing(blocks)
    if plan.compile:
        for blocks in lists:
            apply_compile(blocks, plan.compile_backend)
    if plan.fsdp:
        policy = mixed_precision(plan.param_dtype, plan.reduce_dtype)
        apply_fsdp([b for blocks in lists for b in blocks], model, mesh, policy, plan.reshard_after_forward)
    return model
