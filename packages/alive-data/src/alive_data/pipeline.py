"""What defines a training stage's data stream: sources, format, filter, balance, tasks, buckets.

The stream itself is built from three parts, each in its own module:

    alive_data.stream   stateful, per worker: shards split by node and worker -> mixture of sources
                        -> shuffle buffer -> buckets, with the state that resumes it exactly
    alive_data.prepare  stateless, per sample: metadata check -> stage filter -> balancing -> task
                        -> bucket -> decode (PyAV) or cached latents -> a training sample or a skip reason
    alive_data.loader   the DataLoader (torchdata's StatefulDataLoader) that runs the workers, orders
                        their batches and attaches the position after each batch to it

Batches are :class:`alive_data.batch.AVBatch`. Determinism: every random choice is a hash of (seed,
epoch, rank, worker, counter or sample key), so a resumed run sees the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alive_data.avformat import AVFormat
from alive_data.filters import StageFilter
from alive_data.tasks import TaskConfig
from alive_data.text_cache import TEXT_ENCODERS


@dataclass(frozen=True)
class SourceConfig:
    """One data source of a mixture: shard URLs and its relative weight (SFT: CT 3, aesthetic 1)."""

    name: str
    urls: list[str] | str
    weight: float = 1.0


@dataclass(frozen=True)
class BucketConfig:
    """Batch shapes. Pixels: resolutions (height, width) by aspect ratio and clip lengths in frames.
    Latents: lengths in latent frames (the resolution is whatever was cached).

    ``by_reference_count``: samples given K reference images only share a batch with samples given
    K (K = 0 for tasks without references), so a batch is never padded with missing references:
    every sample of it is in the same reference state (reference joint tuning).
    """

    batch_size: int = 1
    resolutions: tuple[tuple[int, int], ...] = ((480, 832), (832, 480), (624, 624))
    frames: tuple[int, ...] = (121, 81, 49)
    latent_frames: tuple[int, ...] = (31, 21, 13)
    by_reference_count: bool = False


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that defines a stage's data stream. ``from_dict`` takes the YAML/OmegaConf form.

    ``format`` is the one definition of frame rate, sample rate and codec geometry (see
    :mod:`alive_data.avformat`); samples in another format are skipped and counted. ``latents``
    ({"video": spec, "audio": spec}) reads cached latents made by those codecs instead of decoding,
    and needs the codecs' geometry in ``format``. ``text_embeddings`` (encoder names, e.g.
    ["t5", "qwen"]) reads the caption encodings cached by ``alive-data write --text-encoders`` into
    ``AVBatch.text_embeddings`` (a sample without them is a ``missing_text_embeddings`` skip).
    """

    sources: tuple[SourceConfig, ...]
    seed: int = 0
    shuffle_buffer: int = 64
    format: AVFormat = field(default_factory=AVFormat)
    latents: dict[str, str] | None = None
    filter: StageFilter = field(default_factory=StageFilter)
    balance: dict[str, dict[str, float]] = field(default_factory=dict)  # field -> {value: weight}
    tasks: TaskConfig = field(default_factory=TaskConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)
    text_embeddings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.text_embeddings) - set(TEXT_ENCODERS)
        if unknown:
            raise ValueError(f"text_embeddings: unknown encoders {sorted(unknown)}; known: {TEXT_ENCODERS}")
        if not self.sources:
            raise ValueError("a pipeline needs at least one source")
        if self.buckets.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.buckets.batch_size}")
        if self.latents is not None:
            if set(self.latents) != {"video", "audio"}:
                raise ValueError(f"latents must name a video and an audio codec spec, got {self.latents}")
            if self.format.video is None or self.format.audio is None:
                raise ValueError("reading cached latents needs both codecs' geometry in the format")
        elif self.format.video is not None:  # pixel clips must fill whole latents of the codec in use
            for frames in self.buckets.frames:
                self.format.video.timeline.num_video_latents(frames)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineConfig:
        data = dict(data)
        buckets = dict(data.pop("buckets", {}))
        if "resolutions" in buckets:
            buckets["resolutions"] = tuple(tuple(r) for r in buckets["resolutions"])
        for name in ("frames", "latent_frames"):
            if name in buckets:
                buckets[name] = tuple(buckets[name])
        return cls(
            sources=tuple(SourceConfig(**s) for s in data.pop("sources")),
            text_embeddings=tuple(data.pop("text_embeddings", ())),
            format=AVFormat.from_dict(data.pop("format", {})),
            filter=StageFilter.from_config(data.pop("filter", {})),
            tasks=TaskConfig(**data.pop("tasks", {})),
            buckets=BucketConfig(**buckets),
            **data,
        )
