"""Voice cloning at inference (TR2AV, seed 004 §4.4): ``--ref-audio`` / ``reference_audio`` is read
with soundfile, mixed to mono, resampled to the audio codec's rate, encoded by the audio codec and
fed to the AudioDiT's reference branch; it changes the audio, and a request without it is untouched
by that branch."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from alive_infer.cli import EXIT_OK, EXIT_REQUEST, main
from alive_infer.pipeline import AlivePipeline, RequestError, load_audio
from alive_infer.testing import save_tiny_pipeline

PROMPT = 'A woman stands in a garden. She says "Good morning." We hear birds.'
SETTINGS = {"num_frames": 9, "resolution": (32, 32), "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def unitalking(tiny_text, tmp_path_factory):
    root = save_tiny_pipeline(tmp_path_factory.mktemp("uni"), text_dirs=tiny_text, preset="tiny-unitalking")
    return AlivePipeline.from_pretrained(root)


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """Two different voices as 16 kHz stereo WAVs (the codec runs at 8 kHz), 0.5 s each."""
    root, t = tmp_path_factory.mktemp("voices"), np.arange(8000) / 16000
    paths = []
    for i, f0 in enumerate((180.0, 420.0)):
        left = 0.5 * np.sin(2 * np.pi * f0 * t) * np.exp(-3 * t)
        right = 0.3 * np.sin(2 * np.pi * 2.5 * f0 * t)
        sf.write(root / f"voice{i}.wav", np.stack([left, right], axis=1).astype(np.float32), 16000)
        paths.append(root / f"voice{i}.wav")
    return paths


def audio_of(pipe, **kwargs):
    return pipe.generate(pipe.request(PROMPT, **SETTINGS, **kwargs)).audio_latent


def test_reference_audio_changes_the_audio_and_only_when_given(unitalking, voices):
    plain = audio_of(unitalking)
    first = audio_of(unitalking, task="tr2av", reference_audio=voices[0])
    second = audio_of(unitalking, task="tr2av", reference_audio=voices[1])
    assert (first - plain).abs().max() > 1e-3 and (second - first).abs().max() > 1e-3
    torch.testing.assert_close(audio_of(unitalking, task="tr2av", reference_audio=voices[0]), first)
    # Without a reference the branch is not used: changing its weights changes nothing.
    branch = [p for n, p in unitalking.model.named_parameters() if "reference_" in n]
    saved = [p.detach().clone() for p in branch]
    try:
        with torch.no_grad():
            for p in branch:
                p.add_(torch.randn_like(p))
        torch.testing.assert_close(audio_of(unitalking), plain, rtol=0, atol=0)
        assert (audio_of(unitalking, task="tr2av", reference_audio=voices[0]) - first).abs().max() > 1e-3
    finally:
        with torch.no_grad():
            for p, s in zip(branch, saved, strict=True):
                p.copy_(s)


def test_the_reference_is_mixed_to_mono_and_resampled_to_the_codec_rate(unitalking, voices):
    wave, rate = sf.read(voices[0], dtype="float32", always_2d=True)
    mono = load_audio(voices[0], 8000)
    assert len(mono) == len(wave) * 8000 // rate  # 0.5 s at the codec's 8 kHz
    assert np.allclose(load_audio((wave.mean(axis=1), rate), 8000), mono)  # the mean of the channels
    spectrum = np.abs(np.fft.rfft(mono))
    top = sorted(np.argsort(spectrum)[-2:] * 8000 / len(mono))
    assert top == [180.0, 450.0]  # both channels' pitches survive the downmix and the resampling
    from_file = audio_of(unitalking, task="tr2av", reference_audio=voices[0])
    from_array = audio_of(unitalking, task="tr2av", reference_audio=(wave, rate))
    torch.testing.assert_close(from_array, from_file, rtol=0, atol=0)


def test_ref_audio_from_the_command_line_is_recorded(unitalking, voices, tmp_path, tiny_text):
    root = unitalking.info["checkpoint"]
    out = tmp_path / "clip.mp4"
    args = ["--frames", "9", "--resolution", "32x32", "--steps", "2", "--quiet", "--guidance", "ucg"]
    argv = ["generate", "--checkpoint", root, "--prompt", PROMPT, "--out", str(out), *args]
    assert main([*argv, "--ref-audio", str(voices[0])]) == EXIT_OK
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["task"] == "tr2av" and len(record["inputs"]["reference_audio"]) == 64
    assert record["settings"]["guidance"]["audio"]["kind"] == "ucg"
    bad = tmp_path / "bad.mp4"
    assert main([*argv[:6], str(bad), *args, "--ref-audio", str(tmp_path / "missing.wav")]) == EXIT_REQUEST
    assert not bad.exists()


def test_reference_audio_is_refused_where_it_cannot_be_used(unitalking, voices, tiny_text, tmp_path):
    with pytest.raises(RequestError, match="use task tr2av"):
        unitalking.plan(unitalking.request(PROMPT, **SETTINGS, reference_audio=voices[0]))
    with pytest.raises(RequestError, match="needs a reference audio"):
        unitalking.plan(unitalking.request(PROMPT, **SETTINGS, task="tr2av"))
    (tmp_path / "noise.wav").write_bytes(b"not a sound file")
    with pytest.raises(RequestError, match="not a readable sound file"):
        unitalking.plan(
            unitalking.request(PROMPT, **SETTINGS, task="tr2av", reference_audio=tmp_path / "noise.wav")
        )
    plain = AlivePipeline.from_pretrained(save_tiny_pipeline(tmp_path / "plain", text_dirs=tiny_text))
    with pytest.raises(RequestError, match="no reference-audio branch"):
        plain.plan(plain.request(PROMPT, **SETTINGS, task="tr2av", reference_audio=voices[0]))
