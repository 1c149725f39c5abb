"""Cross-package checks: import boundaries, the CLI a user runs first, the isolated inference install."""

import json
import os
import shutil
import subprocess
import sys
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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv to build the isolated environment")
def test_alive_infer_installs_and_imports_without_the_training_stack(tmp_path):
    venv = tmp_path / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    env.pop("UV_PROJECT_ENVIRONMENT", None)
    subprocess.run(["uv", "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
    subprocess.run(
        [
            "uv",
            "pip",
            "install",
            "-q",
            "--python",
            str(venv / "bin" / "python"),
            str(ROOT / "packages/alive-models"),
            str(ROOT / "packages/alive-infer"),
        ],
        check=True,
        env=env,
    )
    probe = (
        "import importlib.util, alive_infer, alive_models, torch\n"
        "import alive_infer.pipeline, alive_infer.prompt, alive_models.mp4  # every module imports alone\n"
        f"missing = [m for m in {BANNED!r} if importlib.util.find_spec(m) is None]\n"
        f"assert missing == list({BANNED!r}), missing\n"
        "from alive_models import build_model, get_preset\n"
        "from alive_models.testing import random_inputs\n"
        "cfg = get_preset('tiny'); out = build_model(cfg, seed=0)(random_inputs(cfg))\n"
        "print('ok', tuple(out.video.shape))\n"
    )
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-3000:]
