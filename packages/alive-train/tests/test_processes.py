"""Real launches of ``alive-train fit``: two processes (Lightning spawns the second; FSDP2 over gloo)
that train (one rank all "indep", the other all mutual), checkpoint and resume exactly, and a SIGUSR1
mid-run that saves, exits and resumes."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from alive_train.checkpoint import latest_checkpoint, load_weights, read_info

pytestmark = pytest.mark.slow
BIN = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "alive-train"


def launch(config: Path, *overrides: str, **kwargs) -> subprocess.Popen:
    exe = str(BIN) if BIN.exists() else "alive-train"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    # A fresh job: no SLURM, and none of the rendezvous variables an in-process run of this session
    # left behind (its MASTER_PORT is still bound by that process group).
    for name in (
        "SLURM_JOB_ID",
        "MASTER_ADDR",
        "MASTER_PORT",
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "NODE_RANK",
    ):
        env.pop(name, None)
    return subprocess.Popen(
        [exe, "fit", str(config), *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kwargs,
    )


def run(config: Path, *overrides: str, timeout: float = 540) -> str:
    proc = launch(config, *overrides)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def losses(uri: str, run_id: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, "loss/total")}


def test_two_processes_train_checkpoint_and_resume_exactly(tmp_path, write_stage_at, shards, model_spec):
    """Two ranks, where every batch of one is all "indep" (mutual dropout) and every batch of the other
    has the exchange on: they train together (no rank waits alone in the fusion's collectives), and a
    run killed after its step-3 checkpoint and relaunched gives the weights and loss of the
    uninterrupted one at step 4, bitwise.
    Each rank reads one batch per epoch here, so every step also crosses an epoch boundary."""
    from alive_data.loader import ResumableLoader
    from alive_data.stream import AVStream
    from alive_models import build_model
    from alive_train.config import ModelConfig, load_config
    from alive_train.module import joint_config

    steps = 4
    _rekeyed_shards(shards, tmp_path / "shards", epochs=steps)
    sections = {
        "trainer": {"accelerator": "cpu", "devices": 2, "log_every_n_steps": 1, "progress_bar": False},
        "checkpoint": {"every_n_steps": 1, "keep_last": 5},
    }
    whole = write_stage_at(tmp_path / "whole" / "stage.yaml", **sections)
    split = write_stage_at(tmp_path / "split" / "stage.yaml", **sections)
    for config in (whole, split):
        config.write_text(config.read_text().replace(str(shards), str(tmp_path / "shards")))
    pipeline = load_config(whole).pipeline()
    assert pipeline.tasks.mutual_dropout == 0.3
    flags, ends = [], []  # what each rank trains on, step by step; its position after the last step
    for rank in range(2):
        loader = ResumableLoader(AVStream(pipeline, rank=rank, world_size=2), num_workers=0)
        read = [batch for _ in range(steps) for batch in loader]
        flags.append([batch.mutual.tolist() for batch in read])
        ends.append(read[-1].loader_state)
    assert all(sorted([a, b]) == [[False, False], [True, True]] for a, b in zip(*flags, strict=True))

    out = run(whole, f"schedule.max_steps={steps}")
    assert f"steps: {steps} on 2 rank(s)" in out
    # The split run is the whole one killed right after its step-3 checkpoint: same run directory
    # (checkpoints, MLflow run id) without what came later, then relaunched.
    shutil.copytree(tmp_path / "whole" / "run", tmp_path / "split" / "run")
    shutil.rmtree(tmp_path / "split" / "run" / "checkpoints" / f"step-{steps:09d}")
    out = run(split, f"schedule.max_steps={steps}")
    assert "resuming from" in out and "step-000000003" in out
    ckpt_whole = latest_checkpoint(tmp_path / "whole" / "run" / "checkpoints")
    ckpt_split = latest_checkpoint(tmp_path / "split" / "run" / "checkpoints")
    assert ckpt_whole.name == ckpt_split.name == "step-000000004"
    assert len(list(ckpt_whole.glob("*.distcp"))) == 2  # one shard file per rank
    info = read_info(ckpt_split)
    for weights in ("model", "ema"):
        a, b = load_weights(ckpt_whole, weights), load_weights(ckpt_split, weights)
        assert all(torch.equal(a[k], b[k]) for k in a), weights
    run_info = info["mlflow"]
    assert run_info == read_info(ckpt_whole)["mlflow"]  # the relaunch reattached to the same run
    history = MlflowClient(run_info["uri"]).get_metric_history(run_info["run_id"], "loss/total")
    by_step: dict[int, list[float]] = {}
    for m in history:
        by_step.setdefault(m.step, []).append(m.value)
    assert sorted(by_step) == list(range(1, steps + 1)) and all(map(math.isfinite, by_step[steps]))
    assert len(by_step[steps]) == 2 and by_step[steps][0] == by_step[steps][1]  # step 4, twice, equal
    meta = torch.load(ckpt_split / "meta.pt", weights_only=True)
    positions = meta["StageDataModule"]["positions"]
    assert positions == ends  # every rank's own data position, after the last batch it trained
    trained = load_weights(ckpt_whole, "model")
    initial = build_model(joint_config(ModelConfig(**model_spec)), seed=0).state_dict()
    fusion = [k for k in initial if k.startswith("fusion.")]
    assert any(not torch.equal(trained[k], initial[k]) for k in fusion)  # the mutual rank's gradients arrived


def test_sigusr1_saves_at_a_step_boundary_exits_and_the_next_launch_resumes(tmp_path, write_stage_at):
    config = write_stage_at(
        tmp_path / "stage.yaml",
        trainer={"accelerator": "cpu", "devices": 1, "log_every_n_steps": 1, "progress_bar": False},
        checkpoint={"every_n_steps": 1000, "keep_last": 2},
        data={"num_workers": 1},  # a DataLoader worker receives the signal too
    )
    proc = launch(config, "schedule.max_steps=200", start_new_session=True)
    lines = []
    deadline = time.monotonic() + 400
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 3"):
            os.killpg(proc.pid, signal.SIGUSR1)  # like SLURM: every process of the job step
            break
        assert time.monotonic() < deadline, "".join(lines)[-3000:]
    rest, _ = proc.communicate(timeout=300)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out[-4000:]
    assert "requeue skipped: not under SLURM" in out
    saved = latest_checkpoint(tmp_path / "run" / "checkpoints")
    step = read_info(saved)["step"]
    assert 3 <= step < 200 and f"pre-empted at step {step}: checkpoint saved to {saved}" in out
    assert "exported" not in out  # a pre-empted run is not finished
    run_id = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())["run_id"]

    out = run(config, f"schedule.max_steps={step + 2}")
    assert f"resuming from {saved}" in out and f"reattached to run {run_id}" in out
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == f"step-{step + 2:09d}"
    assert (tmp_path / "exports" / "joint" / "model.safetensors").is_file()
    run_info = MlflowClient(read_info(saved)["mlflow"]["uri"]).get_run(run_id)
    assert run_info.info.status == "FINISHED"
    assert sorted(losses(read_info(saved)["mlflow"]["uri"], run_id)) == list(range(1, step + 3))


def _keys_with_mutual(on: bool, count: int, epochs: int) -> list[str]:
    """Sample keys whose mutual-dropout draw (p = 0.3, pipeline seed 0) is ``on`` in every epoch."""
    from alive_data.tasks import uniform

    keys = []
    for n in range(100_000):
        key = f"mut{n:05d}"
        if all((uniform(0, e, key, "mutual") >= 0.3) == on for e in range(epochs)):
            keys.append(key)
            if len(keys) == count:
                return keys
    raise AssertionError("no such keys")


def _rekeyed_shards(shards: Path, out: Path, epochs: int) -> None:
    """Two shards of two same-shaped samples each: in shard 0 every sample is "indep" (mutual off) in
    every epoch, in shard 1 every sample has the exchange on. Each rank reads one shard per epoch."""
    import webdataset as wds

    samples = {
        s["__key__"]: s
        for tar in sorted(shards.glob("*.tar"))
        for s in wds.WebDataset(str(tar), shardshuffle=False)
    }
    same_shape = [samples[k] for k in ("clip000", "clip003", "clip006", "clip009")]  # all 48x64
    keys = _keys_with_mutual(False, 2, epochs) + _keys_with_mutual(True, 2, epochs)
    out.mkdir()
    for shard in range(2):
        with wds.TarWriter(str(out / f"shard-{shard:06d}.tar")) as sink:
            for i in (2 * shard, 2 * shard + 1):
                members = {k: v for k, v in same_shape[i].items() if not k.startswith("__")}
                sink.write({"__key__": keys[i], **members})
