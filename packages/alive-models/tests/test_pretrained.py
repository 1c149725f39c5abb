"""save_pretrained / from_pretrained / load_weights on real safetensors files (sharded ones under FSDP
are in test_parallel.py)."""

import dataclasses
import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from alive_models import JointAVDiT, build_model
from alive_models.pretrained import load_weights
from alive_models.testing import randomize_zero_inits


@pytest.fixture
def trained(tiny_model):
    randomize_zero_inits(tiny_model)  # every weight distinct from a fresh init
    return tiny_model


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_round_trip_single_file(tmp_path, trained, inputs):
    trained.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = JointAVDiT.from_pretrained(tmp_path / "m")
    assert loaded.config == trained.config
    assert_same_weights(loaded, trained)
    torch.testing.assert_close(loaded(inputs).video, trained(inputs).video, rtol=0, atol=0)


def test_round_trip_sharded_with_index_and_dtype(tmp_path, trained):
    trained.save_pretrained(tmp_path / "m", max_shard_size=100_000)
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    shards = sorted({*index["weight_map"].values()})
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"]) == set(trained.state_dict())
    assert_same_weights(JointAVDiT.from_pretrained(tmp_path / "m"), trained)
    half = JointAVDiT.from_pretrained(tmp_path / "m", dtype=torch.bfloat16, device="cpu")
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    torch.testing.assert_close(half.video.patch_embed.weight, trained.video.patch_embed.weight.bfloat16())


def test_strict_load_reports_missing_and_unexpected_before_allocating(tmp_path, trained, tiny_config, caplog):
    state = {k: v.contiguous() for k, v in trained.state_dict().items()}
    del state["audio.final.proj.weight"]
    state["audio.extra.weight"] = torch.zeros(3)
    (tmp_path / "m").mkdir()
    save_file(state, tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "config.json").write_text(
        json.dumps({"_class_name": "JointAVDiT", **tiny_config.to_dict()})
    )
    with pytest.raises(
        ValueError,
        match=r"(?s)missing from the file \(1\).*audio\.final\.proj\.weight.*"
        r"unexpected in the file \(1\).*audio\.extra\.weight",
    ):
        JointAVDiT.from_pretrained(tmp_path / "m")
    with caplog.at_level(logging.WARNING):
        loaded = JointAVDiT.from_pretrained(tmp_path / "m", strict=False, seed=3)
    assert "audio.final.proj.weight" in caplog.text
    fresh = build_model(tiny_config, seed=3)  # what is missing is initialised from the seed
    assert torch.equal(loaded.audio.final.proj.weight, fresh.audio.final.proj.weight)
    assert torch.equal(loaded.video.patch_embed.weight, trained.video.patch_embed.weight)


def test_a_tower_loads_from_any_safetensors_file_through_a_prefix_map(tmp_path, trained, tiny_config):
    file = tmp_path / "video_dit.safetensors"
    save_file({k: v.contiguous() for k, v in trained.video.state_dict().items()}, file)
    joint = build_model(tiny_config, seed=5)
    audio_before = {k: v.clone() for k, v in joint.audio.state_dict().items()}
    report = load_weights(joint, file, prefix_map={"": "video."})
    assert report.complete and len(report.loaded) == len(trained.video.state_dict())
    assert_same_weights(joint.video, trained.video)
    assert all(torch.equal(v, audio_before[k]) for k, v in joint.audio.state_dict().items())

    # The audio tower from a joint checkpoint directory; the rest of the file is ignored.
    trained.save_pretrained(tmp_path / "joint", max_shard_size=100_000)
    report = load_weights(joint, tmp_path / "joint", prefix_map={"audio.": "audio."})
    assert report.complete and report.ignored == len(trained.state_dict()) - len(trained.audio.state_dict())
    assert_same_weights(joint.audio, trained.audio)

    with pytest.raises(ValueError, match="unexpected in the file"):
        load_weights(joint, file, prefix_map={"": "audio."})  # video names under audio.: nothing fits


def test_shape_mismatch_is_reported(tmp_path, tiny_config):
    t2v = dataclasses.replace(tiny_config, video=dataclasses.replace(tiny_config.video, in_channels=4))
    file = tmp_path / "t2v.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(t2v, seed=0).video.state_dict().items()}, file)
    i2v = build_model(tiny_config, seed=0)
    with pytest.raises(ValueError, match=r"video\.patch_embed\.weight: file \(32, 16\) vs model \(32, 48\)"):
        load_weights(i2v, file, prefix_map={"": "video."})
    report = load_weights(i2v, file, prefix_map={"": "video."}, strict=False)
    assert [m.split(":")[0] for m in report.mismatched] == ["video.patch_embed.weight"]
    assert not report.missing and not report.unexpected


def test_a_failed_save_leaves_the_previous_one_intact(tmp_path, trained, tiny_config, monkeypatch):
    trained.save_pretrained(tmp_path / "m", max_shard_size=100_000)
    other = build_model(tiny_config, seed=9)
    calls = []

    def dies_on_the_third_shard(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:
            raise OSError("disk full")
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr("safetensors.torch.save_file", dies_on_the_third_shard)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(tmp_path / "m", max_shard_size=100_000)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary directory left
    assert_same_weights(JointAVDiT.from_pretrained(tmp_path / "m"), trained)
    other.save_pretrained(tmp_path / "m")  # overwriting a previous save: fewer files, no leftovers
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert_same_weights(JointAVDiT.from_pretrained(tmp_path / "m"), other)


def test_clear_errors_for_directories_that_are_not_saves(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        JointAVDiT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    with pytest.raises(ValueError, match="AutoencoderKLWan"):
        JointAVDiT.from_pretrained(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        trained.save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_weights(trained, tmp_path)
