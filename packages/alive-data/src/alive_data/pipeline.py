"""The training data pipeline of one stage, built from config, deterministic and resumable.

    sources (shard lists, mixed by ratio) -> split by node and worker -> shuffle buffer
    -> metadata check -> stage filter -> balancing -> task assignment -> bucket
    -> decode (PyAV) or cached latents -> batches of one shape

Determinism: shard order, the mixing draw, the shuffle-buffer pop, balancing, tasks and dropouts are
all hashes of (seed, epoch, worker, counter or sample key). A worker's whole state is therefore its
counters, its stream position in each source and the ids of the samples still pending in its
shuffle buffer and buckets; :class:`ResumableLoader` records it for every batch it hands out and a
restored loader replays exactly the batches that were not yet consumed.

Bad samples (corrupt tar, undecodable or audio-less mp4, wrong rate, malformed caption, NaN latent,
zero length ...) are skipped and counted by reason; the counts travel with the batches.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from alive_data.filters import StageFilter
from alive_data.media import MediaError, decode_image, fit_frames
from alive_data.samples import BadSample, load_sample, read_metadata
from alive_data.schema import lookup
from alive_data.shards import expand_urls, iter_samples
from alive_data.tasks import TASKS, TaskConfig, uniform
from alive_models.codecs import VideoGeometry


@dataclass(frozen=True)
class SourceConfig:
    """One data source of a mixture: shard URLs and its relative weight (SFT: CT 3, aesthetic 1)."""

    name: str
    urls: list[str] | str
    weight: float = 1.0


@dataclass(frozen=True)
class BucketConfig:
    """Batch shapes. Pixels: resolutions (height, width) by aspect ratio and clip lengths in frames.
    Latents: lengths in latent frames (the resolution is whatever was cached)."""

    batch_size: int = 1
    resolutions: tuple[tuple[int, int], ...] = ((480, 832), (832, 480), (624, 624))
    frames: tuple[int, ...] = (121, 81, 49)
    latent_frames: tuple[int, ...] = (31, 21, 13)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that defines a stage's data stream. ``from_dict`` takes the YAML/OmegaConf form."""

    sources: tuple[SourceConfig, ...]
    seed: int = 0
    shuffle_buffer: int = 64
    fps: float = 24.0
    sample_rate: int = 16_000
    latents: dict[str, str] | None = None  # {"video": codec spec, "audio": codec spec} of the cache to read
    filter: StageFilter = field(default_factory=StageFilter)
    balance: dict[str, dict[str, float]] = field(default_factory=dict)  # field -> {value: weight}
    tasks: TaskConfig = field(default_factory=TaskConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineConfig:
        data = dict(data)
        sources = tuple(SourceConfig(**s) for s in data.pop("sources"))
        if not sources:
            raise ValueError("a pipeline needs at least one source")
        filt = StageFilter.from_config(data.pop("filter", {}))
        tasks = TaskConfig(**data.pop("tasks", {}))
        buckets = dict(data.pop("buckets", {}))
        for name in ("resolutions",):
            if name in buckets:
                buckets[name] = tuple(tuple(r) for r in buckets[name])
        for name in ("frames", "latent_frames"):
            if name in buckets:
                buckets[name] = tuple(buckets[name])
        return cls(sources=sources, filter=filt, tasks=tasks, buckets=BucketConfig(**buckets), **data)


def _balance_weight(balance: Mapping[str, Mapping[str, float]], meta: Mapping[str, Any]) -> float:
    weight = 1.0
    for path, table in balance.items():
        value = lookup(dict(meta), path)
        weight *= table.get(
            str(value).lower() if isinstance(value, bool) else str(value), table.get("*", 1.0)
        )
    return weight


class AVStream(IterableDataset):
    """The stage pipeline as an IterableDataset of ready batches (use ``batch_size=None``).

    Prefer :class:`ResumableLoader`, which sets the epoch, restores state and keeps batch order fixed.
    """

    def __init__(
        self, config: PipelineConfig, rank: int | None = None, world_size: int | None = None
    ) -> None:
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.urls = {s.name: expand_urls(s.urls) for s in config.sources}
        empty = [name for name, urls in self.urls.items() if not urls]
        if empty:
            raise FileNotFoundError(f"sources with no shards: {empty}")
        self.epoch = 0
        self.resume: dict[int, dict] = {}
        b = config.buckets
        self._max_weight = max((w for table in config.balance.values() for w in table.values()), default=1.0)
        self._frames = sorted(b.frames, reverse=True)
        self._latent_frames = sorted(b.latent_frames, reverse=True)

    def _node(self) -> tuple[int, int]:
        if self.rank is not None:
            return self.rank, self.world_size or 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def shards_for(
        self, source: str, epoch: int, rank: int, world: int, worker: int, workers: int
    ) -> list[str]:
        """This worker's shards of a source for an epoch: shuffled by (seed, epoch), then split."""
        urls = list(self.urls[source])
        random.Random(f"{self.config.seed}/{epoch}/{source}").shuffle(urls)
        return urls[rank::world][worker::workers]

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rank, world = self._node()
        if info is not None:  # decoding parallelism comes from the workers themselves
            torch.set_num_threads(1)
        run = _WorkerRun(self, self.epoch, rank, world, worker, workers, self.resume.get(worker))
        yield from run


class _WorkerRun:
    """One worker's pass over one epoch."""

    def __init__(
        self,
        stream: AVStream,
        epoch: int,
        rank: int,
        world: int,
        worker: int,
        workers: int,
        state: dict | None,
    ) -> None:
        self.s, self.c = stream, stream.config
        self.epoch, self.worker = epoch, worker
        self.salt = (self.c.seed, epoch, rank, worker)
        self.names = [src.name for src in self.c.sources]
        self.weights = [src.weight for src in self.c.sources]
        self.shards = [stream.shards_for(n, epoch, rank, world, worker, workers) for n in self.names]
        self.stats: Counter = Counter()
        self.positions: list[tuple[int, int] | None] = [None] * len(self.names)
        self.draws = self.pops = 0
        self.buffer: list[tuple[tuple[int, int, int], dict]] = []
        self.buckets: dict[tuple, list[tuple[tuple[int, int, int], dict]]] = {}
        self.state = state
        self.live: list[int] = []

    # -- reading -------------------------------------------------------------------------------
    def _on_error(self, url: str, exn: Exception) -> None:
        self.stats["corrupt_tar"] += 1

    def _read(
        self, index: int, after: tuple[int, int] | None = None, from_shard: int = 0, count: bool = True
    ) -> Iterator[tuple]:
        """(id, raw sample) of a source from ``from_shard`` on, strictly after position ``after``."""
        start = from_shard if after is None else after[0]
        on_error = self._on_error if count else lambda url, exn: None
        for shard in range(start, len(self.shards[index])):
            for position, raw in enumerate(iter_samples([self.shards[index][shard]], on_error)):
                if after is None or (shard, position) > after:
                    yield (index, shard, position), raw

    def _restore(self, readers: list[Iterator]) -> list[int]:
        """Rebuild buffer and buckets from the saved ids by re-reading those samples; returns live sources."""
        st = self.state
        self.positions = [tuple(p) if p is not None else None for p in st["positions"]]
        self.draws, self.pops, self.stats = st["draws"], st["pops"], Counter(st["stats"])
        buckets = {_parse_bucket(k): [tuple(i) for i in ids] for k, ids in st["buckets"].items()}
        wanted = {tuple(i) for i in st["buffer"]} | {i for ids in buckets.values() for i in ids}
        found: dict[tuple, dict] = {}
        for index in range(len(self.names)):
            mine = sorted(i for i in wanted if i[0] == index)
            if mine:  # pending samples sit between the earliest one and the saved position
                for ident, raw in self._read(index, from_shard=mine[0][1], count=False):
                    if ident in wanted:
                        found[ident] = raw
                    if ident >= mine[-1]:
                        break
        if wanted - set(found):
            raise RuntimeError(
                f"cannot resume: {len(wanted - set(found))} pending samples are gone from the shards"
            )
        self.buffer = [(tuple(i), found[tuple(i)]) for i in st["buffer"]]
        for bucket, ids in buckets.items():
            self.buckets[bucket] = []
            for i in ids:
                prepared = self._prepare(i, found[i], count=False)
                if prepared is None:
                    raise RuntimeError(f"cannot resume: pending sample {i} no longer prepares the same way")
                self.buckets[bucket].append((i, prepared[1]))
        for index, after in enumerate(self.positions):
            readers[index] = self._read(index, after)
        return [i for i in range(len(self.names)) if i not in st["exhausted"]]

    # -- per sample ----------------------------------------------------------------------------
    def _bucket(self, meta: Mapping[str, Any]) -> tuple | None:
        b = self.c.buckets
        if self.c.latents is not None:
            g = meta.get("latents", {}).get("video")
            if not g:
                return None
            frames = meta.get("num_frames", round(meta["duration"] * self.c.fps))
            t = VideoGeometry(**g).timeline.num_video_latents(frames, strict=False)
            fit = next((n for n in self.s._latent_frames if n <= t), None)
            if fit is None:
                return None
            return (
                "latent",
                fit,
                meta["height"] // g["spatial_stride"],
                meta["width"] // g["spatial_stride"],
            )
        aspect = math.log(meta["width"] / meta["height"])
        height, width = min(b.resolutions, key=lambda r: abs(math.log(r[1] / r[0]) - aspect))
        frames = meta.get("num_frames", round(meta["duration"] * self.c.fps))
        fit = next((n for n in self.s._frames if n <= frames), None)
        return None if fit is None else ("pixels", fit, height, width)

    def _prepare(self, ident: tuple, raw: dict, count: bool = True) -> tuple[tuple, dict] | None:
        """(bucket, training sample) or None (counted as skipped)."""

        def skip(reason: str) -> None:
            if count:
                self.stats[reason] += 1

        key = raw["__key__"]
        try:
            meta, _ = read_metadata(raw)
        except BadSample as e:
            return skip(e.reason)
        reason = self.c.filter.reason(meta)
        if reason is not None:
            return skip(reason)
        if (
            self.c.balance
            and uniform(*self.salt[:2], key, "balance")
            >= _balance_weight(self.c.balance, meta) / self.s._max_weight
        ):
            return skip("balance")
        refs = sorted(k for k in raw if k.startswith("ref_") and k.endswith(".jpg"))
        task, dropped, mutual = self.c.tasks.assign(self.c.seed, self.epoch, key, bool(refs))
        try:
            bucket = self._bucket(meta)
            if bucket is None:
                return skip("too_short")
            sample = load_sample(
                raw, self.c.fps, self.c.sample_rate, self.c.latents is not None, self.c.latents
            )
            out = self._fit(sample, bucket)
            if TASKS[task].references:
                out["references"] = np.stack(
                    [fit_frames(decode_image(raw[r])[None], bucket[2:])[0] for r in refs]
                )
        except (BadSample, MediaError) as e:
            return skip(e.reason)
        except (KeyError, TypeError, ValueError, IndexError) as e:  # metadata that lies about its media
            return skip(f"invalid_sample: {type(e).__name__}")
        spec = TASKS[task]
        out.update(
            key=key,
            caption="" if dropped else meta["caption"],
            task=task,
            mutual=mutual,
            video_loss=spec.video_loss,
            audio_loss=spec.audio_loss,
            i2v=spec.i2v,
        )
        if count:
            self.stats["kept"] += 1
        return bucket, out

    def _fit(self, sample, bucket: tuple) -> dict:
        kind, length, height, width = bucket
        if kind == "latent":
            g = sample.meta["latents"]
            frames = VideoGeometry(**g["video"]).timeline.num_frames(length)
            need = math.ceil(frames / self.c.fps * g["audio"]["sample_rate"] / g["audio"]["hop_length"])
            if sample.audio_latent.shape[-1] < need:
                raise BadSample("short_audio", f"{sample.audio_latent.shape[-1]} audio latents, need {need}")
            video, audio = sample.video_latent[:, :length], sample.audio_latent[:, :need]
            return {"video_latent": video, "audio_latent": audio}
        frames = fit_frames(sample.frames[:length], (height, width))
        need = round(length / self.c.fps * self.c.sample_rate)
        audio = sample.audio[:need]
        if len(audio) < need - self.c.sample_rate // 10:  # more than 0.1 s missing
            raise BadSample("short_audio", f"{len(audio)} samples, need {need}")
        return {"video": frames, "audio": np.pad(audio, (0, need - len(audio)))}

    # -- the loop ------------------------------------------------------------------------------
    def _snapshot(self) -> dict:
        return {
            "epoch": self.epoch,
            "positions": [list(p) if p is not None else None for p in self.positions],
            "draws": self.draws,
            "pops": self.pops,
            "buffer": [list(i) for i, _ in self.buffer],
            "buckets": {",".join(map(str, k)): [list(i) for i, _ in v] for k, v in self.buckets.items()},
            "stats": dict(self.stats),
            "exhausted": self.exhausted,
        }

    @property
    def exhausted(self) -> list[int]:
        return [i for i in range(len(self.names)) if i not in self.live]

    def __iter__(self) -> Iterator[dict]:
        if self.state is not None and self.state.get("finished"):  # this worker was done before the save
            yield {"_end": True, "_worker": self.worker, "_state": self.state}
            return
        readers = [self._read(i) for i in range(len(self.names))]
        self.live = list(range(len(self.names)))
        if self.state is not None:
            self.live = self._restore(readers)
        live = self.live
        size = max(1, self.c.shuffle_buffer)
        while True:
            while live and len(self.buffer) < size:
                weights = [self.weights[i] for i in live]
                u = uniform(*self.salt, "mix", self.draws) * sum(weights)
                self.draws += 1
                choice = live[-1]
                for i, w in zip(live, weights, strict=True):
                    if u < w:
                        choice = i
                        break
                    u -= w
                item = next(readers[choice], None)
                if item is None:
                    live.remove(choice)
                    continue
                self.positions[choice] = item[0][1:]
                self.buffer.append(item)
            if not self.buffer:
                break
            index = int(uniform(*self.salt, "pop", self.pops) * len(self.buffer))
            self.pops += 1
            ident, raw = self.buffer.pop(index)
            prepared = self._prepare(ident, raw)
            if prepared is None:
                continue
            bucket, sample = prepared
            members = self.buckets.setdefault(bucket, [])
            members.append((ident, sample))
            if len(members) == self.c.buckets.batch_size:
                del self.buckets[bucket]
                yield {**collate([s for _, s in members]), "_worker": self.worker, "_state": self._snapshot()}
        self.stats["partial_batch"] += sum(len(v) for v in self.buckets.values())
        self.buckets.clear()
        yield {"_end": True, "_worker": self.worker, "_state": {**self._snapshot(), "finished": True}}


def _parse_bucket(text: str) -> tuple:
    kind, *rest = text.split(",")
    return (kind, *map(int, rest))


def collate(samples: list[dict]) -> dict[str, Any]:
    """Stack a bucket's samples: tensors for arrays and flags, lists for strings and references."""
    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if isinstance(values[0], np.ndarray) and name != "references":
            batch[name] = torch.from_numpy(np.stack(values))
        elif isinstance(values[0], bool):
            batch[name] = torch.tensor(values)
        elif name == "references":
            batch[name] = [torch.from_numpy(v) for v in values]
        else:
            batch[name + "s" if name in ("key", "caption", "task") else name] = values
    return batch


class ResumableLoader:
    """A DataLoader over an :class:`AVStream` that hands out batches in a fixed worker order and can
    save and restore its position (``state_dict`` / ``load_state_dict``), e.g. inside a checkpoint.

    Resuming needs the same shards, config and ``num_workers``; it then yields exactly the batches the
    interrupted run had not consumed yet, in the same order.
    """

    def __init__(self, stream: AVStream, num_workers: int = 0, **loader_kwargs: Any) -> None:
        self.stream, self.num_workers, self.loader_kwargs = stream, num_workers, loader_kwargs
        self.epoch = 0
        self._states: dict[int, dict] = {}
        self._live: list[int] | None = None
        self._next = 0
        self._complete = False  # the epoch ran to its end; the next pass starts the next epoch

    @property
    def _workers(self) -> int:
        return max(1, self.num_workers)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` at its beginning on the next pass (a no-op for the epoch in progress)."""
        if epoch != self.epoch or self._complete:
            self.epoch, self._states, self._live, self._next, self._complete = epoch, {}, None, 0, False

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "num_workers": self._workers,
            "live": self._live,
            "next": self._next,
            "complete": self._complete,
            "workers": {str(k): v for k, v in self._states.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["num_workers"] != self._workers:
            raise ValueError(
                f"loader state was saved with {state['num_workers']} workers; "
                f"resume with the same number (got {self._workers})"
            )
        self.epoch, self._live, self._next = state["epoch"], state["live"], state["next"]
        self._complete = state["complete"]
        self._states = {int(k): v for k, v in state["workers"].items()}

    def stats(self) -> Counter:
        """Skip counters (by reason) and ``kept``, summed over workers, for the batches handed out in
        the current (or just completed) epoch."""
        total: Counter = Counter()
        for state in self._states.values():
            total.update(state["stats"])
        return total

    def __iter__(self) -> Iterator[dict]:
        if self._complete:
            self.set_epoch(self.epoch + 1)
        self.stream.epoch = self.epoch
        self.stream.resume = {w: s for w, s in self._states.items() if s["epoch"] == self.epoch}
        live = list(self._live) if self._live is not None else list(range(self._workers))
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers, **self.loader_kwargs)
        pending: dict[int, deque] = {w: deque() for w in range(self._workers)}
        pointer = live.index(self._next) if self._next in live else 0
        for item in loader:
            pending[item["_worker"]].append(item)
            while live and pending[live[pointer]]:
                item = pending[live[pointer]].popleft()
                worker = item.pop("_worker")
                self._states[worker] = item.pop("_state")
                if item.get("_end"):
                    live.remove(worker)
                    pointer = pointer % len(live) if live else 0
                else:
                    pointer = (pointer + 1) % len(live)
                self._live, self._next = list(live), live[pointer] if live else 0
                if not item.get("_end"):
                    yield item
        self._complete = True
