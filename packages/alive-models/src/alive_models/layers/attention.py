"""The one attention entry point. Blocks call :func:`attention`; nothing else calls a kernel.

Layout is [batch, seq, heads, head_dim] throughout (what flash-attn takes; SDPA gets a transpose).
Backends, in the order ``auto`` tries them:
- ``flash``: flash-attn 2 when installed, on CUDA, in fp16/bf16 and without a key mask;
- ``sdpa``: torch.nn.functional.scaled_dot_product_attention (picks its own fused kernel);
- ``reference``: explicit softmax(QK^T/sqrt(d))V in fp32, the ground truth for tests.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alive_models.layers.kernels import flash_attn_installed
from alive_models.layers.norms import RMSNorm, ZeroInitLinear
from alive_models.layers.rope import Rope, apply_rotary, apply_rotary_qk

Backend = Literal["auto", "flash", "sdpa", "reference"]
_BACKEND: Backend = "auto"


@contextlib.contextmanager
def attention_backend(backend: Backend) -> Iterator[None]:
    """Force a backend inside the block (tests, benchmarks). ``flash`` raises where it cannot run."""
    global _BACKEND
    previous, _BACKEND = _BACKEND, backend
    try:
        yield
    finally:
        _BACKEND = previous


def _flash_usable(q: Tensor, key_mask: Tensor | None) -> bool:
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and key_mask is None
        and flash_attn_installed()
    )


def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Multi-head attention. q: [B, Lq, H, D]; k, v: [B, Lk, H, D]; key_mask: [B, Lk] bool, True = attend.

    A query row whose keys are all masked out returns zeros (rather than NaN). Pass ``None`` rather
    than an all-True mask: it keeps the fused kernels. Nothing here reads values on the host.
    """
    if key_mask is not None:
        # Rows with no valid key attend everything and are zeroed afterwards: no NaN, no host sync.
        empty_rows = ~key_mask.any(dim=-1)
        key_mask = key_mask | empty_rows[:, None]

    backend = _BACKEND
    if backend == "auto":
        backend = "flash" if _flash_usable(q, key_mask) else "sdpa"
    if backend == "flash":
        if not _flash_usable(q, key_mask):
            raise RuntimeError(
                "flash-attn backend needs flash_attn installed, CUDA fp16/bf16 inputs and no key mask"
            )
        from flash_attn import flash_attn_func

        out = flash_attn_func(q, k, v)
    elif backend == "sdpa":
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        ).transpose(1, 2)
    elif backend == "reference":
        out = reference_attention(q, k, v, key_mask)
    else:
        raise ValueError(f"unknown attention backend {backend!r}")

    if key_mask is not None:
        out = out.masked_fill(empty_rows[:, None, None, None], 0.0)
    return out


def reference_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Plain fp32 softmax attention, same layout and mask semantics as :func:`attention`."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v.float()).to(q.dtype)


class Attention(nn.Module):
    """Projections around :func:`attention`: q from ``x``, k/v from ``context`` (``x`` if None).

    Per-head RMSNorm on q and k keeps logits bounded in bf16 (as in SD3/Flux). Rotary embeddings are
    applied after the norms: one ``rope`` for self-attention, or ``rope_q``/``rope_k`` when the two
    sides live on different position sets (TA-CrossAttn). ``zero_out``: the output projection starts
    at zero (a module added to trained towers changes nothing until it learns).
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        out_dim: int | None = None,
        zero_out: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Linear(query_dim, inner)
        self.to_k = nn.Linear(context_dim or query_dim, inner)
        self.to_v = nn.Linear(context_dim or query_dim, inner)
        self.norm_q = RMSNorm(head_dim)
        self.norm_k = RMSNorm(head_dim)
        self.to_out = (ZeroInitLinear if zero_out else nn.Linear)(inner, out_dim or query_dim)

    def split_heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim))

    def project_q(self, x: Tensor) -> Tensor:
        return self.norm_q(self.split_heads(self.to_q(x)))

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        return self.norm_k(self.split_heads(self.to_k(context))), self.split_heads(self.to_v(context))

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        key_mask: Tensor | None = None,
        rope: Rope | None = None,
        rope_q: Rope | None = None,
        rope_k: Rope | None = None,
    ) -> Tensor:
        q = self.project_q(x)
        k, v = self.project_kv(x if context is None else context)
        if rope is not None:
            q, k = apply_rotary_qk(q, k, *rope)
        if rope_q is not None:
            q = apply_rotary(q, *rope_q)
        if rope_k is not None:
            k = apply_rotary(k, *rope_k)
        return self.to_out(attention(q, k, v, key_mask).flatten(-2))


class KeyValue(nn.Module):
    """Key and value projections alone (per-head RMSNorm on keys), for tokens that are only ever
    attended: reference audio, the audio side of UniTalking's single-stream joint attention.
    ``zero_value``: values start at zero, so the branch adds nothing until it learns."""

    def __init__(self, dim: int, heads: int, head_dim: int, zero_value: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.to_k = nn.Linear(dim, heads * head_dim)
        self.to_v = (ZeroInitLinear if zero_value else nn.Linear)(dim, heads * head_dim)
        self.norm_k = RMSNorm(head_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [B, L, dim] -> keys, values [B, L, heads, head_dim]."""
        heads = (self.heads, self.head_dim)
        return self.norm_k(self.to_k(x).unflatten(-1, heads)), self.to_v(x).unflatten(-1, heads)
