"""Validation: clips generated from held-out prompts of the synthetic world, measured against its truth.

Every ``validation.every_n_steps`` steps (and at the end) each rank generates its share of
``validation.num_clips`` prompts (``alive_data.world.generate_clip(i, seed)`` with a held-out seed) with
the training model (its EMA weights by default) through ``alive_infer.sampling.sample`` and
``alive_infer.guidance.GuidedVelocity``; the codecs decode them; rank 0 gathers the clips, computes the
world's metrics (``alive_data.world.metrics.world_metrics``: A/V offset, transcript CER, event recall,
subject and reference fidelity, from pixels and waveform) and logs to the run's MLflow store: the
metrics (``val/...``), and per clip ``clipN.mp4`` (``alive_models.mp4``) and ``clipN.png`` (a strip of
frames above a spectrogram) under ``validation/step-NNNNNNNNN/``.

What a clip is depends on the stage (:meth:`alive_train.module.StageModule.validation_clip`): T2VA from
the caption (joint, SFT), R2VA with the world's reference images (reference), or the refiner's cascade
on the world's high-resolution clip degraded as in training, which also logs PSNR / MSE of the
refined and of the plain upsampled clip against the high-resolution truth.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from alive_data.world import WorldClip, WorldConfig, generate_clip


@dataclass
class ValidationClip:
    """One generated clip on the CPU: uint8 frames [F, H, W, 3], float32 mono audio [N]; for the refiner
    also the high-resolution truth and the plain upsampled clip it started from."""

    index: int
    caption: str
    frames: np.ndarray
    audio: np.ndarray
    references: list[np.ndarray] | None = None
    truth: np.ndarray | None = None
    upsampled: np.ndarray | None = None
    extra: dict[str, float] = field(default_factory=dict)


def prompts(count: int, seed: int, world: WorldConfig | None = None) -> list[WorldClip]:
    """The held-out prompts: clips 0..count-1 of the world with ``seed`` (their truth included)."""
    return [generate_clip(i, seed, world or WorldConfig()) for i in range(count)]


def my_share(count: int, rank: int, world_size: int) -> list[int | None]:
    """The indices of ``count`` items (prompts, fixed batches) rank ``rank`` runs; every rank gets the
    same number of entries (None: a padding run whose result is dropped), so FSDP's collectives match
    across ranks."""
    per_rank = math.ceil(count / world_size)
    mine: list[int | None] = list(range(rank, count, world_size))
    return mine + [None] * (per_rank - len(mine))


def gather_clips(clips: list[ValidationClip]) -> list[ValidationClip]:
    """Every rank's clips on every rank, in prompt order (a collective)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, clips)
        clips = [c for part in parts for c in part]
    return sorted(clips, key=lambda c: c.index)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of uint8 images (dB, peak 255)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error of uint8 images in [0, 1] units."""
    return float(np.mean(((a.astype(np.float64) - b.astype(np.float64)) / 255.0) ** 2))


def measure(clips: list[ValidationClip], world: WorldConfig) -> dict[str, float]:
    """The world's metrics over the clips, plus the refiner's fidelity figures when there is a truth."""
    from alive_data.world.metrics import world_metrics

    metrics = world_metrics(world)
    refs = [c.references for c in clips] if any(c.references for c in clips) else None
    metrics.update([c.frames for c in clips], [c.audio for c in clips], [c.caption for c in clips], refs)
    out = {f"val/{k}": float(v) for k, v in metrics.compute().items()}
    truthful = [c for c in clips if c.truth is not None]
    if truthful:
        for name, of in (("refined", "frames"), ("upsampled", "upsampled")):
            out[f"val/psnr_{name}"] = float(np.mean([psnr(getattr(c, of), c.truth) for c in truthful]))
            out[f"val/mse_{name}"] = float(np.mean([mse(getattr(c, of), c.truth) for c in truthful]))
        out["val/psnr_gain"] = out["val/psnr_refined"] - out["val/psnr_upsampled"]
    return out


# -- pictures ----------------------------------------------------------------------------------
_MAGMA = np.array(  # a few anchors of a dark-to-bright colour map for spectrograms
    [[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]],
    dtype=np.float64,
)


def spectrogram(audio: np.ndarray, sample_rate: int, width: int, height: int = 96) -> np.ndarray:
    """uint8 [height, width, 3]: log-magnitude STFT (32 ms Hann, 8 ms hop), 80 dB range, low at the bottom."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    n_fft = max(16, int(0.032 * sample_rate))
    if x.numel() < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    spec = torch.stft(x, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft), return_complex=True)
    db = 20 * torch.log10(spec.abs().clamp_min(1e-5))
    level = ((db - db.max() + 80) / 80).clamp(0, 1).flip(0)[None, None]
    level = torch.nn.functional.interpolate(level, size=(height, width), mode="bilinear")[0, 0].numpy()
    position = level * (len(_MAGMA) - 1)
    low = np.floor(position).astype(int).clip(0, len(_MAGMA) - 2)
    frac = (position - low)[..., None]
    return ((1 - frac) * _MAGMA[low] + frac * _MAGMA[low + 1]).round().astype(np.uint8)


def frame_strip(frames: np.ndarray, count: int = 6) -> np.ndarray:
    """``count`` frames spread over the clip, side by side."""
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return np.concatenate([frames[i] for i in picks], axis=1)


def clip_picture(clip: ValidationClip, sample_rate: int) -> np.ndarray:
    """Frame strips (refiner: truth, upsampled, refined) above the spectrogram of the clip's audio."""
    rows = [clip.truth, clip.upsampled] if clip.truth is not None else []
    strips = [frame_strip(f) for f in [*rows, clip.frames]]
    width = strips[0].shape[1]
    strips = [_fit_width(s, width) for s in strips]
    return np.concatenate([*strips, spectrogram(clip.audio, sample_rate, width)], axis=0)


def _fit_width(image: np.ndarray, width: int) -> np.ndarray:
    if image.shape[1] == width:
        return image
    t = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    height = round(image.shape[0] * width / image.shape[1])
    t = torch.nn.functional.interpolate(t, size=(height, width), mode="nearest")
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def write_artifacts(
    clips: list[ValidationClip], metrics: dict[str, float], world: WorldConfig, out: Path
) -> None:
    """``clipN.mp4`` (H.264 + AAC), ``clipN.png`` and ``clipN.json`` (caption) per clip, and
    ``metrics.json``, into ``out``."""
    from PIL import Image

    from alive_models.mp4 import write_mp4

    out.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        name = f"clip{clip.index}"
        frames = clip.frames[:, : clip.frames.shape[1] // 2 * 2, : clip.frames.shape[2] // 2 * 2]
        write_mp4(out / f"{name}.mp4", frames, world.fps, clip.audio, world.sample_rate)
        Image.fromarray(clip_picture(clip, world.sample_rate)).save(out / f"{name}.png")
        (out / f"{name}.json").write_text(json.dumps({"caption": clip.caption, **clip.extra}, indent=1))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))


def log_to_mlflow(
    logger, step: int, clips: list[ValidationClip], metrics: dict[str, float], world: WorldConfig
) -> None:
    """Metrics at ``step`` and the artifacts under ``validation/step-NNNNNNNNN`` of the logger's run."""
    logger.log_metrics(metrics, step=step)
    with tempfile.TemporaryDirectory() as tmp:
        write_artifacts(clips, metrics, world, Path(tmp))
        logger.experiment.log_artifacts(logger.run_id, tmp, artifact_path=f"validation/step-{step:09d}")


def uint8_frames(pixels: Tensor) -> np.ndarray:
    """A codec's [1, 3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3] on the CPU."""
    from alive_data.world.metrics import pixels_to_frames

    return pixels_to_frames(pixels.float().cpu())[0].numpy()
