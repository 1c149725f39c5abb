"""The one place a data batch becomes the model's inputs and the flow-matching targets.

Every stage calls :meth:`BatchAdapter.__call__`; nothing else builds ``JointInputs`` from data. It
takes an :class:`alive_data.batch.AVBatch` (pixels or cached latents, captions or cached caption
encodings, tasks, per-sample flags and loss masks, references) and returns a :class:`FlowBatch`:
noisy latents at sampled flow times, conditioning, velocity targets and the loss masks.

Rectified flow (seed 000 §4.1, ``alive_models.flow``): x_t = (1 - t) x_0 + t eps with t = shift(u),
shift 7, target eps - x_0. By default one t per sample drives both towers, as the sampler runs them.

Per-sample task flags (``alive_data.tasks``):
- a clean stream (a2v: audio, v2a: video; seed 002 §4.4) goes in as its clean latent at t = 0, the
  model reads it detached (``JointInputs.video_clean`` / ``audio_clean``) and its loss is off;
- I2V samples get the first latent frame as the condition;
- ``mutual`` False is the "indep" state (mutual dropout, seed 000 §4.4); the task's exchange routes
  (``video_reads_audio`` / ``audio_reads_video``, seed 002 Dynamic Context Routing) go in beside it;
- R2VA samples get their reference images (masked per sample in a mixed batch), TR2AV samples their
  reference audio through the audio codec (needs the AudioDiT's reference branch).

Stage variants, set by the stage (not by the batch):
- ``streams="audio"``: the audio tower alone (T2A; ``JointInputs.video`` None, the fusion does not run);
- ``refiner``: the refiner's video path (seed 000 §2.2, flow in ``alive_models.flow``): the
  high-resolution clip is degraded (1/``factor`` per side), upsampled back and encoded to z_up; the
  source y = (1 - t0) z_up + t0 eps, x_tau = (1 - tau/t0) z + (tau/t0) y, target (y - z) / t0; the
  audio goes in clean at t = 0 with its loss off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from alive_data.batch import AVBatch
from alive_data.tasks import TASKS
from alive_data.text_cache import TEXT_ENCODERS
from alive_models import JointConfig, JointInputs, i2v_condition
from alive_models.codecs import AudioCodec, VideoCodec
from alive_models.flops import SequenceLengths
from alive_models.flow import (
    add_noise,
    refiner_interpolate,
    refiner_source,
    refiner_velocity_target,
    sample_refiner_timesteps,
    sample_timesteps,
    velocity_target,
)
from alive_models.text import CaptionConditioning, TextConditioner, TranscriptTokenizer
from alive_train.config import FlowConfig

TASK_NAMES = tuple(sorted(TASKS))


@dataclass
class FlowBatch:
    """One training batch ready for the model and the loss. A stream that does not run (T2A: video)
    has no target."""

    inputs: JointInputs
    target_video: Tensor | None
    target_audio: Tensor | None
    video_loss_mask: Tensor  # [B] bool: the sample's video loss counts
    audio_loss_mask: Tensor  # [B] bool
    tasks: list[str]

    @property
    def size(self) -> int:
        return self.inputs.batch_size

    @property
    def lengths(self) -> SequenceLengths:
        return SequenceLengths.from_inputs(self.inputs)

    def tokens(self, patch_size: tuple[int, int, int]) -> int:
        """Video clip tokens (after patchify) plus audio latents, summed over the batch."""
        clip = 0
        if self.inputs.video is not None:
            t, h, w = self.inputs.video.shape[2:]
            clip = (t // patch_size[0]) * (h // patch_size[1]) * (w // patch_size[2])
        audio = 0 if self.inputs.audio is None else self.inputs.audio.shape[-1]
        return self.size * (clip + audio)


@dataclass(frozen=True)
class RefinerFlow:
    """The refiner's video path: degrade by ``factor`` per side (1080p -> 360p: 3), upsample back,
    encode; start time ``t_start`` (t0)."""

    t_start: float = 0.5
    factor: float = 3.0


def to_pixels(frames: Tensor) -> Tensor:
    """uint8 [B, F, H, W, 3] -> float [B, 3, F, H, W] in [-1, 1] (the codecs' pixel convention)."""
    return frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def degrade_and_upsample(pixels: Tensor, factor: float) -> Tensor:
    """The refiner's stand-in for a base-model clip: each frame of [B, 3, F, H, W] (in [-1, 1]) is
    shrunk to 1/``factor`` per side (bicubic with antialiasing, like an image resize) and brought
    back to H x W (bicubic, as ``alive_infer.pipeline.refine_video`` upsamples), clamped."""
    b, c, f, h, w = pixels.shape
    frames = pixels.transpose(1, 2).reshape(b * f, c, h, w)
    small = (max(1, round(h / factor)), max(1, round(w / factor)))
    low = F.interpolate(frames, size=small, mode="bicubic", antialias=True, align_corners=False)
    up = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)
    return up.reshape(b, f, c, h, w).transpose(1, 2)


def _flags(values: Tensor, device: torch.device) -> Tensor:
    return values.to(device=device, dtype=torch.bool)


class BatchAdapter:
    """:class:`AVBatch` -> :class:`FlowBatch`. Codecs encode pixels and reference images; cached
    latents pass through. Captions are encoded online by ``text`` unless the batch carries cached
    encodings (``AVBatch.text_embeddings``), which then need only the ``transcript`` tokenizer.

    ``caption=False`` keeps only the transcript (the captions become the null caption): T2A stage I.
    ``streams="audio"`` runs the audio tower alone; ``refiner`` switches the video to the refiner flow.
    """

    def __init__(
        self,
        config: JointConfig,
        flow: FlowConfig,
        text: TextConditioner | None,
        video_codec: VideoCodec | None = None,
        audio_codec: AudioCodec | None = None,
        caption: bool = True,
        transcript: TranscriptTokenizer | None = None,
        streams: Literal["both", "audio"] = "both",
        refiner: RefinerFlow | None = None,
    ) -> None:
        self.config, self.flow, self.text = config, flow, text
        self.video_codec, self.audio_codec, self.caption = video_codec, audio_codec, caption
        self.transcript = transcript or (text.transcript if text is not None else None)
        if streams not in ("both", "audio"):
            raise ValueError(f"streams must be 'both' or 'audio', got {streams!r}")
        if refiner is not None and streams != "both":
            raise ValueError("the refiner needs both towers (clean audio conditions the video)")
        self.streams, self.refiner = streams, refiner
        if text is not None:
            text.check_fits(config)
        elif self.transcript is not None and config.audio.transcript_vocab_size < self.transcript.vocab_size:
            raise ValueError(
                f"AudioDiT transcript vocabulary {config.audio.transcript_vocab_size} is smaller than the "
                f"tokenizer's {self.transcript.vocab_size}"
            )
        self._check_codecs()

    def _check_codecs(self) -> None:
        v, a, tl = self.config.video, self.config.audio, self.config.timeline
        if self.video_codec is not None:
            g = self.video_codec.geometry
            if g.channels != v.latent_channels:
                raise ValueError(
                    f"video codec gives {g.channels} channels, the model takes {v.latent_channels}"
                )
            if (g.temporal_stride, g.causal_first_frame) != (tl.temporal_stride, tl.causal_first_frame):
                raise ValueError(
                    f"video codec geometry (stride {g.temporal_stride}, causal {g.causal_first_frame}) "
                    f"does not match the model timeline (stride {tl.temporal_stride}, "
                    f"causal {tl.causal_first_frame})"
                )
        if self.audio_codec is not None:
            g = self.audio_codec.geometry
            if g.channels != a.in_channels:
                raise ValueError(f"audio codec gives {g.channels} channels, the model takes {a.in_channels}")
            if abs(g.latent_rate - tl.audio_latent_rate) > 1e-9:
                raise ValueError(
                    f"audio codec runs at {g.latent_rate} latents/s, "
                    f"the model timeline at {tl.audio_latent_rate}"
                )

    # -- clean latents -------------------------------------------------------------------------
    def _codec(self, which: str):
        codec = self.video_codec if which == "video" else self.audio_codec
        if codec is None:
            raise ValueError(f"a pixel batch (or reference images) needs a {which} codec (codecs.{which})")
        return codec

    @torch.no_grad()
    def encode_video(self, pixels: Tensor) -> Tensor:
        """[B, 3, F, H, W] in [-1, 1] -> float32 latent."""
        return self._codec("video").encode(pixels).float()

    @torch.no_grad()
    def _video(self, batch: AVBatch, device: torch.device) -> Tensor:
        if batch.latents:
            return batch.video_latent.to(device, torch.float32)
        return self.encode_video(to_pixels(batch.video.to(device)))

    @torch.no_grad()
    def _audio(self, batch: AVBatch, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """Clean audio latents and their key mask (None when nothing is padded)."""
        if batch.latents:  # cached latents are cut to whole latents: never padded
            return batch.audio_latent.to(device, torch.float32), None
        codec = self._codec("audio")
        audio = codec.encode(batch.audio.to(device, torch.float32)[:, None]).float()
        lengths = batch.audio_lengths
        if bool((lengths.cpu() < batch.audio.shape[-1]).any()):  # pixel clips a little short of audio
            hop = codec.geometry.hop_length
            valid = torch.div(lengths.to(device) + hop - 1, hop, rounding_mode="floor")
            return audio, torch.arange(audio.shape[-1], device=device)[None] < valid[:, None]
        return audio, None

    def _check_channels(self, video: Tensor | None, audio: Tensor) -> None:
        v, a = self.config.video, self.config.audio
        if (video is not None and video.shape[1] != v.latent_channels) or audio.shape[1] != a.in_channels:
            got = "-" if video is None else video.shape[1]
            raise ValueError(
                f"latents with {got} video / {audio.shape[1]} audio channels do not fit the model "
                f"({v.latent_channels} / {a.in_channels}): cached with other codecs?"
            )

    # -- conditioning --------------------------------------------------------------------------
    def conditioning(self, batch: AVBatch, device: torch.device) -> CaptionConditioning:
        """Text conditioning: the batch's cached caption encodings when it has them, else encoded."""
        if batch.text_embeddings is not None:
            cond = self._cached_text(batch, device)
        elif self.text is not None:
            cond = self.text.encode(batch.captions)
        else:
            raise ValueError(
                "no caption encoders configured (text.t5 / text.qwen) and the batch has no cached "
                "caption encodings (data.pipeline.text_embeddings)"
            )
        if not self.caption:  # transcript only: keep the speech tokens, drop the caption itself
            if self.text is None:
                raise ValueError("transcript-only training (text.caption=false) needs the caption encoders")
            null = self.text.null(batch.batch_size)
            cond.video_texts, cond.video_text_masks = null.video_texts, null.video_text_masks
            cond.audio_caption, cond.audio_caption_mask = null.audio_caption, null.audio_caption_mask
        return _to(cond, device)

    def _cached_text(self, batch: AVBatch, device: torch.device) -> CaptionConditioning:
        cached = batch.text_embeddings
        missing = [n for n in TEXT_ENCODERS if n not in cached]
        if missing:
            raise ValueError(f"cached caption encodings lack {missing}: set data.pipeline.text_embeddings")
        if self.transcript is None:
            raise ValueError("cached caption encodings need the transcript tokenizer (text.transcript)")
        dims = tuple(cached[n].shape[-1] for n in TEXT_ENCODERS)
        expected = tuple(self.config.video.text_dims)
        if dims != expected or dims[1] != self.config.audio.caption_dim:
            raise ValueError(
                f"cached caption encodings are {dims} wide; the model takes {expected} (other encoders?)"
            )
        texts = [cached[n].to(device, torch.float32) for n in TEXT_ENCODERS]
        masks = [cached[f"{n}_mask"].to(device) for n in TEXT_ENCODERS]
        ids, mask = self.transcript(batch.transcripts)
        return CaptionConditioning(texts, masks, texts[1], masks[1], ids.to(device), mask.to(device))

    def _i2v(self, video: Tensor, flags: Tensor) -> Tensor | None:
        v = self.config.video
        if v.in_channels == v.latent_channels:
            if bool(flags.any()):
                raise ValueError(
                    "I2V samples need a VideoDiT with condition channels (in_channels = 2C + mask)"
                )
            return None
        # A zero condition is what the VideoDiT feeds when there is none, so T2V samples get zeros and
        # nothing is read on the host. With a causal first frame, latent 0 encodes pixel frame 0
        # alone: it is the image's latent.
        cond = i2v_condition(video[:, :, :1], video.shape[2], v.mask_channels)
        return cond * flags.to(cond.device, cond.dtype).view(-1, 1, 1, 1, 1)

    @torch.no_grad()
    def encode_references(self, images: Tensor) -> Tensor:
        """Reference images uint8 [B, K, H, W, 3] at the clip's resolution -> latents [B, K, C, h, w],
        each image encoded by the video codec as a one-frame clip."""
        b, k, h, w, _ = images.shape
        latents = self.encode_video(to_pixels(images.reshape(b * k, 1, h, w, 3)))  # [B*K, C, 1, h', w']
        return latents[:, :, 0].reshape(b, k, *latents.shape[1:2], *latents.shape[3:])

    def references(self, batch: AVBatch, device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """The batch's reference latents and per-sample mask (None: every sample uses them), or
        (None, None) when it has none. A sample with no references (the mix drew no r2va for it) is
        masked out, so r2va and other tasks share a batch."""
        if batch.references.shape[1] == 0:
            return None, None
        slots = batch.reference_mask
        uses = slots.any(dim=1)
        if not bool((slots.all(dim=1) | ~uses).all()):
            raise ValueError(
                "a batch mixes samples with different numbers of reference images (padded); JointInputs "
                "masks references per sample, not per slot, so set "
                "data.pipeline.buckets.by_reference_count=true"
            )
        latents = self.encode_references(batch.references.to(device))
        return latents, None if bool(uses.all()) else uses.to(device)

    @torch.no_grad()
    def reference_audio(self, batch: AVBatch, device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """Reference-audio latents [B, C, L_ref] and their key mask (TR2AV, voice cloning), or
        (None, None) when no sample has any. Waveforms go through the audio codec; a sample without a
        reference has an all-False mask row."""
        lengths = batch.reference_audio_lengths
        if not bool((lengths > 0).any()):
            return None, None
        if not self.config.audio.reference_audio:
            raise ValueError(
                "the batch has reference audio (task tr2av) but the AudioDiT has no reference branch "
                "(model.audio.reference_audio: true, or a unitalking preset)"
            )
        lengths = lengths.to(device)
        if batch.latents:
            latents = batch.reference_audio_latent.to(device, torch.float32)
        else:
            codec = self._codec("audio")
            latents = codec.encode(batch.reference_audio.to(device, torch.float32)[:, None]).float()
            hop = codec.geometry.hop_length
            lengths = torch.div(lengths + hop - 1, hop, rounding_mode="floor")
        return latents, torch.arange(latents.shape[-1], device=device)[None] < lengths[:, None]

    # -- the entry point -----------------------------------------------------------------------
    def __call__(self, batch: AVBatch, generator: torch.Generator, device: torch.device | str) -> FlowBatch:
        """Encode, noise and condition one batch; all randomness comes from ``generator``."""
        device = torch.device(device)
        b = batch.batch_size
        audio, audio_mask = self._audio(batch, device)
        video = None if self.streams == "audio" else self._video(batch, device)
        self._check_channels(video, audio)
        flow = self.flow
        t = sample_timesteps(b, flow.shift, flow.distribution, generator, device)
        t_audio = (
            t if flow.shared_time else sample_timesteps(b, flow.shift, flow.distribution, generator, device)
        )
        video_clean, audio_clean = _flags(batch.video_clean, device), _flags(batch.audio_clean, device)
        video_loss = _flags(batch.video_loss, device) & ~video_clean
        audio_loss = _flags(batch.audio_loss, device) & ~audio_clean
        if self.refiner is not None:  # the audio conditions the refined video: clean, no loss
            audio_clean = torch.ones_like(audio_clean)
            audio_loss = torch.zeros_like(audio_loss)
        noise_a = torch.randn(audio.shape, generator=generator, device=device)
        t_audio = torch.where(audio_clean, 0.0, t_audio)
        x_audio = torch.where(audio_clean.view(-1, 1, 1), audio, add_noise(audio, noise_a, t_audio))
        target_audio = velocity_target(audio, noise_a)

        x_video = target_video = t_video = condition = references = reference_mask = None
        if video is not None:
            noise_v = torch.randn(video.shape, generator=generator, device=device)
            if self.refiner is not None:
                x_video, target_video, t_video = self._refiner_video(batch, video, noise_v, generator)
            else:
                t_video = torch.where(video_clean, 0.0, t)
                x_video = torch.where(
                    video_clean.view(-1, 1, 1, 1, 1), video, add_noise(video, noise_v, t_video)
                )
                target_video = velocity_target(video, noise_v)
            condition = self._i2v(video, batch.i2v)
            references, reference_mask = self.references(batch, device)
        reference_audio, reference_audio_mask = self.reference_audio(batch, device)

        cond = self.conditioning(batch, device)
        inputs = JointInputs(
            video=x_video,
            audio=x_audio,
            t_video=t_video,
            t_audio=t_audio,
            **vars(cond),  # CaptionConditioning holds JointInputs' text fields, field for field
            video_condition=condition,
            references=references,
            reference_mask=reference_mask,
            mutual=_flags(batch.mutual, device),
            video_reads_audio=_flags(batch.video_reads_audio, device),
            audio_reads_video=_flags(batch.audio_reads_video, device),
            audio_mask=audio_mask,
            video_clean=video_clean if video is not None else None,
            audio_clean=audio_clean,
            reference_audio=reference_audio,
            reference_audio_mask=reference_audio_mask,
        )
        return FlowBatch(inputs, target_video, target_audio, video_loss, audio_loss, list(batch.tasks))

    def _refiner_video(
        self, batch: AVBatch, clean: Tensor, noise: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(x_tau, target, tau) of the refiner flow for the clean high-resolution latent ``clean``."""
        if batch.latents:
            raise ValueError(
                "the refiner degrades pixels: train it on pixel shards (data.pipeline.latents: null)"
            )
        r = self.refiner
        with torch.no_grad():
            upsampled = self.encode_video(
                degrade_and_upsample(to_pixels(batch.video.to(clean.device)), r.factor)
            )
        source = refiner_source(upsampled, noise, r.t_start)
        tau = sample_refiner_timesteps(clean.shape[0], r.t_start, self.flow.shift, generator, clean.device)
        x = refiner_interpolate(clean, source, tau, r.t_start)
        return x, refiner_velocity_target(clean, source, r.t_start), tau


def _to(cond: CaptionConditioning, device: torch.device) -> CaptionConditioning:
    def move(x):
        return [t.to(device) for t in x] if isinstance(x, list) else x.to(device)

    return CaptionConditioning(**{name: move(value) for name, value in vars(cond).items()})
