"""Task assignment (seed 000 §4.1, §4.4; seed 002 §6.1; seed 004 §4.5) and per-sample randomness.

Every random choice is a hash of (seed, epoch, sample key, purpose), not a draw from a running
generator: a sample gets the same task wherever it lands in the stream, which keeps the pipeline
deterministic and resumable without carrying generator state.

Each task's exchange routes (which stream reads the other's latents: seed 002's Dynamic Context
Routing, seed 004's TV2A mask) come from the model package's one table,
``alive_models.fusion.TASK_ROUTES``, so data and model cannot disagree on them.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

from alive_models.fusion.routes import JOINT, Route, task_route


def uniform(*parts: object) -> float:
    """A deterministic uniform number in [0, 1) from any parts."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


@dataclass(frozen=True)
class TaskSpec:
    """What a task trains: which modality losses count, which inputs are given clean, and the routes
    of the cross-modal exchange (``route``: which stream reads the other's latents)."""

    video_loss: bool = True
    audio_loss: bool = True
    i2v: bool = False  # first frame given (I2VA)
    references: bool = False  # reference images given (reference joint tuning)
    reference_audio: bool = False  # reference audio given (voice cloning, TR2AV)
    video_clean: bool = False  # video given as condition (V2A)
    audio_clean: bool = False  # audio given as condition (A2V)
    route: Route = field(default=JOINT)

    @property
    def mutual(self) -> bool:
        """Whether any cross-modal exchange happens at all (False: independent streams)."""
        return self.route.video_reads_audio or self.route.audio_reads_video


def _task(name: str, **spec: bool) -> TaskSpec:
    return TaskSpec(route=task_route(name), **spec)


TASKS: dict[str, TaskSpec] = {
    "t2va": _task("t2va"),
    "i2va": _task("i2va", i2v=True),  # UniTalking's TI2AV
    "r2va": _task("r2va", references=True),
    "tr2av": _task("tr2av", reference_audio=True),  # UniTalking's TR2AV
    "a2v": _task("a2v", audio_loss=False, audio_clean=True),
    "v2a": _task("v2a", video_loss=False, video_clean=True),  # also UniTalking's TV2A
    "t2v": _task("t2v", audio_loss=False),
    "t2a": _task("t2a", video_loss=False),
    "t2v_t2a": _task("t2v_t2a"),  # seed 002's text/image-to-audio/video: both losses, no exchange
}

# Seed 002 §6.1: text/image-to-audio/video 0.1, audio-to-video 0.15, video-to-audio 0.15, joint 0.6.
CCL_TASK_MIX: dict[str, float] = {"t2v_t2a": 0.1, "a2v": 0.15, "v2a": 0.15, "t2va": 0.6}


@dataclass(frozen=True)
class TaskConfig:
    """Task mix. Default: T2VA, with I2VA at ``i2va_prob`` from epoch ``i2va_from_epoch`` (0-based; the
    paper introduces I2VA after the first epoch with p=0.4), reference pairs at ``reference_prob``
    when a sample has reference images and TR2AV at ``reference_audio_prob`` when it has reference
    audio. ``probabilities`` replaces that schedule with a fixed mix (CCL: :data:`CCL_TASK_MIX`;
    UniTalking: t2va / v2a / i2va / tr2av); a fixed mix can draw a conditioned task for a sample
    without that condition, which is then a counted skip.
    Caption dropout trains the null caption; mutual dropout (p=0.3) trains the "indep" state of the
    tasks that generate both streams (A2V / V2A keep the exchange: it carries their condition).
    Reference audio (TR2AV) is the sample's ``ref_audio`` member (another utterance of the same
    speaker) or else a segment of the same clip outside the target window, from
    ``reference_audio_min_seconds`` up to ``reference_audio_max_seconds`` long.
    """

    i2va_prob: float = 0.4
    i2va_from_epoch: int = 1
    reference_prob: float = 0.0
    reference_audio_prob: float = 0.0
    probabilities: dict[str, float] | None = None
    caption_dropout: float = 0.1
    mutual_dropout: float = 0.3
    reference_audio_min_seconds: float = 1.0
    reference_audio_max_seconds: float = 4.0

    def __post_init__(self) -> None:
        if self.probabilities is not None:
            unknown = set(self.probabilities) - set(TASKS)
            if unknown:
                raise ValueError(f"unknown tasks {sorted(unknown)}; known: {sorted(TASKS)}")
            total = sum(self.probabilities.values())
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"task probabilities sum to {total}, not 1")
        if not 0 < self.reference_audio_min_seconds <= self.reference_audio_max_seconds:
            raise ValueError(
                f"reference audio length {self.reference_audio_min_seconds}.."
                f"{self.reference_audio_max_seconds} s: need 0 < min <= max"
            )

    def assign(
        self, seed: int, epoch: int, key: str, has_references: bool, has_reference_audio: bool = False
    ) -> tuple[str, bool, bool]:
        """(task name, caption dropped, mutual on) for one sample."""
        u = uniform(seed, epoch, key, "task")
        if self.probabilities is not None:
            names = list(self.probabilities)
            cumulative = itertools.accumulate(self.probabilities.values())
            name = next((n for n, c in zip(names, cumulative, strict=True) if u < c), names[-1])
        elif has_references and u < self.reference_prob:
            name = "r2va"
        elif has_reference_audio and uniform(seed, epoch, key, "tr2av") < self.reference_audio_prob:
            name = "tr2av"
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
