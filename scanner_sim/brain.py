"""Simulated subjects: anatomy, regions of interest and a forward encoding model.

Each subject has its own head on the scanner grid (tissues, EPI baseline intensity, a brain
mask) and its own visual maps:

* ``early_visual`` — population receptive fields (Dumoulin & Wandell, 2008) laid out
  retinotopically around the occipital pole (contralateral hemifield, upper bank → lower
  field, eccentricity growing anteriorly with cortical magnification). Each pRF sums local
  contrast energy through a compressive exponent of 0.5 (Kay et al., 2013, "CSS") and adds
  signed luminance and colour-opponent terms.
* ``motion`` — MT-like voxels: large receptive fields, direction tuned motion energy
  (Adelson & Bergen, 1985; Nishimoto et al., 2011).
* ``category`` — ventral temporal voxels with smooth, clustered tuning to object shape,
  surface texture, colour and scene (background) kind.
* ``nonvisual`` — the rest of the brain: no stimulus signal.

Responses are z-scored against a fixed reference movie, convolved with a per-voxel
double-gamma HRF and scaled to a percent BOLD signal change.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, sparse

from rtdecode.geometry import VolumeGeometry
from scanner_sim import stimuli
from scanner_sim.hrf import convolve_hrf

__all__ = [
    "ROI_NAMES",
    "BrainConfig",
    "Features",
    "Subject",
    "make_subject",
    "stimulus_features",
]

ROI_NAMES = ("outside", "nonvisual", "early_visual", "motion", "category")
ROI = {name: i for i, name in enumerate(ROI_NAMES)}
TISSUES = ("background", "scalp", "csf", "grey", "white")
HRF_DELAYS = np.array([-0.8, -0.4, 0.0, 0.4, 0.8])
N_DIRECTIONS = 8
FEATURE_RES = 32  # spatial feature maps (luminance, colour, contrast energy)
MOTION_RES = 16  # motion energy maps


@dataclass(frozen=True)
class BrainConfig:
    """Anatomy and encoding-model settings of the simulated subjects."""

    dims: tuple[int, int, int] = (64, 64, 32)
    voxel_size: tuple[float, float, float] = (3.0, 3.0, 3.0)
    n_early: int = 3000
    n_motion: int = 600
    n_category: int = 2400
    signal_pct: float = field(default=1.4, metadata={"help": "median visual BOLD amplitude, % of baseline"})
    reference_frames: int = 1600


# ----------------------------------------------------------------------------- features


@dataclass
class Features:
    """Per-frame stimulus features the encoding model reads.

    Attributes
    ----------
    energy, luminance, red_green, blue_yellow
        (T, 32*32) maps: local contrast energy, luminance and colour opponency.
    motion
        (T, 8, 16*16) direction-tuned motion energy.
    semantic
        (T, S) object shape/texture/concept presence, key colour and background kind.
    """

    energy: np.ndarray
    luminance: np.ndarray
    red_green: np.ndarray
    blue_yellow: np.ndarray
    motion: np.ndarray
    semantic: np.ndarray

    def __len__(self) -> int:
        return self.energy.shape[0]


def _block_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Downsample (T, H, W[, C]) to (T, size, size[, C]) by block means (H, W multiples)."""
    t, h, w = x.shape[:3]
    if h % size or w % size:
        import cv2

        return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in x])
    fh, fw = h // size, w // size
    return x.reshape(t, size, fh, size, fw, *x.shape[3:]).mean(axis=(2, 4))


@functools.lru_cache(maxsize=1)
def _concept_parts() -> tuple[np.ndarray, np.ndarray]:
    """Shape and texture index of each concept of the vocabulary."""
    shape_idx, tex_idx = [], []
    for name in stimuli.VOCABULARY:
        tex, shape = name.split(" ", 1)
        shape_idx.append(stimuli.SHAPES.index(shape))
        tex_idx.append(stimuli.TEXTURES.index(tex))
    return np.array(shape_idx), np.array(tex_idx)


def semantic_dim() -> int:
    """Length of the semantic feature vector."""
    return (
        len(stimuli.VOCABULARY)
        + len(stimuli.SHAPES)
        + len(stimuli.TEXTURES)
        + len(stimuli.COLOURS)
        + len(stimuli.BACKGROUNDS)
    )


def _semantic(movie: stimuli.Movie) -> np.ndarray:
    """Concept presence (key object weighted by its size), parts, colour and background."""
    n_c = len(stimuli.VOCABULARY)
    t = len(movie)
    presence = movie.concepts.astype(np.float32) * 0.5
    area = movie.mask.reshape(t, -1).mean(axis=1)
    key_w = np.clip(np.sqrt(area / 0.1), 0.3, 1.5).astype(np.float32)
    presence[np.arange(t), movie.key_concept] = key_w
    shape_idx, tex_idx = _concept_parts()
    shapes = presence @ np.eye(len(stimuli.SHAPES), dtype=np.float32)[shape_idx]
    textures = presence @ np.eye(len(stimuli.TEXTURES), dtype=np.float32)[tex_idx]
    colour = np.eye(len(stimuli.COLOURS), dtype=np.float32)[movie.colour]
    background = np.eye(len(stimuli.BACKGROUNDS), dtype=np.float32)[movie.background]
    out = np.concatenate([presence, shapes, textures, colour, background], axis=1)
    assert out.shape[1] == semantic_dim() and presence.shape[1] == n_c
    return out


def _motion_energy(lum: np.ndarray) -> np.ndarray:
    """Direction-tuned motion energy from a (T, R, R) luminance movie (gradient model)."""
    prev = np.concatenate([lum[:1], lum[:-1]])
    it = lum - prev
    mean = (lum + prev) / 2
    iy, ix = np.gradient(mean, axis=(1, 2))
    out = np.empty((lum.shape[0], N_DIRECTIONS, lum.shape[1] * lum.shape[2]), np.float32)
    for k in range(N_DIRECTIONS):
        theta = 2 * np.pi * k / N_DIRECTIONS
        # Positive when the luminance pattern moves along theta (brightness constancy).
        me = np.maximum(-it * (ix * np.cos(theta) + iy * np.sin(theta)), 0)
        me = ndimage.gaussian_filter(me, sigma=(0, 1.0, 1.0))
        out[:, k] = me.reshape(lum.shape[0], -1) * 100
    return out


def stimulus_features(movie: stimuli.Movie) -> Features:
    """Compute the encoding model's per-frame features of a movie."""
    rgb = _block_mean(movie.frames.astype(np.float32) / 255.0, FEATURE_RES)
    lum = rgb.mean(axis=-1)
    local = lum - ndimage.gaussian_filter(lum, sigma=(0, 1.5, 1.5))
    energy = ndimage.gaussian_filter(local**2, sigma=(0, 1.0, 1.0)) * 10
    t = len(movie)
    return Features(
        energy=energy.reshape(t, -1).astype(np.float32),
        luminance=(lum - 0.5).reshape(t, -1).astype(np.float32),
        red_green=(rgb[..., 0] - rgb[..., 1]).reshape(t, -1).astype(np.float32),
        blue_yellow=(rgb[..., 2] - (rgb[..., 0] + rgb[..., 1]) / 2).reshape(t, -1).astype(np.float32),
        motion=_motion_energy(_block_mean(lum, MOTION_RES)),
        semantic=_semantic(movie),
    )


@functools.lru_cache(maxsize=2)
def reference_features(n_frames: int, size: tuple[int, int], fps: float) -> Features:
    """Features of the fixed reference movie used to normalise every voxel's response."""
    cfg = stimuli.StimulusConfig(size=size, fps=fps)
    return stimulus_features(stimuli.generate_movie(n_frames, seed=20260101, config=cfg))


# ----------------------------------------------------------------------------- anatomy


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ``sigma`` voxels."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def _grid_mm(geometry: VolumeGeometry) -> np.ndarray:
    """(3, nx, ny, nz) voxel-centre coordinates in mm relative to the volume centre."""
    idx = np.indices(geometry.dims, dtype=np.float32)
    c = geometry.centre.reshape(3, 1, 1, 1)
    return (idx - c) * np.array(geometry.voxel_size, dtype=np.float32).reshape(3, 1, 1, 1)


def _anatomy(rng: np.random.Generator, geometry: VolumeGeometry) -> dict[str, np.ndarray]:
    """Tissue classes and EPI baseline intensity of one head."""
    xyz = _grid_mm(geometry)
    semi = np.array([64.0, 82.0, 58.0]) * (1 + rng.normal(0, 0.04, 3))
    centre = np.array([rng.normal(0, 2), rng.normal(4, 2), rng.normal(-8, 2)])
    rel = (xyz - centre.reshape(3, 1, 1, 1)) / semi.reshape(3, 1, 1, 1)
    r = np.sqrt((rel**2).sum(axis=0))
    r_brain = r * (1 + 0.03 * _smooth_noise(rng, r.shape, 2.0))  # gyral surface
    brain = r_brain < 1.0
    cortex_depth = 1 - r_brain
    # Folding: grey matter where the surface is near, or where sulci dip inward.
    folds = _smooth_noise(rng, r.shape, 1.2)
    grey = brain & ((cortex_depth < 0.09) | ((cortex_depth < 0.22) & (folds > 0.9)))
    vent = np.zeros_like(brain)
    for side in (-1, 1):
        ventricle_centre = (centre + np.array([side * 7, 2, 6])).reshape(3, 1, 1, 1)
        v = (xyz - ventricle_centre) / np.array([5, 18, 7.0]).reshape(3, 1, 1, 1)
        vent |= (v**2).sum(axis=0) < 1
    csf = (vent & brain) | ((r >= 1.0) & (r < 1.06))
    scalp = (r >= 1.08) & (r < 1.22)
    tissue = np.zeros(r.shape, np.int8)
    tissue[scalp] = 1
    tissue[csf] = 2
    tissue[brain & ~csf] = 4
    tissue[grey & ~csf] = 3
    level = np.array([0.0, 330.0, 1450.0, 1000.0, 720.0])
    base = level[tissue] * (1 + 0.03 * rng.standard_normal(r.shape))
    base *= 1 + 0.12 * _smooth_noise(rng, r.shape, 10.0)  # receive-coil bias field
    # Susceptibility dropout in inferior frontal cortex, as in gradient-echo EPI.
    drop = np.exp(-(((rel[1] - 0.75) / 0.2) ** 2 + ((rel[2] + 0.55) / 0.25) ** 2))
    base *= 1 - 0.6 * drop
    base = ndimage.gaussian_filter(base, 0.5)  # partial volume
    return {
        "tissue": tissue,
        "baseline": base.astype(np.float32),
        "brain": brain,
        "rel": rel.astype(np.float32),
        "semi": semi,
        "centre": centre,
    }


def _nearest(
    candidates: np.ndarray, rel: np.ndarray, points: list[np.ndarray], n: int, weights: np.ndarray
) -> np.ndarray:
    """Flat indices of the ``n`` candidate voxels nearest to any of ``points`` (split evenly)."""
    cand = np.flatnonzero(candidates.ravel())
    coords = rel.reshape(3, -1)[:, cand].T
    chosen: list[np.ndarray] = []
    taken = np.zeros(cand.size, bool)
    for i, p in enumerate(points):
        k = n // len(points) + (1 if i < n % len(points) else 0)
        d = (((coords - p) * weights) ** 2).sum(axis=1)
        d[taken] = np.inf
        sel = np.argsort(d)[:k]
        taken[sel] = True
        chosen.append(cand[sel])
    return np.concatenate(chosen)


# ----------------------------------------------------------------------------- subject


@dataclass
class Subject:
    """One simulated subject: anatomy, ROIs and encoding model.

    Attributes
    ----------
    name
        ``sub-01`` style identifier.
    geometry
        The scanner grid.
    tissue, baseline, brain_mask, roi
        3-D arrays on the grid (int8, float32, bool, int8 indices into :data:`ROI_NAMES`).
    visual_index
        Flat indices of the visual voxels, grouped by ROI (early, motion, category).
    visual_roi
        ROI index of each visual voxel.
    prf
        (n_early, 3) pRF centre x, y (screen units, -1..1, y down) and size.
    motion_pref
        (n_motion,) preferred direction in radians.
    amplitude
        (n_visual,) BOLD amplitude, fraction of baseline.
    hrf_group
        (n_visual,) index into :data:`HRF_DELAYS`.
    """

    name: str
    index: int
    seed: int
    geometry: VolumeGeometry
    tissue: np.ndarray
    baseline: np.ndarray
    brain_mask: np.ndarray
    roi: np.ndarray
    visual_index: np.ndarray
    visual_roi: np.ndarray
    prf: np.ndarray
    motion_pref: np.ndarray
    amplitude: np.ndarray
    hrf_group: np.ndarray
    _weights: dict = field(repr=False, default_factory=dict)
    _norm: dict = field(repr=False, default_factory=dict)

    @property
    def n_visual(self) -> int:
        """Number of stimulus-driven voxels."""
        return int(self.visual_index.size)

    def neural_response(self, feats: Features) -> np.ndarray:
        """(T, n_visual) z-scored neural response to per-frame features."""
        w = self._weights
        energy = np.sqrt(np.maximum(feats.energy @ w["prf"], 0))
        early = (
            energy * w["g_energy"]
            + (feats.luminance @ w["prf"]) * w["g_lum"]
            + (feats.red_green @ w["prf"]) * w["g_rg"]
            + (feats.blue_yellow @ w["prf"]) * w["g_by"]
        )
        pooled = np.stack([feats.motion[:, k] @ w["mt_rf"] for k in range(N_DIRECTIONS)], axis=1)
        motion = np.sqrt(np.maximum((pooled * w["mt_tuning"][None]).sum(axis=1), 0))
        category = feats.semantic @ w["category"]
        raw = np.concatenate([np.asarray(early), motion, category], axis=1).astype(np.float32)
        if self._norm:
            raw = (raw - self._norm["mean"]) / self._norm["std"]
        return raw

    def bold(self, feats: Features, fps: float, tr: float, n_tr: int | None = None) -> np.ndarray:
        """(n_tr, n_visual) BOLD signal change (fraction of baseline) sampled mid-TR.

        Frames are shown from time 0 at ``fps``; TR ``k`` is acquired over ``[k*tr, (k+1)*tr)``.
        """
        neural = self.neural_response(feats)
        bold = convolve_hrf(neural, 1.0 / fps, HRF_DELAYS, self.hrf_group)
        n_tr = n_tr or int(len(feats) / fps / tr)
        idx = np.minimum(((np.arange(n_tr) + 0.5) * tr * fps).astype(int), len(feats) - 1)
        out = bold[idx] / self._norm.get("bold_std", 1.0)
        return (out * self.amplitude).astype(np.float32)

    def _normalise(self, feats: Features, fps: float) -> None:
        """Fix per-voxel response scaling from the reference movie."""
        self._norm = {}
        raw = self.neural_response(feats)
        self._norm = {"mean": raw.mean(axis=0), "std": raw.std(axis=0) + 1e-6}
        z = self.neural_response(feats)
        bold = convolve_hrf(z, 1.0 / fps, HRF_DELAYS, self.hrf_group)
        self._norm["bold_std"] = bold[int(8 * fps) :].std(axis=0) + 1e-6


def _retinotopy(rng, rel, early, pole) -> np.ndarray:
    """pRF centre and size for early visual voxels from their position around the pole."""
    coords = rel.reshape(3, -1)[:, early].T
    d = coords - pole
    side = -np.sign(d[:, 0] + 1e-6)  # left hemisphere sees the right visual field
    angle = np.arctan2(d[:, 2], np.abs(d[:, 0]) + 0.02) + rng.normal(0, 0.25)
    dist = np.sqrt((d**2).sum(axis=1))
    u = dist / (np.percentile(dist, 98) + 1e-6)
    ecc = 1.25 * (np.exp(2.0 * u) - 1) / (np.exp(2.0) - 1)  # cortical magnification
    ecc = np.clip(ecc * np.exp(rng.normal(0, 0.08, ecc.size)), 0.01, 1.35)
    angle = angle + rng.normal(0, 0.15, angle.size)
    x = side * ecc * np.cos(angle)
    y = ecc * np.sin(angle)  # upper bank (d_z > 0) → lower field (screen y down)
    size = (0.06 + 0.18 * ecc) * np.exp(rng.normal(0, 0.15, ecc.size))
    return np.stack([x, y, size], axis=1).astype(np.float32)


def _prf_matrix(prf: np.ndarray, res: int) -> sparse.csr_matrix:
    """(res*res, n) sparse Gaussian pRF weights on the feature grid, columns summing to 1."""
    g = (np.arange(res) + 0.5) / res * 2 - 1
    gy, gx = np.meshgrid(g, g, indexing="ij")
    px = gx.ravel()[:, None]
    py = gy.ravel()[:, None]
    w = np.exp(-((px - prf[:, 0]) ** 2 + (py - prf[:, 1]) ** 2) / (2 * prf[:, 2] ** 2))
    w[w < 0.01] = 0
    w /= w.sum(axis=0, keepdims=True) + 1e-12
    return sparse.csr_matrix(w.astype(np.float32))


def _motion_weights(rng, rel, motion, points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receptive fields (256, n), direction tuning (8, n) and preferred directions of MT voxels."""
    n = motion.size
    coords = rel.reshape(3, -1)[:, motion].T
    field_ = np.stack([_smooth_noise(rng, (24, 24, 24), 3.0) for _ in range(2)])
    gi = np.clip(((coords + 1.2) / 2.4 * 23).astype(int), 0, 23)
    pref = np.arctan2(field_[1][tuple(gi.T)], field_[0][tuple(gi.T)])
    side = -np.sign(coords[:, 0])
    cx = side * rng.uniform(0.1, 0.6, n)
    cy = rng.uniform(-0.5, 0.5, n)
    size = rng.uniform(0.35, 0.7, n)
    rf = _prf_matrix(np.stack([cx, cy, size], axis=1), MOTION_RES).toarray()
    dirs = 2 * np.pi * np.arange(N_DIRECTIONS) / N_DIRECTIONS
    tuning = np.exp(2.0 * (np.cos(dirs[:, None] - pref[None]) - 1))
    return rf.astype(np.float32), tuning.astype(np.float32), pref.astype(np.float32)


def _category_weights(rng, rel, category) -> np.ndarray:
    """(S, n) clustered semantic tuning of category-selective voxels."""
    n_sem = semantic_dim()
    coords = rel.reshape(3, -1)[:, category].T
    gi = np.clip(((coords + 1.2) / 2.4 * 31).astype(int), 0, 31)
    w = np.empty((n_sem, category.size), np.float32)
    for s in range(n_sem):
        fld = _smooth_noise(rng, (32, 32, 32), 1.5)
        w[s] = np.maximum(fld[tuple(gi.T)] - 1.0, 0)  # sparse, spatially clustered preferences
    w += rng.normal(0, 0.05, w.shape).astype(np.float32)
    return w


def make_subject(
    index: int,
    seed: int = 0,
    config: BrainConfig = BrainConfig(),
    fps: float = 8.0,
    frame_size: tuple[int, int] = (64, 64),
) -> Subject:
    """Build subject ``index`` (0-based) of the world with this seed; deterministic.

    Parameters
    ----------
    index
        Subject number; different subjects have different anatomy and maps.
    seed
        World seed.
    config
        Grid and ROI sizes.
    fps, frame_size
        The stimulus format (the response normalisation is computed on it).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1000 + index]))
    geometry = VolumeGeometry(dims=config.dims, voxel_size=config.voxel_size, subject=f"sub-{index + 1:02d}")
    anat = _anatomy(rng, geometry)
    rel = anat["rel"]
    grey = anat["tissue"] == 3
    pole = np.array([rng.normal(0, 0.03), -0.97, rng.normal(0.05, 0.05)])
    early = _nearest(grey, rel, [pole], config.n_early, np.array([0.8, 1.0, 1.0]))
    remaining = grey.copy().ravel()
    remaining[early] = False
    remaining = remaining.reshape(grey.shape)
    mt_pts = [np.array([s * 0.85, -0.55, 0.05]) for s in (-1, 1)]
    motion = _nearest(remaining, rel, mt_pts, config.n_motion, np.ones(3))
    remaining.ravel()[motion] = False
    cat_pts = [np.array([s * 0.45, -0.3, -0.6]) for s in (-1, 1)]
    category = _nearest(remaining, rel, cat_pts, config.n_category, np.array([1.0, 0.7, 1.0]))
    roi = np.zeros(geometry.dims, np.int8)
    roi[anat["brain"]] = ROI["nonvisual"]
    for name, idx in (("early_visual", early), ("motion", motion), ("category", category)):
        roi.ravel()[idx] = ROI[name]
    visual = np.concatenate([early, motion, category])
    visual_roi = roi.ravel()[visual]
    prf = _retinotopy(rng, rel, early, pole)
    mt_rf, mt_tuning, mt_pref = _motion_weights(rng, rel, motion, mt_pts)
    n_early = early.size
    gains = {
        "g_energy": rng.uniform(0.6, 1.0, n_early),
        "g_lum": rng.normal(0, 0.6, n_early),
        "g_rg": rng.normal(0, 0.4, n_early),
        "g_by": rng.normal(0, 0.4, n_early),
    }
    weights = {k: v.astype(np.float32) for k, v in gains.items()}
    weights.update(
        prf=_prf_matrix(prf, FEATURE_RES),
        mt_rf=mt_rf,
        mt_tuning=mt_tuning,
        category=_category_weights(rng, rel, category),
    )
    roi_gain = np.select([visual_roi == ROI["early_visual"], visual_roi == ROI["motion"]], [1.0, 0.8], 0.9)
    amplitude = (config.signal_pct / 100 * roi_gain * np.exp(rng.normal(0, 0.35, visual.size))).astype(
        np.float32
    )
    subject = Subject(
        name=geometry.subject,
        index=index,
        seed=seed,
        geometry=geometry,
        tissue=anat["tissue"],
        baseline=anat["baseline"],
        brain_mask=anat["brain"],
        roi=roi,
        visual_index=visual,
        visual_roi=visual_roi,
        prf=prf,
        motion_pref=mt_pref,
        amplitude=amplitude,
        hrf_group=rng.integers(0, len(HRF_DELAYS), visual.size),
        _weights=weights,
    )
    subject._normalise(reference_features(config.reference_frames, tuple(frame_size), fps), fps)
    return subject
