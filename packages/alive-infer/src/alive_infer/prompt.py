"""Prompt tools (seed 000 §4.4): raw prompt -> structured caption (eq. 3), the optional rewriter with
its quality-steering prefix, and the entry point :func:`prepare_prompt` the pipeline calls.

- A prompt that already is a structured caption ("Subjects: ... Visual: ... Narration: ...") is
  validated strictly; tags other than ``<W>``/``<I>`` are an error.
- :func:`structure_prompt` is the rule-based converter: quoted speech becomes ``<W>`` tags, explicit
  sound cues ("the sound of ...", "we hear ...", "[...]") become ``<I>`` tags, people ("a young
  woman", "the chef") become SubjectN entries, referred to as SubjectN in the narration so that each
  ``<W>`` has its speaker. It never invents content.
- A rewriter is any callable ``str -> str`` returning a structured caption (an LLM, a service). The
  shipped one, :class:`ChatRewriter`, runs a local transformers chat model from a directory with
  the instructions of §4.4 (enrich camera, lighting, background textures; ambience and sound
  textures; keep the schema) and the quality steering: few-shot captions labelled by quality tier,
  and the target request prefixed by the "High Quality" tier token. Output that does not parse falls
  back to the rule-based caption, and the sidecar records why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alive_infer.retrieval import DEFAULT_TAU, EmbedFn, Replacement, SoundEventIndex, refine_events
from alive_models.caption import TAGS, Caption, CaptionError, CaptionProblem, build_caption, parse_caption

Rewriter = Callable[[str], str]

_ANY_TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9_]*)>")
_QUOTE = re.compile(r"\"([^\"]+)\"|“([^”]+)”")
_SOUND_CUES = (
    re.compile(r"\[([^\[\]]+)\]"),
    re.compile(r"\b(?:the |a )?(?:sounds?|noises?) of [^,.;!?\"“]+", re.I),
    re.compile(r"(?<=\bwe hear )[^,.;!?\"“]+|(?<=\byou hear )[^,.;!?\"“]+", re.I),
)
_PEOPLE = (
    "man|woman|boy|girl|child|kid|baby|person|guy|lady|gentleman|teenager|student|teacher|chef|cook|"
    "doctor|nurse|soldier|singer|dancer|musician|guitarist|pianist|drummer|reporter|narrator|host|"
    "farmer|worker|officer|police officer|detective|king|queen|prince|princess|grandmother|"
    "grandfather|mother|father|athlete|player|driver|pilot|waiter|waitress|customer|vendor|robot"
)
_PERSON = re.compile(
    rf"\b(a|an|one|another|the)\s+((?:[a-z-]+\s+){{0,3}}?)({_PEOPLE})\b(?!\s*-)"
    r"((?:,)?\s+(?:in|wearing|with|holding)\s+(?:a |an |the )[a-z-]+(?:\s+(?!and\b)[a-z-]+)?)?",
    re.I,
)
_PRONOUN = re.compile(r"\b(he|she|they)\b", re.I)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

QUALITY_TIERS = ("High Quality", "Medium Quality", "Low Quality")
REWRITE_INSTRUCTIONS = (
    "Rewrite the user's idea as one structured caption of the form 'Subjects: Subject1: <appearance "
    "and voice>. Visual: <scene> Narration: <story>'. Wrap every spoken line in <W>...</W> and every "
    "sound event in <I>...</I>; refer to people as Subject1, Subject2 in the narration. Keep what the "
    "user asked for and fill in what is missing: for the picture the camera perspective, lighting and "
    "background textures; for the sound the ambience and the texture of each sound. Write in the "
    "style of the examples of the requested quality tier. Answer with the caption only."
)
# Illustrative few-shot captions per tier. A deployment passes captions of its own training corpus
# (ChatRewriter(examples=...)): the steering works by imitating the premium captions' style.
DEFAULT_EXAMPLES: dict[str, tuple[str, ...]] = {
    "High Quality": (
        "Subjects: Subject1: A woman in her thirties with short black hair and a linen apron, warm "
        "low voice. Visual: A sunlit rustic kitchen, shallow depth of field, soft morning light "
        "through a window, steam rising from a cast-iron pan, medium close-up at eye level. "
        "Narration: Subject1 flips the vegetables and says <W>Almost ready.</W> while "
        "<I>oil sizzling in a hot pan</I> fills the room over <I>quiet kitchen room tone</I>.",
    ),
    "Medium Quality": (
        "Subjects: Subject1: A man in a grey jacket. Visual: A street at night with some lights. "
        "Narration: Subject1 walks and says <W>Let's go.</W> <I>traffic noise</I>.",
    ),
}


class PromptError(ValueError):
    """A prompt or caption that cannot be used (unknown tags, malformed structure, empty)."""


def check_tags(text: str) -> None:
    """Raise :class:`PromptError` on any tag other than <W>, </W>, <I>, </I>, naming its position."""
    problems = [
        CaptionProblem(m.start(), f"unknown tag {m.group(0)} (only <W>...</W> and <I>...</I> exist)")
        for m in _ANY_TAG.finditer(text)
        if m.group(1) not in TAGS
    ]
    if problems:
        raise PromptError(str(CaptionError(text, problems)))


def looks_structured(text: str) -> bool:
    return text.lstrip().startswith("Subjects:")


def validate_caption(text: str) -> Caption:
    """A structured caption, strictly: unknown tags and every problem of ``parse_caption`` raise."""
    check_tags(text)
    try:
        return parse_caption(text.strip())
    except CaptionError as e:
        raise PromptError(str(e)) from e


def _sound_tags(text: str) -> str:
    """Wrap explicit sound cues in <I> tags (outside quoted speech)."""
    spans: list[tuple[int, int, str]] = []
    quotes = [m.span() for m in _QUOTE.finditer(text)]
    for pattern in _SOUND_CUES:
        for m in pattern.finditer(text):
            inner = re.sub(r"^(?:the|a|an)\s+", "", m.group(1) if pattern.groups else m.group(0), flags=re.I)
            start, end = m.span()
            taken = any(s < end and start < e for s, e, _ in spans)
            if inner.strip() and not taken and not any(s <= start < e for s, e in quotes):
                spans.append((start, end, inner.strip()))
    for start, end, inner in sorted(spans, reverse=True):
        text = f"{text[:start]}<I>{inner}</I>{text[end:]}"
    return text


def _speech_tags(text: str) -> str:
    return _QUOTE.sub(lambda m: f"<W>{(m.group(1) or m.group(2)).strip()}</W>", text)


def _subjects(text: str) -> tuple[str, dict[str, str]]:
    """Replace people by SubjectN; 'a/an/one/another X' introduces one, 'the X' reuses the last X."""
    subjects: dict[str, str] = {}
    by_noun: dict[str, str] = {}

    def replace(m: re.Match[str]) -> str:
        det, adjectives, noun = m.group(1).lower(), m.group(2), m.group(3).lower()
        attribute = (m.group(4) or "").lstrip(",")
        if det == "the" and noun in by_noun:
            return by_noun[noun] + (m.group(4) or "")
        sid = f"Subject{len(subjects) + 1}"
        article = "An" if (adjectives or noun)[0].lower() in "aeiou" else "A"
        subjects[sid] = f"{article} {adjectives}{m.group(3)}{attribute}."
        by_noun[noun] = sid
        return sid

    parts = re.split(r"(<[WI]>.*?</[WI]>)", text)  # never touch the inside of tags
    parts = [p if p.startswith("<") else _PERSON.sub(replace, p) for p in parts]
    return "".join(parts), subjects


def _pronoun_speakers(narration: str) -> str:
    """In a sentence with speech but no SubjectN, the pronoun before the speech is the last subject."""
    last: str | None = None
    sentences = _SENTENCE.split(narration)
    for i, sentence in enumerate(sentences):
        head = sentence.split("<W>", 1)[0]
        named = re.findall(r"\bSubject\d+\b", head)
        if "<W>" in sentence and not named and last is not None:
            sentences[i] = _PRONOUN.sub(last, head, count=1) + sentence[len(head) :]
        found = re.findall(r"\bSubject\d+\b", sentences[i])
        last = found[-1] if found else last
    return " ".join(sentences)


def _plain(text: str) -> str:
    text = re.sub(r"<W>.*?</W>|</?I>", "", text)
    return re.sub(r"\s+", " ", text).strip(" ,;")


def structure_prompt(prompt: str) -> Caption:
    """Rule-based raw prompt -> structured caption (see the module docstring)."""
    check_tags(prompt)
    text = re.sub(r"\s+", " ", prompt).strip()
    if not text:
        raise PromptError("empty prompt")
    if not text.endswith((".", "!", "?", '"', "”")):
        text += "."
    narration, subjects = _subjects(_speech_tags(_sound_tags(text)))
    narration = _pronoun_speakers(narration)
    sentences = _SENTENCE.split(narration)
    scene = [s for s in sentences if "<" not in s and not re.search(r"\bSubject\d+\b", s)]
    visual = " ".join(scene) if scene else _plain(sentences[0])
    visual = re.sub(r"\bSubject\d+\b", lambda m: _lower_first(subjects[m.group(0)].rstrip(".")), visual)
    if not subjects:  # the schema needs one entry: the scene's main element
        first = re.split(r"[,.;!?]", _plain(re.sub(r"<I>.*?</I>", "", narration)))[0].strip() or "the scene"
        subjects = {"Subject1": f"{_upper_first(first)}."}
    return parse_caption(build_caption(subjects, _upper_first(visual) or "As described.", narration))


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def rewrite_messages(
    prompt: str,
    examples: Mapping[str, Sequence[str]] = DEFAULT_EXAMPLES,
    tier: str = "High Quality",
) -> list[dict[str, str]]:
    """Chat messages for a rewriter: instructions, few-shot captions labelled ``[tier]``, then the
    request behind the quality-steering prefix ``[tier]`` (seed 000 §4.4)."""
    if tier not in QUALITY_TIERS:
        raise ValueError(f"unknown quality tier {tier!r}; choose one of {QUALITY_TIERS}")
    shots = "\n".join(f"[{name}] {caption}" for name, captions in examples.items() for caption in captions)
    system = f"{REWRITE_INSTRUCTIONS}\n\nExamples:\n{shots}" if shots else REWRITE_INSTRUCTIONS
    return [{"role": "system", "content": system}, {"role": "user", "content": f"[{tier}] {prompt}"}]


class ChatRewriter:
    """A local transformers chat model as the prompt rewriter (greedy decoding: reproducible)."""

    def __init__(
        self,
        model,
        tokenizer,
        max_new_tokens: int = 512,
        examples: Mapping[str, Sequence[str]] = DEFAULT_EXAMPLES,
        tier: str = "High Quality",
    ) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the rewriter needs a chat model: this tokenizer has no chat template")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_new_tokens, self.examples, self.tier = max_new_tokens, examples, tier

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype=None, **kwargs) -> ChatRewriter:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from alive_models.local_files import local_model_dir

        path = local_model_dir(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32).to(device)
        return cls(model, tokenizer, **kwargs)

    def __call__(self, prompt: str) -> str:
        import torch

        messages = rewrite_messages(prompt, self.examples, self.tier)
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@dataclass
class PreparedPrompt:
    """Everything the prompt stage decided, for generation and the sidecar."""

    raw: str
    caption: Caption
    source: str  # "structured" | "rewriter" | "rules"
    rewritten: str | None = None
    rewrite_rejected: str | None = None  # why the rewriter's output was not used
    replacements: list[Replacement] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "raw": self.raw,
            "caption": self.caption.render(),
            "source": self.source,
            "rewritten": self.rewritten,
            "rewrite_rejected": self.rewrite_rejected,
            "sound_replacements": [vars(r) for r in self.replacements],
        }


def prepare_prompt(
    prompt: str,
    rewriter: Rewriter | None = None,
    sound_index: SoundEventIndex | None = None,
    embed: EmbedFn | None = None,
    tau: float = DEFAULT_TAU,
) -> PreparedPrompt:
    """Raw prompt or structured caption -> validated caption (+ rewriting, + sound retrieval)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("empty prompt")
    check_tags(prompt)
    if looks_structured(prompt):
        prepared = PreparedPrompt(prompt, validate_caption(prompt), "structured")
    elif rewriter is None:
        prepared = PreparedPrompt(prompt, structure_prompt(prompt), "rules")
    else:
        rewritten = rewriter(prompt)
        at = rewritten.find("Subjects:")
        try:
            if at < 0:
                raise PromptError("no 'Subjects:' section in the rewriter's answer")
            prepared = PreparedPrompt(prompt, validate_caption(rewritten[at:]), "rewriter", rewritten)
        except PromptError as e:
            prepared = PreparedPrompt(prompt, structure_prompt(prompt), "rules", rewritten, str(e))
    if sound_index is not None and prepared.caption.events:
        if embed is None:
            raise ValueError("sound retrieval needs the embedding function the index was built with")
        prepared.caption, prepared.replacements = refine_events(prepared.caption, sound_index, embed, tau)
    return prepared
