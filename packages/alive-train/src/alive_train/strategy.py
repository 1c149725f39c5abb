"""The training strategy: Lightning's ``ModelParallelStrategy`` as pure FSDP2 (every rank data-parallel,
no tensor parallelism), with checkpoints that are sharded, atomic and carry the EMA.

The model's parallelism itself is ``alive_models.parallel.parallelize_joint``, applied by the
LightningModule's ``configure_model``; this class only sizes the mesh and reads/writes checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from alive_train.checkpoint import INFO_NAME, META_NAME, is_complete, partial_path, publish

# Keys of Lightning's checkpoint dict that the LightningModule fills for this strategy.
SHARDED_EXTRA = "alive_sharded"  # {name: {key: tensor}}: saved with DCP like the model (the EMA)
INFO = "alive_info"  # JSON-able facts for the export (written as alive.json)


class AliveStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1)``, world known at launch.

    Saving: every rank writes its shards of the model, optimizer and EMA with
    ``torch.distributed.checkpoint`` into a ``.partial`` directory; rank 0 adds ``meta.pt`` and
    ``alive.json`` and renames it into place. Loading reads the shards back in place, the EMA included.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=True, **kwargs
        )

    def setup_environment(self) -> None:
        # Lightning's "auto" would put the GPUs of a node into tensor parallelism; we want pure FSDP2.
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:

        if storage_options is not None:
            raise TypeError("AliveStrategy.save_checkpoint takes no storage_options")
        final = Path(self.broadcast(str(filepath)))
        partial = partial_path(final)
        if self.global_rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        self.barrier()
        tensors: dict[str, Any] = {"state_dict": checkpoint.pop("state_dict")}
        for i, state in enumerate(checkpoint.pop("optimizer_states", [])):
            tensors[f"optimizer_{i}"] = state
        tensors.update(checkpoint.pop(SHARDED_EXTRA, {}))
        info = checkpoint.pop(INFO, {})
        write_shards(tensors, partial)
        self.barrier()  # every rank's shards are on disk before the checkpoint is published
        if self.global_rank == 0:
            torch.save(checkpoint, partial / META_NAME)
            (partial / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
            publish(partial, final)
        self.barrier()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(str(checkpoint_path)))
        if not is_complete(path):
            raise FileNotFoundError(f"{path} is not a complete checkpoint")
        model_state = get_model_state_dict(self.model)
        state: dict[str, Any] = {"state_dict": model_state}
        optimizers = {f"optimizer_{i}": opt for i, opt in enumerate(self.optimizers)}
        for key, opt in optimizers.items():
            state[key] = get_optimizer_state_dict(self.model, opt)
        extra = getattr(self.lightning_module, "sharded_extra_state", dict)()
        state.update(extra)  # loaded in place into the module's own tensors
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(self.model, model_state)
        for key, opt in optimizers.items():
            set_optimizer_state_dict(self.model, opt, state[key])
        return torch.load(path / META_NAME, map_location="cpu", weights_only=True)


def write_shards(tensors: dict[str, Any], path: Path) -> None:
    """Every rank writes its shards of ``tensors`` (a module-level function: tests inject failures here)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(tensors, checkpoint_id=str(path))
