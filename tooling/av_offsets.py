"""Audio-video offset table of a folder of shards: for every sample, the picture-minus-sound offset of
each flash/click event (mean and worst, ms), read through the pipeline's decode path.

    uv run python tooling/av_offsets.py SHARDS...
    uv run python tooling/av_offsets.py --demo [--workers 0]

SHARDS are paths, globs, brace patterns or folders (as for ``alive-data inspect``). Any clip with
white flashes and short clicks can be measured; ``alive_data.probes`` writes such clips. ``--demo``
writes the standard probe set with PyAV (every common frame rate, the audio stream starting late
and the video stream starting late, plus MPEG-TS, WebM/Opus and 5.1 Matroska), runs
``alive-data write`` on it and prints the table. The bound is half an output frame plus half a
source frame; "lost" counts clicks whose flash never reached the output.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from alive_data.cli import main as alive_data
from alive_data.probes import measure_sync, offset_bound_ms, write_probes
from alive_data.samples import BadSample, load_sample, read_metadata, recorded_format
from alive_data.shards import expand_urls, iter_samples


def offset_table(urls: list[str]) -> list[str]:
    """One row per sample, each decoded in the format its own metadata records."""
    header = ("sample", "src fps", "events", "lost", "mean ms", "worst ms", "bound ms")
    rows = [f"{header[0]:<36} " + " ".join(f"{h:>8}" for h in header[1:])]

    def on_error(url: str, exn: Exception) -> None:
        rows.append(f"{url}: unreadable shard ({exn})")

    for raw in iter_samples(urls, on_error):
        try:
            meta, _ = read_metadata(raw)
            fmt = recorded_format(meta)
            sample = load_sample(raw, fmt)
        except BadSample as e:
            rows.append(f"{raw['__key__']:<36} skipped: {e}")
            continue
        fps = fmt.fps
        report = measure_sync(sample.frames, fps, sample.audio, fmt.sample_rate)
        source_fps = float(sample.meta.get("source_fps", fps))
        rows.append(
            f"{sample.key:<36} {source_fps:>8.3f} {len(report.offsets_ms):>8} {report.lost:>8} "
            f"{report.mean_ms:>8.2f} {report.worst_ms:>8.2f} {offset_bound_ms(fps, source_fps):>8.2f}"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", nargs="*", help="shard paths, globs, brace patterns or folders")
    parser.add_argument("--demo", action="store_true", help="write the standard probes and measure them")
    parser.add_argument("--workers", type=int, default=0, help="writer processes for --demo")
    args = parser.parse_args()
    if args.demo == bool(args.shards):
        parser.error("give SHARDS or --demo")
    with tempfile.TemporaryDirectory() as tmp:
        urls = args.shards
        if args.demo:
            write_probes(Path(tmp) / "probes")
            code = alive_data(["write", f"{tmp}/probes", f"{tmp}/shards", "--workers", str(args.workers)])
            if code:
                return code
            urls = [f"{tmp}/shards"]
        print("\n".join(offset_table(expand_urls(urls))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
