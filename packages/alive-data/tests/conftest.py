from pathlib import Path

import pytest

from alive_data.synthetic import make_clips
from alive_data.writer import SourceItem, WriteOptions, write_shards


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> list[SourceItem]:
    return make_clips(tmp_path_factory.mktemp("clips"), 24)


@pytest.fixture(scope="session")
def shards(tmp_path_factory, clips) -> Path:
    out = tmp_path_factory.mktemp("shards")
    report = write_shards(clips, out, WriteOptions(), shard_samples=3, workers=2, progress=False)
    assert report.written == len(clips)
    return out


@pytest.fixture
def config_for():
    """A small pipeline config over some shards, with overrides."""

    def build(urls, **overrides) -> dict:
        config = {
            "sources": [{"name": "main", "urls": str(urls)}],
            "shuffle_buffer": 6,
            "buckets": {"batch_size": 2, "resolutions": [[32, 48], [48, 32], [40, 40]], "frames": [25, 17]},
            "tasks": {"caption_dropout": 0.0, "mutual_dropout": 0.3},
        }
        config.update(overrides)
        return config

    return build
