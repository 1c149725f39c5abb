import dataclasses
import json

import pytest
import torch

from alive_models import JointAVDiT, JointConfig, build_model, get_preset, i2v_condition
from alive_models.config import FusionConfig
from alive_models.fusion import relative_depth_pairing
from alive_models.joint import reset_all
from alive_models.summary import parameter_summary
from alive_models.testing import random_inputs, randomize_zero_inits


def test_forward_backward_all_conditions(tiny_config, tiny_model):
    randomize_zero_inits(tiny_model)  # at init only the zero-initialised heads get gradients
    g = torch.Generator().manual_seed(0)
    for mutual in (True, False):
        inputs = random_inputs(tiny_config, batch=2, i2v=True, references=2, generator=g)
        inputs.mutual = torch.tensor([mutual, mutual])
        out = tiny_model(inputs)
        assert out.video.shape == inputs.video.shape
        assert out.audio.shape == inputs.audio.shape
        (out.video.square().mean() + out.audio.square().mean()).backward()
        for tower in (tiny_model.video, tiny_model.audio):
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tower.parameters())
        fusion_grads = [p.grad for p in tiny_model.fusion.parameters()]
        # Every exchange module runs whatever ``mutual`` says (FSDP needs the same modules on every
        # rank), so every fusion weight has a gradient; for "indep" samples it is exactly zero.
        assert all(g is not None for g in fusion_grads)
        if mutual:
            assert all(g.abs().sum() > 0 for g in fusion_grads)
        else:
            assert all(g.eq(0).all() for g in fusion_grads)
        tiny_model.zero_grad(set_to_none=True)


def test_indep_samples_equal_standalone_towers(tiny_config, tiny_model, inputs):
    randomize_zero_inits(tiny_model)
    inputs.mutual = torch.tensor([False, True])
    out = tiny_model(inputs)
    alone_v = tiny_model.video(inputs.video, inputs.t_video, inputs.video_texts)
    alone_a = tiny_model.audio(
        inputs.audio, inputs.t_audio, inputs.audio_caption, transcript_ids=inputs.transcript_ids
    )
    torch.testing.assert_close(out.video[0], alone_v[0])
    torch.testing.assert_close(out.audio[0], alone_a[0])
    # The mutual sample did receive the other modality.
    assert not torch.allclose(out.video[1], alone_v[1])
    assert not torch.allclose(out.audio[1], alone_a[1])


def test_mutual_switch_isolates_modalities_per_sample(tiny_model, inputs):
    randomize_zero_inits(tiny_model)
    inputs.mutual = torch.tensor([False, True])
    out = tiny_model(inputs)
    other = inputs.map(lambda x: x.clone())
    other.audio = other.audio + torch.randn_like(other.audio)  # change the audio of both samples
    changed = tiny_model(other)
    torch.testing.assert_close(changed.video[0], out.video[0])  # indep video does not see audio
    assert not torch.allclose(changed.video[1], out.video[1])  # mutual video does


def test_zero_init_fusion_leaves_towers_unchanged(tiny_model, inputs):
    out_on = tiny_model(inputs)
    inputs.mutual = torch.tensor([False, False])
    out_off = tiny_model(inputs)
    torch.testing.assert_close(out_on.video, out_off.video)
    torch.testing.assert_close(out_on.audio, out_off.audio)


def test_i2v_condition_and_references_change_the_prediction(tiny_config, tiny_model):
    randomize_zero_inits(tiny_model)
    g = torch.Generator().manual_seed(3)
    base = random_inputs(tiny_config, batch=1, references=2, i2v=True, generator=g)
    out = tiny_model(base)
    no_ref = dataclasses.replace(base, references=None)
    assert not torch.allclose(tiny_model(no_ref).video, out.video)
    no_cond = dataclasses.replace(base, video_condition=None)
    assert not torch.allclose(tiny_model(no_cond).video, out.video)

    cond = i2v_condition(torch.ones(1, 4, 1, 2, 2), num_latent_frames=3)
    assert cond.shape == (1, 8, 3, 2, 2)
    assert cond[:, :4, 0].eq(1).all() and cond[:, :4, 1:].eq(0).all()
    assert cond[:, 4:, 0].eq(1).all() and cond[:, 4:, 1:].eq(0).all()


def test_reference_mask_makes_a_sample_equal_the_forward_without_references(tiny_config, tiny_model):
    """Eq. 9's no-reference states share the batch: masked samples match a reference-free forward."""
    randomize_zero_inits(tiny_model)
    g = torch.Generator().manual_seed(4)
    inputs = random_inputs(tiny_config, batch=3, references=2, i2v=True, generator=g)
    inputs.mutual = torch.tensor([True, False, True])
    inputs.reference_mask = torch.tensor([False, True, False])
    out = tiny_model(inputs)
    with_refs = tiny_model(dataclasses.replace(inputs, reference_mask=None))
    without = tiny_model(dataclasses.replace(inputs, references=None, reference_mask=None))
    for i, kept in enumerate(inputs.reference_mask.tolist()):
        expected = with_refs if kept else without
        torch.testing.assert_close(out.video[i], expected.video[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.audio[i], expected.audio[i], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(with_refs.video[0], without.video[0])  # the references do matter
    with pytest.raises(ValueError, match="reference_mask must be a"):
        tiny_model(dataclasses.replace(inputs, reference_mask=torch.ones(2, dtype=torch.bool)))


def test_reference_tokens_sit_at_negative_temporal_offsets(tiny_config, tiny_model):
    inputs = random_inputs(tiny_config, batch=1, references=2)
    state = tiny_model.video.embed(
        inputs.video, inputs.t_video, inputs.video_texts, references=inputs.references
    )
    phi = tiny_config.video.ref_temporal_offset
    per_ref = 2 * 3  # (4 / 2) * (6 / 2) tokens per reference image
    assert state.n_ref == 2 * per_ref
    # Reconstruct the t-axis angles: cos of the first t frequency is cos(position * 1).
    txt = state.txt.shape[1]
    cos_t = state.rope[0][0, :, 0]
    torch.testing.assert_close(cos_t[:txt], torch.ones(txt))
    torch.testing.assert_close(
        cos_t[txt : txt + per_ref], torch.full((per_ref,), float(torch.cos(torch.tensor(-phi))))
    )
    torch.testing.assert_close(
        cos_t[txt + per_ref : txt + 2 * per_ref],
        torch.full((per_ref,), float(torch.cos(torch.tensor(-2 * phi)))),
    )


def test_padded_caption_tokens_do_not_matter(tiny_model, inputs):
    randomize_zero_inits(tiny_model)
    mask = torch.ones(2, inputs.video_texts[0].shape[1], dtype=torch.bool)
    mask[:, 3:] = False
    inputs.video_text_masks = [mask, None]
    inputs.audio_caption_mask = torch.ones(2, inputs.audio_caption.shape[1], dtype=torch.bool)
    inputs.audio_caption_mask[:, 4:] = False
    out = tiny_model(inputs)
    noisy = inputs.map(lambda x: x.clone())
    noisy.video_texts[0][:, 3:] += 5.0
    noisy.audio_caption[:, 4:] -= 5.0
    changed = tiny_model(noisy)
    torch.testing.assert_close(changed.video, out.video)
    torch.testing.assert_close(changed.audio, out.audio)


def test_transcript_alignment_and_errors(tiny_model):
    audio = tiny_model.audio
    filler = audio.config.transcript_vocab_size
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()
    aligned = audio.align_transcript(ids, mask, 5)
    assert aligned.tolist() == [[5, 6, 7, filler, filler], [8, 9, filler, filler, filler]]
    with pytest.raises(ValueError, match="more tokens"):
        audio.align_transcript(torch.ones(1, 6, dtype=torch.long), None, 5)


def test_bad_inputs_get_clear_errors(tiny_config, tiny_model, inputs):
    with pytest.raises(ValueError, match="channels"):
        tiny_model(dataclasses.replace(inputs, video=torch.randn(2, 5, 3, 4, 6)))
    with pytest.raises(ValueError, match="caption encodings"):
        tiny_model(dataclasses.replace(inputs, video_texts=inputs.video_texts[:1]))
    with pytest.raises(ValueError, match="mutual"):
        tiny_model(dataclasses.replace(inputs, mutual=torch.tensor([True])))
    bad = dataclasses.replace(
        tiny_config, fusion=FusionConfig(num_heads=2, head_dim=16, pairing=(0, 2, 1, 2))
    )
    with pytest.raises(ValueError, match="pairing"):
        JointAVDiT(bad)
    with pytest.raises(ValueError, match="unknown fusion kind"):
        FusionConfig(kind="gated")
    with pytest.raises(ValueError, match="video_reads_audio"):
        tiny_model(dataclasses.replace(inputs, video_reads_audio=torch.tensor([1, 0])))
    with pytest.raises(ValueError, match="no reference branch"):
        tiny_model(dataclasses.replace(inputs, reference_audio=torch.randn(2, 8, 5)))


def test_relative_depth_pairing():
    pairing = relative_depth_pairing(56, 32)
    assert len(pairing) == 56 and pairing[0] == 0 and pairing[-1] == 31
    assert list(pairing) == sorted(pairing)
    # After the 16th (last dual) video block, ceil(16 * 32 / 56) = ceil(9.14) = 10 audio blocks have run.
    assert pairing[15] == 9
    assert relative_depth_pairing(4, 3) == (0, 1, 2, 2)


def test_meta_build_materialises_like_a_cpu_build(tiny_config):
    torch.manual_seed(0)
    cpu = JointAVDiT(tiny_config)
    torch.manual_seed(7)
    reset_all(cpu)
    meta = build_model(tiny_config, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    from alive_models import materialize

    materialize(meta, "cpu", seed=7)
    for (name, a), (_, b) in zip(cpu.state_dict().items(), meta.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_every_tensor_owner_has_reset_parameters(tiny_model):
    reset_all(tiny_model)  # raises TypeError naming any tensor owner without reset_parameters


def test_config_round_trips_through_json(tiny_config):
    data = json.loads(json.dumps(tiny_config.to_dict()))
    assert JointConfig.from_dict(data) == tiny_config
    with pytest.raises(ValueError, match="unknown VideoDiTConfig"):
        JointConfig.from_dict({"video": {"heads": 3}})


def test_alive_14b_matches_table_1():
    config = get_preset("alive-14b")
    v, a = config.video, config.audio
    assert (
        v.num_dual_blocks,
        v.num_single_blocks,
        v.in_channels,
        v.out_channels,
        v.num_heads,
        v.head_dim,
    ) == (16, 40, 36, 16, 24, 128)
    assert (a.num_blocks, a.in_channels, a.out_channels, a.num_heads, a.head_dim) == (32, 32, 32, 24, 64)
    with torch.device("meta"):
        summary = parameter_summary(JointAVDiT(config))
    assert 11.0e9 < summary["video"] < 12.5e9
    assert 1.8e9 < summary["audio"] < 2.3e9
    assert summary["total"] == summary["video"] + summary["audio"] + summary["fusion"]
    assert sum(summary["parts"].values()) == summary["total"]
