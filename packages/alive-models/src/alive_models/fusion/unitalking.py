"""UniTalking fusion (seed 004 §4.2-4.4): joint attention over concatenated video and audio tokens.

UniTalking's MM-DiT blocks run one attention over [video; audio] tokens, so each modality's softmax
weighs its own tokens against the other's. Our towers keep their own self-attention; the fusion puts
one joint-attention module at every exchange point of the pairing in place of TA-CrossAttn's
cross-attention pair:
- after a dual-stream video block: both modalities query the concatenation [clip; audio] and both
  are updated (16 modules at alive-14b);
- after a single-stream video block: the clip tokens query [clip; audio], the finished audio states
  give keys and values only (40 modules).

Per-modality projections map each tower's width to the common head size (``FusionConfig.num_heads``
x ``head_dim``; our towers differ in width, 3072 vs 1536 at alive-14b) and per-modality output
projections map back; output projections start at zero, so the towers are unchanged at first.

Anisotropic RoPE (§4.4, after Ovi): a 3D (t, h, w) RoPE over the joint sequence. Video tokens sit at
(Phi(i), h, w): UniTemp's receptive-field centre of their latent frame on the audio timeline (seed
000 eq. 2) and their grid position. Audio latent j sits at (j, h_c, w_c): the same timeline, and one
fixed spatial position for every audio token, the centre of the token grid (our choice: equally far
from every spatial token, no corner favoured). ``head_dim`` is split over (t, h, w) like the video
tower's (1/4, 3/8, 3/8).

Routes (TV2A's audio-to-video attention mask, §4.5, per sample): video queries see the audio keys
only where ``video_reads_audio``; audio queries see the video keys only where ``audio_reads_video``.
A sample with both off attends its own modality only (the streams are independent). The queries of
each modality are one attention call each, with a [B, L_v + L_a] key mask built once per forward on
the device (no [L, L] mask, no host sync; no mask at all when every route is on and nothing is
padded). ``video_clean`` / ``audio_clean`` detach the clean stream's keys and values where the other
modality's queries read them (its tower gets no gradient from the other stream's loss).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from alive_models.audio_dit import AudioDiT, AudioState
from alive_models.config import JointConfig
from alive_models.fusion.pairing import interleave, tower_pairing
from alive_models.fusion.routes import ALL_ON, ExchangeRoutes, detached_where
from alive_models.geometry import unitemp_video_positions
from alive_models.layers.attention import Attention, KeyValue, attention
from alive_models.layers.embeddings import video_grid_positions
from alive_models.layers.rope import Rope, RotaryEmbedding, apply_rotary
from alive_models.video_dit import VideoDiT, VideoState


class JointAttention(nn.Module):
    """One joint-attention exchange: per-modality q/k/v/out projections to a common head size.
    ``audio_queries`` False: the audio tokens only give keys and values (single-stream points)."""

    def __init__(
        self, video_dim: int, audio_dim: int, heads: int, head_dim: int, audio_queries: bool
    ) -> None:
        super().__init__()
        self.norm_video = nn.LayerNorm(video_dim, eps=1e-6)
        self.norm_audio = nn.LayerNorm(audio_dim, eps=1e-6)
        self.video = Attention(video_dim, heads, head_dim, zero_out=True)
        self.audio = (
            Attention(audio_dim, heads, head_dim, zero_out=True)
            if audio_queries
            else KeyValue(audio_dim, heads, head_dim)
        )

    @property
    def audio_queries(self) -> bool:
        return isinstance(self.audio, Attention)

    def forward(
        self,
        clip: Tensor,
        audio: Tensor,
        ropes: tuple[Rope, Rope],
        masks: tuple[Tensor | None, Tensor | None],
        video_clean: Tensor | None,
        audio_clean: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        """Updates (to add) for the clip [B, L_v, D_v] and, with audio queries, the audio [B, L_a, D_a]."""
        rope_v, rope_a = ropes
        xv, xa = self.norm_video(clip), self.norm_audio(audio)
        kv, vv = self.video.project_kv(xv)
        if self.audio_queries:
            ka, va = self.audio.project_kv(xa)
        else:
            ka, va = self.audio(xa)
        kv, ka = apply_rotary(kv, *rope_v), apply_rotary(ka, *rope_a)
        qv = apply_rotary(self.video.project_q(xv), *rope_v)
        keys = torch.cat([kv, detached_where(ka, audio_clean)], dim=1)
        values = torch.cat([vv, detached_where(va, audio_clean)], dim=1)
        update_v = self.video.to_out(attention(qv, keys, values, masks[0]).flatten(-2))
        if not self.audio_queries:
            return update_v, None
        qa = apply_rotary(self.audio.project_q(xa), *rope_a)
        if video_clean is not None or audio_clean is not None:
            keys = torch.cat([detached_where(kv, video_clean), ka], dim=1)
            values = torch.cat([detached_where(vv, video_clean), va], dim=1)
        update_a = self.audio.to_out(attention(qa, keys, values, masks[1]).flatten(-2))
        return update_v, update_a


def _joint_masks(
    routes: ExchangeRoutes,
    audio_mask: Tensor | None,
    video_length: int,
    audio_length: int,
    batch: int,
    device,
) -> tuple[Tensor | None, Tensor | None]:
    """Key masks over [clip; audio] for the video queries and for the audio queries."""
    vra, arv = routes.video_reads_audio, routes.audio_reads_video

    def ones(length: int) -> Tensor:
        return torch.ones(batch, length, dtype=torch.bool, device=device)

    for_video = None
    if vra is not None or audio_mask is not None:
        audio_keys = ones(audio_length) if audio_mask is None else audio_mask
        if vra is not None:
            audio_keys = audio_keys & vra[:, None]
        for_video = torch.cat([ones(video_length), audio_keys], dim=1)
    for_audio = None
    if arv is not None or audio_mask is not None:
        video_keys = ones(video_length) if arv is None else arv[:, None].expand(batch, video_length)
        for_audio = torch.cat([video_keys, ones(audio_length) if audio_mask is None else audio_mask], dim=1)
    return for_video, for_audio


class UniTalkingFusion(nn.Module):
    """Runs both towers and exchanges through joint attention over [clip; audio] at every pairing point."""

    def __init__(self, config: JointConfig) -> None:
        super().__init__()
        v, a, f = config.video, config.audio, config.fusion
        self.timeline = config.timeline
        self.num_dual = v.num_dual_blocks
        self.pairing = tower_pairing(config)
        self.immutable_audio = f.immutable_audio
        self.rope = RotaryEmbedding(f.rope_axes_dims, f.rope_theta)
        self.joint = nn.ModuleList(
            JointAttention(
                v.hidden_dim, a.hidden_dim, f.num_heads, f.head_dim, audio_queries=i < v.num_dual_blocks
            )
            for i in range(v.num_blocks)
        )

    def _ropes(
        self, grid: tuple[int, int, int], patch_t: int, length: int, device, dtype
    ) -> tuple[Rope, Rope]:
        gt, gh, gw = grid

        def video_positions() -> Tensor:
            positions = video_grid_positions(grid)
            t = unitemp_video_positions(gt * patch_t, self.timeline).reshape(gt, patch_t).mean(dim=1)
            positions[:, 0] = t.repeat_interleave(gh * gw)
            return positions

        def audio_positions() -> Tensor:
            centre = torch.tensor([(gh - 1) / 2, (gw - 1) / 2], dtype=torch.float64)
            t = torch.arange(length, dtype=torch.float64)[:, None]
            return torch.cat([t, centre.expand(length, 2)], dim=1)

        rope_v = self.rope.table(("joint_video", grid, patch_t), video_positions, device, dtype)
        rope_a = self.rope.table(("joint_audio", length, gh, gw), audio_positions, device, dtype)
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
        b, length = as_.x.shape[:2]
        video_length = vs.clip.shape[1]
        ropes = self._ropes(vs.grid, video.config.patch_size[0], length, vs.x.device, vs.x.dtype)
        masks = _joint_masks(routes, as_.key_mask, video_length, length, b, vs.x.device)

        def exchange(i: int, vs: VideoState, as_: AudioState) -> tuple[VideoState, AudioState]:
            clip, ax = vs.clip, as_.x
            if self.immutable_audio and i >= self.num_dual:
                ax = ax.detach()
            update_v, update_a = self.joint[i](clip, ax, ropes, masks, video_clean, audio_clean)
            if update_a is not None:
                as_ = replace(as_, x=as_.x + update_a)
            return vs.with_clip(clip + update_v), as_

        return interleave(video, audio, vs, as_, self.pairing, exchange)
