"""Training checkpoints on disk: sharded DCP directories, written atomically, found and exported.

A checkpoint is a directory ``step-NNNNNNNNN`` holding
- the DCP shards and ``.metadata``: the model (``state_dict.model.*``), the optimizers
  (``optimizer_N.*``) and the EMA (``ema.*``), each rank writing its own shards;
- ``meta.pt``: the rest of Lightning's checkpoint (loop progress, schedulers, callbacks, the data
  position of every rank, RNG states, counters);
- ``alive.json``: what the export needs (model config, stage, step, run), readable without unpickling.

Every rank writes into ``.step-NNNNNNNNN.partial``; rank 0 renames it into place when all shards and
the metadata are on disk. A crash at any moment leaves the previous checkpoints untouched and at
worst a ``.partial`` directory, which nothing reads and the next run removes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

META_NAME = "meta.pt"
INFO_NAME = "alive.json"
DCP_METADATA = ".metadata"
_STEP_DIR = re.compile(r"^step-(\d+)$")

MODEL_PREFIX = "state_dict.model."  # the LightningModule holds the JointAVDiT as ``self.model``
EMA_PREFIX = "ema."


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}"


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def is_complete(path: Path) -> bool:
    return (path / DCP_METADATA).is_file() and (path / META_NAME).is_file() and (path / INFO_NAME).is_file()


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and is_complete(path):
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in ``directory`` (``.partial`` leftovers are ignored)."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def remove_partials(directory: str | Path) -> list[Path]:
    """Delete leftovers of interrupted saves; returns what was removed."""
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for path in directory.glob(".step-*.partial"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def publish(partial: Path, final: Path) -> None:
    """Give a fully written directory its final name, replacing what was there (rank 0 only)."""
    old = final.with_name(f".{final.name}.replaced")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_info(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint (no {DCP_METADATA}, {META_NAME} or {INFO_NAME})"
        )
    return json.loads((path / INFO_NAME).read_text())


def _tensor_entries(path: Path, prefix: str) -> dict[str, Any]:
    """Name (prefix removed) -> DCP tensor metadata for the entries under ``prefix``."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(path)).read_metadata()
    return {
        key[len(prefix) :]: meta
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }


def load_weights(
    path: str | Path, weights: str = "ema", dtype: torch.dtype | None = None, chunk_bytes: int = 1 << 30
) -> dict[str, torch.Tensor]:
    """Full (unsharded) weights from a checkpoint, reading only the model or EMA entries.

    ``weights="ema"`` takes the EMA for every parameter it tracks and the model's value for the rest
    (frozen parameters have no EMA). Tensors are read in chunks of about ``chunk_bytes`` and cast to
    ``dtype`` as they arrive, so host memory peaks near the output size, never the optimizer's.
    """
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    model = _tensor_entries(path, MODEL_PREFIX)
    if not model:
        raise ValueError(f"{path}: no model entries ({MODEL_PREFIX}*) in the checkpoint")
    sources = {name: (MODEL_PREFIX, meta) for name, meta in model.items()}
    if weights == "ema":
        ema = _tensor_entries(path, EMA_PREFIX)
        if not ema:
            raise ValueError(
                f"{path}: the checkpoint has no EMA (trained with ema.enabled=false?); export the model"
            )
        sources.update({name: (EMA_PREFIX, meta) for name, meta in ema.items() if name in model})
    elif weights != "model":
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")

    out: dict[str, torch.Tensor] = {}
    chunk: dict[str, dict[str, torch.Tensor]] = {}
    size = 0

    def flush() -> None:
        nonlocal chunk, size
        if not chunk:
            return
        # DCP flattens nested dicts by joining keys with dots, exactly as the saved state was.
        nested = {
            "state_dict": {f"model.{n}": t for n, t in chunk.get(MODEL_PREFIX, {}).items()},
            "ema": dict(chunk.get(EMA_PREFIX, {})),
        }
        nested = {k: v for k, v in nested.items() if v}
        dcp.load(nested, checkpoint_id=str(path), no_dist=True)
        for tensors in chunk.values():
            for name, tensor in tensors.items():
                out[name] = tensor if dtype is None else tensor.to(dtype)
        chunk, size = {}, 0

    for name in sorted(sources):
        prefix, meta = sources[name]
        tensor = torch.empty(meta.size, dtype=meta.properties.dtype)
        chunk.setdefault(prefix, {})[name] = tensor
        size += tensor.numel() * tensor.element_size()
        if size >= chunk_bytes:
            flush()
    flush()
    return out
