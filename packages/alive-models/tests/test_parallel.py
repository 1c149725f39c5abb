"""FSDP2 across two real processes (torchrun, gloo, CPU): sharded = unsharded computation."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alive_models.flow import flow_loss
from alive_models.parallel import ParallelPlan, apply_compile, block_lists, parallelize_joint
from alive_models.testing import random_inputs, randomize_zero_inits

WORKER = Path(__file__).with_name("fsdp_worker.py")


def run_two_ranks(out: Path, *flags: str) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(WORKER),
        "--out",
        str(out),
        *flags,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("flags", [(), ("--ac",)], ids=["fsdp", "fsdp+ac"])
def test_two_process_fsdp_matches_unsharded_with_mutual_off_on_one_rank(tmp_path, flags):
    """Rank 0's samples are all "indep", rank 1's all "mutual": both ranks must still run every
    exchange module (each is an FSDP unit with its own all-gather), forward and backward."""
    for r in run_two_ranks(tmp_path, *flags):
        assert r["sharded"]
        assert r["loss_error"] < 1e-5, r
        assert r["grad_error"] < 1e-4, r
        assert 0.45 < r["local_fraction"] < 0.6, r  # each rank holds about half of every parameter


def test_two_process_bf16_compute_keeps_fp32_master_gradients(tmp_path):
    for r in run_two_ranks(tmp_path, "--bf16", "--ac"):
        assert r["grads_fp32"]
        assert r["grad_cosine"] > 0.99, r  # bf16 compute: the same direction as fp32, not bit-equal
        assert r["loss_error"] < 0.05, r


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> list[dict]:
    return run_two_ranks(tmp_path_factory.mktemp("fsdp"), "--mode", "scenarios")


def test_sharded_init_equals_unsharded_init_bitwise(scenarios):
    for r in scenarios:
        assert r["init_bitwise"], r
        assert r["init_shards_differ"], r  # the two halves of patch_embed are not copies of each other


def test_sharded_models_load_their_shard_and_save_the_full_weights(scenarios):
    for r in scenarios:
        assert r["load_sharded_bitwise"], r
        assert 0.45 < r["load_local_fraction"] < 0.6, r
        assert r["save_sharded_bitwise"], r
    files = scenarios[0]["save_files"]
    assert "config.json" in files and "model.safetensors.index.json" in files
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 1 and all(f.endswith(f"-of-{len(shards):05d}.safetensors") for f in shards)


@pytest.mark.parametrize("scenario", ["audio_only", "video_only", "flags"])
def test_one_stream_forwards_and_sample_flags_under_fsdp(scenarios, scenario):
    for r in scenarios:
        assert r[scenario]["loss_error"] < 1e-5, r[scenario]
        assert r[scenario]["grad_error"] < 1e-4, r[scenario]


@pytest.mark.slow
def test_two_process_fsdp_of_the_variants_with_routes_that_differ_between_ranks(tmp_path):
    """CCL and UniTalking sharded over two ranks whose samples take different routes (rank 0: LCT-only
    and v2a; rank 1: a2v and joint) and, for UniTalking, reference audio on one rank only: every
    fusion module is an FSDP unit and runs on both ranks, forward and backward, like the unsharded model."""
    for r in run_two_ranks(tmp_path, "--mode", "variants", "--ac"):
        for preset, found in r.items():
            assert found["sharded"], preset
            assert found["loss_error"] < 1e-5, (preset, found)
            assert found["grad_error"] < 1e-4, (preset, found)
            assert 0.45 < found["local_fraction"] < 0.6, (preset, found)
        assert r["tiny-ccl"]["fusion_lists"] == [
            4,
            3,
        ]  # audio -> video per video block, the reverse per audio block
        assert r["tiny-unitalking"]["fusion_lists"] == [4]  # one joint module per exchange point


def _loss(model, inputs):
    out = model(inputs)
    return flow_loss(out.video, torch.zeros_like(out.video)) + flow_loss(
        out.audio, torch.zeros_like(out.audio)
    )


def _step(model, inputs):
    loss = _loss(model, inputs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("compile", [False, True], ids=["ac", "ac+compile"])
def test_activation_checkpointing_and_compile_keep_names_and_values(tiny_config, tiny_model, compile):
    """Parameter names (state dicts, regex parameter groups) and results are the same with AC on every
    block. The compile case compiles one block list with ``aot_eager`` (the graphs inductor would get,
    without generating code) to stay cheap; the whole plan with inductor is the slow test below."""
    randomize_zero_inits(tiny_model)
    inputs = random_inputs(tiny_config, batch=2, i2v=True, references=1)
    inputs.mutual = torch.tensor([True, False])
    keys, names = list(tiny_model.state_dict()), [n for n, _ in tiny_model.named_parameters()]
    expected_loss, expected_grads = _step(tiny_model, inputs)
    parallelize_joint(tiny_model, None, ParallelPlan(fsdp=False))
    parallelize_joint(tiny_model, None, ParallelPlan(fsdp=False))  # idempotent
    if compile:
        apply_compile(tiny_model.audio.blocks, backend="aot_eager")
        assert all(b._compiled_call_impl is not None for b in tiny_model.audio.blocks)
    assert list(tiny_model.state_dict()) == keys
    assert [n for n, _ in tiny_model.named_parameters()] == names
    loss, grads = _step(tiny_model, inputs)
    torch.testing.assert_close(loss, expected_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], msg=name)


@pytest.mark.slow
def test_full_plan_with_inductor_compile_matches_eager(tiny_config, tiny_model):
    randomize_zero_inits(tiny_model)
    inputs = random_inputs(tiny_config, batch=2, i2v=True, references=1)
    inputs.mutual = torch.tensor([True, False])
    keys, names = list(tiny_model.state_dict()), [n for n, _ in tiny_model.named_parameters()]
    expected_loss, expected_grads = _step(tiny_model, inputs)
    parallelize_joint(tiny_model, None, ParallelPlan(fsdp=False, compile=True))
    assert all(b._compiled_call_impl is not None for bl in block_lists(tiny_model) for b in bl)
    assert list(tiny_model.state_dict()) == keys
    assert [n for n, _ in tiny_model.named_parameters()] == names
    loss, grads = _step(tiny_model, inputs)
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-4, rtol=1e-4, msg=name)
