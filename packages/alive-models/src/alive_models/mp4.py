"""The one mp4 muxer of the project: H.264 video + AAC audio through PyAV (the ``media`` extra).

Sync is the point of this project, so the muxer keeps sound and picture on one clock:

- Video frame f is shown from f / fps; audio sample n plays at n / sample_rate. Both streams start at
  time 0, frame 0 and sample 0 together.
- AAC encoders prepend priming samples (1024 for FFmpeg's encoder). The encoder gives its first
  packet the negative pts -1024, and the mp4 muxer turns that into an edit list whose media_time
  skips the priming, so a decoder that honours the edit list (FFmpeg, Apple, browsers) starts
  playing at our sample 0.
- The last AAC frame is padded to 1024 samples; the edit list's duration ends the track at the real
  last sample. The movie timescale is set to a common multiple of the audio sample rate and the
  frame rate so both edit-list durations are exact (FFmpeg's default of 1000 would round them to
  whole milliseconds). FFmpeg's own decoder does not cut the padded tail, so a reader that wants the
  exact length trims to the stream's duration (see ``tests/test_mp4.py``).
- Colours: RGB is converted with the BT.709 matrix and tagged as BT.709 (limited range), so players
  do not guess between BT.601 and BT.709 by resolution.

:func:`write_mp4` writes a file atomically (a temporary name in the same directory, fsync, rename)
with the index at the front (faststart); :func:`encode_mp4` returns the bytes (for tar shards).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

# FFmpeg's native AAC encoder: channel count -> layout it accepts.
AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
_BT709 = 1  # AVCOL_SPC / AVCOL_PRI / AVCOL_TRC value for BT.709
_LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("writing mp4 needs PyAV: pip install 'alive-models[media]'") from e
    return av


def frame_rate(fps: float | Fraction | int) -> Fraction:
    """An exact frame rate: NTSC rates given as floats (29.97002997...) come back as 30000/1001."""
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"frame rate must be positive, got {fps}")
    return rate


def _check_frames(frames: np.ndarray) -> None:
    ok = isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4
    if not ok or frames.shape[3] != 3:
        what = f"{getattr(frames, 'shape', None)} {getattr(frames, 'dtype', type(frames).__name__)}"
        raise ValueError(f"frames must be a uint8 array [F, H, W, 3] (RGB), got {what}")
    if len(frames) == 0:
        raise ValueError("no frames to write")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even sides, got {width}x{height}")


def _check_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Float32 [N, C] (samples, channels: soundfile's layout); a 1-D array is mono."""
    if sample_rate not in AAC_SAMPLE_RATES:
        raise ValueError(f"AAC cannot encode {sample_rate} Hz; use one of {AAC_SAMPLE_RATES}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.ndim != 2 or audio.shape[1] not in AAC_LAYOUTS:
        raise ValueError(
            f"audio must be [samples] or [samples, channels] with 1-8 channels, got {audio.shape} "
            "(a [channels, samples] array needs a transpose)"
        )
    if len(audio) == 0:
        raise ValueError("empty audio track")
    if not np.isfinite(audio).all():
        raise ValueError("audio has non-finite samples")
    return np.ascontiguousarray(audio)


def _mux(
    target,
    frames: np.ndarray,
    rate: Fraction,
    audio: np.ndarray | None,
    sample_rate: int,
    crf: int,
    movflags: str | None,
) -> None:
    av = _av()
    # Edit-list durations are in the movie timescale: a multiple of the sample rate and of the
    # frame rate's numerator makes both exact.
    timescale = math.lcm(sample_rate, rate.numerator) if audio is not None else rate.numerator
    while timescale < 1000:
        timescale *= 10
    options = {"movie_timescale": str(timescale)}
    if movflags:
        options["movflags"] = movflags
    with av.open(target, "w", format="mp4", options=options) as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.options = {"crf": str(crf)}
        cc = video.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = _BT709
        cc.color_range = _LIMITED_RANGE
        packets = []
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture = picture.reformat(format="yuv420p", dst_colorspace="ITU709")
            picture.pts = i
            packets += video.encode(picture)
        packets += video.encode(None)
        if audio is not None:
            layout = AAC_LAYOUTS[audio.shape[1]]
            stream = container.add_stream("aac", rate=sample_rate, layout=layout)
            # Packed float input: PyAV re-chunks it into the encoder's 1024-sample frames. pts 0 puts
            # our sample 0 at time 0; the encoder shifts its packets by the priming delay.
            sound = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout=layout)
            sound.sample_rate, sound.pts = sample_rate, 0
            packets += stream.encode(sound)
            packets += stream.encode(None)
        # Interleave by decode time so the file streams (the muxer would otherwise buffer).
        packets.sort(key=lambda p: p.dts * p.time_base)
        for packet in packets:
            container.mux(packet)


def encode_mp4(
    frames: np.ndarray,
    fps: float | Fraction,
    audio: np.ndarray | None = None,
    sample_rate: int = 16_000,
    crf: int = 18,
) -> bytes:
    """H.264 (yuv420p, BT.709) + AAC mp4 as bytes. frames: uint8 [F, H, W, 3] RGB with even sides;
    audio: float [N] (mono) or [N, C] in [-1, 1] at ``sample_rate``, sample 0 at frame 0."""
    _check_frames(frames)
    audio = None if audio is None else _check_audio(audio, sample_rate)
    buffer = io.BytesIO()
    _mux(buffer, frames, frame_rate(fps), audio, sample_rate, crf, movflags=None)
    return buffer.getvalue()


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float | Fraction,
    audio: np.ndarray | None = None,
    sample_rate: int = 16_000,
    crf: int = 18,
) -> Path:
    """Like :func:`encode_mp4`, written to ``path`` atomically with the index first (faststart).

    Inputs are validated before anything touches the disk; on any error no file (partial or
    temporary) is left and an existing file at ``path`` is untouched.
    """
    _check_frames(frames)
    audio = None if audio is None else _check_audio(audio, sample_rate)
    path = Path(path)
    with atomic_path(path) as tmp:
        _mux(str(tmp), frames, frame_rate(fps), audio, sample_rate, crf, movflags="+faststart")
    return path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_path(final) as tmp:`` write ``tmp``; on success it is fsynced and renamed to
    ``final``, on error it is removed. The temporary name sits beside ``final`` (same filesystem)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
