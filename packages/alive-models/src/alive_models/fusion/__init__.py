"""The fusion seam: how the video and audio towers exchange information, chosen by ``FusionConfig.kind``.

A fusion is an ``nn.Module`` called as
``fusion(video, audio, video_state, audio_state, mutual=, video_clean=, audio_clean=)`` that runs both
towers' blocks (in whatever interleaving it needs) and returns their final states. It must run the
same modules on every rank whatever the per-sample flags say (FSDP), gating per sample instead. It owns
only cross-modal weights, so new variants (CCL, UniTalking) fit in without touching the towers.
"""

from __future__ import annotations

from torch import nn

from alive_models.config import JointConfig
from alive_models.fusion.ta_cross_attn import (
    TACrossAttention,
    TACrossAttnFusion,
    dual_stream_pairing,
    relative_depth_pairing,
    tower_pairing,
)

__all__ = [
    "TACrossAttention",
    "TACrossAttnFusion",
    "build_fusion",
    "dual_stream_pairing",
    "relative_depth_pairing",
    "tower_pairing",
]


def build_fusion(config: JointConfig) -> nn.Module:
    """Instantiate the fusion named by ``config.fusion.kind``."""
    kind = config.fusion.kind
    if kind == "ta_cross_attn":
        return TACrossAttnFusion(config)
    if kind in ("ccl", "unitalking"):
        raise NotImplementedError(f"fusion {kind!r} (seed 002 / 004 variant) is not implemented yet")
    raise ValueError(f"unknown fusion kind {kind!r}; choose ta_cross_attn, ccl or unitalking")
