"""The stateless per-sample step: a raw shard sample -> a training sample in its bucket, or a skip.

    metadata check -> stage filter -> balancing -> task assignment -> bucket
    -> decode (PyAV) or cached latents, checked against the pipeline's format -> cut to the bucket
    -> reference images / reference audio for the tasks that take them

Reference audio (TR2AV): the sample's ``ref_audio.flac`` member (another utterance of the same
speaker; ``ref_audio_latent.npy`` when reading cached latents) if it has one, else a segment of the
same clip after the target window (the bucket takes the clip's start), at a hashed offset. Its length
is clipped to ``reference_audio_max_seconds``; a sample with less than ``reference_audio_min_seconds``
of either has none (the schedule then gives it another task; a fixed mix skips it, counted as
``no_reference_audio``).

A pure function of (config, epoch, raw sample): random choices are hashes of (seed, epoch, key), so a
sample prepares the same way wherever and whenever it is read. Only errors that mean bad data
(:class:`BadSample`, :class:`MediaError`) become skips; anything else is a bug and propagates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from alive_data.batch import TrainingSample
from alive_data.media import MediaError, decode_image, fit_frames, read_audio_file
from alive_data.pipeline import PipelineConfig
from alive_data.samples import BadSample, Sample, load_media, load_npy, read_metadata
from alive_data.schema import lookup
from alive_data.tasks import TASKS, uniform
from alive_data.text_cache import read_text
from alive_models.text.conditioning import NULL_CAPTION

# ("pixels" | "latent", frames or latent frames, height, width[, reference images])
Bucket = tuple[str | int, ...]
_REFERENCE = re.compile(r"ref_(\d+)\.jpg")
REFERENCE_AUDIO = "ref_audio.flac"  # another utterance of the clip's speaker (voice cloning)
REFERENCE_AUDIO_LATENT = "ref_audio_latent.npy"  # its cached latents


@dataclass(frozen=True)
class Skip:
    """Why a sample was dropped: ``reason`` is the counter name."""

    reason: str
    detail: str = ""


@dataclass
class Prepared:
    """A sample ready for its bucket."""

    bucket: Bucket
    sample: TrainingSample


class SamplePreparer:
    """``preparer(raw, epoch) -> Prepared | Skip`` for one pipeline config."""

    def __init__(self, config: PipelineConfig) -> None:
        self.c, self.format = config, config.format
        self._max_weight = max((w for t in config.balance.values() for w in t.values()), default=1.0)
        self._frames = sorted(config.buckets.frames, reverse=True)
        self._latent_frames = sorted(config.buckets.latent_frames, reverse=True)

    def __call__(self, raw: dict[str, Any], epoch: int) -> Prepared | Skip:
        try:
            return self._prepare(raw, epoch)
        except BadSample as e:
            return Skip(e.reason, e.detail)
        except MediaError as e:
            return Skip(e.reason, str(e))

    def _prepare(self, raw: dict[str, Any], epoch: int) -> Prepared | Skip:
        c, key = self.c, raw["__key__"]
        meta, caption = read_metadata(raw)
        reason = c.filter.reason(meta)
        if reason is not None:
            return Skip(reason)
        if c.balance and uniform(c.seed, epoch, key, "balance") >= self._balance_weight(meta):
            return Skip("balance")
        refs = sorted((int(m[1]), name) for name in raw if (m := _REFERENCE.fullmatch(name)))
        bucket = self.bucket(meta)
        has_reference_audio = (
            self._reference_audio_seconds(raw, meta, bucket) >= c.tasks.reference_audio_min_seconds
        )
        task, dropped, mutual = c.tasks.assign(c.seed, epoch, key, bool(refs), has_reference_audio)
        spec = TASKS[task]
        if spec.references and not refs:  # a fixed task mix can draw r2va for any sample
            return Skip("no_references", f"task {task} needs reference images")
        if spec.reference_audio and not has_reference_audio:
            return Skip("no_reference_audio", f"task {task} needs reference audio")
        if bucket is None:
            return Skip("too_short")
        if c.buckets.by_reference_count:
            bucket = (*bucket, len(refs) if spec.references else 0)
        sample = load_media(raw, meta, caption, self.format, latents=c.latents is not None, codecs=c.latents)
        media = self._fit_latents(sample, bucket) if c.latents else self._fit_pixels(sample, bucket)
        size = self._frame_size(bucket)
        references = np.zeros((0, *size, 3), np.uint8)
        if spec.references:
            references = np.stack([fit_frames(decode_image(raw[name])[None], size)[0] for _, name in refs])
        reference_audio = None
        if spec.reference_audio:
            reference_audio = self._reference_audio(raw, sample, media["audio_length"], epoch)
        text = None
        if c.text_embeddings:  # the null caption's encodings when the caption was dropped
            try:
                text = read_text(raw, c.text_embeddings, null=dropped)
            except KeyError as e:
                return Skip("missing_text_embeddings", f"no {e.args[0]} member")
            except (ValueError, OSError, EOFError) as e:
                return Skip("corrupt_text_embeddings", str(e))
        return Prepared(
            bucket,
            TrainingSample(
                key=key,
                task=task,
                spec=spec,
                mutual=mutual,
                caption=NULL_CAPTION if dropped else meta["caption"],
                transcript="" if dropped else caption.speech_text,
                references=references,
                reference_audio=reference_audio,
                text=text,
                **media,
            ),
        )

    def _reference_audio_seconds(
        self, raw: dict[str, Any], meta: Mapping[str, Any], bucket: Bucket | None
    ) -> float:
        """Seconds of reference audio a sample offers, from its members and metadata (no decoding)."""
        member = REFERENCE_AUDIO_LATENT if self.c.latents else REFERENCE_AUDIO
        if member in raw:
            return meta.get("reference_audio_seconds", math.inf)
        if bucket is None:
            return 0.0
        kind, length = bucket[:2]
        frames = length if kind == "pixels" else self.format.video.timeline.num_frames(length)
        return meta["duration"] - frames / self.format.fps

    def _reference_audio(
        self, raw: dict[str, Any], sample: Sample, target_length: int, epoch: int
    ) -> np.ndarray:
        """Reference audio in the batch's form: float32 [N] waveform or [C, L] latents."""
        t = self.c.tasks
        if self.c.latents:
            rate, geometry = self.format.audio.latent_rate, self.format.audio
            if REFERENCE_AUDIO_LATENT in raw:
                audio = load_npy(raw[REFERENCE_AUDIO_LATENT], "ref_audio_latent", geometry.channels, 2)
            else:
                audio = sample.audio_latent[:, target_length:]
        else:
            rate = self.format.sample_rate
            if REFERENCE_AUDIO in raw:
                audio, found = read_audio_file(raw[REFERENCE_AUDIO])
                if found != rate:
                    raise BadSample("wrong_sample_rate", f"ref_audio at {found} Hz, expected {rate} Hz")
            else:
                audio = sample.audio[target_length:]
        if audio.shape[-1] < round(t.reference_audio_min_seconds * rate):
            raise BadSample("no_reference_audio", f"{audio.shape[-1] / rate:.2f} s of reference audio")
        if not np.isfinite(audio).all():
            raise BadSample("nan", "non-finite reference audio")
        spare = audio.shape[-1] - round(t.reference_audio_max_seconds * rate)
        start = int(uniform(self.c.seed, epoch, sample.key, "ref_audio") * (spare + 1)) if spare > 0 else 0
        return np.ascontiguousarray(audio[..., start : start + audio.shape[-1] - max(spare, 0)], np.float32)

    def _balance_weight(self, meta: Mapping[str, Any]) -> float:
        weight = 1.0
        for path, table in self.c.balance.items():
            value = lookup(dict(meta), path)
            name = str(value).lower() if isinstance(value, bool) else str(value)
            weight *= table.get(name, table.get("*", 1.0))
        return weight / self._max_weight

    def bucket(self, meta: Mapping[str, Any]) -> Bucket | None:
        """The bucket of a validated sample's metadata; None when it is shorter than every length."""
        frames = meta.get("num_frames", round(meta["duration"] * self.format.fps))
        if self.c.latents is not None:
            g = self.format.video
            t = g.timeline.num_video_latents(frames, strict=False)
            fit = next((n for n in self._latent_frames if n <= t), None)
            s = g.spatial_stride
            return None if fit is None else ("latent", fit, meta["height"] // s, meta["width"] // s)
        aspect = math.log(meta["width"] / meta["height"])
        height, width = min(self.c.buckets.resolutions, key=lambda r: abs(math.log(r[1] / r[0]) - aspect))
        fit = next((n for n in self._frames if n <= frames), None)
        return None if fit is None else ("pixels", fit, height, width)

    def _frame_size(self, bucket: Bucket) -> tuple[int, int]:
        """The clip's resolution in pixels (for latents: the resolution the cached latent encodes)."""
        kind, _, height, width = bucket[:4]
        s = self.format.video.spatial_stride if kind == "latent" else 1
        return height * s, width * s

    def _fit_pixels(self, sample: Sample, bucket: Bucket) -> dict[str, Any]:
        _, length, height, width = bucket[:4]
        if len(sample.frames) < length:
            raise BadSample("short_video", f"{len(sample.frames)} frames decoded, need {length}")
        rate = self.format.sample_rate
        need = round(length / self.format.fps * rate)
        audio = sample.audio[:need]
        if len(audio) < need - rate // 10:  # more than 0.1 s missing
            raise BadSample("short_audio", f"{len(audio)} samples, need {need}")
        return {
            "video": fit_frames(sample.frames[:length], (height, width)),
            "audio": np.pad(audio, (0, need - len(audio))),
            "audio_length": len(audio),
        }

    def _fit_latents(self, sample: Sample, bucket: Bucket) -> dict[str, Any]:
        _, length, height, width = bucket[:4]
        video, audio = sample.video_latent, sample.audio_latent
        if video.shape[2:] != (height, width):
            raise BadSample("latent_shape", f"video latent {video.shape}, metadata says {height}x{width}")
        if video.shape[1] < length:
            raise BadSample("short_video", f"{video.shape[1]} latent frames, need {length}")
        frames = self.format.video.timeline.num_frames(length)
        need = self.format.audio.num_latents(round(frames / self.format.fps * self.format.sample_rate))
        if audio.shape[-1] < need:
            raise BadSample("short_audio", f"{audio.shape[-1]} audio latents, need {need}")
        return {"video_latent": video[:, :length], "audio_latent": audio[:, :need], "audio_length": need}
