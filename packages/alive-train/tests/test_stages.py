"""The recipe's chain on the synthetic world, every stage its shipped config with the tiny model:
t2a_stage1 -> t2a_stage2 -> joint -> sft -> reference -> refiner. Each stage runs a few steps with
finite losses and exports; the next starts from that export (and the joint stage from a bare VideoDiT
file too). Along the way: only audio trains in T2A, the SFT optimizer has exactly the configured
rates, frozen weights do not move, lineage nests each run under its parent, and the reference stage
validates into the MLflow store (metrics, an mp4 and a PNG per clip)."""

from __future__ import annotations

import math

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file

from alive_models import JointAVDiT, build_model
from alive_train.checkpoint import load_weights
from alive_train.config import ModelConfig
from alive_train.module import ReferenceStage, RefinerStage, T2AStage, joint_config
from alive_train.testing import data_format

pytestmark = pytest.mark.slow

STEPS = 2


def metric(run, key: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient(run.uri).get_metric_history(run.run_id, key)}


def tensors(path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, write_stage_at, run_stage, world_shards, model_spec):
    """Runs the chain once; returns {stage: FitResult} and the exports directory."""
    root = tmp_path_factory.mktemp("chain")
    exports = root / "exports"
    t2v = root / "t2v_video_dit.safetensors"  # a bare VideoDiT checkpoint (no "video." prefix)
    video = build_model(joint_config(ModelConfig(**model_spec)), seed=7).video
    save_file({k: v.contiguous() for k, v in video.state_dict().items()}, str(t2v))
    common = {
        "schedule": {"max_steps": STEPS, "epochs": None},
        "checkpoint": {"every_n_steps": STEPS, "keep_last": 1},
        "optim": {"warmup_steps": 0},
        "paths": {"exports": str(exports), "t2v_checkpoint": str(t2v)},
    }
    overrides = {
        "sft": {
            "init_from": [{"path": f"{exports}/joint"}],  # the chain skips joint_i2va and ct
            "optim": {"warmup_steps": 0, "groups": [FROZEN, *SFT_GROUPS]},
        },
        "reference": {  # every world clip has 2 or 3 references: 4 steps see both states
            "data_tasks": {"caption_dropout": 0.5, "reference_prob": 0.6},
            "schedule": {"max_steps": 4, "epochs": None},
            "checkpoint": {"every_n_steps": 4, "keep_last": 1},
            "validation": {"enabled": True, "num_clips": 2, "steps": 2, "every_n_steps": 1000},
        },
        "refiner": {
            "pixels": True,
            "refiner": {"t_start": 0.5, "degrade_factor": 3.0},
        },
    }
    results = {}
    for stage in ("t2a_stage1", "t2a_stage2", "joint", "sft", "reference", "refiner"):
        extra = dict(overrides.get(stage, {}))
        tasks = extra.pop("data_tasks", {})
        pixels = extra.pop("pixels", False)
        pipeline = {
            "sources": [{"name": "world", "urls": str(world_shards)}],
            "format": data_format(),
            "filter": {"preset": None, "rules": []},
            "shuffle_buffer": 4,
            "buckets": {"batch_size": 2, "latent_frames": [7], "resolutions": [[48, 64]], "frames": [25]},
            "tasks": {"i2va_prob": 0.0, "caption_dropout": 0.0, "mutual_dropout": 0.3, **tasks},
            "latents": None if pixels else {"video": "deterministic", "audio": "deterministic"},
        }
        inherit = () if "init_from" in extra else ("init_from",)
        path = write_stage_at(
            root / stage / "stage.yaml",
            inherit=inherit,
            base=stage,
            data={"num_workers": 0, "volume": None, "pipeline": pipeline},
            **{**common, **extra},
        )
        results[stage] = run_stage(path)
    return results, exports


FROZEN = {"name": "frozen_block", "pattern": r"^audio\.blocks\.0\.", "lr": None}
SFT_GROUPS = [
    {
        "name": "audio_v2a_cross_attn",
        "pattern": r"^fusion\.(audio_from_video|audio_time_mod)\.",
        "lr": 1.0e-6,
    },
    {"name": "audio", "pattern": r"^audio\.", "lr": 1.0e-6},
    {"name": "video", "pattern": r"^video\.", "lr": 1.0e-5},
    {
        "name": "video_a2v_cross_attn",
        "pattern": r"^fusion\.(video_from_audio|video_time_mod)\.",
        "lr": 1.0e-5,
    },
]


def metric_keys(run) -> set[str]:
    return set(MlflowClient(run.uri).get_run(run.run_id).data.metrics)


def test_every_stage_trains_with_finite_losses_and_exports(chain):
    results, exports = chain
    for stage, result in results.items():
        losses = metric(result.run, "loss/total")
        assert sorted(losses) == list(range(1, result.trainer.global_step + 1)) and len(losses) >= STEPS, (
            stage
        )
        assert all(math.isfinite(v) for v in losses.values()), stage
        assert (exports / stage / "model.safetensors").is_file(), stage
        JointAVDiT.from_pretrained(exports / stage)  # strict: every weight, the joint model's names
    assert isinstance(results["t2a_stage1"].module, T2AStage)
    assert isinstance(results["reference"].module, ReferenceStage)
    assert isinstance(results["refiner"].module, RefinerStage)


def test_t2a_trains_the_audio_tower_alone_under_the_joint_names(chain):
    results, exports = chain
    assert "loss/video" not in metric_keys(results["t2a_stage1"].run)  # the tower never ran
    assert metric(results["t2a_stage1"].run, "loss/audio/t2a")  # the fixed T2A task mix
    first, second = tensors(exports / "t2a_stage1"), tensors(exports / "t2a_stage2")
    assert all(k.startswith(("video.", "audio.", "fusion.")) for k in first)
    moved = [k for k in first if not torch.equal(first[k], second[k])]
    assert moved and all(k.startswith("audio.") for k in moved)  # stage II: only audio trained
    # Stage II started from stage I's audio tower (its init report) and nested its run under it.
    report = results["t2a_stage2"].module.init_report
    assert report.loaded == {f"{exports}/t2a_stage1": sum(k.startswith("audio.") for k in first)}
    tags = MlflowClient(results["t2a_stage2"].run.uri).get_run(results["t2a_stage2"].run.run_id).data.tags
    assert tags["mlflow.parentRunId"] == results["t2a_stage1"].run.run_id


def test_joint_starts_from_the_t2a_audio_and_a_bare_video_dit_with_a_fresh_fusion(chain):
    results, exports = chain
    report = results["joint"].module.init_report
    audio = tensors(exports / "t2a_stage2")
    n_audio = sum(k.startswith("audio.") for k in audio)
    n_video = sum(k.startswith("video.") for k in audio)
    assert list(report.loaded.values()) == [n_audio, n_video]
    assert report.missing and all(k.startswith("fusion.") for k in report.missing)  # fresh, zero gates
    assert not report.unexpected


def test_sft_has_exactly_the_configured_rates_and_frozen_weights_do_not_move(chain):
    results, exports = chain
    result = results["sft"]
    rates = {g["name"]: g["lr"] for g in result.trainer.optimizers[0].param_groups}
    assert rates == {g["name"]: g["lr"] for g in SFT_GROUPS}  # VideoDiT 1e-5; AudioDiT + CA in V2A 1e-6
    sizes = {
        g["name"]: sum(p.numel() for p in g["params"]) for g in result.trainer.optimizers[0].param_groups
    }
    assert sizes == {g.name: g.numel for g in result.module.param_groups if not g.frozen}
    start, end = tensors(exports / "joint"), load_weights(result.last_checkpoint, "model")
    frozen = [k for k in start if k.startswith("audio.blocks.0.")]
    assert frozen and all(torch.equal(end[k], start[k]) for k in frozen)  # bitwise
    moved = [k for k in start if k.startswith("audio.blocks.1.") and not torch.equal(end[k], start[k])]
    assert moved  # the 1e-6 audio group did train


def test_reference_tuning_trains_all_three_dual_cfg_states_and_validates_into_mlflow(chain):
    results, _ = chain
    run = results["reference"].run
    keys = metric_keys(run)
    assert "loss/video/r2va" in keys and "loss/video/t2va" in keys  # with and without references
    assert {"val/av_offset_ms", "val/transcript_cer", "val/event_recall", "val/reference_fidelity"} <= keys
    client = MlflowClient(run.uri)
    [step_dir] = [a.path for a in client.list_artifacts(run.run_id, "validation")]
    files = {a.path.rsplit("/", 1)[-1]: a.file_size for a in client.list_artifacts(run.run_id, step_dir)}
    assert {"clip0.mp4", "clip0.png", "clip1.mp4", "clip1.png", "metrics.json"} <= files.keys()
    assert all(files[f] > 100 for f in ("clip0.mp4", "clip0.png"))
    from mlflow.artifacts import download_artifacts

    from alive_data.media import decode_clip

    local = download_artifacts(run_id=run.run_id, artifact_path=f"{step_dir}/clip0.mp4", tracking_uri=run.uri)
    clip = decode_clip(local, 24.0, 16_000)
    assert clip.frames.shape == (49, 48, 64, 3) and abs(len(clip.audio) - 32_667) <= 1


def test_the_refiner_keeps_the_audio_side_frozen_and_refines_the_video(chain):
    results, exports = chain
    start, end = tensors(exports / "sft"), tensors(exports / "refiner")
    audio_side = [
        k for k in start if k.startswith(("audio.", "fusion.audio_from_video.", "fusion.audio_time_mod."))
    ]
    assert audio_side and all(torch.equal(start[k], end[k]) for k in audio_side)
    assert any(not torch.equal(start[k], end[k]) for k in start if k.startswith("video."))
    audio_losses = metric(results["refiner"].run, "loss/audio")
    assert not audio_losses  # no sample's audio loss counts (clean audio at t = 0)
