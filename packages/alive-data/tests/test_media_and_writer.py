import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest

from alive_data.cli import main as cli
from alive_data.discovery import SourceItem, read_manifest, scan_folder
from alive_data.media import MediaError, decode_clip, decode_video, encode_flac
from alive_data.probes import click_times
from alive_data.shards import shard_keys
from alive_data.synthetic import SPEECH_CAPTION as SPEECH
from alive_data.synthetic import make_clips, moving_clip, tone
from alive_data.writer import WriteOptions, write_shards
from alive_models.mp4 import encode_mp4


def test_video_is_resampled_to_24fps_by_nearest_frame_centre():
    # 30 fps source, 1 s: frame k covers [k/30, (k+1)/30) and has brightness offset 5k. Output frame
    # j covers [j/24, (j+1)/24); it must show the source frame whose centre is nearest its centre,
    # i.e. the one containing (j + 0.5)/24: floor((j + 0.5) * 30 / 24).
    data = encode_mp4(moving_clip(30, 1.0, 32, 32, 0), 30)
    frames = decode_video(data, 24)
    assert len(frames) == 24
    nearest = [math.floor((j + 0.5) * 30 / 24) for j in range(24)]
    measured = [round(float(f[0, 0, 0]) / 5) for f in frames]
    assert measured == nearest
    assert nearest != [math.floor(j * 30 / 24) for j in range(24)]  # not "latest frame at or before"


def test_audio_is_mono_16k_on_the_video_range_and_flac_is_exact():
    sound = tone(44_100, 1.0, 440)
    sound[22_050:22_100] += 0.5  # a click at 0.5 s: AAC priming left in would move it 23 ms late
    data = encode_mp4(moving_clip(24, 1.0, 32, 32, 0), 24, sound, 44_100)
    clip = decode_clip(data, 24, 16_000)
    assert clip.sample_rate == 16_000 and len(clip.frames) == 24
    assert len(clip.audio) == 16_000  # exactly the 24 frames' second, AAC priming and padding removed
    [click] = click_times(clip.audio - tone(16_000, 1.0, 440), 16_000, threshold=0.3)
    assert abs(click - 22_075 / 44_100) < 0.5e-3
    wave = tone(16_000, 0.95, 300)
    exact = decode_clip(data, 24, 16_000, audio=encode_flac(wave, 16_000)).audio
    assert len(exact) == 16_000  # padded with 0.05 s of silence to the video's range
    np.testing.assert_allclose(exact[: len(wave)], wave, atol=1 / 32768 + 1e-6)  # 16-bit FLAC
    assert not exact[len(wave) :].any()
    with pytest.raises(MediaError) as info:
        decode_clip(data, 24, 16_000, audio=encode_flac(wave, 22_050))
    assert info.value.reason == "wrong_sample_rate"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"garbage", "undecodable_video"),
        (encode_mp4(moving_clip(24, 0.5, 32, 32, 0), 24), "no_audio"),
    ],
)
def test_broken_media_has_a_reason(data, reason):
    with pytest.raises(MediaError) as info:
        decode_clip(data, 24, 16_000)
    assert info.value.reason == reason


def test_truncated_mp4_is_a_counted_skip(tmp_path):
    items = make_clips(tmp_path / "src", 2)
    good = Path(items[0].path).read_bytes()
    truncated = tmp_path / "src" / "cut.mp4"
    truncated.write_bytes(good[: len(good) // 3])
    items.append(SourceItem("cut", str(truncated), {"caption": SPEECH}))
    report = write_shards(items, tmp_path / "out", WriteOptions(), workers=0, progress=False)
    assert report.written == 2 and sum(report.skipped.values()) == 1
    assert report.bad_samples[0]["key"] == "cut"


def test_folder_and_manifest_sources(tmp_path):
    (tmp_path / "a.mp4").write_bytes(encode_mp4(moving_clip(24, 0.5, 32, 32, 0), 24, tone(16_000, 0.5, 300)))
    (tmp_path / "a.txt").write_text(SPEECH)
    (tmp_path / "b.mp4").write_bytes(b"x")
    (tmp_path / "b.json").write_text("{broken")
    found = scan_folder(tmp_path)
    assert [(i.key, i.metadata) for i in found.items] == [("a", {"caption": SPEECH})]
    assert [(Path(i["path"]).name, i["reason"]) for i in found.ignored] == [("b.mp4", "malformed_sidecar")]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "a.mp4", "caption": SPEECH, "key": "x.y"}) + "\nnot json\n\n")
    read = read_manifest(manifest)
    assert read.items[0].key.startswith("x_y_") and read.items[0].path == str(tmp_path / "a.mp4")
    assert read.ignored[0]["reason"] == "invalid_manifest_line" and read.ignored[0]["path"].endswith(":2")


def test_writer_is_atomic_resumable_and_reports(tmp_path, clips):
    out = tmp_path / "out"
    first = write_shards(clips[:7], out, WriteOptions(), shard_samples=3, workers=0, progress=False)
    assert first.written == 7 and len(first.shards) == 3  # 3 + 3 + 1
    (out / "shard-000099.tar.tmp").write_bytes(b"half a shard")  # an interrupted run's leftover
    second = write_shards(clips[:10], out, WriteOptions(), shard_samples=3, workers=0, progress=False)
    assert second.already_written == 7 and second.written == 3
    assert not list(out.glob("*.tmp"))
    keys = [k for p in sorted(out.glob("shard-*.tar")) for k in shard_keys(p)]
    assert sorted(keys) == sorted(c.key for c in clips[:10])  # every clip exactly once
    runs = json.loads((out / "write_report.json").read_text())["runs"]
    assert [(r["written"], r["already_written"]) for r in runs] == [(7, 0), (3, 7)]  # every run kept
    assert all(r["started"] <= r["finished"] for r in runs) and runs[0]["finished"] <= runs[1]["started"]
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert {n.split(".", 1)[1] for n in names} == {"json", "mp4", "flac"}


def test_metadata_is_derived_and_validated(tmp_path, clips):
    write_shards(clips[:2], tmp_path, WriteOptions(size=(32, 48)), workers=0, progress=False)
    with tarfile.open(next(tmp_path.glob("shard-*.tar"))) as tar:
        meta = json.loads(tar.extractfile(f"{clips[0].key}.json").read())
    assert meta["fps"] == 24 and (meta["width"], meta["height"]) == (48, 32)
    assert meta["speaking"] is True and meta["num_frames"] == round(1.2 * 24)
    assert ["Animals", "Pets", "dog", "barking"] in meta["labels"]
    assert meta["category"] == {"l1": "Animals", "l2": "Pets", "l3": "dog"}
    assert meta["audio_samples"] == round(meta["num_frames"] / 24 * 16_000)


def test_cli_write_and_inspect(tmp_path, clips, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for item in clips[:4]:
        (src / f"{item.key}.mp4").write_bytes(Path(item.path).read_bytes())
        (src / f"{item.key}.json").write_text(json.dumps(item.metadata))
    (src / "bad.mp4").write_bytes(b"nope")
    (src / "bad.txt").write_text(SPEECH)
    assert cli(["write", str(src), str(tmp_path / "out"), "--workers", "0", "--shard-size", "100KB"]) == 0
    assert "4 written" in capsys.readouterr().out
    assert cli(["inspect", str(tmp_path / "out"), "--decode", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] == 4 and report["resolutions"] == {"64x48": 2, "48x64": 1, "64x64": 1}
    assert report["speaking"] == {"speaking": 2, "non-speaking": 2}
    assert cli(["inspect", str(tmp_path / "nothing-*.tar")]) == 2
