"""``alive-data write``: mp4 files (a folder or a manifest) -> WebDataset tar shards.

Each clip is decoded with PyAV, resampled to the target frame rate (24 fps) and to 16 kHz mono audio,
optionally resized, labeled with the keyword table, and stored as:
- ``json``: metadata (see ``alive_data.schema``), with ``speaking`` and ``labels`` derived;
- ``mp4``: the video at the target rate (H.264); ``flac``: the audio, lossless and sample-exact
  (AAC would shift it by its priming samples, which matters for lip sync);
- with codecs, ``video_latent.npy`` / ``audio_latent.npy`` (float16) beside or instead of the media;
- ``ref_K.jpg``: the reference images a source lists in ``"references"`` (paths relative to the
  mp4), fitted to the clip's size.

Clips are processed by a pool of worker processes; shards are renamed into place only when complete,
and a rerun skips every key already in a complete shard, so an interrupted job resumes without
duplicates. Bad inputs are skipped, counted by reason and listed in ``write_report.json``.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from alive_data.labels import LabelTable, default_table
from alive_data.media import (
    MediaError,
    decode_clip,
    decode_image,
    encode_flac,
    encode_jpeg,
    encode_mp4,
    fit_frames,
)
from alive_data.samples import BadSample
from alive_data.schema import validate_metadata
from alive_data.shards import ShardSink, existing_shards, safe_key
from alive_models.caption import check_caption


@dataclass(frozen=True)
class SourceItem:
    """One input clip: its key, mp4 path and the metadata (caption included) that goes with it."""

    key: str
    path: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class WriteOptions:
    """How clips are normalised and what is stored."""

    fps: float = 24.0
    sample_rate: int = 16_000
    size: tuple[int, int] | None = None  # (height, width): cover-resize and centre-crop
    video_codec: str | None = None  # codec spec (alive_models.codecs.spec); enables latent caching
    audio_codec: str | None = None
    latents_only: bool = False  # store latents instead of media
    label_table: str | None = None  # JSON keyword table; None = the bundled default
    crf: int = 18


@dataclass
class WriteReport:
    """What a run did: counts, skips by reason, the bad inputs and the shards written."""

    inputs: int = 0
    already_written: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    bad_samples: list[dict[str, str]] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)


def scan_folder(folder: Path) -> list[SourceItem]:
    """``*.mp4`` under ``folder``; metadata from a sidecar ``NAME.json`` or the caption from ``NAME.txt``."""
    items = []
    for path in sorted(folder.rglob("*.mp4")):
        meta: dict[str, Any] = {}
        if path.with_suffix(".json").is_file():
            try:
                meta = json.loads(path.with_suffix(".json").read_text())
            except json.JSONDecodeError:
                meta = {"__error__": "malformed sidecar json"}
        elif path.with_suffix(".txt").is_file():
            meta = {"caption": path.with_suffix(".txt").read_text().strip()}
        items.append(SourceItem(safe_key(str(path.relative_to(folder).with_suffix(""))), str(path), meta))
    return items


def read_manifest(manifest: Path) -> list[SourceItem]:
    """JSON lines of {"path", "caption", ...metadata, optional "key"}; relative paths are resolved
    against the manifest's folder. A line that is not a JSON object becomes a counted bad input."""
    items = []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            path = Path(record.pop("path"))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            items.append(
                SourceItem(f"manifest_line_{number}", "", {"__error__": f"line {number} is not valid"})
            )
            continue
        path = path if path.is_absolute() else manifest.parent / path
        key = safe_key(str(record.pop("key", path.stem)))
        items.append(SourceItem(key, str(path), record))
    return items


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class _Worker:
    """Per-process state: options, label table and codecs are built once per worker."""

    options: WriteOptions
    labels: LabelTable
    codecs: tuple | None = None

    @classmethod
    def init(cls, options: WriteOptions) -> None:
        from alive_models.codecs import audio_codec_from_spec, video_codec_from_spec

        torch.set_num_threads(1)
        cls.options = options
        cls.labels = LabelTable.from_file(options.label_table) if options.label_table else default_table()
        if options.video_codec:
            cls.codecs = (
                video_codec_from_spec(options.video_codec),
                audio_codec_from_spec(options.audio_codec or "deterministic"),
            )

    @classmethod
    def process(cls, item: SourceItem) -> tuple[str, dict | None, str, str]:
        """(key, sample or None, reason, detail) for one input."""
        try:
            return item.key, cls._sample(item), "", ""
        except MediaError as e:
            return item.key, None, e.reason, str(e)
        except BadSample as e:
            return item.key, None, e.reason, e.detail
        except Exception as e:  # one odd file must not end a run over millions; it is listed
            return item.key, None, "error", f"{type(e).__name__}: {e}"

    @classmethod
    def _sample(cls, item: SourceItem) -> dict:
        o = cls.options
        meta = dict(item.metadata)
        if "__error__" in meta:
            raise BadSample("bad_input", meta["__error__"])
        if not isinstance(meta.get("caption"), str):
            raise BadSample("missing_caption", "no caption in the manifest, sidecar .json or .txt")
        caption, problems = check_caption(meta["caption"])
        if caption is None:
            raise BadSample("malformed_caption", str(problems[0]))
        if not Path(item.path).is_file():
            raise BadSample("missing_file", item.path)
        clip = decode_clip(item.path, o.fps, o.sample_rate)
        frames = fit_frames(clip.frames, o.size) if o.size else clip.frames
        if cls.codecs is not None:  # keep the frames that fill whole latents (1 + 4k for Wan)
            timeline = cls.codecs[0].geometry.timeline
            frames = frames[: timeline.num_frames(timeline.num_video_latents(len(frames), strict=False))]
        audio = clip.audio[: round(len(frames) / o.fps * o.sample_rate)]
        labels = cls.labels.match(caption)
        meta.update(
            fps=o.fps,
            duration=len(frames) / o.fps,
            width=int(frames.shape[2]),
            height=int(frames.shape[1]),
            num_frames=len(frames),
            sample_rate=o.sample_rate,
            audio_samples=len(audio),
            speaking=meta.get("speaking", caption.speaking),
            labels=[list(asdict(lb).values()) for lb in labels],
            source=item.path,
        )
        if labels and "category" not in meta:
            meta["category"] = {"l1": labels[0].l1, "l2": labels[0].l2, "l3": labels[0].l3}
        problems = validate_metadata(meta)
        if problems:
            raise BadSample("schema", "; ".join(problems))

        sample: dict[str, Any] = {"__key__": item.key}
        for k, image in enumerate(_references(item, meta.pop("references", []), frames.shape[1:3])):
            sample[f"ref_{k}.jpg"] = encode_jpeg(image)
        if not o.latents_only:
            sample["mp4"] = encode_mp4(frames, o.fps, crf=o.crf)
            sample["flac"] = encode_flac(audio, o.sample_rate)
        if cls.codecs is not None:
            video_codec, audio_codec = cls.codecs
            pixels = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
            with torch.no_grad():
                v = video_codec.encode(pixels)[0]
                a = audio_codec.encode(torch.from_numpy(audio)[None, None])[0]
            sample["video_latent.npy"] = npy_bytes(v.to(torch.float16).numpy())
            sample["audio_latent.npy"] = npy_bytes(a.to(torch.float16).numpy())
            meta["latents"] = {
                "video": asdict(video_codec.geometry),
                "audio": asdict(audio_codec.geometry),
                "video_codec": o.video_codec,
                "audio_codec": o.audio_codec or "deterministic",
            }
        sample["json"] = json.dumps(meta).encode()
        return sample


def _references(item: SourceItem, names: Any, size: tuple[int, int]) -> list[np.ndarray]:
    """The reference images a source lists (``"references": [paths relative to the mp4]``), fitted
    to the clip's size: they become ``ref_K.jpg`` members."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadSample("schema", "field 'references' must be a list of image paths")
    images = []
    for name in names:
        path = Path(item.path).parent / name
        if not path.is_file():
            raise BadSample("missing_file", str(path))
        images.append(fit_frames(decode_image(path.read_bytes())[None], size)[0])
    return images


def _results(items: list[SourceItem], options: WriteOptions, workers: int) -> Iterator[tuple]:
    """Process items in order; with workers, at most 4 per worker in flight (bounded memory)."""
    if workers <= 0:
        _Worker.init(options)
        yield from map(_Worker.process, items)
        return
    with ProcessPoolExecutor(workers, initializer=_Worker.init, initargs=(options,)) as pool:
        pending: list[Future] = []
        for item in items:
            pending.append(pool.submit(_Worker.process, item))
            if len(pending) >= 4 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def write_shards(
    items: list[SourceItem],
    out_dir: Path,
    options: WriteOptions = WriteOptions(),
    shard_bytes: int = 1 << 30,
    shard_samples: int | None = None,
    workers: int = os.cpu_count() or 1,
    progress: bool = True,
) -> WriteReport:
    """Write ``items`` into shards under ``out_dir`` (resuming a previous run there)."""
    keys = [i.key for i in items]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate sample keys in the input: {duplicates[:5]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    done, next_index = existing_shards(out_dir)
    todo = [i for i in items if i.key not in done]
    report = WriteReport(inputs=len(items), already_written=len(items) - len(todo))
    sink = ShardSink(out_dir, next_index, shard_bytes, shard_samples)
    sources = {i.key: i.path for i in todo}
    try:
        for key, sample, reason, detail in tqdm(
            _results(todo, options, workers),
            total=len(todo),
            desc="writing shards",
            unit="clip",
            disable=not progress,
        ):
            if sample is None:
                report.skipped[reason] += 1
                report.bad_samples.append(
                    {"key": key, "source": sources[key], "reason": reason, "detail": detail}
                )
            else:
                sink.write(sample)
                report.written += 1
        sink.finish()
    except BaseException:
        sink.abandon()
        raise
    report.shards = [str(p) for p in sink.written]
    _write_json_atomic(out_dir / "write_report.json", {**vars(report), "skipped": dict(report.skipped)})
    return report


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
