"""Guidance cost per sampling step on CPU: the four ALIVE states in one batched forward vs four
sequential forwards (and eq. 9's states, the no-reference ones masked in the same batch), and
seconds per step of each guidance mode, both towers and one (T2V, T2A), on the tiny and a medium
config.

    uv run python tooling/bench_guidance.py [--repeats 5] [--threads 2]

Every figure of a table comes from the same run (medians of ``--repeats`` timed steps after one
warm-up), so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from alive_infer.guidance import (
    CFG,
    UCG,
    DualReferenceCFG,
    Guidance,
    GuidedVelocity,
    MultiModalCFG,
)
from alive_models import build_model, get_preset
from alive_models.config import AudioDiTConfig, FusionConfig, JointConfig, VideoDiTConfig
from alive_models.testing import randomize_zero_inits
from alive_models.text import CaptionConditioning

MEDIUM = JointConfig(
    video=VideoDiTConfig(
        latent_channels=16,
        in_channels=36,
        out_channels=16,
        num_dual_blocks=4,
        num_single_blocks=4,
        num_heads=4,
        head_dim=32,
        text_dims=(64, 64),
        rope_axes_dims=(8, 12, 12),
    ),
    audio=AudioDiTConfig(
        in_channels=32,
        out_channels=32,
        num_blocks=4,
        num_heads=4,
        head_dim=32,
        caption_dim=64,
        transcript_vocab_size=256,
        transcript_dim=32,
    ),
    fusion=FusionConfig(num_heads=4, head_dim=32),
)
# (config, latent frames, latent height, latent width)
SETUPS = {"tiny": (get_preset("tiny"), 3, 4, 6), "medium": (MEDIUM, 9, 16, 16)}
MODES = {
    "unguided (1 state)": Guidance.unguided(),
    "cfg (2 states)": Guidance(CFG(5.0), CFG(5.0)),
    "ucg, CCL eq. 5 (2)": Guidance(UCG(5.0), UCG(5.0)),
    "multimodal, CCL eq. 2 (3)": Guidance(MultiModalCFG(), MultiModalCFG()),
    "alive_apg, eq. 4-7 (4)": Guidance(),
    "dual_reference, eq. 9 (4, refs masked)": Guidance(DualReferenceCFG(), CFG(5.0)),
}
# One tower (T2V, T2A): the model runs it alone and "indep" collapses onto "mutual" (2 states).
ONE_TOWER = {"t2v alive_apg (2)": "video", "t2a alive_apg (2)": "audio"}


def conditioning(config: JointConfig, lengths: tuple[int, int, int, int], seed: int) -> CaptionConditioning:
    g = torch.Generator().manual_seed(seed)
    v, a = config.video, config.audio
    texts = [torch.randn(1, n, d, generator=g) for n, d in zip(lengths[:2], v.text_dims, strict=True)]
    return CaptionConditioning(
        video_texts=texts,
        video_text_masks=[torch.ones(1, n, dtype=torch.bool) for n in lengths[:2]],
        audio_caption=torch.randn(1, lengths[2], a.caption_dim, generator=g),
        audio_caption_mask=torch.ones(1, lengths[2], dtype=torch.bool),
        transcript_ids=torch.randint(0, a.transcript_vocab_size, (1, lengths[3]), generator=g),
        transcript_mask=torch.ones(1, lengths[3], dtype=torch.bool),
    )


def time_step(velocity: GuidedVelocity, x: tuple, repeats: int) -> float:
    velocity(*x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        velocity(*x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name, (config, t, h, w) in SETUPS.items():
        model = build_model(config, seed=0).eval()
        randomize_zero_inits(model)
        tl = config.timeline
        audio_len = int(tl.num_frames(t) / tl.fps * tl.audio_latent_rate) + 1
        g = torch.Generator().manual_seed(0)
        xv = torch.randn(1, config.video.latent_channels, t, h, w, generator=g)
        xa = torch.randn(1, config.audio.in_channels, audio_len, generator=g)
        x = (xv, xa, torch.full((1,), 0.6), torch.full((1,), 0.6))
        pos = conditioning(config, (24, 32, 32, min(audio_len, 12)), 1)
        neg = conditioning(config, (4, 6, 6, 1), 2)  # shorter: padded inside the batch
        refs = torch.randn(1, 1, config.video.latent_channels, h, w, generator=g)
        tokens = t * (h // 2) * (w // 2)
        print(
            f"\n{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
            f"{tokens} video + {audio_len} audio tokens, batch 1, {args.threads} threads"
        )

        batched = time_step(GuidedVelocity(model, pos, neg, Guidance()), x, args.repeats)
        sequential = time_step(GuidedVelocity(model, pos, neg, Guidance(), batched=False), x, args.repeats)
        print(
            f"  four states: batched {batched * 1e3:8.1f} ms/step  sequential {sequential * 1e3:8.1f} ms/step"
            f"   sequential / batched = {sequential / batched:.2f}x"
        )

        dual = Guidance(DualReferenceCFG(), CFG(5.0))
        masked = time_step(GuidedVelocity(model, pos, neg, dual, references=refs), x, args.repeats)
        apart = time_step(
            GuidedVelocity(model, pos, neg, dual, references=refs, batched=False), x, args.repeats
        )
        print(
            f"  eq. 9 states:  batched {masked * 1e3:8.1f} ms/step  sequential {apart * 1e3:8.1f} ms/step"
            f"   sequential / batched = {apart / masked:.2f}x (no-reference states masked in the batch)"
        )

        base = None
        for mode, guidance in MODES.items():
            refs_ = refs if isinstance(guidance.video, DualReferenceCFG) else None
            v = GuidedVelocity(model, pos, neg, guidance, references=refs_)
            seconds = time_step(v, x, args.repeats)
            base = base or seconds
            print(f"  {mode:38s} {seconds:8.4f} s/step   {seconds / base:5.2f}x unguided")
        for mode, tower in ONE_TOWER.items():
            v = GuidedVelocity(model, pos, neg, Guidance(), towers=(tower,))
            one = (xv if tower == "video" else None, xa if tower == "audio" else None, *x[2:])
            seconds = time_step(v, one, args.repeats)
            print(f"  {mode:38s} {seconds:8.4f} s/step   {seconds / base:5.2f}x unguided (both towers)")


if __name__ == "__main__":
    main()
