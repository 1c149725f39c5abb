"""From a raw shard sample (bytes per extension) to a checked, decoded training sample.

Shared by the pipeline and ``alive-data inspect`` so both judge samples the same way. Every failure
is a :class:`BadSample` with a reason code; callers count them.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from alive_data.media import MediaError, decode_clip
from alive_data.schema import validate_metadata
from alive_models.caption import Caption, check_caption


class BadSample(Exception):
    """A sample to skip; ``reason`` is the counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class Sample:
    """A checked sample: metadata, parsed caption and either decoded media or cached latents."""

    key: str
    meta: dict[str, Any]
    caption: Caption
    frames: np.ndarray | None = None  # [F, H, W, 3] uint8
    audio: np.ndarray | None = None  # [N] float32
    video_latent: np.ndarray | None = None  # [C, T, h, w]
    audio_latent: np.ndarray | None = None  # [C, L]


def read_metadata(raw: dict[str, Any]) -> tuple[dict[str, Any], Caption]:
    """Parse and validate the ``json`` member and its caption (no media decoding)."""
    if "json" not in raw:
        raise BadSample("missing_json")
    try:
        meta = json.loads(raw["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadSample("malformed_json", str(e)) from e
    problems = validate_metadata(meta)
    if problems:
        raise BadSample("schema", "; ".join(problems))
    caption, caption_problems = check_caption(meta["caption"])
    if caption is None:
        raise BadSample("malformed_caption", str(caption_problems[0]))
    return meta, caption


def _load_npy(data: bytes, name: str) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BadSample("corrupt_latent", f"{name}: {e}") from e
    if array.size == 0:
        raise BadSample("zero_length", name)
    if not np.isfinite(array).all():
        raise BadSample("nan_latent", name)
    return array


def load_sample(
    raw: dict[str, Any], fps: float, sample_rate: int, use_latents: bool, codecs: dict[str, str] | None = None
) -> Sample:
    """Metadata + caption + (latents or decoded media).

    ``codecs`` ({"video": spec, "audio": spec}) must name the codecs the latents were cached with.
    """
    meta, caption = read_metadata(raw)
    key = raw["__key__"]
    if use_latents:
        if "video_latent.npy" not in raw or "audio_latent.npy" not in raw:
            raise BadSample("missing_latents")
        if codecs is not None:
            cached = meta.get("latents", {})
            cached = {"video": cached.get("video_codec"), "audio": cached.get("audio_codec")}
            if cached != codecs:
                raise BadSample("latent_codec", f"cached with {cached}, expected {codecs}")
        video = _load_npy(raw["video_latent.npy"], "video_latent")
        audio = _load_npy(raw["audio_latent.npy"], "audio_latent")
        return Sample(
            key, meta, caption, video_latent=video.astype(np.float32), audio_latent=audio.astype(np.float32)
        )
    if "mp4" not in raw:
        raise BadSample("missing_media")
    if meta["fps"] != fps:
        raise BadSample("wrong_fps", f"{meta['fps']} fps, expected {fps}")
    try:
        clip = decode_clip(raw["mp4"], fps, sample_rate, audio=raw.get("flac", raw.get("wav")))
    except MediaError as e:
        raise BadSample(e.reason, str(e)) from e
    return Sample(key, meta, caption, frames=clip.frames, audio=clip.audio)
