"""``alive-data``: build and check WebDataset shards of audio-video clips.

alive-data write SRC OUT [--shard-size 1GB] [--workers N] [--size HxW] [--video-codec SPEC ...]
        [--text-encoders T5_DIR QWEN_DIR [--text-device cuda]]
    SRC is a folder of video files (mp4, mov, mkv, webm, m4v, ...; captions in NAME.json / NAME.txt
    sidecars) or a manifest .jsonl. Rerunning into the same OUT resumes: keys already in complete
    shards are skipped. Ctrl-C stops within a second, keeping every complete sample (exit 130).
alive-data inspect SHARDS... [--decode] [--json]
    counts, schema and caption problems, histograms, and the bad samples with reasons.
alive-data world OUT [--count N] [--seed S] [--hires]
    the synthetic world (clips whose truth is known) as a source folder for `write`.
alive-data measure MP4... [--json]
    the world's metrics (offset, CER, event recall, subject fidelity) of mp4 files with sidecars.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path

from alive_data.discovery import read_manifest, scan_folder
from alive_data.inspect import format_report, inspect_shards
from alive_data.media import MAX_AUDIO_SHORTFALL
from alive_data.shards import expand_urls
from alive_data.world.cli import add_commands as add_world_commands
from alive_data.writer import REPORT_NAME, WriteOptions, write_shards

_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use e.g. 512MB or 1GB")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def parse_hw(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use HEIGHTxWIDTH, e.g. 480x832")
    return int(match.group(1)), int(match.group(2))


def _write(args: argparse.Namespace) -> int:
    src = Path(args.src)
    if src.is_dir():
        found = scan_folder(src)
    elif src.is_file():
        found = read_manifest(src)
    else:
        print(f"error: {src} is neither a folder of video files nor a manifest", file=sys.stderr)
        return 2
    if found.ignored:
        reasons = Counter(i["reason"] for i in found.ignored)
        print(f"not taken: {dict(reasons)} (listed in {Path(args.out) / REPORT_NAME})", file=sys.stderr)
    if not found.items:
        print(f"error: no inputs found in {src}", file=sys.stderr)
        return 2
    options = WriteOptions(
        fps=args.fps,
        sample_rate=args.sample_rate,
        size=args.size,
        video_codec=args.video_codec,
        audio_codec=args.audio_codec,
        latents_only=args.latents_only,
        label_table=args.labels,
        max_audio_shortfall=args.max_audio_shortfall,
        text_encoders=tuple(args.text_encoders) if args.text_encoders else None,
        text_device=args.text_device,
    )
    report = write_shards(
        found.items,
        Path(args.out),
        options,
        args.shard_size,
        args.shard_samples,
        args.workers,
        ignored=found.ignored,
    )
    print(
        f"{report.written} written, {report.already_written} already in {args.out}, "
        f"{sum(report.skipped.values())} skipped {dict(report.skipped)}; {len(report.shards)} new shards"
    )
    if report.interrupted:
        print(f"stopped by {report.interrupted}: rerun the same command to continue", file=sys.stderr)
        return 128 + signal.Signals[report.interrupted].value
    return 0


def _inspect(args: argparse.Namespace) -> int:
    urls = expand_urls(args.shards)
    if not urls:
        print("error: no shards matched", file=sys.stderr)
        return 2
    report = inspect_shards(urls, decode=args.decode)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alive-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="folder of video files or manifest -> tar shards")
    w.add_argument("src")
    w.add_argument("out")
    w.add_argument("--shard-size", type=parse_size, default=parse_size("1GB"), help="target bytes per shard")
    w.add_argument("--shard-samples", type=int, default=None, help="also cap samples per shard")
    w.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="decode processes (0 = in-process)"
    )
    w.add_argument("--fps", type=float, default=WriteOptions.fps)
    w.add_argument("--sample-rate", type=int, default=WriteOptions.sample_rate)
    w.add_argument(
        "--size", type=parse_hw, default=None, help="resize + centre-crop to HxW (default: crop to even)"
    )
    w.add_argument(
        "--max-audio-shortfall",
        type=float,
        default=MAX_AUDIO_SHORTFALL,
        help="seconds of audio that may be missing against the video before a clip is skipped",
    )
    w.add_argument("--video-codec", default=None, help="cache latents: deterministic[:k=v,...] or wan:<dir>")
    w.add_argument("--audio-codec", default=None, help="deterministic[:k=v,...] or oobleck:<dir>")
    w.add_argument("--latents-only", action="store_true", help="store latents instead of mp4/flac")
    w.add_argument("--labels", default=None, help="keyword table JSON (default: the bundled table)")
    w.add_argument(
        "--text-encoders",
        nargs=2,
        metavar=("T5_DIR", "QWEN_DIR"),
        default=None,
        help="cache the caption encodings (fp16 text.NAME.npy members) made with these encoders",
    )
    w.add_argument("--text-device", default="cpu", help="device of the caption encoders (e.g. cuda)")
    w.set_defaults(func=_write)
    i = sub.add_parser("inspect", help="report on shards")
    i.add_argument("shards", nargs="+", help="paths, globs, brace patterns or a folder")
    i.add_argument(
        "--decode", action="store_true", help="also decode media/latents (slower, finds bad clips)"
    )
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_inspect)
    add_world_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "write" and args.latents_only and not args.video_codec:
        print("error: --latents-only needs --video-codec", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
