"""Multi-GPU inference with training's parallelize plan (``alive_models.parallel``): FSDP2 across
the ranks of a ``torchrun`` launch, every rank running the same sampling, rank 0 writing the result.

Sharding only spreads the weights: each block's parameters are all-gathered for its forward and
freed after it (``reshard_after_forward``), so N ranks hold about 1/N of the model between blocks.
No activation checkpointing (nothing is kept for a backward) and no mixed-precision policy (the
weights are loaded in the dtype asked for and computed in it), so a sharded fp32 run computes what a
single process does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from alive_models.joint import JointAVDiT
from alive_models.parallel import ParallelPlan, parallelize_joint

INFERENCE_PLAN = ParallelPlan(
    activation_checkpointing=False, compile=False, param_dtype=None, reduce_dtype=None
)


def shard_for_inference(mesh: DeviceMesh):
    """The ``parallelize`` callback of ``JointAVDiT.from_pretrained``: training's plan, inference
    settings."""

    def parallelize(model: JointAVDiT) -> JointAVDiT:
        return parallelize_joint(model, mesh, INFERENCE_PLAN)

    return parallelize


@dataclass(frozen=True)
class Session:
    """Where this process runs: its rank among ``world`` and its device; ``mesh`` is None alone."""

    rank: int
    world: int
    device: torch.device
    mesh: DeviceMesh | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def session(device: str, distributed: bool) -> Iterator[Session]:
    """A single-process session, or (``distributed``) one rank of a torchrun launch: the process
    group (NCCL on CUDA, gloo on CPU), this rank's device (``cuda:LOCAL_RANK``) and a 1-D mesh."""
    if not distributed:
        yield Session(0, 1, torch.device(device), None)
        return
    if "RANK" not in os.environ:
        raise RuntimeError(
            "--distributed needs a torchrun launch (torchrun --nproc-per-node N -m alive_infer.cli ...)"
        )
    kind = torch.device(device).type
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        rank_device = torch.device("cuda", local_rank)
    else:
        rank_device = torch.device(kind)
    dist.init_process_group(
        backend="nccl" if kind == "cuda" else "gloo", device_id=rank_device if kind == "cuda" else None
    )
    try:
        world = dist.get_world_size()
        mesh = init_device_mesh(kind, (world,))
        yield Session(dist.get_rank(), world, rank_device, mesh)
    finally:
        dist.destroy_process_group()
