"""The synthetic world: clips whose every property is known, and the metrics that measure them.

Generate: ``generate_clip(index, seed)`` / ``generate_clips(count, seed)`` -> :class:`WorldClip`
(frames, audio, caption, metadata, references, hi-res frames); ``render_clip(scene)`` for a
hand-built :class:`Scene`; ``write_source_folder(folder, count)`` for ``alive-data write``.
Measure: ``world_metrics()`` (torchmetrics) or ``measure_clip(frames, audio, caption)``.
See the package README, section "The synthetic world".
"""

from typing import Any

from alive_data.world.config import WorldConfig
from alive_data.world.generate import (
    WorldClip,
    generate_clip,
    generate_clips,
    read_clip,
    render_clip,
    write_clips,
    write_source_folder,
)
from alive_data.world.scene import Event, Scene, Subject, Utterance, sample_scene

# The metrics import torchmetrics (seconds of start-up): loaded on first use, so generating clips
# (and the writer's worker processes) stays light.
_METRICS = (
    "AVOffset",
    "ClipReport",
    "EventRecall",
    "SubjectFidelity",
    "TranscriptCER",
    "measure_clip",
    "pixels_to_frames",
    "world_metrics",
)


def __getattr__(name: str) -> Any:
    if name in _METRICS:
        from alive_data.world import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AVOffset",
    "ClipReport",
    "Event",
    "EventRecall",
    "Scene",
    "Subject",
    "SubjectFidelity",
    "TranscriptCER",
    "Utterance",
    "WorldClip",
    "WorldConfig",
    "generate_clip",
    "generate_clips",
    "measure_clip",
    "pixels_to_frames",
    "read_clip",
    "render_clip",
    "sample_scene",
    "world_metrics",
    "write_clips",
    "write_source_folder",
]
