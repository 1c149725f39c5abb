"""FSDP2 for the joint model: generic helpers (``fsdp``) and the model's plan (``plan``). Torch only."""

from alive_models.parallel.fsdp import (
    apply_activation_checkpointing,
    apply_compile,
    apply_fsdp,
    mixed_precision,
)
from alive_models.parallel.plan import ParallelPlan, block_lists, parallelize_joint

__all__ = [
    "ParallelPlan",
    "apply_activation_checkpointing",
    "apply_compile",
    "apply_fsdp",
    "block_lists",
    "mixed_precision",
    "parallelize_joint",
]
