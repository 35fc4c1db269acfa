"""Procedural stimulus movies: the visual input of the simulated world.

A movie is a sequence of scenes separated by hard cuts (every ``scene_min_s``–``scene_max_s``
seconds). Each scene shows one *key object* — one of 64 concepts (16 shapes × 4 surface
textures) in one of 10 colours — on a procedural or photographic background, with one main
motion (static, translation, rotation, zoom or camera pan), and sometimes a smaller
*distractor* object of another concept.

Rendering
    Objects are drawn from inside-tests in their local coordinates ``u, v ∈ [-1, 1]``
    (``v`` up), so shape and texture rotate and zoom together. Each object is rasterised once
    per scene into a premultiplied RGBA *sprite* (3×3 supersampled), then warped per frame
    with :func:`cv2.warpAffine` into a 2× supersampled frame and composited; the frame is
    reduced to the output size by a 2×2 mean (antialiasing). Backgrounds are drawn on a
    canvas twice the frame size (in each dimension) so the camera can pan across it.

Occlusion
    The distractor is always drawn *behind* the key object, so the key object is never
    occluded. ``mask`` is the key object's coverage > 0.5 at output resolution. A concept
    counts as visible in a frame when its visible (unoccluded, in-frame) coverage > 0.5 holds
    on at least ``max(3, 20 %)`` of the object's full area in pixels.

Labels and conventions
    Screen coordinates: x to the right, y down, in output pixels. ``motion[t]`` is the change
    from frame ``t`` to frame ``t + 1`` of the same scene (the last frame of a scene uses the
    scene's own continuation, not the next scene): key-object centre dx, dy; rotation in
    degrees (positive = counter-clockwise on screen); zoom as the change of the log object
    size; pan dx, dy = on-screen displacement of the background content (the camera moves the
    opposite way). Background ids index :data:`BACKGROUNDS`, colour ids :data:`COLOURS`,
    concept ids :data:`VOCABULARY` (``concept = shape * 4 + texture``).

Everything is deterministic given the seed (no global random state).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import skimage
import skimage.io

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "MOTIONS",
    "SHAPES",
    "TEXTURES",
    "VOCABULARY",
    "Movie",
    "StimulusConfig",
    "caption_vocabulary",
    "concept_id",
    "generate_movie",
    "object_colours",
]

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "heart",
    "ring",
    "diamond",
    "hexagon",
    "crescent",
    "arrow",
    "ellipse",
    "pentagon",
    "bar",
    "T-shape",
    "L-shape",
)
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
VOCABULARY: tuple[str, ...] = tuple(f"{t} {s}" for s in SHAPES for t in TEXTURES)

COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (220, 40, 40)),
    ("orange", (245, 140, 20)),
    ("yellow", (240, 220, 40)),
    ("green", (50, 180, 60)),
    ("cyan", (40, 200, 220)),
    ("blue", (40, 80, 230)),
    ("purple", (140, 60, 200)),
    ("pink", (245, 130, 190)),
    ("white", (245, 245, 245)),
    ("black", (25, 25, 25)),
)

MOTIONS: tuple[str, ...] = ("static", "translation", "rotation", "zoom", "pan")
_MOTION_P = (0.1, 0.3, 0.2, 0.2, 0.2)

PROCEDURAL_BACKGROUNDS: tuple[str, ...] = ("noise", "stripes", "checker", "gradient", "blobs")
_BG_PHRASE = {
    "noise": "a cloudy background",
    "stripes": "a striped background",
    "checker": "a checkered background",
    "gradient": "a gradient background",
    "blobs": "a blotchy background",
}
# photo name -> (file in skimage's data folder, caption word)
_PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("astronaut.png", "astronaut"),
    "chelsea": ("chelsea.png", "cat"),
    "coffee": ("coffee.png", "coffee"),
    "rocket": ("rocket.jpg", "rocket"),
    "brick": ("brick.png", "brick"),
    "grass": ("grass.png", "grass"),
    "gravel": ("gravel.png", "gravel"),
    "camera": ("camera.png", "cameraman"),
    "hubble": ("hubble_deep_field.jpg", "galaxy"),
    "retina": ("retina.jpg", "retina"),
    "motorcycle": ("motorcycle_left.png", "motorcycle"),
    "moon": ("moon.png", "moon"),
    "coins": ("coins.png", "coins"),
    "page": ("page.png", "text"),
}
PHOTO_DIR = os.path.join(os.path.dirname(skimage.__file__), "data")
# Only photos shipped with the installed scikit-image (all 14 in scikit-image >= 0.19).
BACKGROUNDS: tuple[str, ...] = PROCEDURAL_BACKGROUNDS + tuple(
    f"photo:{name}" for name, (fname, _) in _PHOTOS.items() if os.path.exists(os.path.join(PHOTO_DIR, fname))
)

_SS = 2  # frame supersampling factor (2×2 mean)
_SPRITE_SS = 3  # sprite supersampling factor
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class StimulusConfig:
    """Parameters of the stimulus world.

    Attributes
    ----------
    size
        Output frame size ``(height, width)`` in pixels.
    fps
        Frames per second.
    scene_min_s, scene_max_s
        Scene durations are uniform (in whole frames) between these bounds, in seconds.
    p_distractor
        Probability that a scene has a distractor object.
    photo_fraction
        Fraction of scenes with a photographic background.
    """

    size: tuple[int, int] = (64, 64)
    fps: float = 8.0
    scene_min_s: float = 2.0
    scene_max_s: float = 6.0
    p_distractor: float = 0.35
    photo_fraction: float = 0.4


@dataclass
class Movie:
    """Frames and per-frame ground truth of a generated movie (see the module docstring)."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    concepts: np.ndarray  # (T, 64) bool
    mask: np.ndarray  # (T, H, W) bool
    key_concept: np.ndarray  # (T,) int16
    colour: np.ndarray  # (T,) int16
    background: np.ndarray  # (T,) int16
    motion: np.ndarray  # (T, 6) float32
    scene: np.ndarray  # (T,) int32
    caption_id: np.ndarray  # (T,) int32
    captions: list[str]

    def caption(self, t: int) -> str:
        """Caption of frame ``t``."""
        return self.captions[int(self.caption_id[t])]

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def concept_id(shape: str, texture: str) -> int:
    """Index into :data:`VOCABULARY` of ``f"{texture} {shape}"``."""
    return SHAPES.index(shape) * len(TEXTURES) + TEXTURES.index(texture)


def object_colours(colour: int) -> tuple[np.ndarray, np.ndarray]:
    """Base and pattern colours (float32 RGB, 0–255) of an object of colour id ``colour``.

    Textured objects alternate the base colour with a darker version (a lighter one for
    black), so the base colour stays the dominant hue.
    """
    base = np.asarray(COLOURS[colour][1], dtype=np.float32)
    if float(base @ _LUMA) < 60:
        return base, base + 0.35 * (255.0 - base)
    return base, 0.55 * base


def caption_vocabulary() -> list[str]:
    """All words that captions use, in a fixed order (``caption.split()`` tokenises)."""
    words = [
        "a",
        "the",
        "on",
        "over",
        "with",
        "beside",
        "small",
        "moving",
        "and",
        "left",
        "right",
        "up",
        "down",
        "spinning",
        "clockwise",
        "counterclockwise",
        "growing",
        "shrinking",
        "camera",
        "pans",
        "background",
        "photo",
    ]
    words += [name for name, _ in COLOURS] + list(TEXTURES) + list(SHAPES)
    words += [p.split()[1] for p in _BG_PHRASE.values()]
    words += [word for _, word in _PHOTOS.values()]
    return list(dict.fromkeys(words))


# ----------------------------------------------------------------------------- shapes


def _in_polygon(u: np.ndarray, v: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd inside test of points (u, v) against a closed polygon ``pts`` (K, 2)."""
    inside = np.zeros(u.shape, dtype=bool)
    x0, y0 = pts[-1]
    for x1, y1 in pts:
        if y0 != y1:
            crosses = (y1 > v) != (y0 > v)
            x_at = x1 + (v - y1) * ((x0 - x1) / (y0 - y1))
            inside ^= crosses & (u < x_at)
        x0, y0 = x1, y1
    return inside


def _regular(n: int, radius: float, inner: float | None = None) -> np.ndarray:
    """Vertices of a regular polygon (or star with ``inner`` radius), pointing up."""
    k = 2 * n if inner else n
    ang = np.pi / 2 + 2 * np.pi * np.arange(k) / k
    r = np.where(np.arange(k) % 2 == 0, radius, inner) if inner else np.full(k, radius)
    return np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)


def _boxes(u: np.ndarray, v: np.ndarray, *boxes: tuple[float, float, float, float]) -> np.ndarray:
    """Union of axis-aligned boxes ``(x0, x1, y0, y1)``."""
    out = np.zeros(u.shape, dtype=bool)
    for x0, x1, y0, y1 in boxes:
        out |= (u > x0) & (u < x1) & (v > y0) & (v < y1)
    return out


def _disk(u: np.ndarray, v: np.ndarray, x: float, y: float, r: float) -> np.ndarray:
    return (u - x) ** 2 + (v - y) ** 2 < r * r


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = 1.3 * u, 1.3 * v + 0.15
    return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0


_ARROW = np.array(
    [(-0.85, 0.2), (0.15, 0.2), (0.15, 0.55), (0.9, 0.0), (0.15, -0.55), (0.15, -0.2), (-0.85, -0.2)]
)
_ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
# All shapes fit inside the unit disk, so rotation never leaves the sprite.
_SHAPE_FNS: dict[str, _ShapeFn] = {
    "circle": lambda u, v: _disk(u, v, 0, 0, 0.85),
    "square": lambda u, v: _boxes(u, v, (-0.64, 0.64, -0.64, 0.64)),
    "triangle": lambda u, v: _in_polygon(u, v, _regular(3, 0.95)),
    "star": lambda u, v: _in_polygon(u, v, _regular(5, 0.95, 0.4)),
    "cross": lambda u, v: _boxes(u, v, (-0.25, 0.25, -0.85, 0.85), (-0.85, 0.85, -0.25, 0.25)),
    "heart": _heart,
    "ring": lambda u, v: np.abs(np.sqrt(u * u + v * v) - 0.66) < 0.24,
    "diamond": lambda u, v: np.abs(u) / 0.62 + np.abs(v) / 0.92 < 1,
    "hexagon": lambda u, v: _in_polygon(u, v, _regular(6, 0.88)),
    "crescent": lambda u, v: _disk(u, v, 0, 0, 0.85) & ~_disk(u, v, 0.38, 0.12, 0.65),
    "arrow": lambda u, v: _in_polygon(u, v, _ARROW),
    "ellipse": lambda u, v: (u / 0.9) ** 2 + (v / 0.52) ** 2 < 1,
    "pentagon": lambda u, v: _in_polygon(u, v, _regular(5, 0.9)),
    "bar": lambda u, v: _boxes(u, v, (-0.88, 0.88, -0.19, 0.19)),
    "T-shape": lambda u, v: _boxes(u, v, (-0.62, 0.62, 0.37, 0.72), (-0.18, 0.18, -0.73, 0.38)),
    "L-shape": lambda u, v: _boxes(u, v, (-0.55, -0.15, -0.7, 0.7), (-0.55, 0.55, -0.7, -0.3)),
}


def _cells(x: np.ndarray, period: float) -> np.ndarray:
    """Position within a periodic cell, in [-0.5, 0.5)."""
    return x / period - np.floor(x / period + 0.5)


# Textures: True where the pattern colour replaces the base colour.
_TEXTURE_FNS: dict[str, _ShapeFn] = {
    "solid": lambda u, v: np.zeros(u.shape, dtype=bool),
    "striped": lambda u, v: np.floor((u + v) / (0.42 * math.sqrt(2))) % 2 == 1,
    "dotted": lambda u, v: _cells(u, 0.5) ** 2 + _cells(v, 0.5) ** 2 < 0.32**2,
    "checkered": lambda u, v: (np.floor(u / 0.38) + np.floor(v / 0.38)) % 2 == 1,
}


@functools.lru_cache(maxsize=512)
def _sprite(concept: int, colour: int, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Sprite of an object covering u, v ∈ [-1, 1], as two (res, res, 3) float32 images.

    The first is the premultiplied colour (0–255), the second the alpha (0–1) repeated in
    three channels, so compositing needs no broadcasting. Pixel rows go down the screen.
    """
    n = res * _SPRITE_SS
    c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1
    u, v = np.meshgrid(c, -c)
    shape, texture = SHAPES[concept // len(TEXTURES)], TEXTURES[concept % len(TEXTURES)]
    inside = _SHAPE_FNS[shape](u, v)
    pattern = inside & _TEXTURE_FNS[texture](u, v)

    def pool(m: np.ndarray) -> np.ndarray:
        return m.reshape(res, _SPRITE_SS, res, _SPRITE_SS).mean(axis=(1, 3), dtype=np.float32)

    alpha, alt = pool(inside), pool(pattern)
    base, pat = object_colours(colour)
    rgb = ((alpha - alt)[..., None] * base + alt[..., None] * pat).astype(np.float32)
    alpha3 = np.repeat(alpha[..., None], 3, axis=2)
    rgb.setflags(write=False)
    alpha3.setflags(write=False)
    return rgb, alpha3


# ------------------------------------------------------------------------ backgrounds


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _lerp(c0: np.ndarray, c1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-pixel mix of two colours by weight map ``w`` (H, W) → (H, W, 3) float32."""
    return (c0 + w[..., None] * (c1 - c0)).astype(np.float32)


def _rotated_coords(shape: tuple[int, int], angle: float) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    ca, sa = math.cos(angle), math.sin(angle)
    return x * ca + y * sa, -x * sa + y * ca


def _bg_noise(rng: np.random.Generator, shape: tuple[int, int], fw: float) -> np.ndarray:
    """Value-noise clouds: two octaves of bicubically upsampled random grids."""
    field = np.zeros(shape, dtype=np.float32)
    cells = rng.uniform(2.5, 5.0)  # cells per frame width
    for octave, amp in ((1, 1.0), (2, 0.5), (4, 0.25)):
        gh, gw = (max(2, math.ceil(s / fw * cells * octave) + 1) for s in shape)
        grid = rng.random((gh, gw), dtype=np.float32)
        field += amp * cv2.resize(grid, shape[::-1], interpolation=cv2.INTER_CUBIC)
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    return _lerp(_random_colour(rng), _random_colour(rng), field)


def _bg_stripes(rng: np.random.Generator, shape: tuple[int, int], fw: float) -> np.ndarray:
    x, _ = _rotated_coords(shape, rng.uniform(0, np.pi))
    period = rng.uniform(0.12, 0.3) * fw
    w = np.clip(2.5 * np.sin(2 * np.pi * x / period), -1, 1) * 0.5 + 0.5
    return _lerp(_random_colour(rng), _random_colour(rng), w)


def _bg_checker(rng: np.random.Generator, shape: tuple[int, int], fw: float) -> np.ndarray:
    x, y = _rotated_coords(shape, rng.uniform(0, np.pi / 2))
    cell = rng.uniform(0.1, 0.25) * fw
    w = ((np.floor(x / cell) + np.floor(y / cell)) % 2).astype(np.float32)
    return _lerp(_random_colour(rng), _random_colour(rng), w)


def _bg_gradient(rng: np.random.Generator, shape: tuple[int, int], fw: float) -> np.ndarray:
    x, y = _rotated_coords(shape, rng.uniform(0, 2 * np.pi))
    w1 = (x - x.min()) / max(float(np.ptp(x)), 1e-6)
    w2 = (y - y.min()) / max(float(np.ptp(y)), 1e-6)
    img = _lerp(_random_colour(rng), _random_colour(rng), w1)
    return img + (0.6 * w2)[..., None] * (_random_colour(rng) - img)


def _bg_blobs(rng: np.random.Generator, shape: tuple[int, int], fw: float) -> np.ndarray:
    """Soft Gaussian blobs of random colours on a random base colour (drawn at 1/4 size)."""
    small = (max(2, shape[0] // 4), max(2, shape[1] // 4))
    y, x = np.mgrid[: small[0], : small[1]].astype(np.float32)
    img = np.broadcast_to(_random_colour(rng), (*small, 3)).copy()
    for _ in range(int(rng.integers(6, 14))):
        cy, cx = rng.uniform(0, small[0]), rng.uniform(0, small[1])
        sigma = rng.uniform(0.06, 0.18) * fw / 4
        a = 0.9 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        img += a[..., None] * (_random_colour(rng) - img)
    return cv2.resize(img, shape[::-1], interpolation=cv2.INTER_LINEAR)


_BG_FNS = {
    "noise": _bg_noise,
    "stripes": _bg_stripes,
    "checker": _bg_checker,
    "gradient": _bg_gradient,
    "blobs": _bg_blobs,
}


@functools.lru_cache(maxsize=64)
def _load_photo(name: str, max_short: int) -> np.ndarray:
    """RGB uint8 photo from scikit-image's data folder, short side ≤ ``max_short`` (cached)."""
    img = skimage.io.imread(os.path.join(PHOTO_DIR, _PHOTOS[name][0]))
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = np.ascontiguousarray(img[..., :3])
    scale = max_short / min(img.shape[:2])
    if scale < 1:
        size = (round(img.shape[1] * scale), round(img.shape[0] * scale))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    img.setflags(write=False)
    return img


def _bg_photo(rng: np.random.Generator, name: str, shape: tuple[int, int]) -> np.ndarray:
    """A random crop (random zoom and position) of a photo, resized to ``shape``."""
    img = _load_photo(name, int(1.5 * max(shape)))
    ih, iw = img.shape[:2]
    aspect = shape[1] / shape[0]
    ch = min(ih, iw / aspect) * rng.uniform(0.55, 1.0)
    cw = ch * aspect
    y0, x0 = rng.uniform(0, ih - ch), rng.uniform(0, iw - cw)
    crop = img[int(y0) : int(y0 + ch), int(x0) : int(x0 + cw)]
    return cv2.resize(crop, shape[::-1], interpolation=cv2.INTER_AREA).astype(np.float32)


def _background(
    rng: np.random.Generator, kind: str, shape: tuple[int, int], fw: float, target: float
) -> np.ndarray:
    """Background canvas (H, W, 3) float32 in 0–255, with moderate contrast around ``target``.

    ``target`` is the mean luminance, chosen away from the key object's so it stands out.
    """
    if kind.startswith("photo:"):
        img = _bg_photo(rng, kind[6:], shape)
    else:
        img = _BG_FNS[kind](rng, shape, fw)
    contrast = rng.uniform(0.45, 0.75)
    img = target + contrast * (img - float((img @ _LUMA).mean()))
    return np.clip(img, 0, 255, out=img).astype(np.float32)


# ---------------------------------------------------------------------------- scenes


@dataclass
class _Object:
    concept: int
    colour: int
    xy: np.ndarray  # (n+1, 2) centre in output pixels
    angle: np.ndarray  # (n+1,) degrees, counter-clockwise on screen
    logd: np.ndarray  # (n+1,) log diameter (output pixels) of the local disk u² + v² ≤ 1
    direction: np.ndarray  # (n, 2) velocity (x, y) at t + 0.5 after bounces, for captions


@dataclass
class _Scene:
    n: int
    kind: str
    background: int
    key: _Object
    distractor: _Object | None
    cam: np.ndarray  # (n+1, 2) camera offset into the canvas, output pixels
    seed: int  # for drawing the background


def _bounce(p0: float, v: float, t: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions and signed speeds at times ``t`` of a point bouncing between lo and hi."""
    span = hi - lo
    if span <= 1e-6:
        return np.full(t.shape, (lo + hi) / 2), np.zeros(t.shape)
    m = np.mod(p0 - lo + v * t, 2 * span)
    fwd = m < span
    return lo + np.where(fwd, m, 2 * span - m), np.where(fwd, v, -v)


def _bouncing(
    xy0: np.ndarray, vel: np.ndarray, n: int, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(n+1, 2) positions and (n, 2) mid-step velocities of a point bouncing in a box."""
    t = np.arange(n + 1, dtype=np.float64)
    th = np.arange(n, dtype=np.float64) + 0.5
    pos = np.stack([_bounce(xy0[i], vel[i], t, lo[i], hi[i])[0] for i in range(2)], axis=1)
    vmid = np.stack([_bounce(xy0[i], vel[i], th, lo[i], hi[i])[1] for i in range(2)], axis=1)
    return pos, vmid


def _velocity(rng: np.random.Generator, lo: float, hi: float, unit: float) -> np.ndarray:
    speed, ang = rng.uniform(lo, hi) * unit, rng.uniform(0, 2 * np.pi)
    return np.array([speed * math.cos(ang), speed * math.sin(ang)])


def _plan_key(
    rng: np.random.Generator, kind: str, n: int, concept: int, colour: int, hw: np.ndarray
) -> _Object:
    """Trajectory of the key object for a scene of ``n`` frames and motion ``kind``."""
    unit = hw[1] / 64.0
    t = np.arange(n + 1, dtype=np.float64)
    d_mid = rng.uniform(0.3, 0.5) * hw[1]
    zoom = rng.choice([-1, 1]) * rng.uniform(0.35, 0.8) / n if kind == "zoom" else 0.0
    d_mid = min(d_mid, 0.95 * hw.min() / math.exp(abs(zoom) * n / 2))
    logd = math.log(d_mid) + zoom * (t - n / 2)
    r_max = math.exp(logd.max()) / 2
    lo, hi = np.full(2, r_max), hw[::-1] - r_max
    xy0 = rng.uniform(lo, np.maximum(lo, hi))
    if kind == "translation":
        vel = _velocity(rng, 0.6, 2.0, unit)
    elif kind in ("rotation", "zoom", "pan") and rng.random() < 0.5:
        vel = _velocity(rng, 0.1, 0.4, unit)  # slight drift
    else:
        vel = np.zeros(2)
    xy, vmid = _bouncing(xy0, vel, n, lo, np.maximum(lo, hi))
    if kind == "rotation":
        angle = rng.uniform(0, 360) + rng.choice([-1, 1]) * rng.uniform(3, 10) * t
    else:
        angle = np.full(n + 1, rng.uniform(-30, 30))
    return _Object(concept, colour, xy, angle, logd, vmid)


def _plan_camera(rng: np.random.Generator, kind: str, n: int, hw: np.ndarray) -> np.ndarray:
    """(n+1, 2) camera offsets (x, y) into the 2×-size canvas, in output pixels."""
    if kind != "pan":
        # static camera: snap to the supersampled grid so the crop is a plain slice
        xy = np.round(rng.uniform(0, hw[::-1]) * _SS) / _SS
        return np.broadcast_to(xy, (n + 1, 2)).copy()
    vel = _velocity(rng, 0.6, 1.6, hw[1] / 64.0)
    centre = hw[::-1] / 2 + rng.uniform(-0.1, 0.1, 2) * hw[::-1]
    return centre + vel * (np.arange(n + 1)[:, None] - n / 2)  # overshoot → mirrored canvas


def _plan_distractor(
    rng: np.random.Generator,
    kind: str,
    n: int,
    concept: int,
    colour: int,
    key: _Object,
    cam: np.ndarray,
    hw: np.ndarray,
) -> _Object:
    """A smaller object placed away from the key object; in pan scenes it moves with the world."""
    d = min(rng.uniform(0.12, 0.2) * hw[1], 0.7 * math.exp(key.logd.min()))
    r = d / 2
    lo, hi = np.full(2, r), hw[::-1] - r
    key_xy, key_r = key.xy[n // 2], math.exp(key.logd[n // 2]) / 2
    for _ in range(10):
        xy0 = rng.uniform(lo, hi)
        if np.hypot(*(xy0 - key_xy)) > 0.9 * (key_r + r):
            break
    logd = np.full(n + 1, math.log(d))
    angle = np.full(n + 1, rng.uniform(-30, 30))
    if kind == "pan":
        xy = xy0 - (cam - cam[n // 2])
        vmid = -np.diff(cam, axis=0)
    else:
        vel = _velocity(rng, 0.0, 0.5, hw[1] / 64.0) if rng.random() < 0.5 else np.zeros(2)
        xy, vmid = _bouncing(xy0, vel, n, lo, hi)
    return _Object(concept, colour, xy, angle, logd, vmid)


def _object_luma(colour: int, concept: int) -> float:
    base, pat = object_colours(colour)
    mean = base if concept % len(TEXTURES) == 0 else (base + pat) / 2
    return float(mean @ _LUMA)


def _plan_scene(rng: np.random.Generator, n: int, concept: int, config: StimulusConfig) -> _Scene:
    """Draw motion kind, colour, background, trajectories and distractor of one scene."""
    hw = np.asarray(config.size, dtype=np.float64)
    kind = MOTIONS[int(rng.choice(len(MOTIONS), p=_MOTION_P))]
    colour = int(rng.integers(len(COLOURS)))
    photos = len(BACKGROUNDS) - len(PROCEDURAL_BACKGROUNDS)
    if photos and rng.random() < config.photo_fraction:
        background = len(PROCEDURAL_BACKGROUNDS) + int(rng.integers(photos))
    else:
        background = int(rng.integers(len(PROCEDURAL_BACKGROUNDS)))
    key = _plan_key(rng, kind, n, concept, colour, hw)
    cam = _plan_camera(rng, kind, n, hw)
    distractor = None
    if rng.random() < config.p_distractor:
        d_concept = (concept + int(rng.integers(1, len(VOCABULARY)))) % len(VOCABULARY)
        d_colour = (colour + int(rng.integers(1, len(COLOURS)))) % len(COLOURS)
        distractor = _plan_distractor(rng, kind, n, d_concept, d_colour, key, cam, hw)
    return _Scene(n, kind, background, key, distractor, cam, int(rng.integers(2**63)))


# --------------------------------------------------------------------------- captions


def _direction(vel: np.ndarray) -> str:
    """Compass words for a screen-space velocity (y down)."""
    horiz = "right" if vel[0] > 0 else "left"
    vert = "down" if vel[1] > 0 else "up"
    ax, ay = abs(vel[0]), abs(vel[1])
    if ax >= 2 * ay:
        return horiz
    if ay >= 2 * ax:
        return vert
    return f"{vert} and {horiz}"


def _object_phrase(obj: _Object) -> str:
    return f"{COLOURS[obj.colour][0]} {VOCABULARY[obj.concept]}"


def _background_phrase(background: int) -> str:
    kind = BACKGROUNDS[background]
    if kind.startswith("photo:"):
        return f"a {_PHOTOS[kind[6:]][1]} photo"
    return _BG_PHRASE[kind]


def _caption(scene: _Scene, t: int, distractor_visible: bool) -> str:
    """Template caption of frame ``t`` of a scene."""
    key = _object_phrase(scene.key)
    extra = ""
    if distractor_visible and scene.distractor is not None:
        extra = f" beside a small {_object_phrase(scene.distractor)}"
    bg = _background_phrase(scene.background)
    if scene.kind == "pan":
        cam_dir = _direction(scene.cam[t + 1] - scene.cam[t])
        return f"the camera pans {cam_dir} with a {key}{extra} over {bg}"
    verb = {
        "static": "",
        "translation": f" moving {_direction(scene.key.direction[t])}",
        "rotation": " spinning "
        + ("counterclockwise" if scene.key.angle[t + 1] > scene.key.angle[t] else "clockwise"),
        "zoom": " growing" if scene.key.logd[-1] > scene.key.logd[0] else " shrinking",
    }[scene.kind]
    return f"a {key}{verb}{extra} on {bg}"


# -------------------------------------------------------------------------- rendering


def _paste(
    buf: np.ndarray, sprite: tuple[np.ndarray, np.ndarray], xy: np.ndarray, angle: float, diameter: float
) -> tuple[int, int, np.ndarray] | None:
    """Composite a sprite over the supersampled frame ``buf`` in place.

    Returns the top-left output pixel of the object's region and its coverage there (at
    output resolution), or None when the object is entirely outside the frame.
    """
    rgb, alpha3 = sprite
    res = rgb.shape[0]
    k = diameter * _SS / res  # supersampled pixels per sprite pixel
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    a = k * np.array([[ca, sa], [-sa, ca]])  # counter-clockwise on screen (y down)
    centre = xy * _SS - 0.5  # cv2 pixel-centre convention
    radius = diameter * _SS / 2 + 2
    # region of interest, aligned to output pixels
    x0, y0 = np.maximum(np.floor((centre - radius) / _SS).astype(int) * _SS, 0)
    x1, y1 = np.minimum(np.ceil((centre + radius) / _SS).astype(int) * _SS, buf.shape[1::-1])
    if x1 <= x0 or y1 <= y0:
        return None
    m = np.hstack([a, (centre - a @ np.full(2, (res - 1) / 2) - (x0, y0))[:, None]])
    size = (int(x1 - x0), int(y1 - y0))
    col = cv2.warpAffine(rgb, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = cv2.warpAffine(alpha3, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    roi = buf[y0:y1, x0:x1]
    roi *= 1.0 - alpha
    roi += col
    cov = cv2.resize(alpha, (size[0] // _SS, size[1] // _SS), interpolation=cv2.INTER_AREA)
    return int(x0) // _SS, int(y0) // _SS, cov[..., 0]


def _coverage(out: np.ndarray, pasted: tuple[int, int, np.ndarray] | None) -> np.ndarray:
    """Write a pasted object's coverage into the zeroed (H, W) float map ``out``."""
    out[:] = 0
    if pasted is not None:
        x0, y0, cov = pasted
        out[y0 : y0 + cov.shape[0], x0 : x0 + cov.shape[1]] = cov
    return out


def _sprite_for(obj: _Object) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """Sprite sized for the object's largest diameter in the scene, and its relative area.

    The area is the fraction of the d × d square the shape covers (area = that × d²).
    """
    res = max(8, math.ceil(math.exp(obj.logd.max()) * _SS))
    sprite = _sprite(obj.concept, obj.colour, res)
    return sprite, float(sprite[1][..., 0].sum()) / res**2


def _render_scene(scene: _Scene, movie: Movie, start: int, count: int, config: StimulusConfig) -> list[bool]:
    """Render the first ``count`` frames of a scene into ``movie`` at offset ``start``.

    Returns, per frame, whether the distractor is visible.
    """
    h, w = config.size
    hs, ws = h * _SS, w * _SS
    luma = _object_luma(scene.key.colour, scene.key.concept)
    rng = np.random.default_rng(scene.seed)
    target = rng.uniform(40, 75) if luma > 120 else rng.uniform(170, 210)
    canvas = _background(rng, BACKGROUNDS[scene.background], (2 * hs, 2 * ws), float(ws), target)
    buf = np.empty((hs, ws, 3), dtype=np.float32)
    kcov, dcov = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    key_sprite, key_area = _sprite_for(scene.key)
    dis = scene.distractor
    if dis is not None:
        dis_sprite, dis_area = _sprite_for(dis)
    visible = []
    for t in range(count):
        f = start + t
        cx, cy = scene.cam[t] * _SS
        if scene.kind == "pan":
            m = np.array([[1.0, 0.0, cx], [0.0, 1.0, cy]])
            cv2.warpAffine(
                canvas,
                m,
                (ws, hs),
                dst=buf,
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REFLECT_101,
            )
        else:
            x0, y0 = round(cx), round(cy)
            np.copyto(buf, canvas[y0 : y0 + hs, x0 : x0 + ws])
        d_vis = False
        if dis is not None:
            d_d = math.exp(dis.logd[t])
            _coverage(dcov, _paste(buf, dis_sprite, dis.xy[t], dis.angle[t], d_d))
        key = scene.key
        d_k = math.exp(key.logd[t])
        _coverage(kcov, _paste(buf, key_sprite, key.xy[t], key.angle[t], d_k))
        if dis is not None:
            seen = int(np.count_nonzero(dcov * (1 - kcov) > 0.5))
            d_vis = seen >= max(3, 0.2 * dis_area * d_d**2)
            movie.concepts[f, dis.concept] = d_vis
        small = cv2.resize(buf, (w, h), interpolation=cv2.INTER_AREA)
        movie.frames[f] = cv2.convertScaleAbs(small)
        np.greater(kcov, 0.5, out=movie.mask[f])
        key_visible = int(np.count_nonzero(movie.mask[f])) >= max(1, 0.2 * key_area * d_k**2)
        movie.concepts[f, key.concept] |= key_visible
        visible.append(d_vis)
    return visible


def _motion_labels(scene: _Scene) -> np.ndarray:
    """(n, 6) float32 motion of each frame to the next (see the module docstring)."""
    key = scene.key
    return np.column_stack(
        [
            np.diff(key.xy, axis=0),
            np.diff(key.angle),
            np.diff(key.logd),
            -np.diff(scene.cam, axis=0),
        ]
    ).astype(np.float32)


def _scene_lengths(config: StimulusConfig) -> tuple[int, int]:
    lo = max(1, math.ceil(config.scene_min_s * config.fps - 1e-9))
    hi = max(lo, math.floor(config.scene_max_s * config.fps + 1e-9))
    return lo, hi


def _empty_movie(n_frames: int, config: StimulusConfig) -> Movie:
    h, w = config.size
    return Movie(
        frames=np.zeros((n_frames, h, w, 3), np.uint8),
        concepts=np.zeros((n_frames, len(VOCABULARY)), bool),
        mask=np.zeros((n_frames, h, w), bool),
        key_concept=np.zeros(n_frames, np.int16),
        colour=np.zeros(n_frames, np.int16),
        background=np.zeros(n_frames, np.int16),
        motion=np.zeros((n_frames, 6), np.float32),
        scene=np.zeros(n_frames, np.int32),
        caption_id=np.zeros(n_frames, np.int32),
        captions=[],
    )


def generate_movie(
    n_frames: int, seed: int, config: StimulusConfig = StimulusConfig(), scene_offset: int = 0
) -> Movie:
    """Deterministic movie of n_frames frames; scene ids start at scene_offset.

    Parameters
    ----------
    n_frames
        Number of frames (``T``).
    seed
        Seed; the same ``(n_frames, seed, config)`` gives byte-identical frames and labels,
        and a shorter movie with the same seed is a prefix of a longer one.
    config
        Frame size, frame rate, scene durations and scene statistics.
    scene_offset
        Id of the first scene (``Movie.scene`` counts up from here at each cut).

    Returns
    -------
    Movie
        Frames and per-frame labels. Key concepts cycle through random permutations of the
        64 concepts, so every concept is a key object once per 64 scenes.
    """
    if n_frames < 0:
        raise ValueError("n_frames must be >= 0")
    if min(config.size) < 4 or config.fps <= 0 or config.scene_max_s < config.scene_min_s:
        raise ValueError(f"invalid StimulusConfig: {config}")
    movie = _empty_movie(n_frames, config)
    master = np.random.default_rng(np.random.SeedSequence(seed))
    lo, hi = _scene_lengths(config)
    caption_index: dict[str, int] = {}
    deck: list[int] = []
    start, index = 0, 0
    while start < n_frames:
        n = int(master.integers(lo, hi + 1))
        if not deck:
            deck = master.permutation(len(VOCABULARY)).tolist()
        scene_rng = np.random.default_rng(master.integers(2**63))
        scene = _plan_scene(scene_rng, n, deck.pop(), config)
        count = min(n, n_frames - start)
        visible = _render_scene(scene, movie, start, count, config)
        sl = slice(start, start + count)
        movie.key_concept[sl] = scene.key.concept
        movie.colour[sl] = scene.key.colour
        movie.background[sl] = scene.background
        movie.motion[sl] = _motion_labels(scene)[:count]
        movie.scene[sl] = scene_offset + index
        for t in range(count):
            text = _caption(scene, t, visible[t])
            movie.caption_id[start + t] = caption_index.setdefault(text, len(caption_index))
        start, index = start + count, index + 1
    movie.captions = list(caption_index)
    return movie
