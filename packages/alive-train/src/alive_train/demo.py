"""``alive-train demo``: the whole system on one machine, with no GPU, weights or data.

1. Generates the synthetic world (``alive_data.world``) and writes it into WebDataset shards with the
   alive-data writer (cached latents of the deterministic codecs; the refiner's high-resolution clips
   as pixels).
2. Runs the recipe's chain t2a_stage1 -> t2a_stage2 -> joint -> sft -> reference -> refiner, each stage
   its shipped config with the demo's sections (``configs/demo/demo.yaml``) written as a stage YAML
   under ``OUT/configs`` and trained by :func:`alive_train.run.fit` exactly as ``alive-train fit
   OUT/configs/NN_stage.yaml key=value ...`` would, each starting from the previous stage's export;
   all runs go to one MLflow SQLite store (``OUT/mlflow.db``), each nested under its parent.
   Validation during training logs clips, metrics and pictures to MLflow.
3. Loads the final export with ``AlivePipeline.from_pretrained`` (the refiner beside it) and generates
   T2VA, I2VA, R2VA and a refined clip from held-out world prompts, then measures them.
4. Prints a table: per stage the loss at start and end and the wall time; per clip the world's metrics;
   the mp4 paths; the MLflow store and the ``mlflow ui`` command.

Loss "start" and "end" are each stage's loss on fixed held-out batches (clips of another world seed,
fixed flow times and noise; ``alive_train.evaluation``) with the weights it starts from and the
weights it exports, so they differ only by what the stage learnt. The training loss's first and last
fifth are printed beside them: those windows see other batches at other times, and within a short
stage the batches' content moves the loss more than the weights do.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

STAGES = ("t2a_stage1", "t2a_stage2", "joint", "sft", "reference", "refiner")
FUSIONS = ("ta_cross_attn", "ccl", "unitalking")
PRESET_FILE = Path(str(resources.files("alive_train") / "configs" / "demo" / "demo.yaml"))
MARKER = "demo.json"  # what the demo writes first into OUT: --overwrite only replaces such a directory
EXPERIMENT = "alive-demo"


class DemoError(ValueError):
    """Bad demo arguments (the message says what to change)."""


def preset() -> dict[str, Any]:
    return yaml.safe_load(PRESET_FILE.read_text())


# -- settings ----------------------------------------------------------------------------------------
@dataclass
class DemoSettings:
    """What a demo run does; :func:`settings_from_args` builds it from the command line."""

    out: Path
    clips: int
    hires_clips: int
    steps: dict[str, int]
    model: str = "tiny"
    fusion: str = "ta_cross_attn"
    overrides: list[str] = field(default_factory=list)  # every stage
    stage_overrides: dict[str, list[str]] = field(default_factory=dict)  # STAGE:key=value
    world: dict[str, Any] = field(default_factory=dict)
    generate: dict[str, Any] = field(default_factory=dict)
    workers: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "out": str(self.out)}


def parse_steps(value: str, defaults: dict[str, int]) -> dict[str, int]:
    """``--steps``: ``x3`` (scale every stage), ``50`` (every stage), or ``joint=80,sft=40``."""
    value = value.strip()
    try:
        if value.startswith("x"):
            factor = float(value[1:])
            if factor <= 0:
                raise ValueError
            return {s: max(1, round(n * factor)) for s, n in defaults.items()}
        if "=" not in value:
            return dict.fromkeys(defaults, _positive(int(value)))
        steps = dict(defaults)
        for part in value.split(","):
            stage, n = part.split("=", 1)
            if stage.strip() not in defaults:
                raise DemoError(f"--steps: unknown stage {stage.strip()!r}; stages are {', '.join(STAGES)}")
            steps[stage.strip()] = _positive(int(n))
        return steps
    except (ValueError, TypeError) as e:
        if isinstance(e, DemoError):
            raise
        raise DemoError(
            f"--steps {value!r}: give xFACTOR (e.g. x5), a step count for every stage, or STAGE=N,..."
        ) from None


def _positive(n: int) -> int:
    if n < 1:
        raise ValueError
    return n


def split_overrides(items: Sequence[str]) -> tuple[list[str], dict[str, list[str]], dict, dict]:
    """``--set`` values: ``generate.KEY=V`` and ``world.KEY=V`` are the demo's own; ``STAGE:KEY=V`` goes
    to one stage; anything else to every stage's config (OmegaConf dotlist)."""
    every: list[str] = []
    per_stage: dict[str, list[str]] = {}
    world: dict[str, Any] = {}
    generate: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise DemoError(f"--set {item!r}: expected KEY=VALUE (e.g. optim.warmup_steps=5)")
        key, value = item.split("=", 1)
        if ":" in key:
            stage, key = key.split(":", 1)
            if stage not in STAGES:
                raise DemoError(f"--set {item!r}: unknown stage {stage!r}; stages are {', '.join(STAGES)}")
            per_stage.setdefault(stage, []).append(f"{key}={value}")
        elif key.startswith(("generate.", "world.")):
            section, name = key.split(".", 1)
            target = generate if section == "generate" else world
            if name not in preset()[section]:
                raise DemoError(f"--set {item!r}: {section} has {sorted(preset()[section])}")
            target[name] = yaml.safe_load(value)
        else:
            every.append(item)
    return every, per_stage, world, generate


def settings_from_args(args) -> DemoSettings:
    """Validate the command line (before anything is written)."""
    spec = preset()
    if args.model not in spec["models"]:
        raise DemoError(f"--model {args.model!r}: choose one of {', '.join(spec['models'])}")
    if args.fusion not in FUSIONS:
        raise DemoError(f"--fusion {args.fusion!r}: choose one of {', '.join(FUSIONS)}")
    defaults = {s: spec["stages"][s]["steps"] for s in STAGES}
    steps = parse_steps(args.steps, defaults) if args.steps else defaults
    every, per_stage, world, generate = split_overrides(args.set or [])
    world = {**spec["world"], **world}
    clips = args.clips if args.clips is not None else world["clips"]
    least = 4 * int(world["batch_size"])  # the reference stage batches by reference count (2 or 3)
    if clips < least:
        raise DemoError(
            f"--clips {clips}: at least {least} (4 batches of world.batch_size={world['batch_size']}: "
            "the reference stage batches clips by their number of reference images)"
        )
    hires = min(clips, world["hires_clips"])
    return DemoSettings(
        out=Path(args.out),
        clips=clips,
        hires_clips=hires,
        steps=steps,
        model=args.model,
        fusion=args.fusion,
        overrides=every,
        stage_overrides=per_stage,
        world=world,
        generate={**spec["generate"], **generate},
        workers=args.workers,
    )


def prepare_out(out: Path, overwrite: bool, resume: bool) -> None:
    """Refuse a non-empty ``out`` unless resuming or overwriting a directory an earlier demo wrote."""
    if overwrite and resume:
        raise DemoError("--overwrite and --resume exclude each other")
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out} is a file")
    used = out.is_dir() and any(out.iterdir())
    if used and not (overwrite or resume):
        raise DemoError(
            f"--out {out} is not empty: choose another directory, --resume an interrupted demo there, "
            "or --overwrite it"
        )
    if used and not (out / MARKER).is_file():
        raise DemoError(f"--out {out} holds files no demo wrote (no {MARKER}); refusing to reuse it")
    if used and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


# -- data --------------------------------------------------------------------------------------------
WORLD_FIELDS = ("height", "width", "subject_size", "max_subjects")  # world.* keys for WorldConfig


def world_fields(world: dict[str, Any]) -> dict[str, Any]:
    """The ``alive_data.world.WorldConfig`` fields the demo's ``world`` section sets (the training
    clips, the refiner's, validation's and the final prompts all share them)."""
    return {k: world[k] for k in WORLD_FIELDS}


@dataclass
class DemoData:
    root: Path
    text: tuple[Path, Path]

    def shards(self, hires: bool = False, heldout: bool = False) -> Path:
        """Training shards (base or the refiner's high-resolution clips), or their held-out twins."""
        return self.root / ("heldout" if heldout else "train") / ("hires" if hires else "base") / "shards"


def write_data(settings: DemoSettings) -> DemoData:
    """World clips -> shards (base: cached latents; hires: pixels), the same from another world seed
    for the held-out loss, and the tiny caption encoders. Skipped when a previous run completed it
    (``data/done.json``)."""
    from alive_data.world import WorldConfig
    from alive_models.testing import save_tiny_text_models
    from alive_train.testing import write_world_data

    root = settings.out / "data"
    done = root / "done.json"
    if done.is_file():
        data = DemoData(root, tuple(Path(p) for p in json.loads(done.read_text())["text"]))
        if all(data.shards(h, o).is_dir() for h in (False, True) for o in (False, True)):
            print(f"data: reusing {root}", flush=True)
            return data
    w = settings.world
    started = time.perf_counter()
    data = DemoData(root, save_tiny_text_models(root / "text"))
    size = world_fields(w)
    parts = (  # (clips, hires, held out)
        (settings.clips, False, False),
        (settings.hires_clips, True, False),
        (w["heldout_clips"], False, True),
        (w["heldout_hires_clips"], True, True),
    )
    for clips, hires, heldout in parts:
        shards = data.shards(hires, heldout)
        seed = w["seed"] + 1 if heldout else w["seed"]  # held out: another world seed
        kind = "high-resolution clips (x{}) ".format(w["hires_scale"]) if hires else "clips "
        print(
            f"data: {clips} {'held-out ' if heldout else ''}{kind}(world seed {seed}) -> {shards}", flush=True
        )
        write_world_data(
            shards.parent,
            clips,
            seed,
            hires=hires,
            latents=not hires,  # the refiner's input is made from pixels in the step
            world=WorldConfig(hires_scale=w["hires_scale"], **size) if hires else WorldConfig(**size),
            workers=settings.workers,
            progress=True,
            video_codec=w["video_codec"],
        )
    seconds = time.perf_counter() - started
    done.write_text(json.dumps({"seconds": seconds, "text": [str(p) for p in data.text]}) + "\n")
    print(f"data: done in {seconds:.0f} s", flush=True)
    return data


# -- stage configs -----------------------------------------------------------------------------------
def model_section(settings: DemoSettings) -> dict[str, Any]:
    """The ``model`` section: the tiny preset (or its fusion variant) on the codecs' latent widths,
    with the ``--model`` preset's overrides."""
    from alive_train.testing import model_for_codec

    model = model_for_codec(settings.world["video_codec"])
    if settings.fusion != "ta_cross_attn":
        model["preset"] = f"tiny-{settings.fusion}"  # alive_models' variant presets (same towers)
    for part, values in preset()["models"][settings.model].items():
        model["overrides"].setdefault(part, {}).update(values)
    return model


def stage_sections(
    stage: str, settings: DemoSettings, data: DemoData
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The sections the demo writes over ``stage``'s shipped config, and the keys left to it."""
    from alive_train.testing import CODEC, data_format

    spec = preset()
    common, own = spec["common"], dict(spec["stages"][stage])
    steps = settings.steps[stage]
    tasks = {"i2va_prob": 0.0, "caption_dropout": 0.0, "mutual_dropout": 0.0, **own.pop("tasks", {})}
    own.pop("steps")
    refiner = stage == "refiner"
    w = settings.world
    pipeline = {
        "sources": [{"name": "world", "urls": str(data.shards(hires=refiner))}],
        "format": data_format(w["video_codec"]),
        "filter": {"preset": None, "rules": []},
        "shuffle_buffer": 16,
        "buckets": {"batch_size": w["batch_size"], "latent_frames": [13]},
        "tasks": tasks,
        "latents": {"video": w["video_codec"], "audio": CODEC},
    }
    if refiner:  # pixels: the degraded input is made from them in the step
        side = w["hires_scale"]
        pipeline["latents"] = None
        hires = [w["height"] * side, w["width"] * side]
        pipeline["buckets"] = {"batch_size": 2, "resolutions": [hires], "frames": [49]}
    exports = settings.out / "exports"
    init_from = {
        "t2a_stage1": [],
        "joint": [{"path": str(exports / "t2a_stage2"), "prefix_map": {"audio.": "audio."}}],  # fresh video
        "sft": [{"path": str(exports / "joint")}],  # the demo's chain skips joint_i2va and ct
        "refiner": [{"path": str(exports / "reference")}],  # the final base model (shipped: sft)
    }
    validation = {**common["validation"], "world": {"hires_scale": w["hires_scale"], **world_fields(w)}}
    validation["every_n_steps"] = max(1, steps // 2)  # mid-run and at the end
    sections = {
        **{k: v for k, v in common.items() if k != "validation"},
        **own,
        "base": stage,
        "model": model_section(settings),
        "codecs": {"video": w["video_codec"], "audio": CODEC},
        "data": {"num_workers": 0, "volume": None, "pipeline": pipeline},
        "schedule": {"max_steps": steps, "epochs": None},
        "optim": {"warmup_steps": 0, **own.get("optim", {})},
        "checkpoint": {**common["checkpoint"], "every_n_steps": steps},
        "validation": validation,
        "evaluation": {**common["evaluation"], "urls": str(data.shards(hires=refiner, heldout=True))},
        "tracking": {"uri": tracking_uri(settings.out), "experiment": EXPERIMENT, "run_name": stage},
        "run": {"dir": str(settings.out / "runs" / stage)},
        "paths": {"exports": str(exports)},
    }
    if settings.fusion == "unitalking" and "groups" in sections["optim"]:
        sections["optim"] = {
            **sections["optim"],
            "groups": joint_attention_groups(sections["optim"]["groups"]),
        }
    if stage in init_from:
        sections["init_from"] = init_from[stage]
    return sections, () if stage in init_from else ("init_from",)


def joint_attention_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parameter groups for UniTalking's fusion, which has no per-direction modules: its joint
    attention writes into both towers, so it takes the audio-side cross-attention group's (lower)
    rate, and the video-side group goes (a pattern that matches nothing is an error)."""
    out = []
    for group in groups:
        pattern = group["pattern"]
        if pattern.startswith(r"^fusion\.(video_from_audio"):
            continue
        if pattern.startswith(r"^fusion\.(audio_from_video"):
            group = {**group, "pattern": r"^fusion\."}
        out.append(group)
    return out


def write_stage_config(stage: str, settings: DemoSettings, data: DemoData) -> Path:
    """``OUT/configs/NN_stage.yaml``: a stage YAML ``alive-train fit`` takes as it is."""
    from alive_train.testing import stage_dict

    sections, inherit = stage_sections(stage, settings, data)
    config = stage_dict(data.shards(), data.text, settings.out / "runs" / stage, inherit, **sections)
    path = settings.out / "configs" / f"{STAGES.index(stage) + 1:02d}_{stage}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# written by alive-train demo; rerun this stage with: alive-train fit {path}\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def tracking_uri(out: Path) -> str:
    return f"sqlite:///{(out / 'mlflow.db').resolve()}"


# -- training ----------------------------------------------------------------------------------------
@dataclass
class StageResult:
    """One stage's figures for the table."""

    stage: str
    steps: int
    loss_start: float  # fixed held-out batches, the weights the stage started from
    loss_end: float  # the same batches, times and noise, the weights it exported
    train_start: float  # training loss/total, mean of the first fifth of the steps
    train_end: float  # ... and of the last fifth
    seconds: float
    run_id: str
    export: str
    config: str

    @property
    def decreased(self) -> bool:
        return (
            math.isfinite(self.loss_start)
            and math.isfinite(self.loss_end)
            and self.loss_end < self.loss_start
        )


def loss_window(losses: list[float]) -> tuple[float, float]:
    """Means of the first and last fifth (at least one value) of a loss history."""
    if not losses:
        return math.nan, math.nan
    n = max(1, len(losses) // 5)
    return sum(losses[:n]) / n, sum(losses[-n:]) / n


def metric_history(uri: str, run_id: str, key: str) -> list[float]:
    """A metric of a run, in step order."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient(uri).get_metric_history(run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def run_stage(stage: str, settings: DemoSettings, data: DemoData) -> StageResult:
    """Train one stage through the normal fit path (or reuse its result when resuming)."""
    from alive_train.config import load_config
    from alive_train.run import fit

    record = settings.out / "runs" / stage / "demo_stage.json"
    if record.is_file() and (settings.out / "exports" / stage / "pipeline.json").is_file():
        print(f"== {stage}: done earlier, reusing {settings.out / 'exports' / stage}", flush=True)
        return StageResult(**json.loads(record.read_text()))
    path = write_stage_config(stage, settings, data)
    overrides = [*settings.overrides, *settings.stage_overrides.get(stage, [])]
    print(f"\n== {stage}: alive-train fit {path} {' '.join(overrides)}".rstrip(), flush=True)
    started = time.perf_counter()
    result = fit(load_config(path, overrides))
    seconds = time.perf_counter() - started
    if result.export_dir is None:
        raise RuntimeError(f"{stage} stopped before its export (pre-empted?); rerun with --resume")
    uri, run_id = result.run.uri, result.run.run_id
    fixed = metric_history(uri, run_id, "eval/loss/total")  # step 0 and the last step
    if len(fixed) != 2:
        raise RuntimeError(f"{stage}: expected the fixed-batch loss at start and end, got {fixed}")
    out = StageResult(
        stage,
        result.trainer.global_step,
        *fixed,
        *loss_window(metric_history(uri, run_id, "loss/total")),
        seconds,
        result.run.run_id,
        str(result.export_dir),
        str(path),
    )
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(out)) + "\n")
    os.replace(tmp, record)
    return out


# -- generation --------------------------------------------------------------------------------------
@dataclass
class ClipResult:
    name: str
    task: str
    path: str
    caption: str
    metrics: dict[str, float]


HELD_OUT = ("t2va", "i2va", "r2va", "refined")


def generate_clips(settings: DemoSettings) -> list[ClipResult]:
    """T2VA, I2VA, R2VA and a refined T2VA clip from held-out world prompts (the validation seed's
    world, never trained on), written as mp4 (H.264 + AAC) + wav + json and measured."""
    import numpy as np

    from alive_data.world import WorldConfig, generate_clip, measure_clip
    from alive_infer.guidance import Guidance
    from alive_infer.pipeline import AlivePipeline, RefineSettings
    from alive_train.config import ValidationConfig

    g, w = settings.generate, settings.world
    exports = settings.out / "exports"
    pipe = AlivePipeline.from_pretrained(exports / "reference", refiner=exports / "refiner")
    world = WorldConfig(**world_fields(w))
    seed = ValidationConfig().seed + 17  # held out: training uses world seed 0, validation clips 0..n
    prompts = [generate_clip(i, seed, world) for i in range(len(HELD_OUT))]
    guidance = Guidance.unguided() if g["guidance"] == "unguided" else Guidance()
    common = {"steps": g["steps"], "solver": g["solver"], "seed": g["seed"], "guidance": guidance}
    common |= {"resolution": (world.height, world.width), "num_frames": world.num_frames}
    side = w["hires_scale"]
    results = []
    out_dir = settings.out / "clips"
    for name, prompt in zip(HELD_OUT, prompts, strict=True):
        task = "t2va" if name == "refined" else name
        extra: dict[str, Any] = {}
        if name == "i2va":
            extra["image"] = prompt.frames[0]
        if name == "r2va":
            extra["references"] = list(prompt.references)
        if name == "refined":
            res = (world.height * side, world.width * side)
            extra["refine"] = RefineSettings(res, g["refine_t_start"], g["refine_steps"])
        started = time.perf_counter()
        result = pipe.generate(pipe.request(prompt.caption, task=task, **common, **extra))
        paths = result.save(out_dir / f"{name}.mp4")
        frames = result.frames
        if name == "refined":  # measured at the world's size: area-average the x`side` frames
            f, h, wd, c = frames.shape
            frames = (
                frames.reshape(f, h // side, side, wd // side, side, c).mean((2, 4)).round().astype(np.uint8)
            )
        refs = extra.get("references")
        report = measure_clip(frames, result.audio, prompt.caption, refs, world).row()
        metrics = {k: float(v) for k, v in report.items() if k != "heard"}
        print(f"generated {name:8s} {paths['mp4']}  ({time.perf_counter() - started:.1f} s)", flush=True)
        results.append(ClipResult(name, task, str(paths["mp4"]), prompt.caption, metrics))
    return results


# -- table -------------------------------------------------------------------------------------------
def _fmt(x: float, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_table(stages: list[StageResult], clips: list[ClipResult], out: Path) -> str:
    """The demo's summary: stages, clips, files and the MLflow command."""
    lines = [
        "",
        "loss start/end: held-out batches, fixed times and noise, the stage's first and exported weights",
        "train first/last: mean training loss over the first and last fifth of the steps",
        "",
        "stage        steps  loss start  loss end  train first  train last   wall s  run",
    ]
    for s in stages:
        flag = "" if s.decreased else "   WARNING: loss did not decrease"
        lines.append(
            f"{s.stage:12s} {s.steps:5d}  {_fmt(s.loss_start):>10s}  {_fmt(s.loss_end):>8s}  "
            f"{_fmt(s.train_start):>11s}  {_fmt(s.train_end):>10s}  {s.seconds:7.1f}  {s.run_id}{flag}"
        )
    lines += ["", "clip      AV offset ms  CER     event recall  subject fidelity  reference fidelity"]
    for c in clips:
        m = c.metrics
        lines.append(
            f"{c.name:8s}  {_fmt(m['offset_ms'], '.1f'):>12s}  {_fmt(m['cer'], '.3f'):6s}  "
            f"{_fmt(m['event_recall'], '.2f'):>12s}  {_fmt(m['subject_fidelity'], '.2f'):>16s}  "
            f"{_fmt(m['reference_fidelity'], '.2f'):>18s}"
        )
    lines += ["", "clips:"] + [f"  {c.name:8s} {c.path}" for c in clips]
    uri = tracking_uri(out)
    lines += [
        "",
        f"MLflow store: {out.resolve() / 'mlflow.db'} (artifacts in {out.resolve() / 'mlartifacts'})",
        f"browse it:    mlflow ui --backend-store-uri {uri}",
        f"summary:      {out / 'summary.json'}",
    ]
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------------------
def run_demo(settings: DemoSettings) -> tuple[list[StageResult], list[ClipResult]]:
    """Data, the chain, generation; writes ``OUT/summary.json`` and prints the table."""
    started = time.perf_counter()
    marker = settings.out / MARKER
    marker.write_text(json.dumps(settings.to_dict(), indent=1) + "\n")
    data = write_data(settings)
    stages = [run_stage(stage, settings, data) for stage in STAGES]
    clips = generate_clips(settings)
    summary = {
        "settings": settings.to_dict(),
        "stages": [asdict(s) | {"decreased": s.decreased} for s in stages],
        "clips": [asdict(c) for c in clips],
        "mlflow": tracking_uri(settings.out),
        "seconds": time.perf_counter() - started,
    }
    tmp = settings.out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, settings.out / "summary.json")
    print(format_table(stages, clips, settings.out), flush=True)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s", flush=True)
    return stages, clips


def add_parser(sub) -> None:
    """The ``demo`` subcommand of ``alive-train``."""
    spec = preset()
    defaults = ", ".join(f"{s}={spec['stages'][s]['steps']}" for s in STAGES)
    demo = sub.add_parser(
        "demo",
        help="the whole system on the synthetic world in minutes on a CPU",
        description=__doc__.split("\n\n")[0],
    )
    demo.add_argument("--out", default="alive-demo", help="output directory (default: ./alive-demo)")
    demo.add_argument(
        "--clips", type=int, default=None, help=f"world clips (default {spec['world']['clips']})"
    )
    demo.add_argument(
        "--steps",
        default=None,
        help="steps per stage: xFACTOR scales the defaults (x5), N sets every stage, STAGE=N,... some "
        f"(defaults: {defaults})",
    )
    demo.add_argument("--model", default="tiny", help=f"model preset: {', '.join(spec['models'])}")
    demo.add_argument(
        "--fusion", default="ta_cross_attn", help=f"fusion kind of every stage: {', '.join(FUSIONS)}"
    )
    demo.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a stage-config override for every stage (optim.warmup_steps=5), one stage's "
        "(joint:flow.shift=5), or the demo's own (generate.steps=20, world.batch_size=2); repeatable",
    )
    demo.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes writing the world"
    )
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo's output directory")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo in --out")
    demo.set_defaults(func=main)


def main(args) -> int:
    """Entry point of ``alive-train demo`` (argparse namespace in, exit code out)."""
    from alive_train.config import ConfigError

    try:
        settings = settings_from_args(args)
        prepare_out(settings.out, args.overwrite, args.resume)
    except DemoError as e:
        print(f"alive-train demo: {e}", file=sys.stderr)
        return 2
    try:
        run_demo(settings)
    except ConfigError as e:
        print(f"alive-train demo: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nalive-train demo: interrupted; finished stages and exports are complete. Continue with "
            f"alive-train demo --out {settings.out} --resume",
            file=sys.stderr,
        )
        return 130
    return 0  # a stage whose loss did not fall is a WARNING row in the table, not a failure
