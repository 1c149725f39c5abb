"""AudioDiT: blocks of AdaLayerNormZero + self-attention + caption cross-attention + MLP (seed 000 §2.1).

The speech transcript (the ``<W>`` text) is tokenised, embedded and aligned with the noisy audio
latents: token i sits beside latent i, the rest of the sequence gets a learned filler token, and the
two are joined channel-wise before the input projection (the F5-TTS layout, our reading of "aligned and
concatenated"). The sequence length therefore stays L_a, so audio latent j keeps position j on the
shared timeline (UniTemp-RoPE eq. 1). The global caption (Qwen hidden states) is attended by every
block's cross-attention.

Voice cloning (seed 004 §4.4, ``AudioDiTConfig.reference_audio``): reference-audio latents (from
the same audio codec) are projected once to the tower's width, and every block's cross-attention
gets a supplementary key/value projection for them. The audio queries attend the caption and the
reference separately and the two attention outputs are summed before the shared output projection
(the decoupled cross-attention of IP-Adapter). The reference keys carry no RoPE: a voice is a style,
not a moment of the clip. A sample without reference (mask all False) gets exactly zero from the
branch, so one batch mixes samples with and without reference audio.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from alive_models.config import AudioDiTConfig
from alive_models.geometry import unitemp_audio_positions
from alive_models.layers.attention import Attention, KeyValue, attention
from alive_models.layers.embeddings import MLP, TimestepEmbedding
from alive_models.layers.final import FinalLayer
from alive_models.layers.norms import Modulation, layer_norm, modulate
from alive_models.layers.rope import Rope, RotaryEmbedding


@dataclass
class AudioState:
    """Activations between audio blocks."""

    x: Tensor  # [B, L_a, D]
    temb: Tensor  # [B, D]
    caption: Tensor  # [B, Lc, caption_dim]
    caption_mask: Tensor | None  # [B, Lc]
    rope: Rope
    key_mask: Tensor | None = None  # [B, L_a], False on padded latents (clips of different lengths)
    reference: Tensor | None = None  # [B, L_ref, D] projected reference-audio latents (voice cloning)
    reference_mask: Tensor | None = None  # [B, L_ref], False where a sample has no reference there


class AudioBlock(nn.Module):
    """AdaLayerNormZero -> self-attention (1D RoPE) -> caption (+ reference-audio) cross-attention -> MLP."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        mlp_ratio: float,
        caption_dim: int,
        reference_audio: bool = False,
    ) -> None:
        super().__init__()
        self.mod = Modulation(dim, dim, 6)
        self.self_attn = Attention(dim, heads, head_dim)
        self.cross_norm = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = Attention(dim, heads, head_dim, context_dim=caption_dim)
        # The supplementary key/value projections (values start at zero: a trained tower is unchanged).
        self.reference_kv = KeyValue(dim, heads, head_dim, zero_value=True) if reference_audio else None
        self.mlp = MLP(dim, mlp_ratio)

    def _cross(self, x: Tensor, state: AudioState) -> Tensor:
        if self.reference_kv is None:
            return self.cross_attn(x, state.caption, key_mask=state.caption_mask)
        q = self.cross_attn.project_q(x)
        out = attention(q, *self.cross_attn.project_kv(state.caption), state.caption_mask)
        # Samples whose reference mask is all False get zeros from attention(): no branch for them.
        out = out + attention(q, *self.reference_kv(state.reference), state.reference_mask)
        return self.cross_attn.to_out(out.flatten(-2))

    def forward(self, state: AudioState) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.mod(state.temb)
        x = state.x
        h = modulate(layer_norm(x), shift1, scale1)
        x = x + gate1[:, None] * self.self_attn(h, key_mask=state.key_mask, rope=state.rope)
        x = x + self._cross(self.cross_norm(x), state)
        return x + gate2[:, None] * self.mlp(modulate(layer_norm(x), shift2, scale2))


class AudioDiT(nn.Module):
    """The audio tower. Inputs are audio latents [B, C, L_a]; output is their velocity."""

    def __init__(self, config: AudioDiTConfig) -> None:
        super().__init__()
        self.config = c = config
        dim = c.hidden_dim
        # Row ``vocab_size`` is the filler token for latents beyond the transcript.
        self.transcript_embed = nn.Embedding(c.transcript_vocab_size + 1, c.transcript_dim)
        self.in_proj = nn.Linear(c.in_channels + c.transcript_dim, dim)
        self.caption_norm = nn.LayerNorm(c.caption_dim, eps=1e-6)
        self.time_embed = TimestepEmbedding(c.timestep_freq_dim, dim)
        self.rope = RotaryEmbedding((c.head_dim,), c.rope_theta)
        # Reference-audio latents (same codec as the generated audio) -> the tower's width.
        self.reference_proj = nn.Linear(c.in_channels, dim) if c.reference_audio else None
        self.blocks = nn.ModuleList(
            AudioBlock(dim, c.num_heads, c.head_dim, c.mlp_ratio, c.caption_dim, c.reference_audio)
            for _ in range(c.num_blocks)
        )
        self.final = FinalLayer(dim, c.out_channels)

    def align_transcript(self, ids: Tensor, mask: Tensor | None, length: int) -> Tensor:
        """[B, Lw] token ids (+ padding mask) -> [B, length] ids with the filler token after the text."""
        filler = self.config.transcript_vocab_size
        if mask is not None:
            ids = ids.masked_fill(~mask.bool(), filler)
        if ids.shape[1] > length:
            # Reads values (a host sync), but only for an id tensor longer than the audio: padding
            # beyond the clip is dropped, real tokens beyond it are an error.
            if (ids[:, length:] != filler).any():
                raise ValueError(
                    f"transcript has more tokens than the {length} audio latents it must align with"
                )
            ids = ids[:, :length]
        return torch.nn.functional.pad(ids, (0, length - ids.shape[1]), value=filler)

    def embed(
        self,
        latent: Tensor,
        t: Tensor,
        caption: Tensor,
        caption_mask: Tensor | None = None,
        transcript_ids: Tensor | None = None,
        transcript_mask: Tensor | None = None,
        latent_mask: Tensor | None = None,
        reference_audio: Tensor | None = None,
        reference_audio_mask: Tensor | None = None,
    ) -> AudioState:
        """latent: [B, C, L_a]; t: [B]; caption: [B, Lc, caption_dim]; transcript_ids: [B, Lw] or None;
        latent_mask: [B, L_a] bool, False on padding (a batch of clips of different lengths);
        reference_audio: [B, C, L_ref] reference-audio latents with reference_audio_mask [B, L_ref]
        (False on padding; all False = no reference for that sample), for a tower built with
        ``reference_audio``. Such a tower runs its reference branch for every batch (FSDP: the same
        modules on every rank), on one masked-out key when no reference is given."""
        c = self.config
        if latent.shape[1] != c.in_channels:
            raise ValueError(f"audio latent has {latent.shape[1]} channels, expected {c.in_channels}")
        b, _, length = latent.shape
        if latent_mask is not None and latent_mask.shape != (b, length):
            raise ValueError(
                f"audio mask {tuple(latent_mask.shape)} does not match audio latents [{b}, {length}]"
            )
        if transcript_ids is None:
            transcript_ids = torch.empty(b, 0, dtype=torch.long, device=latent.device)
        ids = self.align_transcript(transcript_ids, transcript_mask, length)
        x = self.in_proj(torch.cat([latent.transpose(1, 2), self.transcript_embed(ids)], dim=-1))
        rope = self.rope.table(
            ("audio", length), lambda: unitemp_audio_positions(length)[:, None], x.device, x.dtype
        )
        reference, reference_mask = self._reference(reference_audio, reference_audio_mask, b, latent)
        return AudioState(
            x,
            self.time_embed(t),
            self.caption_norm(caption),
            None if caption_mask is None else caption_mask.bool(),
            rope,
            None if latent_mask is None else latent_mask.bool(),
            reference,
            reference_mask,
        )

    def _reference(
        self, latents: Tensor | None, mask: Tensor | None, batch: int, like: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        """Projected reference tokens [B, L_ref, D] and their mask [B, L_ref] (None without the branch)."""
        c = self.config
        if self.reference_proj is None:
            if latents is not None:
                raise ValueError(
                    "reference_audio given, but this AudioDiT has no reference branch "
                    "(AudioDiTConfig.reference_audio=False)"
                )
            return None, None
        if latents is None:  # one key, masked out: the branch runs and adds exactly zero
            latents = like.new_zeros(batch, c.in_channels, 1)
            mask = torch.zeros(batch, 1, dtype=torch.bool, device=like.device)
        if latents.dim() != 3 or latents.shape[:2] != (batch, c.in_channels):
            raise ValueError(
                f"reference_audio must be [B, C, L_ref] = [{batch}, {c.in_channels}, L_ref], "
                f"got {tuple(latents.shape)}"
            )
        if mask is not None and mask.shape != (batch, latents.shape[-1]):
            raise ValueError(
                f"reference_audio_mask {tuple(mask.shape)} does not match reference_audio "
                f"[{batch}, {latents.shape[-1]}]"
            )
        return self.reference_proj(latents.transpose(1, 2)), None if mask is None else mask.bool()

    def run_block(self, index: int, state: AudioState) -> AudioState:
        return replace(state, x=self.blocks[index](state))

    def run_blocks(self, state: AudioState, start: int = 0) -> AudioState:
        """Blocks ``start`` .. end."""
        for i in range(start, len(self.blocks)):
            state = self.run_block(i, state)
        return state

    def head(self, state: AudioState) -> Tensor:
        return self.final(state.x, state.temb).transpose(1, 2)

    def forward(self, latent: Tensor, t: Tensor, caption: Tensor, **kwargs) -> Tensor:
        """The tower alone (audio TTS pre-training, T2A)."""
        return self.head(self.run_blocks(self.embed(latent, t, caption, **kwargs)))
