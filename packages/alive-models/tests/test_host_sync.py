"""No host synchronisation in the hot path: the counter finds each kind, the model has none."""

import pytest
import torch

from alive_models import build_model, get_preset
from alive_models.flow import flow_loss
from alive_models.host_sync import HostSyncCounter
from alive_models.testing import random_inputs, randomize_zero_inits

x = torch.tensor([1.0, 0.0, 2.0])
SYNCS = {
    "item": lambda: x.sum().item(),
    "bool": lambda: bool(x.any()),
    "if tensor": lambda: 1 if x.all() else 0,
    "int": lambda: int(x[0]),
    "tolist": lambda: x.tolist(),
    "format": lambda: f"{x.sum():.2f}",
    "nonzero": lambda: x.nonzero(),
    "bool mask index": lambda: x[x > 0],
    "masked_select": lambda: x.masked_select(x > 0),
    "unique": lambda: x.unique(),
    "repeat_interleave with tensor repeats": lambda: torch.repeat_interleave(x, torch.tensor([1, 2, 1])),
    "equal": lambda: torch.equal(x, x),
    "allclose": lambda: torch.allclose(x, x),
}


@pytest.mark.parametrize("name", list(SYNCS))
def test_counter_sees_each_kind_of_sync(name):
    with HostSyncCounter() as syncs:
        SYNCS[name]()
    assert syncs.count >= 1, name
    assert "test_host_sync.py" in syncs.report()  # says where it happened


def test_counter_ignores_device_side_work():
    with HostSyncCounter() as syncs:
        y = torch.where(x > 0, x, -x).cumsum(0) @ x
        torch.repeat_interleave(x, 2)  # int repeats: the output size is known
        torch.repeat_interleave(x, torch.tensor([1, 2, 1]), output_size=4)
        x[torch.tensor([0, 2])]  # integer indices
        y.to(torch.float64)
    assert syncs.count == 0, syncs.report()


@pytest.mark.parametrize("preset", ["tiny", "tiny-ccl", "tiny-unitalking"])
def test_forward_and_backward_have_no_host_syncs(preset):
    """Everything a training step feeds the model: masks, references, I2V, mutual mixed, per-direction
    routes, clean flags, reference audio for some samples, references masked off for one sample
    (every fusion kind)."""
    tiny_config = get_preset(preset)
    tiny_model = build_model(tiny_config, seed=0)
    randomize_zero_inits(tiny_model)
    inputs = random_inputs(tiny_config, batch=3, i2v=True, references=1)
    inputs.mutual = torch.tensor([True, False, True])
    inputs.video_reads_audio = torch.tensor([True, True, False])
    if tiny_config.audio.reference_audio:
        inputs.reference_audio = torch.randn(3, tiny_config.audio.in_channels, 5)
        inputs.reference_audio_mask = torch.tensor([[True] * 5, [False] * 5, [True] * 3 + [False] * 2])
    inputs.audio_clean = torch.tensor([False, False, True])
    inputs.video_clean = torch.tensor([True, False, False])
    inputs.reference_mask = torch.tensor([True, True, False])
    inputs.video_text_masks = [torch.rand(3, inputs.video_texts[0].shape[1]) > 0.3, None]
    inputs.audio_caption_mask = torch.rand(3, inputs.audio_caption.shape[1]) > 0.3
    inputs.transcript_mask = torch.rand(3, inputs.transcript_ids.shape[1]) > 0.3
    inputs.audio_mask = torch.ones(3, inputs.audio.shape[-1], dtype=torch.bool)
    inputs.audio_mask[1, -3:] = False
    for step in range(2):  # cold (tables built) and warm
        with HostSyncCounter() as syncs:
            out = tiny_model(inputs)
            loss = flow_loss(out.video, torch.zeros_like(out.video)) + flow_loss(
                out.audio, torch.zeros_like(out.audio)
            )
            loss.backward()
        assert syncs.count == 0, f"step {step}: {syncs.report()}"
