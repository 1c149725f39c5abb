import io
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import webdataset as wds

from alive_data.avformat import AVFormat
from alive_data.filters import FUNNEL, Rule, StageFilter
from alive_data.labels import LabelTable, default_table
from alive_data.loader import ResumableLoader
from alive_data.media import encode_flac, encode_jpeg
from alive_data.pipeline import PipelineConfig
from alive_data.stream import AVStream
from alive_data.synthetic import SILENT_CAPTION, SPEECH_CAPTION, make_clips, moving_clip, tone
from alive_data.tasks import TaskConfig
from alive_data.writer import WriteOptions, write_shards
from alive_models.caption import parse_caption
from alive_models.codecs import audio_codec_from_spec, video_codec_from_spec
from alive_models.mp4 import encode_mp4


def latent_format(video: str, audio: str) -> dict:
    return AVFormat.from_codecs(24, video_codec_from_spec(video), audio_codec_from_spec(audio)).to_dict()


def loader_for(config: dict, workers: int = 2) -> ResumableLoader:
    return ResumableLoader(AVStream(PipelineConfig.from_dict(config)), num_workers=workers)


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b.keys]


def test_two_worker_batches_have_one_shape_per_batch(shards, clips, config_for):
    loader = loader_for(config_for(shards))
    batches = list(loader)
    seen = keys_of(batches)
    assert len(seen) == len(set(seen))  # no sample twice
    stats = loader.stats()
    assert stats["kept"] == len(clips) and stats["kept"] == len(seen) + stats["partial_batch"]
    for batch in batches:
        frames, height, width = batch.video.shape[1:4]
        assert batch.video.dtype == torch.uint8 and batch.video.shape[0] == 2
        assert (height, width) in {(32, 48), (48, 32), (40, 40)} and frames in (25, 17)
        assert batch.audio.shape == (2, round(frames / 24 * 16_000))
        assert batch.mutual.dtype == torch.bool and len(batch.captions) == 2
    # Aspect-ratio bucketing: the landscape 64x48 clips land in the 48-wide, 32-high bucket.
    landscape = {c.key for i, c in enumerate(clips) if i % 3 == 0}
    for batch in batches:
        if set(batch.keys) & landscape:
            assert tuple(batch.video.shape[2:4]) == (32, 48)


def test_frames_are_the_resampled_source_frames(shards, config_for):
    batch = next(
        iter(
            loader_for(
                config_for(
                    shards,
                    buckets={"batch_size": 1, "resolutions": [[48, 64], [64, 48], [64, 64]], "frames": [25]},
                ),
                workers=0,
            )
        )
    )
    video = batch.video[0].numpy().astype(int)
    # The gradient moves 5 levels per source frame, so consecutive 24 fps frames differ by 5*src/24 levels.
    steps = np.diff(video[:, 10, 10, 0])
    assert np.all((steps >= 0) & (steps <= 15))


def test_every_kind_of_bad_sample_is_skipped_and_counted(tmp_path, config_for):
    good = make_clips(tmp_path / "src", 4)
    write_shards(good, tmp_path / "shards", WriteOptions(), shard_samples=2, workers=0, progress=False)
    meta = {
        "caption": SPEECH_CAPTION,
        "fps": 24,
        "duration": 1.2,
        "width": 64,
        "height": 48,
        "num_frames": 29,
    }
    video = encode_mp4(moving_clip(24, 1.2, 48, 64), 24)
    bad = {
        "badcaption": {
            "json": json.dumps({**meta, "caption": "Subjects: Subject1: x Visual: y Narration: <W>a"}),
            "mp4": video,
            "flac": encode_flac(tone(16_000, 1.2, 300), 16_000),
        },
        "noaudio": {"json": json.dumps(meta), "mp4": video},
        "wrongrate": {
            "json": json.dumps(meta),
            "mp4": video,
            "flac": encode_flac(tone(22_050, 1.2, 300), 22_050),
        },
        "undecodable": {
            "json": json.dumps(meta),
            "mp4": b"\x00" * 100,
            "flac": encode_flac(tone(16_000, 1, 1), 16_000),
        },
        "badjson": {"json": b"{not json", "mp4": video},
        "schema": {"json": json.dumps({**meta, "fps": -1}), "mp4": video},
        "short": {"json": json.dumps({**meta, "num_frames": 5}), "mp4": video},
    }
    with wds.TarWriter(str(tmp_path / "shards" / "shard-000100.tar")) as sink:
        for key, members in bad.items():
            sink.write(
                {"__key__": key, **{k: v.encode() if isinstance(v, str) else v for k, v in members.items()}}
            )
    corrupt = (tmp_path / "shards" / "shard-000000.tar").read_bytes()
    (tmp_path / "shards" / "shard-000101.tar").write_bytes(corrupt[:1500])  # truncated mid-member

    loader = loader_for(
        config_for(tmp_path / "shards", buckets={"batch_size": 1, "resolutions": [[32, 48]], "frames": [25]})
    )
    batches = list(loader)
    stats = loader.stats()
    assert stats["kept"] == 4 and len(batches) == 4
    for reason in (
        "malformed_caption",
        "no_audio",
        "wrong_sample_rate",
        "undecodable_video",
        "malformed_json",
        "schema",
        "too_short",
        "corrupt_tar",
    ):
        assert stats[reason] >= 1, (reason, stats)


def test_nan_and_zero_length_latents_are_counted(tmp_path):
    meta = {
        "caption": SPEECH_CAPTION,
        "fps": 24,
        "duration": 1.2,
        "width": 16,
        "height": 16,
        "num_frames": 29,
        "latents": {
            "video": {"channels": 768, "spatial_stride": 8, "temporal_stride": 4, "causal_first_frame": True},
            "audio": {"channels": 640, "sample_rate": 16000, "hop_length": 640},
            "video_codec": "deterministic",
            "audio_codec": "deterministic",
        },
    }

    def npy(a):
        buffer = io.BytesIO()
        np.save(buffer, a)
        return buffer.getvalue()

    nan = np.zeros((768, 8, 2, 2), np.float16)
    nan[0, 0, 0, 0] = np.nan
    with wds.TarWriter(str(tmp_path / "shard-000000.tar")) as sink:
        sink.write(
            {
                "__key__": "nan",
                "json": json.dumps(meta).encode(),
                "video_latent.npy": npy(nan),
                "audio_latent.npy": npy(np.zeros((640, 30), np.float16)),
            }
        )
        sink.write(
            {
                "__key__": "empty",
                "json": json.dumps(meta).encode(),
                "video_latent.npy": npy(np.zeros((768, 0, 2, 2), np.float16)),
                "audio_latent.npy": npy(np.zeros((640, 30), np.float16)),
            }
        )
        odd_geometry = {**meta, "latents": {**meta["latents"], "video": {"stride": 8}}}
        sink.write(
            {
                "__key__": "odd_geometry",
                "json": json.dumps(odd_geometry).encode(),
                "video_latent.npy": npy(np.zeros((768, 8, 2, 2), np.float16)),
                "audio_latent.npy": npy(np.zeros((640, 30), np.float16)),
            }
        )
        lying = {**meta, "latents": {k: v for k, v in meta["latents"].items() if k != "audio"}}
        sink.write(
            {
                "__key__": "lying",
                "json": json.dumps(lying).encode(),
                "video_latent.npy": npy(np.zeros((768, 8, 2, 2), np.float16)),
                "audio_latent.npy": npy(np.zeros((640, 30), np.float16)),
            }
        )
        sink.write(
            {
                "__key__": "other",
                "json": json.dumps(
                    {**meta, "latents": {**meta["latents"], "video_codec": "wan:/x"}}
                ).encode(),
                "video_latent.npy": npy(np.zeros((768, 8, 2, 2), np.float16)),
                "audio_latent.npy": npy(np.zeros((640, 30), np.float16)),
            }
        )
    config = {
        "sources": [{"name": "a", "urls": str(tmp_path)}],
        "format": latent_format("deterministic", "deterministic"),
        "latents": {"video": "deterministic", "audio": "deterministic"},
        "buckets": {"batch_size": 1, "latent_frames": [8]},
    }
    loader = loader_for(config, workers=0)
    assert list(loader) == []
    stats = loader.stats()
    assert stats["nan_latent"] == 1 and stats["zero_length"] == 1 and stats["latent_codec"] == 1
    # Metadata without the audio geometry, and a geometry that is not one: the schema says so.
    assert stats["schema"] == 2 and sum(stats.values()) == 5


def test_cached_latents_round_trip_to_batches(tmp_path, clips):
    spec = "deterministic:spatial_stride=8,temporal_stride=4"
    write_shards(
        clips[:6],
        tmp_path,
        WriteOptions(size=(32, 48), video_codec=spec, audio_codec="deterministic:hop_length=640"),
        workers=0,
        progress=False,
    )
    config = {
        "sources": [{"name": "a", "urls": str(tmp_path)}],
        "format": latent_format(spec, "deterministic:hop_length=640"),
        "latents": {"video": spec, "audio": "deterministic:hop_length=640"},
        "buckets": {"batch_size": 2, "latent_frames": [7, 5]},
    }
    loader = loader_for(config, workers=0)
    batches = list(loader)
    assert loader.stats()["kept"] == 6 and batches
    for b in batches:
        # 1.2 s at 24 fps -> 28 frames -> 25 usable (1 + 4*6) -> 7 latent frames of 192 channels.
        assert b.video_latent.shape == (2, 3 * 4 * 64, 7, 4, 6)
        assert b.audio_latent.shape == (2, 640, math.ceil(25 / 24 * 25))


def test_stage_filters_report_what_they_removed(shards, config_for):
    config = config_for(shards, filter={"rules": [["quality.aesthetic", ">=", 5.0]], "require_audible": True})
    loader = loader_for(config, workers=0)
    list(loader)
    stats = loader.stats()
    # aesthetic is i % 10 for clips i = 0..23: i in 0-4, 10-14, 20-23 fail (14 clips); of the other 10
    # the odd ones (5, 7, 9, 15, 17, 19) are silent; 6, 8, 16, 18 are kept.
    assert stats["filter: quality.aesthetic >= 5.0"] == 14
    assert stats["filter: silent"] == 6 and stats["kept"] == 4
    assert set(FUNNEL) == {"none", "joint_480p", "ct_480p", "sft_480p", "refiner_1080p"}
    refiner = StageFilter.from_config({"preset": "refiner_1080p"})
    assert set(FUNNEL["sft_480p"].rules) < set(refiner.rules)  # the funnel only tightens
    assert (
        refiner.reason(
            {
                "height": 720,
                "quality": {
                    "ocr": 0,
                    "motion": 1,
                    "aesthetic": 9,
                    "quality_class": 4,
                    "audio_quality": 5,
                    "av_coherence": 1,
                    "clarity": 1,
                },
                "speaking": True,
            }
        )
        == "filter: height >= 1080"
    )
    with pytest.raises(ValueError, match="operator"):
        Rule("quality.aesthetic", "~", 1)


def test_keyword_labels_need_both_the_visual_tag_and_the_sound():
    table = default_table()
    labels = table.match(parse_caption(SPEECH_CAPTION))
    assert [(lb.l1, lb.l3, lb.audio) for lb in labels] == [("Animals", "dog", "barking")]
    assert table.match(parse_caption(SILENT_CAPTION)) == []  # a cat making no sound
    quiet_dog = parse_caption("Subjects: Subject1: A dog. Visual: A yard. Narration: The dog sits.")
    assert table.match(quiet_dog) == []
    with pytest.raises(ValueError, match="L1 domain"):
        LabelTable([{"l1": "Plants", "l2": "x", "l3": "y", "audio": []}])


def test_balancing_weights_change_the_speaking_share(shards, config_for):
    config = config_for(
        shards,
        balance={"speaking": {"true": 1.0, "false": 0.25}},
        shuffle_buffer=1,
        buckets={"batch_size": 1, "resolutions": [[32, 48], [48, 32], [40, 40]], "frames": [25]},
    )
    loader = loader_for(config, workers=0)
    batches = list(loader)
    speaking = sum("<W>" in b.captions[0] for b in batches)
    assert speaking == 12 and len(batches) - speaking < 12  # every speaking clip, few silent ones
    assert loader.stats()["balance"] == 12 - (len(batches) - speaking)


def test_mixture_ratio_3_to_1(tmp_path):
    a = make_clips(tmp_path / "a", 60, prefix="ct", seconds=0.8)
    b = make_clips(tmp_path / "b", 60, prefix="aes", seconds=0.8)
    write_shards(a, tmp_path / "sa", WriteOptions(), shard_samples=20, workers=2, progress=False)
    write_shards(b, tmp_path / "sb", WriteOptions(), shard_samples=20, workers=2, progress=False)
    config = {
        "sources": [
            {"name": "ct", "urls": str(tmp_path / "sa"), "weight": 3},
            {"name": "aesthetic", "urls": str(tmp_path / "sb"), "weight": 1},
        ],
        "shuffle_buffer": 1,
        "buckets": {"batch_size": 1, "resolutions": [[32, 48]], "frames": [17]},
    }
    keys = keys_of(loader_for(config, workers=0))
    first = keys[:60]  # while both sources still have data
    share = sum(k.startswith("ct") for k in first) / len(first)
    assert abs(share - 0.75) < 0.15, share  # binomial sd at n=60 is 0.056


def test_task_schedule_probabilities():
    config = TaskConfig(caption_dropout=0.1, mutual_dropout=0.3)
    keys = [f"k{i}" for i in range(4000)]
    epoch0 = Counter(config.assign(0, 0, k, False)[0] for k in keys)
    assert epoch0 == {"t2va": 4000}  # I2VA only after the first epoch
    draws = [config.assign(0, 1, k, False) for k in keys]
    assert abs(sum(t == "i2va" for t, _, _ in draws) / 4000 - 0.4) < 0.03
    assert abs(sum(d for _, d, _ in draws) / 4000 - 0.1) < 0.02
    assert abs(sum(not m for _, _, m in draws) / 4000 - 0.3) < 0.03
    refs = Counter(TaskConfig(reference_prob=0.5).assign(0, 0, k, True)[0] for k in keys)
    assert abs(refs["r2va"] / 4000 - 0.5) < 0.03
    ccl = TaskConfig(probabilities={"t2v": 0.05, "t2a": 0.05, "a2v": 0.15, "v2a": 0.15, "t2va": 0.6})
    mix = Counter(ccl.assign(0, 0, k, False)[0] for k in keys)
    for name, p in ccl.probabilities.items():
        assert abs(mix[name] / 4000 - p) < 0.03, (name, mix)
    assert all(
        m is False for t, _, m in (ccl.assign(0, 0, k, False) for k in keys[:500]) if t in ("t2v", "t2a")
    )
    with pytest.raises(ValueError, match="sum"):
        TaskConfig(probabilities={"t2va": 0.5})


def test_pipeline_applies_tasks_and_references(tmp_path, clips, config_for):
    write_shards(clips[:6], tmp_path, WriteOptions(), workers=0, progress=False)
    # Add reference images to every sample of the shard.
    shard = next(tmp_path.glob("shard-*.tar"))
    samples = list(wds.WebDataset(str(shard), shardshuffle=False))
    with wds.TarWriter(str(tmp_path / "shard-000050.tar")) as sink:
        for s in samples:
            refs = {f"ref_{k}.jpg": encode_jpeg(moving_clip(1, 1, 48, 64, k)[0]) for k in range(2)}
            sink.write(
                {"__key__": s["__key__"] + "r", "json": s["json"], "mp4": s["mp4"], "flac": s["flac"], **refs}
            )
    shard.unlink()
    config = config_for(
        tmp_path,
        tasks={"reference_prob": 1.0, "caption_dropout": 1.0, "mutual_dropout": 0.0},
        buckets={"batch_size": 1, "resolutions": [[32, 48], [48, 32], [40, 40]], "frames": [25]},
    )
    batches = list(loader_for(config, workers=0))
    assert batches and all(b.tasks == ["r2va"] and b.captions == [""] for b in batches)
    assert all(b.references[0].shape == (2, *b.video.shape[2:4], 3) for b in batches)
    assert all(b.mutual.all() for b in batches)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_reproduces_the_exact_sample_sequence(shards, config_for, workers):
    config = config_for(shards, tasks={"caption_dropout": 0.2, "mutual_dropout": 0.3, "i2va_from_epoch": 0})
    uninterrupted = loader_for(config, workers)
    full = list(uninterrupted)
    reference = [(b.keys, b.tasks, b.mutual.tolist()) for b in full]
    for stop in (1, 3, len(full) - 1):
        first = loader_for(config, workers)
        seen = []
        for batch in first:
            seen.append((batch.keys, batch.tasks, batch.mutual.tolist()))
            if len(seen) == stop:
                break
        state = json.loads(json.dumps(first.state_dict()))  # it must survive a checkpoint
        resumed = loader_for(config, workers)
        resumed.load_state_dict(state)
        rest = [(b.keys, b.tasks, b.mutual.tolist()) for b in resumed]
        assert seen + rest == reference, stop
        assert resumed.stats() == uninterrupted.stats()


def same_batch(a, b) -> bool:
    return (
        a.keys == b.keys
        and a.tasks == b.tasks
        and a.captions == b.captions
        and torch.equal(a.video, b.video)
        and torch.equal(a.audio, b.audio)
        and torch.equal(a.mutual, b.mutual)
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_each_batch_carries_the_state_that_resumes_right_after_it(shards, config_for, workers):
    # Lightning prefetches: when the trainer checkpoints after batch k, the loader has produced k + 1.
    config = config_for(shards, tasks={"caption_dropout": 0.2, "mutual_dropout": 0.3, "i2va_from_epoch": 0})
    uninterrupted = loader_for(config, workers)
    full = list(uninterrupted)
    stats = uninterrupted.stats()
    next_epoch = list(uninterrupted)
    for k in (1, len(full) - 1):
        running = iter(loader_for(config, workers))
        produced = [next(running) for _ in range(k + 1)]
        running.close()
        state = json.loads(json.dumps(produced[k - 1].loader_state))  # batch k, through a checkpoint
        resumed = loader_for(config, workers)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert len(rest) == len(full) - k and all(map(same_batch, rest, full[k:])), k
        assert resumed.stats() == stats
    # The state of an epoch's last batch resumes at the next epoch, as if never stopped.
    resumed = loader_for(config, workers)
    resumed.load_state_dict(full[-1].loader_state)
    assert list(resumed) == []
    assert [b.keys for b in resumed] == [b.keys for b in next_epoch] and resumed.epoch == 1


def test_epochs_reshuffle_and_resume_needs_same_workers(shards, config_for):
    loader = loader_for(config_for(shards), workers=2)
    epoch0, epoch1 = keys_of(loader), keys_of(loader)
    assert loader.epoch == 1 and epoch0 != epoch1 and sorted(epoch0) != []
    other = loader_for(config_for(shards), workers=1)
    with pytest.raises(ValueError, match="same number"):
        other.load_state_dict(loader.state_dict())
    with pytest.raises(FileNotFoundError, match="not found"):
        AVStream(PipelineConfig.from_dict(config_for(shards / "missing.tar")))
    with pytest.raises(FileNotFoundError, match="no shards"):
        AVStream(PipelineConfig.from_dict(config_for(str(shards / "nothing-*.tar"))))


def test_pipe_urls_and_node_split(shards, clips, config_for):
    urls = [f"pipe:cat {p}" for p in sorted(shards.glob("shard-*.tar"))]
    config = PipelineConfig.from_dict({**config_for(shards), "sources": [{"name": "main", "urls": urls}]})
    per_rank = []
    for rank in (0, 1):
        loader = ResumableLoader(AVStream(config, rank=rank, world_size=2), num_workers=0)
        list(loader)
        per_rank.append(loader.stats()["kept"])
        stream = AVStream(config, rank=rank, world_size=2)
        mine = {u for u in stream.shards_for("main", 0, rank, 2, 0, 1)}
        other = {u for u in stream.shards_for("main", 0, 1 - rank, 2, 0, 1)}
        assert mine and not mine & other and len(mine | other) == len(urls)
    assert sum(per_rank) == len(clips)  # the two nodes together read every sample once
