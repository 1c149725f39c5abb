"""The exported pipeline directory: what ``alive-train export`` writes and
:meth:`alive_infer.pipeline.AlivePipeline.from_pretrained` reads.

Layout (``JointAVDiT.save_pretrained``'s, plus one JSON file and an optional sub-directory)::

    DIR/
      config.json                        the JointAVDiT config (timeline included)
      model.safetensors                  or model-0000k-of-0000n.safetensors + model.safetensors.index.json
      pipeline.json                      PipelineSpec: codecs, fps, text encoders, defaults, refiner
      refiner/                           optional: the refiner's own save_pretrained directory

:func:`save_pipeline` writes all of it atomically (every rank calls it on an FSDP-sharded model);
:func:`write_pipeline_spec` / :func:`read_pipeline_spec` write and read ``pipeline.json`` alone.
Paths inside ``pipeline.json`` (codec and text-encoder directories) may be relative: they are
resolved against DIR, so an export that carries its encoders with it can be moved.

Every check here reads only small files (JSON, safetensors headers), so a broken export is refused,
naming the file, before anything large is loaded and before any compute.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from alive_infer.guidance import Guidance
from alive_infer.sampling import SOLVERS
from alive_models.codecs import AudioCodec, VideoCodec, audio_codec_from_spec, video_codec_from_spec
from alive_models.config import JointConfig
from alive_models.flow import DEFAULT_SHIFT
from alive_models.joint import JointAVDiT
from alive_models.mp4 import atomic_path
from alive_models.pretrained import (
    CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    match_weights,
    process_rank,
    read_config,
    swap_in,
)

SPEC_NAME = "pipeline.json"
SPEC_FORMAT = "alive-pipeline"
SPEC_VERSION = 1
# What a pipeline can generate: both towers (text, first frame, reference images, reference audio:
# TR2AV needs an AudioDiT with the reference branch) or one.
TASKS: tuple[str, ...] = ("t2va", "i2va", "r2va", "tr2av", "t2v", "t2a")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(ValueError):
    """An exported directory (or a part given to load with it) that cannot serve; the message names
    the file."""


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """ "bfloat16" / torch.bfloat16 / None -> a torch dtype (or None)."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[name]


@dataclass(frozen=True)
class TextEncoderSpec:
    """The caption encoders the model was trained with (directories, or relative to the export)."""

    t5: str
    qwen: str
    transcript: str | None = None  # tokenizer directory of the speech transcript; None = the Qwen one
    max_length: int = 512
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        parse_dtype(self.dtype)


@dataclass(frozen=True)
class SamplingDefaults:
    """Sampler settings a request gets unless it says otherwise."""

    steps: int = 50
    solver: str = "euler"
    shift: float = DEFAULT_SHIFT

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {SOLVERS}")
        if not isinstance(self.steps, int) or self.steps < 1 or not self.shift > 0:
            raise ValueError(f"sampling defaults need steps >= 1 and shift > 0, got {self}")


@dataclass(frozen=True)
class RefinerSpec:
    """The refiner cascade shipped with the export: its sub-directory and default settings."""

    directory: str = "refiner"
    resolution: str | tuple[int, int] = "1080p"
    t_start: float = 0.5
    steps: int = 20

    def __post_init__(self) -> None:
        if Path(self.directory).is_absolute() or ".." in Path(self.directory).parts:
            raise ValueError(
                f"refiner directory must be a sub-directory of the export, got {self.directory!r}"
            )
        if not 0 < self.t_start <= 1 or self.steps < 1:
            raise ValueError(f"refiner needs 0 < t_start <= 1 and steps >= 1, got {self}")


@dataclass(frozen=True)
class PipelineSpec:
    """``pipeline.json``: everything besides the weights that rebuilding the pipeline needs.

    video_codec / audio_codec: ``alive_models.codecs`` spec strings ("deterministic:...",
    "wan:DIR", "oobleck:DIR"; a relative DIR is inside the export). fps: the frame rate (must equal
    config.json's timeline fps). text_encoders: None ("none" in the file) when the export names no
    encoders: they are then passed at load time. tasks: what the model was trained for. source:
    free-form provenance (run id, stage, step), copied into every sidecar.
    """

    video_codec: str
    audio_codec: str
    fps: float
    text_encoders: TextEncoderSpec | None = None
    guidance: Guidance = field(default_factory=Guidance)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    refiner: RefinerSpec | None = None
    tasks: tuple[str, ...] = TASKS
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if not self.tasks or unknown:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        for what, spec in (("video", self.video_codec), ("audio", self.audio_codec)):
            if not isinstance(spec, str) or not spec.strip():
                raise ValueError(f"{what}_codec must be a codec spec string, got {spec!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "version": SPEC_VERSION,
            "video_codec": self.video_codec,
            "audio_codec": self.audio_codec,
            "fps": self.fps,
            "text_encoders": "none" if self.text_encoders is None else dataclasses.asdict(self.text_encoders),
            "guidance": self.guidance.to_dict(),
            "sampling": dataclasses.asdict(self.sampling),
            "refiner": None if self.refiner is None else dataclasses.asdict(self.refiner),
            "tasks": list(self.tasks),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineSpec:
        """Inverse of :meth:`to_dict`; unknown formats, newer versions and unknown fields are errors."""
        data = dict(data)
        if data.pop("format", None) != SPEC_FORMAT:
            raise ValueError(f'not an ALIVE pipeline spec (needs "format": "{SPEC_FORMAT}")')
        version = data.pop("version", None)
        if version != SPEC_VERSION:
            raise ValueError(
                f"spec version {version!r}; this alive-infer reads version {SPEC_VERSION} "
                "(upgrade alive-infer)"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) - names:
            raise ValueError(f"unknown fields {sorted(set(data) - names)}")
        text = data.get("text_encoders", "none")
        refiner = data.get("refiner")
        if refiner is not None and isinstance(refiner.get("resolution"), list):
            refiner = {**refiner, "resolution": tuple(refiner["resolution"])}
        return cls(
            video_codec=data["video_codec"],
            audio_codec=data["audio_codec"],
            fps=float(data["fps"]),
            text_encoders=None if text in (None, "none") else TextEncoderSpec(**text),
            guidance=Guidance.from_dict(data["guidance"]) if "guidance" in data else Guidance(),
            sampling=SamplingDefaults(**data.get("sampling", {})),
            refiner=None if refiner is None else RefinerSpec(**refiner),
            tasks=tuple(data.get("tasks", TASKS)),
            source=dict(data.get("source", {})),
        )


def read_pipeline_spec(path: str | os.PathLike) -> PipelineSpec:
    """``DIR/pipeline.json`` as a :class:`PipelineSpec`; a missing or malformed file is a
    :class:`CheckpointError` naming it."""
    file = Path(path) / SPEC_NAME
    if not file.is_file():
        raise CheckpointError(
            f"{file} does not exist: {path} is not an exported ALIVE pipeline "
            "(alive-train export writes it; alive_infer.checkpoint.save_pipeline makes one)"
        )
    try:
        return PipelineSpec.from_dict(json.loads(file.read_text()))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"{file}: {what}") from None


def write_pipeline_spec(path: str | os.PathLike, spec: PipelineSpec) -> Path:
    """Write ``DIR/pipeline.json`` (atomically) beside a model saved with ``save_pretrained``,
    after checking it against ``DIR/config.json``: fps, codec geometry (codecs that need no weights
    to know it) and the refiner sub-directory. Returns the file's path."""
    path = Path(path)
    config = read_model_config(path)
    check_spec(path, spec, config)
    file = path / SPEC_NAME
    with atomic_path(file) as tmp:
        tmp.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    return file


def read_model_config(path: str | os.PathLike) -> JointConfig:
    """``DIR/config.json`` as a JointConfig, errors naming the file."""
    file = Path(path) / CONFIG_NAME
    try:
        return JointConfig.from_dict(read_config(path, "JointAVDiT"))
    except FileNotFoundError:
        raise CheckpointError(f"{file} does not exist: {path} holds no JointAVDiT") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: {e}") from None


def check_spec(path: Path, spec: PipelineSpec, config: JointConfig) -> None:
    """The spec against the model config, reading no weights."""
    if not math.isclose(spec.fps, config.timeline.fps):
        raise CheckpointError(
            f"{path / SPEC_NAME} says fps {spec.fps:g} but {path / CONFIG_NAME}'s timeline has "
            f"{config.timeline.fps:g}"
        )
    if spec.refiner is not None:
        refiner = path / spec.refiner.directory
        if not (refiner / CONFIG_NAME).is_file():
            raise CheckpointError(
                f"{path / SPEC_NAME} names a refiner in {refiner}, which has no {CONFIG_NAME}"
            )
    for what, text in (("video", spec.video_codec), ("audio", spec.audio_codec)):
        if text.partition(":")[0].strip() == "deterministic":  # geometry without weights: check now
            codec = (video_codec_from_spec if what == "video" else audio_codec_from_spec)(text)
            problems = codec_problems(config, **{f"{what}_codec": codec})
            if problems:
                raise CheckpointError(
                    f"{what} codec {text!r} of {path / SPEC_NAME} does not fit {path / CONFIG_NAME}: "
                    + "; ".join(problems)
                )


def codec_problems(
    config: JointConfig, video_codec: VideoCodec | None = None, audio_codec: AudioCodec | None = None
) -> list[str]:
    """Where the codecs' geometry disagrees with the model's channels and timeline (empty: fits)."""
    tl, problems = config.timeline, []
    if video_codec is not None:
        vg = video_codec.geometry
        if config.video.latent_channels != vg.channels:
            problems.append(
                f"video latents have {config.video.latent_channels} channels, codec {vg.channels}"
            )
        if (tl.temporal_stride, tl.causal_first_frame) != (vg.temporal_stride, vg.causal_first_frame):
            problems.append(
                f"timeline stride {tl.temporal_stride} (causal {tl.causal_first_frame}) vs codec "
                f"{vg.temporal_stride} (causal {vg.causal_first_frame})"
            )
    if audio_codec is not None:
        ag = audio_codec.geometry
        if config.audio.in_channels != ag.channels:
            problems.append(f"audio latents have {config.audio.in_channels} channels, codec {ag.channels}")
        if not math.isclose(tl.audio_latent_rate, ag.latent_rate):
            problems.append(
                f"timeline has {tl.audio_latent_rate:g} audio latents/s, codec {ag.latent_rate:g}"
            )
    return problems


def check_weight_files(path: str | os.PathLike) -> list[Path]:
    """Every safetensors file of a ``save_pretrained`` directory exists and has a readable header
    (a truncated or foreign file is refused here, by name). Returns the files."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index: {e}") from None
        files = sorted({path / name for name in weight_map.values()})
    elif (path / WEIGHTS_NAME).is_file():
        files = [path / WEIGHTS_NAME]
    else:
        raise CheckpointError(f"{path} has neither {WEIGHTS_NAME} nor {INDEX_NAME}")
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{file} is missing ({index.name} lists it)")
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file} is not a complete safetensors file (truncated?): {e}") from None
    return files


def check_weights(path: str | os.PathLike, config: JointConfig) -> None:
    """The safetensors of ``path`` against ``config`` by name and shape, on a meta-device model (no
    memory): a checkpoint that does not match its config.json is refused before the (much larger)
    text encoders are loaded."""
    check_weight_files(path)
    with torch.device("meta"):
        model = JointAVDiT(config)
    report = match_weights(model, path).report
    if not report.complete:
        raise CheckpointError(f"{path}: weights do not match {Path(path) / CONFIG_NAME}:\n{report}")


def resolve(root: Path, location: str) -> Path:
    """A directory named in ``pipeline.json``: absolute as given, relative to the export otherwise."""
    p = Path(location).expanduser()
    return p if p.is_absolute() else root / p


def resolve_codec_spec(root: Path, spec: str) -> str:
    """A codec spec with a relative directory made absolute against the export."""
    kind, _, rest = spec.partition(":")
    if kind.strip() in ("wan", "oobleck") and rest.strip():
        return f"{kind.strip()}:{resolve(root, rest.strip())}"
    return spec


def encoder_width(directory: Path) -> int | None:
    """Hidden width from a transformers ``config.json`` without loading weights (None if unknown)."""
    file = directory / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"text encoder {directory} has no {CONFIG_NAME} (weights are never downloaded)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from None
    width = data.get("hidden_size", data.get("d_model"))
    return width if isinstance(width, int) else None


def _is_export_file(name: str, refiner: str | None) -> bool:
    own = name in (CONFIG_NAME, SPEC_NAME) or (
        name.startswith("model") and name.endswith((".safetensors", ".json"))
    )
    return own or name == refiner


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_pipeline(
    path: str | os.PathLike,
    model: nn.Module,
    spec: PipelineSpec,
    *,
    refiner: nn.Module | None = None,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | None = None,
) -> Path:
    """Export a pipeline: ``model.save_pretrained`` + ``pipeline.json`` (+ the refiner's weights in
    ``spec.refiner.directory``), the function ``alive-train export`` calls.

    Written into a staging sibling and swapped in, so ``path`` holds the previous export or the new
    one, never a mix; an existing ``path`` holding anything an export does not write is refused. On
    an FSDP-sharded model every rank must call it (the weights are gathered; rank 0 writes).
    """
    path = Path(path)
    if (refiner is None) != (spec.refiner is None):
        raise ValueError("pass a refiner model exactly when the spec names a refiner (spec.refiner)")
    refiner_dir = None if spec.refiner is None else spec.refiner.directory
    if path.exists():
        foreign = [p.name for p in path.iterdir() if not _is_export_file(p.name, refiner_dir)]
        if foreign:
            raise FileExistsError(
                f"{path} holds files an export did not write ({foreign[:5]}); not replacing it"
            )
    staging = path.with_name(f".{path.name}.export-staging")
    if process_rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)
    _barrier()
    try:
        model.save_pretrained(staging, max_shard_size=max_shard_size, dtype=dtype)
        if refiner is not None:
            refiner.save_pretrained(staging / refiner_dir, max_shard_size=max_shard_size, dtype=dtype)
        if process_rank() == 0:
            write_pipeline_spec(staging, spec)
            swap_in(staging, path)
    except BaseException:
        if process_rank() == 0:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    _barrier()
    return path
