"""Task assignment (seed 000 §4.1, §4.4; seed 002 §6.1) and per-sample randomness.

Every random choice is a hash of (seed, epoch, sample key, purpose), not a draw from a running
generator: a sample gets the same task wherever it lands in the stream, which keeps the pipeline
deterministic and resumable without carrying generator state.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass


def uniform(*parts: object) -> float:
    """A deterministic uniform number in [0, 1) from any parts."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


@dataclass(frozen=True)
class TaskSpec:
    """What a task trains: which modality losses count, which inputs are given clean."""

    video_loss: bool = True
    audio_loss: bool = True
    i2v: bool = False  # first frame given (I2VA)
    references: bool = False  # reference images given (reference joint tuning)
    video_clean: bool = False  # video given as condition (V2A)
    audio_clean: bool = False  # audio given as condition (A2V)
    mutual: bool = True  # cross-modal exchange allowed at all


TASKS: dict[str, TaskSpec] = {
    "t2va": TaskSpec(),
    "i2va": TaskSpec(i2v=True),
    "r2va": TaskSpec(references=True),
    "a2v": TaskSpec(audio_loss=False, audio_clean=True),
    "v2a": TaskSpec(video_loss=False, video_clean=True),
    "t2v": TaskSpec(audio_loss=False, mutual=False),
    "t2a": TaskSpec(video_loss=False, mutual=False),
}


@dataclass(frozen=True)
class TaskConfig:
    """Task mix. Default: T2VA, with I2VA at ``i2va_prob`` from epoch ``i2va_from_epoch`` (0-based; the
    paper introduces I2VA after the first epoch with p=0.4), and reference pairs at ``reference_prob``
    when a sample has reference images. ``probabilities`` replaces that schedule with a fixed mix
    (CCL: {"t2v": 0.05, "t2a": 0.05, "a2v": 0.15, "v2a": 0.15, "t2va": 0.6}).
    Caption dropout trains the null caption; mutual dropout (p=0.3) trains the "indep" state of the
    tasks that generate both streams (A2V / V2A keep the exchange: it carries their condition).
    """

    i2va_prob: float = 0.4
    i2va_from_epoch: int = 1
    reference_prob: float = 0.0
    probabilities: dict[str, float] | None = None
    caption_dropout: float = 0.1
    mutual_dropout: float = 0.3

    def __post_init__(self) -> None:
        if self.probabilities is not None:
            unknown = set(self.probabilities) - set(TASKS)
            if unknown:
                raise ValueError(f"unknown tasks {sorted(unknown)}; known: {sorted(TASKS)}")
            total = sum(self.probabilities.values())
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"task probabilities sum to {total}, not 1")

    def assign(self, seed: int, epoch: int, key: str, has_references: bool) -> tuple[str, bool, bool]:
        """(task name, caption dropped, mutual on) for one sample."""
        u = uniform(seed, epoch, key, "task")
        if self.probabilities is not None:
            names = list(self.probabilities)
            cumulative = itertools.accumulate(self.probabilities.values())
            name = next((n for n, c in zip(names, cumulative, strict=True) if u < c), names[-1])
        elif has_references and u < self.reference_prob:
            name = "r2va"
        elif epoch >= self.i2va_from_epoch and uniform(seed, epoch, key, "i2va") < self.i2va_prob:
            name = "i2va"
        else:
            name = "t2va"
        dropped = uniform(seed, epoch, key, "caption") < self.caption_dropout
        spec = TASKS[name]
        # A clean stream reaches the generated one only through the exchange: never drop it there.
        conditioned = spec.video_clean or spec.audio_clean
        mutual = spec.mutual and (conditioned or uniform(seed, epoch, key, "mutual") >= self.mutual_dropout)
        return name, dropped, mutual
