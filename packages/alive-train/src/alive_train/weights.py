"""Starting weights of a stage (``init_from``): safetensors read on rank 0, renamed, filtered and
broadcast into the sharded model, with a report of missing and unexpected keys.

A source is an export directory (``model.safetensors``, or shards listed in
``model.safetensors.index.json``) or a ``.safetensors`` file. Unexpected keys (in the file, not in
the model) are an error unless the source allows them; missing keys are reported (a fresh fusion is
expected to be missing when the towers come from separate checkpoints).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist
from torch import Tensor, nn

from alive_train.config import InitSource
from alive_train.param_groups import canonical_name

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


@dataclass
class LoadReport:
    """What ``init_from`` loaded: per source, the keys taken and the unexpected ones; then what the
    model did not get from any source."""

    loaded: dict[str, int] = field(default_factory=dict)  # source path -> tensors taken
    unexpected: dict[str, list[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"init_from {path}: {n} tensors" for path, n in self.loaded.items()]
        for path, keys in self.unexpected.items():
            lines.append(f"  unexpected in {path} (ignored): {len(keys)}, e.g. {keys[:3]}")
        if self.missing:
            prefixes = sorted({".".join(k.split(".")[:2]) for k in self.missing})
            lines.append(f"  missing (kept as initialised): {len(self.missing)} tensors under {prefixes}")
        return "\n".join(lines)


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of an export directory or a single file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / INDEX_NAME).is_file():
        index = json.loads((path / INDEX_NAME).read_text())
        return [path / name for name in sorted(set(index["weight_map"].values()))]
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    raise FileNotFoundError(f"init_from {path}: no {WEIGHTS_NAME}, {INDEX_NAME} or safetensors file there")


def _rename(key: str, prefix_map: dict[str, str]) -> str:
    # Longest source prefix first, so {"": "video.", "head.": "video.final."} is unambiguous.
    for old in sorted(prefix_map, key=len, reverse=True):
        if key.startswith(old):
            return prefix_map[old] + key[len(old) :]
    return key


def read_sources(sources: list[InitSource], model_keys: set[str]) -> tuple[dict[str, Tensor], LoadReport]:
    """Read, rename and filter every source (later sources override earlier ones for the same key)."""
    from safetensors.torch import load_file

    report = LoadReport()
    state: dict[str, Tensor] = {}
    for source in sources:
        taken, unexpected = 0, []
        for file in weight_files(source.path):
            for key, tensor in load_file(str(file)).items():
                name = _rename(key, dict(source.prefix_map))
                if source.include and not any(name.startswith(p) for p in source.include):
                    continue
                if name not in model_keys:
                    unexpected.append(name)
                    continue
                state[name] = tensor
                taken += 1
        report.loaded[source.path] = taken
        if unexpected:
            report.unexpected[source.path] = unexpected
    report.missing = sorted(model_keys - set(state))
    return state, report


def load_init_weights(model: nn.Module, sources: list[InitSource]) -> LoadReport:
    """Load ``sources`` into ``model`` (sharded or not). Rank 0 reads the files; the tensors are
    broadcast shard by shard. Every rank raises the same error on disallowed unexpected keys."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    model_keys = {canonical_name(n) for n, _ in model.named_parameters()}
    state: dict[str, Tensor] = {}
    report: LoadReport | None = None
    error: str | None = None
    if rank == 0:
        try:
            state, report = read_sources(sources, model_keys)
            strict = {s.path for s in sources if not s.allow_unexpected}
            bad = {p: keys for p, keys in report.unexpected.items() if p in strict}
            if bad:
                error = (
                    "init_from: unexpected keys (set allow_unexpected on the source to ignore them): "
                    + "; ".join(f"{p}: {len(k)} such as {k[:3]}" for p, k in bad.items())
                )
            shapes = {canonical_name(n): tuple(p.shape) for n, p in model.named_parameters()}
            wrong = [n for n, t in state.items() if tuple(t.shape) != shapes[n]]
            if wrong and error is None:
                error = f"init_from: {len(wrong)} tensors have the wrong shape, e.g. {wrong[0]}: " + (
                    f"{tuple(state[wrong[0]].shape)} in the file, {shapes[wrong[0]]} in the model"
                )
        except (OSError, ValueError) as e:
            error = f"init_from: {e}"
    if distributed:
        shared = [error, report]
        dist.broadcast_object_list(shared, src=0)
        error, report = shared
    if error is not None:
        raise ValueError(error)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=distributed, strict=False)
    set_model_state_dict(model, state, options=options)
    return report
