"""``alive-data write``: video files (a folder or a manifest) -> WebDataset tar shards.

Each clip is decoded with PyAV on one clock (``alive_data.media``: rotation applied, frames
converted to the target rate by nearest frame, audio averaged to mono, resampled to 16 kHz in float
and cut or padded to the video's time range), resized to ``size`` or cropped to even sides, labeled
with the keyword table, and stored as:
- ``json``: metadata (see ``alive_data.schema``), with ``speaking`` and ``labels`` derived and what
  decoding found (``audio_start``, ``audio_padding``, ``audio_clipped_samples``, ``rotation``,
  ``source_fps``);
- ``mp4``: the video at the target rate (H.264); ``flac``: the audio, lossless and sample-exact
  (AAC would shift it by its priming samples, which matters for lip sync); its sample 0 is the
  first frame's time;
- with codecs, ``video_latent.npy`` / ``audio_latent.npy`` (float16) beside or instead of the media;
- ``ref_K.jpg``: the reference images a source lists in ``"references"`` (paths relative to the
  mp4), fitted to the clip's size;
- ``ref_audio.flac``: the reference audio a source names in ``"reference_audio"`` (a FLAC/WAV path
  relative to the mp4: another utterance of the same speaker, for voice cloning), mono at the target
  rate, its length in the json's ``reference_audio_seconds``; with codecs also
  ``ref_audio_latent.npy``.
- with caption encoders, ``text.NAME.npy`` / ``text_null.NAME.npy`` (float16, see
  :mod:`alive_data.text_cache`): encoded in this process, in batches, as samples arrive (the
  encoders are loaded once, on ``text_device``, never in the decode workers).

Clips are processed by a pool of worker processes; shards are renamed into place only when complete,
and a rerun skips every key already in a complete shard, so an interrupted job resumes without
duplicates. SIGINT (Ctrl-C) or SIGTERM stops a run within a fraction of a second: the shard being
written is closed and kept (it holds only complete samples), the workers exit and the report is
saved; a second Ctrl-C aborts at once (the open shard is dropped). Workers die with their parent,
SIGKILL included. Bad inputs are skipped, counted by reason and listed; ``write_report.json`` keeps
every run's report.
"""

from __future__ import annotations

import ctypes
import io
import json
import multiprocessing
import os
import signal
import sys
import threading
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from alive_data.avformat import AVFormat
from alive_data.discovery import SourceItem
from alive_data.labels import LabelTable, default_table
from alive_data.media import (
    MAX_AUDIO_SHORTFALL,
    MediaError,
    crop_even,
    decode_clip,
    decode_image,
    encode_flac,
    encode_jpeg,
    fit_frames,
    read_audio_file,
    resample,
)
from alive_data.samples import BadSample
from alive_data.schema import validate_metadata
from alive_data.shards import ShardSink, existing_shards
from alive_models.caption import check_caption
from alive_models.mp4 import encode_mp4

REPORT_NAME = "write_report.json"
# Workers never inherit this process's threads or locks (no plain fork): they fork from a clean,
# single-threaded forkserver that has imported this module (torch included) once, so every pool
# after the first starts at once; spawn where there is no forkserver.
_CONTEXT = multiprocessing.get_context(
    "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
)
if _CONTEXT.get_start_method() == "forkserver":
    _CONTEXT.set_forkserver_preload([__name__])
_POLL_SECONDS = 0.2  # how often the parent checks for a stop request while waiting on a worker
_PR_SET_PDEATHSIG = 1

Result = tuple[str, dict | None, str, str]  # key, sample or None, skip reason, detail


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
    max_audio_shortfall: float = MAX_AUDIO_SHORTFALL  # s of audio missing against the video: a skip
    min_side: int = 16  # a clip narrower than this (px, after rotation) is a ``too_small`` skip
    text_encoders: tuple[str, str] | None = None  # (T5 dir, Qwen dir): cache the caption encodings
    text_device: str = "cpu"
    text_batch: int = 16  # captions per encoder call


@dataclass
class WriteReport:
    """What a run did: counts, skips by reason, the bad inputs, the files not taken, the shards."""

    inputs: int = 0
    already_written: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    bad_samples: list[dict[str, str]] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)  # files / lines discovery did not take
    shards: list[str] = field(default_factory=list)
    interrupted: str | None = None  # the signal that stopped the run early
    started: str = ""
    finished: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "skipped": dict(self.skipped)}


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _die_with_parent(stop: Any) -> None:
    """Exit when the writer dies (PR_SET_PDEATHSIG on Linux, which fires on SIGKILL too, and a
    watchdog thread on the pipe every multiprocessing child holds to its parent) or when it asks
    the workers to stop."""
    parent = multiprocessing.parent_process()
    if sys.platform.startswith("linux"):  # the forking process: the forkserver, which exits with us
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:
        while not stop.wait(_POLL_SECONDS):
            if not parent.is_alive():
                os._exit(1)
        os._exit(0)

    if not parent.is_alive():  # the writer died before the death signal was armed
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="alive-data-watchdog").start()


class _Worker:
    """Per-process state: options, label table and codecs are built once per worker."""

    options: WriteOptions
    labels: LabelTable
    codecs: tuple | None = None

    @classmethod
    def init(cls, options: WriteOptions, stop: Any = None) -> None:
        """Build the state; in a pool worker (``stop`` given) also ignore Ctrl-C (the writer
        decides) and exit with the writer."""
        from alive_models.codecs import audio_codec_from_spec, video_codec_from_spec

        if stop is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _die_with_parent(stop)
            torch.set_num_threads(1)  # the parallelism is the pool's
        cls.options = options
        cls.labels = LabelTable.from_file(options.label_table) if options.label_table else default_table()
        cls.codecs = None  # class state outlives a run in this process (and forked workers inherit it)
        if options.video_codec:
            cls.codecs = (
                video_codec_from_spec(options.video_codec),
                audio_codec_from_spec(options.audio_codec or "deterministic"),
            )
            # The codecs define the audio rate: refuse options that disagree (AVFormat checks it).
            AVFormat(options.fps, options.sample_rate, *(c.geometry for c in cls.codecs))

    @classmethod
    def process(cls, item: SourceItem) -> Result:
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
        if not isinstance(meta.get("caption"), str):
            raise BadSample("missing_caption", "no caption in the manifest, sidecar .json or .txt")
        caption, problems = check_caption(meta["caption"])
        if caption is None:
            raise BadSample("malformed_caption", str(problems[0]))
        if not Path(item.path).is_file():
            raise BadSample("missing_file", item.path)
        clip = decode_clip(item.path, o.fps, o.sample_rate, max_audio_shortfall=o.max_audio_shortfall)
        height, width = clip.frames.shape[1:3]
        if min(height, width) < o.min_side:
            raise MediaError("too_small", f"{width}x{height}, the smaller side must be >= {o.min_side} px")
        frames = fit_frames(clip.frames, o.size) if o.size else crop_even(clip.frames)
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
            audio_start=round(clip.audio_start, 6),
            audio_padding=round(clip.audio_padding, 6),
            audio_clipped_samples=int(np.count_nonzero(np.abs(audio) > 1.0)),  # FLAC is 16-bit
            rotation=clip.rotation,
            source_fps=round(clip.source_fps, 4),
            speaking=meta.get("speaking", caption.speaking),
            labels=[list(asdict(lb).values()) for lb in labels],
            source=item.path,
        )
        if labels and "category" not in meta:
            meta["category"] = {"l1": labels[0].l1, "l2": labels[0].l2, "l3": labels[0].l3}
        reference_audio = _reference_audio(item, meta.pop("reference_audio", None), o.sample_rate)
        if reference_audio is not None:
            meta["reference_audio_seconds"] = len(reference_audio) / o.sample_rate
        problems = validate_metadata(meta)
        if problems:
            raise BadSample("schema", "; ".join(problems))

        sample: dict[str, Any] = {"__key__": item.key}
        for k, image in enumerate(_references(item, meta.pop("references", []), frames.shape[1:3])):
            sample[f"ref_{k}.jpg"] = encode_jpeg(image)
        if reference_audio is not None:
            sample["ref_audio.flac"] = encode_flac(reference_audio, o.sample_rate)
        if not o.latents_only:
            sample["mp4"] = encode_mp4(frames, o.fps, crf=o.crf)
            sample["flac"] = encode_flac(audio, o.sample_rate)
        if cls.codecs is not None:
            video_codec, audio_codec = cls.codecs
            pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float()

            def encode_audio(wave: np.ndarray) -> bytes:
                latent = audio_codec.encode(torch.from_numpy(wave)[None, None])[0]
                return npy_bytes(latent.to(torch.float16).numpy())

            with torch.no_grad():
                v = video_codec.encode(pixels / 127.5 - 1.0)[0]
                sample["audio_latent.npy"] = encode_audio(audio)
                if reference_audio is not None:
                    sample["ref_audio_latent.npy"] = encode_audio(reference_audio)
            sample["video_latent.npy"] = npy_bytes(v.to(torch.float16).numpy())
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


def _reference_audio(item: SourceItem, name: Any, sample_rate: int) -> np.ndarray | None:
    """The reference audio a source names (``"reference_audio"``: a FLAC/WAV path relative to the mp4),
    mono float32 at ``sample_rate``: it becomes the ``ref_audio.flac`` member."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise BadSample("schema", "field 'reference_audio' must be an audio file path")
    path = Path(item.path).parent / name
    if not path.is_file():
        raise BadSample("missing_file", str(path))
    wave, rate = read_audio_file(path.read_bytes())
    wave = resample(wave, rate, sample_rate)
    if wave.size == 0 or not np.isfinite(wave).all():
        raise MediaError("bad_reference_audio", f"{path}: empty or non-finite")
    return wave


class _StopRequest:
    """SIGINT / SIGTERM set a flag (and an event the workers watch) instead of raising mid-write; a
    second SIGINT raises KeyboardInterrupt. Handlers are installed only from the main thread."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._event: Any = None
        self._previous: dict[int, Any] = {}

    @property
    def event(self) -> Any:
        """The multiprocessing event workers watch (made on first use: in-process runs need none)."""
        if self._event is None:
            self._event = _CONTEXT.Event()
            if self.signal:
                self._event.set()
        return self._event

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        if self._event is not None:
            self._event.set()


def _results(
    items: list[SourceItem], options: WriteOptions, workers: int, stop: _StopRequest
) -> Iterator[Result]:
    """Process items in order until done or stopped; with workers, at most 4 per worker in flight
    (bounded memory). A worker that dies (a crashing decoder, the OOM killer) costs only the items
    in flight, which are reported as ``worker_died``; a fresh pool takes the rest."""
    _Worker.init(options)  # in-process state, or a check that workers can start (bad codec spec ...)
    if workers <= 0:
        for item in items:
            if stop.signal:
                return
            yield _Worker.process(item)
        return
    _Worker.codecs = None  # the workers build their own
    queue = deque(items)
    idle_pools = 0  # pools in a row that broke before finishing a single item
    while queue and not stop.signal:
        pool = ProcessPoolExecutor(
            workers, _CONTEXT, initializer=_Worker.init, initargs=(options, stop.event)
        )
        pending: deque = deque()
        finished = broken = False
        completed = 0
        try:
            while queue or pending:
                while queue and len(pending) < 4 * workers:
                    item = queue.popleft()
                    pending.append((item, pool.submit(_Worker.process, item)))
                future = pending[0][1]
                while not wait([future], timeout=_POLL_SECONDS).done:
                    if stop.signal:
                        return
                try:
                    result = future.result()
                except BrokenProcessPool as e:
                    if stop.signal:  # the workers were told to exit: nothing broke
                        return
                    idle_pools = 0 if completed else idle_pools + 1
                    if idle_pools == 2:  # two pools in a row did nothing: a setup error, not an input
                        raise RuntimeError(f"writer worker processes keep failing: {e}") from e
                    broken = True
                    for item, _ in pending:
                        yield item.key, None, "worker_died", f"a worker process died: {e}"
                    break
                pending.popleft()
                completed += 1
                yield result
            finished = not broken
        finally:
            if not (finished or broken):  # stopped, or the consumer failed: workers exit now
                stop.event.set()
            pool.shutdown(wait=True, cancel_futures=True)  # quick: every worker is done or exiting


def write_shards(
    items: list[SourceItem],
    out_dir: Path,
    options: WriteOptions = WriteOptions(),
    shard_bytes: int = 1 << 30,
    shard_samples: int | None = None,
    workers: int = os.cpu_count() or 1,
    progress: bool = True,
    ignored: list[dict[str, str]] | None = None,
) -> WriteReport:
    """Write ``items`` into shards under ``out_dir`` (resuming a previous run there) and append the
    run's report to ``out_dir/write_report.json``. ``ignored`` (from discovery) goes into the report."""
    report = WriteReport(inputs=len(items), ignored=list(ignored or []), started=_now())
    out_dir.mkdir(parents=True, exist_ok=True)
    done, next_index = existing_shards(out_dir)
    todo, seen = [], set()
    for item in items:
        if item.key in seen:  # discovery makes keys unique; items built by hand may not be
            report.skipped["duplicate_key"] += 1
            report.bad_samples.append(
                {"key": item.key, "source": item.path, "reason": "duplicate_key", "detail": "key used before"}
            )
        elif item.key in done:
            report.already_written += 1
        else:
            todo.append(item)
        seen.add(item.key)
    text = None
    if options.text_encoders is not None and todo:
        from alive_data.text_cache import TextEncoding

        text = TextEncoding(*options.text_encoders, device=options.text_device)
    sink = ShardSink(out_dir, next_index, shard_bytes, shard_samples)
    sources = {i.key: i.path for i in todo}
    pending: list[dict] = []  # samples waiting for their caption encodings

    def write_pending() -> None:
        if text is not None:
            text.add_to(pending)
        for sample in pending:
            sink.write(sample)
            report.written += 1
        pending.clear()

    with _StopRequest() as stop:
        try:
            for key, sample, reason, detail in tqdm(
                _results(todo, options, workers, stop),
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
                    continue
                pending.append(sample)
                if text is None or len(pending) >= options.text_batch:
                    write_pending()
            write_pending()
            sink.finish()  # after a stop too: the open shard holds only complete samples
        except BaseException:
            sink.abandon()
            raise
        report.interrupted = stop.signal
    report.shards = [str(p) for p in sink.written]
    report.finished = _now()
    append_report(out_dir / REPORT_NAME, report.to_dict())
    return report


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def append_report(path: Path, run: dict[str, Any]) -> None:
    """Add one run to ``{"runs": [...]}`` in ``path`` atomically (a report written by an older
    version, a single run object, becomes the first entry)."""
    runs: list = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = {"runs": [{"unreadable_report": path.read_text(errors="replace")[:10_000]}]}
        runs = previous["runs"] if isinstance(previous, dict) and "runs" in previous else [previous]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"runs": [*runs, run]}, indent=2))
    os.replace(tmp, path)
