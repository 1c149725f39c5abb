"""``alive-train``: run a training stage, export a checkpoint.

alive-train fit CONFIG [key=value ...]     train a stage (a shipped name such as ``joint`` or a YAML path)
alive-train export CKPT OUT_DIR            checkpoint -> an alive-infer pipeline directory
alive-train stages                         list the shipped stage configs
alive-train demo [--out DIR] [...]         the whole chain on the synthetic world, on a CPU, in minutes
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from alive_train.config import ConfigError, list_stages, load_config

EXIT_CONFIG, EXIT_NONFINITE = 2, 3


def _fit(args: argparse.Namespace) -> int:
    from alive_train import preemption

    preemption.install_handler()  # first: SIGUSR1's default action would kill the process
    try:
        config = load_config(args.config, args.overrides)
        from alive_train.callbacks import NonFiniteLossError
        from alive_train.run import fit

        fit(config)
    except ConfigError as e:
        print(f"alive-train: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except NonFiniteLossError as e:
        print(f"alive-train: stopped: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    return 0


def _export(args: argparse.Namespace) -> int:
    from alive_train.checkpoint import is_complete, latest_checkpoint, read_info
    from alive_train.export import PipelineParts, export_checkpoint

    checkpoint = Path(args.checkpoint)
    if not is_complete(checkpoint):
        latest = latest_checkpoint(checkpoint)
        if latest is None:
            print(
                f"alive-train: {checkpoint} is neither a checkpoint nor a directory of checkpoints",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        checkpoint = latest
    try:
        recorded = read_info(checkpoint).get("pipeline") or {}
        given = {
            "video_codec": args.video_codec,
            "audio_codec": args.audio_codec,
            "t5": args.t5,
            "qwen": args.qwen,
            "transcript": args.transcript,
        }
        parts = {**recorded, **{k: v for k, v in given.items() if v is not None}}
        if not {"video_codec", "audio_codec"} <= parts.keys():
            raise ValueError(f"{checkpoint} records no codecs: give --video-codec and --audio-codec")
        lineage = export_checkpoint(
            checkpoint, args.out_dir, args.weights, args.dtype, PipelineParts(**parts)
        )
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"alive-train: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"exported {checkpoint} (step {lineage['step']}, {args.weights}, {args.dtype}) to {args.out_dir}")
    return 0


def _stages(args: argparse.Namespace) -> int:
    for name in list_stages():
        config = load_config(name)
        print(f"{name:12s} {config.module:10s} {config.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alive-train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="train a stage")
    fit.add_argument("config", help="a shipped stage name (alive-train stages) or a YAML file")
    fit.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. schedule.max_steps=100")
    fit.set_defaults(func=_fit)
    export = sub.add_parser("export", help="checkpoint -> an alive-infer pipeline directory")
    export.add_argument(
        "checkpoint", help="a checkpoint directory, or a directory of them (the newest is taken)"
    )
    export.add_argument("out_dir")
    export.add_argument("--weights", choices=("ema", "model"), default="ema")
    export.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    for flag, what in (
        ("--video-codec", "video codec spec"),
        ("--audio-codec", "audio codec spec"),
        ("--t5", "T5 caption encoder directory"),
        ("--qwen", "Qwen caption encoder directory"),
        ("--transcript", "transcript tokenizer directory"),
    ):
        export.add_argument(flag, default=None, help=f"{what} the export is served with (default: the run's)")
    export.set_defaults(func=_export)
    stages = sub.add_parser("stages", help="list the shipped stage configs")
    stages.set_defaults(func=_stages)
    from alive_train import demo

    demo.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
