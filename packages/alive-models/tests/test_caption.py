import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alive_models.caption import Caption, CaptionError, Speech, build_caption, check_caption, parse_caption

PAPER_EXAMPLE = (
    "Subjects: Subject1: A man in a purple shirt with a clear voice. "
    "Subject2: A bearded man with a deep voice. "
    "Visual: A modern kitchen with grey cabinets. Narration: Subject1 points to Subject2 and says "
    "<W>The vegetables are sold out</W> accompanied by <I>sizzling steak sounds</I>. "
    "Subject2 turns around to cut vegetables."
)


def test_paper_example():
    c = parse_caption(PAPER_EXAMPLE)
    assert list(c.subjects) == ["Subject1", "Subject2"]
    assert c.subjects["Subject2"] == "A bearded man with a deep voice."
    assert c.visual == "A modern kitchen with grey cabinets."
    assert c.transcript == (Speech("The vegetables are sold out", "Subject1"),)
    assert c.events == ("sizzling steak sounds",)
    assert c.speaking and c.speech_text == "The vegetables are sold out"
    assert parse_caption(c.render()) == c


def test_speakers_follow_sentences_and_clauses():
    c = parse_caption(
        "Subjects: Subject1: a. Subject2: b. Visual: room. Narration: Subject1 says <W>hi</W> and Subject2 "
        "answers <W>hello</W> then adds <W>bye</W>. <W>Who?</W> Subject1 claps <I>clap</I> and says <W>me</W>"
    )
    assert [(s.text, s.speaker) for s in c.transcript] == [
        ("hi", "Subject1"),
        ("hello", "Subject2"),
        ("bye", "Subject2"),
        ("Who?", None),
        ("me", "Subject1"),
    ]
    assert c.speech_text == "hi hello bye Who? me"


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("Subjects: Subject1: x Visual: y Narration: <W>hi", 43, "unclosed <W>"),
        (
            "Subjects: Subject1: x Visual: y Narration: <W>a <I>b</I></W>",
            48,
            "<I> nested inside <W> opened at 43",
        ),
        ("Subjects: Subject1: x Visual: y Narration: a </W>", 45, "</W> without an opening"),
        ("Subjects: Subject1: x Visual: y Narration: <W>a</I>", 47, "</I> closes <W> opened at 43"),
        ("Subjects: Subject1: x Visual: y Narration: Subject3 waves", 43, "unknown subject Subject3"),
        ("Subjects: Subject1: x Visual:  Narration: ok", 29, "'Visual:' is empty"),
        ("Subjects: Subject1: x Visual: y Narration:   ", 42, "'Narration:' is empty"),
        ("Subjects: Subject1: x Visual: y", 31, "missing section 'Narration:'"),
        ("Visual: y Subjects: Subject1: x Narration: z", 0, "'Visual:' is out of order"),
        ("Subjects: Subject1: x Subject1: y Visual: v Narration: n", 22, "Subject1 is registered twice"),
        ("Subjects: Subject1: Visual: v Narration: n", 19, "Subject1 has an empty description"),
        ("Subjects: a man Visual: v Narration: n", 9, "no 'SubjectN: description' entries"),
        ("Subjects: Subject1: x Visual: <I>rain</I> Narration: n", 30, "outside the narration"),
        ("Subjects: Subject1: x Visual: y Narration: <I> </I>", 43, "empty <I></I>"),
        ("Hello Subjects: Subject1: x Visual: y Narration: z", 0, "text before 'Subjects:'"),
    ],
)
def test_malformed_captions_name_the_position(text, position, fragment):
    with pytest.raises(CaptionError) as info:
        parse_caption(text)
    first = info.value.problems[0]
    assert first.position == position and fragment in first.message, first
    assert f"at character {position}" in str(info.value)
    caption, problems = check_caption(text)  # lenient mode reports, never raises
    assert caption is None and problems == info.value.problems


def test_lenient_mode_collects_every_problem():
    caption, problems = check_caption("Subjects: Subject1: x Visual: <I>a</I> Narration: <W></W> Subject9")
    assert caption is None
    messages = [p.message for p in problems]
    assert any("outside the narration" in m for m in messages)
    assert any("empty <W></W>" in m for m in messages)
    assert any("unknown subject Subject9" in m for m in messages)
    assert check_caption(PAPER_EXAMPLE)[1] == []


def test_builder_rejects_parts_that_would_not_round_trip():
    with pytest.raises(ValueError, match="tag"):
        build_caption({"Subject1": "a <W>b</W>"}, "v", "n")
    with pytest.raises(ValueError, match="header"):
        build_caption({"Subject1": "a"}, "v Narration: x", "n")
    with pytest.raises(ValueError, match="Subject1"):
        build_caption({"Person": "a"}, "v", "n")
    with pytest.raises(CaptionError):
        build_caption({"Subject1": "a"}, "v", "<W>unclosed")


# Plain words that cannot form headers, tags or subject ids.
words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,'", min_size=1, max_size=12).filter(lambda s: s.strip())
sentences = st.lists(words, min_size=1, max_size=4).map(" ".join)


@st.composite
def captions(draw) -> tuple[dict[str, str], str, str, list[tuple[str, str]]]:
    n = draw(st.integers(1, 3))
    subjects = {f"Subject{i + 1}": draw(sentences) + "." for i in range(n)}
    pieces, tags = [], []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["plain", "W", "I", "subject"]))
        if kind == "plain":
            pieces.append(draw(sentences))
        elif kind == "subject":
            pieces.append(draw(st.sampled_from(list(subjects))))
        else:
            content = draw(sentences).strip()
            tags.append((kind, content))
            pieces.append(f"<{kind}>{content}</{kind}>")
    narration = " ".join(pieces) or draw(sentences)
    return subjects, draw(sentences), narration, tags


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(captions())
def test_build_then_parse_round_trips(parts):
    subjects, visual, narration, tags = parts
    text = build_caption(subjects, visual, narration)
    parsed = parse_caption(text)
    assert parsed.subjects == {k: v.strip() for k, v in subjects.items()}
    assert parsed.visual == visual.strip() and parsed.narration == narration.strip()
    assert [s.text for s in parsed.transcript] == [c for k, c in tags if k == "W"]
    assert list(parsed.events) == [c for k, c in tags if k == "I"]
    assert all(s.speaker is None or s.speaker in subjects for s in parsed.transcript)
    assert parse_caption(parsed.render()) == parsed
    assert isinstance(parsed, Caption)


MARKERS = ["Subjects:", "Visual:", "Narration:", "Subject1", "Subject2:", "<W>", "</W>", "<I>", "</I>"]
caption_alphabet = st.sampled_from([*"abc <>/WI:.!? \n", *MARKERS])


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(caption_alphabet, max_size=40).map("".join)))
def test_parser_never_crashes(text):
    caption, problems = check_caption(text)
    assert (caption is None) == bool(problems)
    if problems:
        with pytest.raises(CaptionError):
            parse_caption(text)
        assert all(0 <= p.position <= len(text) for p in problems)
    else:
        assert parse_caption(text) == caption
