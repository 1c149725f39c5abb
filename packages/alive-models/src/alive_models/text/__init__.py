"""Text conditioning: caption encoders, the transcript tokenizer, and caption -> conditioning tensors."""

from alive_models.text.conditioning import NULL_CAPTION, CaptionConditioning, TextConditioner
from alive_models.text.encoders import (
    CAPTION_SPECIAL_TOKENS,
    CaptionEncoder,
    EncodedText,
    TranscriptTokenizer,
    add_special_tokens,
)

__all__ = [
    "CAPTION_SPECIAL_TOKENS",
    "NULL_CAPTION",
    "CaptionConditioning",
    "CaptionEncoder",
    "EncodedText",
    "TextConditioner",
    "TranscriptTokenizer",
    "add_special_tokens",
]
