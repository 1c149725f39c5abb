"""The picture: a scene drawn once on a canvas ``hires_scale`` times the base size.

The hi-res frames are that canvas; the base frames are its box average (so the refiner's low and
high resolutions agree exactly, and the hi-res adds only a fine background texture that averages
away). A frame integrates its shutter interval [f/fps, (f+1)/fps): a mouth that opens, a flash or a
lit wall that starts inside a frame is drawn with the fraction of the frame it covers (a blend),
exactly what a camera would record. Positions of moving subjects are taken at the frame's centre.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from alive_data.world.config import WALL_RGB, WorldConfig
from alive_data.world.scene import Scene, Subject

# The mouth, as fractions of the subject's box (inside every shape, see tests).
MOUTH = (0.55, 0.75, 0.3, 0.7)  # y0, y1, x0, x1
TEXTURE = 8.0  # hi-res background stripes of +-8 levels, zero mean over every hires_scale block


@cache
def shape_mask(shape: str, height: int, width: int) -> np.ndarray:
    """bool [height, width]: the shape filling its box (pixel centres inside)."""
    y = (np.arange(height)[:, None] + 0.5) / height
    x = (np.arange(width)[None, :] + 0.5) / width
    if shape == "square":
        mask = np.ones((height, width), bool)
    elif shape == "circle":
        mask = (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25
    elif shape == "triangle":  # apex up
        mask = np.abs(x - 0.5) <= y / 2
    elif shape == "diamond":
        mask = np.abs(x - 0.5) + np.abs(y - 0.5) <= 0.5
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask.setflags(write=False)
    return mask


def mouth_box(size: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the mouth inside a sprite of ``size`` pixels."""
    y0, y1, x0, x1 = (round(f * size) for f in MOUTH)
    return y0, y1, x0, x1


def shutter(intervals: list[tuple[float, float]], num_frames: int, fps: float) -> np.ndarray:
    """float [F]: the fraction of each frame's interval [f/fps, (f+1)/fps) inside the given intervals."""
    starts = np.arange(num_frames) / fps
    out = np.zeros(num_frames)
    for a, b in intervals:
        out += np.clip(np.minimum(starts + 1 / fps, b) - np.maximum(starts, a), 0, None) * fps
    return np.clip(out, 0.0, 1.0)


def _background(config: WorldConfig, name: str) -> np.ndarray:
    k = config.hires_scale
    h, w = config.height * k, config.width * k
    yy, xx = np.indices((h, w))
    # Diagonal stripes of period k: (x + y) mod k is uniform over any k x k block, half of it +, half -.
    stripes = np.where((yy + xx) % k < k // 2, TEXTURE, -TEXTURE) if k > 1 else np.zeros((h, w))
    canvas = np.asarray(config.backgrounds[name], np.float32) + stripes[..., None].astype(np.float32)
    wall = config.wall_width * k
    canvas[:, :wall] = WALL_RGB
    canvas[:, w - wall :] = WALL_RGB
    return canvas


def _subject_top(subject: Subject, config: WorldConfig) -> int:
    return subject.lane * config.lane_height + (config.lane_height - config.subject_size) // 2


def render_frames(scene: Scene, config: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """(base uint8 [F, H, W, 3], hires uint8 [F, kH, kW, 3]) of a scene."""
    k, n = config.hires_scale, config.num_frames
    canvas = np.repeat(_background(config, scene.background)[None], n, axis=0)
    size = config.subject_size * k
    my0, my1, mx0, mx1 = mouth_box(size)
    centres = (np.arange(n) + 0.5) / config.fps
    sec = config.seconds
    for s in scene.subjects:
        mask = shape_mask(s.shape, size, size)
        colour = np.asarray(config.palette[s.colour], np.float32)
        words = [
            (sec(a), sec(b)) for u in scene.utterances if u.subject == s.id for a, b in u.word_spans(config)
        ]
        flashes = [
            tuple(map(sec, e.span(config))) for e in scene.events if e.kind == "flash" and e.subject == s.id
        ]
        mouth, flash = shutter(words, n, config.fps), shutter(flashes, n, config.fps)
        top = _subject_top(s, config) * k
        lefts = np.rint(scene.x_at(s, centres, config) * k).astype(int)
        for f in range(n):
            region = canvas[f, top : top + size, lefts[f] : lefts[f] + size]
            region[mask] = colour + flash[f] * (255.0 - colour)
            region[my0:my1, mx0:mx1] *= 1.0 - mouth[f]
    wall = config.wall_width * k
    for e in scene.events:
        if e.kind != "hit":
            continue
        lit = shutter([tuple(map(sec, e.span(config)))], n, config.fps)[:, None, None, None]
        lane = scene.subject(e.subject).lane * config.lane_height * k
        cols = slice(0, wall) if e.side == "left" else slice(config.width * k - wall, None)
        block = canvas[:, lane : lane + config.lane_height * k, cols]
        block += lit * (255.0 - block)
    return _finish(canvas, k)


def _finish(canvas: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(base, hires) uint8 of a float canvas [N, kH, kW, 3] already inside [0, 255] (every blend is
    convex, the texture never clips): base is the mean over k x k blocks (torch's pooling, 3x
    numpy's reshape-mean), both rounded once. The canvas is consumed."""
    base = F.avg_pool2d(torch.from_numpy(canvas).permute(0, 3, 1, 2), k).permute(0, 2, 3, 1).numpy()
    canvas += 0.5
    return (base + 0.5).astype(np.uint8), canvas.astype(np.uint8)


def render_references(scene: Scene, config: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """(base, hires) uint8 [S, H, W, 3]: each subject alone, centred in the scene's empty room, mouth
    closed: the reference images of reference-conditioned training (R2VA)."""
    k = config.hires_scale
    canvas = np.repeat(_background(config, scene.background)[None], len(scene.subjects), axis=0)
    size = config.subject_size * k
    top, left = (config.height * k - size) // 2, (config.width * k - size) // 2
    for image, s in zip(canvas, scene.subjects, strict=True):
        image[top : top + size, left : left + size][shape_mask(s.shape, size, size)] = config.palette[
            s.colour
        ]
    return _finish(canvas, k)


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (``sigma`` pixels) of uint8 [F, H, W, 3] frames: the ``blur`` degradation."""
    out = ndimage.gaussian_filter(frames.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="nearest")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
