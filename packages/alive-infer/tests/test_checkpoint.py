"""The exported directory: spec round trip, atomic export, and every broken or mismatched file refused
by name before anything large is loaded."""

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from alive_infer.checkpoint import (
    SPEC_NAME,
    CheckpointError,
    PipelineSpec,
    RefinerSpec,
    TextEncoderSpec,
    read_pipeline_spec,
    save_pipeline,
    write_pipeline_spec,
)
from alive_infer.guidance import CFG, Guidance, MultiModalCFG
from alive_infer.pipeline import AlivePipeline
from alive_infer.testing import save_tiny_pipeline, tiny_model
from alive_models import JointAVDiT, build_model
from alive_models.testing import save_tiny_text_models
from alive_models.text import TextConditioner


@pytest.fixture(scope="module")
def export(tiny_text, tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("ckpt"), text_dirs=tiny_text)


@pytest.fixture
def copy(export, tmp_path):
    """A private copy of the export to break."""
    return shutil.copytree(export, tmp_path / "export")


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if anything large is loaded (model weights or text encoders)."""

    def refuse(*args, **kwargs):
        raise AssertionError("loaded weights before the files were checked")

    monkeypatch.setattr(JointAVDiT, "from_pretrained", refuse)
    monkeypatch.setattr(TextConditioner, "from_pretrained", refuse)


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            data[section][name] = value
        else:
            data[section] = value
    path.write_text(json.dumps(data))


def test_spec_round_trips_and_refuses_what_it_does_not_know(export):
    spec = read_pipeline_spec(export)
    assert spec.text_encoders.dtype == "float32" and spec.sampling.steps == 4
    full = dataclasses.replace(
        spec,
        guidance=Guidance(CFG(4.0), MultiModalCFG(3.0, 1.0)),
        refiner=RefinerSpec("refiner", (64, 64), 0.4, 3),
        tasks=("t2va", "t2a"),
    )
    assert PipelineSpec.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    data = full.to_dict()
    assert data["format"] == "alive-pipeline" and data["version"] == 1
    with pytest.raises(ValueError, match="reads version 1"):
        PipelineSpec.from_dict({**data, "version": 2})
    with pytest.raises(ValueError, match="unknown fields"):
        PipelineSpec.from_dict({**data, "colour": "blue"})
    with pytest.raises(ValueError, match="format"):
        PipelineSpec.from_dict({k: v for k, v in data.items() if k != "format"})
    with pytest.raises(ValueError, match="tasks"):
        dataclasses.replace(spec, tasks=("t2x",))
    with pytest.raises(ValueError, match="sub-directory"):
        RefinerSpec("../elsewhere")
    with pytest.raises(ValueError, match="unknown dtype"):
        TextEncoderSpec("a", "b", dtype="float8")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / SPEC_NAME).unlink(), r"pipeline.json does not exist"),
        (lambda d: (d / SPEC_NAME).write_text("{"), r"pipeline.json is not valid JSON"),
        (lambda d: edit_json(d / SPEC_NAME, version=7), r"pipeline.json: spec version 7"),
        (lambda d: edit_json(d / SPEC_NAME, fps=25.0), r"fps 25 but .*config.json's timeline has 24"),
        (
            lambda d: edit_json(d / SPEC_NAME, refiner={"directory": "refiner"}),
            r"refiner.*has no config.json",
        ),
        (
            lambda d: edit_json(d / SPEC_NAME, video_codec="deterministic:spatial_stride=2"),
            r"video codec .*does not fit .*config.json: video latents have 192 channels, codec 48",
        ),
        (
            lambda d: edit_json(d / SPEC_NAME, audio_codec="deterministic:sample_rate=16000,hop_length=320"),
            r"audio codec .*config.json: timeline has 25 audio latents/s, codec 50",
        ),
        (lambda d: edit_json(d / SPEC_NAME, text_encoders="none"), r'names no text encoders \("none"\)'),
        (
            lambda d: edit_json(d / SPEC_NAME, text_encoders__t5="/nowhere/t5"),
            r"text encoder directory /nowhere/t5 .* does not exist",
        ),
        (lambda d: (d / "config.json").unlink(), r"config.json does not exist"),
        (
            lambda d: edit_json(d / "config.json", video__colour=1),
            r"config.json: unknown VideoDiTConfig fields",
        ),
        (lambda d: (d / "model.safetensors").unlink(), r"has neither model.safetensors"),
        (
            lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]),
            r"model.safetensors is not a complete safetensors file \(truncated\?\)",
        ),
        (
            lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 4),
            r"model.safetensors is not a complete",
        ),
    ],
    ids=[
        "no-spec",
        "bad-json",
        "newer-version",
        "fps",
        "missing-refiner",
        "video-codec-channels",
        "audio-codec-rate",
        "no-text-encoders",
        "missing-text-dir",
        "no-config",
        "bad-config",
        "no-weights",
        "truncated",
        "foreign-file",
    ],
)
def test_broken_exports_are_refused_by_name_before_loading(copy, no_loading, breakage, message):
    breakage(copy)
    with pytest.raises(CheckpointError, match=message):
        AlivePipeline.from_pretrained(copy)


def test_a_shard_missing_from_the_index_is_named(copy, no_loading):
    (copy / "model.safetensors.index.json").write_text(
        json.dumps(
            {"metadata": {}, "weight_map": {"video.final.linear.weight": "model-00002-of-00002.safetensors"}}
        )
    )
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002.safetensors is missing"):
        AlivePipeline.from_pretrained(copy)


def test_overrides_are_checked_against_the_model(export, tmp_path, no_loading):
    with pytest.raises(CheckpointError, match=r"video codec 'deterministic:spatial_stride=8' does not fit"):
        AlivePipeline.from_pretrained(export, video_codec="deterministic:spatial_stride=8")
    with pytest.raises(CheckpointError, match="unknown audio codec"):
        AlivePipeline.from_pretrained(export, audio_codec="mp3")
    narrow = save_tiny_text_models(tmp_path / "narrow", t5_dim=16, qwen_dim=20)
    with pytest.raises(CheckpointError, match=r"t5 \(width 16\) .* do not fit .*config.json: .*T5 24"):
        AlivePipeline.from_pretrained(export, text_encoders=narrow)
    with pytest.raises(CheckpointError, match="got 1"):
        AlivePipeline.from_pretrained(export, text_encoders=[narrow[0]])


def test_weights_that_do_not_match_the_config_are_named(copy, tiny_text, no_loading):
    state = tiny_model(tiny_text).state_dict()
    weights = {k: v for k, v in state.items() if not k.startswith("audio.blocks.0.")}
    save_file(weights, copy / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"(?s)export: weights do not match .*config.json.* missing from the file \(28\)",
    ):
        AlivePipeline.from_pretrained(copy)


def test_text_encoders_named_none_are_passed_at_load(tiny_text, tmp_path):
    export = save_tiny_pipeline(tmp_path, text_dirs=tiny_text, name_text_encoders=False)
    assert json.loads((export / SPEC_NAME).read_text())["text_encoders"] == "none"
    pipe = AlivePipeline.from_pretrained(export, text_encoders=tiny_text, text_dtype="float32")
    assert pipe.text.qwen.dim == 20 and set(pipe.provenance) == {"model", "text_t5", "text_qwen"}
    built = AlivePipeline.from_pretrained(export, text_encoders=pipe.text)
    assert built.text is pipe.text


def test_save_pipeline_replaces_an_export_whole_and_refuses_foreign_directories(export, tiny_text, tmp_path):
    spec = read_pipeline_spec(export)
    model = tiny_model(tiny_text, seed=3)
    target = tmp_path / "out"
    save_pipeline(target, model, spec)
    first = (target / "model.safetensors").read_bytes()
    save_pipeline(target, tiny_model(tiny_text, seed=4), spec)  # an export over an export
    assert (target / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old copies left

    # A failing export (the spec does not fit the model) leaves the previous one as it was.
    with pytest.raises(CheckpointError, match="fps"):
        save_pipeline(target, model, dataclasses.replace(spec, fps=30.0))
    assert read_pipeline_spec(target) == spec and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        save_pipeline(tmp_path / "mine", model, spec)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="refiner"):
        save_pipeline(target, model, spec, refiner=model)


def test_write_pipeline_spec_checks_the_model_directory(export, tiny_text, tmp_path):
    model = tiny_model(tiny_text)
    model.save_pretrained(tmp_path / "model")
    spec = read_pipeline_spec(export)
    written = write_pipeline_spec(tmp_path / "model", spec)
    assert read_pipeline_spec(tmp_path / "model") == spec and written.name == SPEC_NAME
    with pytest.raises(CheckpointError, match="holds no JointAVDiT"):
        write_pipeline_spec(tmp_path, spec)
    bad = dataclasses.replace(spec, audio_codec="deterministic:sample_rate=8000,hop_length=160")
    with pytest.raises(CheckpointError, match="audio latents have 320 channels, codec 160"):
        write_pipeline_spec(tmp_path / "model", bad)
    assert read_pipeline_spec(tmp_path / "model") == spec  # the refused spec was not written
    with torch.no_grad():
        assert AlivePipeline.from_pretrained(tmp_path / "model").model.config == model.config


@pytest.mark.slow
def test_sharded_models_export_what_unsharded_ones_do(tmp_path):
    """Two FSDP2 ranks (training's plan) call save_pipeline; the export equals one process's."""
    worker = Path(__file__).with_name("export_worker.py")
    loader = importlib.util.spec_from_file_location("export_worker", worker)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    spec, tiny_config = module.spec, module.tiny_config
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run(
        [*cmd, str(worker), "--out", str(tmp_path / "sharded")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    save_pipeline(
        tmp_path / "single",
        build_model(tiny_config(), seed=0),
        spec(),
        refiner=build_model(tiny_config(), seed=1),
    )
    for sub in (".", "refiner"):
        sharded, single = (load_file(tmp_path / d / sub / "model.safetensors") for d in ("sharded", "single"))
        assert sharded.keys() == single.keys() and all(torch.equal(sharded[k], single[k]) for k in single)
    assert read_pipeline_spec(tmp_path / "sharded") == spec()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sharded", "single"]  # no staging left
