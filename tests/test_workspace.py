"""Cross-package checks: import boundaries, the CLI a user runs first, the isolated inference install."""

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BANNED = ("lightning", "omegaconf", "mlflow", "webdataset")


def ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, input=stdin, capture_output=True, text=True
    )


@pytest.mark.parametrize("package", ["alive-models/src/alive_models", "alive-infer/src/alive_infer"])
@pytest.mark.parametrize("module", BANNED)
def test_training_stack_is_banned_from_torch_only_packages(package, module):
    path = f"packages/{package}/probe.py"
    for source in (f"import {module}\n", f"from {module} import something\n"):
        proc = ruff("check", "--no-cache", "--stdin-filename", path, "-", stdin=source)
        assert proc.returncode == 1 and "TID251" in proc.stdout, proc.stdout + proc.stderr


def test_training_stack_is_allowed_in_alive_train():
    proc = ruff(
        "check",
        "--no-cache",
        "--stdin-filename",
        "packages/alive-train/src/alive_train/probe.py",
        "-",
        stdin="import lightning\n\nNAME = lightning.__name__\n",
    )
    assert proc.returncode == 0, proc.stdout


def test_repository_passes_ruff():
    proc = ruff("check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout


def test_summary_cli_json():
    proc = subprocess.run(
        ["alive-models", "summary", "--preset", "alive-14b", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(proc.stdout)
    assert {"video", "audio", "fusion", "total"} <= set(data)
    assert 11e9 < data["video"] < 12.5e9 and 1.8e9 < data["audio"] < 2.3e9
    assert data["total"] == data["video"] + data["audio"] + data["fusion"]


def test_smoke_cli_runs_a_training_step():
    proc = subprocess.run(
        ["alive-models", "smoke", "--steps", "2"], capture_output=True, text=True, check=True
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("step ") and "loss" in line for line in lines)


def test_unknown_preset_is_a_clear_error():
    proc = subprocess.run(["alive-models", "summary", "--preset", "huge"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def isolated_python(tmp_path: Path, *requirements: str) -> tuple[Path, dict]:
    """A fresh virtual environment (no system site-packages) with ``requirements`` installed by uv
    (torch and the other third-party wheels come from uv's cache); returns its python and env."""
    venv = tmp_path / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    env.pop("UV_PROJECT_ENVIRONMENT", None)
    subprocess.run(["uv", "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    # --no-sources: the workspace's `tool.uv.sources` would install alive-models as an editable link to
    # this checkout, and the environment would not be isolated at all.
    install = ["uv", "pip", "install", "-q", "--no-sources", "--python", str(python), *requirements]
    subprocess.run(install, check=True, env=env)
    return python, env


def built_wheels(out: Path) -> list[str]:
    """``uv build --wheel`` of alive-models and alive-infer, as a release would publish them."""
    for package in ("alive-models", "alive-infer"):
        subprocess.run(
            ["uv", "build", "-q", "--wheel", "--out-dir", str(out), str(ROOT / "packages" / package)],
            check=True,
            cwd=ROOT,
        )
    wheels = sorted(str(w) for w in out.glob("*.whl"))
    assert [Path(w).name.split("-")[0] for w in wheels] == ["alive_infer", "alive_models"], wheels
    return wheels


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv to build the isolated environment")
@pytest.mark.parametrize("source", ["directories", "wheels"])
def test_alive_infer_installs_alone_and_generates_a_clip(tmp_path, source):
    """pip install of alive-models + alive-infer alone (from the package directories, and from built
    wheels), then the user's first command on a tiny exported checkpoint: the clip decodes with the
    right frames, rate, duration and sound, and no training package is importable there."""
    if source == "wheels":
        requirements = built_wheels(tmp_path / "wheels")
    else:
        requirements = [str(ROOT / "packages/alive-models"), str(ROOT / "packages/alive-infer")]
    python, env = isolated_python(tmp_path, *requirements)
    probe = (
        "import importlib.util, alive_infer, alive_models, torch\n"
        "import alive_infer.cli, alive_infer.pipeline, alive_infer.prompt, alive_models.mp4  # import alone\n"
        f"present = [m for m in {BANNED!r} if importlib.util.find_spec(m) is not None]\n"
        "assert present == [], present\n"
        "assert not any(importlib.util.find_spec(m) for m in ('alive_data', 'alive_train'))\n"
        "print('ok', alive_infer.__file__, alive_models.__file__)\n"
    )
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-3000:]
    assert proc.stdout.count(str(tmp_path / "venv")) == 2  # the installed copies, not the workspace's

    from alive_infer.testing import save_tiny_pipeline  # made here, used there: only files cross over

    export = save_tiny_pipeline(tmp_path / "ckpt")
    out = tmp_path / "out" / "clip.mp4"
    command = [str(python.with_name("alive-infer")), "generate", "--checkpoint", str(export)]
    command += ["--prompt", 'A woman says "Good morning." We hear a door opening.', "--out", str(out)]
    command += ["--frames", "13", "--resolution", "32x48", "--steps", "2", "--seed", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.json", "clip.mp4", "clip.wav"]

    import av

    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.width, video.height, video.average_rate) == (48, 32, 24)
        assert video.duration * video.time_base == Fraction(13, 24)
        assert sum(1 for _ in container.decode(video)) == 13
        assert audio.rate == 8000 and audio.duration == round(13 / 24 * 8000)  # sample 0 with frame 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["versions"]["alive_infer"] and record["settings"]["audio_samples"] == 13 * 8000 // 24
