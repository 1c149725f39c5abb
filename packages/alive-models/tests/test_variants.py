"""The related systems as fusion variants: routes (all kinds), CCL (seed 002) and UniTalking (seed 004)."""

import dataclasses
import json
import math

import pytest
import torch

from alive_models import JointAVDiT, build_model, get_preset
from alive_models.fusion import TASK_ROUTES, ExchangeRoutes, tarp_layout, tarp_windows
from alive_models.fusion.routes import ALL_ON
from alive_models.geometry import unitemp_video_positions
from alive_models.summary import parameter_summary
from alive_models.testing import call_order, random_inputs, randomize_zero_inits

KINDS = ["tiny", "tiny-ccl", "tiny-unitalking"]


def model_and_inputs(preset: str, batch: int = 2, seed: int = 1, **kwargs):
    config = get_preset(preset)
    model = build_model(config, seed=0)
    randomize_zero_inits(model)  # zero-initialised output projections would hide every exchange
    return model, random_inputs(config, batch=batch, generator=torch.Generator().manual_seed(seed), **kwargs)


def perturbed(inputs, stream: str):
    """The same inputs with new latents for ``stream`` in every sample."""
    other = inputs.map(torch.clone)
    setattr(other, stream, getattr(other, stream) + torch.randn_like(getattr(other, stream)))
    return other


# --- TARP (seed 002 §4.1) -------------------------------------------------------------------------


def test_tarp_windows_by_hand_for_50_audio_latents_and_13_frames():
    # c = 50/13 = 3.85 latents per frame; s = 3 * floor(c) = 9. Centres m_i = floor(c/2 + c*i) =
    # floor(50 (2i+1) / 26): 1, 5, 9, 13, 17, 21, 25, 28, 32, 36, 40, 44, 48. A window starts s//2 = 4
    # before its centre, shifted into [0, 50 - 9 = 41] at the ends (frame 0: -3 -> 0, frame 12: 44 -> 41).
    expected = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8],
        [1, 2, 3, 4, 5, 6, 7, 8, 9],
        [5, 6, 7, 8, 9, 10, 11, 12, 13],
        [9, 10, 11, 12, 13, 14, 15, 16, 17],
        [13, 14, 15, 16, 17, 18, 19, 20, 21],
        [17, 18, 19, 20, 21, 22, 23, 24, 25],
        [21, 22, 23, 24, 25, 26, 27, 28, 29],
        [24, 25, 26, 27, 28, 29, 30, 31, 32],
        [28, 29, 30, 31, 32, 33, 34, 35, 36],
        [32, 33, 34, 35, 36, 37, 38, 39, 40],
        [36, 37, 38, 39, 40, 41, 42, 43, 44],
        [40, 41, 42, 43, 44, 45, 46, 47, 48],
        [41, 42, 43, 44, 45, 46, 47, 48, 49],
    ]
    assert tarp_windows(50, 13).tolist() == expected
    # The last frame plays over latents 46..49 (13 * 3.85 = 50): its window holds them. The seed's
    # integer c = 3 in the centre would put it at 3*12 + 1 = 37, window 33..41: 360 ms early.
    assert {46, 47, 48, 49} <= set(expected[12])


def test_tarp_windows_equal_the_seed_formula_for_an_integer_ratio():
    # t_a = 52, t_v = 13: c = 4, m_i = floor(4/2 + 4 i) = 4i + 2, s = 12, start 4i - 4 clamped to [0, 40].
    windows = tarp_windows(52, 13)
    starts = [0, 0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 40]
    assert windows.tolist() == [list(range(a, a + 12)) for a in starts]
    # Frame i's own latents 4i .. 4i+3 are always inside its window.
    assert all(set(range(4 * i, 4 * i + 4)) <= set(w) for i, w in enumerate(windows.tolist()))
    # Short clips: a window never exceeds the audio.
    assert tarp_windows(5, 3).tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert tarp_windows(2, 3).tolist() == [[0, 1]] * 3


def test_video_to_audio_reads_the_nearest_frame_by_hand():
    # s = 1: latent j reads frame floor(13 j / 50). By hand: 0-3 -> 0, 4-7 -> 1, 8-11 -> 2, 12-15 -> 3,
    # 16-19 -> 4, 20-23 -> 5, 24-26 -> 6, 27-30 -> 7, 31-34 -> 8, 35-38 -> 9, 39-42 -> 10,
    # 43-46 -> 11, 47-49 -> 12.
    counts = [4, 4, 4, 4, 4, 4, 3, 4, 4, 4, 4, 4, 3]
    frames = [f for f, n in enumerate(counts) for _ in range(n)]
    layout = tarp_layout(50, 13, window_frames=3)
    assert layout.slots_per_frame == 4
    # Frame f's slots hold exactly its latents; every latent's output comes back from its own slot.
    slots = layout.query_slots.flatten()
    assert slots[layout.slot_of_audio].tolist() == list(range(50))
    assert (layout.slot_of_audio // 4).tolist() == frames


def dense_reference(module, q, k, v, allowed):
    """Attention over all keys + LCT with an explicit [Lq, Lk + n] mask, then the output projection."""
    lk, lv = module.attn.project_kv(module.context_tokens)
    b = q.shape[0]
    keys = torch.cat([k, lk.expand(b, -1, -1, -1)], dim=1)
    values = torch.cat([v, lv.expand(b, -1, -1, -1)], dim=1)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, keys) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), values).flatten(-2)
    return module.attn.to_out(out)


def test_windowed_cross_modal_attention_equals_a_dense_masked_one():
    """The reshapes into (batch * frames) groups compute exactly the masked attention of the seed."""
    model, _ = model_and_inputs("tiny-ccl")
    fusion = model.fusion
    grid, t_a, b = (5, 2, 3), 19, 2  # 19 / 5 = 3.8 latents per frame, windows of 9
    hw, frames = grid[1] * grid[2], grid[0]
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(b, frames * hw, model.config.video.hidden_dim, generator=g)
    audio = torch.randn(b, t_a, model.config.audio.hidden_dim, generator=g)
    ctx = fusion.context(grid, None, ALL_ON, audio)
    windows = tarp_windows(t_a, frames).tolist()
    frame_of = [j * frames // t_a for j in range(t_a)]
    with torch.no_grad():
        module = fusion.video_from_audio[0]
        q, k, v = module.project(clip, audio, ctx.rope_video, ctx.rope_audio)
        allowed = torch.zeros(frames * hw, t_a + module.context_tokens.shape[0], dtype=torch.bool)
        allowed[:, t_a:] = True
        for i, window in enumerate(windows):
            allowed[i * hw : (i + 1) * hw, window] = True
        expected = dense_reference(module, q, k, v, allowed)
        torch.testing.assert_close(module(clip, audio, ctx), expected)

        module = fusion.audio_from_video[0]
        q, k, v = module.project(audio, clip, ctx.rope_audio, ctx.rope_video)
        allowed = torch.zeros(t_a, frames * hw + module.context_tokens.shape[0], dtype=torch.bool)
        allowed[:, frames * hw :] = True
        for j, f in enumerate(frame_of):
            allowed[j, f * hw : (f + 1) * hw] = True
        expected = dense_reference(module, q, k, v, allowed)
        torch.testing.assert_close(module(audio, clip, ctx), expected)


def test_tarp_rope_rescales_audio_onto_the_video_frame_index():
    model, _ = model_and_inputs("tiny-ccl")
    audio = torch.zeros(1, 50, model.config.audio.hidden_dim)
    ctx = model.fusion.context((13, 1, 1), None, ALL_ON, audio)
    positions = torch.arange(50, dtype=torch.float64) * 13 / 50  # j * t_v / t_a
    cos, _ = model.fusion.rope(positions[None, :, None])
    torch.testing.assert_close(ctx.rope_audio[0], cos.float())
    cos, _ = model.fusion.rope(torch.arange(13, dtype=torch.float64)[None, :, None])
    torch.testing.assert_close(ctx.rope_video[0], cos.float())


# --- Routes (all kinds) ----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", KINDS)
def test_routes_off_make_the_streams_independent(preset):
    """t2v / t2a (LCT only for CCL): neither output moves when the other modality's latents do."""
    model, inputs = model_and_inputs(preset)
    inputs.mutual = torch.tensor([False, True])
    out = model(inputs)
    video_moved, audio_moved = (
        model(perturbed(inputs, "audio")).video,
        model(perturbed(inputs, "video")).audio,
    )
    torch.testing.assert_close(video_moved[0], out.video[0], rtol=0, atol=0)
    torch.testing.assert_close(audio_moved[0], out.audio[0], rtol=0, atol=0)
    assert not torch.allclose(video_moved[1], out.video[1]) and not torch.allclose(
        audio_moved[1], out.audio[1]
    )


@pytest.mark.parametrize("preset", KINDS)
@pytest.mark.parametrize("task", ["a2v", "v2a"])
def test_one_way_routes(preset, task):
    """a2v: the video stream reads the audio, the audio stream does not read the video; v2a (and
    UniTalking's TV2A mask) the mirror. Per sample: sample 1 is joint throughout."""
    model, inputs = model_and_inputs(preset)
    routes = ExchangeRoutes.for_tasks([task, "t2va"])
    inputs.video_reads_audio, inputs.audio_reads_video = routes.video_reads_audio, routes.audio_reads_video
    out = model(inputs)
    video_moved, audio_moved = (
        model(perturbed(inputs, "audio")).video,
        model(perturbed(inputs, "video")).audio,
    )
    video_reads = not torch.allclose(video_moved[0], out.video[0])
    audio_reads = not torch.allclose(audio_moved[0], out.audio[0])
    assert (video_reads, audio_reads) == ((True, False) if task == "a2v" else (False, True))
    if not video_reads:
        torch.testing.assert_close(video_moved[0], out.video[0], rtol=0, atol=0)
    if not audio_reads:
        torch.testing.assert_close(audio_moved[0], out.audio[0], rtol=0, atol=0)
    assert not torch.allclose(video_moved[1], out.video[1]) and not torch.allclose(
        audio_moved[1], out.audio[1]
    )


def test_mutual_is_the_shorthand_for_both_routes_and_combines_with_and():
    model, inputs = model_and_inputs("tiny-ccl")
    inputs.mutual = torch.tensor([False, True])
    by_mutual = model(inputs)
    routes = dataclasses.replace(
        inputs,
        mutual=None,
        video_reads_audio=torch.tensor([False, True]),
        audio_reads_video=torch.tensor([False, True]),
    )
    torch.testing.assert_close(model(routes).video, by_mutual.video, rtol=0, atol=0)
    both = dataclasses.replace(routes, mutual=torch.tensor([True, False]))  # AND: sample 1 off too
    off = dataclasses.replace(inputs, mutual=torch.tensor([False, False]))
    torch.testing.assert_close(model(both).audio, model(off).audio, rtol=0, atol=0)
    assert TASK_ROUTES["a2v"].video_reads_audio and not TASK_ROUTES["a2v"].audio_reads_video
    assert not TASK_ROUTES["t2v_t2a"].video_reads_audio and TASK_ROUTES["tr2av"].audio_reads_video


def test_lct_only_is_not_the_identity():
    """CCL's unconditional state attends the context tokens: unlike TA-CrossAttn's "indep", the
    streams still receive the (learned) LCT update, and the LCT get gradients from those samples."""
    model, inputs = model_and_inputs("tiny-ccl")
    inputs.mutual = torch.tensor([False, False])
    out = model(inputs)
    alone = model.video(inputs.video, inputs.t_video, inputs.video_texts)
    assert not torch.allclose(out.video, alone)
    (out.video.square().mean() + out.audio.square().mean()).backward()
    for module in [*model.fusion.video_from_audio, *model.fusion.audio_from_video]:
        assert module.context_tokens.grad.abs().sum() > 0


@pytest.mark.parametrize("preset", ["tiny", "tiny-ccl", "tiny-unitalking"])
def test_clean_stream_enters_the_other_tower_detached(preset):
    """a2v / v2a (seed 002 eq. 7), every fusion: the clean stream conditions the other without being
    trained by it; detaching changes gradients only, never values."""
    model, inputs = model_and_inputs(preset)
    inputs.video.requires_grad_()
    inputs.audio.requires_grad_()
    inputs.audio_clean = torch.tensor([True, False])
    inputs.video_clean = torch.tensor([False, True])
    out = model(inputs)
    (grad_audio,) = torch.autograd.grad(out.video.square().sum(), inputs.audio, retain_graph=True)
    assert grad_audio[0].eq(0).all() and grad_audio[1].abs().sum() > 0
    (grad_video,) = torch.autograd.grad(out.audio.square().sum(), inputs.video)
    assert grad_video[1].eq(0).all() and grad_video[0].abs().sum() > 0
    plain = model(dataclasses.replace(inputs, audio_clean=None, video_clean=None))
    torch.testing.assert_close(out.video, plain.video, rtol=0, atol=0)
    torch.testing.assert_close(out.audio, plain.audio, rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["tiny-ccl", "tiny-unitalking"])
def test_every_fusion_weight_gets_a_gradient_whatever_the_routes(preset):
    """FSDP reduces every parameter of a unit: each must take part in every forward."""
    model, inputs = model_and_inputs(preset)
    inputs.mutual = torch.tensor([False, False])
    out = model(inputs)
    (out.video.square().mean() + out.audio.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("preset", ["tiny-ccl", "tiny-unitalking"])
def test_padded_audio_latents_do_not_matter(preset):
    model, inputs = model_and_inputs(preset, latent_frames=4)  # 14 audio latents
    inputs.audio_mask = torch.ones(2, 14, dtype=torch.bool)
    inputs.audio_mask[0, 10:] = False
    noisy = inputs.map(torch.clone)
    noisy.audio[0, :, 10:] += 5.0
    out, changed = model(inputs), model(noisy)
    torch.testing.assert_close(changed.video, out.video)
    torch.testing.assert_close(changed.audio[0, :, :10], out.audio[0, :, :10])


def test_ccl_places_one_module_after_every_block_of_each_tower():
    model, inputs = model_and_inputs("tiny-ccl")
    order = call_order(model, inputs)
    assert order == [
        *("v0", "a0", "a<-v0", "a1", "a<-v1", "v<-a0"),
        *("v1", "a2", "a<-v2", "v<-a1"),
        *("v2", "v<-a2"),
        *("v3", "v<-a3"),
    ]


# --- UniTalking (seed 004) -------------------------------------------------------------------------


def test_unitalking_anisotropic_rope():
    """Audio tokens: temporal index on the UniTemp timeline (j), one fixed spatial position (the grid
    centre); video tokens: (Phi(i), h, w)."""
    model, _ = model_and_inputs("tiny-unitalking")
    fusion = model.fusion
    grid, length = (3, 2, 4), 10
    (cos_v, _), (cos_a, _) = fusion._ropes(grid, 1, length, torch.device("cpu"), torch.float64)
    t, h, w = fusion.rope.axes_dims
    phi = unitemp_video_positions(3, model.config.timeline)
    expected_v = torch.stack(
        torch.meshgrid(phi, torch.arange(2.0).double(), torch.arange(4.0).double(), indexing="ij"), -1
    )
    torch.testing.assert_close(cos_v[0], fusion.rope(expected_v.reshape(1, -1, 3))[0][0])
    positions = torch.tensor([[j, 0.5, 1.5] for j in range(length)], dtype=torch.float64)
    torch.testing.assert_close(cos_a[0], fusion.rope(positions[None])[0][0])
    assert (cos_a[0, :, t // 2 : (t + h + w) // 2] == cos_a[0, :1, t // 2 : (t + h + w) // 2]).all()


def test_unitalking_joint_attention_weighs_both_modalities_in_one_softmax():
    """Joint attention, not a cross-attention pair: with the video reading audio, the video update of
    a sample changes when only the audio changes, and the video tokens' own keys are in the same
    softmax (routes off: the update is video self-attention, not zero)."""
    model, inputs = model_and_inputs("tiny-unitalking")
    inputs.mutual = torch.tensor([False, False])
    out = model(inputs)
    alone = model.video(inputs.video, inputs.t_video, inputs.video_texts)
    assert not torch.allclose(out.video, alone)  # the joint module still attends the video itself


# --- Reference audio (seed 004 §4.4) --------------------------------------------------------------


def test_reference_audio_changes_the_audio_only_where_given():
    model, inputs = model_and_inputs("tiny-unitalking")
    g = torch.Generator().manual_seed(5)
    inputs.reference_audio = torch.randn(2, 8, 6, generator=g)
    inputs.reference_audio_mask = torch.tensor([[True] * 4 + [False] * 2, [False] * 6])
    out = model(inputs)
    without = model(dataclasses.replace(inputs, reference_audio=None, reference_audio_mask=None))
    assert not torch.allclose(out.audio[0], without.audio[0])  # sample 0 has a reference
    torch.testing.assert_close(out.audio[1], without.audio[1], rtol=0, atol=0)  # sample 1 has none
    other = inputs.map(torch.clone)
    other.reference_audio[0, :, 4:] += 3.0  # its padding
    other.reference_audio[1] += 3.0  # a reference that is masked out entirely
    torch.testing.assert_close(model(other).audio, out.audio, rtol=0, atol=0)
    other.reference_audio[0, :, :4] += 3.0  # the reference itself
    assert not torch.allclose(model(other).audio[0], out.audio[0])
    # Audio-only forwards (the TTS pre-training with timbre reference) take it too.
    audio_only = dataclasses.replace(inputs, video=None)
    assert not torch.allclose(
        model(audio_only).audio[0], model(dataclasses.replace(audio_only, reference_audio=None)).audio[0]
    )


def test_reference_audio_branch_is_a_flag_and_starts_at_zero():
    plain = build_model(get_preset("tiny-ccl"), seed=0)
    config = get_preset("tiny-ccl")
    with_ref = build_model(
        dataclasses.replace(config, audio=dataclasses.replace(config.audio, reference_audio=True)), seed=0
    )
    names = {n for n, _ in plain.named_parameters()}
    added = {n: p for n, p in with_ref.named_parameters() if n not in names}
    assert not any("reference" in n for n in names)  # off: no parameter added
    assert added and all("reference" in n for n in added)
    # Values start at zero: a pretrained audio tower is unchanged by turning the branch on.
    inputs = random_inputs(config, batch=2, generator=torch.Generator().manual_seed(0))
    inputs.reference_audio = torch.randn(2, 8, 5)
    with_ref.load_state_dict(plain.state_dict(), strict=False)
    out = with_ref(inputs)
    torch.testing.assert_close(out.audio, plain(dataclasses.replace(inputs, reference_audio=None)).audio)
    with pytest.raises(ValueError, match=r"reference_audio must be \[B, C, L_ref\]"):
        with_ref(dataclasses.replace(inputs, reference_audio=torch.randn(2, 3, 5)))
    with pytest.raises(ValueError, match="reference_audio_mask"):
        with_ref(dataclasses.replace(inputs, reference_audio_mask=torch.ones(2, 4, dtype=torch.bool)))


# --- alive-14b ------------------------------------------------------------------------------------


def test_both_variants_build_at_alive_14b_on_meta():
    with torch.device("meta"):
        ccl = JointAVDiT(get_preset("alive-14b-ccl"))
        uni = JointAVDiT(get_preset("alive-14b-unitalking"))
    assert len(ccl.fusion.video_from_audio) == 56 and len(ccl.fusion.audio_from_video) == 32
    assert ccl.fusion.video_from_audio[0].context_tokens.shape == (8, 1536)  # n_a in the audio width
    assert ccl.fusion.audio_from_video[0].context_tokens.shape == (128, 3072)  # n_v in the video width
    # Per CCA module at 24 x 64 heads (df = 1536), dv = 3072, da = 1536: LayerNorms 2(dv + da),
    # q dv*df + df, k and v 2(da*df + df), q/k RMSNorm 2*64, out df*dv + dv, plus the LCT.
    df, dv, da = 1536, 3072, 1536
    a_to_v = 2 * (dv + da) + dv * df + df + 2 * (da * df + df) + 128 + df * dv + dv + 8 * da
    v_to_a = 2 * (da + dv) + da * df + df + 2 * (dv * df + df) + 128 + df * da + da + 128 * dv
    summary = parameter_summary(ccl)
    assert summary["parts"]["fusion.video_from_audio"] == 56 * a_to_v
    assert summary["parts"]["fusion.audio_from_video"] == 32 * v_to_a
    summary = parameter_summary(uni)
    dual = 2 * (dv + da) + (4 * dv * df + 3 * df + dv + 128) + (4 * da * df + 3 * df + da + 128)
    single = 2 * (dv + da) + (4 * dv * df + 3 * df + dv + 128) + (2 * da * df + 2 * df + 64)
    assert summary["parts"]["fusion.joint"] == 16 * dual + 40 * single
    assert summary["parts"]["audio.reference_audio"] == 32 * (2 * da * da + 2 * da + 64) + 32 * da + da
    assert 14.4e9 < summary["total"] < 15.0e9


@pytest.mark.parametrize("preset", ["tiny-ccl", "tiny-unitalking"])
def test_variants_save_and_load_with_their_config(tmp_path, preset):
    model, inputs = model_and_inputs(preset)
    model.save_pretrained(tmp_path / "m")
    loaded = JointAVDiT.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and loaded.config.fusion.kind == preset.split("-")[1]
    torch.testing.assert_close(loaded(inputs).audio, model(inputs).audio, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("preset", "fusion_parts"),
    [
        ("alive-14b-ccl", {"fusion.video_from_audio", "fusion.audio_from_video"}),
        ("alive-14b-unitalking", {"fusion.joint"}),
    ],
)
def test_the_summary_command_lists_the_fusion_of_each_variant_at_alive_14b(preset, fusion_parts, capsys):
    from alive_models.cli import main

    assert main(["summary", "--preset", preset, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    fusion = {k: v for k, v in summary["parts"].items() if k.startswith("fusion.")}
    assert set(fusion) == fusion_parts and all(v > 0 for v in fusion.values())
    assert sum(fusion.values()) == summary["fusion"] > 1e9  # every cross-modal weight, on meta
    assert ("audio.reference_audio" in summary["parts"]) == preset.endswith("unitalking")
    assert main(["summary", "--preset", preset]) == 0
    table = capsys.readouterr().out
    assert all(f"  {part.split('.')[1]} " in table for part in fusion_parts)
