"""Weights are never downloaded: every loader takes a local directory, checked here."""

from __future__ import annotations

from pathlib import Path


def local_model_dir(path: str | Path, required: str | None = "config.json") -> Path:
    """``path`` as a Path if it is a local directory holding ``required``; a clear error otherwise."""
    path = Path(path)
    if not path.is_dir() or (required is not None and not (path / required).is_file()):
        missing = f" (no {required})" if required is not None else ""
        raise FileNotFoundError(
            f"{path} is not a local Hugging Face model directory{missing}; weights are never downloaded"
        )
    return path
