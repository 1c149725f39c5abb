"""TA-CrossAttn fusion (seed 000 §2.1): the towers run in lockstep and exchange through temporally
aligned cross-attention.

- Every video block is followed by an exchange. After the dual-stream blocks it is bidirectional
  (video queries audio and audio queries video, both from the pre-exchange states); after the
  single-stream blocks it is audio -> video only.
- Before the exchange after video block i, the audio tower has run up to block ``pairing[i]``
  (relative depth by default), so the towers meet at matching depths.
- Queries and keys carry a 1D temporal RoPE with UniTemp positions: audio latent j at j, video
  latent i at Phi(i) (its receptive-field centre on the audio timeline). Spatial tokens of one latent
  frame share its position. Reference tokens are not on the timeline and take no part.
- The update goes through a timestep-aware AdaLN with a zero-initialised gate (OutputAdaLN).
- ``mutual`` switches the whole exchange off per sample (the "indep" state of seed 000 §4.4).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from alive_models.audio_dit import AudioDiT, AudioState
from alive_models.config import JointConfig
from alive_models.geometry import unitemp_audio_positions, unitemp_video_positions
from alive_models.layers.attention import Attention, Rope
from alive_models.layers.norms import Modulation, OutputAdaLN
from alive_models.layers.rope import RotaryEmbedding
from alive_models.video_dit import VideoDiT, VideoState


def relative_depth_pairing(num_video_blocks: int, num_audio_blocks: int) -> tuple[int, ...]:
    """For each video block i, the audio block reached at the same relative depth: ceil((i+1)Na/Nv) - 1."""
    return tuple(
        math.ceil((i + 1) * num_audio_blocks / num_video_blocks) - 1 for i in range(num_video_blocks)
    )


class TACrossAttention(nn.Module):
    """One direction of TA-CrossAttn: ``x`` (query stream) attends ``context`` (the other tower)."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm_x = nn.LayerNorm(query_dim, eps=1e-6)
        self.norm_context = nn.LayerNorm(context_dim, eps=1e-6)
        self.attn = Attention(query_dim, heads, head_dim, context_dim=context_dim)
        self.out_norm = OutputAdaLN(query_dim)

    def forward(
        self, x: Tensor, context: Tensor, time_mod: Tensor, rope_x: Rope, rope_context: Rope
    ) -> Tensor:
        update = self.attn(self.norm_x(x), self.norm_context(context), rope_q=rope_x, rope_k=rope_context)
        return self.out_norm(update, time_mod)


class TACrossAttnFusion(nn.Module):
    """Runs both towers block by block and exchanges between them; owns only the cross-modal weights."""

    def __init__(self, config: JointConfig) -> None:
        super().__init__()
        v, a, f = config.video, config.audio, config.fusion
        self.timeline = config.timeline
        self.num_dual = v.num_dual_blocks
        self.pairing = (
            f.pairing if f.pairing is not None else relative_depth_pairing(v.num_blocks, a.num_blocks)
        )
        if len(self.pairing) != v.num_blocks or list(self.pairing) != sorted(self.pairing):
            raise ValueError(
                f"pairing must give a non-decreasing audio block for each of {v.num_blocks} video blocks"
            )
        if not all(0 <= j < a.num_blocks for j in self.pairing):
            raise ValueError(f"pairing refers to audio blocks outside 0..{a.num_blocks - 1}")
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
        device = as_.x.device
        # A token patch spanning several latent frames sits at their mean position.
        frames = unitemp_video_positions(gt * patch_t, self.timeline).reshape(gt, patch_t).mean(dim=1)
        video_pos = frames.repeat_interleave(gh * gw).to(device)
        audio_pos = unitemp_audio_positions(as_.x.shape[1]).to(device)
        return self.rope(video_pos[None, :, None]), self.rope(audio_pos[None, :, None])

    def forward(
        self, video: VideoDiT, audio: AudioDiT, vs: VideoState, as_: AudioState, mutual: Tensor | None
    ) -> tuple[VideoState, AudioState]:
        """``mutual``: [B] bool, False = no exchange for that sample; None = exchange for all."""
        exchange = mutual is None or bool(mutual.any())
        gate = None if mutual is None or bool(mutual.all()) else mutual.to(vs.vid.dtype)[:, None, None]
        if exchange:
            rope_v, rope_a = self._ropes(vs, as_, video.config.patch_size[0])
            tmod_v = torch.stack(self.video_time_mod(vs.temb), dim=1)
            tmod_a = torch.stack(self.audio_time_mod(as_.temb), dim=1)

        audio_done = 0
        for i, audio_target in enumerate(self.pairing):
            vs = video.run_block(i, vs)
            while audio_done <= audio_target:
                as_ = audio.run_block(audio_done, as_)
                audio_done += 1
            if not exchange:
                continue
            clip, ax = vs.clip, as_.x
            dv = self.video_from_audio[i](clip, ax, tmod_v, rope_v, rope_a)
            if i < self.num_dual:
                da = self.audio_from_video[i](ax, clip, tmod_a, rope_a, rope_v)
                as_ = replace(as_, x=ax + (da if gate is None else gate * da))
            vs = vs.with_clip(clip + (dv if gate is None else gate * dv))
        for j in range(audio_done, audio.config.num_blocks):
            as_ = audio.run_block(j, as_)
        return vs, as_
