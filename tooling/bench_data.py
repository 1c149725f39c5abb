"""Data-loading benchmark for alive-data, printed as ratios measured in one run.

    uv run python tooling/bench_data.py [--clips 48] [--seconds 2] [--size 96x128]

Writes synthetic clips (PyAV) into shards twice, once as mp4 + flac and once as cached latents from a
tiny random Wan2.1-format VAE and Oobleck VAE (real latent sizes: 16 channels at 1/8 x 1/8 x 1/4 for
video), then reads both through the stage pipeline:
1. decode-from-mp4 vs cached-latent reading, samples/s and the ratio (1 worker each);
2. loader throughput with 1 vs 2 DataLoader workers (mp4 decoding).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from alive_data.avformat import AVFormat
from alive_data.loader import ResumableLoader
from alive_data.pipeline import PipelineConfig
from alive_data.stream import AVStream
from alive_data.synthetic import make_clips
from alive_data.writer import WriteOptions, write_shards
from alive_models.codecs import audio_codec_from_spec, video_codec_from_spec
from alive_models.testing import save_tiny_vaes


def samples_per_second(config: dict, workers: int) -> tuple[float, int]:
    loader = ResumableLoader(AVStream(PipelineConfig.from_dict(config)), num_workers=workers)
    start = time.perf_counter()
    count = sum(batch.batch_size for batch in loader)
    return count / (time.perf_counter() - start), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--size", default="96x128", help="HEIGHTxWIDTH of the written clips")
    args = parser.parse_args()
    height, width = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = make_clips(root / "src", args.clips, seconds=args.seconds)
        options = WriteOptions(size=(height, width))
        write_shards(items, root / "mp4", options, shard_samples=8, workers=2, progress=False)
        wan, oobleck = save_tiny_vaes(root, audio_channels=32)
        video_codec, audio_codec = f"wan:{wan}", f"oobleck:{oobleck}"
        cached = WriteOptions(
            size=(height, width), video_codec=video_codec, audio_codec=audio_codec, latents_only=True
        )
        write_shards(items, root / "latents", cached, shard_samples=8, workers=2, progress=False)
        frames = 1 + 4 * ((round(args.seconds * 24) - 1) // 4)
        mp4 = {
            "sources": [{"name": "a", "urls": str(root / "mp4")}],
            "shuffle_buffer": 8,
            "buckets": {"batch_size": 4, "resolutions": [[height, width]], "frames": [frames]},
        }
        latents = {
            **mp4,
            "sources": [{"name": "a", "urls": str(root / "latents")}],
            "format": AVFormat.from_codecs(
                24, video_codec_from_spec(video_codec), audio_codec_from_spec(audio_codec)
            ).to_dict(),
            "latents": {"video": video_codec, "audio": audio_codec},
            "buckets": {"batch_size": 4, "latent_frames": [(frames - 1) // 4 + 1]},
        }
        decode_rate, n1 = samples_per_second(mp4, 1)
        latent_rate, n2 = samples_per_second(latents, 1)
        two_rate, n3 = samples_per_second(mp4, 2)
        print(f"{args.clips} clips of {args.seconds:g} s at {height}x{width}, 24 fps, 16 kHz; batch 4")
        print(f"  decode mp4 (1 worker):     {decode_rate:8.1f} samples/s  ({n1} samples)")
        print(f"  cached latents (1 worker): {latent_rate:8.1f} samples/s  ({n2} samples)")
        print(f"  latents / decode ratio:    {latent_rate / decode_rate:8.2f}")
        print(f"  decode mp4 (2 workers):    {two_rate:8.1f} samples/s  ({n3} samples)")
        print(f"  2 / 1 worker ratio:        {two_rate / decode_rate:8.2f}")


if __name__ == "__main__":
    main()
