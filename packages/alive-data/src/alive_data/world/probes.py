"""Fixed scenes and deliberate breakages: clips whose measurements are known in advance.

The metrics' tests use them, and so can anyone checking a measurement pipeline end to end (a
shifted clip must read as its shift, a dropped sound must lower recall by one event).
"""

from __future__ import annotations

import numpy as np

from alive_data.world.config import DEFAULT_CONFIG, WorldConfig
from alive_data.world.scene import Event, Scene, Subject, Utterance


def talking_scene(
    words: tuple[str, ...] = ("go", "up", "stop"), start: int = 14, ambient: str = "hum"
) -> Scene:
    """Two subjects; Subject1 speaks from latent ``start`` (mid-clip), Subject2 stays still."""
    return Scene(
        subjects=(
            Subject("Subject1", "red", "circle", "low", lane=0, x=10.0),
            Subject("Subject2", "blue", "square", "high", lane=2, x=40.0),
        ),
        background="cream",
        ambient=ambient,
        utterances=(Utterance("Subject1", words, start),),
    )


def busy_scene(config: WorldConfig = DEFAULT_CONFIG) -> Scene:
    """Three subjects: a dialogue, two flashes and a hit on each wall, all well inside the clip."""
    right = config.width - config.wall_width - config.subject_size
    return Scene(
        subjects=(
            Subject(
                "Subject1", "orange", "triangle", "middle", lane=0, x=float(config.wall_width), speed=30.0
            ),
            Subject("Subject2", "cyan", "diamond", "high", lane=1, x=24.0),
            Subject("Subject3", "purple", "square", "low", lane=2, x=float(right), speed=30.0),
        ),
        background="mint",
        ambient="rumble",
        utterances=(Utterance("Subject2", ("dog", "sun"), 6), Utterance("Subject3", ("no",), 26)),
        events=(
            Event("hit", "Subject1", 17, "left"),
            Event("flash", "Subject2", 20),
            Event("hit", "Subject3", 33, "right"),
            Event("flash", "Subject1", 38),
        ),
    )


def shift_audio(audio: np.ndarray, ms: float, sample_rate: int = 16_000) -> np.ndarray:
    """The same sound ``ms`` later (> 0) or earlier (< 0), silence where nothing was recorded."""
    n = round(ms * sample_rate / 1000)
    out = np.zeros_like(audio)
    if n >= 0:
        out[n:] = audio[: len(audio) - n]
    else:
        out[:n] = audio[-n:]
    return out


def silence_span(audio: np.ndarray, start: float, end: float, sample_rate: int = 16_000) -> np.ndarray:
    """``audio`` with [start, end) seconds silenced (e.g. one event's sound removed)."""
    out = audio.copy()
    out[round(start * sample_rate) : round(end * sample_rate)] = 0.0
    return out


def recolour(frames: np.ndarray, old: tuple[int, int, int], new: tuple[int, int, int]) -> np.ndarray:
    """Frames with every pixel nearer ``old`` than 60 (RGB) moved by ``new - old``: a subject in
    the wrong colour, its blends and mouth kept."""
    x = frames.astype(np.int16)
    near = np.linalg.norm(x - np.asarray(old), axis=-1) < 60
    x[near] += np.asarray(new, np.int16) - np.asarray(old, np.int16)
    return np.clip(x, 0, 255).astype(np.uint8)
