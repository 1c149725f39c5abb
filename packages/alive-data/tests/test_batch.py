import numpy as np
import pytest
import torch
import webdataset as wds

from alive_data.avformat import AVFormat
from alive_data.batch import AVBatch
from alive_data.loader import ResumableLoader
from alive_data.media import decode_image, fit_frames
from alive_data.pipeline import PipelineConfig
from alive_data.stream import AVStream
from alive_data.writer import WriteOptions, write_shards
from alive_models.codecs import audio_codec_from_spec, video_codec_from_spec


def batches_of(config: dict, workers: int = 0) -> list[AVBatch]:
    return list(ResumableLoader(AVStream(PipelineConfig.from_dict(config)), num_workers=workers))


@pytest.fixture(scope="module")
def with_refs(tmp_path_factory, shards, add_references):
    """The shared shards, sample i with i % 3 reference images (0, 1 or 2)."""
    out = tmp_path_factory.mktemp("refs")
    add_references(shards, out, lambda i: i % 3)
    return out


def test_a_bucket_mixing_reference_and_plain_samples(with_refs, config_for):
    config = config_for(
        with_refs,
        tasks={"reference_prob": 1.0, "caption_dropout": 0.0},
        buckets={"batch_size": 3, "resolutions": [[32, 48]], "frames": [25]},
    )
    batches = batches_of(config)
    assert sum(b.batch_size for b in batches) == 24
    counts = {}
    mixed = 0
    for b in batches:
        assert b.references.dtype == torch.uint8 and b.reference_mask.dtype == torch.bool
        assert b.references.shape[:2] == b.reference_mask.shape and b.references.shape[2:] == (32, 48, 3)
        assert b.references.shape[1] == int(b.reference_mask.sum(1).max())  # padded to the most any has
        mixed += len(set(b.tasks)) > 1
        for i, task in enumerate(b.tasks):
            k = int(b.reference_mask[i].sum())
            counts[k] = counts.get(k, 0) + 1
            assert task == ("r2va" if k else "t2va")
            assert b.reference_mask[i, :k].all() and not b.reference_mask[i, k:].any()
            assert not b.references[i, k:].any()  # padding is zeros
            assert bool(b.references_present[i]) == (k > 0)
    assert counts == {0: 8, 1: 8, 2: 8} and mixed > 0


def test_bucketing_by_reference_count_never_pads_references(with_refs, config_for):
    config = config_for(
        with_refs,
        tasks={"reference_prob": 1.0, "caption_dropout": 0.0},
        buckets={"batch_size": 2, "resolutions": [[32, 48]], "frames": [25], "by_reference_count": True},
    )
    batches = batches_of(config)
    counts: dict[int, int] = {}
    for b in batches:
        k = b.references.shape[1]
        assert b.reference_mask.all() and b.reference_mask.shape == (b.batch_size, k)  # no padding
        assert set(b.tasks) == {"r2va" if k else "t2va"}
        counts[k] = counts.get(k, 0) + b.batch_size
    assert counts == {0: 8, 1: 8, 2: 8}


def test_references_are_the_images_at_the_clip_resolution(with_refs, config_for):
    config = config_for(
        with_refs,
        tasks={"reference_prob": 1.0},
        buckets={"batch_size": 1, "resolutions": [[32, 48]], "frames": [25]},
    )
    raw = {
        s["__key__"]: s
        for shard in sorted(with_refs.glob("*.tar"))
        for s in wds.WebDataset(str(shard), shardshuffle=False)
    }
    checked = 0
    for b in batches_of(config):
        for k in range(int(b.reference_mask[0].sum())):
            image = decode_image(raw[b.keys[0]][f"ref_{k}.jpg"])
            expected = fit_frames(image[None], (32, 48))[0]
            np.testing.assert_array_equal(b.references[0, k].numpy(), expected)
            checked += 1
    assert checked == 8 + 2 * 8


def test_cached_latent_batches_carry_references_at_the_clip_resolution(tmp_path, clips, add_references):
    video, audio = "deterministic:spatial_stride=8,temporal_stride=4", "deterministic:hop_length=640"
    options = WriteOptions(size=(32, 48), video_codec=video, audio_codec=audio)
    write_shards(clips[:4], tmp_path / "cached", options, workers=0, progress=False)
    add_references(tmp_path / "cached", tmp_path / "refs", lambda i: 1 + i % 2)
    fmt = AVFormat.from_codecs(24, video_codec_from_spec(video), audio_codec_from_spec(audio))
    config = {
        "sources": [{"name": "a", "urls": str(tmp_path / "refs")}],
        "format": fmt.to_dict(),
        "latents": {"video": video, "audio": audio},
        "tasks": {"reference_prob": 1.0},
        "buckets": {"batch_size": 2, "latent_frames": [7]},
    }
    batches = batches_of(config)
    assert len(batches) == 2
    for b in batches:
        assert b.latents and b.video is None and b.audio is None
        assert b.video_latent.shape == (2, 768, 7, 4, 6) and b.audio_latent.dtype == torch.float32
        # At the clip's 32x48 (what the codec encodes to the 4x6 grid), not the 4x6 grid in pixels.
        assert b.references.shape[2:] == (32, 48, 3) and b.references[b.reference_mask].float().std() > 10
        assert b.tasks == ["r2va", "r2va"] and b.reference_mask.sum(1).min() >= 1
        assert b.audio_lengths.tolist() == [b.audio_latent.shape[-1]] * 2 and b.audio_mask.all()


def test_clean_modality_flags_transcripts_and_caption_dropout(shards, config_for):
    mix = {"a2v": 0.5, "v2a": 0.5}
    config = config_for(
        shards,
        tasks={"probabilities": mix, "mutual_dropout": 1.0, "caption_dropout": 0.0},
        buckets={"batch_size": 2, "resolutions": [[32, 48], [48, 32], [40, 40]], "frames": [25]},
    )
    seen = set()
    for b in batches_of(config):
        for i, task in enumerate(b.tasks):
            seen.add(task)
            a2v = task == "a2v"
            assert (bool(b.audio_clean[i]), bool(b.video_clean[i])) == (a2v, not a2v)
            assert (bool(b.video_loss[i]), bool(b.audio_loss[i])) == (a2v, not a2v)
            assert bool(b.mutual[i]) and not bool(b.i2v[i])  # the exchange carries the condition
            speech = "<W>" in b.captions[i]
            assert b.transcripts[i] == ("good evening" if speech else "")
    assert seen == {"a2v", "v2a"}
    dropped = config_for(shards, tasks={"caption_dropout": 1.0})
    for b in batches_of(dropped):
        assert b.captions == ["", ""] and b.transcripts == ["", ""]


def test_batch_moves_and_checks_itself(shards, config_for):
    b = batches_of(config_for(shards))[0]
    assert b.audio.dtype == torch.float32 and b.audio_lengths.dtype == torch.int64
    assert b.audio_mask.shape == b.audio.shape and b.audio_mask.all()
    moved = b.to("meta")
    assert moved.video.device.type == "meta" and moved.reference_mask.device.type == "meta"
    assert moved.keys == b.keys and moved.loader_state is b.loader_state and b.video.device.type == "cpu"
    if torch.cuda.is_available():
        assert b.pin_memory().video.is_pinned()
    with pytest.raises(ValueError, match="not a mix"):
        AVBatch(**{**vars(b), "video_latent": torch.zeros(2, 1, 1, 1, 1)})
    with pytest.raises(ValueError, match="batch sizes"):
        AVBatch(**{**vars(b), "mutual": torch.ones(3, dtype=torch.bool)})


def test_a_fixed_reference_task_skips_samples_without_references(with_refs, config_for):
    config = config_for(
        with_refs,
        tasks={"probabilities": {"r2va": 1.0}},
        buckets={"batch_size": 1, "resolutions": [[32, 48]], "frames": [25]},
    )
    loader = ResumableLoader(AVStream(PipelineConfig.from_dict(config)))
    assert all(b.tasks == ["r2va"] and b.reference_mask.all() for b in loader)
    assert loader.stats() == {"kept": 16, "no_references": 8, "partial_batch": 0}
