"""One stage run, start to finish: resume point, Trainer, tracking, fit, export. ``alive-train fit``
calls :func:`fit`; tests and notebooks can too.

Every rank runs this; only rank 0 prints, touches the MLflow store and exports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only

from alive_train.callbacks import Checkpointing, Validation
from alive_train.checkpoint import is_complete, latest_checkpoint
from alive_train.config import ConfigError, StageConfig, to_yaml
from alive_train.data import StageDataModule
from alive_train.export import export_model, lineage_of
from alive_train.module import STAGES, StageModule, build_stage, pipeline_parts
from alive_train.param_groups import ParamGroupError, format_table, resolve_param_groups, table_records
from alive_train.strategy import AliveStrategy
from alive_train.tracking import (
    TrackedRun,
    git_commit,
    lineage_tags,
    log_run_config,
    make_logger,
    open_run,
    tracking_uri,
)


@dataclass
class FitResult:
    """What a run left behind (paths are None where nothing was written)."""

    module: StageModule
    trainer: L.Trainer
    run: TrackedRun | None
    resumed_from: Path | None
    last_checkpoint: Path | None
    export_dir: Path | None
    preempted: bool


def resume_point(config: StageConfig) -> Path | None:
    """``checkpoint.resume``: ``auto`` = the newest complete checkpoint of the run, ``never``, or a path."""
    resume = config.checkpoint.resume
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(config.checkpoint.dir)
    path = Path(resume)
    if not is_complete(path):
        raise ConfigError(f"checkpoint.resume: {path} is not a complete checkpoint")
    return path


def build_trainer(config: StageConfig, checkpointing: Checkpointing) -> L.Trainer:
    callbacks: list = []
    v = config.validation
    if v.enabled and STAGES[config.module].validates:  # before the saves: a checkpoint follows it
        callbacks.append(Validation(v.every_n_steps, v.at_end))
    callbacks.append(checkpointing)
    if config.trainer.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    trainer = L.Trainer(
        accelerator=config.trainer.accelerator,
        devices=config.trainer.devices,
        num_nodes=config.trainer.num_nodes,
        strategy=AliveStrategy(),
        precision="32-true",  # fp32 master weights; bf16 compute is the FSDP2 MixedPrecisionPolicy's
        max_epochs=-1,  # the data stream is endless: max_steps ends the run
        logger=False,  # rank 0 attaches the MLflow logger once its run exists
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=config.trainer.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=config.trainer.log_every_n_steps,
        accumulate_grad_batches=config.trainer.accumulate_grad_batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=config.run.dir,
        plugins=[SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None,
    )
    trainer.fit_loop.epoch_loop.max_steps = config.max_steps(trainer.world_size)
    return trainer


def export_trained(module: StageModule, config: StageConfig, checkpoint: Path) -> Path:
    """Export the trained (sharded) model as it is after the final save: every rank calls this."""
    from alive_train.checkpoint import read_info

    weights = config.export.weights
    if weights == "ema" and module.ema is None:
        raise ConfigError("export.weights=ema but the run has no EMA (ema.enabled=false): export the model")
    info = read_info(checkpoint) if rank_zero_only.rank == 0 else {}
    lineage = lineage_of(info, checkpoint.resolve(), weights, config.export.dtype)
    spec = pipeline_parts(config).spec(module.joint_config, lineage)
    with module.weights_in_use(weights):
        export_model(module.model, config.export.dir, spec, getattr(torch, config.export.dtype))
    return Path(config.export.dir)


def fit(config: StageConfig) -> FitResult:
    """Train ``config``'s stage: resume if the run has a checkpoint, export when it completes."""
    rank = rank_zero_only.rank  # from the launcher's environment (RANK, LOCAL_RANK, SLURM_PROCID)
    resume = resume_point(config)
    checkpointing = Checkpointing(
        config.checkpoint.dir, config.checkpoint.every_n_steps, config.checkpoint.keep_last
    )
    trainer = build_trainer(config, checkpointing)
    with trainer.init_module(empty_init=True):
        module = build_stage(config, resuming=resume is not None)
    try:
        groups = resolve_param_groups(module.model, config.optim)
    except ParamGroupError as e:
        raise ConfigError(str(e)) from e
    table = format_table(groups)
    run = None
    if rank == 0:
        print(to_yaml(config), flush=True)
        print(table, flush=True)
        uri = tracking_uri(config, Path(config.run.dir))
        run = open_run(config, Path(config.run.dir), lineage_tags(config, resume, uri))
        log_run_config(run, config, table, table_records(groups))
        module.run_info = {"mlflow": {"uri": run.uri, "run_id": run.run_id}, "git_commit": git_commit()}
        trainer.loggers = [make_logger(run, config)]
        print(run.describe(), flush=True)
        print(f"steps: {trainer.max_steps} on {trainer.world_size} rank(s)", flush=True)
        if resume is not None:
            print(f"resuming from {resume}", flush=True)
    trainer.fit(module, datamodule=StageDataModule(config), ckpt_path=resume)
    export_dir = None
    if not module.preempted and config.export.on_finish and checkpointing.last_saved is not None:
        export_dir = export_trained(module, config, checkpointing.last_saved)
        if rank == 0:
            print(
                f"exported {checkpointing.last_saved} ({config.export.weights}) to {export_dir}", flush=True
            )
    return FitResult(module, trainer, run, resume, checkpointing.last_saved, export_dir, module.preempted)
