"""Run by test_checkpoint.py under torchrun (2 processes, gloo): a tiny model sharded with training's
plan (activation checkpointing + FSDP2, fp32), exported with ``save_pipeline`` from every rank, as
``alive-train export`` does from a sharded run."""

import argparse
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from alive_infer.checkpoint import PipelineSpec, RefinerSpec, save_pipeline
from alive_infer.testing import TINY_AUDIO_CODEC, TINY_VIDEO_CODEC, fitted_config
from alive_models import JointAVDiT, get_preset, materialize
from alive_models.codecs import audio_codec_from_spec, video_codec_from_spec
from alive_models.parallel import ParallelPlan, parallelize_joint


def tiny_config():
    video, audio = video_codec_from_spec(TINY_VIDEO_CODEC), audio_codec_from_spec(TINY_AUDIO_CODEC)
    return fitted_config(get_preset("tiny"), video, audio, 24.0, transcript_vocab_size=64)


def spec() -> PipelineSpec:
    return PipelineSpec(TINY_VIDEO_CODEC, TINY_AUDIO_CODEC, 24.0, refiner=RefinerSpec(resolution=(64, 64)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    plan = ParallelPlan(param_dtype=None, reduce_dtype=None)  # training's plan (AC + FSDP2), fp32
    models = []
    for seed in (0, 1):  # the base model and its refiner
        with torch.device("meta"):
            model = JointAVDiT(tiny_config())
        parallelize_joint(model, mesh, plan)
        materialize(model, "cpu", seed=seed)  # equals an unsharded init from the seed, bitwise
        models.append(model)
    save_pipeline(args.out, models[0], spec(), refiner=models[1])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
