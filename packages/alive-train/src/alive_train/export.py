"""``alive-train export CKPT OUT_DIR``: a training checkpoint -> ``config.json`` + ``model.safetensors``.

Reads only the model or EMA entries of the sharded checkpoint (never the optimizer state), writes
into a temporary directory beside ``OUT_DIR`` and renames it into place. ``lineage.json`` records where
the weights came from (stage, step, checkpoint, MLflow run), for the next stage's run tags.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from alive_models import JointConfig
from alive_train.checkpoint import load_weights, publish, read_info
from alive_train.weights import WEIGHTS_NAME

CONFIG_NAME = "config.json"
LINEAGE_NAME = "lineage.json"


def export_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, weights: str = "ema", dtype: str = "float32"
) -> dict[str, Any]:
    """Write the export; returns its lineage record."""
    from safetensors.torch import save_file

    checkpoint, out_dir = Path(checkpoint).resolve(), Path(out_dir)
    info = read_info(checkpoint)
    if weights == "ema" and not info.get("ema", False):
        raise ValueError(f"{checkpoint} was trained without EMA; export with weights='model'")
    config = JointConfig.from_dict(info["model_config"])  # validates before anything is written
    state = load_weights(checkpoint, weights, getattr(torch, dtype))
    lineage = {
        "stage": info.get("stage"),
        "step": info.get("step"),
        "checkpoint": str(checkpoint),
        "weights": weights,
        "dtype": dtype,
        "mlflow": info.get("mlflow"),
        "git_commit": info.get("git_commit"),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"}
    )
    (tmp / WEIGHTS_NAME).chmod(0o644)  # safetensors creates it owner-only; exports are shared
    (tmp / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    (tmp / LINEAGE_NAME).write_text(json.dumps(lineage, indent=2) + "\n")
    publish(tmp, out_dir)
    return lineage


def read_lineage(path: str | Path) -> dict[str, Any] | None:
    """The lineage record of an export directory (None for other weights, e.g. a T2V checkpoint)."""
    path = Path(path)
    file = path / LINEAGE_NAME if path.is_dir() else None
    if file is None or not file.is_file():
        return None
    return json.loads(file.read_text())
