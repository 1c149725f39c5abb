"""MLflow tracking of a run: the store, the run (created once, reattached on requeue), params, the
parameter-group table, lineage tags. Only rank 0 ever touches the tracking store.

With nothing configured the store is ``sqlite:///<run dir>/mlflow.db`` with artifacts in
``<run dir>/mlartifacts`` (MLflow 3 refuses Lightning's ``./mlruns`` file store). The run id is kept in
``<run dir>/mlflow_run.json``, so a requeued job (or any relaunch into the same run directory) logs
into the same run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import alive_train
from alive_train.config import StageConfig, flatten, to_container, to_yaml
from alive_train.export import read_lineage

RUN_FILE = "mlflow_run.json"
log = logging.getLogger(__name__)


@dataclass
class TrackedRun:
    """Where a run is tracked."""

    uri: str
    experiment_id: str
    run_id: str
    reattached: bool = False

    def describe(self) -> str:
        how = "reattached to" if self.reattached else "created"
        return f"MLflow: {how} run {self.run_id} (experiment {self.experiment_id}) at {self.uri}"


def tracking_uri(config: StageConfig, run_dir: Path) -> str:
    return config.tracking.uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def _artifact_location(uri: str) -> str | None:
    # Artifacts beside a SQLite database; a server decides for itself.
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def git_commit() -> str | None:
    """The commit of the alive-train source tree (with ``-dirty`` when it has local changes)."""
    where = Path(alive_train.__file__).parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def slurm_job() -> dict[str, str]:
    """SLURM facts worth a tag (empty outside SLURM)."""
    keys = {
        "slurm.job_id": "SLURM_JOB_ID",
        "slurm.array_job_id": "SLURM_ARRAY_JOB_ID",
        "slurm.array_task_id": "SLURM_ARRAY_TASK_ID",
        "slurm.restart_count": "SLURM_RESTART_COUNT",
        "slurm.nodes": "SLURM_JOB_NUM_NODES",
    }
    return {tag: os.environ[var] for tag, var in keys.items() if var in os.environ}


def lineage_tags(config: StageConfig, resume_from: Path | None, uri: str) -> dict[str, str]:
    """Where this run's weights come from: ``init_from`` exports (their stage, run and checkpoint),
    the checkpoint it resumes from, the code and the SLURM job."""
    tags: dict[str, str] = {"alive.stage": config.stage, "alive.module": config.module}
    parents = []
    for i, source in enumerate(config.init_from):
        tags[f"alive.init_from.{i}.path"] = str(source.path)
        lineage = read_lineage(source.path)
        if lineage is None:
            continue
        tags[f"alive.init_from.{i}.stage"] = str(lineage.get("stage"))
        tags[f"alive.init_from.{i}.checkpoint"] = str(lineage.get("checkpoint"))
        tags[f"alive.init_from.{i}.step"] = str(lineage.get("step"))
        run = lineage.get("mlflow") or {}
        if run.get("run_id"):
            tags[f"alive.init_from.{i}.run_id"] = run["run_id"]
            tags[f"alive.init_from.{i}.tracking_uri"] = str(run.get("uri"))
            if run.get("uri") == uri:
                parents.append(run["run_id"])
    if len(set(parents)) == 1:  # MLflow nests this run under the stage it continues
        tags["mlflow.parentRunId"] = parents[0]
    if resume_from is not None:
        tags["alive.resumed_from"] = str(resume_from)
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    tags.update(slurm_job())
    return tags


def open_run(config: StageConfig, run_dir: Path, tags: dict[str, str]) -> TrackedRun:
    """Create the run, or reattach to the one recorded in the run directory. Rank 0 only."""
    from mlflow.tracking import MlflowClient

    run_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(config, run_dir)
    client = MlflowClient(uri)  # the first call on a fresh SQLite store creates it, in this process only
    record = run_dir / RUN_FILE
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("uri") == uri:
            run = client.get_run(saved["run_id"])
            client.update_run(run.info.run_id, status="RUNNING")
            for key, value in tags.items():
                client.set_tag(run.info.run_id, key, value)
            return TrackedRun(uri, run.info.experiment_id, run.info.run_id, reattached=True)
        log.warning(
            "%s names a run in another store (%s); starting a new run in %s", record, saved.get("uri"), uri
        )
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(config.tracking.experiment, artifact_location=_artifact_location(uri))
    )
    run = client.create_run(experiment_id, run_name=config.tracking.run_name or config.stage, tags=tags)
    tracked = TrackedRun(uri, experiment_id, run.info.run_id)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(tracked)) + "\n")
    os.replace(tmp, record)
    return tracked


def log_run_config(
    run: TrackedRun, config: StageConfig, table_text: str, table: list[dict[str, Any]]
) -> None:
    """Params (the resolved config, flattened), the config and the parameter-group table as artifacts.

    Params are immutable in MLflow: on a reattached run, values that changed (say a longer
    ``schedule.max_steps``) are recorded as ``param_changed.*`` tags instead.
    """
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run.uri)
    logged = client.get_run(run.run_id).data.params
    params = {k: v[:6000] for k, v in flatten(to_container(config)).items()}
    new = [Param(k, v) for k, v in params.items() if k not in logged]
    for i in range(0, len(new), 100):
        client.log_batch(run.run_id, params=new[i : i + 100])
    for key, value in params.items():
        if key in logged and logged[key] != value:
            client.set_tag(run.run_id, f"param_changed.{key}", f"{logged[key]} -> {value}"[:5000])
    client.log_text(run.run_id, to_yaml(config), "config.yaml")
    client.log_text(run.run_id, table_text + "\n", "param_groups.txt")
    client.log_dict(run.run_id, table, "param_groups.json")


def make_logger(run: TrackedRun, config: StageConfig):
    """Lightning's MLFlowLogger attached to ``run``."""
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(experiment_name=config.tracking.experiment, tracking_uri=run.uri, run_id=run.run_id)
