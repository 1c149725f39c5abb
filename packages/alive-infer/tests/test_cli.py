"""``alive-infer generate`` on a tiny exported pipeline: the files it writes, its exit codes, and the
same clip from one process and from two FSDP-sharded ones."""

import dataclasses
import json
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from alive_infer.cli import EXIT_FILES, EXIT_OK, EXIT_REQUEST, EXIT_USAGE, main
from alive_infer.output import sha256_file
from alive_infer.pipeline import AlivePipeline
from alive_infer.testing import save_tiny_pipeline

PROMPT = 'A man in a blue shirt stands in a kitchen. He says "Hello there." We hear rain on the window.'
BASE = ("--frames", "9", "--resolution", "32x32", "--steps", "2", "--quiet")


@pytest.fixture(scope="module")
def export(tiny_text, tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("ckpt"), text_dirs=tiny_text, refiner=True)


def run(export, out, *args: str, prompt: str = PROMPT) -> int:
    argv = ["generate", "--checkpoint", str(export), "--prompt", prompt, "--out", str(out), *args]
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own exit for a command line it cannot parse
        return e.code


def decoded(mp4):
    """(frames, fps, duration in s, audio rate, audio samples) as a player sees the file."""
    with av.open(str(mp4)) as container:
        vs = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        frames = sum(1 for _ in container.decode(vs))
        duration = vs.duration * vs.time_base
        return frames, vs.average_rate, duration, audio and audio.rate, audio and audio.duration


def test_generate_writes_a_clip_that_decodes_and_echoes_every_setting(export, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert run(export, out, *BASE[:-1], "--seed", "5") == EXIT_OK
    captured = capsys.readouterr()
    assert captured.out.split() == [str(out), str(out.with_suffix(".wav")), str(out.with_suffix(".json"))]
    assert "sampling" in captured.err and "2/2" in captured.err  # the progress bar, one tick per step
    assert decoded(out) == (9, 24, Fraction(9, 24), 8000, 3000)  # 9 frames at 24 fps, 0.375 s at 8 kHz
    wave, rate = sf.read(out.with_suffix(".wav"))
    assert rate == 8000 and len(wave) == 3000
    record = json.loads(out.with_suffix(".json").read_text())
    options = record["command"]["options"]
    assert options["seed"] == 5 and options["resolution"] == [32, 32] and options["checkpoint"] == str(export)
    assert options["steps"] == 2 and options["solver"] is None  # as typed; the setting below is resolved
    s = record["settings"]
    assert (s["steps"], s["solver"], s["seed"], s["num_frames"], s["height"]) == (2, "euler", 5, 9, 32)
    assert s["guidance"] == record["pipeline"]["spec"]["guidance"]  # the export's default guidance
    assert record["command"]["world_size"] == 1

    again = tmp_path / "again.mp4"
    assert run(export, again, *BASE, "--seed", "5") == EXIT_OK
    assert json.loads(again.with_suffix(".json").read_text())["outputs"] == record["outputs"]
    assert again.with_suffix(".wav").read_bytes() == out.with_suffix(".wav").read_bytes()
    other = tmp_path / "other.mp4"
    assert run(export, other, *BASE, "--seed", "6") == EXIT_OK
    assert json.loads(other.with_suffix(".json").read_text())["outputs"] != record["outputs"]


def test_t2a_t2v_and_guidance_from_the_command_line(export, tmp_path):
    sound = tmp_path / "sound.wav"
    assert run(export, sound, "--task", "t2a", "--duration", "0.5", "--steps", "2", "--quiet") == EXIT_OK
    wave, rate = sf.read(sound)
    assert rate == 8000 and len(wave) == 4000 and not (tmp_path / "sound.mp4").exists()

    silent = tmp_path / "silent.mp4"
    guidance = '{"video": {"kind": "cfg", "scale": 3.0}}'
    assert run(export, silent, *BASE, "--task", "t2v", "--guidance", guidance) == EXIT_OK
    assert decoded(silent)[0] == 9 and decoded(silent)[3] is None
    record = json.loads(silent.with_suffix(".json").read_text())
    assert record["settings"]["guidance"]["video"] == {"kind": "cfg", "scale": 3.0}
    assert record["settings"]["guidance"]["audio"]["kind"] == "alive_apg"  # the default for the rest


def test_image_references_and_refiner_from_the_command_line(export, tmp_path):
    png = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(png)
    animated = tmp_path / "animated.mp4"
    assert run(export, animated, "--frames", "9", "--steps", "1", "--quiet", "--image", str(png)) == EXIT_OK
    with av.open(str(animated)) as container:  # task i2va and the image's size, from the image alone
        assert (container.streams.video[0].height, container.streams.video[0].width) == (32, 48)
    record = json.loads(animated.with_suffix(".json").read_text())
    assert record["task"] == "i2va" and record["inputs"]["image"] == sha256_file(png)
    cast = tmp_path / "cast.mp4"
    refs = ("--ref", str(png), str(png), "--resolution", "32x48", "--guidance", "dual-reference")
    assert run(export, cast, "--frames", "9", "--steps", "1", "--quiet", *refs) == EXIT_OK
    record = json.loads(cast.with_suffix(".json").read_text())
    assert record["task"] == "r2va" and set(record["inputs"]) == {"reference_1", "reference_2"}
    assert record["settings"]["guidance"]["video"]["kind"] == "dual_reference"

    refined = tmp_path / "refined.mp4"
    assert run(export, refined, *BASE, "--guidance", "cfg", "--refine", "--refine-steps", "1") == EXIT_OK
    with av.open(str(refined)) as container:
        assert (container.streams.video[0].height, container.streams.video[0].width) == (64, 64)
    refine = json.loads(refined.with_suffix(".json").read_text())["settings"]["refine"]
    assert refine == {"resolution": [64, 64], "t_start": 0.5, "steps": 1, "height": 64, "width": 64}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--frames", "10"), EXIT_REQUEST, "cannot make 10 frames"),
        (("--task", "i2va", "--image", "/nowhere/first.png"), EXIT_REQUEST, "does not exist"),
        (("--prompt", "A man says <X>hi</X>"), EXIT_REQUEST, "unknown tag <X>"),
        (("--checkpoint", "/nowhere/export"), EXIT_FILES, "pipeline.json does not exist"),
        (("--text-encoders", "/nowhere/t5", "/nowhere/qwen"), EXIT_FILES, "/nowhere/t5 .* does not exist"),
        (("--video-codec", "deterministic:spatial_stride=8"), EXIT_FILES, "does not fit"),
        (("--refine", "/nowhere/refiner"), EXIT_FILES, "has no config.json"),
        (("--guidance", "{bad"), EXIT_USAGE, "not valid JSON"),
        (("--guidance", "magic"), EXIT_USAGE, "not a preset"),
        (("--guidance", '{"video": {"kind": "cfg", "colour": 1}}'), EXIT_USAGE, "colour"),
        (("--task", "t2a"), EXIT_USAGE, r"audio-only output must end in \.wav"),
        (("--refine-steps", "3"), EXIT_USAGE, "need --refine"),
        (("--resolution", "big"), EXIT_USAGE, "HEIGHTxWIDTH"),
        (("--steps", "0"), EXIT_USAGE, "must be positive"),
        (("--frames", "9", "--duration", "1"), EXIT_USAGE, "not allowed with"),
        (("--distributed",), EXIT_USAGE, "needs a torchrun launch"),
    ],
)
def test_bad_commands_exit_with_their_code_and_write_nothing(export, tmp_path, capsys, args, code, message):
    out = tmp_path / "out" / "clip.mp4"
    assert run(export, out, "--resolution", "32x32", "--steps", "1", *args) == code  # the last option wins
    assert re.search(message, capsys.readouterr().err), message
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_the_installed_command_runs(export, tmp_path):
    """The console script itself: its entry point and an exit code (a bad output name is refused
    before anything is loaded)."""
    script = Path(sys.executable).with_name("alive-infer")
    args = ["generate", "--checkpoint", str(export), "--prompt", PROMPT, "--out", str(tmp_path / "clip.avi")]
    proc = subprocess.run([str(script), *args], capture_output=True, text=True)
    assert proc.returncode == EXIT_USAGE and "output must end in .mp4" in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_sharded_processes_make_the_single_process_clip_bitwise(export, tmp_path):
    """torchrun, 2 ranks (gloo, CPU): the model and the refiner sharded with training's FSDP2 plan,
    every rank sampling the same seed, rank 0 writing. In fp32 FSDP2 only all-gathers the exact
    weights and each rank runs the same kernels on the same inputs, so the latents are bitwise equal
    to one process's."""
    out = tmp_path / "sharded.mp4"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "alive_infer.cli", "generate", "--checkpoint", str(export), "--prompt", PROMPT]
    cmd += ["--out", str(out), *BASE, "--seed", "3", "--refine", "--refine-steps", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(out), str(out.with_suffix(".wav")), str(out.with_suffix(".json"))]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["pipeline"]["world_size"] == 2 and record["command"]["world_size"] == 2

    pipe = AlivePipeline.from_pretrained(export)
    request = pipe.request(PROMPT, num_frames=9, resolution=(32, 32), steps=2, seed=3, refine=True)
    single = pipe.generate(dataclasses.replace(request, refine=dataclasses.replace(request.refine, steps=1)))
    assert record["outputs"] == single.record["outputs"]
    wave, _ = sf.read(out.with_suffix(".wav"), dtype="float32")
    single_wav = single.save(tmp_path / "single.mp4")["wav"]
    assert np.array_equal(wave, sf.read(single_wav, dtype="float32")[0])
