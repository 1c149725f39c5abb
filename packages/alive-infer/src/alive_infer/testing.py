"""A tiny exported pipeline for tests, the install check and the demo: a random tiny JointAVDiT fitted
to exactly invertible codecs and tiny random text encoders, written with :func:`save_pipeline`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from alive_infer.checkpoint import PipelineSpec, RefinerSpec, SamplingDefaults, TextEncoderSpec, save_pipeline
from alive_models import JointAVDiT, JointConfig, build_model, get_preset
from alive_models.codecs import (
    AudioCodec,
    VideoCodec,
    audio_codec_from_spec,
    timeline_for,
    video_codec_from_spec,
)
from alive_models.testing import randomize_zero_inits, save_tiny_text_models
from alive_models.text import TranscriptTokenizer

# 4x spatial, 4x causal temporal (192 latent channels); 8 kHz audio at 25 latents/s (320 channels).
TINY_VIDEO_CODEC = "deterministic:spatial_stride=4,temporal_stride=4"
TINY_AUDIO_CODEC = "deterministic:sample_rate=8000,hop_length=320"


def fitted_config(
    base: JointConfig,
    video_codec: VideoCodec,
    audio_codec: AudioCodec,
    fps: float,
    transcript_vocab_size: int,
    i2v: bool = True,
) -> JointConfig:
    """``base`` with its channels and timeline taken from the codecs (and I2V condition channels)."""
    c, a = video_codec.geometry.channels, audio_codec.geometry.channels
    return dataclasses.replace(
        base,
        video=dataclasses.replace(
            base.video,
            latent_channels=c,
            in_channels=2 * c + base.video.mask_channels if i2v else c,
            out_channels=c,
        ),
        audio=dataclasses.replace(
            base.audio, in_channels=a, out_channels=a, transcript_vocab_size=transcript_vocab_size
        ),
        timeline=timeline_for(video_codec.geometry, audio_codec.geometry, fps=fps),
    )


def tiny_model(
    text_dirs: tuple[Path, Path], seed: int = 0, fps: float = 24.0, preset: str = "tiny"
) -> JointAVDiT:
    """A tiny preset (``tiny``, ``tiny-ccl``, ``tiny-unitalking``) fitted to the tiny codecs and text
    encoders, every gate open (random)."""
    vocab = TranscriptTokenizer.from_pretrained(text_dirs[1]).vocab_size
    config = fitted_config(
        get_preset(preset),
        video_codec_from_spec(TINY_VIDEO_CODEC),
        audio_codec_from_spec(TINY_AUDIO_CODEC),
        fps,
        vocab,
    )
    model = build_model(config, seed=seed)
    randomize_zero_inits(model, seed=seed + 1)
    return model


def save_tiny_pipeline(
    root: str | Path,
    *,
    seed: int = 0,
    text_dirs: tuple[Path, Path] | None = None,
    refiner: bool = False,
    name_text_encoders: bool = True,
    preset: str = "tiny",
) -> Path:
    """Write ``root/export`` (the model: ``preset`` fitted to the tiny codecs; unless ``text_dirs`` is
    given, tiny encoders under ``root/text``).
    ``name_text_encoders=False`` writes "none" for them (they are then passed at load time).
    Returns the export directory."""
    root = Path(root)
    text_dirs = text_dirs or save_tiny_text_models(root / "text")
    spec = PipelineSpec(
        video_codec=TINY_VIDEO_CODEC,
        audio_codec=TINY_AUDIO_CODEC,
        fps=24.0,
        text_encoders=TextEncoderSpec(str(text_dirs[0]), str(text_dirs[1]), dtype="float32")
        if name_text_encoders
        else None,
        sampling=SamplingDefaults(steps=4),
        refiner=RefinerSpec(resolution=(64, 64), t_start=0.5, steps=2) if refiner else None,
        source={"made_by": "alive_infer.testing.save_tiny_pipeline", "seed": seed},
    )
    return save_pipeline(
        root / "export",
        tiny_model(text_dirs, seed, preset=preset),
        spec,
        refiner=tiny_model(text_dirs, seed + 5) if refiner else None,
    )
