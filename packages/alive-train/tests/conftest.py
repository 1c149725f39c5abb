"""Fixtures: tiny real shards and caption encoders (``alive_train.testing``), one MLflow store per
session, and stage configs that train the tiny model on them on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alive_train.testing import TINY_MODEL, write_stage, write_test_data, write_world_data


@pytest.fixture(scope="session")
def test_data(tmp_path_factory) -> tuple[Path, tuple[Path, Path]]:
    return write_test_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def shards(test_data) -> Path:
    return test_data[0]


@pytest.fixture(scope="session")
def text_models(test_data) -> tuple[Path, Path]:
    return test_data[1]


@pytest.fixture(scope="session")
def world_shards(tmp_path_factory) -> Path:
    """8 clips of the synthetic world (captions, reference images) with media and cached latents."""
    return write_world_data(tmp_path_factory.mktemp("world"), 8)


@pytest.fixture(scope="session")
def model_spec() -> dict:
    """The ``model`` section of the test stages (the tiny preset on the deterministic codecs)."""
    return TINY_MODEL


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow store for the session (creating a SQLite store runs its migrations: seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def write_stage_at(shards, text_models, tracking_uri):
    """``write_stage_at(path, **sections)``: a test stage YAML at ``path`` (run and exports beside it)."""

    def build(path: Path, inherit: tuple[str, ...] = (), **sections) -> Path:
        sections.setdefault("tracking", {"uri": tracking_uri})
        return write_stage(path, shards, text_models, inherit, **sections)

    return build


@pytest.fixture
def make_stage(tmp_path, write_stage_at):
    return lambda name="stage.yaml", **sections: write_stage_at(tmp_path / name, **sections)


@pytest.fixture(scope="session")
def run_stage():
    """Run a stage in this process, as ``alive-train fit`` does."""
    from alive_train.config import load_config
    from alive_train.run import fit

    return lambda path, *overrides: fit(load_config(path, list(overrides)))


@pytest.fixture(autouse=True)
def _no_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
