"""Parameter counts of a joint model, per tower and per part.

How the parts add up: ``total = video + audio + fusion``. Each tower's count includes its own
embeddings (patch/text/timestep projections for video; transcript embedding, input projection and
timestep embedding for audio) and its head; ``embeddings`` repeats the two towers' embedding counts
as a convenience. ``fusion`` is every cross-modal weight of the fusion kind in use (TA-CrossAttn:
both directions and the shared timestep projections; CCL: the CCA modules with their context tokens;
UniTalking: the joint-attention modules), listed per module list; none of it is counted in a tower.
The audio tower's reference-audio branch (voice cloning), when built, is listed as
``audio.reference_audio`` and not again under its embeddings or blocks.
"""

from __future__ import annotations

from torch import nn

from alive_models.joint import JointAVDiT

# Submodules of a tower that are its transformer body or its head; everything else is embedding.
_BODY = {"dual_blocks", "single_blocks", "blocks"}
_HEAD = {"final"}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_summary(model: JointAVDiT) -> dict[str, object]:
    """{"video", "audio", "fusion", "embeddings", "total": int, "parts": {"tower.part": int}}."""
    parts: dict[str, int] = {}
    for tower_name in ("video", "audio"):
        for name, p in getattr(model, tower_name).named_parameters():
            child_name = name.split(".", 1)[0]
            if "reference_" in name:
                key = f"{tower_name}.reference_audio"
            elif child_name in _BODY:
                key = f"{tower_name}.{child_name}"
            elif child_name in _HEAD:
                key = f"{tower_name}.head"
            else:
                key = f"{tower_name}.embeddings"
            parts[key] = parts.get(key, 0) + p.numel()
    for child_name, child in model.fusion.named_children():
        if not _count(child):
            continue
        key = "fusion.time_modulation" if child_name.endswith("time_mod") else f"fusion.{child_name}"
        parts[key] = parts.get(key, 0) + _count(child)

    video, audio, fusion = _count(model.video), _count(model.audio), _count(model.fusion)
    return {
        "video": video,
        "audio": audio,
        "fusion": fusion,
        "embeddings": parts.get("video.embeddings", 0) + parts.get("audio.embeddings", 0),
        "total": video + audio + fusion,
        "parts": parts,
    }


def format_summary(name: str, summary: dict[str, object]) -> str:
    """A human-readable table of :func:`parameter_summary`."""

    def fmt(n: int) -> str:
        return f"{n / 1e9:8.3f} B" if n >= 1e8 else f"{n / 1e6:8.3f} M"

    lines = [f"preset {name}", f"{'part':<28}{'parameters':>14}"]
    parts: dict[str, int] = summary["parts"]  # type: ignore[assignment]
    for tower in ("video", "audio", "fusion"):
        lines.append(f"{tower:<28}{fmt(summary[tower]):>14}")  # type: ignore[arg-type]
        lines += [
            f"  {k.split('.', 1)[1]:<26}{fmt(v):>14}" for k, v in parts.items() if k.startswith(tower + ".")
        ]
    lines.append(f"{'total':<28}{fmt(summary['total']):>14}")  # type: ignore[arg-type]
    return "\n".join(lines)
