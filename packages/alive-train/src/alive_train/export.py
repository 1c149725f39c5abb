"""``alive-train export CKPT OUT_DIR``: a training checkpoint -> an alive-infer pipeline directory
(``config.json`` + safetensors, sharded with an index when large, and ``pipeline.json``), written by
:func:`alive_infer.checkpoint.save_pipeline` and read by ``AlivePipeline.from_pretrained``.

Reads only the model or EMA entries of the sharded checkpoint (never the optimizer state) and builds
the model on the meta device around those tensors (no copy). The lineage (stage, step, checkpoint,
MLflow run: the next stage's run tags) is ``pipeline.json``'s ``source``. At the end of
``alive-train fit`` the same directory comes from the live sharded model instead
(:func:`export_model`, a collective of all ranks), so no rank reads the checkpoint back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alive_infer.checkpoint import SPEC_NAME, PipelineSpec, SamplingDefaults, TextEncoderSpec, save_pipeline
from alive_models import JointAVDiT, JointConfig
from alive_models.flow import DEFAULT_SHIFT
from alive_train.checkpoint import load_weights, read_info


@dataclass(frozen=True)
class PipelineParts:
    """What an export needs besides the weights to be an alive-infer pipeline directory: the codecs
    (``alive_models.codecs`` spec strings) and the caption encoders it was trained with (None: they
    are given at load time), and the flow shift it was trained with (the sampler's default: a model
    trained at one shift and sampled at another spends its steps at the wrong noise levels)."""

    video_codec: str
    audio_codec: str
    t5: str | None = None
    qwen: str | None = None
    transcript: str | None = None  # tokenizer directory; None = the Qwen one
    text_max_length: int = 512
    text_dtype: str = "bfloat16"
    shift: float = DEFAULT_SHIFT

    def spec(self, config: JointConfig, lineage: dict[str, Any]) -> PipelineSpec:
        """The ``pipeline.json`` of an export of a model with ``config``; ``lineage`` is its source."""
        text = None
        if self.t5 is not None and self.qwen is not None:
            text = TextEncoderSpec(self.t5, self.qwen, self.transcript, self.text_max_length, self.text_dtype)
        return PipelineSpec(
            self.video_codec,
            self.audio_codec,
            config.timeline.fps,
            text_encoders=text,
            sampling=SamplingDefaults(shift=self.shift),
            source=lineage,
        )


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    weights: str = "ema",
    dtype: str = "float32",
    parts: PipelineParts | None = None,
    max_shard_size: int | str = "5GB",
) -> dict[str, Any]:
    """Export a checkpoint on disk (one process, no ``torch.distributed``); returns the lineage.
    ``parts`` default to what the checkpoint recorded."""
    checkpoint = Path(checkpoint).resolve()
    info = read_info(checkpoint)
    if weights == "ema" and not info.get("ema", False):
        raise ValueError(f"{checkpoint} was trained without EMA; export with weights='model'")
    if parts is None:
        if not info.get("pipeline"):
            raise ValueError(f"{checkpoint} records no codecs: give the pipeline parts")
        parts = PipelineParts(**info["pipeline"])
    config = JointConfig.from_dict(info["model_config"])  # validates before anything is read
    state = load_weights(checkpoint, weights, getattr(torch, dtype))
    with torch.device("meta"):
        model = JointAVDiT(config)
    model.load_state_dict(state, strict=True, assign=True)  # every key, no extra; no copy
    lineage = lineage_of(info, checkpoint, weights, dtype)
    export_model(model, out_dir, parts.spec(config, lineage), max_shard_size=max_shard_size)
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
    spec: PipelineSpec,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
) -> None:
    """The model as an alive-infer pipeline directory at ``out_dir``, swapped in whole. On an
    FSDP-sharded model every rank calls it (the weights are gathered to rank 0, which writes)."""
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    save_pipeline(out_dir, model, spec, max_shard_size=max_shard_size, dtype=dtype)


def read_lineage(path: str | Path) -> dict[str, Any] | None:
    """The lineage of an export directory (``pipeline.json``'s source; None for other weights, e.g.
    a T2V checkpoint given to ``init_from``)."""
    file = Path(path) / SPEC_NAME
    if not file.is_file():
        return None
    return json.loads(file.read_text()).get("source") or None
