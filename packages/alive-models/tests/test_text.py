import dataclasses

import pytest
import torch

from alive_models import JointInputs, build_model, get_preset
from alive_models.caption import CaptionError
from alive_models.testing import save_tiny_text_models
from alive_models.text import (
    CAPTION_SPECIAL_TOKENS,
    NULL_CAPTION,
    CaptionEncoder,
    TextConditioner,
    TranscriptTokenizer,
)

CAPTION = (
    "Subjects: Subject1: A man with a clear voice. Visual: A kitchen. "
    "Narration: Subject1 says <W>the vegetables are sold out</W> accompanied by <I>sizzling steak sounds</I>."
)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return save_tiny_text_models(tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def conditioner(model_dirs):
    return TextConditioner.from_pretrained(*model_dirs, dtype=torch.float32)


def test_tags_are_single_special_tokens_with_resized_embeddings(model_dirs, conditioner):
    tokenizer = conditioner.qwen.tokenizer
    ids = tokenizer.convert_tokens_to_ids(list(CAPTION_SPECIAL_TOKENS))
    assert len(set(ids)) == 4 and tokenizer.unk_token_id not in ids
    pieces = tokenizer.tokenize("says <W>hi</W> and <I>rain</I>")
    assert all(tag in pieces for tag in CAPTION_SPECIAL_TOKENS)
    assert conditioner.qwen.model.get_input_embeddings().num_embeddings >= len(tokenizer)
    plain = TranscriptTokenizer.from_pretrained(model_dirs[1])
    assert len(tokenizer) == plain.vocab_size + 4


def test_loading_in_bf16_and_determinism(model_dirs):
    encoder = CaptionEncoder.from_pretrained(model_dirs[1], "decoder", dtype=torch.bfloat16)
    assert next(encoder.model.parameters()).dtype == torch.bfloat16
    a, b = encoder.encode([CAPTION, "short"]), encoder.encode([CAPTION, "short"])
    assert a.hidden.dtype == torch.bfloat16 and a.hidden.shape[-1] == 20
    torch.testing.assert_close(a.hidden, b.hidden)
    assert a.mask[1].sum() < a.mask[0].sum()
    assert (a.hidden[1][~a.mask[1]] == 0).all()  # padding carries no features
    t5 = CaptionEncoder.from_pretrained(model_dirs[0], "encoder", dtype=torch.float32)
    assert t5.encode(["a"]).hidden.shape[-1] == 24


def test_caption_to_conditioning_feeds_the_joint_model(conditioner):
    out = conditioner.encode([CAPTION, NULL_CAPTION])
    assert [t.shape[-1] for t in out.video_texts] == [24, 20]
    assert out.audio_caption.shape[-1] == 20
    # The transcript is exactly the <W> text; the null caption has none.
    expected = conditioner.transcript(["the vegetables are sold out"])[0][0]
    assert out.transcript_ids[0, : len(expected)].tolist() == expected.tolist()
    assert out.transcript_mask[1].sum() == 0
    # The null caption still has one real token (EOS) for every encoder.
    assert all(m[1].sum() >= 1 for m in out.video_text_masks)

    tiny = get_preset("tiny")
    config = dataclasses.replace(
        tiny, audio=dataclasses.replace(tiny.audio, transcript_vocab_size=conditioner.transcript.vocab_size)
    )
    conditioner.check_fits(config)
    model = build_model(config, seed=0)
    inputs = JointInputs(
        video=torch.randn(2, 4, 3, 4, 6),
        audio=torch.randn(2, 8, 10),
        t_video=torch.rand(2),
        t_audio=torch.rand(2),
        **vars(out),
    )
    result = model(inputs)
    assert torch.isfinite(result.video).all() and torch.isfinite(result.audio).all()
    with pytest.raises(ValueError, match="transcript vocabulary"):
        conditioner.check_fits(tiny)


def test_null_conditioning_is_cached_and_batched(conditioner):
    null = conditioner.null(3)
    assert null.audio_caption.shape[0] == 3
    torch.testing.assert_close(null.audio_caption[0], conditioner.encode([NULL_CAPTION]).audio_caption[0])
    assert conditioner.null(2).audio_caption.data_ptr() == null.audio_caption.data_ptr()


def test_malformed_caption_and_missing_dir_are_clear_errors(conditioner, tmp_path):
    with pytest.raises(CaptionError, match="unclosed <W>"):
        conditioner.encode(["Subjects: Subject1: a. Visual: b. Narration: <W>hi"])
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        CaptionEncoder.from_pretrained(tmp_path / "missing", "encoder")


def test_plain_text_is_encoded_as_it_is_without_a_transcript(conditioner):
    negative = 'blurry, says "hello" <W>'  # not a caption: never parsed, quotes and tags are just text
    plain = conditioner.encode_plain([negative, "   "])
    direct = conditioner.qwen.encode([negative])
    torch.testing.assert_close(plain.audio_caption[0, : direct.hidden.shape[1]], direct.hidden[0])
    assert plain.transcript_mask.sum() == 0  # no speech, whatever the text says
    null = conditioner.null(1)
    torch.testing.assert_close(  # a blank text is the null caption
        plain.audio_caption[1, : null.audio_caption.shape[1]], null.audio_caption[0]
    )


def test_tag_embeddings_are_the_same_on_every_load(model_dirs):
    """Training and inference (and every rank) must see one embedding for <W> etc.: not drawn from
    the global random state, which differs from process to process."""
    loads = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        encoder = CaptionEncoder.from_pretrained(
            model_dirs[1], "decoder", torch.float32, add_caption_tokens=True
        )
        ids = encoder.tokenizer.convert_tokens_to_ids(list(CAPTION_SPECIAL_TOKENS))
        loads.append(encoder.model.get_input_embeddings().weight[ids].clone())
    torch.testing.assert_close(loads[0], loads[1], rtol=0, atol=0)
    assert torch.cdist(loads[0], loads[0]).fill_diagonal_(1.0).min() > 0.1  # four distinct tags
