import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from alive_models import build_model, get_preset
from alive_models.flops import SequenceLengths, forward_flops
from alive_models.flow import (
    add_noise,
    flow_loss,
    refiner_interpolate,
    refiner_source,
    refiner_velocity_target,
    sample_refiner_timesteps,
    sample_timesteps,
    sampling_schedule,
    shift_time,
    velocity_target,
)
from alive_models.layers.attention import attention_backend
from alive_models.testing import random_inputs


def test_noising_endpoints_and_velocity():
    x0, eps = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    torch.testing.assert_close(add_noise(x0, eps, torch.zeros(3)), x0)
    torch.testing.assert_close(add_noise(x0, eps, torch.ones(3)), eps)
    t = torch.tensor([0.25, 0.5, 0.75])
    xt = add_noise(x0, eps, t)
    # Following the velocity from x_t for the remaining time lands on the noise.
    torch.testing.assert_close(xt + (1 - t)[:, None, None] * velocity_target(x0, eps), eps)


def test_time_shift_values():
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(shift_time(t, 7.0), torch.tensor([0.0, 7 * 0.5 / (1 + 6 * 0.5), 1.0]))
    assert shift_time(torch.tensor(0.1), 7.0) > 0.1
    schedule = sampling_schedule(10)
    assert schedule[0] == 1 and schedule[-1] == 0 and (schedule.diff() < 0).all()


def test_refiner_flow_endpoints_noise_level_and_base_limit():
    z, z_up, eps = torch.randn(3, 4, 5), torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    t0 = 0.6
    y = refiner_source(z_up, eps, t0)
    torch.testing.assert_close(refiner_interpolate(z, y, torch.full((3,), t0), t0), y)
    torch.testing.assert_close(refiner_interpolate(z, y, torch.zeros(3), t0), z)
    tau = torch.tensor([0.1, 0.3, 0.5])
    x = refiner_interpolate(z, y, tau, t0)
    # The noise part of x_tau is tau * eps: the base model's noise level at the same time.
    x_without_noise = refiner_interpolate(z, refiner_source(z_up, torch.zeros_like(eps), t0), tau, t0)
    torch.testing.assert_close(x - x_without_noise, tau[:, None, None] * eps)
    # Following the target velocity from x_tau down to 0 lands on the clean latent.
    torch.testing.assert_close(x - tau[:, None, None] * refiner_velocity_target(z, y, t0), z)
    # t0 = 1 is the base flow.
    one = refiner_source(z_up, eps, 1.0)
    torch.testing.assert_close(refiner_interpolate(z, one, tau, 1.0), add_noise(z, eps, tau))
    torch.testing.assert_close(refiner_velocity_target(z, one, 1.0), velocity_target(z, eps))
    schedule = sampling_schedule(8, t_start=t0)
    assert schedule[0] == pytest.approx(t0) and schedule[-1] == 0
    taus = sample_refiner_timesteps(500, t0, generator=torch.Generator().manual_seed(0))
    assert taus.min() > 0 and taus.max() <= t0
    with pytest.raises(ValueError, match="start time"):
        refiner_source(z_up, eps, 0.0)


def test_timestep_sampling_is_seeded_and_shifted():
    a = sample_timesteps(1000, generator=torch.Generator().manual_seed(0))
    b = sample_timesteps(1000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert ((a > 0) & (a < 1)).all()
    assert a.median() > 0.8  # s=7 puts the median at 7*0.5/(1+3) = 0.875
    with pytest.raises(ValueError):
        sample_timesteps(2, distribution="beta")


def test_flow_loss_sample_mask():
    pred, target = torch.zeros(3, 2), torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    assert flow_loss(pred, target).item() == pytest.approx((1 + 4 + 9) / 3)
    assert flow_loss(pred, target, torch.tensor([True, False, True])).item() == pytest.approx(5.0)
    p = torch.zeros(3, 2, requires_grad=True)
    loss = flow_loss(p, target, torch.zeros(3))
    loss.backward()
    assert loss.item() == 0 and p.grad is not None


@pytest.mark.parametrize("preset", ["tiny", "tiny-ccl", "tiny-unitalking"])
@pytest.mark.parametrize("streams", ["mutual", "indep", "a2v and v2a", "audio only", "video only"])
def test_flops_formula_matches_torch_flop_counter(preset, streams):
    tiny_config = get_preset(preset)
    tiny_model = build_model(tiny_config, seed=0)
    inputs = random_inputs(tiny_config, batch=2, i2v=True, references=2, latent_frames=5)
    inputs.mutual = torch.tensor([streams == "mutual"] * 2)
    if streams == "a2v and v2a":
        inputs.mutual = None
        inputs.video_reads_audio, inputs.audio_reads_video = (
            torch.tensor([True, False]),
            torch.tensor([False, True]),
        )
    if tiny_config.audio.reference_audio:  # voice cloning: one sample with a reference, one without
        inputs.reference_audio = torch.randn(2, tiny_config.audio.in_channels, 6)
        inputs.reference_audio_mask = torch.tensor([[True] * 6, [False] * 6])
    if streams == "audio only":
        inputs = dataclasses.replace(inputs, video=None)
    if streams == "video only":
        inputs = dataclasses.replace(inputs, audio=None)
    # The reference backend runs attention as einsums, which the counter sees.
    with attention_backend("reference"), FlopCounterMode(display=False) as counter:
        tiny_model(inputs)
    # "indep" samples cost the same as "mutual" ones: the exchange runs and is gated per sample. CCL's
    # context-token projections are paid once per forward, not per sample (batch 2 checks it).
    assert (
        forward_flops(tiny_config, SequenceLengths.from_inputs(inputs), batch=2) == counter.get_total_flops()
    )


def test_flops_of_alive_14b_at_480p_5s():
    # 121 frames at 480x832 -> 31 x 60 x 104 latents; 5 s of audio at 25 latents/s.
    lengths = SequenceLengths((31, 60, 104), audio_length=125, text_lengths=(256, 256), caption_length=256)
    flops = forward_flops(get_preset("alive-14b"), lengths)
    # ~2 * params * tokens for the linears (~11e9 * 2 * 48k = 1.1e15) plus attention over 48k tokens.
    assert 1e15 < flops < 1e16
    # CCL: windowed attention, but a video -> audio module after each of the 32 audio blocks (80.9 vs
    # 68.5 TFLOP of fusion at 5 s); UniTalking's joint attention over [clip; audio] (48k + 125 tokens,
    # 56 modules) is quadratic in the clip: 0.91 PFLOP of fusion.
    ccl, uni = (forward_flops(get_preset(f"alive-14b-{k}"), lengths) for k in ("ccl", "unitalking"))
    assert flops * 0.95 < ccl < flops * 1.05 and uni > flops * 1.2


def test_ccl_fusion_flops_grow_linearly_with_the_clip():
    from alive_models.flops import fusion_flops

    config = get_preset("alive-14b-ccl")

    def fusion_at(latent_frames: int) -> int:
        audio = round(config.timeline.audio_latents_for(latent_frames))
        per_sample, _ = fusion_flops(
            config,
            SequenceLengths((latent_frames, 60, 104), audio, text_lengths=(256, 256), caption_length=256),
        )
        return per_sample

    # 61 vs 121 latent frames (10 s vs 20 s): twice the clip, twice the fusion FLOPs (within 1%).
    assert fusion_at(121) / fusion_at(61) == pytest.approx(121 / 61, rel=0.01)
