"""What the synthetic world is made of: sizes, clock, vocabularies and the sound of each thing.

Every sound is periodic over one audio latent (``hop_length`` samples): voice letters and chime
partials are integer multiples of the latent rate (25 Hz at 16 kHz / 640), and the noisy sounds
(knock, rumble) are random-phase sums of such harmonics. A sound that starts on a latent boundary is
therefore the same waveform in every latent it fills, i.e. one fixed latent vector under the
deterministic audio codec. Colours are saturated (one channel 255, one 0) so the mouth (a blend
towards black) and the flash (a blend towards white) move separate pixel statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

RGB = tuple[int, int, int]

PALETTE: tuple[tuple[str, RGB], ...] = (
    ("red", (255, 0, 0)),
    ("orange", (255, 136, 0)),
    ("yellow", (255, 221, 0)),
    ("green", (0, 255, 96)),
    ("cyan", (0, 238, 255)),
    ("blue", (0, 85, 255)),
    ("purple", (153, 0, 255)),
    ("pink", (255, 0, 170)),
)
# Pastel rooms; every channel <= 247 so the hi-res texture (+-8) never clips.
BACKGROUNDS: tuple[tuple[str, RGB], ...] = (
    ("cream", (247, 238, 208)),
    ("mint", (208, 247, 224)),
    ("lavender", (226, 216, 247)),
)
WALL_RGB: RGB = (128, 128, 128)
SHAPES = ("circle", "square", "triangle", "diamond")
# Voice register -> frequency of the first letter (Hz); letter i sounds at base + i * letter_spacing_hz.
VOICES: tuple[tuple[str, float], ...] = (("low", 300.0), ("middle", 1100.0), ("high", 1900.0))
WORDS = (
    "go", "up", "no", "on", "stop", "look", "big", "dog", "sun", "pig",
    "bug", "map", "mud", "nut", "pot", "tip", "sit", "run", "top", "kid",
)  # fmt: skip
# Event kind -> the word its sound has in captions (<I>word</I>).
EVENT_KINDS = ("hit", "flash")
EVENT_WORDS: tuple[tuple[str, str], ...] = (("hit", "knock"), ("flash", "chime"))
# Frequency bands (Hz) each sound lives in; analysis reads each band on its own.
CHIME_PARTIALS_HZ = (3200.0, 3600.0, 4000.0)
CHIME_BAND_HZ = (3000.0, 4400.0)
KNOCK_BAND_HZ = (4800.0, 7200.0)
AMBIENT_BAND_HZ = (40.0, 250.0)
AMBIENTS = ("hum", "rumble", "drone")
AMBIENT_DESCRIPTION = {"hum": "a low hum", "rumble": "a soft rumble", "drone": "a distant drone"}
DEGRADATIONS = ("blur", "noise", "desync")


@dataclass(frozen=True)
class WorldConfig:
    """Sizes, clock and vocabularies of the world. Defaults: 64x48 at 24 fps, 49 frames (2.04 s).

    Subjects live in horizontal lanes (``height // max_subjects`` rows each) between a grey wall
    on the left and on the right; a moving subject bounces off one wall once.
    """

    height: int = 48
    width: int = 64
    fps: float = 24.0
    num_frames: int = 49  # 1 + 4k: whole latents for a causal video codec with temporal stride 4
    sample_rate: int = 16_000
    hop_length: int = 640  # audio samples per latent: 25 latents/s at 16 kHz
    hires_scale: int = 4  # the refiner's "1080p" is this many times the base size
    subject_size: int = 14
    wall_width: int = 2
    min_subjects: int = 1
    max_subjects: int = 3
    alphabet: str = "abdegiklmnoprstu"
    words: tuple[str, ...] = WORDS
    letter_spacing_hz: float = 50.0
    letter_latents: int = 2  # each letter lasts this many audio latents
    word_gap_latents: int = 2  # silence between words (the mouth closes)
    turn_gap_latents: int = 4  # silence between two speakers
    max_words: int = 3  # per utterance
    event_latents: int = 3  # a knock or chime (and its light) lasts this many latents
    speaking_prob: float = 0.7
    hit_prob: float = 0.35  # per subject: it moves and hits a wall once
    flash_prob: float = 0.3  # per subject: it flashes once
    degraded_fraction: float = 0.0  # clips with a real, declared defect (blur, noise or desync)
    voice_amplitude: float = 0.25
    chime_amplitude: float = 0.08  # per partial
    knock_rms: float = 0.12
    ambient_rms: float = 0.03

    def __post_init__(self) -> None:
        problems = []
        if self.height % 2 or self.width % 2:
            problems.append(f"{self.width}x{self.height}: sides must be even (H.264 yuv420p)")
        lane = self.height // max(self.max_subjects, 1)
        if not 1 <= self.min_subjects <= self.max_subjects or self.subject_size > lane:
            problems.append(f"{self.max_subjects} lanes of {lane} rows cannot hold {self.subject_size}px")
        if self.hires_scale < 1 or (self.hires_scale > 1 and self.hires_scale % 2):
            problems.append(f"hires_scale {self.hires_scale}: 1 or even (the texture must average away)")
        if self.width - 2 * self.wall_width < 2 * self.subject_size:
            problems.append("the room is too narrow for a subject to move")
        rate = self.latent_rate
        for name, hz in [*self.voice_bases, ("spacing", self.letter_spacing_hz), *self._partials()]:
            if abs(hz / rate - round(hz / rate)) > 1e-9:
                problems.append(f"{name} {hz} Hz is not a multiple of the latent rate {rate} Hz")
        bands = sorted([*self.voice_bands.values(), CHIME_BAND_HZ, KNOCK_BAND_HZ, AMBIENT_BAND_HZ])
        if any(a[1] > b[0] for a, b in pairwise(bands)):
            problems.append(f"frequency bands overlap: {bands}")
        if bands[-1][1] >= self.sample_rate / 2:
            problems.append(f"sounds reach {bands[-1][1]} Hz, above Nyquist")
        unknown = {c for w in self.words for c in w} - set(self.alphabet)
        if unknown or len(set(self.alphabet)) != len(self.alphabet):
            problems.append(f"words use letters outside the alphabet {sorted(unknown)} or it repeats")
        if self.speech_latents < self.event_latents + 4:
            problems.append(f"{self.num_frames} frames are too short for the world's sounds")
        if problems:
            raise ValueError("invalid WorldConfig: " + "; ".join(problems))

    def _partials(self) -> list[tuple[str, float]]:
        return [("chime partial", hz) for hz in CHIME_PARTIALS_HZ]

    @property
    def latent_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    @property
    def num_samples(self) -> int:
        """Audio samples of a clip: exactly the video's time range (the writer's rounding)."""
        return round(self.duration * self.sample_rate)

    @property
    def speech_latents(self) -> int:
        """Whole latents inside the clip: every sound starts and ends within them."""
        return self.num_samples // self.hop_length

    @property
    def lane_height(self) -> int:
        return self.height // self.max_subjects

    @property
    def palette(self) -> dict[str, RGB]:
        return dict(PALETTE)

    @property
    def backgrounds(self) -> dict[str, RGB]:
        return dict(BACKGROUNDS)

    @property
    def voice_bases(self) -> tuple[tuple[str, float], ...]:
        return VOICES

    @property
    def event_words(self) -> dict[str, str]:
        """Event kind -> caption word; ``{v: k for k, v in ...}`` maps captions back to kinds."""
        return dict(EVENT_WORDS)

    def letter_hz(self, voice: str, letter: str) -> float:
        return dict(VOICES)[voice] + self.alphabet.index(letter) * self.letter_spacing_hz

    @property
    def voice_bands(self) -> dict[str, tuple[float, float]]:
        """Each register's band, half a letter spacing beyond its lowest and highest letter."""
        half, top = self.letter_spacing_hz / 2, (len(self.alphabet) - 1) * self.letter_spacing_hz
        return {name: (base - half, base + top + half) for name, base in VOICES}

    @property
    def voice_band(self) -> tuple[float, float]:
        bands = self.voice_bands.values()
        return min(b[0] for b in bands), max(b[1] for b in bands)

    def seconds(self, latents: float) -> float:
        return latents / self.latent_rate


DEFAULT_CONFIG = WorldConfig()  # frozen: safe as a default argument
