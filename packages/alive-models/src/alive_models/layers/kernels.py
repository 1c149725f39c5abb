"""Which optional GPU kernels are usable. Imported lazily so CPU installs never touch them."""

from __future__ import annotations

import functools
import importlib.util

import torch


@functools.cache
def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@functools.cache
def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def use_liger(x: torch.Tensor) -> bool:
    """Liger's Triton kernels only run on CUDA tensors."""
    return x.is_cuda and liger_installed()
