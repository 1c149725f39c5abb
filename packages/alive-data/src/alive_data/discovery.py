"""The inputs of ``alive-data write``: a folder of media files or a manifest, with stable unique keys.

Folder: every file whose extension names a video container (any case, :data:`VIDEO_EXTENSIONS`) is
taken; metadata comes from a sidecar ``NAME.json`` or the caption from ``NAME.txt`` (any case).
Every other file is listed with the reason it was not taken, except the images a taken clip's
sidecar lists in ``"references"`` and the audio file it names in ``"reference_audio"`` (paths
relative to the clip), which the writer stores with it.
Whether a taken file really is media is decided when it is decoded (a ``not_media`` skip when PyAV
cannot open it).

Keys (WebDataset keys: no dots or slashes) depend only on each input's own name, so a rerun gives
the same keys: the name (the path relative to the folder without its extension, or a manifest's
``key`` / file stem) when it is already a valid key, else the sanitized name plus a short hash of
the name (``clip é`` and ``clip ü`` both sanitize to ``clip__`` but get different hashes). Inputs
that still share a key (``a.mp4`` beside ``a.mov``; one key given twice in a manifest) all get a
hash of their path appended; the same file under the same key twice is listed as a duplicate.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alive_data.shards import safe_key

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".3gp", ".flv", ".mpg"}
    | {".mpeg", ".wmv", ".ogv", ".mxf"}
)
SIDECAR_EXTENSIONS = (".json", ".txt")  # in order of preference


@dataclass(frozen=True)
class SourceItem:
    """One input clip: its key, media path and the metadata (caption included) that goes with it."""

    key: str
    path: str
    metadata: dict[str, Any]


@dataclass
class Discovery:
    """The inputs found, and every file or manifest line not taken with its reason."""

    items: list[SourceItem] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason", "detail"}

    def ignore(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.ignored.append({"path": str(path), "reason": reason, "detail": detail})


def short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def key_for(name: str) -> str:
    """A valid, stable key for ``name``: itself if valid, else sanitized + a hash of the name."""
    key = safe_key(name)
    return key if key == name else f"{key}_{short_hash(name)}"


def _unique(found: Discovery, named: list[tuple[str, str, dict[str, Any]]]) -> Discovery:
    """Items from (key, path, metadata) with every key unique (see the module docstring)."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for key, path, meta in named:
        if (key, path) in seen:
            found.ignore(path, "duplicate_input", f"listed twice under key {key!r}")
            continue
        seen.add((key, path))
        kept.append((key, path, meta))
    counts = Counter(key for key, _, _ in kept)
    for key, path, meta in kept:
        unique = key if counts[key] == 1 else f"{key}_{short_hash(path)}"
        found.items.append(SourceItem(unique, path, meta))
    return found


def _sidecar(paths: list[Path]) -> tuple[dict[str, Any] | None, str]:
    """Metadata from the preferred sidecar among ``paths``: (metadata or None, problem)."""
    by_ext = {p.suffix.lower(): p for p in paths}
    if ".json" in by_ext:
        try:
            meta = json.loads(by_ext[".json"].read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return None, f"{by_ext['.json'].name}: {e}"
        return (meta, "") if isinstance(meta, dict) else (None, f"{by_ext['.json'].name} is not an object")
    if ".txt" in by_ext:
        return {"caption": by_ext[".txt"].read_text().strip()}, ""
    return {}, ""


def scan_folder(folder: Path) -> Discovery:
    """Every video container under ``folder`` (recursively) with its sidecar metadata."""
    found = Discovery()
    groups: dict[Path, list[Path]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        groups[path.with_suffix("")].append(path)
    named = []
    for stem, paths in groups.items():
        videos = [p for p in paths if p.suffix.lower() in VIDEO_EXTENSIONS]
        sidecars = [p for p in paths if p.suffix.lower() in SIDECAR_EXTENSIONS]
        for path in paths:
            if path not in videos and path not in sidecars:
                found.ignore(path, "unknown_extension", path.suffix or "(none)")
        if not videos:
            for path in sidecars:
                found.ignore(path, "orphan_sidecar", "no video file with this name")
            continue
        meta, problem = _sidecar(sidecars)
        for video in videos:
            if meta is None:
                found.ignore(video, "malformed_sidecar", problem)
            else:
                named.append((key_for(stem.relative_to(folder).as_posix()), str(video), dict(meta)))
    used = {(Path(path).parent / ref).resolve() for _, path, meta in named for ref in _companions(meta)}
    found.ignored = [i for i in found.ignored if Path(i["path"]).resolve() not in used]
    return _unique(found, named)


def _companions(meta: dict) -> list[str]:
    """Files a sidecar names beside its clip: reference images and reference audio."""
    refs = meta.get("references")
    names = [r for r in refs if isinstance(r, str)] if isinstance(refs, list) else []
    audio = meta.get("reference_audio")
    return [*names, audio] if isinstance(audio, str) else names


def read_manifest(manifest: Path) -> Discovery:
    """JSON lines of {"path", "caption", ...metadata, optional "key"}; relative paths are resolved
    against the manifest's folder. A line that is not such an object is listed, not taken."""
    found, named = Discovery(), []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            path = Path(record.pop("path"))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            found.ignore(f"{manifest}:{number}", "invalid_manifest_line", f"{type(e).__name__}: {e}")
            continue
        path = path if path.is_absolute() else manifest.parent / path
        named.append((key_for(str(record.pop("key", path.stem))), str(path), record))
    return _unique(found, named)
