"""The endless stream of epochs that training reads, resumed at the worst moment: right after the
last batch of an epoch."""

from __future__ import annotations

import pytest

from alive_data.loader import ResumableLoader
from alive_data.pipeline import PipelineConfig
from alive_data.stream import AVStream
from alive_train.data import Endless
from alive_train.testing import data_format


def pipeline(shards, latent_frames: int = 7) -> PipelineConfig:
    return PipelineConfig.from_dict(
        {
            "sources": [{"name": "test", "urls": str(shards)}],
            "shuffle_buffer": 1,
            "format": data_format(),
            "buckets": {
                "batch_size": 2,
                "latent_frames": [latent_frames],
                "resolutions": [[48, 64]],
                "frames": [25],
            },
            "latents": {"video": "deterministic", "audio": "deterministic"},
        }
    )


def test_a_resume_after_an_epochs_last_batch_goes_on_with_the_next_epoch(shards):
    config = pipeline(shards)
    epoch0 = list(ResumableLoader(AVStream(config), num_workers=0))
    assert epoch0 and {b.loader_state["epoch"] for b in epoch0} == {0}
    loader = ResumableLoader(AVStream(config), num_workers=0)
    loader.load_state_dict(epoch0[-1].loader_state)  # the checkpoint of the epoch's last step
    nxt = next(iter(Endless(loader, rank=0, resumed=True)))
    assert nxt.loader_state["epoch"] == 1 and set(nxt.keys) <= {k for b in epoch0 for k in b.keys}


def test_an_epoch_without_a_batch_is_an_error_not_a_hang(shards):
    loader = ResumableLoader(AVStream(pipeline(shards, 700)), num_workers=0)  # every clip too short
    with pytest.raises(RuntimeError, match="gave no batch"):
        next(iter(Endless(loader, rank=0, resumed=True)))  # the rest of the first epoch, then one whole
