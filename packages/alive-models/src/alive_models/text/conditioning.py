"""Caption -> conditioning tensors, the one implementation used by training and inference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from alive_models.caption import Caption, parse_caption
from alive_models.config import JointConfig
from alive_models.text.encoders import CaptionEncoder, TranscriptTokenizer

# The null caption: what caption dropout trains on and what the unconditional / negative branch of
# guidance sees when no negative prompt is given. Defined here only.
NULL_CAPTION = ""


@dataclass
class CaptionConditioning:
    """The text inputs of :class:`alive_models.JointInputs`, field for field."""

    video_texts: list[Tensor]
    video_text_masks: list[Tensor]
    audio_caption: Tensor
    audio_caption_mask: Tensor
    transcript_ids: Tensor
    transcript_mask: Tensor


class TextConditioner:
    """Dual caption encoders for the VideoDiT (T5 + Qwen), the Qwen caption features for the
    AudioDiT's cross-attention (the same Qwen pass), and the transcript tokens for its input."""

    def __init__(self, t5: CaptionEncoder, qwen: CaptionEncoder, transcript: TranscriptTokenizer) -> None:
        self.t5, self.qwen, self.transcript = t5, qwen, transcript
        self._null_one: CaptionConditioning | None = None

    @classmethod
    def from_pretrained(
        cls,
        t5_path: str | Path,
        qwen_path: str | Path,
        transcript_path: str | Path | None = None,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        max_length: int = 512,
    ) -> TextConditioner:
        """``transcript_path`` defaults to the Qwen directory's tokenizer."""
        t5 = CaptionEncoder.from_pretrained(t5_path, "encoder", dtype, device, max_length)
        qwen = CaptionEncoder.from_pretrained(
            qwen_path, "decoder", dtype, device, max_length, add_caption_tokens=True
        )
        return cls(t5, qwen, TranscriptTokenizer.from_pretrained(transcript_path or qwen_path, max_length))

    def check_fits(self, config: JointConfig) -> None:
        """Raise if the encoders' widths or the transcript vocabulary do not match the model config."""
        got = (self.t5.dim, self.qwen.dim)
        if tuple(config.video.text_dims) != got:
            raise ValueError(f"VideoDiT expects caption widths {config.video.text_dims}, encoders give {got}")
        if config.audio.caption_dim != self.qwen.dim:
            raise ValueError(
                f"AudioDiT expects caption width {config.audio.caption_dim}, Qwen gives {self.qwen.dim}"
            )
        if config.audio.transcript_vocab_size < self.transcript.vocab_size:
            raise ValueError(
                f"AudioDiT transcript vocabulary {config.audio.transcript_vocab_size} is smaller than the "
                f"tokenizer's {self.transcript.vocab_size}"
            )

    def encode(self, captions: Sequence[str | Caption]) -> CaptionConditioning:
        """Structured captions (text or parsed) -> conditioning. Malformed text raises CaptionError."""
        texts, speech = [], []
        for c in captions:
            if isinstance(c, str):
                c = None if c == NULL_CAPTION else parse_caption(c)
            texts.append(NULL_CAPTION if c is None else c.render())
            speech.append("" if c is None else c.speech_text)
        return self._encode(texts, speech)

    def encode_plain(self, texts: Sequence[str]) -> CaptionConditioning:
        """Plain text (a negative prompt) encoded as it is: not parsed as a caption, no transcript.
        A blank text gives the null caption's conditioning."""
        return self._encode(list(texts), [""] * len(texts))

    def _encode(self, texts: list[str], speech: list[str]) -> CaptionConditioning:
        t5, qwen = self.t5.encode(texts), self.qwen.encode(texts)
        ids, mask = self.transcript(speech)
        return CaptionConditioning(
            video_texts=[t5.hidden, qwen.hidden],
            video_text_masks=[t5.mask, qwen.mask],
            audio_caption=qwen.hidden,
            audio_caption_mask=qwen.mask,
            transcript_ids=ids.to(qwen.hidden.device),
            transcript_mask=mask.to(qwen.hidden.device),
        )

    def null(self, batch: int) -> CaptionConditioning:
        """The null caption's conditioning, repeated ``batch`` times (encoded once, then cached)."""
        if self._null_one is None:
            self._null_one = self.encode([NULL_CAPTION])
        one = self._null_one
        return CaptionConditioning(
            **{
                name: [t.expand(batch, *t.shape[1:]) for t in value]
                if isinstance(value, list)
                else value.expand(batch, *value.shape[1:])
                for name, value in vars(one).items()
            }
        )
