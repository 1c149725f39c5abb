"""Sound and picture on one clock: sync probes through ``alive-data write`` and back, and the audio
rules (downmix, resampling, clipping, duration check). Every clip is made here with PyAV."""

import json
import tarfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alive_data.avformat import AVFormat
from alive_data.cli import main as cli
from alive_data.discovery import SourceItem
from alive_data.media import decode_clip, encode_flac
from alive_data.probes import (
    PROBE_CAPTION,
    Probe,
    measure_sync,
    offset_bound_ms,
    standard_probes,
    write_av,
    write_probes,
)
from alive_data.samples import load_sample
from alive_data.shards import ShardSink, iter_samples
from alive_data.synthetic import moving_clip
from alive_data.writer import WriteOptions, write_shards
from alive_models.mp4 import encode_mp4

PROBES = standard_probes()
TIMESTAMP_SLACK_MS = 1.0  # containers round timestamps (mp4 edit lists and webm to 1 ms)


@pytest.fixture(scope="module")
def probe_samples(tmp_path_factory) -> dict:
    """Every standard probe written with PyAV, through ``alive-data write``, read back through the
    pipeline's decode path (``load_sample``)."""
    root = tmp_path_factory.mktemp("probes")
    write_probes(root / "src")
    assert cli(["write", str(root / "src"), str(root / "out"), "--workers", "0", "--shard-samples", "6"]) == 0
    urls = sorted(str(p) for p in (root / "out").glob("shard-*.tar"))
    samples = {}
    for raw in iter_samples(urls, on_error=lambda url, exn: pytest.fail(f"{url}: {exn}")):
        samples[raw["__key__"]] = load_sample(raw, AVFormat(24.0, 16_000))
    return samples


@pytest.mark.parametrize("name", list(PROBES))
def test_sync_probe_offsets_are_within_half_a_frame(probe_samples, name):
    probe, sample = PROBES[name], probe_samples[name]
    report = measure_sync(sample.frames, 24.0, sample.audio, 16_000)
    assert report.lost == 0 and report.unmatched_flashes == 0  # every flash lasts one output frame
    assert len(report.offsets_ms) == len(probe.event_times()) >= 20
    assert abs(report.mean_ms) <= 3.0  # no systematic lag
    assert report.worst_ms <= offset_bound_ms(24.0, float(probe.fps)) + TIMESTAMP_SLACK_MS
    assert sample.meta["source_fps"] == pytest.approx(float(probe.fps), rel=1e-3)
    assert len(sample.audio) == round(sample.meta["num_frames"] / 24 * 16_000)


def test_late_streams_are_padded_or_cut_on_the_video_clock(probe_samples):
    late_audio = probe_samples["probe-24fps-audio-late"].meta
    late_video = probe_samples["probe-24fps-video-late"].meta
    # the audio stream's first sample (AAC priming included, 23 ms before its content) is 0.437 s in
    assert late_audio["audio_start"] == pytest.approx(0.437 - 1024 / 44_100, abs=2e-3)
    assert late_audio["audio_padding"] == pytest.approx(late_audio["audio_start"], abs=1e-3)
    # audio began 0.3131 s before the first frame: cut there, and missing for the last 0.3131 s
    assert late_video["audio_start"] == pytest.approx(-0.3131, abs=1e-3)
    assert late_video["audio_padding"] == pytest.approx(0.3131, abs=0.03)  # less the AAC tail padding


def test_events_shorter_than_an_output_frame_may_vanish_but_longer_ones_never(tmp_path):
    # A 60 fps flash lasting one source frame (16.7 ms) can fall between two 24 fps output frames;
    # the same flash stretched to one output frame is always shown. The measurement must tell.
    short = Probe(Fraction(60), flash=1 / 60 - 1e-3, seconds=3.0)
    long = Probe(Fraction(60), flash=1 / 24, seconds=3.0)
    lost = []
    for probe in (short, long):
        path = tmp_path / f"p{len(lost)}.mp4"
        probe.write(path)
        clip = decode_clip(path, 24.0, 16_000)
        lost.append(measure_sync(clip.frames, 24.0, clip.audio, 16_000).lost)
    assert lost[0] > 0 and lost[1] == 0


def _tone(rate: int, seconds: float, hz: float, level: float) -> np.ndarray:
    return (level * np.sin(2 * np.pi * hz * np.arange(round(rate * seconds)) / rate)).astype(np.float32)


def test_downmix_is_the_mean_of_channels_without_gain(tmp_path):
    frames = moving_clip(24, 1.0, 32, 32)
    six = np.repeat(_tone(8_000, 1.0, 440, 0.9)[None], 6, axis=0)  # 5.1 at 8 kHz, every channel alike
    write_av(tmp_path / "six.mkv", frames, 24, six, 8_000, audio_codec="pcm_f32le")
    left_only = np.stack([_tone(44_100, 1.0, 440, 0.8), np.zeros(44_100, np.float32)])
    write_av(tmp_path / "left.mkv", frames, 24, left_only, 44_100, audio_codec="pcm_s16le")
    peaks = [
        np.abs(decode_clip(tmp_path / n, 24, 16_000).audio[200:-200]).max() for n in ("six.mkv", "left.mkv")
    ]
    assert peaks[0] == pytest.approx(0.9, abs=0.01)  # summing would give 5.4 (x3.44 in FFmpeg's matrix)
    assert peaks[1] == pytest.approx(0.4, abs=0.01)  # the mean of 0.8 and 0


def test_resampling_never_clips_and_stored_clipping_is_counted(tmp_path):
    frames = moving_clip(24, 1.0, 32, 32)
    loud = np.repeat(_tone(44_100, 1.0, 440, 1.5)[None], 2, axis=0)  # float audio beyond full scale
    write_av(tmp_path / "loud.mkv", frames, 24, loud, 44_100, audio_codec="pcm_f32le")
    write_av(tmp_path / "quiet.mkv", frames, 24, loud / 2, 44_100, audio_codec="pcm_f32le")
    clip = decode_clip(tmp_path / "loud.mkv", 24, 16_000)
    assert np.abs(clip.audio).max() == pytest.approx(1.5, abs=0.02)  # resampled in float: not clipped
    items = [SourceItem(n, str(tmp_path / f"{n}.mkv"), {"caption": PROBE_CAPTION}) for n in ("loud", "quiet")]
    write_shards(items, tmp_path / "out", workers=0, progress=False)
    with tarfile.open(next((tmp_path / "out").glob("shard-*.tar"))) as tar:
        meta = {n: json.loads(tar.extractfile(f"{n}.json").read()) for n in ("loud", "quiet")}
        stored, _ = sf.read(tar.extractfile("loud.flac"))
    assert meta["loud"]["audio_clipped_samples"] == np.count_nonzero(np.abs(clip.audio) > 1.0) > 1000
    assert meta["quiet"]["audio_clipped_samples"] == 0
    assert np.abs(stored).max() <= 1.0


def _short_audio_mkv(path: Path) -> None:
    """5 frames at 24 fps (0.208 s) with 0.076 s of audio."""
    write_av(
        path,
        moving_clip(24, 5 / 24, 32, 32),
        24,
        np.zeros((1, 1216), np.float32),
        16_000,
        audio_codec="pcm_s16le",
    )


def test_audio_shorter_than_video_is_a_counted_skip_with_its_reason(tmp_path):
    _short_audio_mkv(tmp_path / "short.mkv")
    item = SourceItem("short", str(tmp_path / "short.mkv"), {"caption": PROBE_CAPTION})
    report = write_shards([item], tmp_path / "strict", workers=0, progress=False)
    assert report.written == 0 and report.skipped == {"short_audio": 1}
    assert "0.076 s of audio for 0.208 s of video" in report.bad_samples[0]["detail"]
    lenient = write_shards(
        [item], tmp_path / "lenient", WriteOptions(max_audio_shortfall=0.2), workers=0, progress=False
    )
    assert lenient.written == 1  # the tolerance is an option


def test_inspect_decode_reports_audio_shorter_than_video(tmp_path, capsys):
    frames = moving_clip(24, 1.0, 32, 32)
    sink = ShardSink(tmp_path, 0, 1 << 30)
    for key, seconds in (("good", 1.0), ("short", 0.7)):
        meta = {"caption": PROBE_CAPTION, "fps": 24.0, "duration": 1.0, "width": 32, "height": 32}
        audio = encode_flac(np.zeros(round(16_000 * seconds), np.float32), 16_000)
        sink.write(
            {"__key__": key, "json": json.dumps(meta).encode(), "mp4": encode_mp4(frames, 24), "flac": audio}
        )
    sink.finish()
    assert cli(["inspect", str(tmp_path)]) == 0  # metadata alone cannot tell
    assert "2 valid" in capsys.readouterr().out
    assert cli(["inspect", str(tmp_path), "--decode", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] == 1 and report["bad"] == {"short_audio": 1}
    assert report["bad_samples"][0]["key"] == "short"
