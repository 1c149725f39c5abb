"""The fusion seam: how the video and audio towers exchange information, chosen by ``FusionConfig.kind``.

A fusion is an ``nn.Module`` called as
``fusion(video, audio, video_state, audio_state, routes=, video_clean=, audio_clean=)`` that runs both
towers' blocks (in whatever interleaving it needs, through :func:`~pairing.interleave`) and returns
their final states. It owns only cross-modal weights, so variants fit in without touching the towers.

The contract every kind keeps:
- ``routes`` (:class:`ExchangeRoutes`): per sample and per direction, whether the video stream reads
  the audio latents and the audio stream the video latents (``JointInputs.mutual`` is the shorthand
  for both). A route that is off makes that stream's output independent of the other stream's
  latents for that sample; what the stream sees instead is the kind's (nothing for TA-CrossAttn, the
  Learnable Context Tokens for CCL, its own modality for UniTalking). :data:`TASK_ROUTES` maps tasks
  to routes.
- The same modules run on every rank whatever the per-sample flags say (FSDP all-gathers must
  match); flags gate or mask per sample on the device, and nothing reads a tensor value on the host.
- ``video_clean`` / ``audio_clean`` [B] bool: that stream is a clean condition (t=0); where the other
  stream reads it, it is detached (values unchanged, no gradient into its tower through the exchange).
- Reference tokens (images) are not on the timeline and take no part; padded audio latents
  (``AudioState.key_mask``) are never attended.

Kinds: ``ta_cross_attn`` (seed 000, :mod:`.ta_cross_attn`), ``ccl`` (seed 002, :mod:`.ccl`),
``unitalking`` (seed 004, :mod:`.unitalking`).
"""

from __future__ import annotations

from torch import nn

from alive_models.config import JointConfig
from alive_models.fusion.ccl import CCLFusion, ContextAttention, TARPLayout, tarp_layout, tarp_windows
from alive_models.fusion.pairing import (
    dual_stream_pairing,
    interleave,
    relative_depth_pairing,
    tower_pairing,
)
from alive_models.fusion.routes import TASK_ROUTES, ExchangeRoutes, Route, task_route
from alive_models.fusion.ta_cross_attn import TACrossAttention, TACrossAttnFusion
from alive_models.fusion.unitalking import JointAttention, UniTalkingFusion

__all__ = [
    "TASK_ROUTES",
    "CCLFusion",
    "ContextAttention",
    "ExchangeRoutes",
    "JointAttention",
    "Route",
    "TACrossAttention",
    "TACrossAttnFusion",
    "TARPLayout",
    "UniTalkingFusion",
    "build_fusion",
    "dual_stream_pairing",
    "interleave",
    "relative_depth_pairing",
    "tarp_layout",
    "tarp_windows",
    "task_route",
    "tower_pairing",
]

_KINDS: dict[str, type[nn.Module]] = {
    "ta_cross_attn": TACrossAttnFusion,
    "ccl": CCLFusion,
    "unitalking": UniTalkingFusion,
}


def build_fusion(config: JointConfig) -> nn.Module:
    """Instantiate the fusion named by ``config.fusion.kind``."""
    try:
        kind = _KINDS[config.fusion.kind]
    except KeyError:
        raise ValueError(
            f"unknown fusion kind {config.fusion.kind!r}; choose one of {sorted(_KINDS)}"
        ) from None
    return kind(config)
