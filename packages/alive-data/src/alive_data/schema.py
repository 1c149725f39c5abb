"""The per-sample metadata (the ``json`` member of a shard) and its validation, as a pydantic schema.

Required: ``caption`` (structured, seed 000 eq. 3), ``fps``, ``duration`` (s), ``width``, ``height``.
Optional: ``num_frames``, ``sample_rate``, ``audio_samples``, ``speaking`` (derived from the caption
when absent), ``category`` ({"l1", "l2", "l3"}), ``labels`` (keyword-table matches), ``quality`` (the
scores below), ``latents`` (what made the cached latents: both codecs' geometry and spec),
``text_cache`` (which caption encoders made the cached caption encodings), and any other field
(``source``, ``subject_tracks``, ...), kept as is.

Validation is strict (no "24" for 24, no true for 1, no NaN scores): whatever passes can be used
without further type checks, so the pipeline catches only the errors that mean bad data.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)
from pydantic import ValidationError as _ValidationError

from alive_models.codecs import AudioGeometry, VideoGeometry


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Score = Annotated[float, AfterValidator(_finite)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Quality(_Strict):
    """Quality scores on our labelers' scales (see ``alive_data.filters``); each optional."""

    ocr: Score | None = None
    aesthetic: Score | None = None
    motion: Score | None = None
    quality_class: Score | None = None
    audio_quality: Score | None = None
    av_coherence: Score | None = None
    clarity: Score | None = None


class Category(_Strict):
    """The L1/L2/L3 labels of seed 000 §3.4."""

    l1: str | None = None
    l2: str | None = None
    l3: str | None = None


class VideoLatentGeometry(_Strict):
    """A video codec's geometry as cached (:class:`alive_models.codecs.VideoGeometry`)."""

    channels: PositiveInt
    spatial_stride: PositiveInt
    temporal_stride: PositiveInt
    causal_first_frame: bool

    def geometry(self) -> VideoGeometry:
        return VideoGeometry(**self.model_dump())


class AudioLatentGeometry(_Strict):
    """An audio codec's geometry as cached (:class:`alive_models.codecs.AudioGeometry`)."""

    channels: PositiveInt
    sample_rate: PositiveInt
    hop_length: PositiveInt

    def geometry(self) -> AudioGeometry:
        return AudioGeometry(**self.model_dump())


class LatentCache(_Strict):
    """``meta["latents"]``: which codecs made ``video_latent.npy`` / ``audio_latent.npy``."""

    video: VideoLatentGeometry
    audio: AudioLatentGeometry
    video_codec: str
    audio_codec: str


class TextCache(_Strict):
    """``meta["text_cache"]``: which caption encoders made the ``text*.npy`` members
    (:mod:`alive_data.text_cache`), and their widths."""

    encoders: dict[str, str]
    dims: dict[str, PositiveInt]
    max_length: PositiveInt


class SampleMetadata(BaseModel):
    """One sample's ``json`` member. Unknown fields are allowed and kept."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    caption: str
    fps: PositiveFloat
    duration: PositiveFloat
    width: PositiveInt
    height: PositiveInt
    num_frames: PositiveInt | None = None
    sample_rate: PositiveInt | None = None
    audio_samples: NonNegativeInt | None = None
    speaking: bool | None = None
    category: Category = Category()
    quality: Quality = Quality()
    labels: list[list[str]] = []
    latents: LatentCache | None = None
    text_cache: TextCache | None = None

    @model_validator(mode="after")
    def _one_sample_rate(self) -> SampleMetadata:
        cached = self.latents.audio.sample_rate if self.latents is not None else None
        if None not in (cached, self.sample_rate) and cached != self.sample_rate:
            raise ValueError(f"audio at {self.sample_rate} Hz but its latents were cached at {cached} Hz")
        return self


class MetadataError(ValueError):
    """Metadata that does not fit the schema; ``problems`` lists every violation."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_metadata(meta: Any) -> SampleMetadata:
    """The typed metadata, or :class:`MetadataError` with every problem."""
    if not isinstance(meta, dict):
        raise MetadataError([f"metadata must be a JSON object, got {type(meta).__name__}"])
    try:
        return SampleMetadata.model_validate(meta)
    except _ValidationError as e:
        raise MetadataError([_problem(err) for err in e.errors()]) from None


def latent_cache(meta: dict[str, Any]) -> LatentCache | None:
    """The typed ``latents`` entry of metadata that passed :func:`parse_metadata`."""
    return LatentCache.model_validate(meta["latents"]) if meta.get("latents") is not None else None


def validate_metadata(meta: Any) -> list[str]:
    """Every schema problem of one sample's metadata; empty when it is valid."""
    try:
        parse_metadata(meta)
    except MetadataError as e:
        return e.problems
    return []


def _problem(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "missing":
        return f"missing field {where!r}"
    if err["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    return f"field {where!r}: {err['msg']}"


def lookup(meta: dict[str, Any], path: str) -> Any:
    """``lookup(meta, "quality.aesthetic")``; None when any part is missing."""
    value: Any = meta
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
