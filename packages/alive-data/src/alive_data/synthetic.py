"""Synthetic clips made with PyAV and numpy, for tests, benchmarks and demos (no data is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alive_data.discovery import SourceItem
from alive_models.mp4 import encode_mp4

SPEECH_CAPTION = (
    "Subjects: Subject1: A man with a deep voice. Visual: A street at night. Narration: A dog is barking "
    "<I>barking</I> while Subject1 says <W>good evening</W>."
)
SILENT_CAPTION = "Subjects: Subject1: A cat sleeping. Visual: A sofa. Narration: The cat sleeps quietly."


def moving_clip(fps: float, seconds: float, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [F, H, W, 3]: a diagonal gradient moving 5 levels per frame (frame k is readable from pixels)."""
    n = round(fps * seconds)
    base = np.indices((height, width)).sum(0)[None] + 5 * np.arange(n)[:, None, None] + seed
    return (base % 256).astype(np.uint8)[..., None].repeat(3, -1)


def tone(rate: int, seconds: float, hz: float) -> np.ndarray:
    """A sine tone, float32 mono."""
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(round(rate * seconds)) / rate)).astype(np.float32)


def make_clips(folder: Path, count: int, prefix: str = "clip", seconds: float = 1.2) -> list[SourceItem]:
    """``count`` mp4 files at 24/30/25 fps, 16/44.1/22.05 kHz, landscape/portrait/square, with
    alternating speaking / silent captions and varied aesthetic scores; returns writer inputs."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(count):
        fps, rate = [(24, 16_000), (30, 44_100), (25, 22_050)][i % 3]
        height, width = [(48, 64), (64, 48), (64, 64)][i % 3]
        path = folder / f"{prefix}{i}.mp4"
        clip = moving_clip(fps, seconds, height, width, i)
        path.write_bytes(encode_mp4(clip, fps, tone(rate, seconds, 220 + 20 * i), rate))
        meta = {
            "caption": SPEECH_CAPTION if i % 2 == 0 else SILENT_CAPTION,
            "quality": {"aesthetic": float(i % 10), "clarity": 0.9, "av_coherence": 0.8},
        }
        items.append(SourceItem(f"{prefix}{i:03d}", str(path), meta))
    return items
