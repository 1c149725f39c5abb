"""The refiner learns something true: trained briefly on the synthetic world's high-resolution clips,
its refined clips (``alive_infer.sampling.sample(..., t_start=t0)`` from the degraded, upsampled,
noised clip) are closer to the high-resolution truth than the plain upsample, in PSNR and MSE.

The setup keeps the test to about a minute of CPU: a world of 24x32 clips whose high-resolution
version is 2x (48x64), one frame per clip, the deterministic codec with 2x2 spatial folding (48
channels) and a one-by-one patch, so that a 64-wide DiT can carry a latent token through (a DiT
narrower than its tokens cannot pass the noise it has to remove back out). The refiner's flow,
degradation (1/3 per side, bicubic back up) and validation are the shipped ones."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from alive_train.testing import TINY_MODEL, write_world_data

pytestmark = pytest.mark.slow

# No speech: a one-frame clip has 2 audio latents, too few to align a transcript with.
WORLD = {"height": 24, "width": 32, "max_subjects": 1, "hires_scale": 2, "speaking_prob": 0.0}
VIDEO_CODEC = "deterministic:spatial_stride=2"
CHANNELS = 3 * 4 * 2 * 2


@pytest.fixture(scope="module")
def refined(tmp_path_factory, write_stage_at, run_stage):
    from alive_data.avformat import AVFormat
    from alive_data.world import WorldConfig
    from alive_models.codecs import audio_codec_from_spec, video_codec_from_spec

    root = tmp_path_factory.mktemp("refiner")
    shards = write_world_data(root, clips=32, hires=True, latents=False, world=WorldConfig(**WORLD))
    fmt = AVFormat.from_codecs(24, video_codec_from_spec(VIDEO_CODEC), audio_codec_from_spec("deterministic"))
    model = {
        "preset": "tiny",
        "overrides": {
            "video": {
                "latent_channels": CHANNELS,
                "in_channels": 2 * CHANNELS + 4,
                "out_channels": CHANNELS,
                "num_heads": 2,
                "head_dim": 32,
                "rope_axes_dims": [8, 12, 12],
                "num_dual_blocks": 1,
                "num_single_blocks": 1,
                "patch_size": [1, 1, 1],
            },
            "audio": TINY_MODEL["overrides"]["audio"],
        },
    }
    steps = 160
    path = write_stage_at(
        root / "stage.yaml",
        base="refiner",
        model=model,
        codecs={"video": VIDEO_CODEC, "audio": "deterministic"},
        text={"max_length": 32},  # short caption encodings: the tokens of this test are the pictures
        data={
            "num_workers": 0,
            "volume": None,
            "pipeline": {
                "sources": [{"name": "world_hires", "urls": str(shards)}],
                "format": fmt.to_dict(),
                "filter": {"preset": None, "rules": []},
                "shuffle_buffer": 8,
                "latents": None,
                "buckets": {"batch_size": 4, "resolutions": [[48, 64]], "frames": [1]},
                "tasks": {"i2va_prob": 0.0, "caption_dropout": 0.1, "mutual_dropout": 0.0},
            },
        },
        refiner={"t_start": 0.25, "degrade_factor": 3.0},
        optim={
            "warmup_steps": 0,
            "groups": [
                {
                    "name": "audio_frozen",
                    "pattern": r"^(audio\.|fusion\.(audio_from_video|audio_time_mod)\.)",
                    "lr": None,
                },
                {"name": "video", "pattern": r"^(video\.|fusion\.)", "lr": 3.0e-3},
            ],
        },
        schedule={"max_steps": steps, "epochs": None},
        checkpoint={"every_n_steps": steps, "keep_last": 1},
        trainer={"accelerator": "cpu", "devices": 1, "log_every_n_steps": 40, "progress_bar": False},
        validation={
            "enabled": True,
            "every_n_steps": 10**6,
            "num_clips": 4,
            "steps": 4,
            "frames": 1,
            "world": WORLD,
        },
    )
    return run_stage(path)


def test_refined_clips_are_closer_to_the_high_resolution_truth_than_the_upsample(refined):
    run = refined.run
    metrics = MlflowClient(run.uri).get_run(run.run_id).data.metrics
    figures = {k: metrics[k] for k in metrics if k.startswith(("val/psnr", "val/mse"))}
    print("refiner figures:", json.dumps(figures, indent=1))
    assert metrics["val/psnr_refined"] > metrics["val/psnr_upsampled"] + 0.3, figures
    assert metrics["val/mse_refined"] < metrics["val/mse_upsampled"], figures
    assert metrics["val/psnr_gain"] == pytest.approx(
        metrics["val/psnr_refined"] - metrics["val/psnr_upsampled"]
    )
    # The run trained only the video side: no audio loss was ever counted.
    assert "loss/audio" not in metrics and metrics["loss/video"] > 0
