"""The batch adapter on real pipeline batches (``AVBatch``): the flow equations, seeded noise, I2V
conditioning, clean streams (a2v / v2a), the audio-only stream, the audio key mask, references,
transcript-only captions, cached caption encodings, the pixel path through the codecs, the refiner."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alive_data.batch import AVBatch
from alive_data.loader import ResumableLoader
from alive_data.pipeline import PipelineConfig
from alive_data.stream import AVStream
from alive_models import build_model
from alive_models.codecs import DeterministicAudioCodec, DeterministicVideoCodec
from alive_models.flow import shift_time
from alive_models.fusion import TASK_ROUTES
from alive_models.text import TextConditioner
from alive_train.adapter import BatchAdapter, RefinerFlow, degrade_and_upsample, to_pixels
from alive_train.config import FlowConfig, ModelConfig
from alive_train.module import joint_config
from alive_train.testing import data_format

RESOLUTIONS = [[48, 64], [64, 48], [64, 64]]


def batches(shards, latents: bool = True, text: bool = False, **tasks) -> list[AVBatch]:
    """One epoch of real pipeline batches; pixel batches keep each clip's own size (three buckets)."""
    pipeline = {
        "sources": [{"name": "test", "urls": str(shards)}],
        "shuffle_buffer": 1,
        "format": data_format(),
        "buckets": {"batch_size": 2, "latent_frames": [7], "resolutions": RESOLUTIONS, "frames": [25]},
        "tasks": {"caption_dropout": 0.0, "mutual_dropout": 0.0, **tasks},
    }
    if latents:
        pipeline["latents"] = {"video": "deterministic", "audio": "deterministic"}
    if text:
        pipeline["text_embeddings"] = ["t5", "qwen"]
    return list(ResumableLoader(AVStream(PipelineConfig.from_dict(pipeline)), num_workers=0))


@pytest.fixture(scope="module")
def text(text_models):
    return TextConditioner.from_pretrained(*text_models, dtype=torch.float32)


@pytest.fixture(scope="module")
def config(model_spec):
    return joint_config(ModelConfig(**model_spec))


def adapter(config, text, **kw) -> BatchAdapter:
    return BatchAdapter(
        config, FlowConfig(), text, DeterministicVideoCodec(), DeterministicAudioCodec(), **kw
    )


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_flow_inputs_and_targets_follow_the_equations(shards, config, text):
    batch = batches(shards)[0]
    fb = adapter(config, text)(batch, gen(3), "cpu")
    again = adapter(config, text)(batch, gen(3), "cpu")
    assert torch.equal(fb.inputs.video, again.inputs.video) and torch.equal(
        fb.inputs.audio, again.inputs.audio
    )
    x0_v, x0_a = batch.video_latent, batch.audio_latent
    t = fb.inputs.t_video
    assert torch.equal(t, fb.inputs.t_audio) and ((t > 0) & (t < 1)).all()
    noise_v = fb.target_video + x0_v  # target = eps - x0
    expected = (1 - t.view(-1, 1, 1, 1, 1)) * x0_v + t.view(-1, 1, 1, 1, 1) * noise_v
    torch.testing.assert_close(fb.inputs.video, expected, rtol=1e-5, atol=1e-5)
    noise_a = fb.target_audio + x0_a
    torch.testing.assert_close(fb.inputs.audio, (1 - t.view(-1, 1, 1)) * x0_a + t.view(-1, 1, 1) * noise_a)
    assert abs(noise_v.std().item() - 1) < 0.05 and abs(noise_a.mean().item()) < 0.05
    assert fb.tasks == batch.tasks and fb.inputs.mutual.tolist() == batch.mutual.tolist()
    assert (
        fb.inputs.audio_mask is None and not fb.inputs.video_clean.any() and not fb.inputs.audio_clean.any()
    )
    other = adapter(config, text)(batch, gen(4), "cpu")
    assert not torch.equal(fb.inputs.video, other.inputs.video)
    # B x (7 latent frames x (6/2) x (8/2) video tokens + 27 audio latents)
    assert fb.tokens((1, 2, 2)) == 2 * (7 * 3 * 4 + 27)


def test_times_are_shifted_with_shift_seven(config, text, shards):
    batch = batches(shards)[0]
    shifted = adapter(config, text)(batch, gen(0), "cpu").inputs.t_video
    plain = BatchAdapter(config, FlowConfig(shift=1.0), text)(batch, gen(0), "cpu").inputs.t_video
    # The same u ~ U(0,1), shifted: t = 7u / (1 + 6u) (seed 000 §4.1).
    torch.testing.assert_close(shifted, shift_time(plain, 7.0))
    assert (shifted > plain).all()
    independent = BatchAdapter(config, FlowConfig(shared_time=False), text)(batch, gen(0), "cpu")
    assert not torch.equal(independent.inputs.t_video, independent.inputs.t_audio)


def test_i2v_samples_get_their_first_latent_frame_as_condition(shards, config, text):
    mixed = [b for b in batches(shards, i2va_prob=0.5, i2va_from_epoch=0) if b.i2v.any() and not b.i2v.all()]
    assert mixed, "expected a batch mixing I2VA and T2VA samples"
    batch = mixed[0]
    cond = adapter(config, text)(batch, gen(0), "cpu").inputs.video_condition
    c = config.video.latent_channels
    for i, flag in enumerate(batch.i2v.tolist()):
        if flag:
            torch.testing.assert_close(cond[i, :c, 0], batch.video_latent[i, :, 0])
            assert (
                (cond[i, :c, 1:] == 0).all() and (cond[i, c:, 0] == 1).all() and (cond[i, c:, 1:] == 0).all()
            )
        else:
            assert (cond[i] == 0).all()  # what the VideoDiT feeds a T2V sample anyway


def test_clean_streams_go_in_at_time_zero_with_their_loss_off(shards, config, text):
    batch = batches(shards, probabilities={"a2v": 0.5, "v2a": 0.5})[0]
    batch = dataclasses.replace(batch, tasks=["a2v", "v2a"])
    batch.audio_clean, batch.video_clean = torch.tensor([True, False]), torch.tensor([False, True])
    batch.audio_loss, batch.video_loss = torch.tensor([False, True]), torch.tensor([True, False])
    fb = adapter(config, text)(batch, gen(1), "cpu")
    i = fb.inputs
    assert i.t_audio[0] == 0 and i.t_video[0] > 0 and i.t_video[1] == 0 and i.t_audio[1] > 0
    assert torch.equal(i.audio[0], batch.audio_latent[0]) and torch.equal(i.video[1], batch.video_latent[1])
    assert not torch.equal(i.video[0], batch.video_latent[0])
    assert i.audio_clean.tolist() == [True, False] and i.video_clean.tolist() == [False, True]
    assert fb.audio_loss_mask.tolist() == [False, True] and fb.video_loss_mask.tolist() == [True, False]
    model = build_model(config, seed=0)  # the model takes them (a2v/v2a: detached exchange)
    out = model(i)
    assert out.video.shape == i.video.shape and torch.isfinite(out.audio).all()


def test_the_audio_stream_alone(shards, config, text):
    batch = batches(shards)[0]
    fb = adapter(config, text, streams="audio")(batch, gen(0), "cpu")
    assert fb.inputs.video is None and fb.target_video is None and fb.inputs.references is None
    assert fb.tokens((1, 2, 2)) == 2 * 27
    out = build_model(config, seed=0)(fb.inputs)
    assert out.video is None and out.audio.shape == fb.target_audio.shape


def test_padded_pixel_audio_gets_a_key_mask_in_latents(shards, config, text):
    batch = batches(shards, latents=False)[0]
    n = batch.audio.shape[-1]
    batch.audio_lengths = torch.tensor([n, n - 1000])
    fb = adapter(config, text)(batch, gen(0), "cpu")
    mask = fb.inputs.audio_mask
    valid = -(-(n - 1000) // 640)  # ceil: a latent with any real sample is a key
    assert mask[0].all() and mask[1, :valid].all() and not mask[1, valid:].any()


def test_transcript_only_keeps_speech_tokens_and_drops_the_caption(shards, config, text):
    batch = batches(shards)[0]
    full = adapter(config, text)(batch, gen(0), "cpu")
    tts = adapter(config, text, caption=False)(batch, gen(0), "cpu")
    null = text.null(2)
    assert torch.equal(tts.inputs.audio_caption, null.audio_caption)
    assert all(torch.equal(a, b) for a, b in zip(tts.inputs.video_texts, null.video_texts, strict=True))
    assert torch.equal(tts.inputs.transcript_ids, full.inputs.transcript_ids)
    assert [bool(m.any()) for m in tts.inputs.transcript_mask] == [bool(t) for t in batch.transcripts]


def test_cached_caption_encodings_give_the_online_inputs_and_loss(shards, config, text):
    from alive_models.flow import flow_loss

    model = build_model(config, seed=0)
    online_batch = batches(shards, caption_dropout=0.5)
    cached_batch = batches(shards, text=True, caption_dropout=0.5)
    for a, b in zip(online_batch, cached_batch, strict=True):
        assert a.captions == b.captions and b.text_embeddings is not None
        online_fb = adapter(config, text)(a, gen(0), "cpu")
        transcript_only = BatchAdapter(config, FlowConfig(), None, transcript=text.transcript)
        cached_fb = transcript_only(b, gen(0), "cpu")
        online, cached = online_fb.inputs, cached_fb.inputs
        with torch.no_grad():
            losses = [
                flow_loss(model(fb.inputs).video, fb.target_video)
                + flow_loss(model(fb.inputs).audio, fb.target_audio)
                for fb in (online_fb, cached_fb)
            ]
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=0)  # the same loss
        pairs = zip(
            [*online.video_texts, online.audio_caption],
            [*cached.video_texts, cached.audio_caption],
            strict=True,
        )
        for x, y in pairs:
            torch.testing.assert_close(x, y, atol=2e-3, rtol=1e-2)  # float16 in the shards
        assert torch.equal(online.transcript_ids, cached.transcript_ids) and torch.equal(
            online.video, cached.video
        )
    assert any("" in b.captions for b in cached_batch)  # dropped captions took the cached null encoding


def test_pixel_batches_go_through_the_codecs_like_the_cached_latents(shards, config, text):
    cache = {}
    for b in batches(shards):
        for i, key in enumerate(b.keys):
            cache[key] = (b.video_latent[i], b.audio_latent[i])
    batch = batches(shards, latents=False)[0]
    assert batch.video.dtype == torch.uint8 and batch.video.shape[1] == 25
    latent_batch = dataclasses.replace(
        batch,
        video=None,
        audio=None,
        video_latent=torch.stack([cache[k][0] for k in batch.keys]),
        audio_latent=torch.stack([cache[k][1] for k in batch.keys]),
        audio_lengths=torch.full((2,), 27),
        reference_audio=None,
    )
    a = adapter(config, text)
    from_pixels = a(batch, gen(0), "cpu")
    from_cache = a(latent_batch, gen(0), "cpu")
    # The mp4 is H.264 (lossy) and the cache float16: close, not equal; a wrong layout is far off.
    err_v = (from_pixels.target_video - from_cache.target_video).abs().mean().item()
    err_a = (from_pixels.target_audio - from_cache.target_audio).abs().mean().item()
    assert err_v < 0.03 and err_a < 1e-3, (err_v, err_a)


def test_reference_images_become_latents_at_the_clip_resolution(shards, config, text):
    batch = batches(shards)[0]
    images = torch.randint(0, 256, (2, 3, 48, 64, 3), dtype=torch.uint8)
    batch = dataclasses.replace(batch, references=images, reference_mask=torch.ones(2, 3, dtype=torch.bool))
    a = adapter(config, text)
    refs = a(batch, gen(0), "cpu").inputs.references
    assert refs.shape == (2, 3, 768, 6, 8)
    one = DeterministicVideoCodec().encode(to_pixels(images[1, 2][None, None]))[0, :, 0]
    torch.testing.assert_close(refs[1, 2], one)
    assert a(batch, gen(0), "cpu").inputs.reference_mask is None  # every sample uses them
    mixed = dataclasses.replace(batch, reference_mask=torch.tensor([[True] * 3, [False] * 3]))
    assert a(mixed, gen(0), "cpu").inputs.reference_mask.tolist() == [True, False]  # r2va beside t2va
    padded = dataclasses.replace(
        batch, reference_mask=torch.tensor([[True, True, True], [True, False, False]])
    )
    with pytest.raises(ValueError, match="by_reference_count"):
        a(padded, gen(0), "cpu")


def test_each_task_reads_the_other_stream_along_its_routes(shards, config, text):
    mix = {"t2va": 0.25, "a2v": 0.25, "v2a": 0.25, "t2v_t2a": 0.25}
    seen = set()
    for batch in batches(shards, probabilities=mix, mutual_dropout=0.3):
        i = adapter(config, text)(batch, gen(0), "cpu").inputs
        for k, task in enumerate(batch.tasks):
            route, mutual = TASK_ROUTES[task], bool(batch.mutual[k])
            assert bool(i.video_reads_audio[k]) == (route.video_reads_audio and mutual), task
            assert bool(i.audio_reads_video[k]) == (route.audio_reads_video and mutual), task
            seen.add(task)
    assert {"a2v", "v2a"} <= seen  # the one-way routes were exercised


@pytest.mark.parametrize("latents", [True, False], ids=["cached", "pixels"])
def test_reference_audio_reaches_the_audio_tower(world_shards, config, text, latents):
    """TR2AV (voice cloning): the world's other utterance of the speaker becomes reference-audio
    latents with a key mask, pixels through the codec like the cached latents."""
    pipeline = {
        "sources": [{"name": "world", "urls": str(world_shards)}],
        "shuffle_buffer": 1,
        "format": data_format(),
        "buckets": {"batch_size": 2, "latent_frames": [7], "resolutions": [[48, 64]], "frames": [25]},
        "tasks": {"caption_dropout": 0.0, "mutual_dropout": 0.0, "probabilities": {"tr2av": 1.0}},
        "latents": {"video": "deterministic", "audio": "deterministic"} if latents else None,
    }
    batch = next(iter(ResumableLoader(AVStream(PipelineConfig.from_dict(pipeline)), num_workers=0)))
    assert batch.tasks == ["tr2av", "tr2av"] and bool((batch.reference_audio_lengths > 0).all())
    with pytest.raises(ValueError, match="reference branch"):
        adapter(config, text)(batch, gen(0), "cpu")
    cloning = dataclasses.replace(config, audio=dataclasses.replace(config.audio, reference_audio=True))
    i = adapter(cloning, text)(batch, gen(0), "cpu").inputs
    ref, mask = i.reference_audio, i.reference_audio_mask
    assert ref.shape[:2] == (2, config.audio.in_channels) and mask.shape == (2, ref.shape[-1])
    hop = DeterministicAudioCodec().geometry.hop_length
    lengths = batch.reference_audio_lengths if latents else -(-batch.reference_audio_lengths // hop)
    assert mask.sum(1).tolist() == lengths.tolist()
    if latents:
        assert torch.equal(ref, batch.reference_audio_latent)
    else:
        wave = batch.reference_audio[:1, : batch.reference_audio_lengths[0]]
        one = DeterministicAudioCodec().encode(wave[:, None])[0]
        torch.testing.assert_close(ref[0, :, : one.shape[-1]], one)
    model = build_model(cloning, seed=0)
    for param in model.parameters():  # zero-initialised outputs and reference values made visible
        param.data.normal_(std=0.05)
    with torch.no_grad():
        out = model(i).audio
        silent = model(dataclasses.replace(i, reference_audio_mask=torch.zeros_like(mask))).audio
    assert (out - silent).abs().mean() > 1e-4  # the reference is read


def test_the_refiner_flow(shards, config, text):
    batch = batches(shards, latents=False)[0]
    refiner = RefinerFlow(t_start=0.5, factor=3.0)
    fb = adapter(config, text, refiner=refiner)(batch, gen(5), "cpu")
    codec = DeterministicVideoCodec()
    z = codec.encode(to_pixels(batch.video))
    z_up = codec.encode(degrade_and_upsample(to_pixels(batch.video), 3.0))
    tau = fb.inputs.t_video
    assert ((tau > 0) & (tau < 0.5)).all()
    # x_tau = (1 - tau/t0) z + (tau/t0) y and target = (y - z)/t0, with y = (1 - t0) z_up + t0 eps.
    y = z + 0.5 * fb.target_video
    torch.testing.assert_close(
        fb.inputs.video, z + (tau / 0.5).view(-1, 1, 1, 1, 1) * (y - z), atol=1e-5, rtol=1e-5
    )
    eps = (y - 0.5 * z_up) / 0.5
    assert abs(eps.std().item() - 1) < 0.05 and abs(eps.mean().item()) < 0.05
    assert (fb.inputs.t_audio == 0).all() and fb.inputs.audio_clean.all() and not fb.audio_loss_mask.any()
    assert torch.equal(fb.inputs.audio, a_clean := DeterministicAudioCodec().encode(batch.audio[:, None]))
    assert a_clean.shape[1] == 640
    # The degraded clip lost detail (these clips are smooth gradients: a little): not the identity.
    assert (z_up - z).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="pixel shards"):
        adapter(config, text, refiner=refiner)(batches(shards)[0], gen(0), "cpu")


def test_mismatches_are_clear_errors(shards, config, text):
    with pytest.raises(ValueError, match="video codec gives 192 channels"):
        BatchAdapter(config, FlowConfig(), text, DeterministicVideoCodec(spatial_stride=4))
    with pytest.raises(ValueError, match="latents/s"):
        BatchAdapter(
            config, FlowConfig(), text, None, DeterministicAudioCodec(hop_length=640, sample_rate=32_000)
        )
    batch = batches(shards)[0]
    small = dataclasses.replace(config, audio=dataclasses.replace(config.audio, in_channels=8))
    with pytest.raises(ValueError, match="do not fit the model"):
        BatchAdapter(small, FlowConfig(), text)(batch, gen(0), "cpu")
    with pytest.raises(ValueError, match="no caption encoders"):
        BatchAdapter(config, FlowConfig(), None)(batch, gen(0), "cpu")


def test_every_load_of_the_caption_encoders_encodes_the_same(text_models, text):
    """The <W>/<I> tags added to the Qwen vocabulary get the same embeddings on every load (every
    rank, every resumed run, training and inference): no seeding needed around the load."""
    caption = (
        "Subjects: Subject1: A red circle. Visual: A room. Narration: Subject1 says <W>dog sun</W>. "
        "A <I>knock</I> sounds."
    )
    torch.manual_seed(12345)  # a different global random state than the fixture's load saw
    again = TextConditioner.from_pretrained(*text_models, dtype=torch.float32)
    a, b = text.encode([caption]), again.encode([caption])
    assert all(torch.equal(x, y) for x, y in zip(a.video_texts, b.video_texts, strict=True))
    assert torch.equal(a.audio_caption, b.audio_caption)
