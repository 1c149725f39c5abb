"""Run by test_parallel.py under torchrun (2 processes, gloo): shard the tiny joint model with FSDP2,
compare against an unsharded copy, write this rank's findings to OUT/rank{N}.json."""

import argparse
import copy
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule

from alive_models import build_model, get_preset
from alive_models.flow import flow_loss
from alive_models.parallel import ParallelPlan, block_lists, parallelize_joint
from alive_models.testing import random_inputs, randomize_zero_inits


def loss_of(model, inputs):
    out = model(inputs)
    return flow_loss(out.video, torch.zeros_like(out.video)) + flow_loss(
        out.audio, torch.zeros_like(out.audio)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ac", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = get_preset("tiny")
    model = build_model(config, seed=0)
    randomize_zero_inits(model)
    reference = copy.deepcopy(model)
    batch = random_inputs(config, batch=4, i2v=True, references=1, generator=torch.Generator().manual_seed(0))
    batch.mutual = torch.tensor([True, False, True, True])

    ref_loss = loss_of(reference, batch)  # unsharded, whole batch
    ref_loss.backward()

    dtype = torch.bfloat16 if args.bf16 else None
    plan = ParallelPlan(
        activation_checkpointing=args.ac, param_dtype=dtype, reduce_dtype=torch.float32 if args.bf16 else None
    )
    mesh = init_device_mesh("cpu", (world,))
    parallelize_joint(model, mesh, plan)
    parallelize_joint(model, mesh, plan)  # idempotent
    loss = loss_of(model, batch.map(lambda x: x.chunk(world)[rank]))  # each rank its half
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach().float())

    grad_error = 0.0
    sharded_grads, reference_grads = [], []
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        full = p.grad.full_tensor()
        grad_error = max(grad_error, ((full - q.grad).abs().max() / (q.grad.abs().max() + 1e-8)).item())
        sharded_grads.append(full.flatten())
        reference_grads.append(q.grad.flatten())
    cosine = torch.nn.functional.cosine_similarity(
        torch.cat(sharded_grads), torch.cat(reference_grads), dim=0
    )
    result = {
        "loss_error": abs(torch.stack(losses).mean() - ref_loss).item(),
        "grad_error": grad_error,
        "grad_cosine": cosine.item(),
        "grads_fp32": all(p.grad.dtype == torch.float32 for p in model.parameters()),
        "sharded": all(isinstance(b, FSDPModule) for bl in block_lists(model) for b in bl),
        "local_fraction": sum(p.to_local().numel() for p in model.parameters())
        / sum(q.numel() for q in reference.parameters()),
    }
    (args.out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
