"""Starting weights of a stage (``init_from``) through ``alive_models.pretrained``: each source's
safetensors matched to the (sharded) model by name and shape under its ``prefix_map``, a report of
what was loaded, missing and unexpected, then every rank reads only its own shards' rows.

A source is an export directory (``JointAVDiT.save_pretrained``'s layout: ``model.safetensors`` or
shards + index) or a ``.safetensors`` file. ``prefix_map`` maps file prefixes to model prefixes and
scopes the load: ``{"audio.": "audio."}`` takes only the audio tower of a joint export,
``{"": "video."}`` loads a bare VideoDiT file into the video tower; an empty map is the identity on
everything. Unexpected keys (in scope in the file, not in the model) fail unless the source allows
them; shape mismatches always fail; missing keys are reported (a fresh fusion is expected to be
missing when the towers come from separate checkpoints). Everything is checked for every source
before any weight is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from alive_models.pretrained import WeightPlan, match_weights
from alive_train.config import InitSource


@dataclass
class InitReport:
    """What ``init_from`` loaded: per source, the tensors taken and the unexpected ones; then what the
    model got from no source (kept as initialised)."""

    loaded: dict[str, int] = field(default_factory=dict)  # source path -> tensors taken
    unexpected: dict[str, list[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"init_from {path}: {n} tensors" for path, n in self.loaded.items()]
        for path, keys in self.unexpected.items():
            lines.append(f"  unexpected in {path} (allowed, ignored): {len(keys)}, e.g. {keys[:3]}")
        if self.missing:
            prefixes = sorted({".".join(k.split(".")[:2]) for k in self.missing})
            lines.append(f"  missing (kept as initialised): {len(self.missing)} tensors under {prefixes}")
        return "\n".join(lines)


def plan_init(model: nn.Module, sources: list[InitSource]) -> tuple[list[WeightPlan], InitReport]:
    """Match every source (names and shapes only: no weights read, works on a meta model) and raise
    ``ValueError`` on mismatched shapes or disallowed unexpected keys, naming the source."""
    plans, report, errors = [], InitReport(), []
    taken: set[str] = set()
    for source in sources:
        try:
            plan = match_weights(model, source.path, dict(source.prefix_map) or None)
        except (OSError, ValueError) as e:
            raise ValueError(f"init_from {source.path}: {e}") from e
        r = plan.report
        if r.mismatched:
            errors.append(
                f"{source.path}: {len(r.mismatched)} tensors have the wrong shape, e.g. {r.mismatched[0]}"
            )
        if r.unexpected:
            if source.allow_unexpected:
                report.unexpected[source.path] = list(r.unexpected)
            else:
                errors.append(
                    f"{source.path}: unexpected keys (set allow_unexpected on the source to ignore them): "
                    f"{len(r.unexpected)} such as {r.unexpected[:3]}"
                )
        report.loaded[source.path] = len(r.loaded)
        taken.update(r.loaded)
        plans.append(plan)
    if errors:
        raise ValueError("init_from: " + "; ".join(errors))
    report.missing = sorted(set(model.state_dict()) - taken)
    return plans, report


def load_init_weights(model: nn.Module, sources: list[InitSource]) -> InitReport:
    """Load ``sources`` into the allocated ``model`` (plain or FSDP-sharded; later sources override
    earlier ones for the same key). Every rank matches and reads its own shards: no broadcast."""
    plans, report = plan_init(model, sources)
    for plan in plans:
        plan.load_into(model)
    return report
