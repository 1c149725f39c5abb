"""Measuring a clip of the world from its pixels, its sound and its caption alone.

Pixels give three activity signals per frame: mouth darkness (1 - max channel: subject colours have
a 255 channel, a mouth is a blend towards black), flash whiteness (min channel inside the room:
subject colours have a 0 channel, a flash is a blend towards white) and wall whiteness. Sound gives
the power envelope of each band (voices, chimes, knocks) at 1 kHz, through a zero-phase band-pass
(analytic signal, so a tone has a flat envelope). Each signal is linear in the amount of activity,
so the measurements (offset, transcript, events, subjects) are exact on the world's own clips and
degrade smoothly on generated ones. Inputs are numpy arrays (the metrics move tensors to the CPU: a
clip is small, and numpy's single-threaded FFTs do not fight a training job for cores). Nothing
raises on silence or blank video: results carry ``valid=False`` and a ``reason``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from scipy import ndimage

from alive_data.world.config import (
    CHIME_BAND_HZ,
    CHIME_PARTIALS_HZ,
    KNOCK_BAND_HZ,
    SHAPES,
    WALL_RGB,
    WorldConfig,
)
from alive_data.world.render import MOUTH, shape_mask
from alive_models.caption import parse_caption

ENVELOPE_RATE = 1000  # Hz: the audio envelopes' rate, 1 ms per value
BAND_TAPER_HZ = 25.0  # raised-cosine edge of every band-pass (limits its ringing in time)
SOUND_THRESHOLD = 0.25  # a knock/chime is heard when its band power reaches this fraction of nominal
VISUAL_THRESHOLD = 0.3  # a flash/lit wall is seen at this fraction of one subject's/lane's light
VOICE_FLOOR = 0.1  # a letter is heard at >= this fraction of the world's voice amplitude ...
VOICE_RELATIVE = 0.3  # ... and >= this fraction of the clip's loudest letter
COLOUR_TOLERANCE = 100.0  # a pixel farther than this from every palette colour has none of them
MIN_AREA = 0.3  # a subject is found when its colour covers this fraction of the smallest shape
SILENCE_POWER = 1e-8  # band power below this is silence (amplitude 1e-4)


@dataclass(frozen=True)
class CaptionFacts:
    """What a caption claims, in the world's terms."""

    subjects: dict[str, tuple[str | None, str | None]]  # id -> (colour, shape) named in its entry
    speech: str  # every <W> text, space-joined
    events: tuple[str, ...]  # event kinds of the <I> tags, in order ("hit", "flash" or "unknown")


def caption_facts(caption: str, config: WorldConfig) -> CaptionFacts:
    """Parse a caption (strictly: a malformed one raises ``CaptionError``) into what it claims."""
    parsed = parse_caption(caption)
    words_to_kind = {word: kind for kind, word in config.event_words.items()}

    def named(text: str, names: list[str]) -> str | None:
        found = [n for n in names if re.search(rf"\b{n}\b", text.lower())]
        return found[0] if len(found) == 1 else None

    subjects = {
        sid: (named(desc, list(config.palette)), named(desc, list(SHAPES)))
        for sid, desc in parsed.subjects.items()
    }
    events = tuple(words_to_kind.get(e.strip().lower(), "unknown") for e in parsed.events)
    return CaptionFacts(subjects, parsed.speech_text, events)


# --- pixels -------------------------------------------------------------------------------------


def visual_activity(frames: np.ndarray, config: WorldConfig) -> dict[str, np.ndarray]:
    """Per-frame activity (float64 [F]) from uint8 frames [F, H, W, 3] at any multiple of the base size.

    ``mouth``: open mouths, in mouths (1.0 = one fully open mouth); ``flash``: whiteness inside the
    room, in smallest-subject areas; ``hit``: wall whiteness, in lit lane segments. Flash and hit
    include a constant (the room), which the measurements remove.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    s = frames.shape[2] / config.width
    wall = max(1, round(config.wall_width * s))
    inner = frames[:, :, wall:-wall]
    walls = np.concatenate([frames[:, :, :wall], frames[:, :, -wall:]], axis=2)
    size = config.subject_size * s
    mouth_area = (MOUTH[1] - MOUTH[0]) * (MOUTH[3] - MOUTH[2]) * size**2
    lane_area = config.wall_width * s * config.lane_height * s

    def channel(x: np.ndarray, pick: np.ufunc) -> np.ndarray:  # per-pixel max/min of R, G, B, summed
        return pick(pick(x[..., 0], x[..., 1]), x[..., 2]).sum(axis=(1, 2), dtype=np.float64) / 255

    darkness = inner.shape[1] * inner.shape[2] - channel(inner, np.maximum)
    return {
        "mouth": darkness / mouth_area,
        "flash": channel(inner, np.minimum) / (0.5 * size**2),
        "hit": channel(walls, np.minimum) / (lane_area * (1 - 128 / 255)),
    }


def visual_onsets(activity: np.ndarray, fps: float, threshold: float = VISUAL_THRESHOLD) -> list[float]:
    """Start times (s) of pulses above the clip's median; the first frame's partial level gives the
    sub-frame start (a frame records the fraction of its interval the light was on)."""
    x = activity - np.median(activity)
    onsets = []
    for a, b in _runs(x >= threshold):
        peak = x[a:b].max()
        fraction = float(np.clip(x[a] / peak, 0.0, 1.0))
        onsets.append((a + 1.0 - fraction) / fps)
    return onsets


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


# --- sound --------------------------------------------------------------------------------------


def sound_bands(config: WorldConfig) -> dict[str, tuple[float, float]]:
    """Band of each sound the measurements listen to: ``voice`` (all registers), ``flash``, ``hit``."""
    return {"voice": config.voice_band, "flash": CHIME_BAND_HZ, "hit": KNOCK_BAND_HZ}


def nominal_power(config: WorldConfig) -> dict[str, float]:
    """Band power (|analytic signal|^2) of one voice letter, one chime and one knock."""
    return {
        "voice": config.voice_amplitude**2,
        "flash": len(CHIME_PARTIALS_HZ) * config.chime_amplitude**2,
        "hit": 2 * config.knock_rms**2,
    }


def band_envelopes(audio: np.ndarray, config: WorldConfig) -> dict[str, np.ndarray]:
    """Power envelope (float64 [ceil(N / sample_rate * 1000)]) of each sound band, 1 ms per value."""
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono [N], got {tuple(audio.shape)}")
    n, rate = audio.shape[0], config.sample_rate
    # Zero-pad to a power of two (fast FFT) with room for the filters' ringing not to wrap around.
    size = 1 << math.ceil(math.log2(n + rate // 10))
    spectrum = np.fft.fft(audio.astype(np.float64), size)
    freqs = np.fft.fftfreq(size, 1.0 / rate)
    bins = np.arange(n) * ENVELOPE_RATE // rate
    per_bin = np.maximum(np.bincount(bins), 1)
    out = {}
    for name, (lo, hi) in sound_bands(config).items():
        gain = _band_gain(freqs, lo, hi) * 2.0  # positive frequencies only, doubled: analytic signal
        power = np.abs(np.fft.ifft(spectrum * gain)[:n]) ** 2
        out[name] = np.bincount(bins, weights=power) / per_bin
    return out


def _band_gain(freqs: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """1 inside [lo, hi] (positive frequencies), raised-cosine to 0 over BAND_TAPER_HZ outside."""
    distance = np.clip(np.maximum(lo - freqs, freqs - hi), 0.0, None) / BAND_TAPER_HZ
    return np.where(distance < 1.0, 0.5 + 0.5 * np.cos(np.pi * np.minimum(distance, 1.0)), 0.0)


def sound_onsets(envelope: np.ndarray, nominal: float, min_seconds: float) -> list[float]:
    """Start times (s) of sounds whose band power stays above SOUND_THRESHOLD of ``nominal`` for
    ``min_seconds``; the start is where the amplitude crosses half the sound's own peak (a step
    through a zero-phase filter is at half amplitude, a quarter of the power, exactly at the step)."""
    # A 10 ms centred mean first: chimes beat and knocks are noise, their raw power flickers.
    width = ENVELOPE_RATE // 100 + 1
    x = np.convolve(envelope, np.ones(width) / width, mode="same")
    onsets = []
    for a, b in _runs(x >= SOUND_THRESHOLD * nominal):
        if (b - a) / ENVELOPE_RATE < min_seconds:
            continue
        level = 0.25 * x[a:b].max()
        start = a
        while start > 0 and x[start - 1] >= level:
            start -= 1
        onsets.append(start / ENVELOPE_RATE)
    return onsets


# --- audio-video offset -------------------------------------------------------------------------

# Which picture signal goes with which sound: mouths with voices, flashes with chimes, walls with knocks.
SYNC_PAIRS = {"voice": "mouth", "flash": "flash", "hit": "hit"}


@dataclass(frozen=True)
class OffsetResult:
    """``offset_ms`` > 0: the sound comes late. ``confidence``: peak minus median score over lags
    (SyncNet's Sync-C, in correlation units, 0..1). Invalid results carry the reason, offset nan."""

    offset_ms: float
    confidence: float
    valid: bool
    reason: str = ""
    channels: tuple[str, ...] = ()
    curve: np.ndarray | None = field(default=None, repr=False)  # the score at each lag (1 ms steps)


def frame_integrals(
    envelope: np.ndarray, num_frames: int, fps: float, lags_ms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """([L, F], [L, F] bool): the sound's envelope integrated over each frame's interval moved by each
    lag (ms), i.e. what each frame would record if the picture followed that sound shifted by the lag;
    and whether that moved interval lies inside the recording (outside it nothing can be predicted)."""
    m = envelope.shape[0]
    cumulative = np.concatenate([[0.0], np.cumsum(envelope)])
    bounds = np.arange(num_frames + 1) * (ENVELOPE_RATE / fps)
    raw = bounds[None, :] + lags_ms[:, None]
    inside = (raw[:, :-1] >= 0) & (raw[:, 1:] <= m)
    values = np.interp(raw, np.arange(m + 1), cumulative)  # the integral of a piecewise-constant envelope
    return np.diff(values, axis=1), inside


def _explained(v: np.ndarray, predicted: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Over the frames each lag keeps: the picture variance a positively scaled prediction explains,
    and the picture variance there ([L] each). Their ratio is the squared correlation."""
    w = keep.astype(np.float64)
    n = np.maximum(w.sum(axis=1, keepdims=True), 1)
    dv = v[None, :] - (w * v).sum(axis=1, keepdims=True) / n
    dp = predicted - (w * predicted).sum(axis=1, keepdims=True) / n
    cov = (w * dv * dp).sum(axis=1)
    var_p = (w * dp**2).sum(axis=1)
    explained = np.where(var_p > 0, np.maximum(cov, 0) ** 2 / np.maximum(var_p, 1e-300), 0.0)
    return explained, (w * dv**2).sum(axis=1)


def av_offset(
    activity: dict[str, np.ndarray],
    envelopes: dict[str, np.ndarray],
    sounds: set[str],
    fps: float,
    max_lag_ms: float = 500.0,
) -> OffsetResult:
    """The lag (ms, 1 ms grid refined by a parabola) that best explains the picture from the sound.

    For each sound in ``sounds`` (those the caption names), the picture signal that goes with it is
    predicted by integrating the sound's envelope over every frame's interval moved by the lag. The
    score of a lag is the multiple correlation R: the square root of the share of picture variance
    (summed over sounds, frames outside the moved recording left out) that the predictions explain.
    A sound whose picture activity falls outside the kept frames thus weighs nothing at that lag.
    """
    lags = np.arange(-round(max_lag_ms), round(max_lag_ms) + 1, dtype=np.float64)
    explained, total = np.zeros_like(lags), np.zeros_like(lags)
    used, reasons = [], []
    for sound in sorted(sounds):
        v = activity[SYNC_PAIRS[sound]]
        env = envelopes[sound]
        if v.size < 2 or float(v.std()) < 1e-6:
            reasons.append("static_video")
            continue
        if env.size == 0 or float(env.max()) < SILENCE_POWER:
            reasons.append("silent_audio")
            continue
        predicted, keep = frame_integrals(env, v.shape[0], fps, lags)
        e, t = _explained(v, predicted, keep & (keep.sum(axis=1, keepdims=True) >= v.shape[0] / 2))
        explained += e
        total += t
        used.append(sound)
    if not used:
        return OffsetResult(math.nan, 0.0, False, reasons[0] if reasons else "no_sync_cue")
    # Lags that keep too little of the picture's activity to judge score 0.
    enough = total >= 0.25 * total.max()
    curve = np.where(enough, np.sqrt(explained / np.maximum(total, 1e-300)), 0.0)
    peak = int(curve.argmax())
    delta = 0.0
    if 0 < peak < len(curve) - 1:
        left, mid, right = (float(c) for c in curve[peak - 1 : peak + 2])
        denominator = left - 2 * mid + right
        delta = 0.5 * (left - right) / denominator if denominator < 0 else 0.0
    confidence = float(curve[peak] - np.median(curve))
    return OffsetResult(float(lags[peak]) + delta, confidence, True, "", tuple(used), curve)


# --- transcript ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedSpeech:
    """The transcript heard in a clip, and each letter with its time (s) and voice register."""

    text: str
    letters: tuple[tuple[float, float, str, str], ...]  # (start, end, letter, voice)


def decode_speech(audio: np.ndarray, config: WorldConfig, hop_seconds: float = 0.01) -> DecodedSpeech:
    """Read the toy language back by spectral peak picking.

    A 40 ms Hann window every 10 ms; in frames loud enough (VOICE_FLOOR, VOICE_RELATIVE) the peak
    of the voice band names a letter and a register. A run of one letter lasting ``k`` letter
    durations (rounded) is ``k`` letters; a silence of at least half a word gap ends a word.
    """
    rate = config.sample_rate
    win = config.hop_length
    hop = max(1, round(hop_seconds * rate))
    if audio.ndim != 1 or audio.shape[0] < win:
        return DecodedSpeech("", ())
    n_fft = 1 << max(11, math.ceil(math.log2(win)))
    window = np.hanning(win + 1)[:-1]  # periodic Hann
    padded = np.pad(audio.astype(np.float64), win // 2, mode="reflect")  # frame t centred at t * hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop] * window
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    lo, hi = config.voice_band
    band = (freqs >= lo) & (freqs <= hi)
    spec = np.abs(np.fft.rfft(frames, n_fft, axis=1))[:, band] * 2.0 / window.sum()  # sine of amplitude A: A
    amp, index = spec.max(axis=1), spec.argmax(axis=1)
    loud = amp >= max(VOICE_FLOOR * config.voice_amplitude, VOICE_RELATIVE * float(amp.max()))
    loud &= amp >= 3.0 * np.median(spec, axis=1)
    band_freqs = freqs[band]
    labels: list[tuple[str, str] | None] = []
    for t in range(spec.shape[0]):
        labels.append(_letter_at(spec[t], int(index[t]), band_freqs, config) if loud[t] else None)
    return _letters_to_text(labels, hop / rate, config)


def _letter_at(
    column: np.ndarray, peak: int, freqs: np.ndarray, config: WorldConfig
) -> tuple[str, str] | None:
    """(letter, voice) nearest the interpolated spectral peak, or None between letters."""
    hz = float(freqs[peak])
    if 0 < peak < len(column) - 1:
        a, b, c = (math.log(max(float(x), 1e-12)) for x in column[peak - 1 : peak + 2])
        if a - 2 * b + c < 0:
            hz += 0.5 * (a - c) / (a - 2 * b + c) * float(freqs[1] - freqs[0])
    for voice, base in config.voice_bases:
        i = round((hz - base) / config.letter_spacing_hz)
        if (
            0 <= i < len(config.alphabet)
            and abs(hz - base - i * config.letter_spacing_hz) <= config.letter_spacing_hz / 2
        ):
            return config.alphabet[i], voice
    return None


def _letters_to_text(labels: list[tuple[str, str] | None], step: float, config: WorldConfig) -> DecodedSpeech:
    letter_s = config.seconds(config.letter_latents)
    gap_s = config.seconds(config.word_gap_latents)
    words: list[str] = []
    letters = []
    silent_since = math.inf  # seconds of silence before the current run
    current = ""
    t = 0
    while t < len(labels):
        if labels[t] is None:
            end = t
            while end < len(labels) and labels[end] is None:
                end += 1
            silent_since = (end - t) * step
            t = end
            continue
        end = t
        while end < len(labels) and labels[end] == labels[t]:
            end += 1
        count = round((end - t) * step / letter_s)
        if count:
            if current and silent_since >= gap_s / 2:
                words.append(current)
                current = ""
            letter, voice = labels[t]  # type: ignore[misc]
            current += letter * count
            letters.append((t * step, end * step, letter, voice))
            silent_since = 0.0
        t = end
    if current:
        words.append(current)
    return DecodedSpeech(" ".join(words), tuple(letters))


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventResult:
    """Captioned events, those whose sound is heard, and those heard within ``tolerance`` of the
    moment the picture shows them; per kind the counts are capped at the captioned number."""

    captioned: int
    heard: int
    synced: int
    sound_onsets: dict[str, list[float]]
    visual_onsets: dict[str, list[float]]


def event_result(
    facts: CaptionFacts,
    activity: dict[str, np.ndarray],
    envelopes: dict[str, np.ndarray],
    config: WorldConfig,
    fps: float,
    tolerance: float = 0.1,
) -> EventResult:
    """Per event kind: sounds heard in its band and lights seen in its picture signal, counted
    against the caption's events of that kind (one-to-one, in time within ``tolerance``)."""
    nominal = nominal_power(config)
    min_seconds = 0.5 * config.seconds(config.event_latents)
    heard = synced = 0
    sounds, seen = {}, {}
    for kind in ("hit", "flash"):
        wanted = facts.events.count(kind)
        sounds[kind] = sound_onsets(envelopes[kind], nominal[kind], min_seconds)
        seen[kind] = visual_onsets(activity[kind], fps)
        heard += min(wanted, len(sounds[kind]))
        synced += min(wanted, _matches(sounds[kind], seen[kind], tolerance))
    return EventResult(len(facts.events), heard, synced, sounds, seen)


def _matches(a: list[float], b: list[float], tolerance: float) -> int:
    """Greedy one-to-one pairs of times closer than ``tolerance``, closest first."""
    pairs = sorted(
        (abs(x - y), i, j) for i, x in enumerate(a) for j, y in enumerate(b) if abs(x - y) <= tolerance
    )
    used_a, used_b = set(), set()
    for _, i, j in pairs:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    return len(used_a)


# --- subjects -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """A subject found in an image: its colour, best-matching shape and box (y0, x0, y1, x1)."""

    colour: str
    shape: str
    area: int
    box: tuple[int, int, int, int]


DARK = -2  # colour class of black pixels (open mouths)


def colour_classes(image: np.ndarray, config: WorldConfig) -> np.ndarray:
    """int [H, W]: each pixel's nearest colour of the world: its palette index, DARK for black, -1
    for the rooms, walls, white or anything farther than COLOUR_TOLERANCE from every palette colour.
    Nearest rather than within a radius: edges blended with the room (and video codecs' smeared
    chroma) split at the half-way point, so a shape keeps its outline."""
    others = [*config.backgrounds.values(), WALL_RGB, (255, 255, 255), (0, 0, 0)]
    colours = np.asarray([*config.palette.values(), *others], np.float32)
    pixels = image.reshape(-1, 3).astype(np.float32)
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2, as one small matrix product
    squared = (pixels**2).sum(axis=1, keepdims=True) - 2 * pixels @ colours.T + (colours**2).sum(axis=1)
    nearest = squared.argmin(axis=1)
    closest = np.take_along_axis(squared, nearest[:, None], axis=1)[:, 0]
    palette = (nearest < len(config.palette)) & (closest < COLOUR_TOLERANCE**2)
    out = np.where(palette, nearest, np.where(nearest == len(colours) - 1, DARK, -1))
    return out.reshape(image.shape[:2])


def _shape_features(mass: np.ndarray) -> tuple[float, float] | None:
    """Moment features of a soft mask that tell the four shapes apart and survive blur and chroma
    subsampling (which move mass across edges but keep its moments nearly): the skewness of the
    vertical profile (a triangle's apex) and the kurtosis of the profiles along the axes minus
    along the diagonals (a square is flat along its axes, a diamond along its diagonals)."""
    total = mass.sum()
    if total <= 0:
        return None
    ys, xs = np.indices(mass.shape, dtype=np.float64)
    w = mass / total

    def moments(coordinate: np.ndarray) -> tuple[float, float]:
        centred = coordinate - (w * coordinate).sum()
        var = (w * centred**2).sum()
        if var <= 0:
            return 0.0, 0.0
        return float((w * centred**3).sum() / var**1.5), float((w * centred**4).sum() / var**2)

    skew_y, kurt_y = moments(ys)
    _, kurt_x = moments(xs)
    _, kurt_u = moments(xs + ys)
    _, kurt_v = moments(xs - ys)
    return skew_y, 0.5 * (kurt_x + kurt_y) - 0.5 * (kurt_u + kurt_v)


@cache
def _shape_prototypes() -> dict[str, tuple[float, float]]:
    """The features of each shape, from the renderer's own masks."""
    out = {}
    for shape in SHAPES:
        features = _shape_features(shape_mask(shape, 56, 56).astype(np.float64))
        assert features is not None
        out[shape] = features
    return out


def find_blobs(image: np.ndarray, config: WorldConfig) -> dict[str, Blob]:
    """The subject of each palette colour seen in uint8 [H, W, 3]: per colour, the region with most
    pixels nearest it (at least MIN_AREA of the smallest shape), then its soft mask (inside: 1, holes
    such as the mouth included; in a 2-pixel ring around it: each pixel's share of the colour against
    the room), whose moments name the shape."""
    classes = colour_classes(image, config)
    room = np.median(image.reshape(-1, 3).astype(np.float64), axis=0)
    size = config.subject_size * image.shape[1] / config.width
    found = {}
    for index in np.unique(classes[classes >= 0]).tolist():
        colour = list(config.palette)[index]
        blob = _blob(image, classes, index, room, MIN_AREA * 0.5 * size**2, config.palette[colour])
        if blob is not None:
            found[colour] = Blob(colour, *blob)
    return found


def _blob(
    image: np.ndarray, classes: np.ndarray, index: int, room: np.ndarray, min_area: float, rgb: tuple
) -> tuple[str, int, tuple[int, int, int, int]] | None:
    own = classes == index
    # An open mouth can cut a narrow shape in two: dark pixels join the regions they touch, and a
    # closing bridges the 1-2 pixel seams a video codec leaves around it.
    square = np.ones((3, 3), bool)
    labels, count = ndimage.label(ndimage.binary_closing(own | (classes == DARK), square, iterations=2))
    sizes = np.bincount(labels[own], minlength=count + 1)[1:]  # own-colour pixels per region
    if not count or sizes.max() < min_area:
        return None
    best = int(sizes.argmax()) + 1
    rows, cols = ndimage.find_objects(labels)[best - 1]
    y0, x0 = max(rows.start - 3, 0), max(cols.start - 3, 0)
    crop = (slice(y0, rows.stop + 3), slice(x0, cols.stop + 3))
    solid = ndimage.binary_fill_holes(labels[crop] == best)
    ring = ndimage.binary_dilation(solid, iterations=2) & (classes[crop] == -1)
    direction = np.asarray(rgb, np.float64) - room
    share = np.clip((image[crop].astype(np.float64) - room) @ direction / (direction @ direction), 0.0, 1.0)
    features = _shape_features(np.where(solid, 1.0, np.where(ring, share, 0.0)))
    if features is None:
        return None
    prototypes = _shape_prototypes()
    shape = min(prototypes, key=lambda k: math.dist(features, prototypes[k]))
    return shape, int(solid.sum()), (rows.start, cols.start, rows.stop, cols.stop)


def sample_frames(frames: np.ndarray, count: int = 8) -> np.ndarray:
    """``count`` evenly spaced frames (subjects are looked for in these)."""
    return frames[np.round(np.linspace(0, len(frames) - 1, min(count, len(frames)))).astype(int)]


def subject_presence(
    blobs: list[dict[str, Blob]], colour: str | None, shape: str | None
) -> tuple[bool, bool]:
    """(colour found in most frames, shape right in most of those) for one subject, given the blobs
    found in each sampled frame."""
    found = [b[colour] for b in blobs if colour in b]
    colour_ok = 2 * len(found) > len(blobs)
    shape_ok = colour_ok and shape is not None and 2 * sum(b.shape == shape for b in found) > len(found)
    return colour_ok, shape_ok


def reference_subject(image: np.ndarray, config: WorldConfig) -> Blob | None:
    """The subject a reference image shows: its largest blob of any palette colour."""
    blobs = find_blobs(image, config).values()
    return max(blobs, key=lambda b: b.area) if blobs else None
