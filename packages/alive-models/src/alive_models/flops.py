"""Forward FLOPs of the joint model, for throughput and MFU logging.

Counts what dominates and what torch's FlopCounterMode counts: every matrix multiply (2 FLOPs per
multiply-add) and attention's two batched products (4 * Lq * Lk * width). Norms, activations and
RoPE are elementwise and left out. A training step costs about 3x the forward (4x with full
activation checkpointing, which recomputes the forward).
"""

from __future__ import annotations

from dataclasses import dataclass

from alive_models.config import JointConfig
from alive_models.joint import JointInputs


@dataclass(frozen=True)
class SequenceLengths:
    """Token counts of one sample: video latent grid, audio latents, text and reference lengths.

    ``video_latent_shape`` None = audio-only forward; ``audio_length`` None = video-only forward.
    """

    video_latent_shape: tuple[int, int, int] | None  # (T, H, W) of the latent, before patchify
    audio_length: int | None
    text_lengths: tuple[int, ...]  # one per video caption encoder
    caption_length: int  # audio caption tokens
    num_references: int = 0

    @classmethod
    def from_inputs(cls, inputs: JointInputs) -> SequenceLengths:
        return cls(
            video_latent_shape=None if inputs.video is None else tuple(inputs.video.shape[2:]),
            audio_length=None if inputs.audio is None else inputs.audio.shape[-1],
            text_lengths=tuple(t.shape[1] for t in inputs.video_texts or ()),
            caption_length=0 if inputs.audio_caption is None else inputs.audio_caption.shape[1],
            num_references=0 if inputs.references is None else inputs.references.shape[1],
        )


def _linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def _attention(lq: int, lk: int, width: int) -> int:
    return 4 * lq * lk * width


def _timestep(dim: int, freq: int) -> int:
    return _linear(1, freq, dim) + _linear(1, dim, dim)


def _video_flops(config: JointConfig, lengths: SequenceLengths) -> tuple[int, int]:
    """(FLOPs of the video tower, clip tokens)."""
    v = config.video
    pt, ph, pw = v.patch_size
    t, h, w = lengths.video_latent_shape
    clip = (t // pt) * (h // ph) * (w // pw)
    vid = clip + lengths.num_references * (h // ph) * (w // pw)
    seq = sum(lengths.text_lengths) + vid
    dv, mlp, patch_volume = v.hidden_dim, int(v.hidden_dim * v.mlp_ratio), pt * ph * pw
    total = _linear(vid, v.in_channels * patch_volume, dv)
    total += sum(_linear(n, d, dv) for n, d in zip(lengths.text_lengths, v.text_dims, strict=True))
    total += _timestep(dv, v.timestep_freq_dim)
    dual = 2 * _linear(1, dv, 6 * dv) + _linear(seq, dv, 3 * dv) + _attention(seq, seq, dv)
    dual += _linear(seq, dv, dv) + _linear(seq, dv, mlp) + _linear(seq, mlp, dv)
    single = _linear(1, dv, 3 * dv) + _linear(seq, dv, 3 * dv + mlp) + _attention(seq, seq, dv)
    single += _linear(seq, dv + mlp, dv)
    total += v.num_dual_blocks * dual + v.num_single_blocks * single
    total += _linear(1, dv, 2 * dv) + _linear(clip, dv, v.out_channels * patch_volume)
    return total, clip


def _audio_flops(config: JointConfig, lengths: SequenceLengths) -> int:
    a = config.audio
    la, lc, da, mlp = (
        lengths.audio_length,
        lengths.caption_length,
        a.hidden_dim,
        int(a.hidden_dim * a.mlp_ratio),
    )
    total = _linear(la, a.in_channels + a.transcript_dim, da) + _timestep(da, a.timestep_freq_dim)
    block = _linear(1, da, 6 * da) + _linear(la, da, 3 * da) + _attention(la, la, da) + _linear(la, da, da)
    block += 2 * _linear(la, da, da) + _linear(lc, a.caption_dim, 2 * da) + _attention(la, lc, da)
    block += _linear(la, da, mlp) + _linear(la, mlp, da)
    return total + a.num_blocks * block + _linear(1, da, 2 * da) + _linear(la, da, a.out_channels)


def fusion_flops(config: JointConfig, clip: int, audio_length: int) -> int:
    """TA-CrossAttn of one sample. Paid whatever ``mutual`` says: every exchange module runs for every
    batch (FSDP needs the same modules on every rank) and "indep" samples are gated per sample."""
    v, a, f = config.video, config.audio, config.fusion
    dv, da, df, la = v.hidden_dim, a.hidden_dim, f.num_heads * f.head_dim, audio_length
    total = _linear(1, dv, 3 * dv) + _linear(1, da, 3 * da)
    v_from_a = (
        _linear(clip, dv, df) + _linear(la, da, 2 * df) + _attention(clip, la, df) + _linear(clip, df, dv)
    )
    a_from_v = (
        _linear(la, da, df) + _linear(clip, dv, 2 * df) + _attention(la, clip, df) + _linear(la, df, da)
    )
    return total + v.num_blocks * v_from_a + v.num_dual_blocks * a_from_v


def forward_flops(config: JointConfig, lengths: SequenceLengths, batch: int = 1) -> int:
    """FLOPs of one forward of ``batch`` samples (the same for "mutual" and "indep" samples)."""
    total, clip = _video_flops(config, lengths) if lengths.video_latent_shape is not None else (0, 0)
    if lengths.audio_length is not None:
        total += _audio_flops(config, lengths)
        if lengths.video_latent_shape is not None:
            total += fusion_flops(config, clip, lengths.audio_length)
    return batch * total
