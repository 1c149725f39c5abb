"""Decoding and encoding of clips with PyAV (video) and soundfile (FLAC/WAV).

Video is resampled to the target frame rate by timestamp (each output frame k at k / fps shows the
latest source frame at or before that time), audio is mixed to mono and resampled with FFmpeg's
resampler. Failures raise :class:`MediaError` with a reason code, which the data pipeline counts.
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

BytesOrPath = bytes | str | Path


class MediaError(Exception):
    """A clip that cannot be used; ``reason`` is a short code for skip counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Clip:
    """Decoded media: frames [F, H, W, 3] uint8 at ``fps`` and mono float32 audio at ``sample_rate``."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps


def _open(source: BytesOrPath):
    return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))


def decode_video(source: BytesOrPath, fps: float, max_seconds: float | None = None) -> np.ndarray:
    """All frames resampled to ``fps``: uint8 [F, H, W, 3]."""
    try:
        with _open(source) as container:
            if not container.streams.video:
                raise MediaError("no_video")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            times, frames = [], []
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                if max_seconds is not None and frame.time > max_seconds + 1.0 / fps:
                    break
                times.append(frame.time)
                frames.append(frame.to_ndarray(format="rgb24"))
    except MediaError:
        raise
    except (av.FFmpegError, ValueError, OSError) as e:
        raise MediaError("undecodable_video", str(e)) from e
    if not frames:
        raise MediaError("zero_length", "no decodable video frames")
    times = np.asarray(times) - times[0]
    # The last frame lasts one source frame interval; the clip ends there.
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / fps
    end = times[-1] + step
    if max_seconds is not None:
        end = min(end, max_seconds)
    count = max(1, math.floor(end * fps + 1e-6))
    target = np.arange(count) / fps
    index = np.clip(np.searchsorted(times, target + 1e-6, side="right") - 1, 0, len(frames) - 1)
    return np.stack([frames[i] for i in index])


def decode_audio(source: BytesOrPath, sample_rate: int) -> np.ndarray:
    """The first audio stream as mono float32 at ``sample_rate``."""
    try:
        with _open(source) as container:
            if not container.streams.audio:
                raise MediaError("no_audio")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks = []
            for frame in container.decode(container.streams.audio[0]):
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
    except MediaError:
        raise
    except (av.FFmpegError, ValueError, OSError) as e:
        raise MediaError("undecodable_audio", str(e)) from e
    if not chunks:
        raise MediaError("no_audio", "audio stream has no samples")
    return np.concatenate(chunks, axis=1)[0].astype(np.float32)


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


def encode_mp4(
    frames: np.ndarray, fps: float, audio: np.ndarray | None = None, sample_rate: int = 16_000, crf: int = 18
) -> bytes:
    """H.264 (yuv420p) video, with an AAC track when ``audio`` is given. Sides must be even."""
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even sides, got {width}x{height}")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=round(fps) if float(fps).is_integer() else fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": str(crf)}
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=sample_rate)
            audio_stream.layout = "mono"
        for frame in frames:
            for packet in video.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            ):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio_stream is not None:
            frame = av.AudioFrame.from_ndarray(audio.astype(np.float32)[None], format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            for packet in [*audio_stream.encode(frame), *audio_stream.encode(None)]:
                container.mux(packet)
    return buffer.getvalue()


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


def decode_clip(video: BytesOrPath, fps: float, sample_rate: int, audio: bytes | None = None) -> Clip:
    """Frames at ``fps`` plus mono audio at ``sample_rate``, from an mp4 (and an optional FLAC/WAV).

    A separate audio file must already be at ``sample_rate`` (the writer guarantees it); a mismatch
    is a ``wrong_sample_rate`` error rather than a silent resample.
    """
    frames = decode_video(video, fps)
    if audio is not None:
        wave, rate = read_audio_file(audio)
        if rate != sample_rate:
            raise MediaError("wrong_sample_rate", f"{rate} Hz, expected {sample_rate} Hz")
    else:
        wave = decode_audio(video, sample_rate)
    if len(wave) == 0:
        raise MediaError("zero_length", "empty audio")
    if not np.isfinite(wave).all():
        raise MediaError("nan", "non-finite audio samples")
    return Clip(frames, fps, wave, sample_rate)


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
