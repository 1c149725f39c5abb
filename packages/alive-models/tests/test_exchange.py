"""The seam between the towers: pairing, per-sample gates and detaching, one-stream forwards, the
inputs that must agree with the timeline, and the copies the exchange makes."""

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from alive_models import build_model, get_preset
from alive_models.config import FusionConfig
from alive_models.fusion import tower_pairing
from alive_models.testing import call_order, random_inputs, randomize_zero_inits


def test_default_pairing_runs_the_audio_tower_beside_the_dual_stream_blocks(tiny_config, tiny_model, inputs):
    # tiny: 2 dual + 2 single video blocks, 3 audio blocks. The audio tower finishes during the dual
    # stage (bidirectional exchange); every single-stream block then reads the finished audio.
    assert call_order(tiny_model, inputs) == [
        *("v0", "a0", "a1", "v<-a0", "a<-v0"),
        *("v1", "a2", "v<-a1", "a<-v1"),
        *("v2", "v<-a2"),
        *("v3", "v<-a3"),
    ]
    # alive-14b: two audio blocks per dual block, then 40 single-stream blocks on audio block 31.
    assert tower_pairing(get_preset("alive-14b")) == tuple(2 * i + 1 for i in range(16)) + (31,) * 40


def test_relative_depth_pairing_is_an_option(tiny_config, inputs):
    config = dataclasses.replace(
        tiny_config, fusion=dataclasses.replace(tiny_config.fusion, pairing="relative_depth")
    )
    order = call_order(build_model(config, seed=0), inputs)
    assert order == [
        *("v0", "a0", "v<-a0", "a<-v0"),
        *("v1", "a1", "v<-a1", "a<-v1"),
        *("v2", "a2", "v<-a2"),
        *("v3", "v<-a3"),
    ]
    assert (
        tower_pairing(
            dataclasses.replace(get_preset("alive-14b"), fusion=FusionConfig(pairing="relative_depth"))
        )[15]
        == 9
    )
    with pytest.raises(ValueError, match="pairing"):
        FusionConfig(pairing="by_name")


def video_output_and_audio_gradient(config):
    model = build_model(config, seed=0)
    randomize_zero_inits(model)
    inputs = random_inputs(config, batch=2, generator=torch.Generator().manual_seed(0))
    inputs.audio.requires_grad_()
    out = model(inputs).video
    (grad,) = torch.autograd.grad(out.square().sum(), inputs.audio, allow_unused=True)
    return out.detach(), torch.zeros_like(inputs.audio) if grad is None else grad


def test_immutable_audio_cuts_the_single_stream_exchanges_from_the_audio_tower(tiny_config):
    def config(immutable: bool, dual: int, single: int):
        return dataclasses.replace(
            tiny_config,
            video=dataclasses.replace(tiny_config.video, num_dual_blocks=dual, num_single_blocks=single),
            fusion=dataclasses.replace(tiny_config.fusion, immutable_audio=immutable),
        )

    # Without dual-stream blocks every exchange is single-stream: the switch decides alone.
    out, grad = video_output_and_audio_gradient(config(False, 0, 3))
    out_immutable, grad_immutable = video_output_and_audio_gradient(config(True, 0, 3))
    assert grad.abs().sum() > 0 and grad_immutable.eq(0).all()
    torch.testing.assert_close(out_immutable, out, rtol=0, atol=0)  # gradients change, values do not
    # The dual-stream exchanges still carry the video loss into the audio tower.
    _, grad_dual = video_output_and_audio_gradient(config(True, 2, 2))
    assert grad_dual.abs().sum() > 0


def test_one_stream_forwards_run_one_tower_through_the_root(tiny_model, inputs):
    randomize_zero_inits(tiny_model)
    audio_only = dataclasses.replace(inputs, video=None, t_video=None, video_texts=None)
    out = tiny_model(audio_only)
    assert out.video is None
    alone = tiny_model.audio(
        inputs.audio, inputs.t_audio, inputs.audio_caption, transcript_ids=inputs.transcript_ids
    )
    torch.testing.assert_close(out.audio, alone)
    out.audio.square().mean().backward()
    assert all(p.grad is None for p in [*tiny_model.video.parameters(), *tiny_model.fusion.parameters()])
    assert all(p.grad is not None for p in tiny_model.audio.parameters())
    tiny_model.zero_grad(set_to_none=True)

    video_only = dataclasses.replace(
        inputs, audio=None, t_audio=None, audio_caption=None, mutual=torch.tensor([True, True])
    )
    out = tiny_model(video_only)
    assert out.audio is None
    torch.testing.assert_close(out.video, tiny_model.video(inputs.video, inputs.t_video, inputs.video_texts))
    out.video.square().mean().backward()
    assert all(p.grad is None for p in [*tiny_model.audio.parameters(), *tiny_model.fusion.parameters()])
    with pytest.raises(ValueError, match="video, audio or both"):
        tiny_model(dataclasses.replace(inputs, video=None, audio=None))
    with pytest.raises(ValueError, match="t_audio"):
        tiny_model(dataclasses.replace(inputs, t_audio=None))


def test_audio_must_span_the_clip_on_the_timeline(tiny_config, tiny_model):
    # 4 video latents = 13 frames at 24 fps = 0.542 s = 13.54 audio latents at 25/s.
    inputs = random_inputs(tiny_config, batch=1, latent_frames=4)
    for length in (13, 14):
        tiny_model(dataclasses.replace(inputs, audio=torch.randn(1, 8, length)))
    for length in (12, 15, 50):
        with pytest.raises(ValueError, match=r"13\.54 audio latents"):
            tiny_model(dataclasses.replace(inputs, audio=torch.randn(1, 8, length)))


def test_padded_audio_latents_do_not_matter(tiny_config, tiny_model):
    randomize_zero_inits(tiny_model)
    inputs = random_inputs(tiny_config, batch=2, latent_frames=4)  # 14 audio latents
    inputs.audio_mask = torch.ones(2, 14, dtype=torch.bool)
    inputs.audio_mask[0, 10:] = False
    noisy = inputs.map(torch.clone)
    noisy.audio[0, :, 10:] += 5.0
    out, changed = tiny_model(inputs), tiny_model(noisy)
    torch.testing.assert_close(changed.video, out.video)  # the exchange's keys skip the padding
    torch.testing.assert_close(changed.audio[0, :, :10], out.audio[0, :, :10])  # so does self-attention
    torch.testing.assert_close(changed.audio[1], out.audio[1])
    unmasked = dataclasses.replace(noisy, audio_mask=None)
    assert not torch.allclose(tiny_model(unmasked).video[0], out.video[0])  # the mask is what does it
    with pytest.raises(ValueError, match="audio mask"):
        tiny_model(dataclasses.replace(inputs, audio_mask=inputs.audio_mask[:, :5]))


class SequenceCopies(TorchDispatchMode):
    """Counts concatenations that produce a whole [B, L >= clip, D] video sequence."""

    def __init__(self, min_length: int, dim: int) -> None:
        super().__init__()
        self.min_length, self.dim, self.count = min_length, dim, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.cat.default and out.dim() == 3:
            self.count += out.shape[1] >= self.min_length and out.shape[2] == self.dim
        return out


@pytest.mark.parametrize("num_blocks", [(2, 2), (3, 5)])
def test_sequence_copies_without_references(tiny_config, num_blocks):
    """Dual-stream exchanges copy no sequence (the clip is the whole video sequence); caption and video
    tokens merge once before the single-stream blocks, which no longer concatenate and split; each
    single-stream exchange writes its clip into the merged sequence once."""
    video = dataclasses.replace(
        tiny_config.video, num_dual_blocks=num_blocks[0], num_single_blocks=num_blocks[1]
    )
    config = dataclasses.replace(tiny_config, video=video)
    model = build_model(config, seed=0)
    inputs = random_inputs(config, batch=1)  # 3 x 2 x 3 = 18 clip tokens
    with torch.no_grad(), SequenceCopies(18, video.hidden_dim) as copies:
        model(inputs)
    assert copies.count == 1 + num_blocks[1]
