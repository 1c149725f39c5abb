"""VideoDiT: an MMDiT with M dual-stream blocks then N single-stream blocks (seed 000 §2, Table 1).

Dual-stream blocks keep separate weights for caption and video tokens and attend jointly; single-stream
blocks run one set of weights over the concatenated sequence. Video tokens carry 3D RoPE over (t, h, w);
caption tokens sit at the origin (identity rotation). Reference images (seed 000 §5.1) are extra video
tokens prepended to the clip with temporal index -phi * k (eq. 8).

The tower runs on its own (``forward``) or step by step (``embed`` / ``run_block`` / ``head``) so that
a fusion can interleave it with the audio tower without the tower knowing about audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alive_models.config import VideoDiTConfig
from alive_models.layers.attention import Attention, attention
from alive_models.layers.embeddings import MLP, TimestepEmbedding, patchify, unpatchify, video_grid_positions
from alive_models.layers.final import FinalLayer
from alive_models.layers.norms import Modulation, RMSNorm, layer_norm, modulate
from alive_models.layers.rope import Rope, RotaryEmbedding, apply_rotary_qk


@dataclass
class VideoState:
    """Activations between video blocks.

    During the dual-stream blocks ``txt`` holds the caption tokens and ``x`` the video tokens
    (``n_ref`` reference tokens, then the clip). The first single-stream block merges the two once:
    ``txt`` becomes None and ``x`` holds [caption; references; clip], the order of the key mask and
    the RoPE table, so no later block concatenates or splits.
    """

    txt: Tensor | None  # [B, Lt, D] until the single-stream blocks
    x: Tensor  # [B, n_ref + Lv, D], then [B, Lt + n_ref + Lv, D]
    temb: Tensor  # [B, D]
    key_mask: Tensor | None  # [B, Lt + n_ref + Lv], False on caption padding
    rope: Rope  # cos, sin over [txt; refs; clip]
    grid: tuple[int, int, int]  # clip token grid (T', H', W')
    text_len: int
    n_ref: int

    @property
    def clip_start(self) -> int:
        return self.n_ref if self.txt is not None else self.text_len + self.n_ref

    @property
    def clip(self) -> Tensor:
        """The clip's own tokens (the ones on the shared timeline)."""
        return self.x[:, self.clip_start :]

    def with_clip(self, clip: Tensor) -> VideoState:
        """The state with new clip tokens; no copy of the rest when nothing precedes the clip."""
        start = self.clip_start
        x = clip if start == 0 else torch.cat([self.x[:, :start], clip], dim=1)
        return replace(self, x=x)

    def merged(self) -> VideoState:
        """Caption and video tokens in one sequence, for the single-stream blocks."""
        if self.txt is None:
            return self
        return replace(self, txt=None, x=torch.cat([self.txt, self.x], dim=1))


class DualStreamBlock(nn.Module):
    """MMDiT block: per-stream AdaLN-Zero, projections and MLP; one joint attention."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.vid_mod = Modulation(dim, dim, 6)
        self.txt_mod = Modulation(dim, dim, 6)
        self.vid_attn = Attention(dim, heads, head_dim)
        self.txt_attn = Attention(dim, heads, head_dim)
        self.vid_mlp = MLP(dim, mlp_ratio)
        self.txt_mlp = MLP(dim, mlp_ratio)

    def forward(
        self, txt: Tensor, vid: Tensor, temb: Tensor, key_mask: Tensor | None, rope: Rope
    ) -> tuple[Tensor, Tensor]:
        v_shift1, v_scale1, v_gate1, v_shift2, v_scale2, v_gate2 = self.vid_mod(temb)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(temb)
        xt = modulate(layer_norm(txt), t_shift1, t_scale1)
        xv = modulate(layer_norm(vid), v_shift1, v_scale1)

        tk, tv = self.txt_attn.project_kv(xt)
        vk, vv = self.vid_attn.project_kv(xv)
        q = torch.cat([self.txt_attn.project_q(xt), self.vid_attn.project_q(xv)], dim=1)
        k, v = torch.cat([tk, vk], dim=1), torch.cat([tv, vv], dim=1)
        q, k = apply_rotary_qk(q, k, *rope)
        out = attention(q, k, v, key_mask).flatten(-2)
        out_t, out_v = out.split([txt.shape[1], vid.shape[1]], dim=1)

        txt = txt + t_gate1[:, None] * self.txt_attn.to_out(out_t)
        vid = vid + v_gate1[:, None] * self.vid_attn.to_out(out_v)
        txt = txt + t_gate2[:, None] * self.txt_mlp(modulate(layer_norm(txt), t_shift2, t_scale2))
        vid = vid + v_gate2[:, None] * self.vid_mlp(modulate(layer_norm(vid), v_shift2, v_scale2))
        return txt, vid


class SingleStreamBlock(nn.Module):
    """Flux-style single-stream block: one fused projection to q, k, v and MLP; attention, MLP in parallel."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.inner = heads * head_dim
        self.mlp_hidden = int(dim * mlp_ratio)
        self.mod = Modulation(dim, dim, 3)
        self.linear1 = nn.Linear(dim, 3 * self.inner + self.mlp_hidden)
        self.norm_q = RMSNorm(head_dim)
        self.norm_k = RMSNorm(head_dim)
        self.linear2 = nn.Linear(self.inner + self.mlp_hidden, dim)

    def forward(self, x: Tensor, temb: Tensor, key_mask: Tensor | None, rope: Rope) -> Tensor:
        """x: [B, Lt + Lv, D], the caption and video tokens in one sequence."""
        shift, scale, gate = self.mod(temb)
        h = self.linear1(modulate(layer_norm(x), shift, scale))
        q, k, v, mlp = h.split([self.inner, self.inner, self.inner, self.mlp_hidden], dim=-1)
        heads = (self.heads, self.head_dim)
        q, k = self.norm_q(q.unflatten(-1, heads)), self.norm_k(k.unflatten(-1, heads))
        q, k = apply_rotary_qk(q, k, *rope)
        out = attention(q, k, v.unflatten(-1, heads), key_mask).flatten(-2)
        return x + gate[:, None] * self.linear2(torch.cat([out, F.gelu(mlp, approximate="tanh")], dim=-1))


class VideoDiT(nn.Module):
    """The video tower. Inputs are VAE latents [B, C, T, H, W]; output is the velocity of the noisy latent."""

    def __init__(self, config: VideoDiTConfig) -> None:
        super().__init__()
        self.config = c = config
        dim = c.hidden_dim
        self.patch_volume = math.prod(c.patch_size)
        self.patch_embed = nn.Linear(c.in_channels * self.patch_volume, dim)
        # One projection per caption encoder (T5 and Qwen); their tokens are concatenated.
        self.text_proj = nn.ModuleList(nn.Sequential(RMSNorm(d), nn.Linear(d, dim)) for d in c.text_dims)
        self.time_embed = TimestepEmbedding(c.timestep_freq_dim, dim)
        self.rope = RotaryEmbedding(c.rope_axes_dims, c.rope_theta)
        args = (dim, c.num_heads, c.head_dim, c.mlp_ratio)
        self.dual_blocks = nn.ModuleList(DualStreamBlock(*args) for _ in range(c.num_dual_blocks))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(*args) for _ in range(c.num_single_blocks))
        self.final = FinalLayer(dim, c.out_channels * self.patch_volume)

    def _input(self, latent: Tensor, condition: Tensor | None) -> Tensor:
        """Stack the noisy latent with the I2V condition (latent + mask), zeros when there is none."""
        c = self.config
        extra = c.in_channels - c.latent_channels
        if latent.shape[1] != c.latent_channels:
            raise ValueError(f"video latent has {latent.shape[1]} channels, expected {c.latent_channels}")
        if extra == 0:
            if condition is not None:
                raise ValueError("this VideoDiT has no condition channels (in_channels == latent_channels)")
            return latent
        if condition is None:
            condition = latent.new_zeros(latent.shape[0], extra, *latent.shape[2:])
        elif condition.shape[1] != extra or condition.shape[2:] != latent.shape[2:]:
            raise ValueError(f"condition {tuple(condition.shape)} does not fit latent {tuple(latent.shape)}")
        return torch.cat([latent, condition], dim=1)

    def _reference_input(self, refs: Tensor) -> Tensor:
        """[B, K, C, H, W] reference latents -> [B, in_channels, K, H, W] in the clean-condition slot."""
        c = self.config
        if c.patch_size[0] != 1:
            raise ValueError("reference images need a temporal patch size of 1")
        refs = refs.transpose(1, 2)
        if c.in_channels == c.latent_channels:
            return refs
        mask = refs.new_ones(refs.shape[0], c.mask_channels, *refs.shape[2:])
        return torch.cat([torch.zeros_like(refs), refs, mask], dim=1)

    def embed(
        self,
        latent: Tensor,
        t: Tensor,
        texts: list[Tensor],
        text_masks: list[Tensor | None] | None = None,
        condition: Tensor | None = None,
        references: Tensor | None = None,
    ) -> VideoState:
        """Tokens, timestep embedding, masks and RoPE for one forward.

        latent: [B, latent_channels, T, H, W] noisy latent; t: [B] flow time in [0, 1];
        texts: one [B, L_i, text_dims[i]] tensor per caption encoder, text_masks their [B, L_i] padding
        masks; condition: [B, in_channels - latent_channels, T, H, W] (I2V); references: [B, K, C, H, W].
        """
        c = self.config
        if len(texts) != len(c.text_dims):
            raise ValueError(f"expected {len(c.text_dims)} caption encodings, got {len(texts)}")
        b = latent.shape[0]
        x = self._input(latent, condition)
        grid = tuple(s // p for s, p in zip(x.shape[2:], c.patch_size, strict=True))
        vid = self.patch_embed(patchify(x, c.patch_size))
        num_refs = 0
        if references is not None:
            if references.shape[-2:] != latent.shape[-2:]:
                raise ValueError(
                    f"references {tuple(references.shape)} and latent {tuple(latent.shape)} differ in H, W"
                )
            ref = self._reference_input(references)
            num_refs = ref.shape[2]
            vid = torch.cat([self.patch_embed(patchify(ref, c.patch_size)), vid], dim=1)
        n_ref = num_refs * grid[1] * grid[2]

        txt = torch.cat([proj(e) for proj, e in zip(self.text_proj, texts, strict=True)], dim=1)
        masks = text_masks or [None] * len(texts)
        key_mask = None
        if any(m is not None for m in masks):
            parts = [
                torch.ones(e.shape[:2], dtype=torch.bool, device=e.device) if m is None else m.bool()
                for e, m in zip(texts, masks, strict=True)
            ]
            parts.append(torch.ones(b, vid.shape[1], dtype=torch.bool, device=vid.device))
            key_mask = torch.cat(parts, dim=1)

        text_len = txt.shape[1]
        rope = self.rope.table(
            ("video", text_len, num_refs, grid),
            lambda: self._positions(text_len, num_refs, grid),
            vid.device,
            vid.dtype,
        )
        return VideoState(txt, vid, self.time_embed(t), key_mask, rope, grid, text_len, n_ref)

    def _positions(self, text_len: int, num_refs: int, grid: tuple[int, int, int]) -> Tensor:
        """(t, h, w) of [caption; references; clip]: captions at the origin, reference k at t = -phi*k."""
        ref_grid = (1, grid[1], grid[2])
        offsets = [-self.config.ref_temporal_offset * k for k in range(1, num_refs + 1)]
        refs = [video_grid_positions(ref_grid, t_offset=o) for o in offsets]
        return torch.cat([torch.zeros(text_len, 3, dtype=torch.float64), *refs, video_grid_positions(grid)])

    def run_block(self, index: int, state: VideoState) -> VideoState:
        """Video block ``index`` in execution order: the dual-stream blocks, then the single-stream ones."""
        m = len(self.dual_blocks)
        if index < m:
            txt, x = self.dual_blocks[index](state.txt, state.x, state.temb, state.key_mask, state.rope)
            return replace(state, txt=txt, x=x)
        state = state.merged()
        return replace(
            state, x=self.single_blocks[index - m](state.x, state.temb, state.key_mask, state.rope)
        )

    def run_blocks(self, state: VideoState) -> VideoState:
        for i in range(self.config.num_blocks):
            state = self.run_block(i, state)
        return state

    def head(self, state: VideoState) -> Tensor:
        c = self.config
        out = self.final(state.clip, state.temb)
        return unpatchify(out, state.grid, c.patch_size, c.out_channels)

    def forward(self, latent: Tensor, t: Tensor, texts: list[Tensor], **kwargs) -> Tensor:
        """The tower alone (no audio): used for video-only work and as the 'indep' reference in tests."""
        return self.head(self.run_blocks(self.embed(latent, t, texts, **kwargs)))
