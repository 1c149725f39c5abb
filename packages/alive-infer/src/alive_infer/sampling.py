"""Rectified-flow samplers for the two towers, shared by inference and training's validation.

The interface is a velocity callable and the starting latents, nothing else:

    velocity(x_video, x_audio, t_video, t_audio) -> (v_video, v_audio)

``x_*`` are latents ([B, C, T, H, W] and [B, C, L]) or None for a tower that is absent (T2V / T2A);
``t_*`` are [B] float32 flow times on the latents' device (t = 1 noise, t = 0 data); the callable
returns velocities shaped like its inputs (None for an absent tower). Guidance, text conditioning and
the model live inside the callable (see :mod:`alive_infer.guidance`), so validation can pass a bare
model call and inference a guided one.

Both towers share one time schedule (:func:`alive_models.flow.sampling_schedule`, time shift
included) and are integrated together: every velocity evaluation sees both at the same time. A tower
can instead be *held clean*: its latent is fed unchanged at t = 0 on every step (the refiner's audio,
A2V / V2A conditioning). ``t_start < 1`` starts from an intermediate time (the refiner's t0 with the
source of :func:`alive_models.flow.refiner_source` as the start).

Solvers (all deterministic; the only randomness is the starting noise, drawn by :func:`initial_noise`
from a seeded generator on the CPU, so the same seed gives the same clip on any device and, on the
CPU, the same bits):

- ``euler``: x <- x + (t' - t) v. One evaluation per step.
- ``heun``: Euler predictor, trapezoidal corrector (EDM's Heun); the last step into t = 0 is plain
  Euler. 2 * steps - 1 evaluations.
- ``dpmpp_2m``: DPM-Solver++(2M) in data-prediction form for the flow's alpha_t = 1 - t, sigma_t = t
  (x0 = x - t v, lambda = log((1 - t) / t)). One evaluation per step; its first-order step is exactly
  Euler, the second-order correction starts once two finite log-SNR steps are known (a step out of
  t = 1 has an infinite one), and the step into t = 0 returns the x0 prediction (also Euler's answer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from alive_models.flow import DEFAULT_SHIFT, sampling_schedule

Solver = Literal["euler", "heun", "dpmpp_2m"]
SOLVERS: tuple[str, ...] = ("euler", "heun", "dpmpp_2m")
Pair = tuple[Tensor | None, Tensor | None]
Velocity = Callable[[Tensor | None, Tensor | None, Tensor, Tensor], Pair]
# callback(step, steps, t, t_next) after each step: progress bars, previews, logging.
StepCallback = Callable[[int, int, float, float], None]


def initial_noise(
    shape: Sequence[int],
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise drawn on the CPU from ``generator`` (seeded by the caller), then moved:
    the same seed gives the same noise whatever the device."""
    if generator.device.type != "cpu":
        raise ValueError("draw the starting noise from a CPU generator so it does not depend on the device")
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def num_evaluations(solver: Solver, steps: int) -> int:
    """Velocity evaluations a run makes (guided: each one is a batched forward of all states)."""
    return 2 * steps - 1 if solver == "heun" else steps


def sample(
    velocity: Velocity,
    video: Tensor | None,
    audio: Tensor | None,
    *,
    steps: int,
    solver: Solver = "euler",
    shift: float = DEFAULT_SHIFT,
    t_start: float = 1.0,
    clean_video: bool = False,
    clean_audio: bool = False,
    callback: StepCallback | None = None,
) -> Pair:
    """Integrate from ``t_start`` to 0 and return the final (video, audio) latents.

    video / audio: the latents at ``t_start`` (noise for a full run), or the clean latent of a tower
    held clean, or None for an absent tower. Float32 is kept for the state whatever the model's dtype.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if video is None and audio is None:
        raise ValueError("nothing to sample: both towers are None")
    moving = (video is not None and not clean_video, audio is not None and not clean_audio)
    if not any(moving):
        raise ValueError("both towers are held clean: there is nothing to integrate")
    ref = video if video is not None else audio
    batch, device = ref.shape[0], ref.device
    times = sampling_schedule(steps, shift, t_start=t_start).double().tolist()

    def evaluate(x: list[Tensor | None], t: float) -> list[Tensor | None]:
        tv = torch.full((batch,), 0.0 if clean_video else t, device=device)
        ta = torch.full((batch,), 0.0 if clean_audio else t, device=device)
        out = velocity(x[0], x[1], tv, ta)
        return [o.float() if m and o is not None else None for o, m in zip(out, moving, strict=True)]

    def axpy(x: list[Tensor | None], a: float, d: list[Tensor | None]) -> list[Tensor | None]:
        return [xi + a * di if di is not None else xi for xi, di in zip(x, d, strict=True)]

    x: list[Tensor | None] = [video, audio]
    x = [xi.float() if (xi is not None and m) else xi for xi, m in zip(x, moving, strict=True)]
    previous: tuple[list[Tensor | None], float] | None = None  # dpmpp_2m: last x0 and log-SNR step
    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        d = evaluate(x, t)
        if solver == "euler" or (solver == "heun" and t_next == 0.0):
            x = axpy(x, t_next - t, d)
        elif solver == "heun":
            d2 = evaluate(axpy(x, t_next - t, d), t_next)
            mean = [None if a is None else 0.5 * (a + b) for a, b in zip(d, d2, strict=True)]
            x = axpy(x, t_next - t, mean)
        else:
            x, previous = _dpmpp_2m_step(x, d, t, t_next, previous)
        if callback is not None:
            callback(i, steps, t, t_next)
    return x[0], x[1]


def _log_snr(t: float) -> float:
    """lambda = log(alpha / sigma) = log((1 - t) / t); -inf at t = 1, +inf at t = 0."""
    if t >= 1.0:
        return -math.inf
    if t <= 0.0:
        return math.inf
    return math.log1p(-t) - math.log(t)


def _dpmpp_2m_step(
    x: list[Tensor | None],
    v: list[Tensor | None],
    t: float,
    t_next: float,
    previous: tuple[list[Tensor | None], float] | None,
) -> tuple[list[Tensor | None], tuple[list[Tensor | None], float] | None]:
    x0 = [None if vi is None else xi - t * vi for xi, vi in zip(x, v, strict=True)]
    h = _log_snr(t_next) - _log_snr(t)
    if t_next == 0.0:  # sigma' = 0: the update is the data prediction itself
        return [xi if x0i is None else x0i for xi, x0i in zip(x, x0, strict=True)], None
    data = x0
    if previous is not None and math.isfinite(previous[1]) and math.isfinite(h):
        x0_prev, h_prev = previous
        c = h / (2.0 * h_prev)  # 1 / (2 r) with r = h_prev / h
        data = [None if a is None else (1.0 + c) * a - c * b for a, b in zip(x0, x0_prev, strict=True)]
    # x' = (sigma'/sigma) x - alpha' (exp(-h) - 1) D
    ratio, coef = t_next / t, -(1.0 - t_next) * math.expm1(-h)
    out = [xi if di is None else ratio * xi + coef * di for xi, di in zip(x, data, strict=True)]
    return out, (x0, h)
