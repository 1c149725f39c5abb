"""Tiny real training setups for tests, benchmarks and the demo: shards written by alive-data (PyAV
mp4 + cached latents of the deterministic codecs; clips of the synthetic world with their reference
images and high-resolution versions), tiny Hugging Face caption encoders, and stage configs that
train the tiny model on them on CPU in seconds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

# The tiny preset widened to the deterministic codecs' latents (Wan geometry: 8x spatial, 4x causal
# temporal -> 3*4*8*8 = 768 channels; a 640-sample hop -> 640 channels at 25 latents/s).
VIDEO_CHANNELS, AUDIO_CHANNELS = 768, 640
TINY_MODEL: dict[str, Any] = {
    "preset": "tiny",
    "overrides": {
        "video": {
            "latent_channels": VIDEO_CHANNELS,
            "in_channels": 2 * VIDEO_CHANNELS + 4,
            "out_channels": VIDEO_CHANNELS,
        },
        "audio": {
            "in_channels": AUDIO_CHANNELS,
            "out_channels": AUDIO_CHANNELS,
            "transcript_vocab_size": 512,  # the tiny Qwen tokenizer's vocabulary fits
        },
    },
}
CODEC = "deterministic"


def data_format(video_codec: str = CODEC) -> dict[str, Any]:
    """The pipeline's ``format`` for the deterministic codecs (``video_codec``: a deterministic spec)
    at 24 fps."""
    from alive_data.avformat import AVFormat
    from alive_models.codecs import audio_codec_from_spec, video_codec_from_spec

    video, audio = video_codec_from_spec(video_codec), audio_codec_from_spec(CODEC)
    return AVFormat.from_codecs(24, video, audio).to_dict()


def model_for_codec(video_codec: str = CODEC) -> dict[str, Any]:
    """The ``model`` section of :data:`TINY_MODEL` with the video tower's channels set to
    ``video_codec``'s latent width (e.g. 48 for ``deterministic:spatial_stride=2``)."""
    from alive_models.codecs import video_codec_from_spec

    channels = video_codec_from_spec(video_codec).geometry.channels
    model = copy.deepcopy(TINY_MODEL)
    model["overrides"]["video"].update(
        latent_channels=channels, in_channels=2 * channels + 4, out_channels=channels
    )
    return model


def write_test_data(root: Path, clips: int = 12) -> tuple[Path, tuple[Path, Path]]:
    """Clips (1.2 s at 24/30/25 fps, three aspect ratios), two per shard with media, cached latents
    and cached caption encodings, and the tiny T5/Qwen encoders. Returns (shard directory, (t5 dir,
    qwen dir))."""
    from alive_data.synthetic import make_clips
    from alive_data.writer import WriteOptions, write_shards
    from alive_models.testing import save_tiny_text_models

    text = save_tiny_text_models(root / "text")
    items = make_clips(root / "clips", clips)
    options = WriteOptions(video_codec=CODEC, audio_codec=CODEC, text_encoders=tuple(map(str, text)))
    report = write_shards(items, root / "shards", options, shard_samples=2, workers=0, progress=False)
    if report.written != clips:
        raise RuntimeError(f"wrote {report.written} of {clips} test clips: {dict(report.skipped)}")
    return root / "shards", text


def write_world_data(
    root: Path,
    clips: int,
    seed: int = 0,
    hires: bool = False,
    latents: bool = True,
    world=None,
    workers: int = 0,
    progress: bool = False,
    video_codec: str = CODEC,
) -> Path:
    """Shards of the synthetic world (``alive_data.world``: captions, reference images; ``hires``: the
    high-resolution clips, the refiner's data) with cached latents unless ``latents`` is False.
    ``world``: an ``alive_data.world.WorldConfig`` (default: the world's own). ``workers`` > 0 renders
    and writes in that many processes; ``progress`` shows the writer's progress bar; ``video_codec``:
    the deterministic video codec of the cached latents."""
    from alive_data.discovery import scan_folder
    from alive_data.world import WorldConfig, write_source_folder
    from alive_data.world.generate import LABELS_FILE
    from alive_data.writer import WriteOptions, write_shards

    source = root / "source"
    write_source_folder(source, clips, seed, world or WorldConfig(), hires=hires, workers=workers)
    codecs = {"video_codec": video_codec, "audio_codec": CODEC} if latents else {}
    options = WriteOptions(label_table=str(source / LABELS_FILE), **codecs)
    found = scan_folder(source)
    report = write_shards(
        found.items, root / "shards", options, shard_samples=4, workers=workers, progress=progress
    )
    if report.written + report.already_written != clips:
        raise RuntimeError(f"wrote {report.written} of {clips} world clips: {dict(report.skipped)}")
    return root / "shards"


def stage_dict(
    shards: Path,
    text_models: tuple[Path, Path],
    run_root: Path,
    inherit: tuple[str, ...] = (),
    **sections: Any,
) -> dict[str, Any]:
    """A joint-stage config over ``shards`` on one CPU process; ``sections`` update top-level keys
    (dicts are merged one level deep, other values replace); top-level keys in ``inherit`` are left
    to the base config (e.g. ``init_from`` of a shipped stage)."""
    t5, qwen = text_models
    config: dict[str, Any] = {
        "base": "joint",
        "model": copy.deepcopy(TINY_MODEL),
        "init_from": [],
        "text": {"t5": str(t5), "qwen": str(qwen), "dtype": "float32"},
        "codecs": {"video": CODEC, "audio": CODEC},
        "data": {
            "num_workers": 0,
            "volume": None,
            "pipeline": {
                "sources": [{"name": "test", "urls": str(shards)}],
                "format": data_format(),
                "filter": {"preset": None, "rules": []},
                "shuffle_buffer": 4,
                "latents": {"video": CODEC, "audio": CODEC},
                "buckets": {"batch_size": 2, "latent_frames": [7]},
                "tasks": {"i2va_prob": 0.0, "caption_dropout": 0.0, "mutual_dropout": 0.3},
            },
        },
        "schedule": {"max_steps": 4, "epochs": None},
        "optim": {"warmup_steps": 0},
        "parallel": {"activation_checkpointing": False},
        "trainer": {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 1, "progress_bar": False},
        "checkpoint": {"every_n_steps": 2, "keep_last": 3},
        "monitor": {"window": 2},
        "ema": {"decay": 0.9},
        "run": {"dir": str(run_root / "run")},
        "paths": {"exports": str(run_root / "exports")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    for key in inherit:
        config.pop(key, None)
    return config


def write_stage(
    path: Path, shards: Path, text_models: tuple[Path, Path], inherit: tuple[str, ...] = (), **sections: Any
) -> Path:
    """:func:`stage_dict` written as YAML at ``path`` (run and exports beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    config = stage_dict(shards, text_models, path.parent, inherit, **sections)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
