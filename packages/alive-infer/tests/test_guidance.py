"""Guidance formulas against direct transcriptions of the papers' equations; batched == separate."""

import dataclasses
import json

import pytest
import torch

from alive_infer.guidance import (
    CFG,
    NI,
    NM,
    PI,
    PM,
    UCG,
    AliveAPG,
    DualReferenceCFG,
    Guidance,
    GuidedVelocity,
    Momentum,
    MultiModalCFG,
    State,
    TowerGuidance,
    apg,
    cfg,
    dual_reference_cfg,
    multimodal_cfg,
    pad_conditionings,
    parse_guidance,
)
from alive_models import JointInputs, build_model, get_preset
from alive_models.testing import randomize_zero_inits
from alive_models.text import CaptionConditioning

SHAPE = (3, 4, 2, 3, 5)  # [B, C, T, H, W]


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def paper_apg(delta, d_cond, eta, r=None, running=None, beta=None):
    """Sadat et al. 2024, Algorithm 1, written per sample with flattened vectors."""
    out, new_running = [], []
    for b in range(delta.shape[0]):
        dv = delta[b].flatten().double()
        if beta is not None:
            dv = dv + (beta * running[b].flatten().double() if running is not None else 0)
            new_running.append(dv.clone())
        if r is not None:
            dv = dv * min(1.0, r / dv.norm().item())
        unit = d_cond[b].flatten().double() / d_cond[b].flatten().double().norm()
        par = (dv @ unit) * unit
        out.append((dv - par + eta * par).view(delta.shape[1:]))
    result = torch.stack(out).float()
    return (result, torch.stack(new_running).view(delta.shape)) if beta is not None else result


def test_cfg_is_the_textbook_formula():
    u, c = rand(*SHAPE, seed=1), rand(*SHAPE, seed=2)
    assert torch.allclose(cfg(u, c, 4.5), u + 4.5 * (c - u))
    assert torch.equal(cfg(u, c, 1.0), c) or torch.allclose(cfg(u, c, 1.0), c)


@pytest.mark.parametrize("r", [None, 3.0])
def test_apg_matches_the_paper(r):
    delta, ref = rand(*SHAPE, seed=3), rand(*SHAPE, seed=4)
    assert torch.allclose(apg(delta, ref, 0.3, r), paper_apg(delta, ref, 0.3, r), atol=1e-6)
    if r is not None:  # the threshold is active for these sizes
        assert (delta.flatten(1).norm(dim=1) > r).all()


def test_apg_eta_one_is_identity_and_eta_zero_removes_the_parallel_part():
    delta, ref = rand(*SHAPE, seed=5), rand(*SHAPE, seed=6)
    assert torch.allclose(apg(delta, ref, 1.0), delta, atol=1e-6)
    orth = apg(delta, ref, 0.0)
    assert torch.allclose((orth * ref).flatten(1).sum(1), torch.zeros(SHAPE[0]), atol=1e-4)


def test_apg_momentum_matches_the_paper_over_steps():
    m = Momentum(beta=-0.5)
    running = None
    for step in range(3):
        delta, ref = rand(*SHAPE, seed=10 + step), rand(*SHAPE, seed=20 + step)
        ours = apg(delta, ref, 0.4, norm_threshold=5.0, momentum=m)
        theirs, running = paper_apg(delta, ref, 0.4, 5.0, running, beta=-0.5)
        assert torch.allclose(ours, theirs, atol=1e-5)


def four_states(seed=30):
    return {s: rand(*SHAPE, seed=seed + i) for i, s in enumerate((PM, PI, NM, NI))}


def test_alive_apg_on_velocities_is_eq_4_to_7_on_x0():
    """Our velocity-space rule == eq. 4-7 written on denoised predictions with the paper's A."""
    v = four_states()
    x, t = rand(*SHAPE, seed=40), torch.tensor([0.9, 0.5, 0.07])
    rule = AliveAPG(w1=2.0, w2=10.0, w3=2.0, eta=0.2)
    ours = rule.combine(v, x, t, {})

    tt = t.view(-1, 1, 1, 1, 1)
    d = {s: x - tt * v[s] for s in v}  # D = x0 prediction
    a = lambda vec: paper_apg(vec, d[PM], 0.2)  # noqa: E731
    delta_total = a(d[PM] - d[NI])  # eq. 4
    delta_text = a(d[PM] - d[NM])  # eq. 5
    delta_mutual = a(d[PM] - d[PI])  # eq. 6
    d_hat = d[NI] + 2.0 * delta_total + 10.0 * delta_text + 2.0 * delta_mutual  # eq. 7
    assert torch.allclose(ours, (x - d_hat) / tt, atol=1e-4, rtol=1e-4)


def test_alive_without_apg_is_the_same_in_eps_x0_and_v():
    """eta = 1, no threshold: eq. 7 is linear, so eps-, x0- and v-space give one velocity."""
    v = four_states(50)
    x, t = rand(*SHAPE, seed=60), torch.tensor([0.8, 0.3, 0.5])
    ours = AliveAPG(3.0, 3.0, 3.0, eta=1.0).combine(v, x, t, {})
    tt = t.view(-1, 1, 1, 1, 1)
    eps = {s: x + (1 - tt) * v[s] for s in v}
    eps_hat = (
        eps[NI] + 3 * (eps[PM] - eps[NI]) + 3 * (eps[PM] - eps[NM]) + 3 * (eps[PM] - eps[PI])
    )  # eq. 4-7 with A = identity, on epsilon as the seed writes it
    assert torch.allclose(ours, (eps_hat - x) / (1 - tt), atol=1e-4)


def test_alive_apg_momentum_and_threshold_carry_across_calls():
    rule = AliveAPG(eta=0.5, norm_threshold=1.0, momentum=-0.5)
    memory = {}
    x, t = rand(*SHAPE, seed=70), torch.full((3,), 0.6)
    first = rule.combine(four_states(80), x, t, memory)
    second = rule.combine(four_states(90), x, t, memory)
    fresh = rule.combine(four_states(90), x, t, {})
    assert set(memory) == {0, 1, 2} and not torch.allclose(second, fresh) and first.shape == x.shape


def test_alive_apg_leaves_a_clean_tower_alone():
    v = four_states()
    out = AliveAPG().combine(v, rand(*SHAPE, seed=1), torch.zeros(3), {})
    assert torch.equal(out, v[PM])


def test_dual_reference_cfg_is_eq_9():
    e00, et0, etr = (rand(*SHAPE, seed=s) for s in (1, 2, 3))
    paper = e00 + 4.0 * (et0 - e00) + 1.5 * (etr - et0)
    assert torch.allclose(dual_reference_cfg(e00, et0, etr, 4.0, 1.5), paper)
    rule = DualReferenceCFG(4.0, 1.5)
    v = dict(zip(rule.states, (e00, et0, etr), strict=True))
    assert torch.allclose(rule.combine(v, e00, torch.ones(3), {}), paper)


def test_multimodal_cfg_is_ccl_eq_2():
    u0, c0, uc = (rand(*SHAPE, seed=s) for s in (4, 5, 6))
    paper = u0 + 5.0 * (c0 - u0) + 2.5 * (uc - u0)
    assert torch.allclose(multimodal_cfg(u0, c0, uc, 5.0, 2.5), paper)
    v = {NI: u0, PI: c0, NM: uc}
    assert torch.allclose(MultiModalCFG(5.0, 2.5).combine(v, u0, torch.ones(3), {}), paper)


def test_ucg_is_ccl_eq_5():
    v = {NI: rand(*SHAPE, seed=7), PM: rand(*SHAPE, seed=8)}
    assert torch.allclose(UCG(4.0).combine(v, v[NI], torch.ones(3), {}), v[NI] + 4.0 * (v[PM] - v[NI]))


def test_defaults_are_the_seed_weights_and_round_trip():
    g = Guidance()
    assert (g.video.w1, g.video.w2, g.video.w3, g.video.eta) == (3.0, 3.0, 3.0, 0.5)
    assert (g.audio.w1, g.audio.w2, g.audio.w3, g.audio.eta) == (2.0, 10.0, 2.0, 0.2)
    assert g.audio.norm_threshold is None and g.audio.momentum is None
    assert len(g.states) == 4
    mixed = Guidance(CFG(6.0), MultiModalCFG(4.0, 2.0))
    assert Guidance.from_dict(mixed.to_dict()) == mixed
    assert set(mixed.states) == {NM, PM, NI, PI}
    with pytest.raises(ValueError, match="unknown guidance kind"):
        Guidance.from_dict({"video": {"kind": "magic"}, "audio": {"kind": "cfg"}})


def test_guidance_from_a_command_line(tmp_path):
    assert parse_guidance("alive") == Guidance()
    assert parse_guidance("none") == Guidance.unguided()
    assert parse_guidance("dual-reference").video == DualReferenceCFG()
    base = Guidance(CFG(2.0), CFG(3.0))
    partial = parse_guidance('{"audio": {"kind": "ucg", "scale": 4.0}}', base)
    assert partial == Guidance(CFG(2.0), UCG(4.0))  # the tower left out keeps the default's rule
    file = tmp_path / "g.json"
    file.write_text(json.dumps(Guidance(MultiModalCFG(4.0, 1.0), AliveAPG(eta=0.1)).to_dict()))
    assert parse_guidance(str(file)) == Guidance(MultiModalCFG(4.0, 1.0), AliveAPG(eta=0.1))
    for text, message in [
        ("magic", "not a preset"),
        ("{oops", "not valid JSON"),
        ("[1]", "not a preset"),
        ('{"sound": {}}', "video.*audio"),
        ('{"video": {"kind": "warp"}}', "unknown guidance kind"),
        ('{"video": {"kind": "cfg", "colour": 1}}', "colour"),
        ('{"video": 3}', "guidance JSON"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_guidance(text)


# ---------------------------------------------------------------------------------------------------
# The batched forward


@pytest.fixture(scope="module")
def tiny():
    model = build_model(get_preset("tiny"), seed=0).eval()
    randomize_zero_inits(model, seed=1)  # open the fusion gates so "mutual" changes the output
    return model


def conditioning(config, batch, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    v, a = config.video, config.audio
    texts = [torch.randn(batch, n, d, generator=g) for n, d in zip(lengths[:2], v.text_dims, strict=True)]
    masks = []
    for n in lengths[:2]:
        m = torch.ones(batch, n, dtype=torch.bool)
        m[0, n - 2 :] = False  # the first sample is shorter: real padding inside the batch
        masks.append(m)
    cap_mask = torch.ones(batch, lengths[2], dtype=torch.bool)
    cap_mask[-1, -1] = False
    return CaptionConditioning(
        video_texts=texts,
        video_text_masks=masks,
        audio_caption=torch.randn(batch, lengths[2], a.caption_dim, generator=g),
        audio_caption_mask=cap_mask,
        transcript_ids=torch.randint(0, a.transcript_vocab_size, (batch, lengths[3]), generator=g),
        transcript_mask=torch.ones(batch, lengths[3], dtype=torch.bool),
    )


def latents(config, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = config.video.latent_channels
    xv = torch.randn(batch, c, 3, 4, 6, generator=g)
    audio_latents = round(config.timeline.audio_latents_for(3))  # the clip's span on the timeline
    xa = torch.randn(batch, config.audio.in_channels, audio_latents, generator=g)
    return xv, xa, torch.full((batch,), 0.7), torch.full((batch,), 0.7)


def direct(model, cond, xv, xa, tv, ta, mutual, **extra):
    """One state through the model with its own, unpadded conditioning."""
    out = model(
        JointInputs(
            video=xv,
            audio=xa,
            t_video=tv,
            t_audio=ta,
            **vars(cond),
            mutual=torch.full((xv.shape[0],), mutual),
            **extra,
        )
    )
    return out.video, out.audio


def test_pad_conditionings_pads_with_masked_zeros():
    cfg_ = get_preset("tiny")
    a, b = conditioning(cfg_, 2, (5, 7, 6, 3), 1), conditioning(cfg_, 2, (8, 4, 9, 1), 2)
    pa, pb = pad_conditionings([a, b])
    assert pa.video_texts[0].shape[1] == pb.video_texts[0].shape[1] == 8
    assert pa.audio_caption.shape[1] == 9 and pb.transcript_ids.shape[1] == 3
    assert not pa.video_text_masks[0][:, 5:].any() and (pa.video_texts[0][:, 5:] == 0).all()
    assert torch.equal(pa.video_texts[0][:, :5], a.video_texts[0])


@torch.no_grad()
def test_four_states_in_one_forward_equal_four_separate_forwards(tiny):
    config = tiny.config
    pos = conditioning(config, 2, (6, 9, 8, 4), seed=1)
    neg = conditioning(config, 2, (3, 2, 5, 1), seed=2)  # shorter: padded inside the batch
    xv, xa, tv, ta = latents(config)
    guidance = Guidance()
    batched = GuidedVelocity(tiny, pos, neg, guidance)
    sequential = GuidedVelocity(tiny, pos, neg, guidance, batched=False)
    pb, ps = batched.predictions(xv, xa, tv, ta), sequential.predictions(xv, xa, tv, ta)
    assert (batched.forwards, sequential.forwards) == (1, 4)
    for s in (PM, PI, NM, NI):
        cond = pos if s.text == "pos" else neg
        ref = direct(tiny, cond, xv, xa, tv, ta, s.mutual)
        for got in (pb[s], ps[s]):
            assert torch.allclose(got[0], ref[0], atol=2e-5) and torch.allclose(got[1], ref[1], atol=2e-5)
    # The states really differ (so the comparison above can fail).
    assert not torch.allclose(pb[PM][0], pb[PI][0], atol=1e-3)
    assert not torch.allclose(pb[PM][1], pb[NM][1], atol=1e-3)
    vb, vs = batched(xv, xa, tv, ta), sequential(xv, xa, tv, ta)
    assert torch.allclose(vb[0], vs[0], atol=1e-4) and torch.allclose(vb[1], vs[1], atol=1e-4)


@torch.no_grad()
def test_reference_states_share_one_forward_and_match_separate_ones(tiny):
    """Eq. 9: the no-reference states ride in the batch with their reference keys masked."""
    config = tiny.config
    pos = conditioning(config, 2, (6, 5, 4, 2), seed=3)
    neg = conditioning(config, 2, (2, 2, 2, 1), seed=4)
    xv, xa, tv, ta = latents(config, seed=5)
    refs = torch.randn(2, 2, config.video.latent_channels, 4, 6)
    guidance = Guidance(DualReferenceCFG(4.0, 2.0), CFG(3.0))
    gv = GuidedVelocity(tiny, pos, neg, guidance, references=refs)
    sequential = GuidedVelocity(tiny, pos, neg, guidance, references=refs, batched=False)
    preds, separate = gv.predictions(xv, xa, tv, ta), sequential.predictions(xv, xa, tv, ta)
    assert (gv.forwards, sequential.forwards) == (1, 4) and len(preds) == 4  # audio CFG adds (neg, ref)
    with_ref = direct(tiny, pos, xv, xa, tv, ta, True, references=refs)
    without = direct(tiny, pos, xv, xa, tv, ta, True)
    neg_without = direct(tiny, neg, xv, xa, tv, ta, True)
    for p in (preds, separate):
        assert torch.allclose(p[State("pos", True, True)][0], with_ref[0], atol=2e-5)
        assert torch.allclose(p[State("pos", True, False)][0], without[0], atol=2e-5)
        assert torch.allclose(p[State("neg", True, False)][0], neg_without[0], atol=2e-5)
    assert not torch.allclose(with_ref[0], without[0], atol=1e-3)


@torch.no_grad()
@pytest.mark.parametrize("tower", ["video", "audio"])
def test_one_tower_runs_alone_and_its_states_collapse(tiny, tower):
    """T2V / T2A: only pos and neg reach the model (mutual has nothing to switch off), the other
    tower is never given, and each rule keeps its meaning (module docstring)."""
    config = tiny.config
    pos = conditioning(config, 2, (6, 9, 8, 4), seed=11)
    neg = conditioning(config, 2, (3, 2, 5, 1), seed=12)
    xv, xa, tv, ta = latents(config, seed=13)
    x = {"video": xv, "audio": xa}
    keep = {k: (v if k == tower else None) for k, v in x.items()}
    index = 0 if tower == "video" else 1

    def alone(cond):
        inputs = JointInputs(
            **keep,
            t_video=tv,
            t_audio=ta,
            **vars(cond),
        )
        out = tiny(inputs)
        assert (out.video is None) == (tower == "audio") and (out.audio is None) == (tower == "video")
        return (out.video, out.audio)[index]

    p, n = alone(pos), alone(neg)
    xt, t = x[tower].float(), (tv, ta)[index]
    rules = {
        "alive": (AliveAPG(3.0, 3.0, 3.0, eta=0.5), AliveAPG(6.0, 0.0, 0.0, eta=0.5)),
        "cfg": (CFG(4.0), CFG(4.0)),
        "ucg": (UCG(4.0), CFG(4.0)),
        "multimodal": (MultiModalCFG(4.0, 2.0), CFG(4.0)),
    }
    for name, (rule, equivalent) in rules.items():
        g = Guidance(**{tower: rule, ("audio" if tower == "video" else "video"): TowerGuidance()})
        gv = GuidedVelocity(tiny, pos, neg, g, towers=(tower,))
        assert gv.states == (NM, PM), name
        out = gv(keep["video"], keep["audio"], tv, ta)
        assert out[1 - index] is None and gv.forwards == 1
        expected = equivalent.combine({PM: p, NM: n, PI: p, NI: n}, xt, t, {})
        assert torch.allclose(out[index], expected, atol=1e-4, rtol=1e-4), name
    assert not torch.allclose(p, n, atol=1e-3)
    with pytest.raises(ValueError, match="was called with"):
        gv(xv, xa, tv, ta)


@torch.no_grad()
def test_unguided_is_one_state_and_equals_the_plain_model(tiny):
    config = tiny.config
    pos = conditioning(config, 2, (4, 4, 4, 2), seed=6)
    xv, xa, tv, ta = latents(config, seed=7)
    gv = GuidedVelocity(tiny, pos, None, Guidance.unguided())
    v = gv(xv, xa, tv, ta)
    ref = direct(tiny, pos, xv, xa, tv, ta, True)
    assert (
        gv.forwards == 1
        and torch.allclose(v[0], ref[0], atol=1e-5)
        and torch.allclose(v[1], ref[1], atol=1e-5)
    )
    with pytest.raises(ValueError, match="negative"):
        GuidedVelocity(tiny, pos, None, Guidance())


def test_rules_declare_their_states():
    assert TowerGuidance().states == (PM,)
    assert set(CFG().states) == {NM, PM}
    assert all(not s.reference for s in DualReferenceCFG().states[:2])
    assert dataclasses.asdict(AliveAPG.audio_default())["w2"] == 10.0


# ---------------------------------------------------------------------------------------------------
# Unconditional Context Guidance on a CCL model (seed 002 §4.3)


@pytest.fixture(scope="module")
def tiny_ccl():
    model = build_model(get_preset("tiny-ccl"), seed=3).eval()
    randomize_zero_inits(model, seed=4)  # open the CCA gates: the routes change the output
    return model


def routed(model, cond, xv, xa, tv, ta, routes_on: bool):
    """One state written as the paper writes it: c_m = both routes on (each stream reads the other's
    latents and its LCT), L^m = both routes off (each CCA module attends only its LCT)."""
    b = xv.shape[0]
    flag = torch.full((b,), routes_on)
    return direct(model, cond, xv, xa, tv, ta, True, video_reads_audio=flag, audio_reads_video=flag)


@torch.no_grad()
def test_ucg_on_a_ccl_model_is_eq_5_and_eq_6_with_the_lct_only_routing(tiny_ccl):
    model, config = tiny_ccl, tiny_ccl.config
    pos = conditioning(config, 2, (6, 5, 7, 3), seed=21)  # c_text
    neg = conditioning(config, 2, (3, 4, 2, 1), seed=22)  # uc_text
    xv, xa, tv, ta = latents(config, seed=23)
    v_uc_L = routed(model, neg, xv, xa, tv, ta, False)  # v(x_t, t | uc_text, L^m)
    v_c_cm = routed(model, pos, xv, xa, tv, ta, True)  # v(x_t, t | c_text, c_m)
    v_c_L = routed(model, pos, xv, xa, tv, ta, False)  # v(x_t, t | c_text, L^m)
    v_uc_cm = routed(model, neg, xv, xa, tv, ta, True)  # v(x_t, t | uc_text, c_m)
    s_m, s_text = 4.0, 3.0
    for tower in (0, 1):  # video, audio
        eq5 = v_uc_L[tower] + s_m * (v_c_cm[tower] - v_uc_L[tower])
        eq6 = v_uc_L[tower] + s_text * (v_c_L[tower] - v_uc_L[tower]) + s_m * (v_uc_cm[tower] - v_uc_L[tower])
        got5 = GuidedVelocity(model, pos, neg, Guidance(UCG(s_m), UCG(s_m)))(xv, xa, tv, ta)[tower]
        six = MultiModalCFG(s_text, s_m)
        got6 = GuidedVelocity(model, pos, neg, Guidance(six, six))(xv, xa, tv, ta)[tower]
        assert torch.allclose(got5, eq5, atol=1e-4, rtol=1e-4), tower
        assert torch.allclose(got6, eq6, atol=1e-4, rtol=1e-4), tower
        # The states differ, so the comparisons can fail: routes matter, and so does the text.
        assert not torch.allclose(v_c_cm[tower], v_c_L[tower], atol=1e-3)
        assert not torch.allclose(v_uc_L[tower], v_c_L[tower], atol=1e-3)
    assert parse_guidance("ucg") == Guidance(UCG(), UCG())
    assert parse_guidance("ucg-decoupled") == Guidance(MultiModalCFG(), MultiModalCFG())


@torch.no_grad()
def test_the_unconditional_cross_modal_state_of_ccl_is_its_context_tokens(tiny_ccl):
    """L^m is not "nothing": with both routes off the output ignores the other stream's latents but
    follows the Learnable Context Tokens."""
    model, config = tiny_ccl, tiny_ccl.config
    neg = conditioning(config, 2, (3, 4, 2, 1), seed=24)
    xv, xa, tv, ta = latents(config, seed=25)
    video, _ = routed(model, neg, xv, xa, tv, ta, False)
    other_audio = routed(model, neg, xv, torch.randn_like(xa), tv, ta, False)
    torch.testing.assert_close(other_audio[0], video)  # video ignores the audio latents
    tokens = [m.context_tokens for m in model.fusion.video_from_audio]
    saved = [t.clone() for t in tokens]
    try:
        for t in tokens:
            t.add_(torch.randn_like(t))
        moved = routed(model, neg, xv, xa, tv, ta, False)
    finally:
        for t, s in zip(tokens, saved, strict=True):
            t.copy_(s)
    assert not torch.allclose(moved[0], video, atol=1e-3)  # the audio LCT reach the video stream
