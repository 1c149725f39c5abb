"""TA-CrossAttn fusion (seed 000 §2.1): the towers run in lockstep and exchange through temporally
aligned cross-attention.

- Every video block is followed by an exchange. After the dual-stream blocks it is bidirectional
  (video queries audio and audio queries video, both from the pre-exchange states); after the
  single-stream blocks it is audio -> video only.
- Before the exchange after video block i, the audio tower has run up to block ``pairing[i]``
  (:func:`~alive_models.fusion.pairing.tower_pairing`; by default the whole audio tower runs beside
  the dual-stream blocks).
- Queries and keys carry a 1D temporal RoPE with UniTemp positions: audio latent j at j, video
  latent i at Phi(i) (its receptive-field centre on the audio timeline). Spatial tokens of one latent
  frame share its position. Reference tokens are not on the timeline and take no part.
- The update goes through a timestep-aware AdaLN with a zero-initialised gate (OutputAdaLN).
- Routes (:mod:`~alive_models.fusion.routes`) switch each direction off per sample: that direction's
  update is skipped for the sample (``mutual`` False = the "indep" state of seed 000 §4.4). Every
  exchange module still runs for every batch: they are FSDP units, and a rank whose batch happened to
  be all "indep" would otherwise skip their all-gathers while the other ranks wait in them. The gate
  is a per-sample ``torch.where``, so no value is read on the host. The price is the exchange's
  FLOPs for "indep" samples too (``flops.forward_flops`` counts them; the README has the figure).
- ``video_clean`` / ``audio_clean`` mark a stream given clean at t=0 as a condition (a2v, v2a; seed
  002 §4.4, eq. 7): the other tower reads it detached, so no gradient flows back into it through the
  exchange for those samples.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from alive_models.audio_dit import AudioDiT, AudioState
from alive_models.config import JointConfig
from alive_models.fusion.pairing import (
    dual_stream_pairing,
    interleave,
    relative_depth_pairing,
    tower_pairing,
)
from alive_models.fusion.routes import ALL_ON, ExchangeRoutes, detached_where, gated_add
from alive_models.geometry import unitemp_audio_positions, unitemp_video_positions
from alive_models.layers.attention import Attention
from alive_models.layers.norms import Modulation, OutputAdaLN
from alive_models.layers.rope import Rope, RotaryEmbedding
from alive_models.video_dit import VideoDiT, VideoState

__all__ = [
    "TACrossAttention",
    "TACrossAttnFusion",
    "dual_stream_pairing",
    "relative_depth_pairing",
    "tower_pairing",
]


class TACrossAttention(nn.Module):
    """One direction of TA-CrossAttn: ``x`` (query stream) attends ``context`` (the other tower)."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm_x = nn.LayerNorm(query_dim, eps=1e-6)
        self.norm_context = nn.LayerNorm(context_dim, eps=1e-6)
        self.attn = Attention(query_dim, heads, head_dim, context_dim=context_dim)
        self.out_norm = OutputAdaLN(query_dim)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        time_mod: Tensor,
        rope_x: Rope,
        rope_context: Rope,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        update = self.attn(
            self.norm_x(x),
            self.norm_context(context),
            key_mask=context_mask,
            rope_q=rope_x,
            rope_k=rope_context,
        )
        return self.out_norm(update, time_mod)


class TACrossAttnFusion(nn.Module):
    """Runs both towers block by block and exchanges between them; owns only the cross-modal weights."""

    def __init__(self, config: JointConfig) -> None:
        super().__init__()
        v, a, f = config.video, config.audio, config.fusion
        self.timeline = config.timeline
        self.num_dual = v.num_dual_blocks
        self.pairing = tower_pairing(config)
        self.immutable_audio = f.immutable_audio
        dv, da = v.hidden_dim, a.hidden_dim
        self.rope = RotaryEmbedding((f.head_dim,), f.rope_theta)
        self.video_time_mod = Modulation(dv, dv, 3)
        self.audio_time_mod = Modulation(da, da, 3)
        self.video_from_audio = nn.ModuleList(
            TACrossAttention(dv, da, f.num_heads, f.head_dim) for _ in range(v.num_blocks)
        )
        self.audio_from_video = nn.ModuleList(
            TACrossAttention(da, dv, f.num_heads, f.head_dim) for _ in range(v.num_dual_blocks)
        )

    def _ropes(self, vs: VideoState, as_: AudioState, patch_t: int) -> tuple[Rope, Rope]:
        gt, gh, gw = vs.grid
        length = as_.x.shape[1]

        def video_positions() -> Tensor:
            # A token patch spanning several latent frames sits at their mean position.
            frames = unitemp_video_positions(gt * patch_t, self.timeline).reshape(gt, patch_t).mean(dim=1)
            return frames.repeat_interleave(gh * gw)[:, None]

        device, dtype = vs.x.device, vs.x.dtype
        rope_v = self.rope.table(("video", vs.grid, patch_t), video_positions, device, dtype)
        rope_a = self.rope.table(
            ("audio", length), lambda: unitemp_audio_positions(length)[:, None], device, dtype
        )
        return rope_v, rope_a

    def forward(
        self,
        video: VideoDiT,
        audio: AudioDiT,
        vs: VideoState,
        as_: AudioState,
        routes: ExchangeRoutes = ALL_ON,
        video_clean: Tensor | None = None,
        audio_clean: Tensor | None = None,
    ) -> tuple[VideoState, AudioState]:
        """``routes``: per-sample switches of each direction (off = that update is skipped).
        ``video_clean`` / ``audio_clean``: [B] bool, True = that stream enters the other tower detached."""
        rope_v, rope_a = self._ropes(vs, as_, video.config.patch_size[0])
        tmod_v = torch.stack(self.video_time_mod(vs.temb), dim=1)
        tmod_a = torch.stack(self.audio_time_mod(as_.temb), dim=1)

        def exchange(i: int, vs: VideoState, as_: AudioState) -> tuple[VideoState, AudioState]:
            clip, ax = vs.clip, as_.x
            dual = i < self.num_dual
            if self.immutable_audio and not dual:
                audio_context = ax.detach()
            else:
                audio_context = detached_where(ax, audio_clean)
            dv = self.video_from_audio[i](clip, audio_context, tmod_v, rope_v, rope_a, as_.key_mask)
            if dual:
                video_context = detached_where(clip, video_clean)
                da = self.audio_from_video[i](ax, video_context, tmod_a, rope_a, rope_v)
                as_ = replace(as_, x=gated_add(ax, da, routes.audio_reads_video))
            return vs.with_clip(gated_add(clip, dv, routes.video_reads_audio)), as_

        return interleave(video, audio, vs, as_, self.pairing, exchange)
