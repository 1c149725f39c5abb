"""Fixtures: tiny real shards (PyAV mp4 + cached latents of the deterministic codecs), tiny real
Hugging Face caption encoders, and a stage config that trains the tiny model on them on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from alive_data.synthetic import make_clips
from alive_data.writer import WriteOptions, write_shards
from alive_models.testing import save_tiny_text_models

# The tiny preset, widened to the deterministic codecs' latents (Wan geometry: 8x spatial, 4x causal
# temporal -> 3*4*8*8 = 768 channels; 640-sample hop -> 640 channels at 25 latents/s).
VIDEO_CHANNELS, AUDIO_CHANNELS = 768, 640
MODEL = {
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
            "transcript_vocab_size": 512,
        },
    },
}


@pytest.fixture(scope="session")
def model_spec() -> dict:
    """The ``model`` section of the test stages (the tiny preset on the deterministic codecs)."""
    return MODEL


@pytest.fixture(scope="session")
def text_models(tmp_path_factory) -> tuple[Path, Path]:
    return save_tiny_text_models(tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """12 clips (1.2 s at 24/30/25 fps, three aspect ratios), two per shard, media and latents."""
    root = tmp_path_factory.mktemp("data")
    clips = make_clips(root / "clips", 12)
    options = WriteOptions(video_codec="deterministic", audio_codec="deterministic")
    report = write_shards(clips, root / "shards", options, shard_samples=2, workers=0, progress=False)
    assert report.written == 12, report
    return root / "shards"


def stage_yaml(path: Path, shards: Path, text_models: tuple[Path, Path], **sections) -> Path:
    """A joint-stage config over the test shards; ``sections`` replace top-level keys."""
    t5, qwen = text_models
    config = {
        "base": "joint",
        "model": MODEL,
        "init_from": [],
        "text": {"t5": str(t5), "qwen": str(qwen), "dtype": "float32"},
        "codecs": {"video": "deterministic", "audio": "deterministic"},
        "data": {
            "num_workers": 0,
            "volume": None,
            "pipeline": {
                "sources": [{"name": "test", "urls": str(shards)}],
                "filter": {"preset": None, "rules": []},
                "shuffle_buffer": 4,
                "latents": {"video": "deterministic", "audio": "deterministic"},
                "buckets": {"batch_size": 2, "latent_frames": [7]},
                # Mutual on for every sample: a rank whose batch is all "indep" is being fixed in
                # alive-models.
                "tasks": {"i2va_prob": 0.0, "caption_dropout": 0.0, "mutual_dropout": 0.0},
            },
        },
        "schedule": {"max_steps": 4, "epochs": None},
        "optim": {"warmup_steps": 0},
        "parallel": {"activation_checkpointing": False},
        "trainer": {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 1, "progress_bar": False},
        "checkpoint": {"every_n_steps": 2, "keep_last": 3},
        "monitor": {"window": 2},
        "ema": {"decay": 0.9},
        "run": {"dir": str(path.parent / "run")},
        "paths": {"exports": str(path.parent / "exports")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow store for the session (creating a SQLite store runs its migrations: seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def write_stage(shards, text_models, tracking_uri):
    """``write_stage(path, **sections)``: a test stage YAML at ``path`` (run and exports beside it)."""

    def build(path: Path, **sections) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        sections.setdefault("tracking", {"uri": tracking_uri})
        return stage_yaml(path, shards, text_models, **sections)

    return build


@pytest.fixture
def make_stage(tmp_path, write_stage):
    return lambda name="stage.yaml", **sections: write_stage(tmp_path / name, **sections)


def fit(path: Path, *overrides: str):
    """Run a stage in this process (as ``alive-train fit`` does)."""
    from alive_train.config import load_config
    from alive_train.run import fit as run_fit

    return run_fit(load_config(path, list(overrides)))


@pytest.fixture(scope="session")
def run_stage():
    return fit


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
