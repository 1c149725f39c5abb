"""``init_from`` through ``alive_models.pretrained``: prefix maps, missing / unexpected keys and shapes,
on a plain model (the sharded path is exercised by every stage test)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from alive_models import build_model, get_preset
from alive_train.config import InitSource
from alive_train.weights import load_init_weights


@pytest.fixture
def models():
    config = get_preset("tiny")
    return build_model(config, seed=0), build_model(config, seed=1)


def test_a_bare_tower_checkpoint_loads_under_its_prefix(models, tmp_path):
    source, target = models
    video = {k: v for k, v in source.video.state_dict().items()}  # keys without "video."
    save_file(video, str(tmp_path / "t2v.safetensors"))
    report = load_init_weights(
        target, [InitSource(path=str(tmp_path / "t2v.safetensors"), prefix_map={"": "video."})]
    )
    assert report.loaded == {str(tmp_path / "t2v.safetensors"): len(video)}
    for name, value in source.video.state_dict().items():
        assert torch.equal(target.video.state_dict()[name], value)
    assert report.missing and all(k.startswith(("audio.", "fusion.")) for k in report.missing)
    assert "missing (kept as initialised)" in report.summary()


def test_a_prefix_map_takes_one_tower_from_a_joint_export(models, tmp_path):
    source, target = models
    source.save_pretrained(tmp_path / "export")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_init_weights(
        target, [InitSource(path=str(tmp_path / "export"), prefix_map={"audio.": "audio."})]
    )
    after = target.state_dict()
    assert all(torch.equal(after[k], source.state_dict()[k]) for k in after if k.startswith("audio."))
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith("audio."))
    assert report.missing == sorted(k for k in after if not k.startswith("audio."))


def test_later_sources_override_earlier_ones(models, tmp_path):
    source, target = models
    source.save_pretrained(tmp_path / "a")
    other = build_model(get_preset("tiny"), seed=2)
    save_file({k: v for k, v in other.video.state_dict().items()}, str(tmp_path / "video.safetensors"))
    load_init_weights(
        target,
        [
            InitSource(path=str(tmp_path / "a")),
            InitSource(path=str(tmp_path / "video.safetensors"), prefix_map={"": "video."}),
        ],
    )
    state = target.state_dict()
    assert all(torch.equal(state[f"video.{k}"], v) for k, v in other.video.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items() if not k.startswith("video."))


def test_unexpected_keys_fail_unless_allowed_and_shapes_must_match(models, tmp_path):
    source, target = models
    state = {**source.state_dict(), "video.old_head.weight": torch.zeros(3)}
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected keys .*1 such as .*video\.old_head\.weight"):
        load_init_weights(target, [InitSource(path=str(tmp_path / "w.safetensors"))])
    report = load_init_weights(
        target, [InitSource(path=str(tmp_path / "w.safetensors"), allow_unexpected=True)]
    )
    assert (
        report.unexpected == {str(tmp_path / "w.safetensors"): ["video.old_head.weight"]}
        and not report.missing
    )
    wrong = {"audio.final.proj.weight": torch.zeros(2, 2)}
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match="wrong shape"):
        load_init_weights(target, [InitSource(path=str(tmp_path / "wrong.safetensors"))])
    with pytest.raises(ValueError, match=r"nothing_here"):
        load_init_weights(target, [InitSource(path=str(tmp_path / "nothing_here"))])
