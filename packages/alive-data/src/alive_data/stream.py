"""The stateful part of the pipeline: each worker's stream of batches and the state that resumes it.

    shards (shuffled per epoch, split by node and worker) -> mixture of sources (by weight)
    -> shuffle buffer -> prepare (stateless, :mod:`alive_data.prepare`) -> buckets -> AVBatch

Every draw is a hash of (seed, epoch, rank, worker, counter), so a worker's whole state is its
counters, its position in each source and the ids of the samples still waiting in its shuffle buffer
and buckets (re-read from the shards on resume). :class:`WorkerStream` is a ``Stateful`` iterator:
torchdata's ``StatefulDataLoader`` snapshots it after every batch it hands out.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from alive_data.batch import AVBatch, TrainingSample, collate
from alive_data.pipeline import PipelineConfig
from alive_data.prepare import Bucket, SamplePreparer, Skip
from alive_data.shards import expand_urls, iter_samples
from alive_data.tasks import uniform

SampleId = tuple[int, int, int]  # (source, shard, position in the shard)


@dataclass
class StreamItem:
    """What a worker hands the loader: a batch (None at the worker's end) and the samples counted
    (kept, or skipped by reason) since its previous item."""

    batch: AVBatch | None
    counts: Counter = field(default_factory=Counter)

    def pin_memory(self) -> StreamItem:
        return StreamItem(None if self.batch is None else self.batch.pin_memory(), self.counts)


class AVStream(IterableDataset):
    """The stage pipeline as an IterableDataset of :class:`StreamItem` (use ``batch_size=None``).

    Use :class:`alive_data.loader.ResumableLoader`, which runs the workers, keeps epochs and resumes.
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
        self.preparer = SamplePreparer(config)
        self.epoch = 0

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

    def __iter__(self) -> WorkerStream:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:  # decoding parallelism comes from the workers themselves
            torch.set_num_threads(1)
        return WorkerStream(self, self.epoch, *self._node(), worker, workers)


class WorkerStream:
    """One worker's pass over one epoch; ``state_dict`` / ``load_state_dict`` make it resumable."""

    def __init__(
        self, stream: AVStream, epoch: int, rank: int, world: int, worker: int, workers: int
    ) -> None:
        c = stream.config
        self.c, self.prepare, self.epoch = c, stream.preparer, epoch
        self.salt = (c.seed, epoch, rank, worker)
        self.weights = [s.weight for s in c.sources]
        self.shards = [stream.shards_for(s.name, epoch, rank, world, worker, workers) for s in c.sources]
        # The state (see state_dict) ...
        self.positions: list[tuple[int, int] | None] = [None] * len(c.sources)
        self.draws = self.pops = 0
        self.live = list(range(len(c.sources)))
        self.buffer: list[SampleId] = []
        self.buckets: dict[Bucket, list[SampleId]] = {}
        self.finished = False
        # ... and what it stands for, filled from the shards once iteration starts.
        self.raw: dict[SampleId, dict] = {}
        self.prepared: dict[SampleId, TrainingSample] = {}
        self.readers: list[Iterator[tuple[SampleId, dict]]] | None = None
        self.counts: Counter = Counter()

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "positions": [list(p) if p is not None else None for p in self.positions],
            "draws": self.draws,
            "pops": self.pops,
            "live": list(self.live),
            "buffer": [list(i) for i in self.buffer],
            "buckets": {",".join(map(str, k)): [list(i) for i in v] for k, v in self.buckets.items()},
            "finished": self.finished,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["epoch"] != self.epoch:
            raise ValueError(f"worker state is for epoch {state['epoch']}, the stream is at {self.epoch}")
        self.positions = [tuple(p) if p is not None else None for p in state["positions"]]
        self.draws, self.pops, self.live = state["draws"], state["pops"], list(state["live"])
        self.buffer = [tuple(i) for i in state["buffer"]]
        self.buckets = {_parse_bucket(k): [tuple(i) for i in v] for k, v in state["buckets"].items()}
        self.finished = state["finished"]

    def __iter__(self) -> WorkerStream:
        return self

    def __next__(self) -> StreamItem:
        if self.finished:
            raise StopIteration
        if self.readers is None:
            self._start()
        size = max(1, self.c.shuffle_buffer)
        while True:
            while self.live and len(self.buffer) < size:
                self._draw()
            if not self.buffer:
                break
            ident = self.buffer.pop(int(uniform(*self.salt, "pop", self.pops) * len(self.buffer)))
            self.pops += 1
            result = self.prepare(self.raw.pop(ident), self.epoch)
            if isinstance(result, Skip):
                self.counts[result.reason] += 1
                continue
            self.counts["kept"] += 1
            members = self.buckets.setdefault(result.bucket, [])
            members.append(ident)
            self.prepared[ident] = result.sample
            if len(members) == self.c.buckets.batch_size:
                del self.buckets[result.bucket]
                return self._hand_out(collate([self.prepared.pop(i) for i in members]))
        self.counts["partial_batch"] += sum(len(v) for v in self.buckets.values())
        self.buckets.clear()
        self.finished = True
        return self._hand_out(None)

    def _hand_out(self, batch: AVBatch | None) -> StreamItem:
        item, self.counts = StreamItem(batch, self.counts), Counter()
        return item

    def _draw(self) -> None:
        """Move one sample from a source chosen by weight into the shuffle buffer."""
        weights = [self.weights[i] for i in self.live]
        u = uniform(*self.salt, "mix", self.draws) * sum(weights)
        self.draws += 1
        choice = self.live[-1]
        for i, w in zip(self.live, weights, strict=True):
            if u < w:
                choice = i
                break
            u -= w
        item = next(self.readers[choice], None)
        if item is None:
            self.live.remove(choice)
            return
        ident, raw = item
        self.positions[choice] = ident[1:]
        self.buffer.append(ident)
        self.raw[ident] = raw

    # -- reading -------------------------------------------------------------------------------
    def _read(
        self, index: int, after: tuple[int, int] | None = None, from_shard: int = 0, count: bool = True
    ) -> Iterator[tuple[SampleId, dict]]:
        """(id, raw sample) of a source from ``from_shard`` on, strictly after position ``after``."""

        def on_error(url: str, exn: Exception) -> None:
            if count:
                self.counts["corrupt_tar"] += 1

        start = from_shard if after is None else after[0]
        for shard in range(start, len(self.shards[index])):
            for position, raw in enumerate(iter_samples([self.shards[index][shard]], on_error)):
                if after is None or (shard, position) > after:
                    yield (index, shard, position), raw

    def _start(self) -> None:
        """Open the sources after the saved positions and re-read the samples still pending."""
        self.readers = [self._read(i, after) for i, after in enumerate(self.positions)]
        pending = set(self.buffer) | {i for ids in self.buckets.values() for i in ids}
        if not pending:
            return
        found: dict[SampleId, dict] = {}
        for index in range(len(self.c.sources)):
            mine = sorted(i for i in pending if i[0] == index)
            if mine:  # pending samples sit between the earliest one and the saved position
                for ident, raw in self._read(index, from_shard=mine[0][1], count=False):
                    if ident in pending:
                        found[ident] = raw
                    if ident >= mine[-1]:
                        break
        if pending - set(found):
            gone = len(pending - set(found))
            raise RuntimeError(f"cannot resume: {gone} pending samples are gone from the shards")
        self.raw = {i: found[i] for i in self.buffer}
        for bucket, ids in self.buckets.items():
            for i in ids:
                result = self.prepare(found[i], self.epoch)
                if isinstance(result, Skip) or result.bucket != bucket:
                    raise RuntimeError(f"cannot resume: pending sample {i} no longer prepares the same way")
                self.prepared[i] = result.sample


def _parse_bucket(text: str) -> Bucket:
    kind, *rest = text.split(",")
    return (kind, *map(int, rest))
