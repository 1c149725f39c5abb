"""Forward FLOPs of the joint model, for throughput and MFU logging.

Counts what dominates and what torch's FlopCounterMode counts: every matrix multiply (2 FLOPs per
multiply-add) and attention's two batched products (4 * Lq * Lk * width). Norms, activations and
RoPE are elementwise and left out. A training step costs about 3x the forward (4x with full
activation checkpointing, which recomputes the forward).

Every fusion kind is counted as it runs: TA-CrossAttn's full cross-attention, CCL's windowed
attention (linear in the clip length) with its Learnable Context Tokens, UniTalking's joint
attention over [clip; audio] (quadratic in it). Routes and ``mutual`` change no figure: every module
runs for every sample (FSDP), masked or gated per sample.
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
    reference_audio_length: int = 0  # reference-audio latents (voice cloning); 0 = none given

    @classmethod
    def from_inputs(cls, inputs: JointInputs) -> SequenceLengths:
        return cls(
            video_latent_shape=None if inputs.video is None else tuple(inputs.video.shape[2:]),
            audio_length=None if inputs.audio is None else inputs.audio.shape[-1],
            text_lengths=tuple(t.shape[1] for t in inputs.video_texts or ()),
            caption_length=0 if inputs.audio_caption is None else inputs.audio_caption.shape[1],
            num_references=0 if inputs.references is None else inputs.references.shape[1],
            reference_audio_length=0 if inputs.reference_audio is None else inputs.reference_audio.shape[-1],
        )


def _linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def _attention(lq: int, lk: int, width: int) -> int:
    return 4 * lq * lk * width


def _timestep(dim: int, freq: int) -> int:
    return _linear(1, freq, dim) + _linear(1, dim, dim)


def _token_grid(config: JointConfig, lengths: SequenceLengths) -> tuple[int, int]:
    """(token frames, tokens per frame) of the clip after patchify."""
    pt, ph, pw = config.video.patch_size
    t, h, w = lengths.video_latent_shape
    return t // pt, (h // ph) * (w // pw)


def _video_flops(config: JointConfig, lengths: SequenceLengths) -> int:
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
    return total + _linear(1, dv, 2 * dv) + _linear(clip, dv, v.out_channels * patch_volume)


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
    total += a.num_blocks * block + _linear(1, da, 2 * da) + _linear(la, da, a.out_channels)
    if a.reference_audio:  # the branch runs on one masked key when no reference is given
        ref = max(lengths.reference_audio_length, 1)
        total += _linear(ref, a.in_channels, da)
        total += a.num_blocks * (_linear(ref, da, 2 * da) + _attention(la, ref, da))
    return total


def fusion_flops(config: JointConfig, lengths: SequenceLengths) -> tuple[int, int]:
    """(FLOPs per sample, FLOPs per forward whatever the batch) of the fusion. Paid whatever the
    routes say: every exchange module runs for every batch (FSDP needs the same modules on every
    rank); routes gate or mask per sample. The per-forward part is CCL's context-token projections."""
    v, a, f = config.video, config.audio, config.fusion
    dv, da, df, la = v.hidden_dim, a.hidden_dim, f.num_heads * f.head_dim, lengths.audio_length
    frames, frame_tokens = _token_grid(config, lengths)
    clip = frames * frame_tokens
    if f.kind == "ta_cross_attn":
        v_from_a = (
            _linear(clip, dv, df) + _linear(la, da, 2 * df) + _attention(clip, la, df) + _linear(clip, df, dv)
        )
        a_from_v = (
            _linear(la, da, df) + _linear(clip, dv, 2 * df) + _attention(la, clip, df) + _linear(la, df, da)
        )
        total = _linear(1, dv, 3 * dv) + _linear(1, da, 3 * da)
        return total + v.num_blocks * v_from_a + v.num_dual_blocks * a_from_v, 0
    if f.kind == "ccl":
        window = min(f.window_frames * max(la // frames, 1), la)
        slots = -(-la // frames)  # audio query slots per frame (video -> audio)
        na, nv = f.audio_context_tokens, f.video_context_tokens
        v_from_a = _linear(clip, dv, df) + _linear(la, da, 2 * df) + _attention(clip, window + na, df)
        v_from_a += _linear(clip, df, dv)
        a_from_v = _linear(la, da, df) + _linear(clip, dv, 2 * df) + _linear(la, df, da)
        a_from_v += _attention(frames * slots, frame_tokens + nv, df)
        context = v.num_blocks * _linear(na, da, 2 * df) + a.num_blocks * _linear(nv, dv, 2 * df)
        return v.num_blocks * v_from_a + a.num_blocks * a_from_v, context
    if f.kind == "unitalking":
        joint = clip + la
        video_side = _linear(clip, dv, 3 * df) + _linear(la, da, 2 * df) + _attention(clip, joint, df)
        video_side += _linear(clip, df, dv)
        audio_side = _linear(la, da, df) + _attention(la, joint, df) + _linear(la, df, da)
        return v.num_blocks * video_side + v.num_dual_blocks * audio_side, 0
    raise ValueError(f"no FLOPs model for fusion kind {f.kind!r}")


def forward_flops(config: JointConfig, lengths: SequenceLengths, batch: int = 1) -> int:
    """FLOPs of one forward of ``batch`` samples (the same whatever the routes or ``mutual`` say)."""
    per_sample = per_forward = 0
    if lengths.video_latent_shape is not None:
        per_sample += _video_flops(config, lengths)
    if lengths.audio_length is not None:
        per_sample += _audio_flops(config, lengths)
        if lengths.video_latent_shape is not None:
            sample, forward = fusion_flops(config, lengths)
            per_sample, per_forward = per_sample + sample, forward
    return batch * per_sample + per_forward
