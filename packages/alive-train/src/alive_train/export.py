"""``alive-train export CKPT OUT_DIR``: a training checkpoint -> a ``JointAVDiT.save_pretrained``
directory (``config.json`` + safetensors, sharded with an index when large) that
``JointAVDiT.from_pretrained`` and alive-infer read.

Reads only the model or EMA entries of the sharded checkpoint (never the optimizer state), builds the
model on the meta device around those tensors (no copy), saves it into a temporary directory beside
``OUT_DIR``, adds ``lineage.json`` (stage, step, checkpoint, MLflow run: the next stage's run tags)
and the inference spec, and renames the whole into place. At the end of ``alive-train fit`` the same
files come from the live sharded model instead (:func:`export_model`, a collective of all ranks), so
no rank reads the checkpoint back.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from alive_models import JointAVDiT, JointConfig
from alive_train.checkpoint import load_weights, publish, read_info

LINEAGE_NAME = "lineage.json"


@dataclass(frozen=True)
class PipelineParts:
    """What an export needs besides the weights to be an alive-infer pipeline directory: the codecs
    (``alive_models.codecs`` spec strings) and the caption encoders it was trained with."""

    video_codec: str
    audio_codec: str
    t5: str | None = None
    qwen: str | None = None
    transcript: str | None = None  # tokenizer directory; None = the Qwen one
    text_max_length: int = 512
    text_dtype: str = "bfloat16"


def write_inference_spec(directory: Path, parts: PipelineParts, lineage: dict[str, Any]) -> None:
    """THE call site of ``alive_infer.write_pipeline_spec(directory, ...)`` (``pipeline.json``: codecs,
    fps, text encoders, provenance), which the inference helper is adding; the coordinator wires it
    here at merge. Until then the parts are recorded in ``lineage.json`` (``lineage["pipeline"]``)."""
    lineage["pipeline"] = asdict(parts)


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    weights: str = "ema",
    dtype: str = "float32",
    parts: PipelineParts | None = None,
    max_shard_size: int | str = "5GB",
) -> dict[str, Any]:
    """Export a checkpoint on disk (one process, no ``torch.distributed``); returns the lineage."""
    checkpoint = Path(checkpoint).resolve()
    info = read_info(checkpoint)
    if weights == "ema" and not info.get("ema", False):
        raise ValueError(f"{checkpoint} was trained without EMA; export with weights='model'")
    config = JointConfig.from_dict(info["model_config"])  # validates before anything is read
    state = load_weights(checkpoint, weights, getattr(torch, dtype))
    with torch.device("meta"):
        model = JointAVDiT(config)
    model.load_state_dict(state, strict=True, assign=True)  # every key, no extra; no copy
    lineage = lineage_of(info, checkpoint, weights, dtype)
    export_model(model, out_dir, lineage, parts, max_shard_size=max_shard_size)
    return lineage


def lineage_of(info: dict[str, Any], checkpoint: Path, weights: str, dtype: str) -> dict[str, Any]:
    """The lineage record of an export of ``checkpoint`` (its ``alive.json`` is ``info``)."""
    return {
        "stage": info.get("stage"),
        "step": info.get("step"),
        "checkpoint": str(checkpoint),
        "weights": weights,
        "dtype": dtype,
        "mlflow": info.get("mlflow"),
        "git_commit": info.get("git_commit"),
    }


def export_model(
    model: JointAVDiT,
    out_dir: str | Path,
    lineage: dict[str, Any],
    parts: PipelineParts | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
) -> None:
    """``model.save_pretrained`` into a temporary sibling of ``out_dir`` plus ``lineage.json`` and the
    inference spec, renamed into place. On an FSDP-sharded model every rank calls it (the weights are
    gathered to rank 0, which writes)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    rank0 = _rank() == 0
    if rank0:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()  # no rank looks at tmp before it is gone
    model.save_pretrained(tmp, max_shard_size=max_shard_size, dtype=dtype)
    if rank0:
        for file in tmp.iterdir():  # safetensors creates files owner-only; exports are shared
            file.chmod(0o644)
        if parts is not None:
            write_inference_spec(tmp, parts, lineage)
        (tmp / LINEAGE_NAME).write_text(json.dumps(lineage, indent=2) + "\n")
        publish(tmp, out_dir)
    _barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def read_lineage(path: str | Path) -> dict[str, Any] | None:
    """The lineage record of an export directory (None for other weights, e.g. a T2V checkpoint)."""
    path = Path(path)
    file = path / LINEAGE_NAME if path.is_dir() else None
    if file is None or not file.is_file():
        return None
    return json.loads(file.read_text())
