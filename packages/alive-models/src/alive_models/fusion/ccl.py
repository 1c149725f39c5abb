"""CCL fusion (seed 002 §4): Cross-modal Context Learning between the towers.

**TARP** (§4.1, Temporally Aligned RoPE and Partitioning). With t_v video latent frames (token
frames after patchify) and t_a audio latents:
- RoPE: video tokens of frame i sit at temporal index i (standard RoPE); audio latent j sits at
  j * t_v / t_a (rescaled). One temporal axis; spatial tokens of a frame share its index.
- Audio -> video windows: c = t_a / t_v audio latents per frame; frame i's window is centred on
  m_i = floor(c/2 + c*i) and holds s = 3 * floor(c) audio latents (``FusionConfig.window_frames``
  = 3 frames' worth): its own latents and one frame's worth on each side. The video queries of
  frame i attend only that window. Video queries are reshaped to (B * t_v) groups of h*w, the
  windowed keys gathered to (B * t_v) groups of s, so the cost is O(t_v * h*w * s): linear in the
  clip length.
- Video -> audio, s = 1 (nearest-neighbour interpolation): audio latent j attends the h*w tokens of
  video frame floor(j * t_v / t_a). The seed writes this as (B * t_a) groups of one query against a
  copy of its frame's keys; we group the other way round, the audio queries of each frame against
  that frame's keys (B * t_v groups of ceil(t_a / t_v) query slots, the few spare slots padded and
  dropped), which is the same attention without copying the video keys c times.

Two decisions where the seed is silent or its formula breaks:
- The window centre uses the real ratio c = t_a / t_v, computed exactly in integers as
  m_i = floor(t_a (2i + 1) / (2 t_v)). The seed's c = floor(t_a / t_v) in the centre drifts when
  t_a is not a multiple of t_v: at t_a = 50, t_v = 13 it centres frame 12 on latent 37 while the
  frame plays over latents 46-49 (360 ms late, and growing with the clip); with an integer ratio the
  two formulas are identical. The window size stays 3 * floor(c).
- Ends: a window that would start before latent 0 or end after t_a - 1 is shifted inside (start
  clamped to [0, t_a - s]), so every frame attends exactly s real latents, its own always among them,
  and no key mask is needed for it (fused kernels stay usable). A clip with t_a < s attends all of it.

**Cross-modal Context Attention** (§4.2): each module has Learnable Context Tokens (n_a = 8 in the
audio -> video modules, n_v = 128 in video -> audio; ``FusionConfig.audio_context_tokens`` /
``video_context_tokens``). They live in the feature space of the stream they stand in for and go
through the module's own key/value projections (the seed's eq. 3 writes L_a in R^{n_a x d_v}; with
one projection for real and context tokens they are comparable by construction), take no RoPE, and
are appended to every group's windowed keys and values (eq. 3); attention then runs per group
(eq. 4). The output projection starts at zero, so adding CCL to trained towers changes nothing at
first. The update is added to the stream as a plain residual (seed 002 eq. 1 without the gate g).

**Dynamic Context Routing** (§4.2): a route that is off for a sample (``ExchangeRoutes``) masks that
sample's windowed keys, so its queries attend only the LCT (the LCT-only state: t2v / t2a, the
clean stream of a2v / v2a, and UCG's unconditional cross-modal state, §4.3). All modules run for
every batch (FSDP); the mask is built on the device.

**Placement.** The seed puts one CCA module in every block of two equal-depth towers. Ours differ in
depth (56 video blocks: 16 dual + 40 single; 32 audio blocks) and already meet by ``pairing``: one
audio -> video module after every video block (56, n_a tokens each) and one video -> audio module
after every audio block (32, n_v tokens each), which reads the video states of the latest video
block. With the default pairing the audio tower runs beside the dual-stream blocks, two audio blocks
(each with its CCA) per dual block, and the single-stream blocks read the finished audio.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from alive_models.audio_dit import AudioDiT, AudioState
from alive_models.config import JointConfig
from alive_models.fusion.pairing import interleave, tower_pairing
from alive_models.fusion.routes import ALL_ON, ExchangeRoutes, detached_where
from alive_models.layers.attention import Attention, attention
from alive_models.layers.rope import Rope, RotaryEmbedding, apply_rotary
from alive_models.video_dit import VideoDiT, VideoState


@dataclass(frozen=True)
class TARPLayout:
    """Index tensors that partition one clip's audio and video by time (all on one device).

    ``windows`` [t_v, s]: the audio latents frame i's video queries attend (audio -> video).
    ``query_slots`` [t_v, q]: the audio latents whose queries attend frame i (video -> audio), q =
    ceil(t_a / t_v); a spare slot repeats a neighbour and its output is dropped.
    ``slot_of_audio`` [t_a]: where audio latent j's output sits in the flattened [t_v * q] slots.
    """

    audio_length: int
    video_frames: int
    windows: Tensor
    query_slots: Tensor
    slot_of_audio: Tensor

    @property
    def window_size(self) -> int:
        return self.windows.shape[1]

    @property
    def slots_per_frame(self) -> int:
        return self.query_slots.shape[1]


def tarp_windows(
    audio_length: int, video_frames: int, window_frames: int = 3, device: torch.device | str | None = None
) -> Tensor:
    """[t_v, s] audio latent indices of each video frame's window, s = window_frames * floor(t_a / t_v).

    Centre m_i = floor(c/2 + c i) with c = t_a / t_v (exact integer arithmetic); windows that would
    leave [0, t_a) are shifted inside. Computed on ``device`` (no host copy)."""
    t_a, t_v = audio_length, video_frames
    if t_a < 1 or t_v < 1:
        raise ValueError(f"TARP needs audio and video, got t_a={t_a}, t_v={t_v}")
    size = min(window_frames * max(t_a // t_v, 1), t_a)
    i = torch.arange(t_v, device=device)
    centre = torch.div(t_a * (2 * i + 1), 2 * t_v, rounding_mode="floor")
    start = (centre - size // 2).clamp(0, t_a - size)
    return start[:, None] + torch.arange(size, device=device)


def nearest_frames(audio_length: int, video_frames: int, device: torch.device | str | None = None) -> Tensor:
    """[t_a] the video frame each audio latent reads (s = 1): floor(j * t_v / t_a), nearest-neighbour
    interpolation of the frames to the audio length."""
    j = torch.arange(audio_length, device=device)
    return torch.div(j * video_frames, audio_length, rounding_mode="floor")


def tarp_layout(
    audio_length: int, video_frames: int, window_frames: int, device: torch.device | str | None = None
) -> TARPLayout:
    """The index tensors of one clip (see :class:`TARPLayout`), built on ``device`` with integer
    arithmetic: no host copy, nothing read back."""
    t_a, t_v = audio_length, video_frames
    frame = nearest_frames(t_a, t_v, device)
    f = torch.arange(t_v + 1, device=device)
    first = torch.div(f * t_a + t_v - 1, t_v, rounding_mode="floor")  # first latent j of frame f
    slots = -(-t_a // t_v)
    query_slots = (first[:-1, None] + torch.arange(slots, device=device)).clamp(max=t_a - 1)
    slot_of_audio = frame * slots + torch.arange(t_a, device=device) - first[frame]
    return TARPLayout(t_a, t_v, tarp_windows(t_a, t_v, window_frames, device), query_slots, slot_of_audio)


@dataclass(frozen=True)
class TARPContext:
    """What every CCA module of one forward shares: the layout, the RoPE tables and the key masks."""

    layout: TARPLayout
    grid: tuple[int, int, int]
    rope_video: Rope
    rope_audio: Rope
    mask_video: Tensor | None  # [B * t_v, s + n_a]: keys of the audio -> video modules
    mask_audio: Tensor | None  # [B * t_v, h*w + n_v]: keys of the video -> audio modules

    @property
    def frame_tokens(self) -> int:
        return self.grid[1] * self.grid[2]


class ContextAttention(nn.Module):
    """A CCA module (seed 002 §4.2): queries of one stream attend a time-partitioned window of the
    other stream plus this module's Learnable Context Tokens. The two directions group differently
    (:class:`AudioToVideoAttention`, :class:`VideoToAudioAttention`); each does its whole work in
    ``forward``, so FSDP gathers its weights (and activation checkpointing wraps it) as one unit."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int, num_tokens: int) -> None:
        super().__init__()
        self.norm_x = nn.LayerNorm(query_dim, eps=1e-6)
        self.norm_context = nn.LayerNorm(context_dim, eps=1e-6)
        self.attn = Attention(query_dim, heads, head_dim, context_dim=context_dim, zero_out=True)
        # In the context stream's feature space (after its LayerNorm: unit scale), so the module's
        # key/value projections serve real and context tokens alike.
        self.context_tokens = nn.Parameter(torch.empty(num_tokens, context_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.context_tokens)

    def project(self, x: Tensor, context: Tensor, rope_x: Rope, rope_context: Rope) -> tuple[Tensor, ...]:
        """Queries of ``x`` [B, Lq, D_x] and keys/values of ``context`` [B, Lk, D_c], RoPE applied."""
        q = apply_rotary(self.attn.project_q(self.norm_x(x)), *rope_x)
        k, v = self.attn.project_kv(self.norm_context(context))
        return q, apply_rotary(k, *rope_context), v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        """Grouped q [G, Lq, H, d], k/v [G, s, H, d]; the LCT are appended to every group's keys
        (``key_mask`` [G, s + n] covers both). Returns [G, Lq, H * d], before the output projection."""
        lk, lv = self.attn.project_kv(self.context_tokens.to(k.dtype))
        groups = q.shape[0]
        k = torch.cat([k, lk.expand(groups, -1, -1, -1)], dim=1)
        v = torch.cat([v, lv.expand(groups, -1, -1, -1)], dim=1)
        return attention(q, k, v, key_mask).flatten(-2)


class AudioToVideoAttention(ContextAttention):
    """Video queries of frame i attend frame i's TARP window of audio latents (+ n_a LCT)."""

    def forward(self, clip: Tensor, audio: Tensor, ctx: TARPContext) -> Tensor:
        """The update for the clip tokens [B, t_v * h*w, D_v] from the audio states [B, t_a, D_a]."""
        b, (frames, hw) = clip.shape[0], (ctx.grid[0], ctx.frame_tokens)
        q, k, v = self.project(clip, audio, ctx.rope_video, ctx.rope_audio)
        q = q.reshape(b * frames, hw, *q.shape[2:])  # (B * t_v) groups of a frame's h*w queries
        windows = ctx.layout.windows
        k, v = k[:, windows].flatten(0, 1), v[:, windows].flatten(0, 1)  # [B * t_v, s, H, d]
        return self.attn.to_out(self.attend(q, k, v, ctx.mask_video).reshape(b, frames * hw, -1))


class VideoToAudioAttention(ContextAttention):
    """Audio latent j's query attends the h*w tokens of its nearest video frame (+ n_v LCT)."""

    def forward(self, audio: Tensor, clip: Tensor, ctx: TARPContext) -> Tensor:
        """The update for the audio states [B, t_a, D_a] from the clip tokens [B, t_v * h*w, D_v]."""
        b, (frames, hw) = clip.shape[0], (ctx.grid[0], ctx.frame_tokens)
        q, k, v = self.project(audio, clip, ctx.rope_audio, ctx.rope_video)
        q = q[:, ctx.layout.query_slots].flatten(0, 1)  # [B * t_v, slots, H, d]: a frame's audio
        k = k.reshape(b * frames, hw, *k.shape[2:])  # [B * t_v, h*w, H, d]: that frame's tokens
        v = v.reshape(b * frames, hw, *v.shape[2:])
        out = self.attend(q, k, v, ctx.mask_audio).reshape(b, -1, q.shape[-2] * q.shape[-1])
        return self.attn.to_out(out[:, ctx.layout.slot_of_audio])


def _route_mask(
    on: Tensor | None, valid: Tensor | None, groups: int, keys: int, num_tokens: int
) -> Tensor | None:
    """[B * groups, keys + num_tokens] key mask: a sample's windowed keys where its route is on (and
    they are not padding), its context tokens always. None when nothing is masked."""
    if on is None and valid is None:
        return None
    b = (on if on is not None else valid).shape[0]
    mask = torch.ones(b, groups, keys, dtype=torch.bool, device=(on if on is not None else valid).device)
    if valid is not None:
        mask = mask & valid
    if on is not None:
        mask = mask & on[:, None, None]
    tokens = torch.ones(b * groups, num_tokens, dtype=torch.bool, device=mask.device)
    return torch.cat([mask.reshape(b * groups, keys), tokens], dim=1)


class CCLFusion(nn.Module):
    """Runs both towers and exchanges through CCA modules with TARP windows and routed LCT."""

    def __init__(self, config: JointConfig) -> None:
        super().__init__()
        v, a, f = config.video, config.audio, config.fusion
        self.num_dual = v.num_dual_blocks
        self.pairing = tower_pairing(config)
        self.immutable_audio = f.immutable_audio
        self.window_frames = f.window_frames
        self.context_tokens = (f.audio_context_tokens, f.video_context_tokens)
        dv, da = v.hidden_dim, a.hidden_dim
        self.rope = RotaryEmbedding((f.head_dim,), f.rope_theta)
        self.video_from_audio = nn.ModuleList(
            AudioToVideoAttention(dv, da, f.num_heads, f.head_dim, f.audio_context_tokens)
            for _ in range(v.num_blocks)
        )
        self.audio_from_video = nn.ModuleList(
            VideoToAudioAttention(da, dv, f.num_heads, f.head_dim, f.video_context_tokens)
            for _ in range(a.num_blocks)
        )

    def context(
        self, grid: tuple[int, int, int], audio_mask: Tensor | None, routes: ExchangeRoutes, like: Tensor
    ) -> TARPContext:
        """The shared state of one forward for a clip of token ``grid`` and audio of ``audio_mask``'s
        (or ``like``'s second axis) length; ``like`` gives device and dtype."""
        frames, hw = grid[0], grid[1] * grid[2]
        length, device = like.shape[1], like.device
        layout = tarp_layout(length, frames, self.window_frames, device)
        # TARP RoPE: video frame i at i, audio latent j at j * t_v / t_a.
        rope_v = self.rope.table(
            ("tarp_video", frames, hw),
            lambda: torch.arange(frames, dtype=torch.float64).repeat_interleave(hw)[:, None],
            device,
            like.dtype,
        )
        rope_a = self.rope.table(
            ("tarp_audio", length, frames),
            lambda: (torch.arange(length, dtype=torch.float64) * frames / length)[:, None],
            device,
            like.dtype,
        )
        valid = None if audio_mask is None else audio_mask[:, layout.windows]
        n_a, n_v = self.context_tokens
        mask_v = _route_mask(routes.video_reads_audio, valid, frames, layout.window_size, n_a)
        mask_a = _route_mask(routes.audio_reads_video, None, frames, hw, n_v)
        return TARPContext(layout, grid, rope_v, rope_a, mask_v, mask_a)

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
        ctx = self.context(vs.grid, as_.key_mask, routes, as_.x)

        def audio_to_video(i: int, vs: VideoState, as_: AudioState) -> tuple[VideoState, AudioState]:
            audio = as_.x.detach() if self.immutable_audio and i >= self.num_dual else as_.x
            clip = vs.clip
            update = self.video_from_audio[i](clip, detached_where(audio, audio_clean), ctx)
            return vs.with_clip(clip + update), as_

        def video_to_audio(j: int, vs: VideoState, as_: AudioState) -> AudioState:
            update = self.audio_from_video[j](as_.x, detached_where(vs.clip, video_clean), ctx)
            return replace(as_, x=as_.x + update)

        return interleave(video, audio, vs, as_, self.pairing, audio_to_video, video_to_audio)
