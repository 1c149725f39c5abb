"""The stage's loss on fixed batches (``evaluation`` in the stage config).

A training step's loss is of its own batch at its own flow times, and both swing more than a short
stage moves the weights: the first and last steps of a run are not comparable. Here the batches, the
flow times and the noise are fixed, so the loss before training (the weights the stage starts from,
e.g. the parent's export) and after (the weights it exports) differ only by the weights.

Every rank reads the same batches (a pipeline of its own, rank 0 of 1, with the evaluation seed) and
evaluates its share of them; the sums are all-reduced.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
import torch.distributed as dist

from alive_data.batch import AVBatch
from alive_data.loader import ResumableLoader
from alive_data.pipeline import SourceConfig
from alive_data.stream import AVStream
from alive_train.config import ConfigError, StageConfig

PARTS = ("total", "video", "audio")


def fixed_batches(config: StageConfig) -> list[AVBatch]:
    """The first ``evaluation.batches`` batches of the stage's pipeline, re-seeded (its shuffle and
    task draws), read from ``evaluation.urls`` when given."""
    e = config.evaluation
    pipeline = dataclasses.replace(config.pipeline(), seed=e.seed)
    if e.urls is not None:
        pipeline = dataclasses.replace(pipeline, sources=(SourceConfig("evaluation", e.urls),))
    loader = ResumableLoader(AVStream(pipeline, rank=0, world_size=1))
    batches = list(itertools.islice(loader, e.batches))
    if not batches:
        raise ConfigError(
            f"evaluation: the pipeline over {e.urls or 'the training sources'} gave no batch "
            f"(skips: {dict(loader.stats())})"
        )
    return batches


def batch_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """Flow times and noise of fixed batch ``index``: the same before and after training, on every rank."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)


def mean_losses(sums: torch.Tensor) -> dict[str, float]:
    """``[total, video, audio, batches]`` summed over this rank's batches -> means over all ranks' (a
    collective when distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    values = (sums[:-1] / sums[-1]).tolist()
    return {f"eval/loss/{part}": value for part, value in zip(PARTS, values, strict=True)}
