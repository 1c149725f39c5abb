"""Declarative stage filters: the hierarchical funnel of seed 000 §3.6.

A stage filter is a list of rules over the metadata (``field op value``) plus an optional
"audible" requirement (speech or a labeled sound, seed 000 §3.4). The first rule a sample fails
is its removal reason; the pipeline counts reasons (``ResumableLoader.stats()``) so a run can log
how many samples each filter removed.

The funnel presets are cumulative: CT keeps the joint-training rules and adds balance-oriented
ones, SFT adds clarity, the 1080p refiner adds a strict clarity threshold and a resolution floor.
The paper gives the criteria but not the numbers; these thresholds are our defaults (scores on the
scales our labelers write: aesthetic 0-10, quality_class 0-4, audio_quality 0-5, the rest 0-1).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alive_data.schema import lookup

_OPS = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "in": None,
}


@dataclass(frozen=True)
class Rule:
    """``field op value``: e.g. Rule("quality.aesthetic", ">=", 4.0). A missing field fails the rule."""

    field: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"unknown operator {self.op!r}; use one of {sorted(_OPS)}")

    def passes(self, meta: Mapping[str, Any]) -> bool:
        actual = lookup(dict(meta), self.field)
        if actual is None:
            return False
        if self.op == "in":
            return actual in self.value
        return bool(_OPS[self.op](actual, self.value))

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.value}"


@dataclass(frozen=True)
class StageFilter:
    """All rules must pass; ``require_audible`` also drops silent clips (no speech, no labeled sound)."""

    rules: tuple[Rule, ...] = ()
    require_audible: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StageFilter:
        """{"rules": [["quality.aesthetic", ">=", 4.0], ...], "require_audible": bool} or {"preset": name}."""
        if "preset" in config:
            return funnel(config["preset"])
        rules = tuple(
            Rule(*r) if isinstance(r, (list, tuple)) else Rule(**r) for r in config.get("rules", ())
        )
        return cls(rules, bool(config.get("require_audible", False)))

    def reason(self, meta: Mapping[str, Any]) -> str | None:
        """None when the sample is kept, else the first failed rule as text."""
        for rule in self.rules:
            if not rule.passes(meta):
                return f"filter: {rule}"
        if self.require_audible and not (meta.get("speaking") or meta.get("labels")):
            return "filter: silent"
        return None


_JOINT = (
    Rule("quality.ocr", "<=", 0.05),
    Rule("quality.motion", ">=", 0.1),
    Rule("quality.aesthetic", ">=", 4.0),
    Rule("quality.quality_class", ">=", 2),
    Rule("quality.audio_quality", ">=", 2.5),
    Rule("quality.av_coherence", ">=", 0.3),
)
_CT = (*_JOINT, Rule("quality.av_coherence", ">=", 0.5))
_SFT = (*_CT, Rule("quality.clarity", ">=", 0.5))
_REFINER = (*_SFT, Rule("quality.clarity", ">=", 0.85), Rule("height", ">=", 1080))

FUNNEL: dict[str, StageFilter] = {
    "none": StageFilter(),
    "joint_480p": StageFilter(_JOINT),
    "ct_480p": StageFilter(_CT, require_audible=True),
    "sft_480p": StageFilter(_SFT, require_audible=True),
    "refiner_1080p": StageFilter(_REFINER, require_audible=True),
}


def funnel(name: str) -> StageFilter:
    """The preset filter of a training stage."""
    try:
        return FUNNEL[name]
    except KeyError:
        raise KeyError(f"unknown funnel stage {name!r}; choose one of {sorted(FUNNEL)}") from None
