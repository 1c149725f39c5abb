"""The structured caption of seed 000 §3.2 (eq. 3):

    Subjects: Subject1: <appearance and voice>. Subject2: ... Visual: <scene> Narration: <story>

The narration interleaves ``<W>verbatim speech</W>`` and ``<I>sound event</I>`` tags with the action.
:func:`parse_caption` validates strictly and raises :class:`CaptionError` naming the character
position; :func:`check_caption` is the lenient mode for data filtering and returns every problem
instead. :func:`build_caption` is the inverse of parsing (round-trip tested).

The speaker of a ``<W>`` tag is the first SubjectN named in the same sentence before the tag
("Subject1 points to Subject2 and says <W>...</W>" -> Subject1); None when the sentence names none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SECTIONS = ("Subjects:", "Visual:", "Narration:")
TAGS = {"W": "speech", "I": "event"}
_TAG = re.compile(r"<(/?)([WI])>")
_SUBJECT_ID = re.compile(r"\bSubject\d+\b")
_SUBJECT_ENTRY = re.compile(r"\b(Subject\d+):")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


@dataclass(frozen=True)
class CaptionProblem:
    """One thing wrong with a caption, at character ``position`` of the text."""

    position: int
    message: str

    def __str__(self) -> str:
        return f"at character {self.position}: {self.message}"


class CaptionError(ValueError):
    """A malformed structured caption. ``problems`` lists everything found (first one in the message)."""

    def __init__(self, text: str, problems: list[CaptionProblem]) -> None:
        self.problems = problems
        first = problems[0]
        snippet = text[max(0, first.position - 20) : first.position + 20].replace("\n", " ")
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"malformed caption {first}{more}; near {snippet!r}")


@dataclass(frozen=True)
class Speech:
    """One ``<W>`` span: what is said and by whom (a registered subject id, or None)."""

    text: str
    speaker: str | None


@dataclass(frozen=True)
class Caption:
    """A parsed caption. ``narration`` keeps its tags; transcript and events are derived from it."""

    subjects: dict[str, str]
    visual: str
    narration: str
    transcript: tuple[Speech, ...] = field(default=(), compare=False)
    events: tuple[str, ...] = field(default=(), compare=False)

    @property
    def speech_text(self) -> str:
        """All speech in order, space-joined: the AudioDiT's transcript input."""
        return " ".join(s.text for s in self.transcript)

    @property
    def speaking(self) -> bool:
        return bool(self.transcript)

    def render(self) -> str:
        return build_caption(self.subjects, self.visual, self.narration)


def build_caption(subjects: dict[str, str], visual: str, narration: str) -> str:
    """Assemble eq. 3 from parts; raises ValueError on parts that would not parse back the same."""
    for sid, desc in subjects.items():
        if not re.fullmatch(r"Subject\d+", sid):
            raise ValueError(f"subject id {sid!r} must look like Subject1")
        _check_plain(f"description of {sid}", desc)
        if _SUBJECT_ENTRY.search(desc):
            raise ValueError(f"description of {sid} contains a 'SubjectN:' entry marker")
    _check_plain("visual", visual)
    if any(s in narration for s in SECTIONS):
        raise ValueError("narration contains a section header")
    entries = " ".join(f"{sid}: {desc.strip()}" for sid, desc in subjects.items())
    text = f"Subjects: {entries} Visual: {visual.strip()} Narration: {narration.strip()}"
    parse_caption(text)  # the builder never produces what the parser rejects
    return text


def _check_plain(name: str, text: str) -> None:
    if _TAG.search(text):
        raise ValueError(f"{name} contains a <W>/<I> tag; tags belong in the narration")
    if any(s in text for s in SECTIONS):
        raise ValueError(f"{name} contains a section header")


def parse_caption(text: str) -> Caption:
    """Strict parse: a :class:`Caption`, or :class:`CaptionError` naming the position of the first problem."""
    caption, problems = _parse(text)
    if problems:
        raise CaptionError(text, problems)
    assert caption is not None
    return caption


def check_caption(text: str) -> tuple[Caption | None, list[CaptionProblem]]:
    """Lenient parse for data filtering: (caption or None, every problem found). Never raises."""
    return _parse(text)


def _section_spans(text: str, problems: list[CaptionProblem]) -> dict[str, tuple[int, int]] | None:
    starts: list[int] = []
    search_from = 0
    for header in SECTIONS:
        at = text.find(header, search_from)
        if at < 0:
            where = text.find(header)
            if where >= 0:
                problems.append(CaptionProblem(where, f"section {header!r} is out of order"))
            else:
                problems.append(CaptionProblem(len(text), f"missing section {header!r}"))
            return None
        starts.append(at)
        search_from = at + len(header)
    if text[: starts[0]].strip():
        problems.append(CaptionProblem(0, "text before 'Subjects:'"))
    for header, at in zip(SECTIONS[:2], starts[:2], strict=True):
        again = text.find(header, at + len(header))
        if again >= 0:
            problems.append(CaptionProblem(again, f"section {header!r} appears twice"))
    ends = [*starts[1:], len(text)]
    return {h: (s + len(h), e) for h, s, e in zip(SECTIONS, starts, ends, strict=True)}


def _parse(text: str) -> tuple[Caption | None, list[CaptionProblem]]:
    problems: list[CaptionProblem] = []
    if not isinstance(text, str):
        return None, [CaptionProblem(0, f"caption must be a string, got {type(text).__name__}")]
    spans = _section_spans(text, problems)
    if spans is None:
        return None, problems

    for header, (start, end) in spans.items():
        if not text[start:end].strip():
            problems.append(CaptionProblem(start, f"section {header!r} is empty"))
        if header != "Narration:":
            for m in _TAG.finditer(text, start, end):
                problems.append(CaptionProblem(m.start(), f"tag {m.group(0)} outside the narration"))

    subjects = _parse_subjects(text, *spans["Subjects:"], problems)
    for header in ("Visual:", "Narration:"):
        start, end = spans[header]
        for m in _SUBJECT_ID.finditer(text, start, end):
            if subjects and m.group(0) not in subjects:
                problems.append(CaptionProblem(m.start(), f"unknown subject {m.group(0)} (not in Subjects)"))

    n_start, n_end = spans["Narration:"]
    transcript, events = _parse_tags(text, n_start, n_end, problems)
    if problems:
        return None, problems
    v_start, v_end = spans["Visual:"]
    caption = Caption(
        subjects=subjects,
        visual=text[v_start:v_end].strip(),
        narration=text[n_start:n_end].strip(),
        transcript=tuple(transcript),
        events=tuple(events),
    )
    return caption, problems


def _parse_subjects(text: str, start: int, end: int, problems: list[CaptionProblem]) -> dict[str, str]:
    entries = list(_SUBJECT_ENTRY.finditer(text, start, end))
    if not entries:
        if text[start:end].strip():
            problems.append(CaptionProblem(start, "Subjects has no 'SubjectN: description' entries"))
        return {}
    if text[start : entries[0].start()].strip():
        problems.append(CaptionProblem(start, "text before the first SubjectN entry"))
    subjects: dict[str, str] = {}
    for m, nxt in zip(entries, [*entries[1:], None], strict=True):
        sid = m.group(1)
        desc = text[m.end() : nxt.start() if nxt else end].strip()
        if sid in subjects:
            problems.append(CaptionProblem(m.start(), f"{sid} is registered twice"))
        if not desc:
            problems.append(CaptionProblem(m.end(), f"{sid} has an empty description"))
        subjects[sid] = desc
    return subjects


def _advance_speaker(segment: str, current: str | None) -> str | None:
    """The subject a following <W> belongs to, after reading a plain-text ``segment``."""
    ends = list(_SENTENCE_END.finditer(segment))
    if ends:  # a new sentence starts: forget the previous one's subject
        segment, current = segment[ends[-1].end() :], None
    found = _SUBJECT_ID.search(segment)
    return found.group(0) if found else current


def _parse_tags(
    text: str, start: int, end: int, problems: list[CaptionProblem]
) -> tuple[list[Speech], list[str]]:
    transcript: list[Speech] = []
    events: list[str] = []
    open_tag: re.Match[str] | None = None
    plain_from, speaker = start, None
    for m in _TAG.finditer(text, start, end):
        closing, kind = m.group(1) == "/", m.group(2)
        if not closing:
            if open_tag is not None:
                where = open_tag.start()
                problems.append(
                    CaptionProblem(
                        m.start(), f"<{kind}> nested inside <{open_tag.group(2)}> opened at {where}"
                    )
                )
                continue
            speaker = _advance_speaker(text[plain_from : m.start()], speaker)
            open_tag = m
            continue
        if open_tag is None:
            problems.append(CaptionProblem(m.start(), f"</{kind}> without an opening <{kind}>"))
            continue
        opened = open_tag
        open_tag, plain_from = None, m.end()
        if opened.group(2) != kind:
            where = opened.start()
            problems.append(
                CaptionProblem(m.start(), f"</{kind}> closes <{opened.group(2)}> opened at {where}")
            )
            continue
        content = text[opened.end() : m.start()].strip()
        if not content:
            problems.append(CaptionProblem(opened.start(), f"empty <{kind}></{kind}>"))
        elif kind == "W":
            transcript.append(Speech(content, speaker))
        else:
            events.append(content)
    if open_tag is not None:
        problems.append(CaptionProblem(open_tag.start(), f"unclosed <{open_tag.group(2)}>"))
    return transcript, events
