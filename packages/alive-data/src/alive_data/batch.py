"""One training sample and the typed batch of them (:class:`AVBatch`), whatever the media form.

A batch holds either pixels (``video`` + ``audio``) or cached latents (``video_latent`` +
``audio_latent``), never both; everything else has the same meaning and shape in both forms, so
the training adapter has one input type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from alive_data.tasks import TaskSpec
from alive_data.text_cache import collate_text

FLAGS = ("i2v", "video_loss", "audio_loss", "video_clean", "audio_clean")


@dataclass
class TrainingSample:
    """One prepared sample: media cut to its bucket, task and conditioning (see :class:`AVBatch`)."""

    key: str
    task: str
    spec: TaskSpec
    mutual: bool
    caption: str
    transcript: str
    references: np.ndarray  # uint8 [K, H, W, 3] at the clip's resolution; K = 0 keeps H and W
    audio_length: int  # valid length along the last axis of the audio (samples or latents)
    video: np.ndarray | None = None  # uint8 [F, H, W, 3]
    audio: np.ndarray | None = None  # float32 [N]
    video_latent: np.ndarray | None = None  # float32 [C, T, h, w]
    audio_latent: np.ndarray | None = None  # float32 [C, L]
    # Reference audio (TR2AV): float32 [N_ref] waveform (pixels) or [C, L_ref] latents; None = none.
    reference_audio: np.ndarray | None = None
    text: dict[str, np.ndarray] | None = None  # encoder name -> float16 [L, D] (alive_data.text_cache)

    @property
    def video_reads_audio(self) -> bool:
        return self.mutual and self.spec.route.video_reads_audio

    @property
    def audio_reads_video(self) -> bool:
        return self.mutual and self.spec.route.audio_reads_video


@dataclass
class AVBatch:
    """A batch of B samples of one bucket (same length and resolution).

    Text: ``captions`` after caption dropout ("" is the null caption,
    ``alive_models.text.conditioning.NULL_CAPTION``); ``transcripts`` the speech (``<W>`` text) of
    each caption as given, "" when dropped or silent. Per-sample bool [B] flags: ``i2v`` (first frame
    given), ``video_loss`` / ``audio_loss`` (which losses count), ``video_clean`` / ``audio_clean``
    (that stream is given clean at t=0: V2A / A2V), ``mutual`` (cross-modal exchange on at all), and
    the routes ``video_reads_audio`` / ``audio_reads_video`` (the task's routes, off where ``mutual``
    is; pass them to ``JointInputs`` as they are). Constructed without routes, both follow ``mutual``.
    References: ``references`` uint8 [B, K_max, H, W, 3] at the clip's resolution (zero padded) with
    ``reference_mask`` bool [B, K_max]; K_max is 0 when no sample has any.
    Media, pixels: ``video`` uint8 [B, F, H, W, 3], ``audio`` float32 [B, N] mono; or cached latents:
    ``video_latent`` float32 [B, C, T, h, w], ``audio_latent`` float32 [B, C, L].
    ``audio_lengths`` int64 [B]: valid entries along the last audio axis (the rest is padding).
    Reference audio (TR2AV, voice cloning): pixels ``reference_audio`` float32 [B, N_ref] mono
    waveform at the clip's sample rate; latents ``reference_audio_latent`` float32 [B, C, L_ref];
    zero padded, with ``reference_audio_lengths`` int64 [B] (0 = no reference for that sample;
    N_ref / L_ref is 0 when no sample has one).
    ``text_embeddings``: the caption encodings cached in the shards (:mod:`alive_data.text_cache`),
    ``NAME`` float16 [B, L, D] and ``NAME_mask`` bool [B, L] per encoder; None when not read.
    ``loader_state``: the loader's state right after this batch; checkpoint it and
    ``ResumableLoader.load_state_dict`` resumes exactly after this batch.
    """

    keys: list[str]
    tasks: list[str]
    captions: list[str]
    transcripts: list[str]
    i2v: Tensor
    video_loss: Tensor
    audio_loss: Tensor
    video_clean: Tensor
    audio_clean: Tensor
    mutual: Tensor
    references: Tensor
    reference_mask: Tensor
    audio_lengths: Tensor
    video: Tensor | None = None
    audio: Tensor | None = None
    video_latent: Tensor | None = None
    audio_latent: Tensor | None = None
    video_reads_audio: Tensor | None = None
    audio_reads_video: Tensor | None = None
    reference_audio: Tensor | None = None
    reference_audio_latent: Tensor | None = None
    reference_audio_lengths: Tensor | None = None
    text_embeddings: dict[str, Tensor] | None = None
    loader_state: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        pixels = self.video is not None and self.audio is not None
        latents = self.video_latent is not None and self.audio_latent is not None
        given = sum(t is not None for t in (self.video, self.audio, self.video_latent, self.audio_latent))
        if given != 2 or pixels == latents:
            raise ValueError("a batch holds video + audio or video_latent + audio_latent, not a mix")
        if (self.reference_audio if latents else self.reference_audio_latent) is not None:
            raise ValueError(
                "reference audio comes in the batch's form: waveform for pixels, latents for latents"
            )
        b = len(self.keys)
        # Defaults that keep older constructions valid: routes follow mutual, no reference audio.
        if self.video_reads_audio is None:
            self.video_reads_audio = self.mutual.clone()
        if self.audio_reads_video is None:
            self.audio_reads_video = self.mutual.clone()
        if self.reference_audio_lengths is None:
            self.reference_audio_lengths = torch.zeros(b, dtype=torch.int64, device=self.mutual.device)
        if latents and self.reference_audio_latent is None:
            self.reference_audio_latent = self.audio_latent.new_zeros(b, self.audio_latent.shape[1], 0)
        if pixels and self.reference_audio is None:
            self.reference_audio = self.audio.new_zeros(b, 0)
        sizes = {len(self.tasks), len(self.captions), len(self.transcripts)}
        for value in self._tensors().values():
            sizes |= {t.shape[0] for t in value.values()} if isinstance(value, dict) else {value.shape[0]}
        if sizes != {b}:
            raise ValueError(f"inconsistent batch sizes {sorted(sizes)} for {b} keys")

    @property
    def batch_size(self) -> int:
        return len(self.keys)

    @property
    def latents(self) -> bool:
        """True for cached latents, False for pixels."""
        return self.video_latent is not None

    @property
    def references_present(self) -> Tensor:
        """bool [B]: the sample has at least one reference image."""
        return self.reference_mask.any(dim=1)

    @property
    def audio_mask(self) -> Tensor:
        """bool [B, N or L]: True on the valid part of ``audio`` / ``audio_latent``."""
        audio = self.audio_latent if self.latents else self.audio
        return _length_mask(audio, self.audio_lengths)

    @property
    def reference_audio_mask(self) -> Tensor:
        """bool [B, N_ref or L_ref]: True on the valid part of the reference audio (all False: none)."""
        ref = self.reference_audio_latent if self.latents else self.reference_audio
        return _length_mask(ref, self.reference_audio_lengths)

    def _tensors(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor) or (f.name == "text_embeddings" and value is not None):
                out[f.name] = value
        return out

    def _apply(self, fn) -> AVBatch:
        changes = {
            name: {k: fn(v) for k, v in value.items()} if isinstance(value, dict) else fn(value)
            for name, value in self._tensors().items()
        }
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AVBatch:
        """A copy with every tensor on ``device`` (Lightning's batch transfer calls this)."""
        return self._apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> AVBatch:
        """A copy in page-locked memory (the DataLoader's ``pin_memory=True`` calls this)."""
        return self._apply(lambda t: t.pin_memory())


def _length_mask(values: Tensor, lengths: Tensor) -> Tensor:
    positions = torch.arange(values.shape[-1], device=values.device)
    return positions[None] < lengths.to(values.device)[:, None]


def _pad_last(arrays: list[np.ndarray | None], empty: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Stack arrays that differ only in their last axis, zero padded; (stacked, lengths). None is
    empty (``empty`` gives its shape without the last axis)."""
    arrays = [np.zeros((*empty, 0), np.float32) if a is None else a for a in arrays]
    lengths = torch.tensor([a.shape[-1] for a in arrays], dtype=torch.int64)
    out = np.zeros((len(arrays), *empty, int(lengths.max())), np.float32)
    for i, a in enumerate(arrays):
        out[i, ..., : a.shape[-1]] = a
    return torch.from_numpy(out), lengths


def collate(samples: list[TrainingSample]) -> AVBatch:
    """Stack the samples of one bucket; references and reference audio are padded to the most any
    sample has."""
    if not samples:
        raise ValueError("cannot collate an empty bucket")

    def stack(name: str) -> Tensor | None:
        values = [getattr(s, name) for s in samples]
        return None if values[0] is None else torch.from_numpy(np.stack(values))

    frame_size = samples[0].references.shape[1:3]
    k_max = max(len(s.references) for s in samples)
    references = torch.zeros((len(samples), k_max, *frame_size, 3), dtype=torch.uint8)
    mask = torch.zeros((len(samples), k_max), dtype=torch.bool)
    for i, s in enumerate(samples):
        if len(s.references):
            references[i, : len(s.references)] = torch.from_numpy(s.references)
            mask[i, : len(s.references)] = True
    flags = {name: torch.tensor([getattr(s.spec, name) for s in samples]) for name in FLAGS}
    for name in ("mutual", "video_reads_audio", "audio_reads_video"):
        flags[name] = torch.tensor([getattr(s, name) for s in samples])
    latents = samples[0].audio_latent is not None
    empty = (samples[0].audio_latent.shape[0],) if latents else ()
    reference_audio, reference_lengths = _pad_last([s.reference_audio for s in samples], empty)
    return AVBatch(
        keys=[s.key for s in samples],
        tasks=[s.task for s in samples],
        captions=[s.caption for s in samples],
        transcripts=[s.transcript for s in samples],
        references=references,
        reference_mask=mask,
        audio_lengths=torch.tensor([s.audio_length for s in samples], dtype=torch.int64),
        video=stack("video"),
        audio=stack("audio"),
        video_latent=stack("video_latent"),
        audio_latent=stack("audio_latent"),
        reference_audio=None if latents else reference_audio,
        reference_audio_latent=reference_audio if latents else None,
        reference_audio_lengths=reference_lengths,
        text_embeddings=None if samples[0].text is None else collate_text([s.text for s in samples]),
        **flags,
    )
