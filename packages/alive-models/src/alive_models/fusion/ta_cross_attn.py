"""TA-CrossAttn fusion (seed 000 §2.1): the towers run in lockstep and exchange through temporally
aligned cross-attention.

- Every video block is followed by an exchange. After the dual-stream blocks it is bidirectional
  (video queries audio and audio queries video, both from the pre-exchange states); after the
  single-stream blocks it is audio -> video only.
- Before the exchange after video block i, the audio tower has run up to block ``pairing[i]``
  (:func:`tower_pairing`; by default the whole audio tower runs beside the dual-stream blocks).
- Queries and keys carry a 1D temporal RoPE with UniTemp positions: audio latent j at j, video
  latent i at Phi(i) (its receptive-field centre on the audio timeline). Spatial tokens of one latent
  frame share its position. Reference tokens are not on the timeline and take no part.
- The update goes through a timestep-aware AdaLN with a zero-initialised gate (OutputAdaLN).
- ``mutual`` switches the exchange off per sample (the "indep" state of seed 000 §4.4). Every
  exchange module still runs for every batch: they are FSDP units, and a rank whose batch happened to
  be all "indep" would otherwise skip their all-gathers while the other ranks wait in them. The gate
  is a per-sample ``torch.where``, so no value is read on the host. The price is the exchange's
  FLOPs for "indep" samples too (``flops.forward_flops`` counts them; the README has the figure).
- ``video_clean`` / ``audio_clean`` mark a stream given clean at t=0 as a condition (a2v, v2a; seed
  002 §4.4, eq. 7): the other tower reads it detached, so no gradient flows back into it through the
  exchange for those samples.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from alive_models.audio_dit import AudioDiT, AudioState
from alive_models.config import JointConfig
from alive_models.geometry import unitemp_audio_positions, unitemp_video_positions
from alive_models.layers.attention import Attention
from alive_models.layers.norms import Modulation, OutputAdaLN
from alive_models.layers.rope import Rope, RotaryEmbedding
from alive_models.video_dit import VideoDiT, VideoState


def relative_depth_pairing(num_video_blocks: int, num_audio_blocks: int) -> tuple[int, ...]:
    """For each video block i, the audio block reached at the same relative depth: ceil((i+1)Na/Nv) - 1."""
    return tuple(
        math.ceil((i + 1) * num_audio_blocks / num_video_blocks) - 1 for i in range(num_video_blocks)
    )


def dual_stream_pairing(num_dual: int, num_single: int, num_audio_blocks: int) -> tuple[int, ...]:
    """The audio tower runs beside the dual-stream blocks (relative depth over them) and is finished
    before the single-stream blocks, which all read its final states."""
    return relative_depth_pairing(num_dual, num_audio_blocks) + (num_audio_blocks - 1,) * num_single


def tower_pairing(config: JointConfig) -> tuple[int, ...]:
    """``FusionConfig.pairing`` resolved to one audio block index per video block, validated."""
    v, a, rule = config.video, config.audio, config.fusion.pairing
    if rule == "dual_stream":
        pairing = dual_stream_pairing(v.num_dual_blocks, v.num_single_blocks, a.num_blocks)
    elif rule == "relative_depth":
        pairing = relative_depth_pairing(v.num_blocks, a.num_blocks)
    else:
        pairing = tuple(rule)
    if len(pairing) != v.num_blocks or list(pairing) != sorted(pairing):
        raise ValueError(
            f"pairing must give a non-decreasing audio block for each of {v.num_blocks} video blocks"
        )
    if not all(0 <= j < a.num_blocks for j in pairing):
        raise ValueError(f"pairing refers to audio blocks outside 0..{a.num_blocks - 1}")
    return pairing


def _detached_where(x: Tensor, flags: Tensor | None) -> Tensor:
    """``x`` with the samples where ``flags`` [B] is True cut from autograd (values unchanged)."""
    return x if flags is None else torch.where(flags[:, None, None], x.detach(), x)


def _gated_add(x: Tensor, update: Tensor, on: Tensor | None) -> Tensor:
    """x + update for samples with the exchange on ([B, 1, 1] bool), x itself for the others."""
    return x + update if on is None else torch.where(on, x + update, x)


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
        mutual: Tensor | None = None,
        video_clean: Tensor | None = None,
        audio_clean: Tensor | None = None,
    ) -> tuple[VideoState, AudioState]:
        """``mutual``: [B] bool, False = no exchange for that sample; None = exchange for all.
        ``video_clean`` / ``audio_clean``: [B] bool, True = that stream enters the other tower detached."""
        rope_v, rope_a = self._ropes(vs, as_, video.config.patch_size[0])
        tmod_v = torch.stack(self.video_time_mod(vs.temb), dim=1)
        tmod_a = torch.stack(self.audio_time_mod(as_.temb), dim=1)
        on = None if mutual is None else mutual[:, None, None]

        audio_done = 0
        for i, audio_target in enumerate(self.pairing):
            vs = video.run_block(i, vs)
            while audio_done <= audio_target:
                as_ = audio.run_block(audio_done, as_)
                audio_done += 1
            clip, ax = vs.clip, as_.x
            dual = i < self.num_dual
            if self.immutable_audio and not dual:
                audio_context = ax.detach()
            else:
                audio_context = _detached_where(ax, audio_clean)
            dv = self.video_from_audio[i](clip, audio_context, tmod_v, rope_v, rope_a, as_.key_mask)
            if dual:
                video_context = _detached_where(clip, video_clean)
                da = self.audio_from_video[i](ax, video_context, tmod_a, rope_a, rope_v)
                as_ = replace(as_, x=_gated_add(ax, da, on))
            vs = vs.with_clip(_gated_add(clip, dv, on))
        return vs, audio.run_blocks(as_, start=audio_done)
