"""Video and audio codecs behind one interface (``VideoCodec`` / ``AudioCodec``) with their geometry."""

from alive_models.codecs.base import AudioCodec, AudioGeometry, VideoCodec, VideoGeometry, timeline_for
from alive_models.codecs.deterministic import DeterministicAudioCodec, DeterministicVideoCodec
from alive_models.codecs.spec import audio_codec_from_spec, video_codec_from_spec
from alive_models.codecs.vae import OobleckAudioCodec, WanVideoCodec

__all__ = [
    "AudioCodec",
    "AudioGeometry",
    "DeterministicAudioCodec",
    "DeterministicVideoCodec",
    "OobleckAudioCodec",
    "VideoCodec",
    "VideoGeometry",
    "WanVideoCodec",
    "audio_codec_from_spec",
    "timeline_for",
    "video_codec_from_spec",
]
