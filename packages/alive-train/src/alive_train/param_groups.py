"""Parameter groups: regex -> learning rate, first match wins; ``lr: null`` or unmatched-and-frozen
parameters get ``requires_grad = False`` and stay out of the optimizer.

Names are canonical: wrapper segments (activation checkpointing, ``torch.compile``) are dropped, so
patterns read like the model's own state-dict keys (``video.dual_blocks.0...``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from alive_train.config import OptimConfig

_WRAPPER_SEGMENTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def canonical_name(name: str) -> str:
    """The parameter's name without wrapper segments (what state dicts and patterns use)."""
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


@dataclass
class ResolvedGroup:
    """One row of the parameter-group table."""

    name: str
    pattern: str | None  # None: the default group for unmatched parameters
    lr: float | None  # None: frozen
    weight_decay: float
    names: list[str] = field(default_factory=list)
    params: list[nn.Parameter] = field(default_factory=list)
    numel: int = 0

    @property
    def frozen(self) -> bool:
        return self.lr is None


class ParamGroupError(ValueError):
    """A pattern that matches nothing, an invalid pattern or parameters no group names."""


def resolve_param_groups(model: nn.Module, config: OptimConfig) -> list[ResolvedGroup]:
    """Assign every parameter of ``model`` to the first group whose pattern it matches.

    Sets ``requires_grad`` (False for frozen groups) as a side effect. Raises :class:`ParamGroupError`
    for a pattern that matches no parameter at all, and for unmatched parameters when
    ``config.unmatched == "error"``. A pattern that only matches parameters an earlier group took is
    not an error (first match wins), but it gets a count of zero in the table.
    """
    groups: list[ResolvedGroup] = []
    compiled = []
    for i, g in enumerate(config.groups):
        try:
            compiled.append(re.compile(g.pattern))
        except re.error as e:
            raise ParamGroupError(f"optim.groups.{i}.pattern {g.pattern!r}: {e}") from e
        wd = config.weight_decay if g.weight_decay is None else g.weight_decay
        groups.append(ResolvedGroup(g.name or g.pattern, g.pattern, g.lr, wd))
    default = ResolvedGroup(
        "default" if config.unmatched == "default" else "unmatched (frozen)",
        None,
        config.default_lr if config.unmatched == "default" else None,
        config.weight_decay,
    )
    ever_matched = [False] * len(groups)
    unmatched: list[str] = []
    for raw_name, param in model.named_parameters():
        name = canonical_name(raw_name)
        hits = [i for i, pattern in enumerate(compiled) if pattern.search(name)]
        for i in hits:
            ever_matched[i] = True
        target = groups[hits[0]] if hits else default
        if not hits:
            unmatched.append(name)
        target.names.append(name)
        target.params.append(param)
        target.numel += param.numel()
    empty = [config.groups[i].pattern for i, hit in enumerate(ever_matched) if not hit]
    if empty:
        raise ParamGroupError(f"parameter-group patterns that match no parameter: {empty}")
    if unmatched and config.unmatched == "error":
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        raise ParamGroupError(
            f"{len(unmatched)} parameters match no group ({shown}); add a group or set "
            "optim.unmatched to 'frozen' or 'default'"
        )
    if default.names:
        groups.append(default)
    for group in groups:
        for param in group.params:
            param.requires_grad_(not group.frozen)
    return groups


def optimizer_groups(groups: list[ResolvedGroup]) -> list[dict]:
    """``torch.optim`` parameter groups of the trainable groups (frozen and empty ones left out)."""
    return [
        {"params": g.params, "lr": g.lr, "weight_decay": g.weight_decay, "name": g.name}
        for g in groups
        if not g.frozen and g.params
    ]


def format_table(groups: list[ResolvedGroup]) -> str:
    """The resolved table: group, pattern, learning rate, parameter count."""
    rows = [("group", "pattern", "lr", "params")]
    for g in groups:
        lr = "frozen" if g.frozen else f"{g.lr:.3g}"
        rows.append((g.name, g.pattern or "(unmatched)", lr, f"{g.numel:,}"))
    total = sum(g.numel for g in groups)
    trainable = sum(g.numel for g in groups if not g.frozen)
    rows.append(("total", "", f"trainable {trainable:,}", f"{total:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_records(groups: list[ResolvedGroup]) -> list[dict]:
    """The table as JSON-ready records (logged as an MLflow artifact)."""
    return [
        {"group": g.name, "pattern": g.pattern, "lr": g.lr, "params": g.numel, "tensors": len(g.names)}
        for g in groups
    ]
