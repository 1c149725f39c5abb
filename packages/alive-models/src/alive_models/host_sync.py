"""Find host synchronisations on any device, CPU included.

``torch.cuda.set_sync_debug_mode`` only exists on CUDA. :class:`HostSyncCounter` records, on any
device, the operations that make the host wait for an accelerator: reading a value
(``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``), ops whose output shape depends on the data
(``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``, ``repeat_interleave`` with tensor
repeats and no ``output_size``), value comparisons returning a Python bool (``torch.equal``,
``allclose``) and copies between the host and a device. Tests assert that a forward and backward
records none, so a sync cannot creep back into the hot path unnoticed.

    with HostSyncCounter() as syncs:
        model(inputs)
    assert not syncs.events, syncs.report()
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops that read data on the host or whose output shape depends on values.
_ALWAYS_SYNC = {
    aten._local_scalar_dense.default,  # item(), bool(), int(), float(), format()
    aten.is_nonzero.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.equal.default,
    aten.allclose.default,
    aten.bincount.default,
}
_BOOL_DTYPES = (torch.bool, torch.uint8)
_PACKAGE_ROOT = str(Path(__file__).resolve().parent)


def _is_sync(func, args, kwargs) -> bool:
    if func in _ALWAYS_SYNC:
        return True
    packet = func.overloadpacket
    if packet is aten.repeat_interleave and func._overloadname in ("Tensor", "self_Tensor"):
        return kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None)
    if packet in (aten.index, aten.index_put, aten.index_put_):
        # Boolean-mask indexing turns the mask into indices with nonzero().
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype in _BOOL_DTYPES for i in indices)
    if packet in (aten._to_copy, aten.copy_):
        src = args[1] if packet is aten.copy_ else args[0]
        dst_device = args[0].device if packet is aten.copy_ else kwargs.get("device")
        if dst_device is None or not isinstance(src, torch.Tensor):
            return False
        # Host <-> device copies; a copy between two tensors on the same side is no sync.
        return (src.device.type == "cpu") != (torch.device(dst_device).type == "cpu")
    return False


def _caller() -> str:
    """The innermost frame in alive_models (else the innermost frame outside torch) that led here."""
    frames = [f for f in traceback.extract_stack() if f.filename != __file__]
    ours = [f for f in frames if f.filename.startswith(_PACKAGE_ROOT)]
    outside_torch = [f for f in frames if "/torch/" not in f.filename]
    frame = (ours or outside_torch or frames)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} ({frame.name})"


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_sync(func, args, kwargs):
            self.events.append(f"{func} at {_caller()}")
        return func(*args, **kwargs)


class _FunctionCounter(TorchFunctionMode):
    """``tolist`` and ``numpy`` read the data without going through the dispatcher."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.tolist, torch.Tensor.numpy):
            self.events.append(f"Tensor.{func.__name__} at {_caller()}")
        return func(*args, **(kwargs or {}))


@dataclass
class HostSyncCounter:
    """Context manager recording every host synchronisation inside it (see the module docstring)."""

    events: list[str] = field(default_factory=list)

    def __enter__(self) -> HostSyncCounter:
        self._modes = (_FunctionCounter(self.events), _DispatchCounter(self.events))
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    @property
    def count(self) -> int:
        return len(self.events)

    def report(self) -> str:
        return f"{self.count} host syncs:\n" + "\n".join(f"  {e}" for e in self.events)
