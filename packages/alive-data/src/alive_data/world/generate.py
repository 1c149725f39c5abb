"""Clips of the world in memory, and the source folder that ``alive-data write`` takes.

``generate_clip(index, seed)`` is a pure function of (config, seed, index): the same clip every time,
on any machine. ``write_source_folder`` writes ``KEY.mp4`` (H.264 + AAC), ``KEY.json`` (caption and
metadata, see ``clip_metadata``), ``KEY.ref_K.jpg`` (one reference image per subject) and, for a
clip with speech, ``KEY.ref_audio.flac`` (another utterance of its first speaker: reference audio for
voice cloning), each under a temporary name first, the mp4 renamed last so a reader never sees half
a clip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alive_data.media import decode_clip, decode_image, encode_flac, encode_jpeg
from alive_data.world.config import DEFAULT_CONFIG, WorldConfig
from alive_data.world.render import blur, render_frames, render_references
from alive_data.world.scene import Scene, sample_scene, scene_caption
from alive_data.world.sound import render_audio, render_voice
from alive_models.mp4 import encode_mp4

BLUR_SIGMA = 1.5  # base pixels, for the ``blur`` degradation


@dataclass
class WorldClip:
    """One clip and all its truth. Frames uint8 [F, H, W, 3] at ``config.fps``; audio mono float32 at
    ``config.sample_rate`` covering exactly the frames' time range; one reference image per subject
    (in subject order) at the clip's size; ``hires_*`` the same at ``config.hires_scale`` times;
    ``reference_audio``: for a clip with speech, another utterance (other words) of its first
    speaker's voice in the same room, float32 at ``config.sample_rate`` (None without speech;
    ``metadata["world"]["reference_utterance"]`` says who and what)."""

    key: str
    scene: Scene
    config: WorldConfig = field(repr=False)
    frames: np.ndarray = field(repr=False)
    audio: np.ndarray = field(repr=False)
    caption: str
    metadata: dict[str, Any] = field(repr=False)
    references: list[np.ndarray] = field(repr=False)
    hires_frames: np.ndarray = field(repr=False)
    hires_references: list[np.ndarray] = field(repr=False)
    reference_audio: np.ndarray | None = field(default=None, repr=False)

    @property
    def fps(self) -> float:
        return self.config.fps

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate


def quality_scores(scene: Scene) -> dict[str, float]:
    """The scores a labeler would give (alive_data.schema scales), true to what was rendered."""
    moving = any(s.speed > 0 for s in scene.subjects)
    lively = bool(scene.utterances or scene.events)
    scores = {
        "ocr": 0.0,
        "aesthetic": 6.5,
        "motion": 0.6 if moving else 0.2 if lively else 0.02,  # mouths and flashes are small motion
        "quality_class": 3,
        "audio_quality": 4.5,
        "av_coherence": 0.9,
        "clarity": 0.95,
    }
    if scene.degradation == "blur":
        scores.update(clarity=0.2, aesthetic=3.0, quality_class=1)
    elif scene.degradation == "noise":
        scores.update(audio_quality=1.0)
    elif scene.degradation == "desync":
        scores.update(av_coherence=0.1)
    return scores


def category(scene: Scene) -> dict[str, str]:
    """L1/L2/L3 labels (L1 from the labeling system's domains) of the clip's main sound."""
    kinds = {e.kind for e in scene.events}
    if "hit" in kinds:
        return {"l1": "Sound Effects", "l2": "Impacts", "l3": "wall"}
    if "flash" in kinds:
        return {"l1": "Sound Effects", "l2": "Signals", "l3": "flash"}
    if scene.utterances:
        speakers = {u.subject for u in scene.utterances}
        return {"l1": "Entertainment", "l2": "Speech", "l3": "dialogue" if len(speakers) > 1 else "monologue"}
    return {"l1": "Environment", "l2": "Indoor", "l3": "room"}


def clip_metadata(scene: Scene, config: WorldConfig, caption: str, hires: bool = False) -> dict[str, Any]:
    """The sidecar (alive_data.schema fields plus ``world``: the scene, enough to re-render the clip)."""
    k = config.hires_scale if hires else 1
    return {
        "caption": caption,
        "fps": config.fps,
        "duration": config.duration,
        "width": config.width * k,
        "height": config.height * k,
        "num_frames": config.num_frames,
        "sample_rate": config.sample_rate,
        "audio_samples": config.num_samples,
        "speaking": bool(scene.utterances),
        "category": category(scene),
        "quality": quality_scores(scene),
        "world": {"scene": scene.to_dict(), "hires": hires},
    }


def render_clip(
    scene: Scene, config: WorldConfig = DEFAULT_CONFIG, key: str = "clip", seed: int = 0
) -> WorldClip:
    """Picture, sound, caption, references and metadata of a scene (validated first)."""
    scene.validate(config)
    frames, hires = render_frames(scene, config)
    if scene.degradation == "blur":
        frames = blur(frames, BLUR_SIGMA)
        hires = blur(hires, BLUR_SIGMA * config.hires_scale)
    audio = render_audio(scene, config, np.random.default_rng(seed))
    refs, hires_refs = render_references(scene, config)
    caption = scene_caption(scene, config)
    return WorldClip(
        key=key,
        scene=scene,
        config=config,
        frames=frames,
        audio=audio,
        caption=caption,
        metadata=clip_metadata(scene, config, caption),
        references=list(refs),
        hires_frames=hires,
        hires_references=list(hires_refs),
    )


def reference_utterance(scene: Scene, rng: np.random.Generator, config: WorldConfig) -> dict[str, Any] | None:
    """Who speaks first in the scene and 2..3 other words they say elsewhere (None without speech):
    the truth of the clip's reference audio. Words the clip says are avoided, so the reference
    carries the voice, not the content."""
    if not scene.utterances:
        return None
    speaker = scene.subject(scene.utterances[0].subject)
    said = {w for u in scene.utterances for w in u.words}
    pool = [w for w in config.words if w not in said] or list(config.words)
    words = tuple(
        str(w) for w in rng.choice(pool, size=min(len(pool), int(rng.integers(2, 4))), replace=False)
    )
    return {"subject": speaker.id, "voice": speaker.voice, "words": list(words)}


def generate_clip(index: int, seed: int = 0, config: WorldConfig = DEFAULT_CONFIG) -> WorldClip:
    """Clip ``index`` of the world with ``seed``: a pure function of its arguments."""
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng, config)
    clip = render_clip(scene, config, key=f"world{seed}_{index:06d}", seed=int(rng.integers(2**31)))
    clip.metadata["world"].update(seed=seed, index=index)
    # Its own generator: the clip itself is what it was before reference audio existed.
    utterance = reference_utterance(scene, np.random.default_rng([seed, index, 1]), config)
    if utterance is not None:
        clip.metadata["world"]["reference_utterance"] = utterance
        clip.reference_audio = render_voice(
            utterance["voice"], tuple(utterance["words"]), scene.ambient, config
        )
    return clip


def generate_clips(count: int, seed: int = 0, config: WorldConfig = DEFAULT_CONFIG) -> Iterator[WorldClip]:
    """Clips 0 .. count-1 of the world with ``seed``, one at a time (hi-res frames are large)."""
    for index in range(count):
        yield generate_clip(index, seed, config)


def _replace_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_clip(clip: WorldClip, folder: Path, hires: bool = False) -> Path:
    """Write one clip's ``KEY.mp4``, ``KEY.json``, ``KEY.ref_K.jpg`` and (with speech)
    ``KEY.ref_audio.flac`` into ``folder``; the mp4 path."""
    frames = clip.hires_frames if hires else clip.frames
    refs = clip.hires_references if hires else clip.references
    meta = clip_metadata(clip.scene, clip.config, clip.caption, hires)
    meta["world"] = {**clip.metadata["world"], "hires": hires}
    meta["references"] = [f"{clip.key}.ref_{i}.jpg" for i in range(len(refs))]
    for name, image in zip(meta["references"], refs, strict=True):
        _replace_atomic(folder / name, encode_jpeg(image))
    if clip.reference_audio is not None:
        meta["reference_audio"] = f"{clip.key}.ref_audio.flac"
        _replace_atomic(folder / meta["reference_audio"], encode_flac(clip.reference_audio, clip.sample_rate))
    _replace_atomic(folder / f"{clip.key}.json", json.dumps(meta, indent=1).encode())
    mp4 = folder / f"{clip.key}.mp4"
    _replace_atomic(mp4, encode_mp4(frames, clip.fps, clip.audio, clip.sample_rate))
    return mp4


def _write_index(args: tuple[int, int, WorldConfig, str, bool]) -> str:
    index, seed, config, folder, hires = args
    return str(write_clip(generate_clip(index, seed, config), Path(folder), hires))


def label_rows(config: WorldConfig) -> list[dict[str, Any]]:
    """The keyword table (alive_data.labels) for the world's sounds: pass it as ``--labels`` to
    ``alive-data write`` so event clips are labeled (and count as audible for the stage filters)."""
    words = config.event_words
    return [
        {"l1": "Sound Effects", "l2": "Impacts", "l3": "wall", "audio": [words["hit"]]},
        {"l1": "Sound Effects", "l2": "Signals", "l3": "flash", "audio": [words["flash"]]},
    ]


LABELS_FILE = "labels.json"  # written beside the clips by write_source_folder


def write_source_folder(
    folder: Path,
    count: int,
    seed: int = 0,
    config: WorldConfig = DEFAULT_CONFIG,
    hires: bool = False,
    workers: int = 0,
) -> list[Path]:
    """Generate clips 0..count-1 and write them as a source folder for ``alive-data write``, with
    the world's keyword table in ``labels.json`` (for ``--labels``).

    ``hires``: write the ``hires_scale`` x frames and references (the refiner's data) instead.
    ``workers`` > 0 renders and encodes in that many processes. Returns the mp4 paths in order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _replace_atomic(folder / LABELS_FILE, json.dumps(label_rows(config), indent=1).encode())
    jobs = [(i, seed, config, str(folder), hires) for i in range(count)]
    if workers <= 0:
        return [Path(p) for p in map(_write_index, jobs)]
    with ProcessPoolExecutor(workers) as pool:
        return [Path(p) for p in pool.map(_write_index, jobs, chunksize=8)]


def write_clips(clips: Iterable[WorldClip], folder: Path, hires: bool = False) -> list[Path]:
    """Write clips already in memory (e.g. hand-built scenes or broken clips for tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_clip(clip, folder, hires) for clip in clips]


def read_clip(
    mp4: Path, config: WorldConfig = DEFAULT_CONFIG
) -> tuple[np.ndarray, np.ndarray, str, list[np.ndarray]]:
    """(frames, audio, caption, references) of a written clip: the mp4 decoded with PyAV at the
    world's fps and sample rate, the caption and reference images from its sidecar."""
    meta = json.loads(mp4.with_suffix(".json").read_text())
    decoded = decode_clip(mp4, config.fps, config.sample_rate)
    frames, audio = decoded.frames, decoded.audio
    refs = [decode_image((mp4.parent / name).read_bytes()) for name in meta.get("references", [])]
    return frames, audio, meta["caption"], refs
