"""Loss bookkeeping between log intervals: per modality and per task, summed over ranks with one
all-reduce per interval (not one per metric), and the throughput/MFU numbers of an interval."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from alive_models.flow import flow_loss

MODALITIES = ("video", "audio")


class LossTracker:
    """Accumulates, per modality and per task, the summed per-sample loss and the sample count.

    Slots: [modality][task index or the all-tasks slot] x (sum, count), plus (sum of the weighted
    total, number of steps). ``flush`` all-reduces the packed tensor once and returns means.
    """

    def __init__(self, tasks: tuple[str, ...], device: torch.device | str = "cpu") -> None:
        self.tasks = tasks
        self._slots = len(tasks) + 1  # per task, then all tasks
        self._acc = torch.zeros(len(MODALITIES), self._slots, 2, dtype=torch.float64, device=device)
        self._total = torch.zeros(2, dtype=torch.float64, device=device)

    def to(self, device: torch.device | str) -> LossTracker:
        self._acc, self._total = self._acc.to(device), self._total.to(device)
        return self

    @torch.no_grad()
    def add(
        self, modality: str, prediction: Tensor, target: Tensor, loss_mask: Tensor, tasks: list[str]
    ) -> None:
        m = MODALITIES.index(modality)
        prediction, target = prediction.detach(), target.detach()
        # The per-sample loss is flow_loss on one sample, so the logged numbers are the trained ones.
        per_sample = torch.stack(
            [flow_loss(prediction[i : i + 1], target[i : i + 1]) for i in range(len(tasks))]
        )
        kept = loss_mask.to(torch.float64)
        weighted = per_sample.to(torch.float64) * kept
        index = torch.tensor([self.tasks.index(t) for t in tasks], device=self._acc.device)
        self._acc[m, :-1, 0].index_add_(0, index, weighted)
        self._acc[m, :-1, 1].index_add_(0, index, kept)
        self._acc[m, -1, 0] += weighted.sum()
        self._acc[m, -1, 1] += kept.sum()

    @torch.no_grad()
    def add_total(self, loss: Tensor) -> None:
        self._total[0] += loss.detach().double()
        self._total[1] += 1

    def flush(self) -> dict[str, float]:
        """Means since the last flush over every rank (one all-reduce); resets the sums."""
        packed = torch.cat([self._acc.flatten(), self._total])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(packed)
        acc = packed[: self._acc.numel()].view_as(self._acc).tolist()
        total = packed[self._acc.numel() :].tolist()
        self._acc.zero_()
        self._total.zero_()
        out: dict[str, float] = {}
        if total[1]:
            out["loss/total"] = total[0] / total[1]
        for m, modality in enumerate(MODALITIES):
            for slot in range(self._slots):
                s, n = acc[m][slot]
                if n:
                    name = (
                        f"loss/{modality}"
                        if slot == len(self.tasks)
                        else f"loss/{modality}/{self.tasks[slot]}"
                    )
                    out[name] = s / n
        return out


class ThroughputMeter:
    """Samples/s, tokens/s, TFLOP/s per device and MFU over a window of log intervals (Lightning's
    ``Throughput``). Counts are this rank's, scaled by the world size for the global rates; model
    FLOPs per step are 3 x ``alive_models.flops.forward_flops`` (forward + backward, the recompute of
    activation checkpointing not counted: the MFU convention). Time spent saving checkpoints is left out.
    """

    def __init__(self, world_size: int, window: int, peak_flops: float | None) -> None:
        from lightning.fabric.utilities.throughput import Throughput

        self.peak_flops = peak_flops
        self._throughput = Throughput(available_flops=peak_flops, world_size=world_size, window_size=window)
        self.batches = self.samples = self.tokens = 0
        self._flops = 0
        self._start: float | None = None
        self._paused = 0.0

    def add_step(self, samples: int, tokens: int, forward_flops: int) -> None:
        self.batches += 1
        self.samples += samples
        self.tokens += tokens
        self._flops += 3 * forward_flops

    def pause(self, seconds: float) -> None:
        self._paused += seconds

    def start(self, now: float) -> None:
        self._start = now

    def compute(self, now: float) -> dict[str, float]:
        """Call at a log interval (after synchronising the device): the rates once the window is full."""
        if self._start is None or self.batches == 0:
            return {}
        self._throughput.update(
            time=now - self._start - self._paused,
            batches=self.batches,
            samples=self.samples,
            lengths=max(self.tokens, self.samples),
            flops=self._flops,
        )
        self._flops = 0
        raw = self._throughput.compute()
        out: dict[str, float] = {}
        for ours, theirs in (
            ("throughput/samples_per_sec", "device/samples_per_sec"),
            ("throughput/tokens_per_sec", "device/items_per_sec"),
            ("throughput/tflops_per_sec_per_device", "device/flops_per_sec"),
            ("throughput/mfu", "device/mfu"),
        ):
            if theirs in raw:
                out[ours] = raw[theirs]
        if "throughput/tflops_per_sec_per_device" in out:
            out["throughput/tflops_per_sec_per_device"] /= 1e12
        world = self._throughput.world_size
        for key in ("throughput/samples_per_sec", "throughput/tokens_per_sec"):
            if key in out:  # Lightning's per-device rates times the ranks: the global rate
                out[key] *= world
        return out
