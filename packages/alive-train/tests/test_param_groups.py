"""Parameter groups: first match wins, empty patterns and unnamed parameters are errors, frozen means
requires_grad False and out of the optimizer; the table counts parameters."""

from __future__ import annotations

import pytest
import torch

from alive_models import JointAVDiT, get_preset
from alive_models.parallel.fsdp import apply_activation_checkpointing
from alive_train.config import OptimConfig, ParamGroupConfig, load_config
from alive_train.param_groups import (
    ParamGroupError,
    canonical_name,
    format_table,
    optimizer_groups,
    resolve_param_groups,
    table_records,
)


@pytest.fixture
def model() -> JointAVDiT:
    with torch.device("meta"):
        return JointAVDiT(get_preset("tiny"))


def groups(*specs, unmatched="error", default_lr=None) -> OptimConfig:
    return OptimConfig(
        groups=[ParamGroupConfig(pattern=p, lr=lr, name=n) for n, p, lr in specs],
        unmatched=unmatched,
        default_lr=default_lr,
    )


def count(model, prefix: str) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def test_sft_groups_on_the_joint_model(model):
    resolved = resolve_param_groups(model, load_config("sft").optim)
    by_name = {g.name: g for g in resolved}
    v2a = count(model, "fusion.audio_from_video.") + count(model, "fusion.audio_time_mod.")
    assert by_name["audio_v2a_cross_attn"].numel == v2a and by_name["audio_v2a_cross_attn"].lr == 1e-6
    assert by_name["audio"].numel == count(model, "audio.") and by_name["audio"].lr == 1e-6
    assert by_name["video"].numel == count(model, "video.") and by_name["video"].lr == 1e-5
    assert by_name["video_a2v_cross_attn"].numel == count(model, "fusion.") - v2a
    assert sum(g.numel for g in resolved) == sum(p.numel() for p in model.parameters())
    names = [n for g in resolved for n in g.names]
    assert len(names) == len(set(names)) == len(list(model.parameters()))


def test_first_match_wins_and_frozen_groups_leave_the_optimizer(model):
    resolved = resolve_param_groups(model, groups(("fusion_out", r"^fusion\.", None), ("all", r".", 1e-4)))
    assert resolved[0].numel == count(model, "fusion.") and resolved[0].frozen
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("fusion."))
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("fusion."))
    opt = optimizer_groups(resolved)
    assert [g["name"] for g in opt] == ["all"] and [g["lr"] for g in opt] == [1e-4]
    table = format_table(resolved)
    assert "frozen" in table and f"{count(model, 'fusion.'):,}" in table
    assert table_records(resolved)[0] == {
        "group": "fusion_out",
        "pattern": r"^fusion\.",
        "lr": None,
        "params": count(model, "fusion."),
        "tensors": len(resolved[0].names),
    }


def test_a_pattern_that_matches_nothing_is_an_error(model):
    with pytest.raises(ParamGroupError, match=r"match no parameter: .*visual"):
        resolve_param_groups(model, groups(("v", r"^visual\.", 1e-4), ("rest", ".", 1e-4)))


def test_a_pattern_shadowed_by_an_earlier_group_is_allowed_with_zero_params(model):
    resolved = resolve_param_groups(model, groups(("all", ".", 1e-4), ("video", r"^video\.", 1e-5)))
    assert resolved[1].numel == 0 and resolved[0].numel == sum(p.numel() for p in model.parameters())


def test_unmatched_parameters_error_freeze_or_default(model):
    spec = ("video", r"^video\.", 1e-4)
    with pytest.raises(ParamGroupError, match="match no group"):
        resolve_param_groups(model, groups(spec))
    frozen = resolve_param_groups(model, groups(spec, unmatched="frozen"))
    assert frozen[-1].frozen and frozen[-1].numel == count(model, "audio.") + count(model, "fusion.")
    default = resolve_param_groups(model, groups(spec, unmatched="default", default_lr=3e-5))
    assert default[-1].name == "default" and default[-1].lr == 3e-5
    assert all(p.requires_grad for p in model.parameters())


def test_invalid_regex_is_reported_with_its_group(model):
    with pytest.raises(ParamGroupError, match=r"optim\.groups\.0\.pattern"):
        resolve_param_groups(model, groups(("bad", "(", 1e-4)))


def test_names_are_canonical_under_activation_checkpointing(model):
    names = [n for n, _ in model.named_parameters()]
    apply_activation_checkpointing(model.video.dual_blocks)
    assert [n for n, _ in model.named_parameters()] == names  # composable AC adds no wrapper segment
    wrapped = "video.dual_blocks.0._checkpoint_wrapped_module._orig_mod.attn.qkv.weight"
    assert canonical_name(wrapped) == "video.dual_blocks.0.attn.qkv.weight"  # module-wrapper style
    resolved = resolve_param_groups(
        model, groups(("dual0", r"^video\.dual_blocks\.0\.", 1e-4), ("rest", ".", 1e-5))
    )
    assert resolved[0].numel == count(model, "video.dual_blocks.0.")
