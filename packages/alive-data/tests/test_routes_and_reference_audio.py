"""Exchange routes per sample (seed 002 Dynamic Context Routing) and reference audio (seed 004 TR2AV)."""

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from alive_data.avformat import AVFormat
from alive_data.batch import AVBatch
from alive_data.discovery import SourceItem, scan_folder
from alive_data.loader import ResumableLoader
from alive_data.media import encode_flac, read_audio_file
from alive_data.pipeline import PipelineConfig
from alive_data.stream import AVStream
from alive_data.synthetic import make_clips, tone
from alive_data.tasks import CCL_TASK_MIX, TASKS, TaskConfig
from alive_data.world import write_source_folder
from alive_data.world.analysis import decode_speech
from alive_data.world.config import DEFAULT_CONFIG
from alive_data.writer import WriteOptions, write_shards
from alive_models.codecs import audio_codec_from_spec, video_codec_from_spec
from alive_models.fusion import TASK_ROUTES

RATE = 16_000
WINDOW = round(25 / 24 * RATE)  # samples of a 25-frame target window at 24 fps: 16667


def batches_of(config: dict, workers: int = 0) -> list[AVBatch]:
    return list(ResumableLoader(AVStream(PipelineConfig.from_dict(config)), num_workers=workers))


def raw_samples(shard_dir: Path) -> dict[str, dict]:
    return {
        s["__key__"]: s
        for shard in sorted(shard_dir.glob("*.tar"))
        for s in wds.WebDataset(str(shard), shardshuffle=False)
    }


def add_reference_audio(shard_dir: Path, out_dir: Path, seconds_for) -> None:
    """Rewrite the shards with a ``ref_audio.flac`` member (a tone of ``seconds_for(index)`` s, its
    own pitch per sample) added to the samples where that is not None."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = 0
    for shard in sorted(shard_dir.glob("shard-*.tar")):
        with wds.TarWriter(str(out_dir / shard.name)) as sink:
            for sample in wds.WebDataset(str(shard), shardshuffle=False):
                members = {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
                seconds = seconds_for(index)
                if seconds is not None:
                    members["ref_audio.flac"] = encode_flac(tone(RATE, seconds, 400 + 25 * index), RATE)
                sink.write(members)
                index += 1


def find_segment(reference: np.ndarray, source: np.ndarray, lowest: int = 0) -> int:
    """The start at which ``reference`` is an exact slice of ``source`` (at or after ``lowest``)."""
    n = len(reference)
    starts = [s for s in range(lowest, len(source) - n + 1) if np.array_equal(source[s : s + n], reference)]
    assert starts, "the reference audio is no slice of its source"
    return starts[0]


# --- routes -------------------------------------------------------------------------------------


def test_every_task_takes_its_routes_from_the_model_table():
    assert set(TASKS) == set(TASK_ROUTES)
    for name, spec in TASKS.items():
        assert spec.route == TASK_ROUTES[name], name
    assert (TASKS["a2v"].route.video_reads_audio, TASKS["a2v"].route.audio_reads_video) == (True, False)
    assert (TASKS["v2a"].route.video_reads_audio, TASKS["v2a"].route.audio_reads_video) == (False, True)
    assert not TASKS["t2v_t2a"].mutual and TASKS["t2v_t2a"].video_loss and TASKS["t2v_t2a"].audio_loss
    assert TASKS["tr2av"].reference_audio and TASKS["tr2av"].mutual


def test_ccl_task_mix_probabilities():
    config = TaskConfig(probabilities=CCL_TASK_MIX, mutual_dropout=0.0)
    keys = [f"k{i}" for i in range(4000)]
    mix = Counter(config.assign(0, 0, k, False)[0] for k in keys)
    assert mix.keys() == {"t2v_t2a", "a2v", "v2a", "t2va"}
    for name, p in CCL_TASK_MIX.items():
        assert abs(mix[name] / 4000 - p) < 0.03, (name, mix)
    assert sum(CCL_TASK_MIX.values()) == pytest.approx(1.0)


def test_batches_carry_each_samples_routes(shards, config_for):
    config = config_for(
        shards,
        tasks={"probabilities": CCL_TASK_MIX, "mutual_dropout": 0.5, "caption_dropout": 0.0},
        buckets={"batch_size": 4, "resolutions": [[32, 48], [48, 32], [40, 40]], "frames": [25]},
    )
    seen = Counter()
    for b in batches_of(config, workers=2):
        assert b.video_reads_audio.dtype == torch.bool and b.video_reads_audio.shape == (b.batch_size,)
        for i, task in enumerate(b.tasks):
            route = TASK_ROUTES[task]
            mutual = bool(b.mutual[i])
            expected = (route.video_reads_audio and mutual, route.audio_reads_video and mutual)
            assert (bool(b.video_reads_audio[i]), bool(b.audio_reads_video[i])) == expected, task
            if task in ("a2v", "v2a"):
                assert mutual  # the exchange carries their condition: never dropped
            seen[(task, expected)] += 1
    assert {t for t, _ in seen} == set(CCL_TASK_MIX)
    assert seen[("t2va", (False, False))] and seen[("t2va", (True, True))]  # mutual dropout on t2va
    assert seen[("a2v", (True, False))] and seen[("v2a", (False, True))] and seen[("t2v_t2a", (False, False))]


def test_a_batch_built_without_routes_follows_mutual(shards, config_for):
    b = batches_of(config_for(shards))[0]
    fields = {**vars(b), "video_reads_audio": None, "audio_reads_video": None, "reference_audio": None}
    fields["reference_audio_lengths"] = None
    old = AVBatch(**fields)
    assert torch.equal(old.video_reads_audio, b.mutual) and torch.equal(old.audio_reads_video, b.mutual)
    assert old.reference_audio.shape == (b.batch_size, 0) and not old.reference_audio_mask.any()
    moved = b.to("meta")
    assert (
        moved.video_reads_audio.device.type == "meta" and moved.reference_audio_lengths.device.type == "meta"
    )
    with pytest.raises(ValueError, match="batch's form"):
        AVBatch(**{**vars(b), "reference_audio_latent": torch.zeros(b.batch_size, 4, 3)})


# --- reference audio ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_ref_audio(tmp_path_factory, shards):
    """The shared shards (1.2 s clips), even samples with a 1.5 s ``ref_audio.flac``."""
    out = tmp_path_factory.mktemp("ref_audio")
    add_reference_audio(shards, out, lambda i: 1.5 if i % 2 == 0 else None)
    return out


def test_a_bucket_mixing_reference_audio_and_plain_samples(with_ref_audio, config_for):
    """TR2AV where a sample has reference audio, T2VA where it has none (its clip is too short to
    offer a segment outside the target window), in one bucket, padded, per-sample lengths."""
    config = config_for(
        with_ref_audio,
        tasks={"reference_audio_prob": 1.0, "caption_dropout": 0.0, "reference_audio_max_seconds": 1.25},
        buckets={"batch_size": 3, "resolutions": [[32, 48]], "frames": [25]},
    )
    raw = raw_samples(with_ref_audio)
    batches = batches_of(config)
    assert sum(b.batch_size for b in batches) == 24
    counts, mixed = Counter(), 0
    for b in batches:
        assert b.reference_audio.dtype == torch.float32 and b.reference_audio_lengths.dtype == torch.int64
        assert b.reference_audio.shape[1] == int(b.reference_audio_lengths.max())
        mixed += len(set(b.tasks)) > 1
        for i, (key, task) in enumerate(zip(b.keys, b.tasks, strict=True)):
            n = int(b.reference_audio_lengths[i])
            has = "ref_audio.flac" in raw[key]
            assert task == ("tr2av" if has else "t2va")
            assert n == (20_000 if has else 0)  # clipped to the 1.25 s maximum
            assert b.reference_audio_mask[i].sum() == n and not b.reference_audio[i, n:].any()
            if has:  # a slice of the member's own waveform, nothing of another sample's
                source, _ = read_audio_file(raw[key]["ref_audio.flac"])
                assert find_segment(b.reference_audio[i, :n].numpy(), source) <= len(source) - n
            counts[task] += 1
    assert counts == {"tr2av": 12, "t2va": 12} and mixed > 0


def test_a_fixed_tr2av_mix_skips_samples_without_reference_audio(with_ref_audio, config_for):
    config = config_for(
        with_ref_audio,
        tasks={"probabilities": {"tr2av": 1.0}},
        buckets={"batch_size": 1, "resolutions": [[32, 48]], "frames": [25]},
    )
    loader = ResumableLoader(AVStream(PipelineConfig.from_dict(config)))
    assert all(b.tasks == ["tr2av"] and b.reference_audio_lengths.item() > 0 for b in loader)
    assert loader.stats() == {"kept": 12, "no_reference_audio": 12, "partial_batch": 0}


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory) -> Path:
    """Six 2.5 s clips (a 25-frame window leaves 1.46 s of the clip outside it), no reference member."""
    root = tmp_path_factory.mktemp("long")
    items = make_clips(root / "src", 6, prefix="long", seconds=2.5)
    write_shards(items, root / "shards", WriteOptions(), shard_samples=3, workers=0, progress=False)
    return root / "shards"


def test_reference_audio_from_the_same_clip_lies_outside_the_target_window(long_clips, config_for):
    config = config_for(
        long_clips,
        tasks={"probabilities": {"tr2av": 1.0}, "reference_audio_max_seconds": 1.0, "caption_dropout": 0.0},
        buckets={"batch_size": 2, "resolutions": [[32, 48], [48, 32], [40, 40]], "frames": [25]},
    )
    raw = raw_samples(long_clips)
    batches = batches_of(config)
    assert sum(b.batch_size for b in batches) == 6
    starts = []
    for b in batches:
        assert b.tasks == ["tr2av"] * b.batch_size and (b.reference_audio_lengths == RATE).all()
        for i, key in enumerate(b.keys):
            clip_audio, _ = read_audio_file(raw[key]["flac"])  # sample 0 = the first frame
            start = find_segment(b.reference_audio[i].numpy(), clip_audio)
            # The target window is the clip's first 25 frames (1041.7 ms): the reference starts after it.
            start_ms, window_ms = 1000 * start / RATE, 1000 * WINDOW / RATE
            assert start_ms >= window_ms - 1e-6, (key, start_ms, window_ms)
            starts.append(start)
    assert len(set(starts)) > 1  # a hashed offset within the rest of the clip, not always the same
    # Deterministic: the same references on a second pass (and after a resume, see below).
    again = batches_of(config)
    assert all(torch.equal(a.reference_audio, b.reference_audio) for a, b in zip(batches, again, strict=True))


def test_resume_reproduces_reference_audio(with_ref_audio, config_for):
    config = config_for(
        with_ref_audio,
        tasks={"reference_audio_prob": 0.7, "mutual_dropout": 0.3},
        buckets={"batch_size": 2, "resolutions": [[32, 48]], "frames": [25]},
    )
    full = batches_of(config)
    loader = ResumableLoader(AVStream(PipelineConfig.from_dict(config)))
    produced = []
    for batch in loader:
        produced.append(batch)
        if len(produced) == 4:
            break
    resumed = ResumableLoader(AVStream(PipelineConfig.from_dict(config)))
    resumed.load_state_dict(json.loads(json.dumps(produced[-1].loader_state)))
    rest = produced + list(resumed)
    assert [b.keys for b in rest] == [b.keys for b in full]
    for a, b in zip(rest, full, strict=True):
        assert a.tasks == b.tasks and torch.equal(a.reference_audio, b.reference_audio)
        assert torch.equal(a.video_reads_audio, b.video_reads_audio)


def test_cached_latents_carry_reference_audio_latents(tmp_path):
    """The writer caches the reference's latents beside the clip's; a sample without a reference
    member gets a segment of its own cached audio latent after the target window."""
    video, audio = "deterministic:spatial_stride=8,temporal_stride=4", "deterministic:hop_length=640"
    items = make_clips(tmp_path / "src", 4, prefix="lat", seconds=2.5)
    with_ref = []
    for i, item in enumerate(items):
        meta = dict(item.metadata)
        if i % 2 == 0:
            name = f"{item.key}.voice.flac"
            (Path(item.path).parent / name).write_bytes(encode_flac(tone(44_100, 1.2, 300 + 50 * i), 44_100))
            meta["reference_audio"] = name
        with_ref.append(SourceItem(item.key, item.path, meta))
    options = WriteOptions(size=(32, 48), video_codec=video, audio_codec=audio)
    write_shards(with_ref, tmp_path / "cached", options, workers=0, progress=False)
    raw = raw_samples(tmp_path / "cached")
    codec = audio_codec_from_spec(audio)
    fmt = AVFormat.from_codecs(24, video_codec_from_spec(video), codec)
    config = {
        "sources": [{"name": "a", "urls": str(tmp_path / "cached")}],
        "format": fmt.to_dict(),
        "latents": {"video": video, "audio": audio},
        "tasks": {"probabilities": {"tr2av": 1.0}, "reference_audio_max_seconds": 1.0},
        "buckets": {"batch_size": 2, "latent_frames": [7]},  # 25 frames: 27 audio latents
    }
    batches = batches_of(config)
    assert sum(b.batch_size for b in batches) == 4
    for b in batches:
        assert b.reference_audio is None and b.reference_audio_latent.shape[:2] == (
            2,
            codec.geometry.channels,
        )
        for i, key in enumerate(b.keys):
            n = int(b.reference_audio_lengths[i])
            ref = b.reference_audio_latent[i, :, :n].numpy()
            meta = json.loads(raw[key]["json"])
            if "ref_audio_latent.npy" in raw[key]:  # 1.2 s voice file -> 30 latents, clipped to 25 (1 s)
                assert meta["reference_audio_seconds"] == pytest.approx(1.2)
                cached = np.load(io.BytesIO(raw[key]["ref_audio_latent.npy"])).astype(np.float32)
                assert cached.shape == (codec.geometry.channels, 30) and n == 25
                assert any(np.array_equal(cached[:, s : s + n], ref) for s in range(6))
            else:  # the clip's own audio latents after the 27 of the target window
                own = np.load(io.BytesIO(raw[key]["audio_latent.npy"])).astype(np.float32)
                assert n == 25 and any(
                    np.array_equal(own[:, s : s + n], ref) for s in range(27, own.shape[1] - n + 1)
                )


# --- the synthetic world ------------------------------------------------------------------------


def test_world_reference_audio_is_another_utterance_of_the_same_speaker(tmp_path):
    src = tmp_path / "src"
    mp4s = write_source_folder(src, 5, seed=3, workers=0)
    found = scan_folder(src)
    # The .ref_audio.flac files are companions, not strays (labels.json is the world's keyword table).
    assert [Path(i["path"]).name for i in found.ignored] == ["labels.json"]
    speaking = 0
    for path in mp4s:
        meta = json.loads(path.with_suffix(".json").read_text())
        utterance = meta["world"].get("reference_utterance")
        scene = meta["world"]["scene"]
        assert (utterance is not None) == bool(scene["utterances"])
        if utterance is None:
            assert "reference_audio" not in meta
            continue
        speaking += 1
        wave, rate = read_audio_file((src / meta["reference_audio"]).read_bytes())
        assert rate == DEFAULT_CONFIG.sample_rate
        heard = decode_speech(wave, DEFAULT_CONFIG)
        first = scene["utterances"][0]["subject"]
        voice = next(s["voice"] for s in scene["subjects"] if s["id"] == first)
        assert utterance["subject"] == first and utterance["voice"] == voice
        assert heard.text == " ".join(utterance["words"])  # what it says, exactly
        assert {v for *_, v in heard.letters} == {voice}  # in the speaker's register
        said = {w for u in scene["utterances"] for w in u["words"]}
        assert not set(utterance["words"]) & said  # other words than the clip's
    assert speaking >= 2
    # Through the writer: a ref_audio.flac member, its length in the metadata.
    report = write_shards(found.items, tmp_path / "shards", workers=0, progress=False)
    assert report.written == 5 and not report.skipped
    raw = raw_samples(tmp_path / "shards")
    for sample in raw.values():
        meta = json.loads(sample["json"])
        if meta["world"].get("reference_utterance"):
            wave, _ = read_audio_file(sample["ref_audio.flac"])
            assert meta["reference_audio_seconds"] == pytest.approx(len(wave) / RATE)
            assert "reference_audio" not in meta  # the source path does not travel into the shard
        else:
            assert "ref_audio.flac" not in sample


def test_writer_counts_a_missing_reference_audio_file(tmp_path):
    mp4s = write_source_folder(tmp_path, 6, seed=3, workers=0)
    with_voice = [p for p in mp4s if (tmp_path / f"{p.stem}.ref_audio.flac").exists()]
    (tmp_path / f"{with_voice[0].stem}.ref_audio.flac").unlink()
    report = write_shards(scan_folder(tmp_path).items, tmp_path / "out", workers=0, progress=False)
    assert report.written == 5 and report.skipped == {"missing_file": 1}
