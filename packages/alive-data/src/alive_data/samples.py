"""From a raw shard sample (bytes per extension) to a checked, decoded training sample.

Shared by the pipeline and ``alive-data inspect`` so both judge samples the same way. Every failure
is a :class:`BadSample` with a reason code; callers count them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from alive_data.avformat import AVFormat
from alive_data.media import MediaError, decode_clip
from alive_data.schema import MetadataError, latent_cache, parse_metadata
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
    try:
        parse_metadata(meta)
    except MetadataError as e:
        raise BadSample("schema", str(e)) from e
    caption, caption_problems = check_caption(meta["caption"])
    if caption is None:
        raise BadSample("malformed_caption", str(caption_problems[0]))
    return meta, caption


def recorded_format(meta: dict[str, Any]) -> AVFormat:
    """The format a (validated) sample says it was written in: what ``inspect`` decodes it with."""
    cache = latent_cache(meta)
    rate = meta.get("sample_rate") or (cache.audio.sample_rate if cache else AVFormat.sample_rate)
    if cache is None:
        return AVFormat(meta["fps"], rate)
    return AVFormat(meta["fps"], rate, cache.video.geometry(), cache.audio.geometry())


def check_format(meta: dict[str, Any], fmt: AVFormat, codecs: Mapping[str, str] | None = None) -> None:
    """Raise :class:`BadSample` unless a validated sample is in ``fmt`` (and, for cached latents,
    was cached with the ``codecs`` specs)."""
    if meta["fps"] != fmt.fps:
        raise BadSample("wrong_fps", f"{meta['fps']} fps, expected {fmt.fps}")
    if meta.get("sample_rate", fmt.sample_rate) != fmt.sample_rate:
        raise BadSample("wrong_sample_rate", f"{meta['sample_rate']} Hz, expected {fmt.sample_rate} Hz")
    if codecs is None:
        return
    cache = latent_cache(meta)
    if cache is None:
        raise BadSample("missing_latents", "no latent geometry in the metadata")
    cached = {"video": cache.video_codec, "audio": cache.audio_codec}
    if cached != dict(codecs):
        raise BadSample("latent_codec", f"cached with {cached}, expected {dict(codecs)}")
    for name, expected, got in (
        ("video", fmt.video, cache.video.geometry()),
        ("audio", fmt.audio, cache.audio.geometry()),
    ):
        if expected is not None and got != expected:
            raise BadSample("latent_geometry", f"{name} cached as {got}, expected {expected}")


def load_npy(data: bytes, name: str, channels: int, ndim: int) -> np.ndarray:
    """A cached latent member, checked (shape, dtype, finite) and as float32; bad data is a BadSample."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BadSample("corrupt_latent", f"{name}: {e}") from e
    if array.ndim != ndim or array.shape[0] != channels or not np.issubdtype(array.dtype, np.floating):
        raise BadSample("latent_shape", f"{name}: {array.dtype} {array.shape}, expected {channels} channels")
    if array.size == 0:
        raise BadSample("zero_length", name)
    if not np.isfinite(array).all():
        raise BadSample("nan_latent", name)
    return array.astype(np.float32)


def load_sample(
    raw: dict[str, Any], fmt: AVFormat, latents: bool = False, codecs: Mapping[str, str] | None = None
) -> Sample:
    """Metadata + caption + (cached latents or decoded media), checked against ``fmt``.

    ``latents``: read ``video_latent.npy`` / ``audio_latent.npy`` instead of decoding; ``codecs``
    ({"video": spec, "audio": spec}) must then name the codecs they were cached with.
    """
    meta, caption = read_metadata(raw)
    return load_media(raw, meta, caption, fmt, latents, codecs)


def load_media(
    raw: dict[str, Any],
    meta: dict[str, Any],
    caption: Caption,
    fmt: AVFormat,
    latents: bool = False,
    codecs: Mapping[str, str] | None = None,
) -> Sample:
    """:func:`load_sample` for metadata already read with :func:`read_metadata`."""
    check_format(meta, fmt, codecs)
    key = raw["__key__"]
    if latents:
        cache = latent_cache(meta)
        if cache is None or "video_latent.npy" not in raw or "audio_latent.npy" not in raw:
            raise BadSample("missing_latents")
        video = load_npy(raw["video_latent.npy"], "video_latent", cache.video.channels, 4)
        audio = load_npy(raw["audio_latent.npy"], "audio_latent", cache.audio.channels, 2)
        return Sample(key, meta, caption, video_latent=video, audio_latent=audio)
    if "mp4" not in raw:
        raise BadSample("missing_media")
    try:
        clip = decode_clip(raw["mp4"], fmt.fps, fmt.sample_rate, audio=raw.get("flac", raw.get("wav")))
    except MediaError as e:
        raise BadSample(e.reason, str(e)) from e
    return Sample(key, meta, caption, frames=clip.frames, audio=clip.audio)
