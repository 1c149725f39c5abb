from pathlib import Path

import pytest

from alive_data.discovery import SourceItem
from alive_data.synthetic import make_clips
from alive_data.writer import WriteOptions, write_shards


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


@pytest.fixture(scope="session")
def add_references():
    """``add_references(shard_dir, out_dir, count_for)``: see :func:`_add_references`."""
    return _add_references


def _add_references(shard_dir: Path, out_dir: Path, count_for) -> None:
    """Rewrite every shard of ``shard_dir`` into ``out_dir`` with ``count_for(index)`` reference images
    (``ref_K.jpg``, distinct pictures) added to the index-th sample."""
    import webdataset as wds

    from alive_data.media import encode_jpeg
    from alive_data.synthetic import moving_clip

    out_dir.mkdir(parents=True, exist_ok=True)
    index = 0
    for shard in sorted(shard_dir.glob("shard-*.tar")):
        with wds.TarWriter(str(out_dir / shard.name)) as sink:
            for sample in wds.WebDataset(str(shard), shardshuffle=False):
                refs = {
                    f"ref_{k}.jpg": encode_jpeg(moving_clip(1, 1, 48, 64, 40 * k + index)[0])
                    for k in range(count_for(index))
                }
                members = {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
                sink.write({**members, **refs})
                index += 1
