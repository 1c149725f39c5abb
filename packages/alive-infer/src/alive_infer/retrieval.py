"""Sound-event retrieval (seed 000 §4.4): replace a vague ``<I>`` event by the nearest canonical sound
description of the training corpus when their cosine similarity reaches tau (0.85).

The index holds L2-normalised embeddings, so inner product = cosine. FAISS (the ``retrieval`` extra,
an exact ``IndexFlatIP``) does the search when installed; otherwise numpy does the same exact search.
Both rank by score, ties by the lower index, and give the same answers (tested against each other).
Any embedding function works (``texts -> [N, D] array``); :func:`mean_pooled` turns a caption encoder
into one (the default of the pipeline: the model's own caption encoder, mean-pooled over real tokens).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from alive_models.caption import Caption, build_caption, parse_caption
from alive_models.mp4 import atomic_path

EmbedFn = Callable[[list[str]], np.ndarray]
Backend = Literal["auto", "faiss", "numpy"]
DEFAULT_TAU = 0.85
_EVENT = re.compile(r"<I>(.*?)</I>", re.S)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("an embedding is all zeros: cosine similarity is undefined")
    return np.ascontiguousarray(x / norms)


@dataclass(frozen=True)
class Replacement:
    """One ``<I>`` event replaced: what the user wrote, what it became, and their cosine."""

    original: str
    canonical: str
    score: float


class SoundEventIndex:
    """Canonical sound descriptions and their normalised embeddings, searchable by cosine."""

    def __init__(self, descriptions: Sequence[str], vectors: np.ndarray, backend: Backend = "auto") -> None:
        if len(descriptions) != len(vectors) or not descriptions:
            raise ValueError(f"{len(descriptions)} descriptions for {len(vectors)} vectors")
        self.descriptions = list(descriptions)
        self.vectors = _normalise(vectors)
        if backend == "auto":
            backend = "faiss" if faiss_available() else "numpy"
        if backend == "faiss":
            import faiss

            self._faiss = faiss.IndexFlatIP(self.vectors.shape[1])
            self._faiss.add(self.vectors)
        elif backend != "numpy":
            raise ValueError(f"unknown backend {backend!r}; choose auto, faiss or numpy")
        self.backend = backend

    @classmethod
    def build(cls, descriptions: Sequence[str], embed: EmbedFn, backend: Backend = "auto") -> SoundEventIndex:
        """Index the unique, stripped ``descriptions`` (first occurrence order) embedded by ``embed``."""
        unique = list(dict.fromkeys(d.strip() for d in descriptions if d.strip()))
        if not unique:
            raise ValueError("no sound descriptions to index")
        return cls(unique, embed(unique), backend)

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Cosine scores [Q, k] (descending) and description ids [Q, k] for query embeddings [Q, D]."""
        q = _normalise(queries)
        k = min(k, len(self.descriptions))
        if self.backend == "faiss":
            scores, ids = self._faiss.search(q, k)
            return scores, ids
        scores = q @ self.vectors.T
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, ids, axis=1), ids

    def match(
        self, events: Sequence[str], embed: EmbedFn, tau: float = DEFAULT_TAU
    ) -> list[Replacement | None]:
        """For each event, its replacement when the best cosine is >= ``tau``, else None."""
        if not events:
            return []
        scores, ids = self.search(embed(list(events)), k=1)
        out: list[Replacement | None] = []
        for event, score, i in zip(events, scores[:, 0], ids[:, 0], strict=True):
            canonical = self.descriptions[int(i)]
            keep = score >= tau and canonical != event
            out.append(Replacement(event, canonical, float(score)) if keep else None)
        return out

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        with atomic_path(directory / "vectors.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, self.vectors)
        with atomic_path(directory / "descriptions.json") as tmp:
            tmp.write_text(json.dumps(self.descriptions, ensure_ascii=False, indent=0))
        return directory

    @classmethod
    def load(cls, directory: str | Path, backend: Backend = "auto") -> SoundEventIndex:
        directory = Path(directory)
        missing = [n for n in ("vectors.npy", "descriptions.json") if not (directory / n).is_file()]
        if missing:
            raise FileNotFoundError(f"sound index {directory} lacks {missing}")
        descriptions = json.loads((directory / "descriptions.json").read_text())
        return cls(descriptions, np.load(directory / "vectors.npy"), backend)


def refine_events(
    caption: Caption, index: SoundEventIndex, embed: EmbedFn, tau: float = DEFAULT_TAU
) -> tuple[Caption, list[Replacement]]:
    """The caption with each ``<I>`` event replaced by its canonical description where cosine >= tau."""
    matches = index.match(list(caption.events), embed, tau)
    if not any(matches):
        return caption, []
    replacements = iter(matches)

    def swap(m: re.Match[str]) -> str:
        r = next(replacements)
        return f"<I>{r.canonical}</I>" if r is not None else m.group(0)

    narration = _EVENT.sub(swap, caption.narration)
    text = build_caption(caption.subjects, caption.visual, narration)
    return parse_caption(text), [r for r in matches if r is not None]


def mean_pooled(encoder) -> EmbedFn:
    """An embedding function from a :class:`alive_models.text.CaptionEncoder`: its token features
    averaged over the real (unmasked) tokens."""
    import torch

    def embed(texts: list[str]) -> np.ndarray:
        encoded = encoder.encode(texts)
        mask = encoded.mask[..., None].to(encoded.hidden.dtype)
        pooled = (encoded.hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
        return pooled.to(torch.float32).cpu().numpy()

    return embed
