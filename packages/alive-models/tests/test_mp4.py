"""alive_models.mp4: sync through the muxer measured in milliseconds, lengths, layouts, atomic writes."""

from fractions import Fraction

import av
import numpy as np
import pytest

from alive_models.mp4 import encode_mp4, frame_rate, write_mp4


def read_back(path):
    """Decode like a player that honours timestamps: each video frame at its pts; each audio frame's
    samples placed at its pts (the edit list has already removed the priming), the track cut at the
    stream's end (start + duration, also from the edit list)."""
    with av.open(str(path)) as container:
        vs = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(vs):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(frame.pts * frame.time_base)
        rate = vs.average_rate
        video_duration = vs.duration * vs.time_base
    with av.open(str(path)) as container:
        st = container.streams.audio[0]
        sr = st.rate
        assert st.time_base == Fraction(1, sr)
        end = st.start_time + st.duration
        pieces = []
        for frame in container.decode(st):
            x = frame.to_ndarray()
            pieces.append((frame.pts, x.T if frame.format.is_planar else x.reshape(-1, st.channels)))
        channels = st.channels
    raw = max(p + len(x) for p, x in pieces)
    audio = np.zeros((raw, channels), np.float32)
    for pts, x in pieces:
        audio[pts : pts + len(x)] = x
    return np.stack(frames), times, rate, video_duration, audio[:end], raw, sr


def burst_clip(fps, sr, num_frames, flash, channels=1, size=(32, 48), hot_channel=0):
    """A black clip with one white frame and a 20 ms noise burst starting at that frame's time."""
    rate = frame_rate(fps)
    frames = np.zeros((num_frames, *size, 3), np.uint8)
    frames[flash] = 255
    n = int(num_frames / rate * sr)
    audio = np.zeros((n, channels), np.float32)
    start = round(flash / rate * sr)
    burst = np.random.default_rng(0).uniform(-0.8, 0.8, int(0.02 * sr)).astype(np.float32)
    audio[start : start + len(burst), hot_channel] = burst
    return frames, audio, start, burst


def lag_samples(decoded, reference, around, search):
    """Lag (samples) of ``reference``'s burst in ``decoded``, by cross-correlation around ``around``."""
    lags = np.arange(-search, search + 1)
    lo = around - search
    seg = decoded[lo : lo + len(reference) + 2 * search]
    scores = np.correlate(seg, reference, mode="valid")
    return int(lags[np.argmax(scores)])


@pytest.mark.parametrize(
    ("fps", "sr", "channels", "num_frames"),
    [(24, 16_000, 1, 49), (Fraction(30000, 1001), 48_000, 2, 61), (25, 44_100, 6, 40)],
)
def test_sound_and_picture_stay_in_sync_through_aac(tmp_path, fps, sr, channels, num_frames):
    flash = num_frames // 2
    hot = channels - 1
    frames, audio, start, burst = burst_clip(fps, sr, num_frames, flash, channels, hot_channel=hot)
    path = write_mp4(tmp_path / "clip.mp4", frames, fps, audio.squeeze(1) if channels == 1 else audio, sr)

    video, times, rate, video_duration, decoded, raw, got_sr = read_back(path)
    rate_in = frame_rate(fps)
    # Frame count, frame rate, durations, audio length: exact.
    assert len(video) == num_frames and rate == rate_in and got_sr == sr
    assert video_duration == Fraction(num_frames) / rate_in
    assert decoded.shape == (len(audio), channels)
    assert raw > len(audio)  # FFmpeg's decoder returns the padded tail; the edit list says where it ends
    # The flash is where it was put.
    bright = [i for i, f in enumerate(video) if f.mean() > 128]
    assert bright == [flash] and times[flash] == Fraction(flash) / rate_in
    # Audio offset: the burst's lag in the decoded track, in milliseconds.
    lag = lag_samples(decoded[:, hot], burst, start, search=2048)
    offset_ms = 1000 * lag / sr
    frame_ms = 1000 / float(rate_in)
    assert abs(offset_ms) < 0.05 * frame_ms, f"audio is {offset_ms:.2f} ms off the picture"
    assert abs(lag) <= 1
    # Channel order survives: the burst is on the hot channel only.
    if channels > 1:
        energy = (decoded[start : start + len(burst)] ** 2).sum(axis=0)
        assert energy.argmax() == hot and energy[hot] > 100 * energy[:hot].max()


def test_encode_mp4_bytes_match_the_file_layout_except_faststart(tmp_path):
    frames, audio, *_ = burst_clip(24, 16_000, 9, 4)
    data = encode_mp4(frames, 24, audio[:, 0], 16_000)
    path = tmp_path / "bytes.mp4"
    path.write_bytes(data)
    video, _, rate, _, decoded, _, _ = read_back(path)
    assert len(video) == 9 and rate == 24 and len(decoded) == len(audio)
    assert data[4:8] == b"ftyp"


def test_video_only(tmp_path):
    frames = np.full((5, 16, 16, 3), 90, np.uint8)
    path = write_mp4(tmp_path / "silent.mp4", frames, 12)
    with av.open(str(path)) as container:
        assert not container.streams.audio
        assert sum(1 for _ in container.decode(video=0)) == 5


def test_colours_survive_round_trip(tmp_path):
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    frames[:, :16] = [200, 30, 40]
    frames[:, 16:] = [20, 180, 90]
    video, *_ = read_back(write_mp4(tmp_path / "c.mp4", frames, 24, np.zeros(2000, np.float32)))
    assert np.abs(video[:, 4:12].astype(int) - [200, 30, 40]).max() <= 6
    assert np.abs(video[:, 20:28].astype(int) - [20, 180, 90]).max() <= 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frames": np.zeros((2, 15, 16, 3), np.uint8)}, "even sides"),
        ({"frames": np.zeros((2, 16, 16, 3), np.float32)}, "uint8"),
        ({"frames": np.zeros((0, 16, 16, 3), np.uint8)}, "no frames"),
        ({"sample_rate": 16_001}, "cannot encode 16001 Hz"),
        ({"audio": np.zeros((2, 3000), np.float32)}, "needs a transpose"),
        ({"audio": np.full(100, np.nan, np.float32)}, "non-finite"),
        ({"fps": 0}, "positive"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, kwargs, message):
    args = {
        "frames": np.zeros((2, 16, 16, 3), np.uint8),
        "fps": 24,
        "audio": np.zeros(1000, np.float32),
        "sample_rate": 16_000,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        write_mp4(tmp_path / "x.mp4", **args)
    assert list(tmp_path.iterdir()) == []


class FailsMidway(np.ndarray):
    """Frames whose producer dies after the first frame, while the muxer is writing."""

    def __iter__(self):
        yield np.asarray(self[0])
        raise RuntimeError("killed while writing")


def test_failure_mid_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "keep.mp4"
    target.write_bytes(b"previous result")
    frames = np.zeros((4, 16, 16, 3), np.uint8).view(FailsMidway)
    with pytest.raises(RuntimeError, match="killed"):
        write_mp4(target, frames, 24, np.zeros(3000, np.float32))
    assert target.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mp4"]


def test_frame_rate_recovers_ntsc():
    assert frame_rate(30000 / 1001) == Fraction(30000, 1001)
    assert frame_rate(24.0) == 24 and frame_rate(Fraction(25, 1)) == 25
