"""Decoding and encoding of clips with PyAV (video) and soundfile (FLAC/WAV), on one clock.

Time convention (shared with ``alive_models.geometry``):
- every decoded video frame and audio sample is placed by its presentation timestamp on the
  container's clock (stream start offsets, edit lists, B-frame reordering, AAC/Opus priming and
  timestamps that do not start at 0 are all resolved by the demuxer/decoder into those timestamps);
- a source frame with timestamp t_i covers [t_i, t_{i+1}) (the last one, its own duration);
- a clip's time range is its video's: it starts at the first frame's timestamp T0, and output
  frame f covers [T0 + f / fps, T0 + (f + 1) / fps). Frame-rate conversion shows, in output frame
  f, the source frame whose centre is nearest f's centre (ties go to the earlier frame), so there
  is no systematic lag in either direction;
- audio is cut or padded with silence to exactly that range: sample n of the clip is the sound at
  T0 + n / sample_rate. Channels are averaged (no gain) and resampled in float, so nothing clips;
- a clip whose decoded audio is shorter than its video by more than ``max_audio_shortfall`` seconds
  is a ``short_audio`` error. A stream that starts late is not short: its start offset is honoured
  as silence (reported in :attr:`Clip.audio_start` / :attr:`Clip.audio_padding`).
- a display matrix (a phone's rotation) is applied, so a portrait clip decodes portrait.

Failures raise :class:`MediaError` with a reason code, which the writer and the pipeline count.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from alive_models.audio import resample

BytesOrPath = bytes | str | Path

# Audio timestamps that stray less than this from the running sample count are jitter (e.g. a
# millisecond time base rounding 1024-sample frames) and are joined without a gap; a larger jump
# is a real gap (filled with silence) or an overlap (dropped).
AUDIO_RESYNC_SECONDS = 0.01
# Containers with a millisecond time base (Matroska, WebM) round every timestamp: a video's span may
# come out this much short of a whole number of frames and still count them all.
TIMESTAMP_TOLERANCE = 0.002
MAX_AUDIO_SHORTFALL = 0.1  # seconds of audio missing against the video before a clip is rejected


class MediaError(Exception):
    """A clip that cannot be used; ``reason`` is a short code for skip counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Clip:
    """Decoded media on one clock: frames [F, H, W, 3] uint8 at ``fps`` and mono float32 audio at
    ``sample_rate`` covering exactly the frames' time range (``round(F / fps * sample_rate)`` samples;
    values may exceed [-1, 1]: nothing is clipped before storage)."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray
    sample_rate: int
    audio_start: float = 0.0  # first audio sample relative to the first frame, s (< 0: cut off)
    audio_padding: float = 0.0  # silence added where the audio stream had no samples, s
    rotation: int = 0  # counter-clockwise degrees applied from the display matrix
    source_fps: float = 0.0  # the source's frame rate, from its timestamps

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps


def _open(source: BytesOrPath) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except (av.FFmpegError, ValueError, OSError) as e:
        # A shard member that does not open is a broken video; an input file, not media at all.
        reason = "undecodable_video" if isinstance(source, bytes) else "not_media"
        raise MediaError(reason, f"cannot open as a media container: {e}") from e


class _NearestFrames:
    """Frame-rate conversion by nearest frame centre, streaming: only the frames that are shown are
    converted to RGB, and at most two decoded frames are held at a time."""

    def __init__(self, fps: float, nominal_step: float | None) -> None:
        self.fps = fps
        self.step = nominal_step  # a source frame's duration when its timestamps do not say
        self.start: float | None = None  # T0
        self.rotation = 0
        self.pending: tuple[float, av.VideoFrame] | None = None  # (start, frame): the newest frame
        self.shown: tuple[float, av.VideoFrame] | None = None  # (centre, frame): the one before it
        self.pixels: np.ndarray | None = None  # ``shown`` as RGB, converted when first shown
        self.out: list[np.ndarray] = []  # output frames so far
        self.count = 0  # source frames placed
        self.last_start = 0.0

    def push(self, frame: av.VideoFrame) -> None:
        time = frame.time
        if self.pending is None:
            self.start = 0.0 if time is None else time
            self.rotation = round(frame.rotation / 90) * 90 % 360
            self.pending, self.last_start, self.count = (self.start, frame), self.start, 1
            return
        previous = self.pending[0]
        if time is None:  # no timestamp: one nominal frame after the previous one
            time = previous + (self.step or 1.0 / self.fps)
        if time <= previous:  # a repeated or backwards timestamp: the frame cannot be placed
            return
        self.step = time - previous
        self._complete(end=time)
        self.pending, self.last_start, self.count = (time, frame), time, self.count + 1

    def _centre(self, index: int) -> float:
        return self.start + (index + 0.5) / self.fps

    def _complete(self, end: float) -> None:
        """The pending frame now has an end: every output frame nearer the previous frame's centre
        than this one's takes the previous frame."""
        start, frame = self.pending
        centre = (start + end) / 2
        if self.shown is not None:
            boundary = (self.shown[0] + centre) / 2
            while self._centre(len(self.out)) <= boundary:
                self.out.append(self._shown_pixels())
        self.shown, self.pixels = (centre, frame), None

    def _shown_pixels(self) -> np.ndarray:
        if self.pixels is None:
            rgb = self.shown[1].to_ndarray(format="rgb24")
            self.pixels = np.rot90(rgb, self.rotation // 90) if self.rotation else rgb
        return self.pixels

    def finish(self) -> tuple[np.ndarray, float]:
        """(frames [F, H, W, 3], T0)."""
        if self.pending is None:
            raise MediaError("zero_length", "no decodable video frames")
        start, frame = self.pending
        own = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
        end = start + (own or self.step or 1.0 / self.fps)
        self._complete(end)
        count = math.floor((end - self.start + TIMESTAMP_TOLERANCE) * self.fps)
        if count < 1:
            raise MediaError("too_short", f"{end - self.start:.3f} s of video is less than one frame")
        while len(self.out) < count:
            self.out.append(self._shown_pixels())
        if len({f.shape for f in self.out[:count]}) > 1:
            raise MediaError("variable_resolution", "the frame size changes within the clip")
        return np.stack(self.out[:count]), self.start

    @property
    def source_fps(self) -> float:
        span = self.last_start - (self.start or 0.0)
        return (self.count - 1) / span if self.count > 1 and span > 0 else 1.0 / (self.step or 1.0 / self.fps)


def _planar_float(frame: av.AudioFrame) -> np.ndarray:
    """[channels, samples] float32 of any sample format (ints scaled to [-1, 1))."""
    array = frame.to_ndarray()
    if not frame.format.is_planar:
        array = array.reshape(-1, frame.layout.nb_channels).T
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - 128.0) / 128.0
    return (array / float(np.iinfo(array.dtype).max + 1)).astype(np.float32)


@dataclass
class _AudioTrack:
    """Decoded audio as timestamped mono chunks at the stream's rate (not yet on the clip's range)."""

    rate: int = 0
    chunks: list[tuple[float | None, np.ndarray]] | None = None
    samples: int = 0

    def push(self, time: float | None, mono: np.ndarray, rate: int) -> None:
        if self.chunks is None:
            self.chunks, self.rate = [], rate
        elif rate != self.rate:
            raise MediaError("variable_sample_rate", f"audio changes from {self.rate} Hz to {rate} Hz")
        self.chunks.append((time, mono))
        self.samples += len(mono)

    def push_frame(self, frame: av.AudioFrame) -> None:
        self.push(frame.time, _planar_float(frame).mean(axis=0), frame.sample_rate)  # downmix: the mean

    def on_range(self, start: float, seconds: float, sample_rate: int) -> tuple[np.ndarray, float, float]:
        """(audio at ``sample_rate`` covering exactly [start, start + seconds), first sample's time
        relative to ``start``, seconds of silence padded where the stream had no samples)."""
        rate, exact = self.rate, round(seconds * self.rate)
        placed = np.zeros(exact + 64, np.float32)  # a margin past the end keeps the resampler's edge out
        covered = np.zeros(len(placed), bool)
        tolerance = round(AUDIO_RESYNC_SECONDS * rate)
        expected: int | None = None
        first: float | None = None
        for time, mono in self.chunks:
            position = round((time - start) * rate) if time is not None else expected or 0
            if expected is not None and abs(position - expected) <= tolerance:
                position = expected
            if first is None:
                first = position / rate
            low, high = max(position, 0), min(position + len(mono), len(placed))
            if low < high:
                placed[low:high] = mono[low - position : high - position]
                covered[low:high] = True
            expected = position + len(mono)
        audio = resample(placed, rate, sample_rate)
        length = round(seconds * sample_rate)
        audio = np.pad(audio[:length], (0, max(0, length - len(audio))))
        return audio, first or 0.0, float(exact - covered[:exact].sum()) / rate


def _decode(source: BytesOrPath, fps: float, with_audio: bool) -> tuple[_NearestFrames, _AudioTrack]:
    """One demuxing pass over the best video stream (and its audio stream)."""
    with _open(source) as container:
        video = container.streams.best("video")
        if video is None:
            raise MediaError("no_video", "no video stream")
        audio = container.streams.best("audio", related=video) if with_audio else None
        if with_audio and audio is None:
            raise MediaError("no_audio", "no audio stream")
        video.thread_type = "AUTO"
        rate = video.guessed_rate or video.average_rate
        frames, track = _NearestFrames(fps, 1.0 / float(rate) if rate else None), _AudioTrack()
        stream = video
        try:
            for packet in container.demux([s for s in (video, audio) if s is not None]):
                stream = packet.stream
                for frame in packet.decode():
                    if stream is video:
                        frames.push(frame)
                    else:
                        track.push_frame(frame)
        except av.FFmpegError as e:
            raise MediaError(f"undecodable_{stream.type}", str(e)) from e
    return frames, track


def decode_video(source: BytesOrPath, fps: float) -> np.ndarray:
    """All frames resampled to ``fps`` by nearest frame centre: uint8 [F, H, W, 3], rotation applied."""
    frames, _ = _decode(source, fps, with_audio=False)
    return frames.finish()[0]


def decode_clip(
    video: BytesOrPath,
    fps: float,
    sample_rate: int,
    audio: bytes | None = None,
    max_audio_shortfall: float = MAX_AUDIO_SHORTFALL,
) -> Clip:
    """Frames at ``fps`` and mono audio at ``sample_rate`` on the video's time range.

    Audio comes from the container's audio stream, or from ``audio`` (FLAC/WAV bytes whose sample 0
    is the video's first frame, as the writer stores them; it must already be at ``sample_rate``, a
    mismatch is a ``wrong_sample_rate`` error rather than a silent resample).
    """
    decoded, track = _decode(video, fps, with_audio=audio is None)
    frames, start = decoded.finish()
    if audio is not None:
        wave, rate = read_audio_file(audio)
        if rate != sample_rate:
            raise MediaError("wrong_sample_rate", f"{rate} Hz, expected {sample_rate} Hz")
        track.push(start, wave, rate)
    if track.samples == 0:
        raise MediaError("zero_length", "empty audio")
    seconds = len(frames) / fps
    shortfall = seconds - track.samples / track.rate
    if shortfall > max_audio_shortfall:
        raise MediaError(
            "short_audio",
            f"{track.samples / track.rate:.3f} s of audio for {seconds:.3f} s of video "
            f"(tolerance {max_audio_shortfall:g} s)",
        )
    wave, audio_start, padding = track.on_range(start, seconds, sample_rate)
    if not np.isfinite(wave).all():
        raise MediaError("nan", "non-finite audio samples")
    return Clip(frames, fps, wave, sample_rate, audio_start, padding, decoded.rotation, decoded.source_fps)


def read_audio_file(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC/WAV bytes -> (mono float32, sample rate)."""
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise MediaError("undecodable_audio", str(e)) from e
    return wave.mean(axis=1), rate


def encode_flac(wave: np.ndarray, sample_rate: int) -> bytes:
    """Lossless mono audio: exact length and timing (AAC would add priming samples)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def crop_even(frames: np.ndarray) -> np.ndarray:
    """Drop the last row / column of an odd-sized [F, H, W, 3] clip (H.264 4:2:0 needs even sides):
    161x97 -> 160x96, at most one pixel lost per side and no resampling."""
    height, width = frames.shape[1:3]
    return frames[:, : height - height % 2, : width - width % 2]


def fit_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize [F, H, W, 3] uint8 to cover ``size`` (height, width), then centre-crop."""
    height, width = size
    if frames.shape[1:3] == (height, width):
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    scale = max(height / x.shape[2], width / x.shape[3])
    new = (max(height, round(x.shape[2] * scale)), max(width, round(x.shape[3] * scale)))
    x = F.interpolate(x, size=new, mode="bilinear", antialias=True, align_corners=False)
    top, left = (new[0] - height) // 2, (new[1] - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def decode_image(data: bytes) -> np.ndarray:
    """A JPEG/PNG image as uint8 [H, W, 3]."""
    try:
        with _open(data) as container:
            frame = next(container.decode(video=0))
            return frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, StopIteration, ValueError, OSError) as e:
        raise MediaError("undecodable_image", str(e)) from e


def encode_jpeg(image: np.ndarray, quality: int = 2) -> bytes:
    """uint8 [H, W, 3] -> JPEG bytes (MJPEG qscale ``quality``, 2 = best)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mjpeg") as container:
        stream = container.add_stream("mjpeg", rate=1)
        stream.height, stream.width = image.shape[:2]
        stream.pix_fmt = "yuvj444p"
        stream.options = {"qscale": str(quality)}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return buffer.getvalue()
