"""The world's metrics as torchmetrics ``Metric``s: computed from clips and their captions alone.

Every metric's ``update(frames, audio, captions, references=None)`` takes a batch: ``frames`` uint8
[B, F, H, W, 3] (or a list of [F, H, W, 3], numpy or torch, any multiple of the world's size),
``audio`` mono float [B, N] (or [B, 1, N], or a list of [N]) at the world's sample rate, ``captions``
a list of structured captions, ``references`` per clip a list of uint8 [H, W, 3] images (R2VA) or
None. ``world_metrics()`` bundles all four in a ``MetricCollection``; ``measure_clip`` gives one
clip's numbers (and what was heard and seen) for tables.

- ``AVOffset``: the audio-video offset in ms (SyncNet/Synchformer's question); the analogue of
  DeSync (mean |offset|) and Sync-C (confidence: peak minus median correlation over lags).
- ``TranscriptCER``: torchmetrics' ``CharErrorRate`` of the letters heard vs the ``<W>`` text (WER's
  analogue; the toy language has no word model, so characters).
- ``EventRecall``: captioned ``<I>`` events whose sound is heard, and heard when the picture shows them.
- ``SubjectFidelity``: subjects of the caption (colour, shape) found in the picture; and the subject
  of each reference image found in the picture (the R2VA identity check).

Silence, blank video or unusable input never raises: a clip that should be measurable but is not
counts with the worst score (offset ``max_lag_ms``, CER 1, recall 0, fidelity 0) and in a ``failed``
counter; a clip the metric does not apply to (no speech for CER, no cue for the offset) is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.text import CharErrorRate

from alive_data.world.analysis import (
    CaptionFacts,
    DecodedSpeech,
    EventResult,
    OffsetResult,
    av_offset,
    band_envelopes,
    caption_facts,
    decode_speech,
    event_result,
    find_blobs,
    reference_subject,
    sample_frames,
    subject_presence,
    visual_activity,
)
from alive_data.world.config import WorldConfig

MAX_LAG_MS = 500.0
EVENT_TOLERANCE_S = 0.1


@dataclass(frozen=True)
class ClipInput:
    """One clip, normalised to numpy on the CPU: uint8 [F, H, W, 3] frames, float32 [N] audio,
    caption, references (uint8 [H, W, 3] each)."""

    frames: np.ndarray
    audio: np.ndarray
    caption: str
    references: list[np.ndarray] | None = None


def pixels_to_frames(video: Tensor) -> Tensor:
    """A codec's pixels [B, 3, F, H, W] in [-1, 1] -> uint8 frames [B, F, H, W, 3] for the metrics."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _frames(x: Any) -> np.ndarray:
    a = _numpy(x)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(
            "frames must be uint8 [F, H, W, 3] (pixels_to_frames converts codec output), "
            f"got {a.dtype} {a.shape}"
        )
    return a


def _audio(x: Any) -> np.ndarray:
    a = _numpy(x)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"audio must be mono float [N] per clip, got {a.dtype} {a.shape}")
    return np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def clip_inputs(
    frames: Tensor | Sequence[Any],
    audio: Tensor | Sequence[Any],
    captions: Sequence[str],
    references: Sequence[Sequence[Any] | None] | None = None,
) -> Iterator[ClipInput]:
    """Split a batch into clips (checking that the batch agrees with itself)."""
    if isinstance(captions, str):
        raise TypeError("captions must be a list of strings, one per clip")
    refs = list(references) if references is not None else [None] * len(captions)
    if not len(frames) == len(audio) == len(captions) == len(refs):
        raise ValueError(
            f"batch sizes differ: {len(frames)} videos, {len(audio)} audios, {len(captions)} captions, "
            f"{len(refs)} reference lists"
        )
    for f, a, c, r in zip(frames, audio, captions, refs, strict=True):
        images = None if r is None else [_numpy(i) for i in r]
        yield ClipInput(_frames(f), _audio(a), c, images)


# --- per-clip measurements ----------------------------------------------------------------------


def sync_cues(facts: CaptionFacts) -> set[str]:
    """The sounds a caption promises, each with its picture: voices (mouths), chimes, knocks."""
    return ({"voice"} if facts.speech else set()) | (set(facts.events) & {"hit", "flash"})


@dataclass(frozen=True)
class SubjectResult:
    """Counts for one clip: captioned subjects, found by colour, found with the right shape too;
    reference images, whose subject (colour and shape) is found in the picture."""

    subjects: int
    colour_ok: int
    fidelity_ok: int
    references: int
    references_ok: int


def subjects_of(clip: ClipInput, facts: CaptionFacts, config: WorldConfig) -> SubjectResult:
    blobs = [find_blobs(frame, config) for frame in sample_frames(clip.frames)]
    colour_ok = fidelity_ok = 0
    for colour, shape in facts.subjects.values():
        found, right = subject_presence(blobs, colour, shape)
        colour_ok += found
        fidelity_ok += right
    refs_ok = 0
    for image in clip.references or []:
        blob = reference_subject(image, config)
        refs_ok += blob is not None and subject_presence(blobs, blob.colour, blob.shape)[1]
    return SubjectResult(len(facts.subjects), colour_ok, fidelity_ok, len(clip.references or []), refs_ok)


@dataclass(frozen=True)
class ClipReport:
    """Everything measured on one clip (``row()`` flattens the numbers for a table)."""

    offset: OffsetResult
    heard: DecodedSpeech
    said: str
    cer: float  # nan when the caption has no speech
    events: EventResult
    subjects: SubjectResult

    def row(self) -> dict[str, float | str]:
        def ratio(a: int, b: int) -> float:
            return a / b if b else math.nan

        return {
            "offset_ms": self.offset.offset_ms,
            "sync_confidence": self.offset.confidence,
            "cer": self.cer,
            "heard": self.heard.text,
            "event_recall": ratio(self.events.heard, self.events.captioned),
            "event_recall_synced": ratio(self.events.synced, self.events.captioned),
            "subject_fidelity": ratio(self.subjects.fidelity_ok, self.subjects.subjects),
            "reference_fidelity": ratio(self.subjects.references_ok, self.subjects.references),
        }


def character_error_rate(heard: str, said: str) -> float:
    """torchmetrics' CER of one pair (1.0 for silence against speech)."""
    return float(CharErrorRate()([heard], [said]))


def measure_clip(
    frames: Any,
    audio: Any,
    caption: str,
    references: Sequence[Any] | None = None,
    config: WorldConfig | None = None,
    max_lag_ms: float = MAX_LAG_MS,
) -> ClipReport:
    """All the world's measurements of one clip, each signal computed once."""
    config = config or WorldConfig()
    clip = next(clip_inputs([frames], [audio], [caption], [references]))
    facts = caption_facts(clip.caption, config)
    activity = visual_activity(clip.frames, config)
    envelopes = band_envelopes(clip.audio, config)
    heard = decode_speech(clip.audio, config)
    return ClipReport(
        offset=av_offset(activity, envelopes, sync_cues(facts), config.fps, max_lag_ms),
        heard=heard,
        said=facts.speech,
        cer=character_error_rate(heard.text, facts.speech) if facts.speech else math.nan,
        events=event_result(facts, activity, envelopes, config, config.fps, EVENT_TOLERANCE_S),
        subjects=subjects_of(clip, facts, config),
    )


# --- the metrics --------------------------------------------------------------------------------


def _zero() -> Tensor:
    return torch.tensor(0.0, dtype=torch.float64)


class _WorldMetric(Metric):
    """Shared plumbing: a world config, batch splitting, float64 sum states."""

    full_state_update = False

    def __init__(self, config: WorldConfig | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config or WorldConfig()

    def _sum_states(self, *names: str) -> None:
        for name in names:
            self.add_state(name, default=_zero(), dist_reduce_fx="sum")

    def update(
        self,
        frames: Tensor | Sequence[Any],
        audio: Tensor | Sequence[Any],
        captions: Sequence[str],
        references: Sequence[Sequence[Any] | None] | None = None,
    ) -> None:
        for clip in clip_inputs(frames, audio, captions, references):
            self._update_clip(clip, caption_facts(clip.caption, self.config))

    def _update_clip(self, clip: ClipInput, facts: CaptionFacts) -> None:
        raise NotImplementedError


def _ratio(a: Tensor, b: Tensor) -> Tensor:
    return a / b if b > 0 else torch.tensor(math.nan, dtype=torch.float64)


class AVOffset(_WorldMetric):
    """Audio-video offset (ms; > 0 when the sound is late), from mouths vs voices, flashes vs chimes
    and lit walls vs knocks, whichever the caption names.

    ``compute()``: ``av_offset_ms`` mean |offset| (a clip that cannot be measured counts as
    ``max_lag_ms``), ``av_offset_signed_ms`` mean offset of measured clips, ``av_sync_confidence``
    (0 for unmeasurable clips), ``av_failed`` and ``av_skipped`` (no sync cue in the caption) counts.
    """

    higher_is_better = False
    is_differentiable = False

    def __init__(
        self, config: WorldConfig | None = None, max_lag_ms: float = MAX_LAG_MS, **kwargs: Any
    ) -> None:
        super().__init__(config, **kwargs)
        self.max_lag_ms = max_lag_ms
        self._sum_states("abs_sum", "signed_sum", "confidence_sum", "measured", "failed", "skipped")

    def _update_clip(self, clip: ClipInput, facts: CaptionFacts) -> None:
        activity, envelopes = (
            visual_activity(clip.frames, self.config),
            band_envelopes(clip.audio, self.config),
        )
        result = av_offset(activity, envelopes, sync_cues(facts), self.config.fps, self.max_lag_ms)
        if result.valid:
            self.abs_sum += abs(result.offset_ms)
            self.signed_sum += result.offset_ms
            self.confidence_sum += result.confidence
            self.measured += 1
        elif result.reason == "no_sync_cue":
            self.skipped += 1
        else:
            self.failed += 1

    def compute(self) -> dict[str, Tensor]:
        counted = self.measured + self.failed
        return {
            "av_offset_ms": _ratio(self.abs_sum + self.failed * self.max_lag_ms, counted),
            "av_offset_signed_ms": _ratio(self.signed_sum, self.measured),
            "av_sync_confidence": _ratio(self.confidence_sum, counted),
            "av_failed": self.failed.clone(),
            "av_skipped": self.skipped.clone(),
        }


class TranscriptCER(CharErrorRate):
    """Character error rate of the speech decoded from the audio vs the caption's ``<W>`` text
    (torchmetrics' ``CharErrorRate``; clips whose caption has no speech are skipped and counted in
    ``skipped``). Silence against speech scores 1 (every letter deleted)."""

    def __init__(self, config: WorldConfig | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config or WorldConfig()
        self.add_state("skipped", default=_zero(), dist_reduce_fx="sum")

    def update(  # type: ignore[override]
        self,
        frames: Tensor | Sequence[Any],
        audio: Tensor | Sequence[Any],
        captions: Sequence[str],
        references: Sequence[Sequence[Any] | None] | None = None,
    ) -> None:
        heard, said = [], []
        for clip in clip_inputs(frames, audio, captions, references):
            speech = caption_facts(clip.caption, self.config).speech
            if not speech:
                self.skipped += 1
                continue
            heard.append(decode_speech(clip.audio, self.config).text)
            said.append(speech)
        if said:
            super().update(heard, said)


class EventRecall(_WorldMetric):
    """Share of captioned ``<I>`` events whose sound is heard (``event_recall``) and heard within
    ``tolerance_s`` of the moment the picture shows the event (``event_recall_synced``)."""

    higher_is_better = True
    is_differentiable = False

    def __init__(
        self, config: WorldConfig | None = None, tolerance_s: float = EVENT_TOLERANCE_S, **kwargs: Any
    ) -> None:
        super().__init__(config, **kwargs)
        self.tolerance_s = tolerance_s
        self._sum_states("captioned", "heard", "synced")

    def _update_clip(self, clip: ClipInput, facts: CaptionFacts) -> None:
        if not facts.events:
            return
        activity = visual_activity(clip.frames, self.config)
        envelopes = band_envelopes(clip.audio, self.config)
        result = event_result(facts, activity, envelopes, self.config, self.config.fps, self.tolerance_s)
        self.captioned += result.captioned
        self.heard += result.heard
        self.synced += result.synced

    def compute(self) -> dict[str, Tensor]:
        return {
            "event_recall": _ratio(self.heard, self.captioned),
            "event_recall_synced": _ratio(self.synced, self.captioned),
        }


class SubjectFidelity(_WorldMetric):
    """Share of captioned subjects found with their colour and shape (``subject_fidelity``), with
    their colour at least (``subject_colour``), and of reference images whose subject is found
    (``reference_fidelity``, nan without references)."""

    higher_is_better = True
    is_differentiable = False

    def __init__(self, config: WorldConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._sum_states("subjects", "colour_ok", "fidelity_ok", "references", "references_ok")

    def _update_clip(self, clip: ClipInput, facts: CaptionFacts) -> None:
        r = subjects_of(clip, facts, self.config)
        self.subjects += r.subjects
        self.colour_ok += r.colour_ok
        self.fidelity_ok += r.fidelity_ok
        self.references += r.references
        self.references_ok += r.references_ok

    def compute(self) -> dict[str, Tensor]:
        return {
            "subject_fidelity": _ratio(self.fidelity_ok, self.subjects),
            "subject_colour": _ratio(self.colour_ok, self.subjects),
            "reference_fidelity": _ratio(self.references_ok, self.references),
        }


def world_metrics(config: WorldConfig | None = None, prefix: str | None = None) -> MetricCollection:
    """All four metrics in one collection; ``compute()`` is one flat dict (keys as documented above,
    and ``transcript_cer``)."""
    config = config or WorldConfig()
    return MetricCollection(
        {
            "av_offset": AVOffset(config),
            "transcript_cer": TranscriptCER(config),
            "event_recall": EventRecall(config),
            "subject_fidelity": SubjectFidelity(config),
        },
        prefix=prefix,
        compute_groups=False,
    )
