"""The resumable loader: torchdata's ``StatefulDataLoader`` over an :class:`AVStream`, plus epochs and
skip counts, with the position in the stream attached to every batch.

``StatefulDataLoader`` runs the workers, hands their batches out in a fixed round-robin order and
snapshots each worker's :class:`WorkerStream` state with every batch, so its ``state_dict`` is the
position after the last batch handed out, not after the ones prefetched. Lightning prefetches one
batch and saves only rank 0's loader state, so each batch also carries ``batch.loader_state``: the
state right after it, which the trainer checkpoints for the batch it actually trained on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from alive_data.batch import AVBatch
from alive_data.stream import AVStream


class ResumableLoader:
    """Batches of an :class:`AVStream` in a fixed order, resumable with ``state_dict`` /
    ``load_state_dict`` (or with the ``loader_state`` of any batch it handed out).

    Resuming needs the same shards, config and ``num_workers``; it then yields exactly the batches
    the interrupted run had not consumed yet, in the same order. One pass over the loader is one
    epoch; the next pass starts the next epoch (shards reshuffled, I2VA schedule advanced).
    """

    def __init__(
        self, stream: AVStream, num_workers: int = 0, pin_memory: bool = False, **loader_kwargs: Any
    ) -> None:
        self.stream, self.num_workers = stream, num_workers
        self.loader_kwargs = {"pin_memory": pin_memory, **loader_kwargs}
        self.epoch = 0
        self._complete = False  # the epoch ran to its end; the next pass starts the next epoch
        self._counts: Counter = Counter()
        self._position: dict[str, Any] | None = None  # StatefulDataLoader state within the epoch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` at its beginning on the next pass (a no-op for the epoch in progress)."""
        if epoch != self.epoch or self._complete:
            self.epoch, self._complete, self._counts, self._position = epoch, False, Counter(), None

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "num_workers": self.num_workers,
            "complete": self._complete,
            "counts": dict(self._counts),
            "position": self._position,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["num_workers"] != self.num_workers:
            raise ValueError(
                f"loader state was saved with {state['num_workers']} workers; "
                f"resume with the same number (got {self.num_workers})"
            )
        self.epoch, self._complete = state["epoch"], state["complete"]
        self._counts, self._position = Counter(state["counts"]), state["position"]

    def stats(self) -> Counter:
        """Samples kept and skipped (by reason) for the batches handed out in the current (or just
        completed) epoch, summed over workers; ``partial_batch`` counts kept samples left over at the
        end of the epoch in buckets that never filled."""
        return Counter(self._counts)

    def __iter__(self) -> Iterator[AVBatch]:
        if self._complete:
            self.set_epoch(self.epoch + 1)
        self.stream.epoch = self.epoch
        loader = StatefulDataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            snapshot_every_n_steps=1,
            **self.loader_kwargs,
        )
        if self._position is not None:
            loader.load_state_dict(self._position)
        for item in loader:
            self._counts.update(item.counts)
            self._position = loader.state_dict()
            if item.batch is not None:
                item.batch.loader_state = self.state_dict()
                yield item.batch
        self._complete, self._position = True, None
