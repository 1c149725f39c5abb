"""The general-data labeling system of seed 000 §3.4.

A three-level visual hierarchy (L1 domain / L2 / L3 visual tag) where every L3 tag owns a list of audio
keywords. A caption is tagged with (L1, L2, L3, audio keyword) only when it names the visual tag *and*
one of its sounds; a clip with no tag and no speech is "silent" (e.g. a cat making no sound) and can be
screened out. Tags drive the balancing weights.

The table is data (JSON: a list of {"l1", "l2", "l3", "audio": [...]}); ``default_table()`` ships a
small one covering the paper's nine L1 domains, to be replaced by the production table.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from alive_models.caption import Caption

L1_DOMAINS = (
    "Animals",
    "Home Sounds",
    "Entertainment",
    "Environment",
    "Food",
    "Nature",
    "Sound Effects",
    "Vehicles",
    "Sports",
)


@dataclass(frozen=True)
class Label:
    """One matched visual-tag + audio-keyword pair."""

    l1: str
    l2: str
    l3: str
    audio: str


def _pattern(phrase: str) -> re.Pattern[str]:
    # Whole words, case-insensitive, plural 's'/'es' allowed on the last word.
    return re.compile(r"\b" + re.escape(phrase.lower()) + r"(?:e?s)?\b")


class LabelTable:
    """Matches captions against (visual tag, audio keyword) pairs."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = []
        for i, row in enumerate(rows):
            missing = {"l1", "l2", "l3", "audio"} - set(row)
            if missing:
                raise ValueError(f"label row {i} lacks {sorted(missing)}")
            if row["l1"] not in L1_DOMAINS:
                raise ValueError(
                    f"label row {i}: unknown L1 domain {row['l1']!r}; expected one of {L1_DOMAINS}"
                )
            self.rows.append(
                (
                    row["l1"],
                    row["l2"],
                    row["l3"],
                    _pattern(row["l3"]),
                    [(a, _pattern(a)) for a in row["audio"]],
                )
            )

    @classmethod
    def from_file(cls, path: str | Path) -> LabelTable:
        return cls(json.loads(Path(path).read_text()))

    def match(self, caption: Caption) -> list[Label]:
        """Every pair the caption names: the visual tag anywhere, the sound in the narration."""
        whole = " ".join([*caption.subjects.values(), caption.visual, caption.narration]).lower()
        narration = caption.narration.lower()
        labels = []
        for l1, l2, l3, visual, sounds in self.rows:
            if visual.search(whole):
                labels += [Label(l1, l2, l3, a) for a, pattern in sounds if pattern.search(narration)]
        return labels


def default_table() -> LabelTable:
    """The small bundled table (the nine L1 domains, a few L3 tags each)."""
    text = resources.files("alive_data").joinpath("default_labels.json").read_text()
    return LabelTable(json.loads(text))
