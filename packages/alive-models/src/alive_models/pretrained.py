"""Weights on disk in the layout diffusers and transformers use, for any ``nn.Module``.

A model directory holds ``config.json`` and either ``model.safetensors`` or
``model-0000k-of-0000n.safetensors`` shards with ``model.safetensors.index.json`` (a ``weight_map``
from tensor name to shard file). Sharding into files is ``huggingface_hub``'s
``split_torch_state_dict_into_shards``; the files are ``safetensors``.

Loading is sharded-aware: for a parameter that is a DTensor (the model went through ``fully_shard``),
each rank reads only the rows of its own shard from the file (safetensors slices are lazy), so no
rank ever holds the full model. Loading a single tower (or any subset) from another file goes through
``prefix_map``; every load reports missing, unexpected and mis-shaped weights.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_OWN_FILE_PREFIX = "model"


def read_config(path: str | Path, class_name: str) -> dict:
    """``config.json`` of a directory written by ``save_weights`` for ``class_name``, minus bookkeeping."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} has no {CONFIG_NAME}: not a {class_name} directory (nothing is downloaded)"
        )
    data = json.loads(file.read_text())
    found = data.get("_class_name")
    if found != class_name:
        raise ValueError(f"{file} describes a {found!r}, not a {class_name}")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _is_sharded(model: nn.Module) -> bool:
    return any(isinstance(t, DTensor) for t in model.state_dict().values())


def process_rank() -> int:
    """This process's rank under torch.distributed (0 when it is not initialised)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def full_state_dict(model: nn.Module) -> dict[str, Tensor] | None:
    """Every weight at full shape on the CPU. On a sharded model this is a collective (every rank must
    call it) and only rank 0 gets the dict; the other ranks get None."""
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
        return state if process_rank() == 0 else None
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_weights(
    model: nn.Module,
    path: str | Path,
    config: dict,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``config`` as ``config.json`` and the model's weights as safetensors under ``path``.

    Written into a temporary sibling directory and swapped in with renames, so ``path`` holds either
    the previous complete save or the new one, never a mix. An existing ``path`` holding files other
    than a previous save's is refused rather than replaced. ``dtype`` casts floating-point weights.
    With torch.distributed initialised every rank must call it; rank 0 writes, the others wait.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    path = Path(path)
    # Checked on every rank (a shared filesystem), so all ranks fail together rather than one.
    foreign = [p.name for p in path.iterdir() if not _is_own_file(p.name)] if path.exists() else []
    if foreign:
        raise FileExistsError(f"{path} holds files a save did not write ({foreign[:5]}); not replacing it")
    state = full_state_dict(model)
    if state is not None and process_rank() == 0:
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        state = {k: v.contiguous() for k, v in state.items()}
        split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for filename, names in split.filename_to_tensors.items():
                save_file({n: state[n] for n in names}, tmp / filename, metadata={"format": "pt"})
                (tmp / filename).chmod(0o644)  # safetensors writes owner-only files; saves are shared
            if split.is_sharded:
                index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
                (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        swap_in(tmp, path)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # nobody reads the directory before rank 0 has finished writing it


def _is_own_file(name: str) -> bool:
    return name == CONFIG_NAME or (
        name.startswith(_OWN_FILE_PREFIX) and name.endswith((".safetensors", ".json"))
    )


def swap_in(tmp: Path, path: Path) -> None:
    """Replace ``path`` by the finished ``tmp`` with renames (the old copy exists until the new one does)."""
    if not path.exists():
        tmp.rename(path)
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)  # left by a crashed swap of a process with this pid
    path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old)


def weight_files(source: str | Path) -> dict[str, Path]:
    """Tensor name -> file, for a ``.safetensors`` file or a directory (index, or ``model.safetensors``)."""
    from safetensors import safe_open

    source = Path(source)
    if source.is_file():
        files = [source]
    elif (source / INDEX_NAME).is_file():
        weight_map = json.loads((source / INDEX_NAME).read_text())["weight_map"]
        return {name: source / file for name, file in weight_map.items()}
    elif (source / WEIGHTS_NAME).is_file():
        files = [source / WEIGHTS_NAME]
    else:
        raise FileNotFoundError(f"{source}: no .safetensors file, {INDEX_NAME} or {WEIGHTS_NAME} there")
    names = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            names.update(dict.fromkeys(f.keys(), file))
    return names


@dataclass
class LoadReport:
    """What a load matched. Names are the model's (after ``prefix_map``)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model weights in scope that the file lacks
    unexpected: list[str] = field(default_factory=list)  # file weights in scope the model lacks
    mismatched: list[str] = field(default_factory=list)  # "name: file shape vs model shape"
    ignored: int = 0  # file weights outside ``prefix_map``

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def raise_if_incomplete(self) -> None:
        if not self.complete:
            raise ValueError(f"weights do not match the model (strict load):\n{self}")

    def __str__(self) -> str:
        def listing(title: str, names: list[str]) -> str:
            shown = "\n".join(f"    {n}" for n in names[:20])
            more = f"\n    ... and {len(names) - 20} more" if len(names) > 20 else ""
            return f"  {title} ({len(names)}):\n{shown}{more}" if names else f"  {title}: none"

        return "\n".join(
            [
                f"  loaded: {len(self.loaded)}, ignored (outside prefix_map): {self.ignored}",
                listing("missing from the file", self.missing),
                listing("unexpected in the file", self.unexpected),
                listing("shape mismatches", self.mismatched),
            ]
        )


@dataclass
class WeightPlan:
    """Which file tensor goes into which model weight; built from names and shapes only, so it can be
    checked on a meta-device model before any memory is allocated."""

    report: LoadReport
    sources: dict[str, tuple[Path, str]]  # model name -> (file, name in the file)

    def load_into(self, model: nn.Module) -> None:
        """Copy the matched tensors into the (allocated) model; a sharded weight reads only its shard."""
        from safetensors import safe_open
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        targets = model.state_dict(keep_vars=True)
        by_file: dict[Path, list[str]] = {}
        for name, (file, _) in self.sources.items():
            by_file.setdefault(file, []).append(name)
        with torch.no_grad():
            for file, names in by_file.items():
                with safe_open(file, framework="pt") as f:
                    for name in names:
                        target, key = targets[name], self.sources[name][1]
                        local = target.to_local() if isinstance(target, DTensor) else target
                        if local.is_meta:
                            raise RuntimeError(
                                f"{name} is on the meta device: allocate the model before loading"
                            )
                        if isinstance(target, DTensor):
                            shape, offset = compute_local_shape_and_global_offset(
                                target.shape, target.device_mesh, target.placements
                            )
                            rows = tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))
                            local.copy_(f.get_slice(key)[rows])
                        else:
                            local.copy_(f.get_tensor(key))


def match_weights(
    model: nn.Module, source: str | Path, prefix_map: dict[str, str] | None = None
) -> WeightPlan:
    """Match the weights in ``source`` to ``model`` by name and shape.

    ``prefix_map`` maps a prefix of the file's names to a prefix of the model's, e.g.
    ``{"": "video."}`` loads a standalone VideoDiT file into the joint model's video tower, and
    ``{"audio.": "audio."}`` takes only the audio tower from a joint checkpoint. File names under no
    mapped prefix are ignored; model weights under no mapped prefix are out of scope (kept as they
    are, not reported missing). The longest matching prefix wins. None = the identity on everything.
    """
    from safetensors import safe_open

    prefix_map = {"": ""} if prefix_map is None else prefix_map
    targets = model.state_dict(keep_vars=True)
    files = weight_files(source)
    report, sources = LoadReport(), {}
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(set(files.values())):
        with safe_open(file, framework="pt") as f:
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118
    for key, file in files.items():
        src = max((p for p in prefix_map if key.startswith(p)), key=len, default=None)
        if src is None:
            report.ignored += 1
            continue
        name = prefix_map[src] + key[len(src) :]
        if name not in targets:
            report.unexpected.append(name)
        elif shapes[key] != tuple(targets[name].shape):
            report.mismatched.append(f"{name}: file {shapes[key]} vs model {tuple(targets[name].shape)}")
        else:
            sources[name] = (file, key)
            report.loaded.append(name)
    in_scope = [n for n in targets if any(n.startswith(dst) for dst in prefix_map.values())]
    mismatched = {m.split(":", 1)[0] for m in report.mismatched}
    report.missing = [n for n in in_scope if n not in sources and n not in mismatched]
    return WeightPlan(report, sources)


def load_weights(
    model: nn.Module,
    source: str | Path,
    *,
    prefix_map: dict[str, str] | None = None,
    strict: bool = True,
) -> LoadReport:
    """Load safetensors weights (a file, or a directory with shards + index) into an allocated model,
    plain or FSDP-sharded. ``strict``: raise, before changing anything, unless every weight in scope
    matches by name and shape; otherwise load what matches and return the report of the rest."""
    plan = match_weights(model, source, prefix_map)
    if strict:
        plan.report.raise_if_incomplete()
    plan.load_into(model)
    return plan.report
