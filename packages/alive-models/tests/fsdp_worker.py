"""Run by test_parallel.py under torchrun (2 processes, gloo): the tiny joint model sharded with FSDP2
against an unsharded copy. Writes this rank's findings to OUT/rank{N}.json.

--mode parity: one training step, each rank on its half of a batch whose "mutual" flags are all off
on rank 0 and all on on rank 1 (the rank-dependent branch that once desynchronised the collectives).
--mode scenarios: sharded init, save/load of sharded models, one-stream forwards.
--mode variants: the CCL and UniTalking fusions, one training step each, with routes that differ
between the ranks (rank 0: t2v_t2a and v2a samples; rank 1: a2v and t2va) and, for UniTalking,
reference audio on rank 1 only (rank 0 passes none at all: the branch must still run there).
"""

import argparse
import copy
import dataclasses
import json
import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule

from alive_models import JointAVDiT, build_model, get_preset, materialize
from alive_models.flow import flow_loss
from alive_models.parallel import ParallelPlan, block_lists, parallelize_joint
from alive_models.testing import random_inputs, randomize_zero_inits

FP32 = ParallelPlan(activation_checkpointing=False, param_dtype=None, reduce_dtype=None)


def loss_of(model, inputs):
    out = model(inputs)
    return sum(flow_loss(o, torch.zeros_like(o)) for o in (out.video, out.audio) if o is not None)


def step_errors(model, reference, batch, rank: int, world: int, local=None) -> dict:
    """One forward + backward of the sharded model on this rank's half of ``batch`` against the
    unsharded reference on all of it: loss and gradient errors (gradients are averaged by FSDP).
    ``local`` may rewrite this rank's half (same meaning, another form)."""
    model.zero_grad(set_to_none=True)
    reference.zero_grad(set_to_none=True)
    ref_loss = loss_of(reference, batch)
    ref_loss.backward()
    half = batch.map(lambda x: x.chunk(world)[rank])
    loss = loss_of(model, half if local is None else local(half))
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach().float())
    grad_error, sharded, unsharded = 0.0, [], []
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if q.grad is None:
            assert p.grad is None, name
            continue
        full = p.grad.full_tensor()
        grad_error = max(grad_error, ((full - q.grad).abs().max() / (q.grad.abs().max() + 1e-8)).item())
        sharded.append(full.flatten())
        unsharded.append(q.grad.flatten())
    cosine = torch.nn.functional.cosine_similarity(torch.cat(sharded), torch.cat(unsharded), dim=0)
    return {
        "loss_error": abs(torch.stack(losses).mean() - ref_loss).item(),
        "grad_error": grad_error,
        "grad_cosine": cosine.item(),
        "grads_fp32": all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None),
    }


def full_state(model) -> dict[str, torch.Tensor]:
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def bitwise_equal(state: dict, reference) -> bool:
    expected = reference.state_dict()
    return state.keys() == expected.keys() and all(torch.equal(state[k], v) for k, v in expected.items())


def local_fraction(model, reference) -> float:
    return sum(p.to_local().numel() for p in model.parameters()) / sum(
        q.numel() for q in reference.parameters()
    )


def parity(args, config, mesh, rank, world) -> dict:
    model = build_model(config, seed=0)
    randomize_zero_inits(model)
    reference = copy.deepcopy(model)
    batch = random_inputs(config, batch=4, i2v=True, references=1, generator=torch.Generator().manual_seed(0))
    batch.mutual = torch.tensor([False, False, True, True])  # rank 0: all "indep"; rank 1: all "mutual"
    dtype = torch.bfloat16 if args.bf16 else None
    plan = ParallelPlan(
        activation_checkpointing=args.ac, param_dtype=dtype, reduce_dtype=torch.float32 if args.bf16 else None
    )
    parallelize_joint(model, mesh, plan)
    parallelize_joint(model, mesh, plan)  # idempotent
    return {
        **step_errors(model, reference, batch, rank, world),
        "sharded": all(isinstance(b, FSDPModule) for bl in block_lists(model) for b in bl),
        "local_fraction": local_fraction(model, reference),
    }


def scenarios(args, config, mesh, rank, world) -> dict:
    result = {}
    # Sharded init: meta -> fully_shard -> materialize must equal an unsharded init, bitwise.
    sharded = parallelize_joint(build_model(config, device="meta"), mesh, FP32)
    materialize(sharded, "cpu", seed=0)
    unsharded = build_model(config, seed=0)
    result["init_bitwise"] = bitwise_equal(full_state(sharded), unsharded)
    weight = sharded.video.patch_embed.weight.to_local()
    shards = [torch.zeros_like(weight) for _ in range(world)]
    dist.all_gather(shards, weight.contiguous())
    result["init_shards_differ"] = not torch.equal(shards[0], shards[1])

    # Save / load: each rank reads only its shard; a sharded model saves the full weights.
    reference = build_model(config, seed=0)
    randomize_zero_inits(reference)
    reference.save_pretrained(args.out / "plain")  # every rank calls, rank 0 writes
    loaded = JointAVDiT.from_pretrained(
        args.out / "plain", parallelize=lambda m: parallelize_joint(m, mesh, FP32)
    )
    result["load_sharded_bitwise"] = bitwise_equal(full_state(loaded), reference)
    result["load_local_fraction"] = local_fraction(loaded, reference)
    loaded.save_pretrained(args.out / "from_sharded", max_shard_size=200_000)
    result["save_files"] = sorted(p.name for p in (args.out / "from_sharded").iterdir())
    result["save_sharded_bitwise"] = bitwise_equal(
        JointAVDiT.from_pretrained(args.out / "from_sharded").state_dict(), reference
    )

    # One-stream forwards (T2A, T2V) and per-sample flags through the root FSDP unit.
    batch = random_inputs(config, batch=4, generator=torch.Generator().manual_seed(1))
    batch.mutual = torch.tensor([False, True, True, False])
    batch.audio_clean = torch.tensor([False, True, False, False])
    batch.audio_mask = torch.ones(4, batch.audio.shape[-1], dtype=torch.bool)
    batch.audio_mask[2, -3:] = False
    for name, inputs in {
        "audio_only": dataclasses.replace(batch, video=None),
        "video_only": dataclasses.replace(batch, audio=None),
        "flags": batch,
    }.items():
        result[name] = step_errors(loaded, reference, inputs, rank, world)
    return result


def variants(args, config, mesh, rank, world) -> dict:
    from alive_models.fusion import ExchangeRoutes

    result = {}
    for preset in ("tiny-ccl", "tiny-unitalking"):
        config = get_preset(preset)
        model = build_model(config, seed=0)
        randomize_zero_inits(model)
        reference = copy.deepcopy(model)
        g = torch.Generator().manual_seed(2)
        batch = random_inputs(config, batch=4, i2v=True, references=1, latent_frames=5, generator=g)
        routes = ExchangeRoutes.for_tasks(["t2v_t2a", "v2a", "a2v", "t2va"])
        batch.video_reads_audio, batch.audio_reads_video = routes.video_reads_audio, routes.audio_reads_video
        batch.video_clean = torch.tensor([False, True, False, False])
        batch.audio_clean = torch.tensor([False, False, True, False])
        local = None
        if config.audio.reference_audio:
            batch.reference_audio = torch.randn(4, config.audio.in_channels, 6, generator=g)
            batch.reference_audio_mask = torch.tensor(
                [[False] * 6] * 2 + [[True] * 6, [True] * 4 + [False] * 2]
            )
            if rank == 0:  # no reference in this rank's samples: none passed at all

                def local(half):
                    return dataclasses.replace(half, reference_audio=None, reference_audio_mask=None)

        plan = ParallelPlan(activation_checkpointing=args.ac, param_dtype=None, reduce_dtype=None)
        parallelize_joint(model, mesh, plan)
        result[preset] = {
            **step_errors(model, reference, batch, rank, world, local),
            "sharded": all(isinstance(b, FSDPModule) for bl in block_lists(model) for b in bl),
            "fusion_lists": [len(bl) for bl in block_lists(model)][3:],
            "local_fraction": local_fraction(model, reference),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mode", choices=["parity", "scenarios", "variants"], default="parity")
    parser.add_argument("--ac", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    # A rank stuck in a collective the other never joins fails after 60 s instead of hanging.
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    run = {"parity": parity, "scenarios": scenarios, "variants": variants}[args.mode]
    result = run(args, get_preset("tiny"), mesh, rank, world)
    (args.out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
