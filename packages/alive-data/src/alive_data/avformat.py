"""The one definition of a dataset's time axes: one frame rate plus the codecs' geometry.

Everything else is derived from it: the audio sample rate is the audio codec's, the shared timeline
(UniTemp-RoPE) is ``timeline_for(video, audio, fps)``. Where two definitions meet they are checked,
not trusted: the writer's options against its codecs, the pipeline's buckets against the video
codec's stride, every sample's metadata against the pipeline (a counted skip), and the pipeline
against the model's ``JointConfig.timeline`` (:meth:`AVFormat.check_timeline`, called by training).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alive_models.codecs import AudioCodec, AudioGeometry, VideoCodec, VideoGeometry, timeline_for
from alive_models.geometry import Timeline


@dataclass(frozen=True)
class AVFormat:
    """Frame rate, audio sample rate and (when latents are involved) the codecs' geometry.

    Without codecs (writing or reading pixels only) ``fps`` and ``sample_rate`` are the whole format;
    with them ``sample_rate`` must be the audio codec's (use :meth:`from_codecs` to derive it).
    """

    fps: float = 24.0
    sample_rate: int = 16_000
    video: VideoGeometry | None = None
    audio: AudioGeometry | None = None

    def __post_init__(self) -> None:
        if not self.fps > 0 or not self.sample_rate > 0:
            raise ValueError(f"fps and sample_rate must be positive, got {self.fps} and {self.sample_rate}")
        if self.audio is not None and self.audio.sample_rate != self.sample_rate:
            raise ValueError(
                f"audio at {self.sample_rate} Hz but the audio codec takes {self.audio.sample_rate} Hz: "
                "use the codec's rate (AVFormat.from_codecs)"
            )

    @classmethod
    def from_codecs(cls, fps: float, video: VideoCodec, audio: AudioCodec) -> AVFormat:
        """The format of clips for these codecs at ``fps`` (sample rate from the audio codec)."""
        return cls(fps, audio.geometry.sample_rate, video.geometry, audio.geometry)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AVFormat:
        """{"fps", "sample_rate", "video": {VideoGeometry fields}, "audio": {AudioGeometry fields}}."""
        data = dict(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown format fields {sorted(unknown)}")
        video, audio = data.pop("video", None), data.pop("audio", None)
        return cls(
            **data,
            video=None if video is None else VideoGeometry(**video),
            audio=None if audio is None else AudioGeometry(**audio),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def timeline(self) -> Timeline:
        """The shared audio-video timeline these codecs and this frame rate imply."""
        if self.video is None or self.audio is None:
            raise ValueError("the timeline needs both codecs' geometry; this format has none")
        return timeline_for(self.video, self.audio, self.fps)

    def check_timeline(self, timeline: Timeline) -> None:
        """Raise unless ``timeline`` (e.g. ``JointConfig.timeline``) is the one this format implies."""
        ours = self.timeline
        wrong = [
            f"{f.name}: model {getattr(timeline, f.name)}, data {getattr(ours, f.name)}"
            for f in dataclasses.fields(Timeline)
            if getattr(timeline, f.name) != getattr(ours, f.name)
        ]
        if wrong:
            raise ValueError("the model's timeline does not match the data's format: " + "; ".join(wrong))
