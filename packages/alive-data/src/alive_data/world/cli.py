"""``alive-data world`` (write the world as a source folder) and ``alive-data measure`` (its metrics
for mp4 files with caption sidecars)."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from alive_data.world.config import WorldConfig
from alive_data.world.generate import LABELS_FILE, read_clip, write_source_folder


def _world(args: argparse.Namespace) -> int:
    config = WorldConfig(degraded_fraction=args.degraded)
    start = time.perf_counter()
    paths = write_source_folder(Path(args.out), args.count, args.seed, config, args.hires, args.workers)
    print(f"{len(paths)} clips in {args.out} ({time.perf_counter() - start:.1f} s)")
    print(f"next: alive-data write {args.out} SHARDS --labels {Path(args.out) / LABELS_FILE}")
    return 0


def _measure(args: argparse.Namespace) -> int:
    from alive_data.world.metrics import measure_clip  # torchmetrics: only for this command

    config = WorldConfig()
    rows = []
    for name in args.mp4:
        frames, audio, caption, refs = read_clip(Path(name), config)
        row = measure_clip(frames, audio, caption, refs or None, config).row()
        rows.append({"clip": name, **row})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = ("offset_ms", "conf", "cer", "events", "synced", "subj")
    print(f"{'clip':40s} " + " ".join(f"{h:>9s}" for h in header) + "  heard")
    for r in rows:
        cells = [r["offset_ms"], r["sync_confidence"], r["cer"], r["event_recall"], r["event_recall_synced"]]
        cells.append(r["subject_fidelity"])
        text = " ".join(f"{'-' if math.isnan(v) else f'{v:.2f}':>9s}" for v in cells)
        print(f"{Path(r['clip']).name[-40:]:40s} {text}  {r['heard']!r}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``world`` and ``measure`` on the ``alive-data`` parser."""
    w = sub.add_parser("world", help="write the synthetic world as a source folder for `write`")
    w.add_argument("out")
    w.add_argument("--count", type=int, default=300)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--hires", action="store_true", help="the refiner's data: hires_scale x the frames")
    w.add_argument("--degraded", type=float, default=0.0, help="fraction of clips with a declared defect")
    w.add_argument("--workers", type=int, default=2, help="processes (0 = in-process)")
    w.set_defaults(func=_world)
    m = sub.add_parser("measure", help="the world's metrics of mp4 files (caption in NAME.json)")
    m.add_argument("mp4", nargs="+")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_measure)
