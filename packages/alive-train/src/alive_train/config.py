"""Stage configs: OmegaConf YAML composed from bases, dotlist overrides, validated into dataclasses.

A stage YAML may name the files it builds on with ``base:`` (a name or a list of names). A name is a
path relative to the file, or the name of a config shipped in ``alive_train/configs`` (``.yaml``
optional). Bases merge in order, then the file itself, then the command line's ``key=value``
overrides; the result is merged into the :class:`StageConfig` schema (unknown keys and values of the
wrong type are errors naming the key) and instantiated, which runs the value checks below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(str(resources.files("alive_train") / "configs"))


class ConfigError(ValueError):
    """A stage config that cannot be loaded or does not validate; the message names file and key."""


@dataclass
class PathsConfig:
    """Roots the stage YAMLs interpolate: shards, exports of earlier stages, run directories."""

    data: str = "data"
    exports: str = "exports"
    runs: str = "runs"
    models: str = "models"  # local Hugging Face directories: caption encoders, VAEs
    t2v_checkpoint: str = "checkpoints/t2v-480p"  # the VideoDiT the joint stage starts from (seed 000 §4.1)


@dataclass
class ModelConfig:
    """A preset of ``alive_models`` with nested overrides, e.g. ``{audio: {num_blocks: 4}}``."""

    preset: str = "alive-14b"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class InitSource:
    """Weights to start from: an export directory (``JointAVDiT.save_pretrained``'s layout) or a
    safetensors file. ``prefix_map`` maps file prefixes to model prefixes and scopes the load
    (``alive_models.pretrained.load_weights``): ``{"audio.": "audio."}`` takes the audio tower of a
    joint export, ``{"": "video."}`` a bare VideoDiT file; empty = every key as it is."""

    path: str = MISSING
    prefix_map: dict[str, str] = field(default_factory=dict)
    allow_unexpected: bool = False


@dataclass
class ParamGroupConfig:
    """Parameters whose name matches ``pattern`` (``re.search``; first matching group wins) train at
    ``lr``; ``lr: null`` freezes them."""

    pattern: str = MISSING
    lr: float | None = None
    name: str | None = None
    weight_decay: float | None = None


@dataclass
class OptimConfig:
    """AdamW over the parameter groups, with linear warm-up then a constant or cosine schedule."""

    groups: list[ParamGroupConfig] = field(default_factory=list)
    unmatched: Literal["error", "frozen", "default"] = "error"
    default_lr: float | None = None
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    # "foreach" batches the update over all parameters (few DTensor dispatches); "fused" is one kernel
    # on GPU; "auto" is torch's default, which picks the per-tensor loop on CPU.
    implementation: Literal["foreach", "fused", "auto"] = "foreach"


@dataclass
class FlowConfig:
    """Training times: u ~ U(0, 1) (or logit-normal), then the time shift (seed 000 §4.1: 7)."""

    shift: float = 7.0
    distribution: Literal["uniform", "logit_normal"] = "uniform"
    shared_time: bool = True  # one t per sample for both towers, as the sampler runs them


@dataclass
class LossConfig:
    video_weight: float = 1.0
    audio_weight: float = 1.0


@dataclass
class EMAConfig:
    """A sharded EMA of the trainable weights; ``warmup`` uses min(decay, (1 + n) / (10 + n))."""

    enabled: bool = True
    decay: float = 0.9999
    warmup: bool = True


@dataclass
class TextConfig:
    """Caption encoders (local Hugging Face directories) run online in the training step, unless the
    batches carry cached encodings (``data.pipeline.text_embeddings``, written by ``alive-data write
    --text-encoders``): then only the ``transcript`` tokenizer is needed (give it, or the encoders).
    ``caption: false`` trains on the transcript alone (the null caption: T2A stage I, TTS)."""

    t5: str | None = None
    qwen: str | None = None
    transcript: str | None = None  # tokenizer directory; default: the Qwen directory
    dtype: str = "bfloat16"
    max_length: int = 512
    caption: bool = True


@dataclass
class CodecsConfig:
    """Codec specs (``alive_models.codecs.spec``) for pixel batches; cached latents skip them."""

    video: str = "deterministic"
    audio: str = "deterministic"


@dataclass
class DataConfig:
    """``pipeline`` is an ``alive_data.pipeline.PipelineConfig`` in dict form; ``volume`` is the
    stage's sample count (Table 2), which turns ``schedule.epochs`` into steps."""

    pipeline: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 4
    volume: int | None = None


@dataclass
class RefinerConfig:
    """The refiner's flow (module ``refiner``; seed 000 §2.2, ``alive_models.flow``): the clip is shrunk
    by ``degrade_factor`` per side (1080p -> 360p: 3), upsampled back and encoded to z_up, noised to
    the start time ``t_start`` (t0); inference integrates from t0 with the same settings."""

    t_start: float = 0.5
    degrade_factor: float = 3.0


@dataclass
class ValidationConfig:
    """Clips generated from held-out prompts of the synthetic world (``alive_data.world``, seed
    ``seed``), decoded, measured with the world's metrics and logged to MLflow with an mp4 and a PNG
    (frame strip + spectrogram) per clip. The refiner refines the world's high-resolution clips
    degraded as in training, and also logs PSNR/MSE of refined and upsampled clips against the truth.
    Stages without the video tower (T2A) do not validate."""

    enabled: bool = False
    every_n_steps: int = 1000
    at_end: bool = True
    num_clips: int = 4
    steps: int = 25
    solver: Literal["euler", "heun", "dpmpp_2m"] = "euler"
    guidance: Literal["unguided", "alive"] = "unguided"  # alive: seed 000 eq. 4-7 (4 states per step)
    seed: int = 1_000_003  # held out: training worlds use other seeds
    frames: int | None = None  # clip length (1 + 4k for a causal codec); null = the world's
    weights: Literal["ema", "model"] = "ema"
    world: dict[str, Any] = field(default_factory=dict)  # alive_data.world.WorldConfig overrides


@dataclass
class EvaluationConfig:
    """The stage's loss on fixed batches before and after training, the figure to compare (one
    step's training loss is of another batch at other flow times): the first ``batches`` batches of
    the stage's pipeline with its seed replaced by ``seed``, read from ``urls`` (held-out shards;
    null: the training sources), each with flow times and noise fixed by ``seed``. Logged as
    ``eval/loss/{total,video,audio}`` at step 0 with the weights the stage starts from and at the
    last step with the weights it exports (``export.weights``)."""

    enabled: bool = False
    batches: int = 4
    urls: str | None = None
    seed: int = 2_000_003


@dataclass
class ScheduleConfig:
    """Either ``max_steps``, or ``epochs`` with ``data.volume``:
    steps = ceil(epochs * volume / global batch)."""

    epochs: float | None = None
    max_steps: int | None = None


@dataclass
class ParallelConfig:
    """The alive-models FSDP2 plan. On CPU the compute dtype is always fp32."""

    activation_checkpointing: bool = True
    compile: bool = False
    param_dtype: str = "bfloat16"
    reduce_dtype: str = "float32"
    reshard_after_forward: bool = True


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = "auto"  # int or "auto"
    num_nodes: int = 1
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    progress_bar: bool = True


@dataclass
class CheckpointConfig:
    """Sharded DCP checkpoints under ``dir``. ``resume``: ``auto`` (the newest there), ``never`` or a path."""

    dir: str = "${run.dir}/checkpoints"
    every_n_steps: int = 1000
    keep_last: int = 3
    resume: str = "auto"


@dataclass
class ExportConfig:
    """What ``alive-train export`` (and the export at the end of ``fit``) writes."""

    dir: str = "${paths.exports}/${stage}"
    weights: Literal["ema", "model"] = "ema"
    dtype: str = "float32"
    on_finish: bool = True


@dataclass
class TrackingConfig:
    """MLflow. ``uri: null`` is ``sqlite:///<run dir>/mlflow.db`` with artifacts beside it."""

    uri: str | None = None
    experiment: str = "alive"
    run_name: str | None = None


@dataclass
class RunConfig:
    dir: str = "${paths.runs}/${stage}"
    seed: int = 0


@dataclass
class MonitorConfig:
    """Throughput window (log intervals), the per-device peak for MFU (null: the GPU's bf16 dense peak
    when known) and how many non-finite losses in a row stop the run."""

    window: int = 10
    peak_tflops: float | None = None
    max_nonfinite_in_a_row: int = 5


@dataclass
class StageConfig:
    """One training stage (a row of seed 000 Table 2)."""

    stage: str = MISSING
    module: Literal["t2a", "joint", "reference", "refiner"] = "joint"
    description: str = ""
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init_from: list[InitSource] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    text: TextConfig = field(default_factory=TextConfig)
    codecs: CodecsConfig = field(default_factory=CodecsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ConfigError("invalid stage config:\n  " + "\n  ".join(problems))

    def pipeline(self):
        """The data pipeline config (``alive_data.pipeline.PipelineConfig``). A ``null`` anywhere in
        ``data.pipeline`` removes that key (YAML merging cannot), e.g.
        ``filter: {preset: null, rules: []}``."""
        from alive_data.pipeline import PipelineConfig

        return PipelineConfig.from_dict(_drop_nulls(self.data.pipeline))

    def max_steps(self, world_size: int) -> int:
        """Optimizer steps of the stage on ``world_size`` data-parallel ranks."""
        if self.schedule.max_steps is not None:
            return self.schedule.max_steps
        batch = self.data.pipeline.get("buckets", {}).get("batch_size", 1)
        per_step = batch * world_size * self.trainer.accumulate_grad_batches
        return math.ceil(self.schedule.epochs * self.data.volume / per_step)


def _drop_nulls(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_nulls(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_drop_nulls(v) for v in data]
    return data


def _problems(c: StageConfig):
    from alive_models import get_preset

    for i, g in enumerate(c.optim.groups):
        if g.lr is not None and g.lr <= 0:
            yield f"optim.groups.{i}.lr: must be positive (null freezes), got {g.lr}"
    if c.optim.unmatched == "default" and (c.optim.default_lr is None or c.optim.default_lr <= 0):
        yield "optim.default_lr: a positive learning rate is needed when optim.unmatched is 'default'"
    if not c.optim.groups and c.optim.unmatched != "default":
        yield "optim.groups: no parameter groups (add some, or set optim.unmatched=default)"
    if len(c.optim.betas) != 2 or not all(0 <= b < 1 for b in c.optim.betas):
        yield f"optim.betas: two numbers in [0, 1), got {list(c.optim.betas)}"
    if c.optim.warmup_steps < 0:
        yield "optim.warmup_steps: must be >= 0"
    if not 0 <= c.optim.min_lr_ratio <= 1:
        yield "optim.min_lr_ratio: must be in [0, 1]"
    if c.optim.grad_clip is not None and c.optim.grad_clip <= 0:
        yield "optim.grad_clip: must be positive or null"
    if c.flow.shift <= 0:
        yield f"flow.shift: must be positive, got {c.flow.shift}"
    if c.loss.video_weight < 0 or c.loss.audio_weight < 0:
        yield "loss weights must be >= 0"
    if not 0 < c.ema.decay < 1:
        yield f"ema.decay: must be in (0, 1), got {c.ema.decay}"
    for name in ("param_dtype", "reduce_dtype"):
        if getattr(c.parallel, name) not in DTYPES:
            yield f"parallel.{name}: one of {sorted(DTYPES)}"
    for name, value in (("text.dtype", c.text.dtype), ("export.dtype", c.export.dtype)):
        if value not in DTYPES:
            yield f"{name}: one of {sorted(DTYPES)}, got {value!r}"
    if (c.text.t5 is None) != (c.text.qwen is None):
        yield "text: give both text.t5 and text.qwen (or neither)"
    cached_text = bool(c.data.pipeline.get("text_embeddings"))
    if c.text.t5 is None and not (cached_text and c.text.transcript):
        yield (
            "text: caption encoders (text.t5, text.qwen) are needed, unless the data carries cached "
            "encodings (data.pipeline.text_embeddings) and text.transcript names the tokenizer"
        )
    if c.text.t5 is None and (not c.text.caption or c.validation.enabled):
        yield "text: transcript-only training and validation encode captions: set text.t5 and text.qwen"
    if not 0 < c.refiner.t_start <= 1 or c.refiner.degrade_factor < 1:
        yield "refiner: t_start in (0, 1] and degrade_factor >= 1"
    v = c.validation
    if v.every_n_steps < 1 or v.num_clips < 1 or v.steps < 1:
        yield "validation: every_n_steps, num_clips and steps must be >= 1"
    try:
        world = world_config(v)
    except (TypeError, ValueError) as e:
        yield f"validation.world: {e}"
    else:
        if v.frames is not None and not 1 <= v.frames <= world.num_frames:
            yield f"validation.frames: 1 .. {world.num_frames} (the world's clip length)"
    if c.evaluation.batches < 1:
        yield f"evaluation.batches: at least 1, got {c.evaluation.batches}"
    try:
        get_preset(c.model.preset)
    except KeyError as e:
        yield f"model.preset: {e.args[0]}"
    if c.schedule.max_steps is None:
        if c.schedule.epochs is None or c.data.volume is None:
            yield "schedule: set schedule.max_steps, or schedule.epochs together with data.volume"
        elif c.schedule.epochs <= 0 or c.data.volume <= 0:
            yield "schedule.epochs and data.volume must be positive"
    elif c.schedule.max_steps <= 0:
        yield "schedule.max_steps: must be positive"
    if c.checkpoint.every_n_steps <= 0 or c.checkpoint.keep_last <= 0:
        yield "checkpoint.every_n_steps and checkpoint.keep_last must be positive"
    if c.trainer.accumulate_grad_batches < 1 or c.trainer.log_every_n_steps < 1:
        yield "trainer.accumulate_grad_batches and trainer.log_every_n_steps must be >= 1"
    if c.monitor.window < 2:
        yield "monitor.window: at least 2 log intervals"
    if c.monitor.max_nonfinite_in_a_row < 1:
        yield "monitor.max_nonfinite_in_a_row: must be >= 1"
    if not c.data.pipeline:
        yield "data.pipeline: empty (an alive_data PipelineConfig in dict form is needed)"
    else:
        try:
            c.pipeline()
        except (TypeError, ValueError, KeyError) as e:
            yield f"data.pipeline: {type(e).__name__}: {e}"


DTYPES = ("float32", "bfloat16", "float16")


def world_config(validation: ValidationConfig):
    """The synthetic world validation draws its prompts from (``alive_data.world.WorldConfig``)."""
    from alive_data.world import WorldConfig

    return WorldConfig(**dict(validation.world))


def _resolve_name(name: str, relative_to: Path | None) -> Path:
    candidates = []
    for root in ([relative_to] if relative_to is not None else []) + [CONFIG_DIR]:
        candidates += [root / name, root / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name!r} not found (looked in {relative_to or '-'} and the shipped {shipped})")


def _load_composed(path: Path, chain: tuple[Path, ...] = ()) -> DictConfig:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"config bases form a cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # YAML syntax errors come in several exception types
        raise ConfigError(f"{path}: cannot parse: {e}") from e
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: a stage config must be a mapping")
    bases = node.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(
            merged, _load_composed(_resolve_name(str(base), path.parent), (*chain, path))
        )
    return OmegaConf.merge(merged, node)


def compose(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The stage config as a typed OmegaConf node (interpolations unresolved): file, bases, overrides."""
    path = Path(config)
    path = path if path.is_file() else _resolve_name(str(config), None)
    schema = OmegaConf.structured(StageConfig)
    try:
        node = OmegaConf.merge(schema, _load_composed(path))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_message(e)}") from e
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must be key=value, got {bad}")
    for override in overrides:
        key, value = override.split("=", 1)
        try:
            # Parse the value with OmegaConf's grammar, then set it by path (list indices included).
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]))["value"]
            OmegaConf.update(node, key.strip(), parsed, merge=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {override!r}: {_message(e)}") from e
    return node


def load_config(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StageConfig:
    """Compose, resolve interpolations, validate: the config a run uses."""
    node = compose(config, overrides)
    try:
        OmegaConf.resolve(node)
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as e:
        raise ConfigError(_message(e)) from e


def to_yaml(config: StageConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_container(config: StageConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config))


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}, "l": [x]}`` -> ``{"a.b": "1", "l.0": "x"}`` (MLflow params)."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list | tuple):
        items = enumerate(data)
    else:
        return {prefix: str(data)}
    out: dict[str, str] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    if not out and prefix:
        out[prefix] = str(data)
    return out


def _message(e: OmegaConfBaseException) -> str:
    # OmegaConf appends "full_key: ... object_type=..." lines; keep the message and the key.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    head = lines[0] if lines else type(e).__name__
    return f"{key}: {head}" if key else head


def list_stages() -> list[str]:
    """The stage configs shipped with the package (files starting with ``_`` are bases)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("_"))
