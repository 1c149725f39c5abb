"""``alive-infer``: generate clips from an exported ALIVE pipeline.

    alive-infer generate --checkpoint DIR --prompt "..." --out clip.mp4 [options]
    torchrun --nproc-per-node N -m alive_infer.cli generate ... --device cuda   (sharded, FSDP2)

Exit codes: 0 written; 1 unexpected error; 2 bad command line (unknown option, unparsable value,
wrong output name); 3 a request the model cannot serve (image size, duration, tags, ...); 4 a
missing or mismatched file (checkpoint, codec, text encoder); 130 interrupted. Every error is
reported before any compute, and leaves no output file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alive_infer.checkpoint import TASKS, CheckpointError, read_pipeline_spec
from alive_infer.distributed import launched_by_torchrun, session
from alive_infer.guidance import GUIDANCE_PRESETS, parse_guidance
from alive_infer.output import output_paths
from alive_infer.pipeline import RESOLUTIONS, TOWERS, AlivePipeline, RefineSettings, RequestError
from alive_infer.sampling import SOLVERS

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REQUEST, EXIT_FILES, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


class UsageError(ValueError):
    """A command line that parses but cannot mean anything (exit code 2)."""


def _resolution(text: str) -> str | tuple[int, int]:
    if text in RESOLUTIONS:
        return text
    height, sep, width = text.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit():
        raise argparse.ArgumentTypeError(f"use one of {sorted(RESOLUTIONS)} or HEIGHTxWIDTH (e.g. 480x832)")
    return int(height), int(width)


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alive-infer", description="ALIVE joint audio-video generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser(
        "generate",
        help="generate one clip (mp4 + wav + json sidecar)",
        description="Generate one clip from an exported pipeline directory. Options left out take the "
        "export's defaults (pipeline.json).",
    )
    inputs = g.add_argument_group("what to generate")
    inputs.add_argument("--checkpoint", required=True, type=Path, help="exported pipeline directory")
    inputs.add_argument("--prompt", required=True, help="raw prompt or structured caption")
    inputs.add_argument("--out", required=True, type=Path, help="clip.mp4 (T2A: sound.wav)")
    inputs.add_argument(
        "--task",
        choices=TASKS,
        help="default: i2va with --image, r2va with --ref, tr2av with --ref-audio, else t2va",
    )
    inputs.add_argument("--image", type=Path, help="first-frame PNG/JPEG (I2VA)")
    inputs.add_argument("--ref", type=Path, nargs="+", default=[], help="reference images (R2VA)")
    inputs.add_argument(
        "--ref-audio",
        type=Path,
        metavar="WAV",
        help="reference voice (TR2AV): any sound file soundfile reads, mixed to mono, resampled to the "
        "audio codec's rate; needs a model with the reference-audio branch (UniTalking)",
    )
    inputs.add_argument("--negative-prompt", default="", help="plain text; empty = the null caption")
    length = inputs.add_mutually_exclusive_group()
    length.add_argument("--duration", type=_positive(float), help="seconds (video: 1 + 4k frames)")
    length.add_argument("--frames", type=_positive(int), help="number of video frames")
    inputs.add_argument("--resolution", type=_resolution, help="480p, 720p, ... or HEIGHTxWIDTH")
    inputs.add_argument("--aspect-ratio", default="16:9", help="with a named resolution (default 16:9)")
    sampling = g.add_argument_group("sampling")
    sampling.add_argument("--steps", type=_positive(int), help="sampler steps")
    sampling.add_argument("--solver", choices=SOLVERS, help="ODE solver")
    sampling.add_argument("--shift", type=_positive(float), help="time shift s (default 7)")
    sampling.add_argument("--seed", type=int, default=0, help="same seed, same clip (default 0)")
    sampling.add_argument(
        "--guidance", help=f"a preset ({', '.join(GUIDANCE_PRESETS)}), a JSON object or a JSON file"
    )
    refine = g.add_argument_group("refiner cascade")
    refine.add_argument(
        "--refine",
        nargs="?",
        const=True,
        metavar="DIR",
        help="refine; DIR = a refiner other than the export's",
    )
    refine.add_argument("--refine-resolution", type=_resolution, help="target resolution (default 1080p)")
    refine.add_argument("--refine-start", type=float, help="start time t0 in (0, 1] (default 0.5)")
    refine.add_argument("--refine-steps", type=_positive(int), help="refiner steps (default 20)")
    parts = g.add_argument_group("parts (default: as pipeline.json names them)")
    parts.add_argument("--text-encoders", type=Path, nargs="+", metavar="DIR", help="T5 QWEN [TRANSCRIPT]")
    parts.add_argument("--text-dtype", choices=("float32", "bfloat16", "float16"))
    parts.add_argument("--video-codec", help="codec spec, e.g. wan:/ckpt/wan2.1-vae")
    parts.add_argument("--audio-codec", help="codec spec, e.g. oobleck:/ckpt/oobleck")
    parts.add_argument(
        "--rewriter", type=Path, metavar="DIR", help="local chat model that rewrites the prompt"
    )
    parts.add_argument("--sound-index", type=Path, metavar="DIR", help="sound-event index (retrieval)")
    parts.add_argument("--sound-tau", type=float, default=0.85, help="retrieval cosine threshold")
    run = g.add_argument_group("where to run")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), help="model dtype (default: saved)"
    )
    run.add_argument(
        "--distributed", action="store_true", help="shard with FSDP2 across a torchrun launch (automatic)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _task(args: argparse.Namespace, tasks: Sequence[str]) -> str:
    if args.task:
        return args.task
    if args.image is not None:
        return "i2va"
    if args.ref:
        return "r2va"
    if args.ref_audio is not None:
        return "tr2av"
    return "t2va" if "t2va" in tasks else tasks[0]


class Progress:
    """A tqdm bar per sampling run (the base, then the refiner), a tick per step."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar, self.runs = enabled, None, 0

    def __call__(self, step: int, steps: int, t: float, t_next: float) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        if step == 0:
            self.close()
            self.runs += 1
            desc = "sampling" if self.runs == 1 else "refining"
            self.bar = tqdm(total=steps, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(1)
        self.bar.set_postfix(t=f"{t_next:.3f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {
        "ref": [str(p) for p in args.ref],
        "text_encoders": None if args.text_encoders is None else [str(p) for p in args.text_encoders],
    }


def generate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    spec = read_pipeline_spec(args.checkpoint)  # cheap: settles the task and defaults before loading
    task = _task(args, spec.tasks)
    towers = TOWERS[task]
    try:
        output_paths(args.out, video="video" in towers, audio="audio" in towers)
        guidance = None if args.guidance is None else parse_guidance(args.guidance, spec.guidance)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.refine is None and any(
        x is not None for x in (args.refine_resolution, args.refine_start, args.refine_steps)
    ):
        raise UsageError("--refine-resolution/--refine-start/--refine-steps need --refine")
    if args.distributed and "RANK" not in os.environ:
        raise UsageError(
            "--distributed needs a torchrun launch: torchrun --nproc-per-node N -m alive_infer.cli ..."
        )
    distributed = args.distributed or launched_by_torchrun()
    with session(args.device, distributed) as run:
        pipe = AlivePipeline.from_pretrained(
            args.checkpoint,
            text_encoders=args.text_encoders,
            video_codec=args.video_codec,
            audio_codec=args.audio_codec,
            refiner=args.refine if isinstance(args.refine, str) else args.refine is True,
            device=run.device,
            dtype=args.dtype,
            text_dtype=args.text_dtype,
            mesh=run.mesh,
        )
        if args.rewriter is not None:
            from alive_infer.prompt import ChatRewriter

            pipe.rewriter = ChatRewriter.from_pretrained(args.rewriter, device=str(run.device))
        if args.sound_index is not None:
            from alive_infer.retrieval import SoundEventIndex, mean_pooled

            pipe.sound_index, pipe.sound_embed = (
                SoundEventIndex.load(args.sound_index),
                mean_pooled(pipe.text.qwen),
            )
        refine = None
        if args.refine is not None:
            defaults = pipe.request(args.prompt, refine=True).refine
            refine = RefineSettings(
                args.refine_resolution or defaults.resolution,
                defaults.t_start if args.refine_start is None else args.refine_start,
                args.refine_steps or defaults.steps,
            )
        request = pipe.request(
            args.prompt,
            task=task,
            negative_prompt=args.negative_prompt,
            duration=args.duration,
            num_frames=args.frames,
            resolution=args.resolution,
            aspect_ratio=args.aspect_ratio,
            steps=args.steps,
            solver=args.solver,
            shift=args.shift,
            seed=args.seed,
            guidance=guidance,
            image=args.image,
            references=args.ref,
            reference_audio=args.ref_audio,
            refine=refine,
            sound_tau=args.sound_tau,
        )
        progress = Progress(enabled=run.is_main and not args.quiet)
        try:
            result = pipe.generate(request, progress, decode=run.is_main)
        finally:
            progress.close()
        if run.is_main:
            result.record["command"] = {
                "argv": list(argv),
                "options": _settings(args),
                "world_size": run.world,
            }
            for path in result.save(args.out).values():
                print(path)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on a bad command line
    try:
        return generate(args, argv)
    except UsageError as e:
        parser.exit(EXIT_USAGE, f"alive-infer: error: {e}\n")
    except RequestError as e:
        print(f"alive-infer: cannot generate this request: {e}", file=sys.stderr)
        return EXIT_REQUEST
    except (CheckpointError, FileNotFoundError) as e:
        print(f"alive-infer: {e}", file=sys.stderr)
        return EXIT_FILES
    except KeyboardInterrupt:
        print("alive-infer: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
