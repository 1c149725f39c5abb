"""The synthetic world's speed, printed as ratios measured in one run.

    uv run python tooling/bench_world.py [--clips 60]

1. rendering clips in memory (base + hi-res frames, audio, references): clips/s and x real time;
2. writing the source folder (mp4 + sidecar + references) in-process vs with 2 worker processes;
3. the four metrics: CPU ms per clip, all at once (``measure_clip``) and through the collection.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from alive_data.world import WorldConfig, generate_clip, measure_clip, world_metrics, write_source_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=60)
    args = parser.parse_args()
    config, n = WorldConfig(), args.clips

    start = time.perf_counter()
    clips = [generate_clip(i, config=config) for i in range(n)]
    render = time.perf_counter() - start
    print(f"render: {n / render:.1f} clips/s, {n * config.duration / render:.0f}x real time")

    with tempfile.TemporaryDirectory() as tmp:
        rates = {}
        for workers in (0, 2):
            start = time.perf_counter()
            write_source_folder(Path(tmp) / f"w{workers}", n, config=config, workers=workers)
            rates[workers] = n / (time.perf_counter() - start)
        print(
            f"write source folder: {rates[0]:.1f} clips/s in-process, {rates[2]:.1f} with 2 workers "
            f"({rates[2] / rates[0]:.2f}x); 300 clips take ~{300 / max(rates.values()):.0f} s"
        )

    cpu = time.process_time()
    for clip in clips:
        measure_clip(clip.frames, clip.audio, clip.caption, clip.references, config)
    per_clip = (time.process_time() - cpu) / n
    metrics = world_metrics(config)
    cpu = time.process_time()
    for clip in clips:
        metrics.update([clip.frames], [clip.audio], [clip.caption], [clip.references])
    collection = (time.process_time() - cpu) / n
    print(
        f"metrics: measure_clip {per_clip * 1000:.0f} CPU ms/clip "
        f"({config.duration / per_clip:.0f}x real time); "
        f"world_metrics() {collection * 1000:.0f} CPU ms/clip ({collection / per_clip:.2f}x measure_clip: "
        "each metric reads its own signals)"
    )


if __name__ == "__main__":
    main()
