"""Checkpointing: periodic atomic checkpoints with retention, and the saves that end a run early
(pre-emption, non-finite losses), all at a step boundary."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from alive_train.checkpoint import checkpoint_name, list_checkpoints, remove_partials
from alive_train.preemption import requeue

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row; a checkpoint was saved before stopping."""


class Checkpointing(Callback):
    """Saves ``step-N`` every ``every_n_steps`` optimizer steps, when asked to stop (pre-emption,
    non-finite losses) and at the end of training; keeps the newest ``keep_last``."""

    def __init__(self, directory: str | Path, every_n_steps: int, keep_last: int) -> None:
        self.directory = Path(directory)
        self.every_n_steps, self.keep_last = every_n_steps, keep_last
        self.last_saved: Path | None = None
        self._last_step: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            self.directory.mkdir(parents=True, exist_ok=True)
            for path in remove_partials(self.directory):
                log.warning("removed the leftover of an interrupted save: %s", path)

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule, force: bool = False) -> Path:
        """Save at the current step (all ranks call this). Skips a step already saved unless ``force``."""
        step = trainer.global_step
        path = self.directory / checkpoint_name(step)
        if step == self._last_step and not force:
            return path
        start = time.perf_counter()
        trainer.save_checkpoint(path)
        self._last_step, self.last_saved = step, path
        if trainer.is_global_zero:
            for old in list_checkpoints(self.directory)[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        pause = getattr(pl_module, "pause_throughput_clock", None)
        if pause is not None:
            pause(time.perf_counter() - start)
        return path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        reason = getattr(pl_module, "stop_reason", None)
        if reason is not None:
            path = self.save(trainer, pl_module, force=True)
            raise NonFiniteLossError(f"{reason}; checkpoint saved to {path}")
        if getattr(pl_module, "preempt_requested", False):
            path = self.save(trainer, pl_module)
            message = requeue() if trainer.is_global_zero else ""
            if trainer.is_global_zero:
                print(
                    f"pre-empted at step {trainer.global_step}: checkpoint saved to {path}; {message}",
                    flush=True,
                )
            pl_module.preempted = True
            trainer.should_stop = True
            return
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not getattr(pl_module, "preempted", False):
            self.save(trainer, pl_module)


class Validation(Callback):
    """Runs the stage's validation (:meth:`alive_train.module.StageModule.run_validation`) every
    ``every_n_steps`` optimizer steps and at the end of training; its time is left out of throughput."""

    def __init__(self, every_n_steps: int, at_end: bool) -> None:
        self.every_n_steps, self.at_end = every_n_steps, at_end
        self._last_step: int | None = None

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == self._last_step:
            return
        start = time.perf_counter()
        pl_module.run_validation()
        self._last_step = trainer.global_step
        pl_module.pause_throughput_clock(time.perf_counter() - start)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        stopping = pl_module.preempt_requested or pl_module.stop_reason is not None
        if not stopping and step > 0 and step % self.every_n_steps == 0:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end and not pl_module.preempted and pl_module.stop_reason is None:
            self._run(trainer, pl_module)
