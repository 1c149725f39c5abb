"""``alive-models``: inspect model configurations and check that a model runs.

alive-models summary --preset alive-14b [--json]   parameter counts per tower and part (meta device)
alive-models smoke [--preset tiny] [--steps 1]     one training step of the joint model on CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from alive_models.config import PRESETS, get_preset
from alive_models.joint import JointAVDiT, build_model
from alive_models.summary import format_summary, parameter_summary


def _summary(args: argparse.Namespace) -> int:
    with torch.device("meta"):
        model = JointAVDiT(get_preset(args.preset))
    summary = parameter_summary(model)
    if args.json:
        print(json.dumps({"preset": args.preset, **summary}, indent=2))
    else:
        print(format_summary(args.preset, summary))
    return 0


def _smoke(args: argparse.Namespace) -> int:
    from alive_models.flops import SequenceLengths, forward_flops
    from alive_models.flow import add_noise, flow_loss, sample_timesteps, velocity_target
    from alive_models.testing import random_inputs

    config = get_preset(args.preset)
    model = build_model(config, seed=args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        clean = random_inputs(config, batch=2, generator=generator, i2v=True, references=1)
        noise_v = torch.randn(clean.video.shape, generator=generator)
        noise_a = torch.randn(clean.audio.shape, generator=generator)
        t = sample_timesteps(2, generator=generator)
        inputs = dataclasses.replace(
            clean,
            video=add_noise(clean.video, noise_v, t),
            audio=add_noise(clean.audio, noise_a, t),
            t_video=t,
            t_audio=t,
            mutual=torch.tensor([True, False]),  # one sample per state of the mutual switch
        )
        start = time.perf_counter()
        out = model(inputs)
        loss = flow_loss(out.video, velocity_target(clean.video, noise_v)) + flow_loss(
            out.audio, velocity_target(clean.audio, noise_a)
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        gflops = forward_flops(config, SequenceLengths.from_inputs(inputs), batch=2) / 1e9
        print(f"step {step}: loss {loss.item():.4f}  {seconds * 1000:.1f} ms  forward {gflops:.3f} GFLOP")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alive-models", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    summary = sub.add_parser("summary", help="parameter counts of a preset, built on the meta device")
    summary.add_argument("--preset", required=True, choices=sorted(PRESETS))
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.set_defaults(func=_summary)
    smoke = sub.add_parser("smoke", help="run training steps of a small preset on CPU")
    smoke.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    smoke.add_argument("--steps", type=int, default=1)
    smoke.add_argument("--seed", type=int, default=0)
    smoke.set_defaults(func=_smoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
