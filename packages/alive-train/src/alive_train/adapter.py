"""The one place a data batch becomes the model's inputs and the flow-matching targets.

Every stage calls :meth:`BatchAdapter.__call__`; nothing else builds ``JointInputs`` from data. It
takes a batch of the alive-data pipeline (pixels or cached latents, captions, tasks, mutual flags,
per-sample loss masks) and returns a :class:`FlowBatch`: noisy latents at sampled flow times,
conditioning (text, I2V first frame), velocity targets and the loss masks.

Rectified flow (seed 000 §4.1, ``alive_models.flow``): x_t = (1 - t) x_0 + t eps with t = shift(u),
shift 7, target eps - x_0. By default one t per sample drives both towers, as the sampler runs them.

This phase reads the pipeline's dict batches; the typed ``AVBatch`` replaces them in
:func:`_fields` (the only function that knows the batch layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alive_data.tasks import TASKS
from alive_models import JointConfig, JointInputs, i2v_condition
from alive_models.codecs import AudioCodec, VideoCodec
from alive_models.flops import SequenceLengths
from alive_models.flow import add_noise, sample_timesteps, velocity_target
from alive_models.text import TextConditioner
from alive_train.config import FlowConfig

TASK_NAMES = tuple(sorted(TASKS))


@dataclass
class FlowBatch:
    """One training batch ready for the model and the loss."""

    inputs: JointInputs
    target_video: Tensor
    target_audio: Tensor
    video_loss_mask: Tensor  # [B] bool: the sample's video loss counts
    audio_loss_mask: Tensor  # [B] bool
    tasks: list[str]

    @property
    def size(self) -> int:
        return self.target_video.shape[0]

    @property
    def lengths(self) -> SequenceLengths:
        return SequenceLengths.from_inputs(self.inputs)

    def tokens(self, patch_size: tuple[int, int, int]) -> int:
        """Video clip tokens (after patchify) plus audio latents, summed over the batch."""
        t, h, w = self.inputs.video.shape[2:]
        clip = (t // patch_size[0]) * (h // patch_size[1]) * (w // patch_size[2])
        return self.size * (clip + self.inputs.audio.shape[-1])


@dataclass
class _Fields:
    """What the adapter reads from a data batch, whatever its container."""

    video: Tensor | None  # uint8 [B, F, H, W, 3]
    audio: Tensor | None  # float [B, N]
    video_latent: Tensor | None  # [B, C, T, h, w]
    audio_latent: Tensor | None  # [B, C, L]
    captions: list[str]
    tasks: list[str]
    mutual: Tensor
    video_loss: Tensor
    audio_loss: Tensor
    i2v: Tensor
    references: object | None


def _fields(batch: dict) -> _Fields:
    """The seam with alive-data's batch layout (dict batches of ``alive_data.pipeline``)."""
    return _Fields(
        video=batch.get("video"),
        audio=batch.get("audio"),
        video_latent=batch.get("video_latent"),
        audio_latent=batch.get("audio_latent"),
        captions=list(batch["captions"]),
        tasks=list(batch["tasks"]),
        mutual=batch["mutual"],
        video_loss=batch["video_loss"],
        audio_loss=batch["audio_loss"],
        i2v=batch["i2v"],
        references=batch.get("references"),
    )


class BatchAdapter:
    """Data batch -> :class:`FlowBatch`. Codecs encode pixel batches; cached latents pass through.

    ``caption=False`` keeps only the transcript (the captions become the null caption): T2A stage I.
    """

    def __init__(
        self,
        config: JointConfig,
        flow: FlowConfig,
        text: TextConditioner | None,
        video_codec: VideoCodec | None = None,
        audio_codec: AudioCodec | None = None,
        caption: bool = True,
    ) -> None:
        self.config, self.flow, self.text = config, flow, text
        self.video_codec, self.audio_codec, self.caption = video_codec, audio_codec, caption
        if text is not None:
            text.check_fits(config)
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
    @torch.no_grad()
    def _latents(self, f: _Fields, device: torch.device) -> tuple[Tensor, Tensor]:
        if f.video_latent is not None:
            video = f.video_latent.to(device, torch.float32)
        elif f.video is not None:
            if self.video_codec is None:
                raise ValueError("a pixel batch needs a video codec (codecs.video)")
            pixels = f.video.to(device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
            video = self.video_codec.encode(pixels).float()
        else:
            raise ValueError("the batch has neither video pixels nor a video latent")
        if f.audio_latent is not None:
            audio = f.audio_latent.to(device, torch.float32)
        elif f.audio is not None:
            if self.audio_codec is None:
                raise ValueError("a waveform batch needs an audio codec (codecs.audio)")
            audio = self.audio_codec.encode(f.audio.to(device, torch.float32)[:, None]).float()
        else:
            raise ValueError("the batch has neither audio samples nor an audio latent")
        v, a = self.config.video, self.config.audio
        if video.shape[1] != v.latent_channels or audio.shape[1] != a.in_channels:
            raise ValueError(
                f"latents with {video.shape[1]} video / {audio.shape[1]} audio channels do not fit the model "
                f"({v.latent_channels} / {a.in_channels}): cached with other codecs?"
            )
        return video, audio

    def _conditioning(self, captions: list[str]):
        if self.text is None:
            raise ValueError(
                "no caption encoders configured (text.t5 / text.qwen) and the batch has no cached text"
            )
        cond = self.text.encode(captions)
        if not self.caption:  # transcript only: keep the speech tokens, drop the caption itself
            null = self.text.null(len(captions))
            cond.video_texts, cond.video_text_masks = null.video_texts, null.video_text_masks
            cond.audio_caption, cond.audio_caption_mask = null.audio_caption, null.audio_caption_mask
        return cond

    def _i2v(self, video: Tensor, flags: Tensor) -> Tensor | None:
        if not bool(flags.any()):
            return None
        v = self.config.video
        if v.in_channels == v.latent_channels:
            raise ValueError("I2V samples need a VideoDiT with condition channels (in_channels = 2C + mask)")
        # With a causal first frame, latent 0 encodes pixel frame 0 alone: it is the image's latent.
        cond = i2v_condition(video[:, :, :1], video.shape[2], v.mask_channels)
        return cond * flags.to(cond.device, cond.dtype).view(-1, 1, 1, 1, 1)

    # -- the entry point -----------------------------------------------------------------------
    def __call__(self, batch: dict, generator: torch.Generator, device: torch.device | str) -> FlowBatch:
        """Encode, noise and condition one batch; all randomness comes from ``generator``."""
        device = torch.device(device)
        f = _fields(batch)
        if f.references is not None:
            raise NotImplementedError(
                "reference batches are trained by the reference stage, not this adapter yet"
            )
        clean = [t for t in f.tasks if TASKS[t].video_clean or TASKS[t].audio_clean]
        if clean:
            raise NotImplementedError(
                f"tasks with a clean input stream ({sorted(set(clean))}) are not supported yet"
            )
        video, audio = self._latents(f, device)
        b = video.shape[0]
        t_video = sample_timesteps(b, self.flow.shift, self.flow.distribution, generator, device)
        t_audio = (
            t_video
            if self.flow.shared_time
            else sample_timesteps(b, self.flow.shift, self.flow.distribution, generator, device)
        )
        noise_v = torch.randn(video.shape, generator=generator, device=device)
        noise_a = torch.randn(audio.shape, generator=generator, device=device)
        cond = self._conditioning(f.captions)
        inputs = JointInputs(
            video=add_noise(video, noise_v, t_video),
            audio=add_noise(audio, noise_a, t_audio),
            t_video=t_video,
            t_audio=t_audio,
            video_texts=cond.video_texts,
            audio_caption=cond.audio_caption,
            video_text_masks=cond.video_text_masks,
            audio_caption_mask=cond.audio_caption_mask,
            transcript_ids=cond.transcript_ids,
            transcript_mask=cond.transcript_mask,
            video_condition=self._i2v(video, f.i2v),
            mutual=f.mutual.to(device, torch.bool),
        )
        return FlowBatch(
            inputs=inputs,
            target_video=velocity_target(video, noise_v),
            target_audio=velocity_target(audio, noise_a),
            video_loss_mask=f.video_loss.to(device, torch.bool),
            audio_loss_mask=f.audio_loss.to(device, torch.bool),
            tasks=f.tasks,
        )
