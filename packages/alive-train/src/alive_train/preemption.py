"""Pre-emption (SLURM ``--signal=SIGUSR1@600``): the signal handler only sets a flag.

Saving inside a signal handler can hang, or write a checkpoint from the middle of a backward pass
(Lightning #21406). So the handler sets :data:`REQUESTED`; the LightningModule agrees on it across
ranks in its next training step (in the all-reduce it already does for the non-finite check), and
the checkpointing callback saves at that step's boundary, calls :func:`requeue` and stops the run.
DataLoader workers ignore the signal (``alive_train.data.ignore_preemption_signal``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

SIGNAL = signal.SIGUSR1
REQUESTED = threading.Event()


def install_handler() -> None:
    """Route SIGUSR1 to :data:`REQUESTED` (call early, from the main thread: the default action kills)."""
    signal.signal(SIGNAL, lambda signum, frame: REQUESTED.set())


def requeue() -> str:
    """``scontrol requeue`` this SLURM job; returns what happened (skipped outside SLURM)."""
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        return "requeue skipped: not under SLURM (no SLURM_JOB_ID)"
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not re.fullmatch(r"[0-9_]+", job):
        return f"requeue skipped: unexpected job id {job!r}"
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"requeue of job {job} failed: {e}"
    if result.returncode != 0:
        return f"requeue of job {job} failed ({result.returncode}): {result.stderr.strip()}"
    return f"requeued SLURM job {job}"
