"""The sound: voices, knocks, chimes and the room's ambience, each a waveform one latent long, tiled.

Voices are a toy language: letter i of a voice is a pure tone at ``base + i * letter_spacing_hz`` (each
voice register owns a band), held for ``letter_latents`` latents; words are separated by silence.
Knocks (hits) and chimes (flashes) have their own bands, so a kind of sound is recognised by where
its energy is (its timbre); the ambience sits below every other band.
"""

from __future__ import annotations

import zlib
from functools import cache

import numpy as np

from alive_data.world.config import AMBIENT_BAND_HZ, CHIME_PARTIALS_HZ, KNOCK_BAND_HZ, WorldConfig
from alive_data.world.scene import Scene, Utterance

DESYNC_LATENTS = 6  # the ``desync`` degradation plays every sound this much late (240 ms at 25 Hz)
NOISE_RMS = 0.1  # the ``noise`` degradation's white noise


def _period(config: WorldConfig) -> np.ndarray:
    """Sample times (s) of one latent."""
    return np.arange(config.hop_length) / config.sample_rate


def tone(config: WorldConfig, *partials: tuple[float, float]) -> np.ndarray:
    """One latent of a sum of (Hz, amplitude) sines, phase 0 at the latent's start."""
    t = _period(config)
    return sum(a * np.sin(2 * np.pi * hz * t) for hz, a in partials).astype(np.float32)


def band_noise(config: WorldConfig, band: tuple[float, float], rms: float, name: str) -> np.ndarray:
    """One latent of noise in ``band``: random-phase harmonics of the latent rate, fixed per ``name``."""
    rate = config.latent_rate
    harmonics = np.arange(np.ceil(band[0] / rate), np.floor(band[1] / rate) + 1) * rate
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))
    t = _period(config)
    wave = np.sin(2 * np.pi * harmonics[:, None] * t[None] + phases[:, None]).sum(0)
    return (wave * rms / np.sqrt(np.mean(wave**2))).astype(np.float32)


@cache
def sounds(config: WorldConfig) -> dict[str, np.ndarray]:
    """Every non-voice sound of the world, one latent long: knock, chime and the three ambiences."""
    amb = config.ambient_rms
    return {
        "hit": band_noise(config, KNOCK_BAND_HZ, config.knock_rms, "knock"),
        "flash": tone(config, *[(hz, config.chime_amplitude) for hz in CHIME_PARTIALS_HZ]),
        "hum": tone(config, (75.0, amb * 1.2), (150.0, amb * 0.8)),
        "drone": tone(config, (100.0, amb), (200.0, amb), (225.0, amb * 0.5)),
        "rumble": band_noise(config, AMBIENT_BAND_HZ, amb, "rumble"),
    }


def render_voice(
    voice: str, words: tuple[str, ...], ambient: str, config: WorldConfig, margin_latents: int = 2
) -> np.ndarray:
    """Mono float32: ``words`` in ``voice`` from latent ``margin_latents`` on, in the room's ambience,
    with ``margin_latents`` of ambience after: an utterance on its own (reference audio for voice
    cloning). Letters and gaps follow the same rules as in a clip."""
    hop = config.hop_length
    utterance = Utterance("speaker", tuple(words), margin_latents)
    latents = utterance.end(config) + margin_latents
    audio = np.tile(sounds(config)[ambient], latents)
    for letter, start in utterance.letters(config):
        wave = tone(config, (config.letter_hz(voice, letter), config.voice_amplitude))
        audio[start * hop : (start + config.letter_latents) * hop] += np.tile(wave, config.letter_latents)
    return audio.astype(np.float32)


def render_audio(scene: Scene, config: WorldConfig, rng: np.random.Generator | None = None) -> np.ndarray:
    """Mono float32 [config.num_samples]: ambience everywhere, the voices, knocks and chimes on top."""
    hop, n = config.hop_length, config.num_samples
    library = sounds(config)
    latents = -(-n // hop)
    voiced = np.zeros(latents * hop, np.float32)
    for u in scene.utterances:
        voice = scene.subject(u.subject).voice
        for letter, start in u.letters(config):
            wave = tone(config, (config.letter_hz(voice, letter), config.voice_amplitude))
            voiced[start * hop : (start + config.letter_latents) * hop] += np.tile(
                wave, config.letter_latents
            )
    for e in scene.events:
        a, b = e.span(config)
        voiced[a * hop : b * hop] += np.tile(library[e.kind], b - a)
    if scene.degradation == "desync":
        voiced = np.concatenate([np.zeros(DESYNC_LATENTS * hop, np.float32), voiced])[: len(voiced)]
    audio = voiced[:n] + np.tile(library[scene.ambient], latents)[:n]
    if scene.degradation == "noise":
        rng = rng or np.random.default_rng(0)
        audio += rng.normal(0.0, NOISE_RMS, n).astype(np.float32)
    return audio.astype(np.float32)
