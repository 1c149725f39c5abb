"""The per-sample metadata (the ``json`` member of a shard) and its validation.

Required: ``caption`` (structured, seed 000 eq. 3), ``fps``, ``duration`` (s), ``width``, ``height``.
Optional: ``speaking`` (derived from the caption when absent), ``category`` ({"l1", "l2", "l3"}),
``labels`` (keyword-table matches), ``quality`` (scores below), ``subject_tracks``, ``source``,
``latents`` (geometry of cached latents).
"""

from __future__ import annotations

from typing import Any

QUALITY_FIELDS = ("ocr", "aesthetic", "motion", "quality_class", "audio_quality", "av_coherence", "clarity")
REQUIRED = {"caption": str, "fps": (int, float), "duration": (int, float), "width": int, "height": int}


def validate_metadata(meta: Any) -> list[str]:
    """Every schema problem of one sample's metadata; empty when it is valid."""
    if not isinstance(meta, dict):
        return [f"metadata must be a JSON object, got {type(meta).__name__}"]
    problems = []
    for name, kind in REQUIRED.items():
        if name not in meta:
            problems.append(f"missing field {name!r}")
        elif not isinstance(meta[name], kind) or isinstance(meta[name], bool):
            problems.append(f"field {name!r} has type {type(meta[name]).__name__}")
        elif kind is not str and not meta[name] > 0:
            problems.append(f"field {name!r} must be positive, got {meta[name]}")
    if "speaking" in meta and not isinstance(meta["speaking"], bool):
        problems.append("field 'speaking' must be true or false")
    quality = meta.get("quality", {})
    if not isinstance(quality, dict):
        problems.append("field 'quality' must be an object")
    else:
        for name, value in quality.items():
            if name not in QUALITY_FIELDS:
                problems.append(f"unknown quality score {name!r}")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
                problems.append(f"quality score {name!r} must be a number")
    category = meta.get("category", {})
    if not isinstance(category, dict) or not set(category) <= {"l1", "l2", "l3"}:
        problems.append("field 'category' must be an object with keys l1, l2, l3")
    return problems


def lookup(meta: dict[str, Any], path: str) -> Any:
    """``lookup(meta, "quality.aesthetic")``; None when any part is missing."""
    value: Any = meta
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
