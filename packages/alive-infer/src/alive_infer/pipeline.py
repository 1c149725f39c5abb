"""The generation pipeline: request -> validated plan -> caption -> text encoders -> sampler with
guidance -> codecs -> frames + waveform -> mp4 + wav + JSON sidecar.

Everything a request can get wrong is checked by :meth:`AlivePipeline.plan` before any tensor is
computed: task and inputs, image size and mode, a duration the video codec cannot make, the caption's
tags, speech longer than the clip. Model, codecs and text encoders are checked against each other
when the pipeline is built.

The refiner cascade (seed 000 §2.2, ``alive_models.flow``): the base clip is upsampled, encoded,
noised to t0 (``refiner_source``) and integrated from t0 to 0 by the refiner model with the audio
latent held clean (t_audio = 0): see :func:`refine_video`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import alive_infer
import alive_models
from alive_infer.guidance import DualReferenceCFG, Guidance, GuidedVelocity
from alive_infer.output import hash_tree, sha256_file, write_outputs
from alive_infer.prompt import PreparedPrompt, PromptError, Rewriter, prepare_prompt
from alive_infer.retrieval import DEFAULT_TAU, EmbedFn, SoundEventIndex
from alive_infer.sampling import SOLVERS, Solver, initial_noise, sample
from alive_models.codecs import AudioCodec, VideoCodec
from alive_models.flow import DEFAULT_SHIFT, refiner_source
from alive_models.joint import i2v_condition
from alive_models.text import CaptionConditioning

Task = Literal["t2va", "i2va", "r2va"]
TASKS: tuple[str, ...] = ("t2va", "i2va", "r2va")
# Short side in pixels; the long side follows the aspect ratio.
RESOLUTIONS = {"360p": 360, "480p": 480, "720p": 720, "1080p": 1080}
DEFAULT_SECONDS = 5.0
ImageInput = str | os.PathLike | np.ndarray | Any  # a path, uint8 [H, W, 3], or a PIL image


class RequestError(ValueError):
    """A generation request that cannot be served; raised before any compute."""


@dataclass(frozen=True)
class RefineSettings:
    """The refiner cascade: target resolution, start time t0 and steps (seed 000 §2.2)."""

    resolution: str | tuple[int, int] = "1080p"
    t_start: float = 0.5
    steps: int = 20


@dataclass(frozen=True)
class GenerationRequest:
    """One clip to generate. ``resolution``: "480p" etc. with ``aspect_ratio``, or (height, width);
    None = the first-frame image's size for I2VA, else 480p. ``duration`` (seconds) or
    ``num_frames``; neither = the nearest makeable length >= 5 s."""

    prompt: str
    task: Task = "t2va"
    negative_prompt: str = ""
    duration: float | None = None
    num_frames: int | None = None
    resolution: str | tuple[int, int] | None = None
    aspect_ratio: str = "16:9"
    steps: int = 50
    solver: Solver = "euler"
    shift: float = DEFAULT_SHIFT
    seed: int = 0
    guidance: Guidance = field(default_factory=Guidance)
    image: ImageInput | None = None
    references: Sequence[ImageInput] = ()
    refine: RefineSettings | None = None
    sound_tau: float = DEFAULT_TAU


@dataclass
class Plan:
    """A validated request with everything resolved (no tensors computed yet)."""

    request: GenerationRequest
    prompt: PreparedPrompt
    height: int
    width: int
    num_frames: int
    fps: float
    latent_shape: tuple[int, int, int, int]  # video [C, T, h, w]
    audio_latents: int
    audio_samples: int  # the clip's length in samples: frames / fps * rate
    image: np.ndarray | None = None
    references: list[np.ndarray] = field(default_factory=list)
    input_hashes: dict[str, str] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


@dataclass
class GenerationResult:
    """Frames uint8 [F, H, W, 3], mono audio float32 [N], the latents, and the sidecar record."""

    frames: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int
    video_latent: Tensor
    audio_latent: Tensor
    record: dict[str, Any]

    def save(self, out: str | os.PathLike) -> dict[str, Path]:
        """clip.mp4 + clip.wav + clip.json, all or nothing."""
        return write_outputs(out, self.frames, self.fps, self.audio, self.sample_rate, self.record)


def load_image(source: ImageInput, what: str = "image") -> np.ndarray:
    """uint8 [H, W, 3] RGB from a path, a PIL image or an array; other modes are an error."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (str, os.PathLike)):
        try:
            with Image.open(source) as im:
                im.load()
                source = im.copy()
        except FileNotFoundError:
            raise RequestError(f"{what} {source} does not exist") from None
        except (UnidentifiedImageError, OSError) as e:
            raise RequestError(f"{what} {source} is not a readable image: {e}") from None
    if isinstance(source, Image.Image):
        if source.mode != "RGB":
            raise RequestError(
                f"{what} has mode {source.mode}; an RGB image is needed (image.convert('RGB'))"
            )
        return np.asarray(source, dtype=np.uint8).copy()
    array = np.asarray(source)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise RequestError(f"{what} must be uint8 [H, W, 3] RGB, got {array.dtype} {array.shape}")
    return array


def _image_hash(source: ImageInput, pixels: np.ndarray) -> str:
    if isinstance(source, (str, os.PathLike)):
        return sha256_file(source)
    import hashlib

    return hashlib.sha256(pixels.tobytes()).hexdigest()


def _to_pixels(images: list[np.ndarray], device) -> Tensor:
    """uint8 [H, W, 3] images -> [N, 3, 1, H, W] in [-1, 1] (one-frame clips for the video codec)."""
    x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float()
    return (x / 127.5 - 1.0)[:, :, None]


def _to_frames(video: Tensor) -> np.ndarray:
    """[1, 3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    x = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


class AlivePipeline:
    """ALIVE generation from built parts: the joint model, the codecs, the text conditioner
    (``alive_models.text.TextConditioner`` or anything with its ``encode`` and ``t5``/``qwen``/
    ``transcript`` encoders), and optional prompt tools and a refiner model.

    ``provenance`` names the files the parts were loaded from ({"model": dir, ...}); their sha256
    hashes go into every sidecar.
    """

    def __init__(
        self,
        model: nn.Module,
        video_codec: VideoCodec,
        audio_codec: AudioCodec,
        text_conditioner,
        *,
        rewriter: Rewriter | None = None,
        sound_index: SoundEventIndex | None = None,
        sound_embed: EmbedFn | None = None,
        refiner: nn.Module | None = None,
        provenance: dict[str, str | os.PathLike] | None = None,
    ) -> None:
        self.model, self.video_codec, self.audio_codec = model.eval(), video_codec, audio_codec
        self.text = text_conditioner
        self.rewriter, self.sound_index, self.sound_embed = rewriter, sound_index, sound_embed
        self.refiner = None if refiner is None else refiner.eval()
        self.provenance = {k: Path(v) for k, v in (provenance or {}).items()}
        self._hashes: dict[str, dict[str, str]] | None = None
        self.config = model.config
        for name, m in (("model", model), ("refiner", refiner)):
            if m is not None:
                self._check_parts(name, m.config)
        if sound_index is not None and sound_embed is None:
            raise ValueError("a sound index needs the embedding function it was built with (sound_embed)")

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> AlivePipeline:
        raise NotImplementedError(
            "loading from an exported directory needs JointAVDiT.from_pretrained (alive-models); "
            "build the parts and pass them to AlivePipeline(...) meanwhile"
        )

    def _check_parts(self, name: str, config) -> None:
        vg, ag, tl = self.video_codec.geometry, self.audio_codec.geometry, config.timeline
        problems = []
        if config.video.latent_channels != vg.channels:
            problems.append(
                f"video latents have {config.video.latent_channels} channels, codec {vg.channels}"
            )
        if config.audio.in_channels != ag.channels:
            problems.append(f"audio latents have {config.audio.in_channels} channels, codec {ag.channels}")
        if (tl.temporal_stride, tl.causal_first_frame) != (vg.temporal_stride, vg.causal_first_frame):
            problems.append(
                f"timeline stride {tl.temporal_stride} (causal {tl.causal_first_frame}) vs codec "
                f"{vg.temporal_stride} (causal {vg.causal_first_frame})"
            )
        if not math.isclose(tl.audio_latent_rate, ag.latent_rate):
            problems.append(f"timeline has {tl.audio_latent_rate} audio latents/s, codec {ag.latent_rate}")
        if problems:
            raise ValueError(f"{name} does not fit the codecs: " + "; ".join(problems))
        if hasattr(self.text, "check_fits"):
            self.text.check_fits(config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fps(self) -> float:
        return self.config.timeline.fps

    # ---------------------------------------------------------------------------------------------
    # Validation

    def _size(self, request: GenerationRequest, image: np.ndarray | None) -> tuple[int, int]:
        v = self.config.video
        multiple = self.video_codec.geometry.spatial_stride * math.lcm(v.patch_size[1], v.patch_size[2])
        res = request.resolution
        if res is None and image is not None:
            return self._check_multiple(image.shape[0], image.shape[1], multiple, "the image's size")
        res = res or "480p"
        if isinstance(res, str):
            if res not in RESOLUTIONS:
                raise RequestError(
                    f"unknown resolution {res!r}; use one of {sorted(RESOLUTIONS)} or (height, width)"
                )
            try:
                a, b = (float(x) for x in request.aspect_ratio.split(":"))
            except ValueError:
                raise RequestError(
                    f"aspect ratio must look like 16:9, got {request.aspect_ratio!r}"
                ) from None
            short, long_ = RESOLUTIONS[res], RESOLUTIONS[res] * max(a, b) / min(a, b)
            long_ = max(multiple, round(long_ / multiple) * multiple)
            short = max(multiple, round(short / multiple) * multiple)
            return (short, long_) if a >= b else (long_, short)
        height, width = res
        return self._check_multiple(int(height), int(width), multiple, "the resolution")

    @staticmethod
    def _check_multiple(height: int, width: int, multiple: int, what: str) -> tuple[int, int]:
        if height <= 0 or width <= 0 or height % multiple or width % multiple:
            raise RequestError(
                f"{what} {height}x{width} (HxW) must be positive multiples of {multiple} "
                "(codec stride x patch size)"
            )
        return height, width

    def _frames(self, request: GenerationRequest) -> int:
        tl, fps = self.config.timeline, self.fps
        if request.duration is not None and request.num_frames is not None:
            raise RequestError("give duration or num_frames, not both")
        if request.num_frames is not None:
            frames = request.num_frames
        elif request.duration is not None:
            if not request.duration > 0:
                raise RequestError(f"duration must be positive, got {request.duration}")
            exact = request.duration * fps
            frames = round(exact)
            if abs(exact - frames) > 1e-6 * max(1.0, exact):
                frames = -1  # not a whole number of frames
        else:
            latents = math.ceil((DEFAULT_SECONDS * fps - 1) / tl.temporal_stride) + 1
            return tl.num_frames(latents)
        try:
            tl.num_video_latents(frames)
            return frames
        except ValueError:
            pass
        target = request.duration * fps if request.duration is not None else frames
        below = tl.num_frames(max(1, tl.num_video_latents(max(1, math.floor(target)), strict=False)))
        above = tl.num_frames(tl.num_video_latents(below, strict=False) + 1)
        asked = f"{request.duration} s" if request.duration is not None else f"{frames} frames"
        raise RequestError(
            f"the video codec cannot make {asked} at {fps:g} fps: it needs 1 + {tl.temporal_stride}k frames "
            f"(causal first frame); nearest: {below} frames = {below / fps:.4g} s or {above} frames = "
            f"{above / fps:.4g} s"
        )

    def plan(self, request: GenerationRequest) -> Plan:
        """Validate ``request`` and resolve sizes, lengths, images and the caption. No model compute
        (except the optional prompt rewriter, which runs after every cheap check)."""
        r = request
        if r.task not in TASKS:
            raise RequestError(f"unknown task {r.task!r}; choose one of {TASKS} (t2v and t2a come later)")
        if r.solver not in SOLVERS:
            raise RequestError(f"unknown solver {r.solver!r}; choose one of {SOLVERS}")
        if not isinstance(r.steps, int) or r.steps < 1:
            raise RequestError(f"steps must be a positive integer, got {r.steps!r}")
        if not isinstance(r.seed, int) or not 0 <= r.seed < 2**63:
            raise RequestError(f"seed must be an integer in [0, 2^63), got {r.seed!r}")
        if r.shift <= 0:
            raise RequestError(f"shift must be positive, got {r.shift}")
        image, references, hashes = None, [], {}
        if r.task == "i2va":
            if r.image is None:
                raise RequestError("task i2va needs a first-frame image")
            if self.config.video.in_channels == self.config.video.latent_channels:
                raise RequestError("this model has no image-condition input (in_channels == latent_channels)")
            image = load_image(r.image, "first-frame image")
            hashes["image"] = _image_hash(r.image, image)
        elif r.image is not None:
            raise RequestError(f"an image was given but the task is {r.task}; use task i2va")
        if r.task == "r2va":
            if not r.references:
                raise RequestError("task r2va needs one or more reference images")
            references = [load_image(x, f"reference image {i + 1}") for i, x in enumerate(r.references)]
            hashes.update(
                {
                    f"reference_{i + 1}": _image_hash(x, p)
                    for i, (x, p) in enumerate(zip(r.references, references, strict=True))
                }
            )
        elif r.references:
            raise RequestError(f"reference images were given but the task is {r.task}; use task r2va")
        if r.task != "r2va" and any(
            isinstance(g, DualReferenceCFG) for g in (r.guidance.video, r.guidance.audio)
        ):
            raise RequestError("dual reference guidance (eq. 9) needs task r2va with reference images")

        height, width = self._size(r, image)
        for name, pixels in [
            ("first-frame image", image),
            *[(f"reference image {i + 1}", p) for i, p in enumerate(references)],
        ]:
            if pixels is not None and pixels.shape[:2] != (height, width):
                raise RequestError(
                    f"{name} is {pixels.shape[0]}x{pixels.shape[1]} (HxW) but the clip is {height}x{width}; "
                    "resize it or choose that resolution"
                )
        frames = self._frames(r)
        if r.refine is not None:
            if self.refiner is None:
                raise RequestError("refining needs a refiner model (AlivePipeline(refiner=...))")
            rs = r.refine
            if not 0 < rs.t_start <= 1 or rs.steps < 1:
                raise RequestError(f"refiner needs 0 < t_start <= 1 and steps >= 1, got {rs}")
            self._size(dataclasses.replace(r, resolution=rs.resolution), None)

        try:
            prompt = prepare_prompt(r.prompt, self.rewriter, self.sound_index, self.sound_embed, r.sound_tau)
        except PromptError as e:
            raise RequestError(str(e)) from e
        vg, ag = self.video_codec.geometry, self.audio_codec.geometry
        t, h, w = vg.latent_shape(frames, height, width)
        audio_samples = round(frames / self.fps * ag.sample_rate)
        audio_latents = math.ceil(frames / self.fps * ag.latent_rate)
        speech = self.text.transcript([prompt.caption.speech_text])[1].sum().item()
        if speech > audio_latents:
            raise RequestError(
                f"the speech has {speech} tokens but a {frames / self.fps:.2f} s clip has {audio_latents} "
                "audio latents: shorten the <W> text or lengthen the clip"
            )
        return Plan(
            request=r,
            prompt=prompt,
            height=height,
            width=width,
            num_frames=frames,
            fps=self.fps,
            latent_shape=(vg.channels, t, h, w),
            audio_latents=audio_latents,
            audio_samples=audio_samples,
            image=image,
            references=references,
            input_hashes=hashes,
        )

    # ---------------------------------------------------------------------------------------------
    # Generation

    def encode_negative(self, text: str) -> CaptionConditioning:
        """A negative prompt is plain text, not a structured caption: encoded as it is, no speech."""
        if not text.strip():
            return self.text.null(1)
        t5, qwen = self.text.t5.encode([text]), self.text.qwen.encode([text])
        ids, mask = self.text.transcript([""])
        return CaptionConditioning(
            video_texts=[t5.hidden, qwen.hidden],
            video_text_masks=[t5.mask, qwen.mask],
            audio_caption=qwen.hidden,
            audio_caption_mask=qwen.mask,
            transcript_ids=ids.to(qwen.hidden.device),
            transcript_mask=mask.to(qwen.hidden.device),
        )

    @torch.inference_mode()
    def generate(
        self, request: GenerationRequest, progress: Callable[[int, int, float, float], None] | None = None
    ) -> GenerationResult:
        """Validate, then sample; ``progress(step, steps, t, t_next)`` after each step."""
        plan = self.plan(request)
        r, device = plan.request, self.device
        positive = self.text.encode([plan.prompt.caption])
        negative = self.encode_negative(r.negative_prompt)
        generator = torch.Generator().manual_seed(r.seed)  # draws: video noise, audio noise, refiner noise
        video = initial_noise((1, *plan.latent_shape), generator, device)
        audio = initial_noise((1, self.audio_codec.geometry.channels, plan.audio_latents), generator, device)
        condition = references = None
        if plan.image is not None:
            first = self.video_codec.encode(_to_pixels([plan.image], device))
            condition = i2v_condition(first, plan.latent_shape[1], self.config.video.mask_channels)
        if plan.references:
            refs = self.video_codec.encode(_to_pixels(plan.references, device))  # [K, C, 1, h, w]
            references = refs[:, :, 0][None]  # [1, K, C, h, w]
        velocity = GuidedVelocity(self.model, positive, negative, r.guidance, condition, references)
        video, audio = sample(
            velocity, video, audio, steps=r.steps, solver=r.solver, shift=r.shift, callback=progress
        )
        pixels = self.video_codec.decode(video)
        refined = None
        if r.refine is not None:
            size = self._size(dataclasses.replace(r, resolution=r.refine.resolution), None)
            video = refine_video(
                self.refiner,
                self.video_codec,
                pixels,
                audio,
                positive,
                negative,
                size=size,
                t_start=r.refine.t_start,
                steps=r.refine.steps,
                solver=r.solver,
                shift=r.shift,
                guidance=r.guidance,
                generator=generator,
                callback=progress,
            )
            pixels = self.video_codec.decode(video)
            refined = {"height": size[0], "width": size[1]}
        wave = self.audio_codec.decode(audio)[0, 0, : plan.audio_samples].float().cpu().numpy()
        frames = _to_frames(pixels)
        record = self.record(plan, refined)
        return GenerationResult(
            frames, wave, plan.fps, self.audio_codec.geometry.sample_rate, video, audio, record
        )

    def record(self, plan: Plan, refined: dict | None = None) -> dict[str, Any]:
        """The sidecar: prompt, caption, seed, every setting, input and model file hashes, versions."""
        r = plan.request
        settings = {
            f.name: getattr(r, f.name)
            for f in dataclasses.fields(r)
            if f.name not in ("prompt", "image", "references", "guidance", "refine")
        }
        if self._hashes is None:
            self._hashes = {name: hash_tree(path) for name, path in self.provenance.items()}
        return {
            "prompt": r.prompt,
            "negative_prompt": r.negative_prompt,
            "caption": plan.prompt.caption.render(),
            "prompt_processing": plan.prompt.to_dict(),
            "seed": r.seed,
            "task": r.task,
            "settings": {
                **settings,
                "height": plan.height,
                "width": plan.width,
                "num_frames": plan.num_frames,
                "fps": plan.fps,
                "duration": plan.duration,
                "audio_samples": plan.audio_samples,
                "sample_rate": self.audio_codec.geometry.sample_rate,
                "guidance": r.guidance.to_dict(),
                "refine": None if r.refine is None else {**dataclasses.asdict(r.refine), **(refined or {})},
            },
            "inputs": plan.input_hashes,
            "model_files": self._hashes,
            "versions": {
                "alive_infer": alive_infer.__version__,
                "alive_models": alive_models.__version__,
                "torch": torch.__version__,
            },
            "device": str(self.device),
        }


def refine_video(
    refiner: nn.Module,
    video_codec: VideoCodec,
    pixels: Tensor,
    audio_latent: Tensor,
    positive: CaptionConditioning,
    negative: CaptionConditioning | None,
    *,
    size: tuple[int, int],
    t_start: float,
    steps: int,
    solver: Solver = "euler",
    shift: float = DEFAULT_SHIFT,
    guidance: Guidance | None = None,
    generator: torch.Generator,
    callback=None,
) -> Tensor:
    """The refiner cascade on a base clip: pixels [B, 3, F, H, W] in [-1, 1] are upsampled to
    ``size`` frame by frame (bicubic), encoded to z_up, noised to y = refiner_source(z_up, eps, t0),
    and integrated from t0 to 0 by ``refiner`` with the audio latent held clean. Returns the refined
    video latent."""
    b, c, f, h, w = pixels.shape
    frames = pixels.transpose(1, 2).reshape(b * f, c, h, w).float()
    up = F.interpolate(frames, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
    up = up.reshape(b, f, c, *size).transpose(1, 2)
    z_up = video_codec.encode(up)
    source = refiner_source(z_up, initial_noise(z_up.shape, generator, z_up.device), t_start)
    velocity = GuidedVelocity(refiner, positive, negative, guidance or Guidance())
    video, _ = sample(
        velocity,
        source,
        audio_latent,
        steps=steps,
        solver=solver,
        shift=shift,
        t_start=t_start,
        clean_audio=True,
        callback=callback,
    )
    return video
