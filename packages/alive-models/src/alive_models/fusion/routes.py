"""Which way cross-modal information flows, per sample and per direction: one switch for every fusion.

``video_reads_audio`` [B] bool: the video stream reads the audio latents (audio -> video);
``audio_reads_video`` [B] bool: the audio stream reads the video latents (video -> audio). ``mutual``
is the shorthand for both (False = neither: the "indep" state of seed 000 §4.4); where several are
given they combine with AND, so guidance can switch a task's routes off as a whole.

What "off" means is the fusion's: TA-CrossAttn skips that direction's update; CCL's Cross-modal
Context Attention then attends only its Learnable Context Tokens (the LCT-only state, seed 002 §4.2,
also the unconditional cross-modal state of UCG §4.3); UniTalking's joint attention masks the other
modality's keys (the TV2A mask of seed 004 §4.5). Every module still runs for every batch (FSDP),
gated per sample on the device: nothing here reads a value on the host.

:data:`TASK_ROUTES` maps each training/inference task to its routes (seed 002 §4.2 Dynamic Context
Routing; seed 004 §4.5 for TV2A and TR2AV). Data pipelines and samplers take routes from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Route:
    """The routes of one task: which stream reads the other's latents."""

    video_reads_audio: bool
    audio_reads_video: bool


JOINT = Route(video_reads_audio=True, audio_reads_video=True)
INDEPENDENT = Route(video_reads_audio=False, audio_reads_video=False)

TASK_ROUTES: dict[str, Route] = {
    # Both streams generated together: each reads the other (plus its LCT under CCL).
    "t2va": JOINT,
    "i2va": JOINT,  # UniTalking's TI2AV
    "r2va": JOINT,  # reference images (seed 000 §5)
    "tr2av": JOINT,  # reference audio (seed 004 TR2AV): the reference enters the audio tower itself
    # Text/image to one modality: the streams are independent (LCT only under CCL).
    "t2v": INDEPENDENT,
    "t2a": INDEPENDENT,
    "t2v_t2a": INDEPENDENT,  # seed 002 §6.1's "text/image-to-audio/video": both losses, no exchange
    # One stream given clean (t=0) as the condition of the other.
    "a2v": Route(video_reads_audio=True, audio_reads_video=False),  # audio stream sees video LCT only
    "v2a": Route(video_reads_audio=False, audio_reads_video=True),  # also UniTalking's TV2A mask
}


def task_route(task: str) -> Route:
    """The routes of ``task``, with the known tasks in the error."""
    try:
        return TASK_ROUTES[task]
    except KeyError:
        raise KeyError(f"no routes for task {task!r}; known: {sorted(TASK_ROUTES)}") from None


def _both(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a & b


@dataclass(frozen=True)
class ExchangeRoutes:
    """The per-sample routes of one forward: [B] bool tensors, None = on for every sample (which
    keeps the fused attention kernels: no mask is built)."""

    video_reads_audio: Tensor | None = None
    audio_reads_video: Tensor | None = None

    @classmethod
    def resolve(
        cls,
        mutual: Tensor | None = None,
        video_reads_audio: Tensor | None = None,
        audio_reads_video: Tensor | None = None,
    ) -> ExchangeRoutes:
        """Combine the shorthand ``mutual`` with the per-direction switches (AND)."""
        return cls(_both(mutual, video_reads_audio), _both(mutual, audio_reads_video))

    @classmethod
    def for_tasks(cls, tasks: list[str], device: torch.device | str | None = None) -> ExchangeRoutes:
        """The routes of a batch of tasks (inference, tests; the data pipeline ships them per sample)."""
        routes = [task_route(t) for t in tasks]
        return cls(
            torch.tensor([r.video_reads_audio for r in routes], device=device),
            torch.tensor([r.audio_reads_video for r in routes], device=device),
        )


def gated_add(x: Tensor, update: Tensor, on: Tensor | None) -> Tensor:
    """x + update for the samples whose route ``on`` [B] is True, x itself for the others."""
    return x + update if on is None else torch.where(on[:, None, None], x + update, x)


def detached_where(x: Tensor, flags: Tensor | None) -> Tensor:
    """``x`` [B, ...] with the samples where ``flags`` [B] is True cut from autograd (values unchanged)."""
    if flags is None:
        return x
    return torch.where(flags.view(-1, *([1] * (x.dim() - 1))), x.detach(), x)


ALL_ON = ExchangeRoutes()  # every route on for every sample (the default of every fusion)
