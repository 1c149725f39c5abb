"""Stage configs: every shipped YAML loads and mirrors seed 000 Table 2; composition, overrides and
errors name the offending key."""

from __future__ import annotations

import itertools

import pytest

from alive_train.config import ConfigError, compose, list_stages, load_config

TABLE_2 = {  # stage: (data volume, epochs, video lr, audio lr)
    "t2a_stage1": (384_000_000, 1, None, 5e-5),
    "t2a_stage2": (19_000_000, 10, None, 5e-5),
    "joint": (11_000_000, 1.2, 1e-4, 1e-4),
    "joint_i2va": (11_000_000, 0.3, 5e-5, 5e-5),
    "ct": (4_300_000, 3, 5e-5, 5e-5),
    "sft": (5_000_000, 0.5, 1e-5, 1e-6),
    "refiner": (700_000, 1, 5e-5, None),
}


def lr_of(config, name: str) -> float | None:
    import re

    for group in config.optim.groups:
        if re.search(group.pattern, name):
            return group.lr
    return config.optim.default_lr if config.optim.unmatched == "default" else None


VARIANTS = {"ccl", "unitalking_audio", "unitalking"}  # seed 002 and seed 004 (issue 12)


def test_every_shipped_stage_loads_and_validates():
    stages = list_stages()
    assert set(stages) == {*TABLE_2, "reference", *VARIANTS}
    for name in stages:
        config = load_config(name)
        assert config.stage == name
        assert config.flow.shift == 7.0  # seed 000 §4.1
        assert config.max_steps(world_size=64) > 0


@pytest.mark.parametrize("stage", sorted(TABLE_2))
def test_stage_configs_mirror_table_2(stage):
    volume, epochs, video_lr, audio_lr = TABLE_2[stage]
    config = load_config(stage)
    assert config.data.volume == volume and config.schedule.epochs == epochs
    assert lr_of(config, "video.dual_blocks.0.vid_attn.to_q.weight") == video_lr
    assert lr_of(config, "audio.blocks.0.mlp.fc1.weight") == audio_lr


def test_variant_stages_follow_their_seeds():
    from alive_models import get_preset

    ccl = load_config("ccl")  # seed 002 §6.1
    assert get_preset(ccl.model.preset).fusion.kind == "ccl" and ccl.module == "joint"
    tasks = ccl.data.pipeline["tasks"]
    assert tasks["probabilities"] == {"t2v_t2a": 0.1, "a2v": 0.15, "v2a": 0.15, "t2va": 0.6}
    assert tasks["mutual_dropout"] == 0.0  # routing replaces the gate (§3.1)
    assert lr_of(ccl, "fusion.video_from_audio.0.context_tokens") == 1e-4
    assert lr_of(ccl, "fusion.audio_from_video.2.attn.to_q.weight") == 1e-4
    assert lr_of(ccl, "video.dual_blocks.0.vid_attn.to_q.weight") == 1e-5
    assert lr_of(ccl, "audio.blocks.0.mlp.fc1.weight") == 1e-5
    pre, joint = load_config("unitalking_audio"), load_config("unitalking")  # seed 004 §4.5
    for config in (pre, joint):
        preset = get_preset(config.model.preset)
        assert preset.fusion.kind == "unitalking" and preset.audio.reference_audio
    assert pre.module == "t2a" and pre.optim.unmatched == "frozen"
    assert lr_of(pre, "audio.blocks.0.reference_kv.to_k.weight") == 1e-4
    assert lr_of(pre, "fusion.joint.0.video_qkv.weight") is None
    assert set(pre.data.pipeline["tasks"]["probabilities"]) == {"t2a", "tr2av"}
    assert set(joint.data.pipeline["tasks"]["probabilities"]) == {"t2va", "v2a", "i2va", "tr2av"}
    assert joint.init_from[0].path == "exports/unitalking_audio"


def test_sft_puts_the_audio_side_cross_attention_with_the_audio_tower():
    config = load_config("sft")
    assert lr_of(config, "fusion.audio_from_video.0.attn.to_q.weight") == 1e-6  # "CA in V2A"
    assert lr_of(config, "fusion.audio_time_mod.linear.weight") == 1e-6
    assert lr_of(config, "fusion.video_from_audio.3.attn.to_q.weight") == 1e-5
    assert lr_of(config, "fusion.video_time_mod.linear.weight") == 1e-5
    tasks = config.data.pipeline["tasks"]
    assert tasks["mutual_dropout"] == 0.3 and tasks["i2va_prob"] == 0.4  # seed 000 §4.4, §4.1
    weights = {s["name"]: s["weight"] for s in config.data.pipeline["sources"]}
    assert weights == {"ct": 3, "aesthetic": 1}  # the 3:1 mix (§4.3)


def test_init_from_names_the_previous_stage_export():
    chain = ["t2a_stage1", "t2a_stage2", "joint", "joint_i2va", "ct", "sft"]
    for previous, stage in itertools.pairwise(chain):
        paths = [s.path for s in load_config(stage).init_from]
        assert f"exports/{previous}" in paths, (stage, paths)
    joint = load_config("joint").init_from
    assert [s.prefix_map for s in joint] == [{"audio.": "audio."}, {"": "video."}]
    assert load_config("refiner").init_from[0].path == "exports/sft"


def test_time_mixes_follow_the_recipe():
    assert load_config("joint").data.pipeline["tasks"]["i2va_prob"] == 0.0  # T2VA only
    i2va = load_config("joint_i2va").data.pipeline["tasks"]
    assert (i2va["i2va_prob"], i2va["i2va_from_epoch"]) == (0.4, 0)
    assert load_config("t2a_stage1").text.caption is False  # TTS: transcript only
    assert load_config("t2a_stage2").text.caption is True
    refiner = load_config("refiner")
    assert refiner.loss.audio_weight == 0.0 and lr_of(refiner, "audio.blocks.0.mlp.fc1.weight") is None


def test_overrides_and_interpolation():
    config = load_config("joint", ["schedule.max_steps=7", "paths.runs=/r", "optim.groups.0.lr=3e-4"])
    assert config.schedule.max_steps == 7 and config.max_steps(8) == 7
    assert config.run.dir == "/r/joint" and config.checkpoint.dir == "/r/joint/checkpoints"
    assert config.optim.groups[0].lr == 3e-4


def test_epochs_become_steps_with_the_global_batch():
    config = load_config("joint", ["data.pipeline.buckets.batch_size=2", "trainer.accumulate_grad_batches=2"])
    assert config.max_steps(world_size=10) == -(-1.2 * 11_000_000 // 40)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.groups.0.lrr=1"], "optim.groups.0.lrr"),
        (["trainer.log_every_n_steps=often"], "trainer.log_every_n_steps"),
        (["flow.distribution=gamma"], "flow.distribution"),
        (["optim.groups.0.lr=-1"], "optim.groups.0.lr: must be positive"),
        (["ema.decay=1.5"], "ema.decay"),
        (["model.preset=huge"], "unknown preset"),
        (["schedule.epochs=null"], "schedule"),
        (["data.pipeline.tasks.mutual_dropuot=0.3"], "data.pipeline"),
        (["max_steps"], "key=value"),
    ],
)
def test_bad_configs_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config("joint", overrides)


def test_unknown_keys_in_a_file_name_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("base: joint\ntrainer:\n  devicez: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: trainer\.devicez"):
        load_config(path)


def test_bases_compose_relative_then_shipped_and_cycles_are_errors(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: joint\nschedule: {max_steps: 3}\n")
    (tmp_path / "child.yaml").write_text("base: mine\nstage: child\n")
    config = load_config(tmp_path / "child.yaml")
    assert (config.stage, config.schedule.max_steps, config.optim.groups[0].lr) == ("child", 3, 1e-4)
    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a\n")
    with pytest.raises(ConfigError, match="cycle"):
        compose(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_stage")


def test_null_removes_an_inherited_pipeline_key():
    config = load_config("joint", ["data.pipeline.filter.preset=null", "data.pipeline.filter.rules=[]"])
    assert config.pipeline().filter.rules == ()


def test_every_stage_module_builds_and_checks_what_config_cannot_say():
    from alive_train.module import (
        STAGES,
        JointStage,
        ReferenceStage,
        RefinerStage,
        T2AStage,
        build_stage,
    )

    expected = {"t2a": T2AStage, "joint": JointStage, "reference": ReferenceStage, "refiner": RefinerStage}
    assert expected == STAGES
    for stage in list_stages():
        config = load_config(stage, ["model.preset=tiny"])
        assert type(build_stage(config)) is STAGES[config.module]
    with pytest.raises(ConfigError, match="reference_prob"):
        build_stage(load_config("reference", ["model.preset=tiny", "data.pipeline.tasks.reference_prob=1.0"]))
    with pytest.raises(ConfigError, match="by_reference_count"):
        build_stage(
            load_config(
                "reference",
                [
                    "model.preset=tiny",
                    "data.pipeline.buckets.batch_size=2",
                    "data.pipeline.buckets.by_reference_count=false",
                ],
            )
        )


def test_stage_recipes_that_config_must_respect_are_enforced():
    import torch

    from alive_train.module import build_stage
    from alive_train.param_groups import resolve_param_groups

    def trainable(stage, *overrides):
        with torch.device("meta"):
            module = build_stage(load_config(stage, ["model.preset=tiny", *overrides]))
        resolve_param_groups(module.model, module.config.optim)
        module.check_trainable()

    trainable("t2a_stage1")
    trainable("refiner")
    with pytest.raises(ConfigError, match="audio tower alone"):
        trainable("t2a_stage1", "optim.unmatched=default", "optim.default_lr=1e-5")
    with pytest.raises(ConfigError, match="frozen"):
        trainable("refiner", "optim.groups.0.lr=1e-5")


def test_text_and_validation_settings_are_checked():
    with pytest.raises(ConfigError, match="caption encoders"):
        load_config("joint", ["text.t5=null", "text.qwen=null"])
    cached = load_config(
        "joint",
        ["text.t5=null", "text.qwen=null", "text.transcript=/tok", "data.pipeline.text_embeddings=[t5,qwen]"],
    )
    assert cached.pipeline().text_embeddings == ("t5", "qwen")
    with pytest.raises(ConfigError, match="transcript-only"):
        load_config(
            "t2a_stage1",
            [
                "text.t5=null",
                "text.qwen=null",
                "text.transcript=/tok",
                "data.pipeline.text_embeddings=[t5,qwen]",
            ],
        )
    with pytest.raises(ConfigError, match="validation"):
        load_config("joint", ["validation.num_clips=0"])
    with pytest.raises(ConfigError, match="refiner"):
        load_config("refiner", ["refiner.t_start=0"])


def test_cli_reports_config_errors_and_lists_stages(capsys):
    import signal

    from alive_train.cli import EXIT_CONFIG, main

    previous = signal.getsignal(signal.SIGUSR1)
    try:
        assert main(["fit", "joint", "optim.groups.0.lrr=1"]) == EXIT_CONFIG
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert "optim.groups.0.lrr" in capsys.readouterr().err
    assert main(["stages"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in list_stages()) and "T2VA joint training" in listed
    assert main(["export", "/nonexistent", "/tmp/out"]) == EXIT_CONFIG
    assert "neither a checkpoint" in capsys.readouterr().err
