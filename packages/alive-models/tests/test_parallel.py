"""FSDP2 across two real processes (torchrun, gloo, CPU): sharded = unsharded computation."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alive_models.flow import flow_loss
from alive_models.parallel import ParallelPlan, parallelize_joint
from alive_models.testing import random_inputs, randomize_zero_inits

WORKER = Path(__file__).with_name("fsdp_worker.py")


def run_two_ranks(tmp_path: Path, *flags: str) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(WORKER),
        "--out",
        str(tmp_path),
        *flags,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("flags", [(), ("--ac",)], ids=["fsdp", "fsdp+ac"])
def test_two_process_fsdp_matches_unsharded(tmp_path, flags):
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


def _loss(model, inputs):
    out = model(inputs)
    return flow_loss(out.video, torch.zeros_like(out.video)) + flow_loss(
        out.audio, torch.zeros_like(out.audio)
    )


def test_activation_checkpointing_keeps_values_and_state_dict_keys(tiny_model, inputs):
    randomize_zero_inits(tiny_model)
    keys = list(tiny_model.state_dict())
    expected = _loss(tiny_model, inputs)
    expected.backward()
    grads = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}
    tiny_model.zero_grad()
    parallelize_joint(tiny_model, None, ParallelPlan(fsdp=False))
    assert list(tiny_model.state_dict()) == keys
    loss = _loss(tiny_model, inputs)
    loss.backward()
    torch.testing.assert_close(loss, expected)
    # named_parameters() shows the wrapper's prefix (state_dict() hides it): compare in order.
    for (name, expected_grad), p in zip(grads.items(), tiny_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, expected_grad, msg=name)


@pytest.mark.slow
def test_per_block_compile_matches_eager(tiny_config, tiny_model):
    randomize_zero_inits(tiny_model)
    inputs = random_inputs(tiny_config, batch=2, i2v=True, references=1)
    expected = tiny_model(inputs)
    parallelize_joint(
        tiny_model, None, ParallelPlan(activation_checkpointing=False, fsdp=False, compile=True)
    )
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in tiny_model.video.dual_blocks)
    out = tiny_model(inputs)
    torch.testing.assert_close(out.video, expected.video, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.audio, expected.audio, atol=1e-5, rtol=1e-5)
