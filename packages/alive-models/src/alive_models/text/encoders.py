"""Caption encoders and the speech-transcript tokenizer, loaded with transformers from local directories.

Loading never builds a randomly initialised copy first: transformers instantiates on the meta device
and streams the safetensors shards (memory-mapped) straight to ``device`` in ``dtype``, so host memory
peaks near one shard rather than the whole model. For a 32B encoder on N GPUs each rank passes its own
``cuda:<local_rank>`` and holds one bf16 copy on its GPU (64 GB), never in host RAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from alive_models.local_files import local_model_dir

# Speech and sound-event tags are single tokens of the caption tokenizer (seed 000 §2.1).
CAPTION_SPECIAL_TOKENS = ("<W>", "</W>", "<I>", "</I>")


@dataclass
class EncodedText:
    """Token features [B, L, D] and their padding mask [B, L] (True = real token)."""

    hidden: Tensor
    mask: Tensor


class CaptionEncoder:
    """A frozen transformers text model returning per-token features.

    ``kind="encoder"``: an encoder-only model (T5EncoderModel), its last hidden state.
    ``kind="decoder"``: a decoder-only LM (Qwen family) run as an encoder; ``hidden_layer`` picks the
    hidden state (-1 = last, after the final norm).
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer, max_length: int = 512, hidden_layer: int = -1
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.hidden_layer = hidden_layer

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        kind: Literal["encoder", "decoder"],
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        max_length: int = 512,
        hidden_layer: int = -1,
        add_caption_tokens: bool = False,
    ) -> CaptionEncoder:
        from transformers import AutoModel, AutoTokenizer, T5EncoderModel

        path = local_model_dir(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model_cls = T5EncoderModel if kind == "encoder" else AutoModel
        model = model_cls.from_pretrained(path, dtype=dtype, device_map=torch.device(device))
        if add_caption_tokens:
            add_special_tokens(tokenizer, model)
        return cls(model, tokenizer, max_length, hidden_layer)

    @property
    def dim(self) -> int:
        return (
            self.model.config.hidden_size
            if hasattr(self.model.config, "hidden_size")
            else self.model.config.d_model
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, texts: list[str]) -> EncodedText:
        # Tokenizers that add no EOS (Qwen's) give an empty string zero tokens; the null caption is
        # then the lone EOS token, so attention always has a real key.
        eos = self.tokenizer.eos_token or self.tokenizer.pad_token
        texts = [t if t.strip() else eos for t in texts]
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        if self.hidden_layer == -1:
            hidden = self.model(**batch).last_hidden_state
        else:
            hidden = self.model(**batch, output_hidden_states=True).hidden_states[self.hidden_layer]
        mask = batch["attention_mask"].bool()
        return EncodedText(hidden.masked_fill(~mask[..., None], 0.0), mask)


# Seeds the embeddings of added tag tokens (any fixed value; it must never change once models train).
_NEW_TOKEN_SEED = 0x414C495645


def add_special_tokens(tokenizer, model: torch.nn.Module | None = None) -> list[int]:
    """Make <W>, </W>, <I>, </I> single special tokens; grow the model's embeddings if needed.

    Returns their ids. Idempotent: a tokenizer that already has them is left as it is.

    The frozen encoder's new rows must be the same on every load (training and inference, every
    rank, CPU or GPU), so they are drawn from a fixed-seed CPU generator: the existing embeddings'
    per-dimension mean and standard deviation plus Gaussian noise, distinct for each tag.
    transformers' own initialisation would draw them from the global random state instead.
    """
    missing = [t for t in CAPTION_SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if model is not None and model.get_input_embeddings().num_embeddings < len(tokenizer):
        old = model.get_input_embeddings().num_embeddings
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            weight = model.get_input_embeddings().weight
            existing = weight[:old].float().cpu()
            g = torch.Generator().manual_seed(_NEW_TOKEN_SEED)
            noise = torch.randn(weight.shape[0] - old, weight.shape[1], generator=g)
            rows = existing.mean(0) + existing.std(0) * noise
            weight[old:] = rows.to(weight.dtype).to(weight.device)
    return tokenizer.convert_tokens_to_ids(list(CAPTION_SPECIAL_TOKENS))


class TranscriptTokenizer:
    """Tokenises the speech transcript (the ``<W>`` text) for the AudioDiT's input embedding."""

    def __init__(self, tokenizer, max_length: int = 512) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, path: str | Path, max_length: int = 512) -> TranscriptTokenizer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(local_model_dir(path, required=None)), max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids [B, L] and mask [B, L]; an empty transcript is all padding (a silent clip)."""
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=False,
            return_tensors="pt",
        )
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        if ids.shape[1] == 0:  # every transcript empty
            ids = torch.zeros(len(texts), 1, dtype=torch.long)
            mask = torch.zeros(len(texts), 1, dtype=torch.bool)
        return ids.masked_fill(~mask, 0), mask
