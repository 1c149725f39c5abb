"""Audio-video sync probes: clips with white flashes and 5 ms clicks at the same known times, and the
measurement of each event's audio-video offset after a round trip through the writer and decoder.

A probe is written with PyAV directly (not with this package's encoder), with explicit timestamps so
that either stream can start late on the container clock. Event times are spread over sub-frame
phases (never on frame boundaries). A flash whitens every source frame that overlaps the interval
``[t - flash/2, t + flash/2)`` around the event time t, so it lasts at least ``flash`` seconds in
the source (default one 24 fps output frame: never lost by the conversion); a click is a 5 ms
Hann-windowed 2 kHz burst centred on t in every channel.

Measuring: a flash's time is the mean centre of its white frames ([f/fps, (f+1)/fps), frame centre
(f + 0.5)/fps, as in ``alive_models.geometry``); a click's time is the energy centroid of its burst.
Offset = picture - sound (positive: the picture is late). Half a source frame (where the source
saw the flash) plus half an output frame (which output frame shows it) is the most a correct
pipeline can be off by on one event; over many events the mean is near zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

PROBE_CAPTION = (
    "Subjects: Subject1: A white light. Visual: A dark room where a lamp flashes white. "
    "Narration: Each flash comes with a short click <I>click</I>."
)
_CONTAINERS = {"mp4": "mp4", "m4v": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm", "ts": "mpegts"}
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
_VIDEO_TIME_BASE = Fraction(1, 90_000)
_CLICK_SECONDS, _CLICK_HZ, _CLICK_LEVEL = 0.005, 2000.0, 0.7
_DARK, _WHITE = 24, 235


@dataclass(frozen=True)
class Probe:
    """A sync probe clip: ``seconds`` of video and of audio, each stream starting at its delay."""

    fps: Fraction
    audio_delay: float = 0.0  # first audio sample on the container clock, s
    video_delay: float = 0.0  # first video frame on the container clock, s
    seconds: float = 6.0
    extension: str = "mp4"  # mp4, mov, mkv, webm or ts (MPEG-TS adds its own 1.4 s start offset)
    video_codec: str = "libx264"  # B-frames on: frames are reordered between decode and display
    audio_codec: str = "aac"  # AAC's priming is removed through the container's edit list
    sample_rate: int = 44_100
    channels: int = 2
    size: tuple[int, int] = (48, 64)  # height, width
    flash: float = 1 / 24  # seconds of the flash interval

    def event_times(self) -> list[float]:
        """Event times on the container clock: inside both streams, at varied sub-frame phases."""
        low = max(self.audio_delay, self.video_delay) + 0.15
        high = min(self.audio_delay, self.video_delay) + self.seconds - 0.15
        step = 0.2 + 0.0137 * math.sqrt(2)  # irrational against every frame and sample period
        return [float(t) for t in np.arange(low, high, step)]

    def video(self) -> np.ndarray:
        """uint8 [N, H, W, 3]: a dim moving gradient, white on the frames that see a flash."""
        count = math.floor(self.seconds * self.fps)
        height, width = self.size
        gradient = (np.indices((height, width)).sum(0) % 16).astype(np.uint8)
        frames = np.empty((count, height, width, 3), np.uint8)
        starts = np.arange(count) / float(self.fps)
        ends = starts + 1 / float(self.fps)
        events = np.asarray(self.event_times()) - self.video_delay
        for i in range(count):
            lit = np.any((starts[i] < events + self.flash / 2) & (ends[i] > events - self.flash / 2))
            frames[i] = _WHITE if lit else (_DARK + np.roll(gradient, i, axis=1))[..., None]
        return frames

    def audio(self) -> np.ndarray:
        """float32 [channels, samples]: silence with a click centred on every event."""
        rate = self.sample_rate
        wave = np.zeros(round(self.seconds * rate), np.float32)
        half = round(_CLICK_SECONDS * rate / 2)
        window = np.hanning(2 * half + 1)
        burst = _CLICK_LEVEL * window * np.sin(2 * np.pi * _CLICK_HZ * np.arange(-half, half + 1) / rate)
        for t in self.event_times():
            centre = round((t - self.audio_delay) * rate)
            wave[centre - half : centre + half + 1] += burst
        return np.repeat(wave[None], self.channels, axis=0)

    def write(self, path: Path) -> list[float]:
        """Write the probe with PyAV (explicit timestamps on both streams); returns the event times."""
        write_av(
            path,
            self.video(),
            self.fps,
            self.audio(),
            self.sample_rate,
            video_delay=self.video_delay,
            audio_delay=self.audio_delay,
            video_codec=self.video_codec,
            audio_codec=self.audio_codec,
        )
        return self.event_times()


def write_av(
    path: Path,
    frames: np.ndarray,
    fps: Fraction | float,
    audio: np.ndarray | None = None,
    sample_rate: int = 44_100,
    *,
    video_delay: float = 0.0,
    audio_delay: float = 0.0,
    video_codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    audio_codec: str = "aac",
    rotation: int = 0,
) -> None:
    """Write frames (uint8 [N, H, W, 3]) and audio (float [channels, samples]) with PyAV, placed by
    explicit timestamps: frame i at ``video_delay + i / fps``, sample n at ``audio_delay + n /
    sample_rate`` on the container clock. ``rotation`` stores a display matrix (counter-clockwise
    degrees, as FFmpeg reads it back). The container follows the file extension (any case)."""
    fps = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format=_CONTAINERS[Path(path).suffix.lower().lstrip(".")]) as container:
        video = container.add_stream(video_codec, rate=fps)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = pix_fmt
        video.codec_context.time_base = _VIDEO_TIME_BASE
        if rotation:
            video.set_display_rotation(rotation)
        stream = None
        if audio is not None:
            stream = container.add_stream(audio_codec, rate=sample_rate)
            stream.layout = _LAYOUTS[len(audio)]
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            frame.pts = round((video_delay + i / fps) / _VIDEO_TIME_BASE)
            frame.time_base = _VIDEO_TIME_BASE
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if stream is not None:
            planar = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio, dtype=np.float32), format="fltp", layout=_LAYOUTS[len(audio)]
            )
            planar.sample_rate, planar.time_base = sample_rate, Fraction(1, sample_rate)
            planar.pts = round(audio_delay * sample_rate)
            for packet in [*stream.encode(planar), *stream.encode(None)]:
                container.mux(packet)


def standard_probes() -> dict[str, Probe]:
    """The probe set of the sync tests and ``tooling/av_offsets.py --make``: every common source
    frame rate with the audio stream starting late and with the video stream starting late (mp4,
    H.264 with B-frames + AAC), and a few other containers and codecs."""
    probes = {}
    for fps in ("24", "25", "30", "30000/1001", "50", "60", "12"):
        name = fps.replace("30000/1001", "29_97")
        probes[f"probe-{name}fps-audio-late"] = Probe(Fraction(fps), audio_delay=0.437)
        probes[f"probe-{name}fps-video-late"] = Probe(Fraction(fps), video_delay=0.3131)
    probes["probe-25fps-ts-audio-late"] = Probe(Fraction(25), audio_delay=0.2, extension="ts")
    probes["probe-30fps-webm-opus-video-late"] = Probe(
        Fraction(30),
        video_delay=0.25,
        extension="webm",
        video_codec="libvpx-vp9",
        audio_codec="libopus",
        sample_rate=48_000,
    )
    probes["probe-24fps-mkv-both-late-5_1"] = Probe(
        Fraction(24), audio_delay=2.1, video_delay=1.9, extension="mkv", channels=6, sample_rate=48_000
    )
    return probes


def write_probes(folder: Path, probes: dict[str, Probe] | None = None) -> dict[str, list[float]]:
    """Write probes (default: :func:`standard_probes`) with caption sidecars; returns event times."""
    folder.mkdir(parents=True, exist_ok=True)
    events = {}
    for name, probe in (probes or standard_probes()).items():
        events[name] = probe.write(folder / f"{name}.{probe.extension}")
        (folder / f"{name}.txt").write_text(PROBE_CAPTION)
    return events


@dataclass
class SyncReport:
    """Offsets (picture - sound, ms) of the events found in one clip."""

    offsets_ms: list[float] = field(default_factory=list)
    lost: int = 0  # clicks without a flash: the picture of the event vanished
    unmatched_flashes: int = 0

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.offsets_ms)) if self.offsets_ms else math.nan

    @property
    def worst_ms(self) -> float:
        return float(np.max(np.abs(self.offsets_ms))) if self.offsets_ms else math.nan


def flash_times(frames: np.ndarray, fps: float) -> list[float]:
    """Mean frame-centre time of every run of white frames, s from the clip start."""
    white = frames.reshape(len(frames), -1).mean(axis=1) > (_DARK + _WHITE) / 2
    times, run = [], []
    for f, lit in enumerate([*white, False]):
        if lit:
            run.append((f + 0.5) / fps)
        elif run:
            times.append(float(np.mean(run)))
            run = []
    return times


def click_times(audio: np.ndarray, sample_rate: int, threshold: float = 0.05) -> list[float]:
    """Energy centroid of every burst louder than ``threshold`` (relative to the loudest), s."""
    energy = audio.astype(np.float64) ** 2
    if not energy.any():
        return []
    width = max(1, round(0.002 * sample_rate))  # a 2 ms envelope bridges the sine's zero crossings
    envelope = np.convolve(energy, np.ones(width) / width, mode="same")
    loud = np.flatnonzero(envelope > threshold * envelope.max())
    if not len(loud):
        return []
    gap = round(0.02 * sample_rate)
    splits = np.flatnonzero(np.diff(loud) > gap) + 1
    times = []
    for burst in np.split(loud, splits):
        low, high = max(0, burst[0] - width), min(len(energy), burst[-1] + width + 1)
        weights = energy[low:high]
        times.append(float((np.arange(low, high) * weights).sum() / weights.sum() / sample_rate))
    return times


def measure_sync(
    frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int, window: float = 0.15
) -> SyncReport:
    """Pair every click with the nearest flash within ``window`` s and report the offsets."""
    flashes, clicks = flash_times(frames, fps), click_times(audio, sample_rate)
    report, used = SyncReport(), set()
    for click in clicks:
        candidates = [(abs(f - click), i) for i, f in enumerate(flashes) if i not in used]
        distance, index = min(candidates, default=(math.inf, -1))
        if distance > window:
            report.lost += 1
            continue
        used.add(index)
        report.offsets_ms.append(1000.0 * (flashes[index] - click))
    report.unmatched_flashes = len(flashes) - len(used)
    return report


def offset_bound_ms(output_fps: float, source_fps: float) -> float:
    """The most one event may be off by: half an output frame plus half a source frame, in ms."""
    return 500.0 / output_fps + 500.0 / source_fps
