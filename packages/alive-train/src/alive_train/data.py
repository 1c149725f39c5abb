"""The stage's data as a LightningDataModule: the alive-data pipeline, endless over epochs, with the
stream position of every rank in the checkpoint.

Two Lightning facts shape this. Lightning prefetches one batch, so a loader's own state at save time
is one batch ahead of what was trained: each ``AVBatch`` carries ``loader_state`` (the position right
after it), and the position saved is the one of the last batch that reached the model. And Lightning
saves only rank 0's loader state: ``state_dict`` gathers every rank's position instead.

The stream never ends: epochs follow one another inside it (the pipeline's task schedule reads the
epoch), and the run stops at ``max_steps``. Ranks whose shard subsets yield different batch counts
therefore never wait for each other at an epoch boundary.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch.distributed as dist

from alive_data.batch import AVBatch
from alive_data.loader import ResumableLoader
from alive_data.stream import AVStream
from alive_train.config import StageConfig


def ignore_preemption_signal(_worker_id: int) -> None:
    """DataLoader worker init: SLURM signals every process of the step; only the trainer acts on it."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class Endless:
    """Epoch after epoch of a :class:`ResumableLoader` (one pass is one epoch). ``resumed``: the
    loader was restored mid-stream, so its first pass is the rest of an epoch and may be empty (a
    checkpoint taken right after an epoch's last batch)."""

    def __init__(self, loader: ResumableLoader, rank: int, resumed: bool = False) -> None:
        self.loader, self.rank, self.resumed = loader, rank, resumed

    def __iter__(self) -> Iterator[AVBatch]:
        rest_of_an_epoch = self.resumed
        while True:
            handed_out = 0
            for batch in self.loader:
                handed_out += 1
                yield batch
            if handed_out == 0 and not rest_of_an_epoch:
                raise RuntimeError(
                    f"rank {self.rank}: a whole epoch ({self.loader.epoch}) of the data pipeline gave no "
                    "batch; too few samples or shards for this many ranks and workers, or every sample "
                    f"was filtered out (skips: {dict(self.loader.stats())})"
                )
            rest_of_an_epoch = False


def _gather(obj: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


class StageDataModule(L.LightningDataModule):
    """Builds this rank's pipeline and keeps the position of the last batch the model received."""

    def __init__(self, config: StageConfig) -> None:
        super().__init__()
        self.config = config
        self.pipeline = config.pipeline()
        self.loader: ResumableLoader | None = None
        self.position: dict | None = None
        self._resume: dict | None = None

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def train_dataloader(self) -> Endless:
        rank, world = self._rank_world()
        stream = AVStream(self.pipeline, rank=rank, world_size=world)
        workers = self.config.data.num_workers
        kwargs = {"worker_init_fn": ignore_preemption_signal} if workers > 0 else {}
        self.loader = ResumableLoader(stream, num_workers=workers, **kwargs)
        if self._resume is not None:
            self.loader.load_state_dict(self._resume)
        return Endless(self.loader, rank, resumed=self._resume is not None)

    def on_before_batch_transfer(self, batch: AVBatch, dataloader_idx: int) -> AVBatch:
        # Called for the batch about to be trained (not the prefetched one): its position is "consumed".
        self.position = batch.loader_state
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Every rank's position (a collective: Lightning calls this on all ranks when saving)."""
        _, world = self._rank_world()
        return {"world_size": world, "positions": _gather(self.position)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rank, world = self._rank_world()
        if state["world_size"] != world:
            raise ValueError(
                f"the checkpoint's data positions are for {state['world_size']} ranks, this run has {world}: "
                "resume with the same number of ranks (or start the stage's data afresh with a new run)"
            )
        self._resume = state["positions"][rank]
        self.position = self._resume

    def skip_counts(self) -> Counter:
        """Skipped samples by reason (and ``kept``) summed over ranks: a collective."""
        local = self.loader.stats() if self.loader is not None else Counter()
        total: Counter = Counter()
        for counts in _gather(dict(local)):
            total.update(counts)
        return total

    @property
    def epoch(self) -> int:
        return self.position["epoch"] if self.position else 0
