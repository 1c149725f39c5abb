"""Caption encodings cached in the shards, so training need not run the caption encoders.

The VideoDiT reads one encoding per caption encoder (T5, then Qwen: :data:`TEXT_ENCODERS`, the order
of ``alive_models.text.TextConditioner``'s ``video_texts``); the AudioDiT's caption cross-attention
reads the Qwen one. ``alive-data write --text-encoders T5_DIR QWEN_DIR`` stores per sample, for each
encoder NAME:

- ``text.NAME.npy``: float16 [L, D], the caption's token features (real tokens only, no padding);
- ``text_null.NAME.npy``: the same for the null caption, which caption dropout trains on (it is a
  few KB: storing it with every sample keeps each sample self-contained);

and records in the metadata ``text_cache = {"encoders": {NAME: dir}, "dims": {NAME: D},
"max_length": n}``. A pipeline with ``text_embeddings: [t5, qwen]`` reads them
(:func:`read_text`); collation pads them into ``AVBatch.text_embeddings``: ``NAME`` float16
[B, L_max, D] (zeros on padding) and ``NAME_mask`` bool [B, L_max]. The speech transcript is not
cached: its tokenizer is cheap and runs in training.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

TEXT_ENCODERS = ("t5", "qwen")  # video_texts order; "qwen" is also the audio caption


def member(name: str, null: bool = False) -> str:
    """The shard member holding encoder ``name``'s features of the caption (or of the null caption)."""
    return f"text_null.{name}.npy" if null else f"text.{name}.npy"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class TextEncoding:
    """Encodes captions with the training encoders, for the writer: samples in, samples with the
    ``text*.npy`` members and ``text_cache`` metadata out. Loaded once, in the writer process."""

    def __init__(
        self,
        t5: str,
        qwen: str,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int = 512,
    ) -> None:
        from alive_models.text import TextConditioner

        self.dirs = {"t5": str(t5), "qwen": str(qwen)}
        self.max_length = max_length
        self.conditioner = TextConditioner.from_pretrained(
            t5, qwen, dtype=dtype, device=device, max_length=max_length
        )
        self.null = {name: _npy(f) for name, f in self._features(self.conditioner.null(1))[0].items()}

    @staticmethod
    def _features(cond) -> list[dict[str, np.ndarray]]:
        """Per sample, per encoder: the real tokens' features as float16 numpy."""
        out = []
        for i in range(cond.video_texts[0].shape[0]):
            out.append(
                {
                    name: hidden[i][mask[i].bool()].to(torch.float16).cpu().numpy()
                    for name, hidden, mask in zip(
                        TEXT_ENCODERS, cond.video_texts, cond.video_text_masks, strict=True
                    )
                }
            )
        return out

    @torch.no_grad()
    def add_to(self, samples: Sequence[dict[str, Any]]) -> None:
        """Encode the captions of ``samples`` (raw shard samples with a ``json`` member) in one batch
        and add the members and metadata in place."""
        import json

        if not samples:
            return
        metas = [json.loads(s["json"]) for s in samples]
        features = self._features(self.conditioner.encode([m["caption"] for m in metas]))
        for sample, meta, feats in zip(samples, metas, features, strict=True):
            for name, array in feats.items():
                sample[member(name)] = _npy(array)
                sample[member(name, null=True)] = self.null[name]
            meta["text_cache"] = {
                "encoders": self.dirs,
                "dims": {name: int(a.shape[1]) for name, a in feats.items()},
                "max_length": self.max_length,
            }
            sample["json"] = json.dumps(meta).encode()


def read_text(raw: Mapping[str, Any], names: Iterable[str], null: bool) -> dict[str, np.ndarray]:
    """Encoder name -> float16 [L, D] features of a raw sample's caption (``null``: of the null
    caption). Raises ``KeyError`` naming the member when one is missing."""
    out = {}
    for name in names:
        key = member(name, null)
        if key not in raw:
            raise KeyError(key)
        out[name] = np.load(io.BytesIO(raw[key]), allow_pickle=False)
    return out


def collate_text(texts: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Pad per-sample features to the longest in the batch: ``NAME`` [B, L, D] and ``NAME_mask``."""
    out: dict[str, torch.Tensor] = {}
    for name in texts[0]:
        arrays = [t[name] for t in texts]
        length = max(a.shape[0] for a in arrays)
        dim = arrays[0].shape[1]
        values = torch.zeros((len(arrays), length, dim), dtype=torch.float16)
        mask = torch.zeros((len(arrays), length), dtype=torch.bool)
        for i, a in enumerate(arrays):
            values[i, : len(a)] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float16))
            mask[i, : len(a)] = True
        out[name], out[f"{name}_mask"] = values, mask
    return out
