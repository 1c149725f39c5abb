"""The joint stage end to end in one process (ModelParallelStrategy, FSDP2 on a 1-rank gloo mesh):
training, checkpoints, exact resume, atomic saves, non-finite losses, parameter groups, MLflow, export."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from alive_infer.checkpoint import read_pipeline_spec
from alive_train import strategy as strategy_module
from alive_train.callbacks import NonFiniteLossError
from alive_train.checkpoint import latest_checkpoint, list_checkpoints, load_weights, read_info

pytestmark = pytest.mark.slow

STEPS = 8  # two epochs of the 12-clip test data start at step 7: resumes cross an epoch boundary


def metric(uri: str, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, key)}


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(file.name.encode() + file.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, write_stage_at, run_stage):
    """One uninterrupted run of the joint stage, with the default (per-run SQLite) MLflow store."""
    root = tmp_path_factory.mktemp("trained")
    path = write_stage_at(
        root / "stage.yaml",
        tracking={"uri": None},
        schedule={"max_steps": STEPS, "epochs": None},
        checkpoint={"every_n_steps": 3, "keep_last": 5},
        monitor={"window": 2, "peak_tflops": 0.001},
        evaluation={"enabled": True, "batches": 3},
    )
    result = run_stage(path)
    return path, result


def test_training_logs_losses_throughput_and_lineage_to_mlflow(trained):
    path, result = trained
    run_dir = path.parent / "run"
    # The default store: SQLite in the run directory, artifacts beside it, the run id recorded.
    assert result.run.uri == f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == result.run.run_id
    client = MlflowClient(result.run.uri)
    run = client.get_run(result.run.run_id)
    assert run.data.params["flow.shift"] == "7.0" and run.data.params["optim.groups.0.lr"] == "0.0001"
    assert run.data.params["stage"] == "joint" and run.info.status == "FINISHED"
    assert run.data.tags["alive.stage"] == "joint" and len(run.data.tags["mlflow.source.git.commit"]) >= 40
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "param_groups.txt", "param_groups.json"} <= artifacts
    assert (run_dir / "mlartifacts").is_dir()
    from mlflow.artifacts import download_artifacts

    table = json.loads(
        Path(
            download_artifacts(
                run_id=run.info.run_id, artifact_path="param_groups.json", tracking_uri=result.run.uri
            )
        ).read_text()
    )
    assert [(r["group"], r["lr"]) for r in table] == [("video", 1e-4), ("audio", 1e-4), ("fusion", 1e-4)]
    assert sum(r["params"] for r in table) == sum(p.numel() for p in result.module.model.parameters())

    losses = metric(result.run.uri, result.run.run_id, "loss/total")
    assert sorted(losses) == list(range(1, STEPS + 1)) and all(np.isfinite(list(losses.values())))
    video = metric(result.run.uri, result.run.run_id, "loss/video")
    t2va = metric(result.run.uri, result.run.run_id, "loss/video/t2va")
    assert video == t2va  # every sample of this stage is T2VA
    audio = metric(result.run.uri, result.run.run_id, "loss/audio")
    assert all(abs(losses[s] - (video[s] + audio[s])) < 1e-5 for s in losses)  # weights 1 and 1
    assert metric(result.run.uri, result.run.run_id, "lr/video")[STEPS] == 1e-4
    assert metric(result.run.uri, result.run.run_id, "data/kept")[STEPS] > 0
    assert metric(result.run.uri, result.run.run_id, "data/epoch")[STEPS] == 1  # the second pass
    tflops = metric(result.run.uri, result.run.run_id, "throughput/tflops_per_sec_per_device")
    mfu = metric(result.run.uri, result.run.run_id, "throughput/mfu")
    samples = metric(result.run.uri, result.run.run_id, "throughput/samples_per_sec")
    tokens = metric(result.run.uri, result.run.run_id, "throughput/tokens_per_sec")
    assert sorted(mfu) == list(range(2, STEPS + 1))  # a full window (2 log intervals) first
    for step in mfu:  # MFU = achieved / configured peak (0.001 TFLOP/s)
        assert abs(mfu[step] - tflops[step] / 0.001) < 1e-6 * mfu[step]
        per_sample = tokens[step] / samples[step]  # 7 latent frames x (3..4 x 4) patches + 27 audio latents
        assert 7 * 3 * 4 + 27 - 1e-6 <= per_sample <= 7 * 4 * 4 + 27 + 1e-6


def test_the_fixed_batch_loss_is_logged_at_start_and_end_and_differs_from_the_training_windows(trained):
    _, result = trained
    uri, run_id = result.run.uri, result.run.run_id
    total, video, audio = (metric(uri, run_id, f"eval/loss/{part}") for part in ("total", "video", "audio"))
    assert sorted(total) == [0, STEPS]  # the weights it started from, the weights it exported (EMA)
    assert all(abs(total[s] - video[s] - audio[s]) < 1e-6 for s in total)
    assert total[0] != total[STEPS]


def test_checkpoints_are_sharded_complete_and_exported(trained):
    path, result = trained
    ckpts = list_checkpoints(path.parent / "run" / "checkpoints")
    assert [c.name for c in ckpts] == ["step-000000003", "step-000000006", "step-000000008"]
    info = read_info(ckpts[-1])
    assert info["step"] == STEPS and info["mlflow"]["run_id"] == result.run.run_id and info["ema"]
    export = path.parent / "exports" / "joint"
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "model.safetensors", "pipeline.json"]
    assert json.loads((export / "config.json").read_text())["_class_name"] == "JointAVDiT"
    spec = read_pipeline_spec(export)  # alive-infer's own reader
    assert (spec.video_codec, spec.fps) == ("deterministic", 24.0) and spec.text_encoders is not None
    lineage = spec.source
    assert lineage["mlflow"]["run_id"] == result.run.run_id and lineage["checkpoint"] == str(
        ckpts[-1].resolve()
    )
    exported = load_file(export / "model.safetensors")
    module = result.module
    ema = {n: t.full_tensor() for n, t in module.ema.state_dict().items()}
    model = {n: p.full_tensor() for n, p in module.model.named_parameters()}
    assert exported.keys() == model.keys() == ema.keys()
    assert all(torch.equal(exported[n], ema[n]) for n in ema)  # the EMA was exported ...
    assert sum(not torch.equal(ema[n], model[n]) for n in ema) > len(ema) // 2  # ... and it is not the model


def test_export_reads_no_optimizer_state(trained, monkeypatch):
    from torch.distributed.checkpoint import FileSystemReader

    _, result = trained
    read: list[str] = []
    original = FileSystemReader.read_data

    def recording(self, plan, planner):
        read.extend(item.storage_index.fqn for item in plan.items)
        return original(self, plan, planner)

    monkeypatch.setattr(FileSystemReader, "read_data", recording)
    weights = load_weights(result.last_checkpoint, "ema", chunk_bytes=1 << 16)  # many small chunks
    assert read and not [k for k in read if k.startswith("optimizer")]
    assert {k.split(".")[0] for k in read} == {"ema"}  # every parameter trains: all from the EMA
    assert len(weights) == len(list(result.module.model.parameters()))


def test_export_cli_then_load_without_lightning_gives_identical_outputs(trained, tmp_path):
    _, result = trained
    out = tmp_path / "export"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alive_train.cli",
            "export",
            str(result.last_checkpoint.parent),
            str(out),
            "--weights",
            "model",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 8" in proc.stdout
    from alive_models.testing import random_inputs

    module = result.module
    inputs = random_inputs(
        module.joint_config,
        batch=2,
        latent_frames=3,
        height=4,
        width=6,
        generator=torch.Generator().manual_seed(0),
    )
    inputs.mutual = torch.tensor([True, True])
    with torch.no_grad():
        expected = module.model(inputs)
    torch.save({"inputs": vars(inputs), "video": expected.video, "audio": expected.audio}, tmp_path / "io.pt")
    probe = f"""
import sys
import torch
from alive_models import JointAVDiT, JointInputs
model = JointAVDiT.from_pretrained("{out}")  # strict: every key, no extra
io = torch.load("{tmp_path}/io.pt", weights_only=True)
with torch.no_grad():
    out = model(JointInputs(**io["inputs"]))
assert "lightning" not in sys.modules and "mlflow" not in sys.modules
print(torch.equal(out.video, io["video"]), torch.equal(out.audio, io["audio"]))
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "True"]


def test_resume_mid_epoch_gives_the_same_losses_and_weights(trained, make_stage, run_stage):
    _, reference = trained
    path = make_stage(checkpoint={"every_n_steps": 3, "keep_last": 5})
    first = run_stage(path, "schedule.max_steps=5")
    assert first.last_checkpoint.name == "step-000000005" and first.resumed_from is None
    second = run_stage(path, f"schedule.max_steps={STEPS}")
    assert second.resumed_from == first.last_checkpoint
    assert second.run.run_id == first.run.run_id and second.run.reattached
    client = MlflowClient(second.run.uri)
    tags = client.get_run(second.run.run_id).data.tags
    assert tags["param_changed.schedule.max_steps"] == f"5 -> {STEPS}"
    assert tags["alive.resumed_from"] == str(first.last_checkpoint)
    for key in ("loss/total", "loss/video", "loss/audio"):
        ours = metric(second.run.uri, second.run.run_id, key)
        theirs = metric(reference.run.uri, reference.run.run_id, key)
        assert ours == theirs, key  # bitwise, steps 1..8, across the resume and the epoch boundary
    for weights in ("model", "ema"):
        ours = load_weights(second.last_checkpoint, weights)
        theirs = load_weights(reference.last_checkpoint, weights)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), weights


def test_a_failed_save_leaves_the_previous_checkpoint_usable(make_stage, run_stage, monkeypatch):
    path = make_stage(checkpoint={"every_n_steps": 2, "keep_last": 5})
    first = run_stage(path, "schedule.max_steps=2")
    ckpt_dir = first.last_checkpoint.parent
    before = tree_digest(first.last_checkpoint)
    real = strategy_module.write_shards

    def crash_after_writing(tensors, where):
        real(tensors, where)  # the shards are on disk ...
        raise OSError("disk full")  # ... and the process dies before publishing them

    monkeypatch.setattr(strategy_module, "write_shards", crash_after_writing)
    with pytest.raises(OSError, match="disk full"):
        run_stage(path, "schedule.max_steps=4")
    monkeypatch.undo()
    assert (ckpt_dir / ".step-000000004.partial").is_dir()
    assert (
        latest_checkpoint(ckpt_dir) == first.last_checkpoint and tree_digest(first.last_checkpoint) == before
    )
    third = run_stage(path, "schedule.max_steps=3")
    assert third.resumed_from == first.last_checkpoint and third.last_checkpoint.name == "step-000000003"
    assert not (ckpt_dir / ".step-000000004.partial").exists()


def _write_poisoned_shard(shards: Path, out: Path) -> None:
    """The test shards plus one sample whose cached latents are finite but square to infinity."""
    out.mkdir()
    for shard in shards.glob("*.tar"):
        (out / shard.name).write_bytes(shard.read_bytes())
    first = next(iter(wds.WebDataset(str(sorted(shards.glob("*.tar"))[0]), shardshuffle=False)))
    meta = json.loads(first["json"])

    def npy(array):
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    video = np.load(io.BytesIO(first["video_latent.npy"])).astype(np.float32)
    video[:] = 1e30
    with wds.TarWriter(str(out / "shard-999999.tar")) as sink:
        for i in range(2):  # a full batch of its own bucket
            sink.write(
                {
                    "__key__": f"poison{i}",
                    "json": json.dumps(meta).encode(),
                    "video_latent.npy": npy(video),
                    "audio_latent.npy": first["audio_latent.npy"],
                }
            )


def test_non_finite_losses_skip_the_step_and_training_goes_on(make_stage, run_stage, shards, tmp_path, capfd):
    poisoned = tmp_path / "poisoned"
    _write_poisoned_shard(shards, poisoned)
    path = make_stage()
    config_text = path.read_text().replace(str(shards), str(poisoned))
    path.write_text(config_text)
    result = run_stage(path, "schedule.max_steps=7", "data.pipeline.shuffle_buffer=1")
    assert result.module.nonfinite_total == 1 and result.trainer.global_step == 7
    assert "non-finite loss" in capfd.readouterr().out
    skipped = metric(result.run.uri, result.run.run_id, "train/nonfinite_skipped")
    assert max(skipped.values()) == 1
    weights = load_weights(result.last_checkpoint, "model")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_non_finite_losses_in_a_row_stop_the_run_with_a_checkpoint(make_stage, run_stage, trained):
    path = make_stage(
        loss={"video_weight": float("inf")},
        monitor={"window": 2, "max_nonfinite_in_a_row": 3},
        init_from=[{"path": str(trained[0].parent / "exports" / "joint")}],
    )
    # Lightning counts a skipped step as a step (global_step counts optimizer-step calls).
    with pytest.raises(
        NonFiniteLossError,
        match=r"3 non-finite losses in a row .* at step 2; checkpoint saved to .*step-000000003",
    ):
        run_stage(path, "schedule.max_steps=10")
    ckpt = latest_checkpoint(path.parent / "run" / "checkpoints")
    assert ckpt.name == "step-000000003" and read_info(ckpt)["step"] == 3
    # Nothing was stepped: the weights are still the ones the run started from.
    start = load_file(trained[0].parent / "exports" / "joint" / "model.safetensors")
    saved = load_weights(ckpt, "model")
    assert all(torch.equal(saved[k], start[k]) for k in start)
