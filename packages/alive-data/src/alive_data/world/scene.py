"""A scene: who is there, what they say and what happens when; sampled from a seed, or built by hand.

Times are in audio latents (``config.latent_rate`` per second): every sound starts and ends on a
latent boundary. The picture follows from the scene in physical time (``render``), the sound too
(``sound``), and so does the caption (seed 000 eq. 3), written in narration order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from alive_data.world.config import AMBIENT_DESCRIPTION, AMBIENTS, DEGRADATIONS, SHAPES, WorldConfig
from alive_models.caption import build_caption

EVENT_GAP = 2  # latents of silence between two sounds of one kind, so each is heard on its own


@dataclass(frozen=True)
class Subject:
    """A coloured shape in its lane. ``x`` is its left edge (base pixels); a subject with ``speed``
    (pixels/s) moves and touches a wall exactly once, at its hit event."""

    id: str
    colour: str
    shape: str
    voice: str
    lane: int
    x: float
    speed: float = 0.0


@dataclass(frozen=True)
class Utterance:
    """``words`` said by ``subject`` from latent ``start``: letters back to back, a gap between words."""

    subject: str
    words: tuple[str, ...]
    start: int

    def letters(self, config: WorldConfig) -> list[tuple[str, int]]:
        """(letter, start latent) of every letter, in order."""
        out, at = [], self.start
        for word in self.words:
            for letter in word:
                out.append((letter, at))
                at += config.letter_latents
            at += config.word_gap_latents
        return out

    def word_spans(self, config: WorldConfig) -> list[tuple[int, int]]:
        """[start, end) latents of each word: the mouth is open exactly over these."""
        spans, at = [], self.start
        for word in self.words:
            spans.append((at, at + len(word) * config.letter_latents))
            at = spans[-1][1] + config.word_gap_latents
        return spans

    def end(self, config: WorldConfig) -> int:
        return self.word_spans(config)[-1][1]


@dataclass(frozen=True)
class Event:
    """A sound event at latent ``start``: ``hit`` (the subject touches the ``side`` wall, which lights
    up) or ``flash`` (the subject lights up). Light and sound last ``config.event_latents``."""

    kind: str
    subject: str
    start: int
    side: str | None = None  # "left" / "right" for hits

    def span(self, config: WorldConfig) -> tuple[int, int]:
        return self.start, self.start + config.event_latents


@dataclass(frozen=True)
class Scene:
    """Everything a clip shows and sounds; ``validate`` checks it against a config."""

    subjects: tuple[Subject, ...]
    background: str
    ambient: str
    utterances: tuple[Utterance, ...] = ()
    events: tuple[Event, ...] = ()
    degradation: str | None = None

    def subject(self, sid: str) -> Subject:
        return next(s for s in self.subjects if s.id == sid)

    def hit_of(self, sid: str) -> Event | None:
        return next((e for e in self.events if e.kind == "hit" and e.subject == sid), None)

    def x_at(self, subject: Subject, seconds: np.ndarray, config: WorldConfig) -> np.ndarray:
        """Left edge (base pixels) at the given times: a V in time around the wall contact."""
        hit = self.hit_of(subject.id)
        if hit is None:
            return np.full_like(seconds, subject.x, dtype=np.float64)
        away = 1.0 if hit.side == "left" else -1.0
        return subject.x + away * subject.speed * np.abs(seconds - config.seconds(hit.start))

    def validate(self, config: WorldConfig) -> None:
        """Raise ValueError when the scene breaks the world's rules (it would render a lie)."""
        ids = [s.id for s in self.subjects]
        problems = []
        if not self.subjects or len(set(ids)) != len(ids) or len({s.lane for s in self.subjects}) != len(ids):
            problems.append("subjects need distinct ids and lanes")
        if len({s.colour for s in self.subjects}) != len(ids):
            problems.append("two subjects share a colour (colour is identity in this world)")
        for s in self.subjects:
            if s.colour not in config.palette or s.shape not in SHAPES or s.lane >= config.max_subjects:
                problems.append(f"{s.id}: unknown colour/shape or lane out of range")
            if s.voice not in dict(config.voice_bases):
                problems.append(f"{s.id}: unknown voice {s.voice!r}")
            times = np.arange(config.num_frames + 1) / config.fps
            xs = self.x_at(s, times, config)
            lo, hi = config.wall_width, config.width - config.wall_width - config.subject_size
            if xs.min() < lo - 1e-6 or xs.max() > hi + 1e-6:
                problems.append(f"{s.id} leaves the room ({xs.min():.1f}..{xs.max():.1f} px)")
            if (s.speed > 0) != (self.hit_of(s.id) is not None):
                problems.append(f"{s.id}: a subject moves exactly when it has a hit event")
        if self.background not in config.backgrounds or self.ambient not in AMBIENTS:
            problems.append("unknown background or ambient")
        if self.degradation not in (None, *DEGRADATIONS):
            problems.append(f"unknown degradation {self.degradation!r}")
        spans = [(u.start, u.end(config)) for u in self.utterances]
        for u in self.utterances:
            if u.subject not in ids or not u.words or any(set(w) - set(config.alphabet) for w in u.words):
                problems.append(f"utterance {u} has an unknown speaker or letter")
        for e in self.events:
            if e.subject not in ids or e.kind not in ("hit", "flash"):
                problems.append(f"event {e} has an unknown subject or kind")
            if (e.kind == "hit") != (e.side in ("left", "right")):
                problems.append(f"event {e}: hits have a side, flashes none")
            if e.kind == "hit" and self.subject(e.subject).speed <= 0:
                problems.append(f"event {e}: only a moving subject hits a wall")
            if e.kind == "hit":
                s = self.subject(e.subject)
                contact = config.wall_width if e.side == "left" else config.width - config.wall_width
                edge = s.x if e.side == "left" else s.x + config.subject_size
                if abs(edge - contact) > 1e-6:
                    problems.append(f"event {e}: {s.id} is not at the {e.side} wall when it hits")
        for kind in ("hit", "flash"):
            same = sorted(e.span(config) for e in self.events if e.kind == kind)
            if any(a[1] + EVENT_GAP > b[0] for a, b in pairwise(same)):
                problems.append(f"two {kind} sounds less than {EVENT_GAP} latents apart")
            spans += same
        if any(a[0] < 0 or a[1] > config.speech_latents for a in spans):
            problems.append(f"a sound falls outside latents 0..{config.speech_latents}")
        turns = sorted((u.start, u.end(config)) for u in self.utterances)
        if any(a[1] > b[0] for a, b in pairwise(turns)):
            problems.append("two subjects speak at once")
        if problems:
            raise ValueError("invalid scene: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(
            subjects=tuple(Subject(**s) for s in data["subjects"]),
            background=data["background"],
            ambient=data["ambient"],
            utterances=tuple(
                Utterance(u["subject"], tuple(u["words"]), u["start"]) for u in data.get("utterances", ())
            ),
            events=tuple(Event(**e) for e in data.get("events", ())),
            degradation=data.get("degradation"),
        )


def describe_subject(subject: Subject) -> str:
    """The caption's registry entry: appearance and voice (seed 000 §3.2: acoustic profile too)."""
    article = "An" if subject.colour[0] in "aeiou" else "A"
    return f"{article} {subject.colour} {subject.shape} with a {subject.voice} voice."


def narration_items(scene: Scene, config: WorldConfig) -> list[tuple[int, str]]:
    """(start latent, sentence) of everything that happens, for the narration."""
    words = config.event_words
    items = [(u.start, f"{u.subject} says <W>{' '.join(u.words)}</W>.") for u in scene.utterances]
    for e in scene.events:
        if e.kind == "hit":
            text = f"{e.subject} slides into the {e.side} wall <I>{words['hit']}</I> and bounces back."
        else:
            text = f"{e.subject} flashes <I>{words['flash']}</I>."
        items.append((e.start, text))
    return sorted(items, key=lambda item: item[0])


def scene_caption(scene: Scene, config: WorldConfig) -> str:
    """The structured caption (seed 000 eq. 3): registry, room, then the story in time order."""
    subjects = {s.id: describe_subject(s) for s in scene.subjects}
    visual = f"A {scene.background} room with grey walls on the left and right."
    story = [text for _, text in narration_items(scene, config)]
    quiet = {s.id for s in scene.subjects} - {u.subject for u in scene.utterances}
    quiet -= {e.subject for e in scene.events}
    story += [f"{sid} stays still." for sid in sorted(quiet)]
    ambient = f"The overall environment sound is {AMBIENT_DESCRIPTION[scene.ambient]}."
    return build_caption(subjects, visual, " ".join([ambient, *story]))


def sample_scene(rng: np.random.Generator, config: WorldConfig) -> Scene:
    """A random valid scene: subjects in lanes, maybe moving into a wall, flashing, speaking in turns."""
    palette, voices = list(config.palette), [v for v, _ in config.voice_bases]
    n = int(rng.integers(config.min_subjects, config.max_subjects + 1))
    lanes = sorted(rng.permutation(config.max_subjects)[:n].tolist())
    colours = rng.permutation(len(palette))[:n]
    voice_order = rng.permutation(len(voices))
    last = config.speech_latents - config.event_latents  # latest start of an event sound
    subjects, events = [], []
    for i, lane in enumerate(lanes):
        sid = f"Subject{i + 1}"
        common = dict(
            id=sid,
            colour=palette[colours[i]],
            shape=str(rng.choice(SHAPES)),
            voice=voices[voice_order[i % len(voices)]],
            lane=lane,
        )
        lo, hi = config.wall_width, config.width - config.wall_width - config.subject_size
        start = _free_start(rng, events, "hit", 3, last - 3, config)
        if start is not None and rng.random() < config.hit_prob:
            t, total = config.seconds(start), config.duration
            speed = float(rng.uniform(0.5, 1.0)) * (hi - lo) / max(t, total - t)
            side = str(rng.choice(["left", "right"]))
            subjects.append(Subject(**common, x=float(lo if side == "left" else hi), speed=speed))
            events.append(Event("hit", sid, start, side))
        else:
            subjects.append(Subject(**common, x=float(rng.integers(lo, hi + 1))))
    for s in subjects:
        start = _free_start(rng, events, "flash", 1, last, config)
        if start is not None and rng.random() < config.flash_prob:
            events.append(Event("flash", s.id, start))
    utterances = (
        _sample_speech(rng, config, [s.id for s in subjects]) if rng.random() < config.speaking_prob else []
    )
    degradation = None
    if rng.random() < config.degraded_fraction:
        degradation = str(rng.choice(DEGRADATIONS))
    scene = Scene(
        subjects=tuple(subjects),
        background=str(rng.choice(list(config.backgrounds))),
        ambient=str(rng.choice(AMBIENTS)),
        utterances=tuple(utterances),
        events=tuple(sorted(events, key=lambda e: e.start)),
        degradation=degradation,
    )
    scene.validate(config)
    return scene


def _free_start(
    rng: np.random.Generator, events: list[Event], kind: str, lo: int, hi: int, config: WorldConfig
) -> int | None:
    """A start latent in [lo, hi] at least EVENT_GAP latents from every ``kind`` sound; None if none."""
    taken = [e.span(config) for e in events if e.kind == kind]
    free = [
        t
        for t in range(lo, hi + 1)
        if all(t + config.event_latents + EVENT_GAP <= a or t >= b + EVENT_GAP for a, b in taken)
    ]
    return int(rng.choice(free)) if free else None


def _sample_speech(rng: np.random.Generator, config: WorldConfig, ids: list[str]) -> list[Utterance]:
    """One or two turns (different speakers), each of 1..max_words words, all inside the clip."""
    turns = int(rng.integers(1, min(2, len(ids)) + 1))
    speakers = rng.permutation(ids)[:turns]
    at = int(rng.integers(1, 6))
    out = []
    for speaker in speakers:
        words: list[str] = []
        for _ in range(int(rng.integers(1, config.max_words + 1))):
            word = str(rng.choice(config.words))
            trial = Utterance(str(speaker), (*words, word), at)
            if trial.end(config) > config.speech_latents:
                break
            words.append(word)
        if not words:
            break
        out.append(Utterance(str(speaker), tuple(words), at))
        at = out[-1].end(config) + config.turn_gap_latents
    return out
