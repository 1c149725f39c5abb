"""``alive-train demo``: argument errors (fast), and a shortened demo end to end (slow): world shards,
the six stages through the fit path into one MLflow store with lineage and validation artifacts, the
final export loaded by alive-infer, four playable mp4 files, the printed table."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import av
import pytest
from mlflow.tracking import MlflowClient

from alive_train.cli import main
from alive_train.demo import EXPERIMENT, MARKER, STAGES, DemoError, loss_window, parse_steps, preset

DEFAULT_STEPS = {s: preset()["stages"][s]["steps"] for s in STAGES}


# -- arguments -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "huge"], "--model 'huge': choose one of tiny, small"),
        (["--fusion", "concat"], "--fusion 'concat': choose one of ta_cross_attn, ccl, unitalking"),
        (["--steps", "x0"], "--steps 'x0'"),
        (["--steps", "jiont=4"], "unknown stage 'jiont'"),
        (["--set", "jiont:flow.shift=3"], "unknown stage 'jiont'"),
        (["--set", "generate.stesp=3"], "generate has"),
        (["--set", "no_equals_sign"], "expected KEY=VALUE"),
        (["--clips", "3"], "--clips 3: at least 16"),
        (["--overwrite", "--resume"], "exclude each other"),
    ],
)
def test_bad_arguments_exit_2_with_a_message_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["demo", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_non_empty_out_dir_is_refused_unless_it_is_a_demo_and_overwrite_or_resume_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(out)]) == 2
    assert f"--out {out} is not empty" in capsys.readouterr().err
    for flag in ("--overwrite", "--resume"):  # never delete or reuse what no demo wrote
        assert main(["demo", "--out", str(out), flag]) == 2
        assert f"no {MARKER}" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_steps_scale_set_or_pick_stages():
    assert parse_steps("x5", DEFAULT_STEPS) == {s: 5 * n for s, n in DEFAULT_STEPS.items()}
    assert parse_steps("x0.1", DEFAULT_STEPS)["joint"] == round(0.1 * DEFAULT_STEPS["joint"])
    assert parse_steps("7", DEFAULT_STEPS) == dict.fromkeys(STAGES, 7)
    assert parse_steps("joint=9, sft=2", DEFAULT_STEPS) == {**DEFAULT_STEPS, "joint": 9, "sft": 2}
    with pytest.raises(DemoError):
        parse_steps("-3", DEFAULT_STEPS)


def test_loss_windows_average_the_first_and_last_fifth():
    assert loss_window([5.0, 4.0, 3.0, 2.0, 1.0]) == (5.0, 1.0)
    assert loss_window([4.0] * 5 + [2.0] * 5) == (4.0, 2.0)
    assert all(math.isnan(x) for x in loss_window([]))


# -- end to end ------------------------------------------------------------------------------------
CLIPS = ("t2va", "i2va", "r2va", "refined")


def decode(path: Path) -> tuple[str, str, int, float, tuple[int, int]]:
    """(video codec, audio codec, frames, audio seconds, (height, width)) decoded with PyAV."""
    with av.open(str(path)) as f:
        video, audio = f.streams.video[0], f.streams.audio[0]
        names = (video.codec_context.name, audio.codec_context.name)
        frames = [fr for fr in f.decode(video)]
        f.seek(0)
        samples = sum(fr.samples for fr in f.decode(audio))
        return (*names, len(frames), samples / audio.rate, (frames[0].height, frames[0].width))


@pytest.mark.slow
def test_a_short_demo_runs_the_whole_chain_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    steps = "t2a_stage1=3,t2a_stage2=2,joint=5,sft=5,reference=5,refiner=2"
    fast = ["validation.steps=2", "validation.every_n_steps=1000", "trainer.progress_bar=false"]
    fast += ["generate.steps=2", "generate.refine_steps=2", "world.batch_size=2", "world.hires_clips=4"]
    fast += ["world.heldout_clips=4", "world.heldout_hires_clips=2", "evaluation.batches=2"]
    argv = ["demo", "--out", str(out), "--clips", "8", "--steps", steps, "--workers", "0"]
    assert main([*argv, *[a for s in fast for a in ("--set", s)]]) == 0
    printed = capsys.readouterr().out

    # The table: every stage's fixed-batch loss at start and end (finite), the training windows, and
    # the decrease check.
    summary = json.loads((out / "summary.json").read_text())
    rows = {s["stage"]: s for s in summary["stages"]}
    assert list(rows) == list(STAGES)
    for stage, row in rows.items():
        line = next(ln for ln in printed.splitlines() if ln.startswith(f"{stage} "))
        assert row["run_id"] in line and f"{row['loss_start']:.4f}" in line
        assert f"{row['loss_end']:.4f}" in line and f"{row['train_end']:.4f}" in line
        assert math.isfinite(row["loss_start"]) and math.isfinite(row["loss_end"]), stage
        # Two to five steps are too few for a sure decrease; the check itself is tested: a WARNING
        # row exactly where the loss did not fall.
        assert row["decreased"] == (row["loss_end"] < row["loss_start"]), stage
        assert ("WARNING: loss did not decrease" in line) == (not row["decreased"]), stage
    assert f"mlflow ui --backend-store-uri sqlite:///{out.resolve() / 'mlflow.db'}" in printed

    # Four playable clips: H.264 + AAC, 49 frames and 49/24 s of sound; the refined one at 2x.
    clips = {c["name"]: c for c in summary["clips"]}
    assert list(clips) == list(CLIPS)
    for stage in STAGES:  # sampled at the shift they were trained with (the demo's 3, not the default 7)
        spec = json.loads((out / "exports" / stage / "pipeline.json").read_text())
        assert spec["sampling"]["shift"] == preset()["common"]["flow"]["shift"] == 3.0, stage
    for name, clip in clips.items():
        assert clip["path"] in printed
        vcodec, acodec, frames, seconds, size = decode(Path(clip["path"]))
        assert (vcodec, acodec, frames) == ("h264", "aac", 49), name
        assert abs(seconds - 49 / 24) < 0.05, (name, seconds)
        assert size == ((48, 64) if name == "refined" else (24, 32)), name
        for key in ("offset_ms", "cer", "event_recall", "subject_fidelity"):
            assert key in clip["metrics"]
    assert math.isfinite(clips["t2va"]["metrics"]["offset_ms"])

    # One MLflow store: a run per stage, each nested under the stage it started from, validation
    # clips, pictures and metrics in the stages that validate.
    client = MlflowClient(summary["mlflow"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(STAGES)
    for parent, child in itertools.pairwise(STAGES):
        tags = runs[child].data.tags
        assert tags["mlflow.parentRunId"] == runs[parent].info.run_id, child
        assert tags["alive.init_from.0.stage"] == parent
        assert tags["alive.stage"] == child
    for stage in ("joint", "sft", "reference", "refiner"):
        run = runs[stage]
        assert "val/av_offset_ms" in run.data.metrics, stage
        [step_dir] = [a.path for a in client.list_artifacts(run.info.run_id, "validation")]
        files = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, step_dir)}
        assert {"clip0.mp4", "clip0.png", "metrics.json"} <= files, stage
    for stage, row in rows.items():  # the table's figures are the runs' eval/loss/total at step 0 and the end
        fixed = client.get_metric_history(runs[stage].info.run_id, "eval/loss/total")
        assert {m.step: m.value for m in fixed} == {0: row["loss_start"], row["steps"]: row["loss_end"]}
    history = client.get_metric_history(runs["joint"].info.run_id, "loss/total")
    assert len(history) == 5 and rows["joint"]["train_start"] == history[0].value


@pytest.mark.parametrize("fusion", ["ta_cross_attn", "ccl", "unitalking"])
def test_every_fusion_gets_parameter_groups_that_match_its_modules(fusion):
    """The demo's per-stage groups resolve on each fusion's model (a pattern matching nothing is an
    error): UniTalking's joint attention replaces the two per-direction groups."""
    import torch

    from alive_models import JointAVDiT
    from alive_train.config import ModelConfig, OptimConfig, ParamGroupConfig
    from alive_train.demo import joint_attention_groups, preset
    from alive_train.module import joint_config
    from alive_train.param_groups import resolve_param_groups
    from alive_train.testing import model_for_codec

    spec = model_for_codec(preset()["world"]["video_codec"])
    if fusion != "ta_cross_attn":
        spec["preset"] = f"tiny-{fusion}"
    with torch.device("meta"):
        model = JointAVDiT(joint_config(ModelConfig(**spec)))
    assert model.video.config.latent_channels == 48
    for stage, section in preset()["stages"].items():
        groups = section.get("optim", {}).get("groups", [])
        if fusion == "unitalking":
            groups = joint_attention_groups(groups)
        config = OptimConfig(groups=[ParamGroupConfig(**g) for g in groups], unmatched="frozen")
        resolved = resolve_param_groups(model, config)
        trains_fusion = any("fusion" in g["pattern"] and g["lr"] is not None for g in groups)
        trained = [g for g in resolved if not g.frozen and any(n.startswith("fusion.") for n in g.names)]
        assert bool(trained) == trains_fusion, (fusion, stage)  # and nowhere else
