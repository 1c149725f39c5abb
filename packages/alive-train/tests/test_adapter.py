"""The batch adapter on real pipeline batches: the flow equations, seeded noise, I2V conditioning,
transcript-only captions and the pixel path through the codecs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alive_data.pipeline import AVStream, PipelineConfig, ResumableLoader
from alive_models.codecs import DeterministicAudioCodec, DeterministicVideoCodec
from alive_models.flow import shift_time
from alive_models.text import TextConditioner
from alive_train.adapter import BatchAdapter
from alive_train.config import FlowConfig, ModelConfig
from alive_train.module import joint_config


def batches(shards, latents: bool = True, **tasks) -> list[dict]:
    """One epoch of real pipeline batches; pixel batches keep each clip's own size (three buckets)."""
    pipeline = {
        "sources": [{"name": "test", "urls": str(shards)}],
        "shuffle_buffer": 1,
        "buckets": {
            "batch_size": 2,
            "latent_frames": [7],
            "resolutions": [[48, 64], [64, 48], [64, 64]],
            "frames": [25],
        },
        "tasks": {"caption_dropout": 0.0, "mutual_dropout": 0.0, **tasks},
    }
    if latents:
        pipeline["latents"] = {"video": "deterministic", "audio": "deterministic"}
    return list(ResumableLoader(AVStream(PipelineConfig.from_dict(pipeline)), num_workers=0))


@pytest.fixture(scope="module")
def text(text_models):
    torch.manual_seed(0)
    return TextConditioner.from_pretrained(*text_models, dtype=torch.float32)


@pytest.fixture(scope="module")
def config(model_spec):
    return joint_config(ModelConfig(**model_spec))


def adapter(config, text, **kw) -> BatchAdapter:
    return BatchAdapter(
        config, FlowConfig(), text, DeterministicVideoCodec(), DeterministicAudioCodec(), **kw
    )


def test_flow_inputs_and_targets_follow_the_equations(shards, config, text):
    batch = batches(shards)[0]
    fb = adapter(config, text)(batch, torch.Generator().manual_seed(3), "cpu")
    again = adapter(config, text)(batch, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(fb.inputs.video, again.inputs.video) and torch.equal(
        fb.inputs.t_audio, again.inputs.t_audio
    )
    x0_v, x0_a = batch["video_latent"].float(), batch["audio_latent"].float()
    t = fb.inputs.t_video
    assert torch.equal(t, fb.inputs.t_audio) and ((t > 0) & (t < 1)).all()
    noise_v = fb.target_video + x0_v  # target = eps - x0
    expected = (1 - t.view(-1, 1, 1, 1, 1)) * x0_v + t.view(-1, 1, 1, 1, 1) * noise_v
    torch.testing.assert_close(fb.inputs.video, expected, rtol=1e-5, atol=1e-5)
    noise_a = fb.target_audio + x0_a
    torch.testing.assert_close(fb.inputs.audio, (1 - t.view(-1, 1, 1)) * x0_a + t.view(-1, 1, 1) * noise_a)
    assert abs(noise_v.std().item() - 1) < 0.05 and abs(noise_a.mean().item()) < 0.05
    assert fb.tasks == batch["tasks"] and fb.inputs.mutual.tolist() == batch["mutual"].tolist()
    other = adapter(config, text)(batch, torch.Generator().manual_seed(4), "cpu")
    assert not torch.equal(fb.inputs.video, other.inputs.video)
    # B x (7 latent frames x (6/2) x (8/2) video tokens + 27 audio latents)
    assert fb.tokens((1, 2, 2)) == 2 * (7 * 3 * 4 + 27)


def test_times_are_shifted_with_shift_seven(config, text, shards):
    batch = batches(shards)[0]
    big = {**batch}
    a = adapter(config, text)
    gen = torch.Generator().manual_seed(0)
    t = torch.cat([a(big, gen, "cpu").inputs.t_video for _ in range(600)])
    # u ~ U(0,1) shifted: the median of t is shift(0.5) = 7 * 0.5 / (1 + 6 * 0.5) = 0.875.
    assert abs(t.median().item() - shift_time(torch.tensor(0.5), 7.0).item()) < 0.03
    independent = BatchAdapter(config, FlowConfig(shared_time=False), text)(batch, gen, "cpu")
    assert not torch.equal(independent.inputs.t_video, independent.inputs.t_audio)


def test_i2v_samples_get_their_first_latent_frame_as_condition(shards, config, text):
    i2v = [
        b for b in batches(shards, i2va_prob=0.5, i2va_from_epoch=0) if b["i2v"].any() and not b["i2v"].all()
    ]
    assert i2v, "expected a batch mixing I2VA and T2VA samples"
    batch = i2v[0]
    fb = adapter(config, text)(batch, torch.Generator().manual_seed(0), "cpu")
    cond = fb.inputs.video_condition
    c = config.video.latent_channels
    for i, flag in enumerate(batch["i2v"].tolist()):
        if flag:
            torch.testing.assert_close(cond[i, :c, 0], batch["video_latent"][i, :, 0].float())
            assert (
                (cond[i, :c, 1:] == 0).all() and (cond[i, c:, 0] == 1).all() and (cond[i, c:, 1:] == 0).all()
            )
        else:
            assert (cond[i] == 0).all()


def test_transcript_only_keeps_speech_tokens_and_drops_the_caption(shards, config, text):
    batch = batches(shards)[0]
    full = adapter(config, text)(batch, torch.Generator().manual_seed(0), "cpu")
    tts = adapter(config, text, caption=False)(batch, torch.Generator().manual_seed(0), "cpu")
    null = text.null(2)
    assert torch.equal(tts.inputs.audio_caption, null.audio_caption)
    assert all(torch.equal(a, b) for a, b in zip(tts.inputs.video_texts, null.video_texts, strict=True))
    assert torch.equal(tts.inputs.transcript_ids, full.inputs.transcript_ids)
    speaking = ["<W>" in c for c in batch["captions"]]
    assert [bool(m.any()) for m in tts.inputs.transcript_mask] == speaking


def test_pixel_batches_go_through_the_codecs_like_the_cached_latents(shards, config, text):
    cache = {}
    for b in batches(shards):
        for i, key in enumerate(b["keys"]):
            cache[key] = (b["video_latent"][i], b["audio_latent"][i])
    batch = batches(shards, latents=False)[0]
    assert batch["video"].dtype == torch.uint8 and batch["video"].shape[1] == 25
    latent_batch = {k: v for k, v in batch.items() if k not in ("video", "audio")}
    latent_batch["video_latent"] = torch.stack([cache[k][0] for k in batch["keys"]])
    latent_batch["audio_latent"] = torch.stack([cache[k][1] for k in batch["keys"]])
    a = adapter(config, text)
    from_pixels = a(batch, torch.Generator().manual_seed(0), "cpu")
    from_cache = a(latent_batch, torch.Generator().manual_seed(0), "cpu")
    # The mp4 is H.264 (lossy) and the cache float16: close, not equal; a wrong layout is far off.
    err_v = (from_pixels.target_video - from_cache.target_video).abs().mean().item()
    err_a = (from_pixels.target_audio - from_cache.target_audio).abs().mean().item()
    assert err_v < 0.03 and err_a < 1e-3, (err_v, err_a)


def test_mismatches_and_unsupported_batches_are_clear_errors(shards, config, text):
    with pytest.raises(ValueError, match="video codec gives 192 channels"):
        BatchAdapter(config, FlowConfig(), text, DeterministicVideoCodec(spatial_stride=4))
    with pytest.raises(ValueError, match="latents/s"):
        BatchAdapter(
            config, FlowConfig(), text, None, DeterministicAudioCodec(hop_length=640, sample_rate=32_000)
        )
    batch = batches(shards)[0]
    with pytest.raises(NotImplementedError, match="reference"):
        adapter(config, text)({**batch, "references": [torch.zeros(1)]}, torch.Generator(), "cpu")
    with pytest.raises(NotImplementedError, match="clean input stream"):
        adapter(config, text)({**batch, "tasks": ["v2a", "t2va"]}, torch.Generator(), "cpu")
    small = dataclasses.replace(config, audio=dataclasses.replace(config.audio, in_channels=8))
    with pytest.raises(ValueError, match="do not fit the model"):
        BatchAdapter(small, FlowConfig(), text)(batch, torch.Generator(), "cpu")
