"""Rectified flow (seed 000 §2, §4.1): x_t = (1 - t) x_0 + t eps, velocity target eps - x_0,
time shift t' = s t / (1 + (s - 1) t) with s = 7 for training and sampling.

t = 0 is data, t = 1 is noise. Losses are per modality with a per-sample mask, so a task can switch a
modality's loss off (e.g. the video loss of a T2A batch, or clean refiner audio).

The refiner (seed 000 §2.2) starts from a degraded latent instead of pure noise. The seed leaves the
flow open; ours keeps the base model's noise level at every time so the refiner can start from the
480p weights. With z the clean latent, z_up the latent of the degraded-then-upsampled clip, eps noise
and a start time t0 in (0, 1]:

    y     = (1 - t0) z_up + t0 eps                   the source: z_up noised to t0 (inference starts here)
    x_tau = (1 - tau / t0) z + (tau / t0) y          for tau in [0, t0]; x_t0 = y, x_0 = z
    v     = d x_tau / d tau = (y - z) / t0          the velocity target

The noise in x_tau is exactly tau * eps, the base model's level at time tau, and with z_up = z the
path is the base flow. t0 = 1 gives y = eps: the base flow itself, so one sampler serves both.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

DEFAULT_SHIFT = 7.0


def shift_time(t: Tensor, shift: float = DEFAULT_SHIFT) -> Tensor:
    """t' = s t / (1 + (s - 1) t): pushes time towards the noise end (more steps at high noise)."""
    return shift * t / (1 + (shift - 1) * t)


def _expand(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def add_noise(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x_0 + t eps, with t: [B] broadcast over the other dims."""
    t = _expand(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """d x_t / d t = eps - x_0."""
    return noise - x0


def sample_timesteps(
    batch: int,
    shift: float = DEFAULT_SHIFT,
    distribution: Literal["uniform", "logit_normal"] = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Training times: u ~ U(0,1) (or logit-normal, SD3) then the time shift. [B] float32 in (0, 1)."""
    if distribution == "uniform":
        u = torch.rand(batch, generator=generator, device=device)
    elif distribution == "logit_normal":
        u = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    else:
        raise ValueError(f"unknown timestep distribution {distribution!r}")
    return shift_time(u, shift)


def sampling_schedule(
    steps: int, shift: float = DEFAULT_SHIFT, device: torch.device | str = "cpu", t_start: float = 1.0
) -> Tensor:
    """steps + 1 times from ``t_start`` (1 = pure noise; the refiner's t0) to 0, uniform then shifted."""
    _check_start(t_start)
    return t_start * shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


def flow_loss(prediction: Tensor, target: Tensor, sample_mask: Tensor | None = None) -> Tensor:
    """Mean squared velocity error, averaged per sample then over the samples the mask keeps.

    sample_mask: [B] bool/float; a batch where it keeps nothing gives a zero loss that still backpropagates
    (so every rank runs the same graph under FSDP).
    """
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if sample_mask is None:
        return per_sample.mean()
    weights = sample_mask.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp_min(1.0)


def _check_start(t_start: float) -> None:
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"start time must be in (0, 1], got {t_start}")


def refiner_source(upsampled: Tensor, noise: Tensor, t_start: float) -> Tensor:
    """y = (1 - t0) z_up + t0 eps: the degraded latent noised to the start time (the refiner's x at t0)."""
    _check_start(t_start)
    return (1 - t_start) * upsampled + t_start * noise


def refiner_interpolate(clean: Tensor, source: Tensor, tau: Tensor, t_start: float) -> Tensor:
    """x_tau = (1 - tau/t0) z + (tau/t0) y, with tau: [B] in [0, t0] broadcast over the other dims."""
    _check_start(t_start)
    return add_noise(clean, source, tau / t_start)


def refiner_velocity_target(clean: Tensor, source: Tensor, t_start: float) -> Tensor:
    """d x_tau / d tau = (y - z) / t0."""
    _check_start(t_start)
    return (source - clean) / t_start


def sample_refiner_timesteps(
    batch: int,
    t_start: float,
    shift: float = DEFAULT_SHIFT,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Refiner training times tau = t0 * shift(u): the same density as :func:`sampling_schedule`."""
    _check_start(t_start)
    return t_start * sample_timesteps(batch, shift, generator=generator, device=device)
