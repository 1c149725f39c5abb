"""The pipeline end to end on a tiny model with exactly invertible codecs and tiny real text encoders:
T2VA / I2VA / R2VA, seeds, outputs on disk, every bad input before any compute, the refiner cascade."""

import json
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from alive_infer.guidance import CFG, DualReferenceCFG, Guidance
from alive_infer.output import sha256_file, write_outputs
from alive_infer.pipeline import AlivePipeline, GenerationRequest, RefineSettings, RequestError
from alive_infer.testing import save_tiny_pipeline
from alive_models.codecs import DeterministicAudioCodec, DeterministicVideoCodec

PROMPT = 'A man in a blue shirt stands in a kitchen. He says "Hello there." We hear rain on the window.'
SIZE = (32, 32)


@pytest.fixture(scope="module")
def export(tiny_text, tmp_path_factory):
    """A tiny exported pipeline (with a refiner sub-directory) as alive-train export writes it."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("ckpt"), text_dirs=tiny_text, refiner=True)


@pytest.fixture(scope="module")
def pipe(export):
    return AlivePipeline.from_pretrained(export)


def request(**kwargs):
    base = {"prompt": PROMPT, "num_frames": 9, "resolution": SIZE, "steps": 2, "seed": 7}
    return GenerationRequest(**{**base, **kwargs})


class Forwards:
    """Counts forward calls of a model and records the flow times it saw."""

    def __init__(self, model):
        self.calls, self.t = 0, []
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        self.t.append((args[0].t_video.clone(), args[0].t_audio.clone()))

    def close(self):
        self.handle.remove()


def test_t2va_writes_a_reproducible_clip(pipe, tmp_path):
    result = pipe.generate(request())
    assert result.frames.shape == (9, *SIZE, 3) and result.frames.dtype == np.uint8
    assert result.audio.shape == (3000,)  # 9 frames at 24 fps = 0.375 s at 8 kHz
    paths = result.save(tmp_path / "clip.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.json", "clip.mp4", "clip.wav"]

    with av.open(str(paths["mp4"])) as container:
        vs, st = container.streams.video[0], container.streams.audio[0]
        assert vs.average_rate == 24 and vs.duration * vs.time_base == Fraction(9, 24)
        assert sum(1 for _ in container.decode(vs)) == 9
        assert st.rate == 8000 and st.duration == 3000
    wave, rate = sf.read(paths["wav"])
    assert (
        rate == 8000 and len(wave) == 3000 and np.allclose(wave, np.clip(result.audio, -1, 1), atol=1 / 16000)
    )

    record = json.loads(paths["json"].read_text())
    assert record["seed"] == 7 and record["prompt"] == PROMPT and record["task"] == "t2va"
    assert record["caption"].startswith("Subjects: Subject1: A man in a blue shirt.")
    assert "<W>Hello there.</W>" in record["caption"] and "<I>rain on the window</I>" in record["caption"]
    s = record["settings"]
    assert (s["num_frames"], s["height"], s["width"], s["steps"], s["solver"]) == (9, 32, 32, 2, "euler")
    assert s["guidance"]["audio"] == {
        "kind": "alive_apg",
        "w1": 2.0,
        "w2": 10.0,
        "w3": 2.0,
        "eta": 0.2,
        "norm_threshold": None,
        "momentum": None,
    }
    ckpt = pipe.provenance["model"]
    files = record["model_files"]["model"]
    assert set(files) == {
        "config.json",
        "model.safetensors",
        "pipeline.json",
        "refiner/config.json",
        "refiner/model.safetensors",
    }
    assert files["model.safetensors"] == sha256_file(ckpt / "model.safetensors")
    assert record["pipeline"]["checkpoint"] == str(ckpt) and record["pipeline"]["world_size"] == 1
    assert record["pipeline"]["spec"]["video_codec"] == "deterministic:spatial_stride=4,temporal_stride=4"
    assert len(record["outputs"]["video_latent_sha256"]) == 64

    again = pipe.generate(request())
    assert torch.equal(again.video_latent, result.video_latent) and torch.equal(
        again.audio_latent, result.audio_latent
    )
    assert np.array_equal(again.frames, result.frames) and np.array_equal(again.audio, result.audio)
    other = pipe.generate(request(seed=8))
    assert not torch.equal(other.video_latent, result.video_latent)


def test_one_batched_forward_per_step_with_four_states(pipe):
    hook = Forwards(pipe.model)
    try:
        pipe.generate(request(steps=3))
    finally:
        hook.close()
    assert hook.calls == 3 and all(tv.shape == (4,) for tv, _ in hook.t)


def test_negative_prompt_is_plain_text_and_changes_the_result(pipe):
    base = pipe.generate(request(guidance=Guidance(CFG(4.0), CFG(4.0))))
    neg = pipe.generate(request(guidance=Guidance(CFG(4.0), CFG(4.0)), negative_prompt="blurry, distorted"))
    assert not torch.equal(base.video_latent, neg.video_latent)


def test_i2va_from_a_png_and_r2va_with_two_references(pipe, tmp_path):
    rng = np.random.default_rng(0)
    png = tmp_path / "first.png"
    Image.fromarray(rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8)).save(png)
    t2va = pipe.generate(request())
    i2va = pipe.generate(request(task="i2va", image=png, resolution=None))  # size from the image
    assert i2va.frames.shape == t2va.frames.shape
    assert not torch.equal(i2va.video_latent, t2va.video_latent)
    assert i2va.record["inputs"]["image"] == sha256_file(png)

    refs = [rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8) for _ in range(2)]
    dual = Guidance(DualReferenceCFG(4.0, 2.0), CFG(3.0))
    hook = Forwards(pipe.model)
    try:
        r2va = pipe.generate(request(task="r2va", references=refs, guidance=dual))
    finally:
        hook.close()
    assert hook.calls == 2  # two steps; states with and without references share each forward
    assert not torch.equal(r2va.video_latent, t2va.video_latent)
    assert set(r2va.record["inputs"]) == {"reference_1", "reference_2"}


def test_t2v_makes_a_silent_clip_through_the_video_tower_alone(pipe, tmp_path):
    hook = Forwards(pipe.model)
    try:
        result = pipe.generate(request(task="t2v", steps=3))
    finally:
        hook.close()
    assert hook.calls == 3 and all(tv.shape == (2,) for tv, _ in hook.t)  # pos + neg; "indep" collapsed
    assert result.audio is None and result.audio_latent is None and result.frames.shape == (9, *SIZE, 3)
    paths = result.save(tmp_path / "silent.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["silent.json", "silent.mp4"]
    with av.open(str(paths["mp4"])) as container:
        assert not container.streams.audio and sum(1 for _ in container.decode(video=0)) == 9
    record = json.loads(paths["json"].read_text())
    assert record["towers"] == ["video"] and record["outputs"]["audio_latent_sha256"] is None
    again = pipe.generate(request(task="t2v", steps=3))
    assert torch.equal(again.video_latent, result.video_latent)
    with pytest.raises(ValueError, match=r"\.mp4"):
        result.save(tmp_path / "silent.wav")


def test_t2a_makes_any_length_of_sound_through_the_audio_tower_alone(pipe, tmp_path):
    hook = Forwards(pipe.model)
    try:
        result = pipe.generate(request(task="t2a", num_frames=None, resolution=None, duration=0.3))
    finally:
        hook.close()
    assert hook.calls == 2 and all(ta.shape == (2,) for _, ta in hook.t)
    assert result.frames is None and result.video_latent is None
    assert result.audio.shape == (2400,) and result.audio_latent.shape == (1, 320, 8)  # 0.3 s at 8 kHz
    paths = result.save(tmp_path / "sound.wav")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sound.json", "sound.wav"]
    wave, rate = sf.read(paths["wav"])
    assert rate == 8000 and len(wave) == 2400
    record = json.loads(paths["json"].read_text())
    assert record["towers"] == ["audio"] and record["settings"]["duration"] == 0.3
    assert record["settings"]["num_frames"] is None
    with pytest.raises(ValueError, match=r"\.wav"):
        result.save(tmp_path / "sound.mp4")


def test_request_takes_the_exports_defaults(pipe):
    r = pipe.request(PROMPT, seed=3, steps=None, refine=True)
    assert r.steps == 4 and r.seed == 3  # sampling defaults of pipeline.json; None = not given
    assert r.refine == RefineSettings((64, 64), 0.5, 2) and r.guidance == pipe.spec.guidance
    assert pipe.request(PROMPT, steps=7, solver="heun").steps == 7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "i2va"}, "needs a first-frame image"),
        ({"image": np.zeros((*SIZE, 3), np.uint8)}, "use task i2va"),
        ({"task": "i2va", "image": Image.new("RGBA", SIZE)}, "mode RGBA"),
        ({"task": "i2va", "image": np.zeros((32, 40, 3), np.uint8)}, "32x40 .* but the clip is 32x32"),
        ({"task": "i2va", "image": "/nonexistent/first.png"}, "does not exist"),
        ({"task": "r2va"}, "one or more reference images"),
        ({"task": "r2va", "references": [np.zeros((16, 16, 3), np.uint8)]}, "16x16"),
        ({"guidance": Guidance(DualReferenceCFG(), CFG())}, "needs task r2va"),
        ({"num_frames": None, "duration": 0.5}, r"cannot make 0.5 s .* nearest: 9 frames .* or 13 frames"),
        ({"num_frames": None, "duration": 0.4}, "cannot make 0.4 s"),
        ({"num_frames": None, "duration": -1.0}, "positive"),
        ({"duration": 0.375}, "not both"),
        ({"num_frames": 10}, "cannot make 10 frames"),
        ({"resolution": (30, 32)}, "multiples of 8"),
        ({"resolution": "4k"}, "unknown resolution"),
        ({"resolution": "480p", "aspect_ratio": "wide"}, "aspect ratio"),
        ({"prompt": "A man says <X>hi</X>"}, "unknown tag <X>"),
        ({"prompt": "Subjects: Subject1: A man. Visual: x. Narration: <W>hi"}, "unclosed <W>"),
        ({"prompt": 'A man says "' + "word " * 200 + '"'}, "speech has .* tokens"),
        ({"steps": 0}, "steps"),
        ({"solver": "ddim"}, "unknown solver"),
        ({"seed": -3}, "seed"),
        ({"task": "t2x"}, "unknown task"),
        ({"refine": RefineSettings(resolution=(64, 64), t_start=0.0)}, "t_start"),
        ({"task": "t2a"}, "t2a makes no video: give a duration"),
        ({"task": "t2a", "num_frames": None, "resolution": None, "duration": 0.0}, "positive"),
        ({"task": "t2a", "num_frames": None, "resolution": None, "refine": RefineSettings()}, "no video"),
        ({"task": "t2v", "references": [np.zeros((*SIZE, 3), np.uint8)]}, "use task r2va"),
        ({"task": "t2v", "guidance": Guidance(DualReferenceCFG(), CFG())}, "needs task r2va"),
        ({"task": "r2va", "guidance": Guidance(CFG(), DualReferenceCFG())}, "not the audio one"),
    ],
)
def test_bad_requests_fail_before_any_compute_and_write_nothing(pipe, tmp_path, kwargs, message):
    hook = Forwards(pipe.model)
    try:
        with pytest.raises(RequestError, match=message):
            pipe.generate(request(**kwargs))
    finally:
        hook.close()
    assert hook.calls == 0 and list(tmp_path.iterdir()) == []


def test_refine_needs_a_refiner(export):
    bare = AlivePipeline.from_pretrained(export, refiner=False)
    assert bare.refiner is None
    with pytest.raises(RequestError, match="refiner model"):
        bare.plan(request(refine=RefineSettings(resolution=(64, 64))))


def test_mismatched_parts_are_refused(pipe):
    model, vcodec, acodec, text = pipe.model, pipe.video_codec, pipe.audio_codec, pipe.text
    with pytest.raises(ValueError, match="video latents have 192 channels, codec 48"):
        AlivePipeline(model, DeterministicVideoCodec(spatial_stride=2, temporal_stride=4), acodec, text)
    with pytest.raises(ValueError, match="audio latents/s"):
        AlivePipeline(model, vcodec, DeterministicAudioCodec(sample_rate=16000, hop_length=320), text)


def test_refiner_cascade_keeps_the_audio_and_runs_from_t0(pipe):
    base = pipe.generate(request())
    hook = Forwards(pipe.refiner)
    try:
        refined = pipe.generate(request(refine=RefineSettings(resolution=(64, 64), t_start=0.4, steps=3)))
    finally:
        hook.close()
    assert refined.frames.shape == (9, 64, 64, 3)
    assert torch.equal(refined.audio_latent, base.audio_latent)  # held clean through the refiner
    assert np.array_equal(refined.audio, base.audio)
    assert hook.calls == 3
    assert all(torch.all(ta == 0) for _, ta in hook.t)
    assert abs(hook.t[0][0].max().item() - 0.4) < 1e-6 and all(tv.max() <= 0.4 + 1e-6 for tv, _ in hook.t)
    refine = json.loads(json.dumps(refined.record))["settings"]["refine"]
    assert refine == {"resolution": [64, 64], "t_start": 0.4, "steps": 3, "height": 64, "width": 64}


def test_outputs_are_all_or_nothing(tmp_path):
    (tmp_path / "clip.json").mkdir()  # the last rename will fail
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(OSError):
        write_outputs(tmp_path / "clip.mp4", frames, 24, np.zeros(1000, np.float32), 8000, {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.json"]
    with pytest.raises(ValueError, match=r"\.mp4"):
        write_outputs(tmp_path / "clip.mov", frames, 24, np.zeros(1000, np.float32), 8000, {})
