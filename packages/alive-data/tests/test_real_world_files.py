"""The files people have: any container and case, rotation, odd sizes, clashing names, and a writer
that is interrupted or killed. Every clip is made here with PyAV."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from alive_data.cli import main as cli
from alive_data.discovery import SourceItem, key_for, read_manifest, scan_folder
from alive_data.media import decode_clip, decode_video
from alive_data.probes import PROBE_CAPTION, write_av
from alive_data.shards import shard_keys
from alive_data.synthetic import moving_clip, tone
from alive_data.writer import WriteOptions, write_shards

CLIP = moving_clip(24, 0.5, 32, 48)
SOUND = tone(44_100, 0.5, 330)[None]


def _clip(path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_av(
        path, kwargs.pop("frames", CLIP), 24, kwargs.pop("audio", SOUND), kwargs.pop("rate", 44_100), **kwargs
    )
    return path


def _runs(out: Path) -> list[dict]:
    return json.loads((out / "write_report.json").read_text())["runs"]


def _stored(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_discovery_does_not_list_the_reference_images_a_sidecar_uses(tmp_path):
    _clip(tmp_path / "a.mp4")
    (tmp_path / "a.json").write_text(json.dumps({"caption": PROBE_CAPTION, "references": ["a.ref_0.jpg"]}))
    (tmp_path / "a.ref_0.jpg").write_bytes(b"jpeg")
    (tmp_path / "b.ref_0.jpg").write_bytes(b"jpeg")  # listed by no sidecar
    found = scan_folder(tmp_path)
    assert [i.key for i in found.items] == ["a"]
    assert [Path(i["path"]).name for i in found.ignored] == ["b.ref_0.jpg"]


def test_discovery_takes_every_container_in_any_case_and_lists_the_rest(tmp_path):
    src = tmp_path / "src"
    _clip(src / "a.MP4")
    _clip(src / "b.mov")
    _clip(src / "c.MKV")
    _clip(
        src / "d.webm",
        video_codec="libvpx-vp9",
        audio_codec="libopus",
        audio=tone(48_000, 0.5, 330)[None],
        rate=48_000,
    )
    _clip(src / "e.M4V")
    _clip(src / "sub" / "f.mp4")
    for name in ("a.txt", "b.TXT", "c.txt", "d.txt", "e.txt", "sub/f.txt"):
        (src / name).write_text(PROBE_CAPTION)
    (src / "fake.mp4").write_text("not a video at all")
    (src / "fake.txt").write_text(PROBE_CAPTION)
    (src / "notes.pdf").write_bytes(b"%PDF-1.4")
    (src / "orphan.txt").write_text(PROBE_CAPTION)
    assert cli(["write", str(src), str(tmp_path / "out"), "--workers", "0"]) == 0
    [run] = _runs(tmp_path / "out")
    assert run["written"] == 6 and run["skipped"] == {"not_media": 1}
    assert run["bad_samples"][0]["source"].endswith("fake.mp4")
    ignored = {Path(i["path"]).name: i["reason"] for i in run["ignored"]}
    assert ignored == {"notes.pdf": "unknown_extension", "orphan.txt": "orphan_sidecar"}
    stored = _stored(tmp_path / "out")
    assert sorted(stored) == ["a", "b", "c", "d", "e", key_for("sub/f")]
    assert all(set(s) == {"json", "mp4", "flac"} for s in stored.values())


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotated_phone_clip_is_stored_upright(tmp_path, rotation):
    # The scene is portrait (64 high, 48 wide) with a bright block in its top-left corner; the phone
    # stores it turned by -rotation and a display matrix saying "turn by rotation to show".
    scene = np.full((12, 64, 48, 3), 30, np.uint8)
    scene[:, :16, :16] = 230
    stored = np.rot90(scene, -rotation // 90, axes=(1, 2))
    path = _clip(tmp_path / "phone.mp4", frames=stored, rotation=rotation)
    with av.open(str(path)) as container:  # what ffprobe shows: coded size and the display matrix
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (stored.shape[2], stored.shape[1])
        assert frame.rotation % 360 == rotation % 360
    clip = decode_clip(path, 24, 16_000)
    assert clip.frames.shape[1:3] == (64, 48) and clip.rotation == rotation % 360
    assert clip.frames[:, 4:12, 4:12].mean() > 200 and clip.frames[:, -12:, -12:].mean() < 60
    item = SourceItem("phone", str(path), {"caption": PROBE_CAPTION})
    write_shards([item], tmp_path / "out", workers=0, progress=False)
    sample = _stored(tmp_path / "out")["phone"]
    meta = json.loads(sample["json"])
    assert (meta["width"], meta["height"], meta["rotation"]) == (48, 64, rotation % 360)
    upright = decode_video(sample["mp4"], 24)
    assert upright.shape[1:3] == (64, 48) and upright[:, 4:12, 4:12].mean() > 200


def test_odd_sizes_are_cropped_to_even_and_tiny_clips_skipped_by_reason(tmp_path):
    y, x = np.indices((97, 161))
    pattern = 128 + 100 * np.sin(2 * np.pi * x / 23) * np.cos(2 * np.pi * y / 17)
    odd = np.repeat(pattern.astype(np.uint8)[None, ..., None], 12, axis=0).repeat(3, axis=-1)
    _clip(tmp_path / "odd.mp4", frames=odd, pix_fmt="yuv444p")  # H.264 4:4:4 allows odd sides
    _clip(tmp_path / "dot.mp4", frames=np.full((12, 1, 1, 3), 128, np.uint8), pix_fmt="yuv444p")
    items = [SourceItem(k, str(tmp_path / f"{k}.mp4"), {"caption": PROBE_CAPTION}) for k in ("odd", "dot")]
    report = write_shards(items, tmp_path / "out", workers=0, progress=False)
    assert report.written == 1 and report.skipped == {"too_small": 1}
    assert report.bad_samples[0]["key"] == "dot" and "1x1" in report.bad_samples[0]["detail"]
    sample = _stored(tmp_path / "out")["odd"]
    meta = json.loads(sample["json"])
    assert (meta["width"], meta["height"]) == (160, 96)  # the last column and row are dropped
    kept = decode_video(sample["mp4"], 24).astype(float)
    source = decode_clip(tmp_path / "odd.mp4", 24, 16_000).frames[:, :96, :160].astype(float)
    assert np.abs(kept - source).mean() < np.abs(kept - np.roll(source, 1, axis=2)).mean() / 2  # not shifted
    resized = write_shards(
        items[:1], tmp_path / "sized", WriteOptions(size=(48, 80)), workers=0, progress=False
    )
    assert resized.written == 1


def test_keys_are_unique_and_stable_when_names_clash(tmp_path):
    src = tmp_path / "src"
    for name in ("clip é.mp4", "clip ü.mp4", "clip_.mp4", "twin.mp4", "twin.mov", "sub/twin.mp4"):
        _clip(src / name)
        (src / name).with_suffix(".txt").write_text(PROBE_CAPTION)
    keys = [i.key for i in scan_folder(src).items]
    assert len(set(keys)) == 6 and all("." not in k and "/" not in k for k in keys)
    assert "clip_" in keys  # a valid name is its own key
    assert keys == [i.key for i in scan_folder(src).items]  # stable
    assert cli(["write", str(src), str(tmp_path / "out"), "--workers", "0"]) == 0
    assert cli(["write", str(src), str(tmp_path / "out"), "--workers", "0"]) == 0
    first, second = _runs(tmp_path / "out")
    assert first["written"] == 6 and (second["written"], second["already_written"]) == (0, 6)
    assert sorted(_stored(tmp_path / "out")) == sorted(keys)
    manifest = tmp_path / "m.jsonl"
    lines = [{"path": f"src/{n}", "caption": PROBE_CAPTION, "key": "same"} for n in ("twin.mp4", "twin.mov")]
    manifest.write_text("\n".join(json.dumps(x) for x in [*lines, lines[0]]))
    found = read_manifest(manifest)
    assert len({i.key for i in found.items}) == 2 and all(i.key.startswith("same_") for i in found.items)
    assert [i["reason"] for i in found.ignored] == ["duplicate_input"]


def test_write_report_keeps_every_run_even_from_an_older_single_run_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "write_report.json").write_text(json.dumps({"written": 5, "skipped": {}}))  # older format
    item = SourceItem("a", str(_clip(tmp_path / "a.mp4")), {"caption": PROBE_CAPTION})
    write_shards([item], out, workers=0, progress=False)
    write_shards([item], out, workers=0, progress=False)
    runs = _runs(out)
    assert [r["written"] for r in runs] == [5, 1, 0] and runs[2]["already_written"] == 1


def test_a_setup_error_stops_the_run_before_any_worker_starts(tmp_path):
    item = SourceItem("a", str(_clip(tmp_path / "a.mp4")), {"caption": PROBE_CAPTION})
    with pytest.raises(ValueError, match="unknown video codec"):
        write_shards(
            [item], tmp_path / "out", WriteOptions(video_codec="nonsense:x"), workers=2, progress=False
        )
    assert not list((tmp_path / "out").glob("shard-*"))


# -- interrupted and killed writers (real `alive-data write` processes) -------------------------


def _many_clips(src: Path, count: int) -> None:
    """``count`` clips (copies of three different ones) with caption sidecars."""
    src.mkdir(parents=True)
    sound = tone(44_100, 1.0, 330)[None]
    bases = [
        _clip(src / f"base{i}.mp4", frames=moving_clip(24, 1.0, 64, 64, i), audio=sound) for i in range(3)
    ]
    for i in range(count):
        (src / f"clip{i:03d}.mp4").write_bytes(bases[i % 3].read_bytes())
    for path in src.glob("*.mp4"):
        path.with_suffix(".txt").write_text(PROBE_CAPTION)


def _start_writer(src: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "alive_data.cli", "write", str(src), str(out), "--workers", "2"]
    return subprocess.Popen(
        [*command, "--shard-samples", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return parents


def _descendants(pid: int) -> list[int]:
    parents, found, frontier = _parents(), [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _writer_workers(pid: int) -> list[int]:
    """The pool workers under process ``pid``: children of its forkserver."""
    parents = _parents()
    servers = [p for p in _descendants(pid) if b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return [child for child, parent in parents.items() if parent in servers]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_the_writer_keeping_complete_shards_and_a_rerun_finishes(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _many_clips(src, 60)
    writer = _start_writer(src, out)
    _wait_for(lambda: len(list(out.glob("shard-*.tar"))) >= 2, timeout=300)
    workers = _descendants(writer.pid)  # the forkserver, the pool workers, the resource tracker
    writer.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = writer.communicate(timeout=30)
    stopped_after = time.monotonic() - sent
    assert writer.returncode == 130, stderr.decode()[-2000:]
    assert stopped_after < 5.0  # "within a few seconds": the shard is closed, workers are told to exit
    _wait_for(lambda: not [pid for pid in workers if _alive(pid)], timeout=5.0)
    assert "leaked" not in stderr.decode()  # queues and locks were closed, not abandoned
    assert not list(out.glob("*.tmp"))
    stored = _stored(out)
    assert 0 < len(stored) < 63 and all(set(s) == {"json", "mp4", "flac"} for s in stored.values())
    [run] = _runs(out)
    assert run["interrupted"] == "SIGINT" and run["written"] == len(stored)
    assert cli(["write", str(src), str(out), "--workers", "0"]) == 0  # the rerun does the rest
    keys = [k for p in sorted(out.glob("shard-*.tar")) for k in shard_keys(p)]
    assert sorted(keys) == sorted(p.stem for p in src.glob("*.mp4"))  # every clip exactly once


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_writer_is_killed(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _many_clips(src, 60)
    writer = _start_writer(src, out)
    _wait_for(lambda: len(list(out.glob("shard-*.tar"))) >= 1, timeout=300)
    assert len(_writer_workers(writer.pid)) == 2
    workers = _descendants(writer.pid)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=10)
    _wait_for(lambda: not [pid for pid in workers if _alive(pid)], timeout=5.0)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_that_dies_costs_only_its_clips_and_the_run_goes_on(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _many_clips(src, 30)
    items = scan_folder(src).items
    reports = []
    run = threading.Thread(
        target=lambda: reports.append(write_shards(items, out, shard_samples=2, workers=2, progress=False))
    )
    run.start()  # not the main thread: write_shards leaves signal handling alone there
    _wait_for(lambda: len(list(out.glob("shard-*.tar"))) >= 1, timeout=300)
    workers = _writer_workers(os.getpid())
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)  # as the OOM killer would
    run.join(timeout=300)
    [report] = reports
    lost = {b["key"] for b in report.bad_samples if b["reason"] == "worker_died"}
    assert 1 <= len(lost) <= 8 and report.skipped == {"worker_died": len(lost)}  # only those in flight
    assert report.written + len(lost) == len(items)
    assert sorted(_stored(out)) == sorted({i.key for i in items} - lost)
