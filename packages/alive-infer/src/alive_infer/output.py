"""Writing a result: mp4 (H.264 + AAC, through :mod:`alive_models.mp4`), wav and a JSON sidecar.

The three files are written under temporary names and renamed only when all three are complete, so
an error leaves none of them (and no temporary file) behind. File hashes (sha256) identify the model,
codec and encoder files and the input images, so a sidecar says exactly what made the clip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from alive_models.mp4 import atomic_path, write_mp4


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(path: str | os.PathLike) -> dict[str, str]:
    """sha256 of a file, or of every file under a directory (relative path -> hash), sorted."""
    path = Path(path)
    if path.is_file():
        return {path.name: sha256_file(path)}
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    return {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


def tensor_sha256(x: Tensor) -> str:
    """sha256 of a tensor's values (its bytes on the CPU, with dtype and shape): a result's identity
    in the sidecar, so two runs can be compared bit for bit without keeping the latents."""
    data = x.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{data.dtype} {tuple(data.shape)}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def output_paths(out: str | os.PathLike, video: bool = True, audio: bool = True) -> dict[str, Path]:
    """The files a result becomes: clip.mp4 -> {mp4, wav, json} for a clip with sound, {mp4, json}
    for video alone (T2V); clip.wav -> {wav, json} for audio alone (T2A)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if video:
        if suffix != ".mp4":
            raise ValueError(f"output must end in .mp4, got {out.name}")
    elif suffix != ".wav":
        raise ValueError(f"audio-only output must end in .wav, got {out.name}")
    paths = {"mp4": out} if video else {}
    if audio:
        paths["wav"] = out.with_suffix(".wav")
    paths["json"] = out.with_suffix(".json")
    return paths


def write_outputs(
    out: str | os.PathLike,
    frames: np.ndarray | None,
    fps: float,
    audio: np.ndarray | None,
    sample_rate: int,
    sidecar: dict[str, Any],
) -> dict[str, Path]:
    """Write mp4 (+ wav) + json beside each other, all or nothing. frames: uint8 [F, H, W, 3], or
    None for audio alone; audio: float [N] mono, sample 0 at frame 0, or None for video alone."""
    if frames is None and audio is None:
        raise ValueError("nothing to write: no frames and no audio")
    paths = output_paths(out, video=frames is not None, audio=audio is not None)
    text = json.dumps(sidecar, indent=2, ensure_ascii=False, default=str)  # fails before any file
    with contextlib.ExitStack() as stack:
        tmp = {k: stack.enter_context(atomic_path(p)) for k, p in paths.items()}
        if frames is not None:
            write_mp4(tmp["mp4"], frames, fps, audio, sample_rate)
        if audio is not None:
            sf.write(tmp["wav"], np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
        tmp["json"].write_text(text + "\n")
    return paths
