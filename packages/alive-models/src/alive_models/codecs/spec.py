"""Codecs named by a short spec string, for configs and command lines.

"deterministic"                                   exactly invertible, Wan geometry (video) / 640 hop (audio)
"deterministic:spatial_stride=2,temporal_stride=4" keyword arguments of the deterministic codec
"wan:/path/to/wan2.1-vae"                         a local Wan2.1 VAE directory
"oobleck:/path/to/audio-vae"                      a local Oobleck VAE directory
"""

from __future__ import annotations

from alive_models.codecs.base import AudioCodec, VideoCodec
from alive_models.codecs.deterministic import DeterministicAudioCodec, DeterministicVideoCodec
from alive_models.codecs.vae import OobleckAudioCodec, WanVideoCodec


def _split(spec: str) -> tuple[str, str]:
    kind, _, rest = spec.partition(":")
    return kind.strip(), rest.strip()


def _kwargs(text: str) -> dict[str, int | bool]:
    out: dict[str, int | bool] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"codec argument {item!r} must be name=value")
        if name == "causal_first_frame":
            out[name] = value.lower() in ("1", "true", "yes")
        else:
            out[name] = int(value)
    return out


def video_codec_from_spec(spec: str, **load_kwargs) -> VideoCodec:
    """A video codec from a spec string (see the module docstring)."""
    kind, rest = _split(spec)
    if kind == "deterministic":
        return DeterministicVideoCodec(**_kwargs(rest))
    if kind == "wan":
        return WanVideoCodec.from_pretrained(rest, **load_kwargs)
    raise ValueError(f"unknown video codec {kind!r} in {spec!r}; use deterministic or wan:<dir>")


def audio_codec_from_spec(spec: str, **load_kwargs) -> AudioCodec:
    """An audio codec from a spec string (see the module docstring)."""
    kind, rest = _split(spec)
    if kind == "deterministic":
        return DeterministicAudioCodec(**_kwargs(rest))
    if kind == "oobleck":
        return OobleckAudioCodec.from_pretrained(rest, **load_kwargs)
    raise ValueError(f"unknown audio codec {kind!r} in {spec!r}; use deterministic or oobleck:<dir>")
