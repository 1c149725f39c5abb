"""Prompt tools: the rule-based converter, strict validation, the rewriter hook (a real tiny Qwen2
chat model), quality steering, and sound-event retrieval (FAISS against the numpy fallback)."""

import numpy as np
import pytest

from alive_infer.prompt import (
    ChatRewriter,
    PromptError,
    prepare_prompt,
    rewrite_messages,
    structure_prompt,
    validate_caption,
)
from alive_infer.retrieval import SoundEventIndex, faiss_available, mean_pooled, refine_events
from alive_models.caption import parse_caption

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_rules_make_speech_sound_and_subjects():
    caption = structure_prompt(
        "A chef chops onions in a busy kitchen, accompanied by the sound of knives on wood. "
        'The chef says "Service!" to a waiter. The waiter replies "Yes, chef."'
    )
    assert caption.subjects == {"Subject1": "A chef.", "Subject2": "A waiter."}
    assert [(s.text, s.speaker) for s in caption.transcript] == [
        ("Service!", "Subject1"),
        ("Yes, chef.", "Subject2"),
    ]
    assert caption.events == ("sound of knives on wood",)
    assert caption.speech_text == "Service! Yes, chef."
    assert parse_caption(caption.render()) == caption


def test_rules_resolve_a_pronoun_speaker_and_keep_attributes():
    caption = structure_prompt(
        'A young woman in a red coat stands on a rainy street. She says "Is anyone there?" '
        "We hear distant thunder."
    )
    assert caption.subjects["Subject1"] == "A young woman in a red coat."
    assert caption.transcript[0].speaker == "Subject1"
    assert caption.events == ("distant thunder",)
    assert "rainy street" in caption.visual


def test_rules_without_people_still_make_a_valid_caption():
    caption = structure_prompt("Rain falls on a tin roof at night [heavy rain on metal]")
    assert caption.events == ("heavy rain on metal",)
    assert caption.subjects == {"Subject1": "Rain falls on a tin roof at night."}
    assert not caption.speaking


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Subjects: Subject1: A man. Visual: A room. Narration: Subject1 says <S>hi</S>.", "unknown tag <S>"),
        ("A man says <B>hello</B>", "unknown tag <B>"),
        ("Subjects: Subject1: A man. Visual: A room. Narration: Subject2 says <W>hi</W>.", "unknown subject"),
        ("Subjects: Subject1: A man. Narration: hi", "missing section"),
        ("   ", "empty prompt"),
    ],
)
def test_bad_prompts_are_clear_errors(text, message):
    with pytest.raises(PromptError, match=message):
        prepare_prompt(text)


def test_structured_caption_passes_through_untouched():
    text = "Subjects: Subject1: A man. Visual: A room. Narration: Subject1 says <W>hi</W>, <I>door creaks</I>"
    prepared = prepare_prompt(text)
    assert prepared.source == "structured" and prepared.caption == validate_caption(text)


def test_quality_steering_prefix():
    messages = rewrite_messages("a dog barks")
    assert messages[-1] == {"role": "user", "content": "[High Quality] a dog barks"}
    assert "[High Quality] Subjects:" in messages[0]["content"]
    assert "[Medium Quality] Subjects:" in messages[0]["content"]
    assert rewrite_messages("x", tier="Medium Quality")[-1]["content"].startswith("[Medium Quality]")
    with pytest.raises(ValueError, match="quality tier"):
        rewrite_messages("x", tier="Best")


def test_a_rewriter_answer_is_used_when_it_parses():
    good = "Sure! Subjects: Subject1: A dog. Visual: A park. Narration: Subject1 runs, <I>dog barking</I>"
    prepared = prepare_prompt("a dog", rewriter=lambda p: good)
    assert prepared.source == "rewriter" and prepared.caption.events == ("dog barking",)
    bad = prepare_prompt('A man says "hi"', rewriter=lambda p: "no idea")
    assert bad.source == "rules" and "Subjects" in bad.rewrite_rejected
    assert bad.caption.transcript[0].text == "hi"


def test_chat_rewriter_runs_a_local_chat_model(tiny_text, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    qwen = shutil.copytree(tiny_text[1], tmp_path / "qwen-chat")
    tokenizer = AutoTokenizer.from_pretrained(qwen)
    with pytest.raises(ValueError, match="chat template"):
        ChatRewriter.from_pretrained(qwen)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(qwen)
    rewriter = ChatRewriter.from_pretrained(qwen, max_new_tokens=12)
    rendered = rewriter.tokenizer.apply_chat_template(
        rewrite_messages("a dog barks"), tokenize=False, add_generation_prompt=True
    )
    assert "[High Quality] a dog barks" in rendered and rendered.endswith("<|assistant|>")
    first, second = rewriter("a dog barks"), rewriter("a dog barks")
    assert isinstance(first, str) and first == second  # greedy decoding: reproducible
    assert first.strip()  # it generated something (random weights: not a caption)
    prepared = prepare_prompt('A man says "hello"', rewriter=rewriter)  # random weights: gibberish
    assert prepared.source == "rules" and prepared.rewritten == rewriter('A man says "hello"')


# ---------------------------------------------------------------------------------------------------
# Sound-event retrieval


def table_embedding(table):
    return lambda texts: np.stack([table[t] for t in texts]).astype(np.float32)


def unit(*xs):
    v = np.zeros(4, np.float32)
    v[: len(xs)] = xs
    return v


def test_replacement_only_at_or_above_tau():
    e1, e2 = unit(1, 0, 0), unit(0, 0, 1)
    table = {
        "explosion with debris": e1,
        "door slamming shut": e2,
        "loud noise": unit(0.9, np.sqrt(1 - 0.81), 0),  # cosine 0.90 with the explosion
        "bang": unit(0.8, 0.6, 0),  # cosine 0.80: too far
    }
    embed = table_embedding(table)
    index = SoundEventIndex.build(
        ["explosion with debris", "door slamming shut", "explosion with debris"], embed
    )
    assert index.descriptions == ["explosion with debris", "door slamming shut"]
    caption = validate_caption(
        "Subjects: Subject1: A soldier. Visual: A field. Narration: <I>loud noise</I> then <I>bang</I> and "
        "<I>loud noise</I>."
    )
    refined, replacements = refine_events(caption, index, embed)
    assert refined.events == ("explosion with debris", "bang", "explosion with debris")
    assert [r.original for r in replacements] == ["loud noise", "loud noise"]
    assert replacements[0].score == pytest.approx(0.9, abs=1e-6)
    prepared = prepare_prompt(caption.render(), sound_index=index, embed=embed)
    assert (
        prepared.caption == refined
        and prepared.to_dict()["sound_replacements"][0]["canonical"] == "explosion with debris"
    )
    strict = prepare_prompt(caption.render(), sound_index=index, embed=embed, tau=0.95)
    assert strict.caption == caption and strict.replacements == []


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu (the retrieval extra) is not installed")
def test_faiss_and_numpy_give_the_same_answers(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 32)).astype(np.float32)
    names = [f"sound {i}" for i in range(500)]
    queries = vectors[rng.integers(0, 500, 100)] + 0.3 * rng.standard_normal((100, 32)).astype(np.float32)
    queries = np.concatenate([queries, rng.standard_normal((100, 32)).astype(np.float32)])
    a, b = SoundEventIndex(names, vectors, "faiss"), SoundEventIndex(names, vectors, "numpy")
    sa, ia = a.search(queries, k=5)
    sb, ib = b.search(queries, k=5)
    assert np.array_equal(ia, ib) and np.allclose(sa, sb, atol=1e-5)
    assert (sa[:100, 0] > 0.85).mean() > 0.5 and (sa[100:, 0] < 0.85).all()  # both sides of tau exercised
    loaded = SoundEventIndex.load(a.save(tmp_path / "index"), backend="numpy")
    assert loaded.descriptions == names and np.array_equal(loaded.search(queries, 5)[1], ib)


def test_numpy_backend_works_without_faiss():
    index = SoundEventIndex(["a", "b"], np.eye(2, dtype=np.float32), backend="numpy")
    scores, ids = index.search(np.array([[0.2, 1.0]], np.float32))
    assert ids[0, 0] == 1 and scores[0, 0] == pytest.approx(1 / np.sqrt(1.04))
    with pytest.raises(ValueError, match="all zeros"):
        index.search(np.zeros((1, 2), np.float32))


def test_mean_pooled_caption_encoder_ignores_padding(tiny_text):
    from alive_models.text import CaptionEncoder

    t5, _ = tiny_text
    embed = mean_pooled(CaptionEncoder.from_pretrained(t5, "encoder", dtype=__import__("torch").float32))
    alone = embed(["rain"])
    batched = embed(["rain", "sizzling steak sounds footsteps rain door opening"])
    assert alone.shape == (1, 24) and np.allclose(alone[0], batched[0], atol=1e-5)
    index = SoundEventIndex.build(["rain", "door opening", "footsteps"], embed)
    assert index.match(["rain"], embed) == [None]  # identical text: nothing to replace
    assert index.search(embed(["door opening"]))[1][0, 0] == 1
