"""The generation pipeline: request -> validated plan -> caption -> text encoders -> sampler with
guidance -> codecs -> frames + waveform -> mp4 + wav + JSON sidecar.

Tasks: T2VA, I2VA (first-frame image), R2VA (reference images), TR2AV (reference audio: voice
cloning, seed 004 §4.4; needs the AudioDiT's reference branch) generate both towers; T2V and T2A
generate one through the model's one-stream forward (the other tower never runs; guidance rules
collapse as :mod:`alive_infer.guidance` describes). A pipeline is built from parts or loaded from an
exported directory (:meth:`AlivePipeline.from_pretrained`, layout in :mod:`alive_infer.checkpoint`).

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
from torch.distributed.device_mesh import DeviceMesh

import alive_infer
import alive_models
from alive_infer.checkpoint import (
    SPEC_NAME,
    TASKS,
    CheckpointError,
    PipelineSpec,
    TextEncoderSpec,
    check_spec,
    check_weights,
    codec_problems,
    encoder_width,
    parse_dtype,
    read_model_config,
    read_pipeline_spec,
    resolve,
    resolve_codec_spec,
)
from alive_infer.distributed import shard_for_inference
from alive_infer.guidance import DualReferenceCFG, Guidance, GuidedVelocity, Tower
from alive_infer.output import hash_tree, sha256_file, tensor_sha256, write_outputs
from alive_infer.prompt import PreparedPrompt, PromptError, Rewriter, prepare_prompt
from alive_infer.retrieval import DEFAULT_TAU, EmbedFn, SoundEventIndex
from alive_infer.sampling import SOLVERS, Solver, initial_noise, sample
from alive_models.codecs import AudioCodec, VideoCodec, audio_codec_from_spec, video_codec_from_spec
from alive_models.config import JointConfig
from alive_models.flow import DEFAULT_SHIFT, refiner_source
from alive_models.joint import JointAVDiT, i2v_condition
from alive_models.pretrained import CONFIG_NAME
from alive_models.text import CaptionConditioning, TextConditioner

Task = Literal["t2va", "i2va", "r2va", "tr2av", "t2v", "t2a"]
# The towers each task generates.
TOWERS: dict[str, tuple[Tower, ...]] = {
    "t2va": ("video", "audio"),
    "i2va": ("video", "audio"),
    "r2va": ("video", "audio"),
    "tr2av": ("video", "audio"),
    "t2v": ("video",),
    "t2a": ("audio",),
}
# Short side in pixels; the long side follows the aspect ratio.
RESOLUTIONS = {"360p": 360, "480p": 480, "720p": 720, "1080p": 1080}
DEFAULT_SECONDS = 5.0
ImageInput = str | os.PathLike | np.ndarray | Any  # a path, uint8 [H, W, 3], or a PIL image
AudioInput = str | os.PathLike | tuple[np.ndarray, int]  # a sound file, or (waveform, sample rate)


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
    ``num_frames``; neither = the nearest makeable length >= 5 s. T2A takes ``duration`` only (any
    positive length) and no resolution. ``reference_audio`` (TR2AV): a sound file soundfile reads
    (WAV, FLAC, ...) or (waveform [N] or [N, channels], sample rate); it is mixed down to mono,
    resampled to the audio codec's rate and encoded by the audio codec."""

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
    reference_audio: AudioInput | None = None
    refine: RefineSettings | None = None
    sound_tau: float = DEFAULT_TAU


@dataclass
class Plan:
    """A validated request with everything resolved (no tensors computed yet). Video fields are None
    for T2A, audio fields None for T2V."""

    request: GenerationRequest
    prompt: PreparedPrompt
    towers: tuple[Tower, ...]
    duration: float  # seconds
    fps: float
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    latent_shape: tuple[int, int, int, int] | None = None  # video [C, T, h, w]
    audio_latents: int | None = None
    audio_samples: int | None = None  # the clip's length in samples: duration * rate
    image: np.ndarray | None = None
    references: list[np.ndarray] = field(default_factory=list)
    reference_audio: np.ndarray | None = None  # mono float32 at the audio codec's rate
    input_hashes: dict[str, str] = field(default_factory=dict)


@dataclass
class GenerationResult:
    """Frames uint8 [F, H, W, 3] and mono audio float32 [N] (None for a tower the task does not make,
    or when ``generate(decode=False)``), the latents, and the sidecar record."""

    frames: np.ndarray | None
    audio: np.ndarray | None
    fps: float
    sample_rate: int
    video_latent: Tensor | None
    audio_latent: Tensor | None
    record: dict[str, Any]

    def save(self, out: str | os.PathLike) -> dict[str, Path]:
        """clip.mp4 + clip.wav + clip.json (T2V: mp4 + json; T2A: clip.wav + json), all or nothing."""
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


def load_audio(source: AudioInput, sample_rate: int, what: str = "reference audio") -> np.ndarray:
    """Mono float32 [N] at ``sample_rate`` from a sound file or (waveform, rate): channels averaged,
    resampled with the project's resampler (``alive_models.audio.resample``)."""
    import soundfile as sf

    from alive_models.audio import resample

    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise RequestError(f"{what} {source} does not exist")
        try:
            wave, rate = sf.read(source, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise RequestError(f"{what} {source} is not a readable sound file: {e}") from None
    else:
        try:
            wave, rate = source
        except (TypeError, ValueError):
            raise RequestError(f"{what} must be a sound file or (waveform, sample rate)") from None
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim == 1:
            wave = wave[:, None]
        if wave.ndim != 2:
            raise RequestError(f"{what} waveform must be [N] or [N, channels], got shape {wave.shape}")
    if not (isinstance(rate, int) and rate > 0):
        raise RequestError(f"{what} sample rate must be a positive integer, got {rate!r}")
    if wave.shape[0] == 0 or not np.isfinite(wave).all():
        raise RequestError(f"{what} is empty or not finite")
    mono = resample(wave.mean(axis=1), rate, sample_rate)
    if len(mono) == 0:
        raise RequestError(f"{what} is shorter than one sample at {sample_rate} Hz")
    return mono


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
    (``alive_models.text.TextConditioner`` or anything with its ``encode``, ``encode_plain``,
    ``transcript`` and ``check_fits``), and optional prompt tools and a refiner model. Load an
    exported directory with :meth:`from_pretrained`.

    ``provenance`` names the files the parts were loaded from ({"model": dir, ...}); their sha256
    hashes go into every sidecar. ``spec`` (an exported directory's ``pipeline.json``) gives request
    defaults (:meth:`request`) and the tasks served; ``info`` is copied into every sidecar.
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
        spec: PipelineSpec | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.video_codec, self.audio_codec = model.eval(), video_codec, audio_codec
        self.text = text_conditioner
        self.rewriter, self.sound_index, self.sound_embed = rewriter, sound_index, sound_embed
        self.refiner = None if refiner is None else refiner.eval()
        self.provenance = {k: Path(v) for k, v in (provenance or {}).items()}
        self.spec, self.info = spec, dict(info or {})
        self.tasks = TASKS if spec is None else spec.tasks
        self._hashes: dict[str, dict[str, str]] | None = None
        self.config = model.config
        for name, m in (("model", model), ("refiner", refiner)):
            if m is not None:
                problems = codec_problems(m.config, video_codec, audio_codec)
                if problems:
                    raise ValueError(f"{name} does not fit the codecs: " + "; ".join(problems))
                self.text.check_fits(m.config)
        if sound_index is not None and sound_embed is None:
            raise ValueError("a sound index needs the embedding function it was built with (sound_embed)")

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        text_encoders: Sequence[str | os.PathLike] | TextConditioner | None = None,
        video_codec: str | VideoCodec | None = None,
        audio_codec: str | AudioCodec | None = None,
        refiner: str | os.PathLike | bool | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        text_dtype: torch.dtype | str | None = None,
        mesh: DeviceMesh | None = None,
        rewriter: Rewriter | None = None,
        sound_index: SoundEventIndex | None = None,
        sound_embed: EmbedFn | None = None,
    ) -> AlivePipeline:
        """Everything from local directories: the exported model (``path``, layout in
        :mod:`alive_infer.checkpoint`), its codecs and text encoders as ``pipeline.json`` names them,
        unless overridden: ``text_encoders`` = [T5 dir, Qwen dir(, transcript tokenizer dir)] or a
        built conditioner; ``video_codec`` / ``audio_codec`` = a codec or its spec string.
        ``refiner``: None = the export's refiner sub-directory if it has one, False = none, a path =
        that directory. ``dtype`` casts the model(s); ``text_dtype`` the encoders (default: the spec's).
        ``mesh``: a 1-D DeviceMesh to shard the models with training's plan (multi-GPU inference;
        every rank calls this and then ``generate`` with the same request).

        Every file is checked (names, JSON, safetensors headers, codec geometry against the model's
        timeline, encoder widths against the model) before anything large is loaded, and the errors
        (:class:`~alive_infer.checkpoint.CheckpointError`) name the file.
        """
        root = Path(path)
        if not root.is_dir():
            raise CheckpointError(f"{root} is not a directory (an exported ALIVE pipeline)")
        spec = read_pipeline_spec(root)
        config = read_model_config(root)
        check_spec(root, spec, config)
        check_weights(root, config)
        configs = {root / CONFIG_NAME: config}
        refiner_dir = _refiner_dir(root, spec, refiner)
        if refiner_dir is not None:
            configs[refiner_dir / CONFIG_NAME] = read_model_config(refiner_dir)
            check_weights(refiner_dir, configs[refiner_dir / CONFIG_NAME])
        device, dtype = torch.device(device), parse_dtype(dtype)
        codecs, codec_names, codec_files = {}, {}, {}
        for what, given in (("video", video_codec), ("audio", audio_codec)):
            codec, name, directory = _load_codec(root, spec, what, given, device)
            for where, cfg in configs.items():
                problems = codec_problems(cfg, **{f"{what}_codec": codec})
                if problems:
                    raise CheckpointError(f"{what} codec {name} does not fit {where}: " + "; ".join(problems))
            codecs[what], codec_names[what] = codec, name
            if directory is not None:
                codec_files[f"{what}_codec"] = directory

        text, text_files = _text_conditioner(root, spec, config, text_encoders, device, text_dtype)
        parallelize = None if mesh is None else shard_for_inference(mesh)

        def load(directory: Path) -> JointAVDiT:
            try:
                return JointAVDiT.from_pretrained(
                    directory, device=device, dtype=dtype, parallelize=parallelize
                )
            except ValueError as e:
                raise CheckpointError(f"{directory}: {e}") from None

        model = load(root)
        refiner_model = None if refiner_dir is None else load(refiner_dir)
        provenance = {"model": root, **codec_files, **text_files}
        if refiner_dir is not None and not refiner_dir.resolve().is_relative_to(root.resolve()):
            provenance["refiner"] = refiner_dir
        info = {
            "checkpoint": str(root),
            "refiner": None if refiner_dir is None else str(refiner_dir),
            "spec": spec.to_dict(),
            "codecs": codec_names,
            "text_encoders": {k: str(v) for k, v in text_files.items()},
            "dtype": str(next(model.parameters()).dtype),
            "world_size": 1 if mesh is None else mesh.size(),
        }
        return cls(
            model,
            codecs["video"],
            codecs["audio"],
            text,
            rewriter=rewriter,
            sound_index=sound_index,
            sound_embed=sound_embed,
            refiner=refiner_model,
            provenance=provenance,
            spec=spec,
            info=info,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fps(self) -> float:
        return self.config.timeline.fps

    def request(self, prompt: str, **settings) -> GenerationRequest:
        """A request with the export's defaults (sampling, guidance) where ``settings`` says nothing;
        ``refine=True`` takes the export's refiner settings."""
        if self.spec is not None:
            s = self.spec.sampling
            settings = {
                "steps": s.steps,
                "solver": s.solver,
                "shift": s.shift,
                "guidance": self.spec.guidance,
            } | {k: v for k, v in settings.items() if v is not None}
        if settings.get("refine") is True:
            r = self.spec.refiner if self.spec is not None else None
            settings["refine"] = (
                RefineSettings() if r is None else RefineSettings(r.resolution, r.t_start, r.steps)
            )
        return GenerationRequest(prompt=prompt, **{k: v for k, v in settings.items() if v is not None})

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
            if not (a > 0 and b > 0):
                raise RequestError(f"aspect ratio must be positive, got {request.aspect_ratio!r}")
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

    def _audio_seconds(self, request: GenerationRequest) -> float:
        """T2A: any positive duration (the audio codec makes every length; the wave is cut to it)."""
        if request.num_frames is not None or request.resolution is not None:
            raise RequestError("task t2a makes no video: give a duration, not num_frames or a resolution")
        seconds = DEFAULT_SECONDS if request.duration is None else request.duration
        if not seconds > 0 or not math.isfinite(seconds):
            raise RequestError(f"duration must be positive, got {seconds}")
        if round(seconds * self.audio_codec.geometry.sample_rate) < 1:
            raise RequestError(f"duration {seconds} s is shorter than one audio sample")
        return float(seconds)

    def _check_settings(self, r: GenerationRequest) -> None:
        if r.task not in TASKS:
            raise RequestError(f"unknown task {r.task!r}; choose one of {TASKS}")
        if r.task not in self.tasks:
            raise RequestError(f"this checkpoint serves tasks {self.tasks}, not {r.task}")
        if r.solver not in SOLVERS:
            raise RequestError(f"unknown solver {r.solver!r}; choose one of {SOLVERS}")
        if not isinstance(r.steps, int) or r.steps < 1:
            raise RequestError(f"steps must be a positive integer, got {r.steps!r}")
        if not isinstance(r.seed, int) or not 0 <= r.seed < 2**63:
            raise RequestError(f"seed must be an integer in [0, 2^63), got {r.seed!r}")
        if not r.shift > 0:
            raise RequestError(f"shift must be positive, got {r.shift}")
        if r.task != "r2va" and any(
            isinstance(g, DualReferenceCFG) for g in (r.guidance.video, r.guidance.audio)
        ):
            raise RequestError("dual reference guidance (eq. 9) needs task r2va with reference images")
        if isinstance(r.guidance.audio, DualReferenceCFG):
            raise RequestError("dual reference guidance (eq. 9) guides the video tower, not the audio one")

    def plan(self, request: GenerationRequest) -> Plan:
        """Validate ``request`` and resolve sizes, lengths, images and the caption. No model compute
        (except the optional prompt rewriter, which runs after every cheap check)."""
        r = request
        self._check_settings(r)
        towers = TOWERS[r.task]
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
        reference_audio = None
        if r.task == "tr2av":
            if r.reference_audio is None:
                raise RequestError("task tr2av needs a reference audio clip (--ref-audio WAV)")
            if not self.config.audio.reference_audio:
                raise RequestError(
                    "this model's AudioDiT has no reference-audio branch (voice cloning: a unitalking "
                    "preset, or audio.reference_audio=true when it was trained), so it cannot take "
                    "reference audio"
                )
            rate = self.audio_codec.geometry.sample_rate
            reference_audio = load_audio(r.reference_audio, rate)
            if isinstance(r.reference_audio, (str, os.PathLike)):
                hashes["reference_audio"] = sha256_file(r.reference_audio)
            else:
                hashes["reference_audio"] = tensor_sha256(torch.from_numpy(reference_audio))
        elif r.reference_audio is not None:
            raise RequestError(f"reference audio was given but the task is {r.task}; use task tr2av")

        vg, ag = self.video_codec.geometry, self.audio_codec.geometry
        video: dict[str, Any] = {}
        if "video" in towers:
            height, width = self._size(r, image)
            for name, pixels in [
                ("first-frame image", image),
                *[(f"reference image {i + 1}", p) for i, p in enumerate(references)],
            ]:
                if pixels is not None and pixels.shape[:2] != (height, width):
                    raise RequestError(
                        f"{name} is {pixels.shape[0]}x{pixels.shape[1]} (HxW) but the clip is "
                        f"{height}x{width}; resize it or choose that resolution"
                    )
            frames = self._frames(r)
            seconds = frames / self.fps
            t, h, w = vg.latent_shape(frames, height, width)
            video = {
                "height": height,
                "width": width,
                "num_frames": frames,
                "latent_shape": (vg.channels, t, h, w),
            }
        else:
            seconds = self._audio_seconds(r)
        if r.refine is not None:
            if "video" not in towers:
                raise RequestError("task t2a makes no video to refine")
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
        audio: dict[str, Any] = {}
        if "audio" in towers:
            latents = math.ceil(seconds * ag.latent_rate)
            speech = self.text.transcript([prompt.caption.speech_text])[1].sum().item()
            if speech > latents:
                raise RequestError(
                    f"the speech has {speech} tokens but a {seconds:.2f} s clip has {latents} audio latents: "
                    "shorten the <W> text or lengthen the clip"
                )
            audio = {"audio_latents": latents, "audio_samples": round(seconds * ag.sample_rate)}
        return Plan(
            request=r,
            prompt=prompt,
            towers=towers,
            duration=seconds,
            fps=self.fps,
            **video,
            **audio,
            image=image,
            references=references,
            reference_audio=reference_audio,
            input_hashes=hashes,
        )

    # ---------------------------------------------------------------------------------------------
    # Generation

    @torch.inference_mode()
    def generate(
        self,
        request: GenerationRequest,
        progress: Callable[[int, int, float, float], None] | None = None,
        decode: bool = True,
    ) -> GenerationResult:
        """Validate, then sample; ``progress(step, steps, t, t_next)`` after each step (the refiner's
        steps count again from 0). ``decode=False`` stops at the latents (the other ranks of a
        sharded run: only rank 0 needs pixels, a waveform and the record)."""
        plan = self.plan(request)
        r, device, towers = plan.request, self.device, plan.towers
        positive = self.text.encode([plan.prompt.caption])
        negative = self.text.encode_plain([r.negative_prompt])
        generator = torch.Generator().manual_seed(r.seed)  # draws: video noise, audio noise, refiner noise
        video = audio = condition = references = None
        if "video" in towers:
            video = initial_noise((1, *plan.latent_shape), generator, device)
        if "audio" in towers:
            channels = self.audio_codec.geometry.channels
            audio = initial_noise((1, channels, plan.audio_latents), generator, device)
        if plan.image is not None:
            first = self.video_codec.encode(_to_pixels([plan.image], device))
            condition = i2v_condition(first, plan.latent_shape[1], self.config.video.mask_channels)
        if plan.references:
            refs = self.video_codec.encode(_to_pixels(plan.references, device))  # [K, C, 1, h, w]
            references = refs[:, :, 0][None]  # [1, K, C, h, w]
        reference_audio = None
        if plan.reference_audio is not None:  # [1, C, L_ref]: every latent valid (no mask)
            wave = torch.from_numpy(plan.reference_audio).to(device)[None, None]
            reference_audio = self.audio_codec.encode(wave)
        velocity = GuidedVelocity(
            self.model,
            positive,
            negative,
            r.guidance,
            condition,
            references,
            towers=towers,
            reference_audio=reference_audio,
        )
        video, audio = sample(
            velocity, video, audio, steps=r.steps, solver=r.solver, shift=r.shift, callback=progress
        )
        refined = None
        if r.refine is not None:
            size = self._size(dataclasses.replace(r, resolution=r.refine.resolution), None)
            video = refine_video(
                self.refiner,
                self.video_codec,
                self.video_codec.decode(video),
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
            refined = {"height": size[0], "width": size[1]}
        frames = wave = None
        record: dict[str, Any] = {}
        if decode:
            if video is not None:
                frames = _to_frames(self.video_codec.decode(video))
            if audio is not None:
                wave = self.audio_codec.decode(audio)[0, 0, : plan.audio_samples].float().cpu().numpy()
            record = self.record(plan, refined, video, audio)
        rate = self.audio_codec.geometry.sample_rate
        return GenerationResult(frames, wave, plan.fps, rate, video, audio, record)

    def record(
        self,
        plan: Plan,
        refined: dict | None = None,
        video_latent: Tensor | None = None,
        audio_latent: Tensor | None = None,
    ) -> dict[str, Any]:
        """The sidecar: prompt, caption, seed, every setting, input and model file hashes, the
        pipeline it came from, hashes of the output latents, versions."""
        r = plan.request
        settings = {
            f.name: getattr(r, f.name)
            for f in dataclasses.fields(r)
            if f.name not in ("prompt", "image", "references", "reference_audio", "guidance", "refine")
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
            "towers": list(plan.towers),
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
            "pipeline": self.info,
            "outputs": {
                "video_latent_sha256": None if video_latent is None else tensor_sha256(video_latent),
                "audio_latent_sha256": None if audio_latent is None else tensor_sha256(audio_latent),
            },
            "versions": {
                "alive_infer": alive_infer.__version__,
                "alive_models": alive_models.__version__,
                "torch": torch.__version__,
            },
            "device": str(self.device),
        }


def _refiner_dir(root: Path, spec: PipelineSpec, refiner: str | os.PathLike | bool | None) -> Path | None:
    if refiner is False:
        return None
    if refiner is None or refiner is True:
        if spec.refiner is None:
            if refiner is True:
                raise CheckpointError(f"{root / SPEC_NAME} names no refiner: pass its directory")
            return None
        return root / spec.refiner.directory
    directory = Path(refiner)
    if not (directory / CONFIG_NAME).is_file():
        raise CheckpointError(f"refiner {directory} has no {CONFIG_NAME}: not a saved JointAVDiT")
    return directory


def _load_codec(
    root: Path,
    spec: PipelineSpec,
    what: str,
    given: str | VideoCodec | AudioCodec | None,
    device: torch.device,
) -> tuple[VideoCodec | AudioCodec, str, Path | None]:
    """(codec, how it is named in errors and sidecars, its weights directory if it has one)."""
    if given is not None and not isinstance(given, str):
        return given, f"{type(given).__name__} (given)", None
    text = resolve_codec_spec(root, given or getattr(spec, f"{what}_codec"))
    name = repr(text) if given else f"{text!r} ({root / SPEC_NAME})"
    build = video_codec_from_spec if what == "video" else audio_codec_from_spec
    try:
        codec = build(text, device=device)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{what} codec {name}: {e}") from None
    kind, _, rest = text.partition(":")
    return codec, name, None if kind.strip() == "deterministic" else Path(rest.strip())


def _text_conditioner(
    root: Path,
    spec: PipelineSpec,
    config: JointConfig,
    given: Sequence[str | os.PathLike] | TextConditioner | None,
    device: torch.device,
    dtype: torch.dtype | str | None,
) -> tuple[TextConditioner, dict[str, Path]]:
    """The caption encoders: built ones as given, or loaded from the given directories or the spec's,
    their widths checked against the model from their config.json before the weights are read."""
    if given is not None and not isinstance(given, (str, os.PathLike, list, tuple)):
        try:
            given.check_fits(config)
        except ValueError as e:
            raise CheckpointError(f"the given text encoders do not fit {root / CONFIG_NAME}: {e}") from None
        return given, {}
    text_spec = spec.text_encoders or TextEncoderSpec(t5="", qwen="")
    if given is not None:
        dirs = [Path(d) for d in ([given] if isinstance(given, (str, os.PathLike)) else given)]
        if len(dirs) not in (2, 3):
            raise CheckpointError(
                f"text encoders are [T5 dir, Qwen dir] or [T5, Qwen, transcript tokenizer], got {len(dirs)}"
            )
        source = "the given text encoders"
    elif spec.text_encoders is None:
        raise CheckpointError(
            f'{root / SPEC_NAME} names no text encoders ("none"): pass their directories '
            "(text_encoders=[T5_DIR, QWEN_DIR], --text-encoders T5_DIR QWEN_DIR)"
        )
    else:
        dirs = [resolve(root, d) for d in (text_spec.t5, text_spec.qwen, text_spec.transcript) if d]
        source = f"the text encoders of {root / SPEC_NAME}"
    t5, qwen = dirs[0], dirs[1]
    transcript = dirs[2] if len(dirs) == 3 else None
    for d in dirs:
        if not d.is_dir():
            raise CheckpointError(f"text encoder directory {d} ({source}) does not exist")
    widths = (encoder_width(t5), encoder_width(qwen))
    if None not in widths:
        expected = (*config.video.text_dims, config.audio.caption_dim)
        if widths != tuple(config.video.text_dims) or widths[1] != config.audio.caption_dim:
            raise CheckpointError(
                f"text encoders {t5} (width {widths[0]}) and {qwen} (width {widths[1]}) do not fit "
                f"{root / CONFIG_NAME}: the model expects T5 {expected[0]}, Qwen {expected[1]} "
                f"(video) and {expected[2]} (audio caption)"
            )
    conditioner = TextConditioner.from_pretrained(
        t5,
        qwen,
        transcript,
        dtype=parse_dtype(dtype or text_spec.dtype),
        device=device,
        max_length=text_spec.max_length,
    )
    try:
        conditioner.check_fits(config)
    except ValueError as e:
        raise CheckpointError(f"text encoders {t5}, {qwen} do not fit {root / CONFIG_NAME}: {e}") from None
    files = {"text_t5": t5, "text_qwen": qwen, **({"text_transcript": transcript} if transcript else {})}
    return conditioner, {k: v for k, v in files.items() if not v.resolve().is_relative_to(root.resolve())}


def refine_video(
    refiner: nn.Module,
    video_codec: VideoCodec,
    pixels: Tensor,
    audio_latent: Tensor | None,
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
    and integrated from t0 to 0 by ``refiner`` with the audio latent held clean (None for T2V: the
    refiner's video tower runs alone, its "indep" state). Returns the refined video latent."""
    b, c, f, h, w = pixels.shape
    frames = pixels.transpose(1, 2).reshape(b * f, c, h, w).float()
    up = F.interpolate(frames, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
    up = up.reshape(b, f, c, *size).transpose(1, 2)
    z_up = video_codec.encode(up)
    source = refiner_source(z_up, initial_noise(z_up.shape, generator, z_up.device), t_start)
    towers = ("video",) if audio_latent is None else ("video", "audio")
    velocity = GuidedVelocity(refiner, positive, negative, guidance or Guidance(), towers=towers)
    video, _ = sample(
        velocity,
        source,
        audio_latent,
        steps=steps,
        solver=solver,
        shift=shift,
        t_start=t_start,
        clean_audio=audio_latent is not None,
        callback=callback,
    )
    return video
