"""Waveform helpers shared by alive-data (decoding clips) and alive-infer (reference audio): one
resampler for the project, FFmpeg's through PyAV (the ``media`` extra, imported when called)."""

from __future__ import annotations

import numpy as np

_RESAMPLE_CHUNK = 1 << 16  # samples per frame handed to the resampler


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 from ``rate`` to ``target`` Hz with FFmpeg's resampler in float (no clipping;
    sample 0 stays at time 0 and ``len(wave) * target / rate`` samples come out)."""
    if rate == target:
        return wave.astype(np.float32, copy=False)
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    frames = []
    for offset in range(0, len(wave), _RESAMPLE_CHUNK):
        chunk = np.ascontiguousarray(wave[None, offset : offset + _RESAMPLE_CHUNK], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, offset
        frames += resampler.resample(frame)
    frames += resampler.resample(None)
    if not frames:
        return np.zeros(0, np.float32)
    return np.concatenate([f.to_ndarray()[0] for f in frames])
