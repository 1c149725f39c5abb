"""Cross-modal attention time of the three fusion kinds against the clip length, measured in one run.

    uv run python tooling/bench_fusion.py [--seconds 2,5,10,20] [--grid 8x14] [--repeats 3] [--threads 2]

One bidirectional exchange point of each kind, forward, batch 1, on the clip lengths given (24 fps,
Wan2.1 temporal stride 4 with causal first frame, 25 audio latents/s: 2 s = 13 latent frames and 51
audio latents, 20 s = 121 and 501), with ``--grid`` video tokens per latent frame:
- TA-CrossAttn (seed 000): video <- audio and audio <- video full cross-attention (cost ~ L_v * L_a:
  quadratic in the clip length);
- CCL (seed 002): one audio -> video and one video -> audio CCA module, TARP windows + LCT (cost
  ~ L_v * (s + n_a) + L_a * (h*w + n_v): linear);
- UniTalking (seed 004): one joint-attention module over [clip; audio] (cost ~ (L_v + L_a)^2).

Widths: ``tiny`` (the tiny preset: video 32, audio 32, fusion 2 x 16 heads, few LCT) and ``medium``
(video 4 x 64, audio 4 x 32, fusion 4 x 32, the paper's n_a = 8 / n_v = 128 LCT). Prints the time of
each (the fastest of ``--repeats`` after a warm-up: on a shared CPU the minimum is the least disturbed),
the ratio to TA-CrossAttn, and the growth per doubling of the clip (5 -> 10 s, 10 -> 20 s): 2.0 is
linear, 4.0 quadratic; the same for the FLOPs of the exchange (torch's FlopCounterMode on the meta
device, machine-independent). On CUDA it runs in bf16 and times with events.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import torch

from alive_models import get_preset
from alive_models.audio_dit import AudioState
from alive_models.config import FusionConfig, JointConfig, with_fusion
from alive_models.fusion import build_fusion
from alive_models.fusion.routes import ALL_ON
from alive_models.fusion.unitalking import _joint_masks
from alive_models.joint import materialize
from alive_models.layers.attention import attention_backend
from alive_models.video_dit import VideoState

KINDS = ("ta_cross_attn", "ccl", "unitalking")
LABELS = {"ta_cross_attn": "TA full", "ccl": "CCL windowed", "unitalking": "UniTalking joint"}


def widths() -> dict[str, JointConfig]:
    tiny = get_preset("tiny")
    medium = dataclasses.replace(
        tiny,
        video=dataclasses.replace(tiny.video, num_heads=4, head_dim=64, rope_axes_dims=(16, 24, 24)),
        audio=dataclasses.replace(tiny.audio, num_heads=4, head_dim=32),
        fusion=FusionConfig(num_heads=4, head_dim=32),
    )
    return {"tiny": tiny, "medium": medium}


def exchange(kind: str, config: JointConfig, grid, audio_length: int, device, dtype) -> Callable[[], object]:
    """A closure running one bidirectional exchange point of ``kind`` on random states."""
    with torch.device("meta"):
        fusion = build_fusion(with_fusion(config, kind))
    if device.type != "meta":
        materialize(fusion, device, seed=0)
    fusion.to(dtype)
    frames, h, w = grid

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    clip, audio = (
        randn(1, frames * h * w, config.video.hidden_dim),
        randn(1, audio_length, config.audio.hidden_dim),
    )
    temb_v, temb_a = randn(1, config.video.hidden_dim), randn(1, config.audio.hidden_dim)
    if kind == "ta_cross_attn":
        vs = VideoState(None, clip, temb_v, None, None, grid, 0, 0)
        as_ = AudioState(audio, temb_a, None, None, None)
        rope_v, rope_a = fusion._ropes(vs, as_, 1)
        tmod_v = torch.stack(fusion.video_time_mod(temb_v), dim=1)
        tmod_a = torch.stack(fusion.audio_time_mod(temb_a), dim=1)

        def run():
            fusion.video_from_audio[0](clip, audio, tmod_v, rope_v, rope_a)
            return fusion.audio_from_video[0](audio, clip, tmod_a, rope_a, rope_v)

    elif kind == "ccl":
        ctx = fusion.context(grid, None, ALL_ON, audio)

        def run():
            fusion.video_from_audio[0](clip, audio, ctx)
            return fusion.audio_from_video[0](audio, clip, ctx)

    else:
        ropes = fusion._ropes(grid, 1, audio_length, device, dtype)
        masks = _joint_masks(ALL_ON, None, clip.shape[1], audio_length, 1, device)

        def run():
            return fusion.joint[0](clip, audio, ropes, masks, None, None)

    return run


def counted_flops(kind: str, config: JointConfig, grid, audio_length: int) -> int:
    """FLOPs of one exchange, counted by torch on the meta device (attention as explicit products)."""
    from torch.utils.flop_counter import FlopCounterMode

    run = exchange(kind, config, grid, audio_length, torch.device("meta"), torch.float32)
    with attention_backend("reference"), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def timed(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    """The fastest of ``repeats`` timed calls of ``run`` after one warm-up call, in seconds."""
    with torch.no_grad():
        run()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
    return min(times)


def clip_geometry(seconds: float, config: JointConfig) -> tuple[int, int]:
    """(latent frames, audio latents) of a clip of ``seconds`` on the config's timeline: 1 + 4k frames
    (2 s = 49 frames = 13 latents, 51 audio latents)."""
    tl = config.timeline
    latents = round(seconds * tl.fps / tl.temporal_stride) + int(tl.causal_first_frame)
    return latents, round(tl.audio_latents_for(latents))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", default="2,5,10,20")
    parser.add_argument("--grid", default="8x14", help="video tokens per latent frame, HxW")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--widths", default="tiny,medium")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    h, w = (int(x) for x in args.grid.split("x"))
    seconds = [float(s) for s in args.seconds.split(",")]
    print(f"device {device} ({dtype}), {h}x{w} video tokens per latent frame, batch 1, forward")
    for name in args.widths.split(","):
        config = widths()[name]
        v, a, f = config.video, config.audio, config.fusion
        print(
            f"\n{name}: video {v.hidden_dim}, audio {a.hidden_dim}, fusion {f.num_heads}x{f.head_dim}, "
            f"LCT n_a={f.audio_context_tokens} n_v={f.video_context_tokens}"
        )
        header = f"{'clip':>6} {'T_v':>4} {'L_v':>6} {'L_a':>4} " + " ".join(
            f"{LABELS[k]:>17}" for k in KINDS
        )
        print(header + f" {'CCL/TA':>7} {'Uni/TA':>7}")
        times, flops = {}, {}
        for s in seconds:
            frames, audio_length = clip_geometry(s, config)
            grid = (frames, h, w)
            t = {
                k: timed(exchange(k, config, grid, audio_length, device, dtype), args.repeats, device)
                for k in KINDS
            }
            times[s], flops[s] = t, {k: counted_flops(k, config, grid, audio_length) for k in KINDS}
            cells = " ".join(f"{t[k] * 1e3:>14.2f} ms" for k in KINDS)
            print(
                f"{s:>5g}s {frames:>4} {frames * h * w:>6} {audio_length:>4} {cells} "
                f"{t['ccl'] / t['ta_cross_attn']:>7.2f} {t['unitalking'] / t['ta_cross_attn']:>7.2f}"
            )
        print("  growth per doubling of the clip (2.0 = linear, 4.0 = quadratic), time | FLOPs:")
        for a_s in seconds:
            if 2 * a_s not in times:
                continue
            b_s = 2 * a_s
            growth = "  ".join(
                f"{LABELS[k]} x{times[b_s][k] / times[a_s][k]:.2f} | x{flops[b_s][k] / flops[a_s][k]:.2f}"
                for k in KINDS
            )
            print(f"  {a_s:g}s -> {b_s:g}s: {growth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
