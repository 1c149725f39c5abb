"""Model configuration: one dataclass per tower, one for the fusion seam, one for the joint model.

Presets live at the bottom. ``alive-14b`` is seed 000 Table 1 exactly; ``tiny`` keeps every structural
feature (dual + single video blocks, all fusion directions, references, I2V) at a size that runs a CPU
training step in well under a second.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from alive_models.geometry import Timeline


@dataclass(frozen=True)
class VideoDiTConfig:
    """MMDiT video tower: ``num_dual_blocks`` (M) dual-stream then ``num_single_blocks`` (N) single-stream."""

    in_channels: int = 36  # 16 noisy latent + 16 condition latent + 4 mask (I2V)
    out_channels: int = 16
    latent_channels: int = 16  # channels of one VAE latent (noisy, condition and reference slots)
    mask_channels: int = 4  # the I2V frame mask folded over the codec's temporal stride
    num_dual_blocks: int = 16
    num_single_blocks: int = 40
    num_heads: int = 24
    head_dim: int = 128
    mlp_ratio: float = 4.0
    patch_size: tuple[int, int, int] = (1, 2, 2)
    # Feature widths of the caption encoders (Flan-T5-XXL, Qwen2.5-32B); each gets its own projection.
    text_dims: tuple[int, ...] = (4096, 5120)
    # RoPE split of head_dim over (t, h, w); must sum to head_dim, each even.
    rope_axes_dims: tuple[int, int, int] = (32, 48, 48)
    rope_theta: float = 10_000.0
    # Ref-Temporal PE offset (seed 000 eq. 8): reference k sits at temporal index -phi * k.
    ref_temporal_offset: float = 10.0
    timestep_freq_dim: int = 256

    @property
    def hidden_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def num_blocks(self) -> int:
        return self.num_dual_blocks + self.num_single_blocks

    def __post_init__(self) -> None:
        if sum(self.rope_axes_dims) != self.head_dim or any(d % 2 for d in self.rope_axes_dims):
            raise ValueError(
                f"rope_axes_dims {self.rope_axes_dims} must be even and sum to head_dim {self.head_dim}"
            )
        cond = 2 * self.latent_channels + self.mask_channels
        if self.in_channels not in (self.latent_channels, cond):
            raise ValueError(
                f"in_channels={self.in_channels}: expected {self.latent_channels} (T2V only) or {cond} "
                "(noisy + condition latent + mask)"
            )


@dataclass(frozen=True)
class AudioDiTConfig:
    """Audio tower: blocks of AdaLayerNormZero + self-attention + caption cross-attention + MLP."""

    in_channels: int = 32
    out_channels: int = 32
    num_blocks: int = 32
    num_heads: int = 24
    head_dim: int = 64
    mlp_ratio: float = 4.0
    caption_dim: int = 5120  # Qwen2.5-32B hidden states, attended directly by every block
    # Speech transcript (<W> text) tokens, embedded and joined channel-wise with the noisy latents.
    transcript_vocab_size: int = 151_680
    transcript_dim: int = 512
    rope_theta: float = 10_000.0
    timestep_freq_dim: int = 256
    # Voice cloning (seed 004 §4.4): a supplementary key/value branch in every block's caption
    # cross-attention attends reference-audio latents (the audio codec's, ``in_channels`` wide).
    # Off: the tower has no reference parameters at all.
    reference_audio: bool = False

    @property
    def hidden_dim(self) -> int:
        return self.num_heads * self.head_dim


FusionKind = Literal["ta_cross_attn", "ccl", "unitalking"]
PairingRule = Literal["dual_stream", "relative_depth"]


@dataclass(frozen=True)
class FusionConfig:
    """How the towers exchange information. ``kind`` selects the implementation (the one seam).

    ``pairing``: which audio block must have run before the exchange after each video block.
    - ``"dual_stream"`` (default, our reading of seed 000 §2.1): the whole audio tower runs alongside
      the dual-stream video blocks (Na / M audio blocks per dual block, bidirectional exchange), and
      every single-stream block then reads the finished audio states (audio -> video only).
    - ``"relative_depth"``: after video block i the audio tower has reached the same relative depth,
      ceil((i+1) Na / (M+N)) blocks; the audio tower is still running during the single-stream blocks.
    - a tuple: the audio block index for each video block, non-decreasing.

    ``immutable_audio``: the single-stream exchanges read the audio states detached, so the video
    loss's gradient never reaches the audio tower through them (the seed's "strong, immutable
    condition" read literally). The dual-stream exchanges still train both ways.

    Every kind attends at ``num_heads`` x ``head_dim``. CCL (seed 002 §4): ``audio_context_tokens``
    (n_a) Learnable Context Tokens in each audio -> video module, ``video_context_tokens`` (n_v) in
    each video -> audio module; ``window_frames`` sets the audio window of a video frame to that
    many frames' worth of audio latents (s = 3c). UniTalking (seed 004 §4.4): its joint attention's
    anisotropic 3D RoPE splits ``head_dim`` over (t, h, w) like the video tower (1/4, 3/8, 3/8).
    """

    kind: FusionKind = "ta_cross_attn"
    num_heads: int = 24
    head_dim: int = 64
    rope_theta: float = 10_000.0
    pairing: PairingRule | tuple[int, ...] = "dual_stream"
    immutable_audio: bool = False
    audio_context_tokens: int = 8
    video_context_tokens: int = 128
    window_frames: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.pairing, str) and self.pairing not in ("dual_stream", "relative_depth"):
            raise ValueError(
                f"pairing {self.pairing!r}: choose 'dual_stream', 'relative_depth' or a tuple of indices"
            )
        if self.kind not in ("ta_cross_attn", "ccl", "unitalking"):
            raise ValueError(f"unknown fusion kind {self.kind!r}; choose ta_cross_attn, ccl or unitalking")
        if min(self.audio_context_tokens, self.video_context_tokens, self.window_frames) < 1:
            raise ValueError("CCL needs at least one context token per direction and a window of 1+ frames")

    @property
    def rope_axes_dims(self) -> tuple[int, int, int]:
        """(t, h, w) split of ``head_dim`` for UniTalking's 3D RoPE: the video tower's proportions."""
        t = self.head_dim // 4 // 2 * 2
        h = (self.head_dim - t) // 2 // 2 * 2
        return t, h, self.head_dim - t - h


@dataclass(frozen=True)
class JointConfig:
    """The Joint Audio-Video DiT: two towers, the fusion between them and the shared timeline."""

    video: VideoDiTConfig = field(default_factory=VideoDiTConfig)
    audio: AudioDiTConfig = field(default_factory=AudioDiTConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    timeline: Timeline = field(default_factory=Timeline)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JointConfig:
        def build(kind: type, values: dict[str, Any]) -> Any:
            names = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
            # JSON turns tuples into lists; the dataclasses are frozen and hashable, so convert back.
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

        unknown = set(data) - {"video", "audio", "fusion", "timeline"}
        if unknown:
            raise ValueError(f"unknown JointConfig sections: {sorted(unknown)}")
        return cls(
            video=build(VideoDiTConfig, data.get("video", {})),
            audio=build(AudioDiTConfig, data.get("audio", {})),
            fusion=build(FusionConfig, data.get("fusion", {})),
            timeline=build(Timeline, data.get("timeline", {})),
        )


def with_fusion(config: JointConfig, kind: FusionKind) -> JointConfig:
    """``config`` with another fusion kind; UniTalking also turns the audio tower's reference-audio
    branch on (voice cloning is part of that system)."""
    audio = dataclasses.replace(
        config.audio, reference_audio=kind == "unitalking" or config.audio.reference_audio
    )
    return dataclasses.replace(config, fusion=dataclasses.replace(config.fusion, kind=kind), audio=audio)


PRESETS: dict[str, JointConfig] = {
    "alive-14b": JointConfig(),
    "tiny": JointConfig(
        video=VideoDiTConfig(
            latent_channels=4,
            in_channels=12,
            out_channels=4,
            num_dual_blocks=2,
            num_single_blocks=2,
            num_heads=2,
            head_dim=16,
            text_dims=(24, 20),
            rope_axes_dims=(4, 6, 6),
        ),
        audio=AudioDiTConfig(
            in_channels=8,
            out_channels=8,
            num_blocks=3,
            num_heads=2,
            head_dim=16,
            caption_dim=20,
            transcript_vocab_size=64,
            transcript_dim=8,
        ),
        fusion=FusionConfig(num_heads=2, head_dim=16, audio_context_tokens=3, video_context_tokens=5),
    ),
}
# The related systems of seeds 002 and 004 as variants of the same towers (same sizes, other seam).
for _base in ("alive-14b", "tiny"):
    for _kind in ("ccl", "unitalking"):
        PRESETS[f"{_base}-{_kind}"] = with_fusion(PRESETS[_base], _kind)


def get_preset(name: str) -> JointConfig:
    """Return a named preset, with the list of valid names in the error."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
