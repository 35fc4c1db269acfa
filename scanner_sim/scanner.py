"""The simulated scanner: noise, drift, spikes and head motion turn BOLD signals into EPI volumes.

Per TR, the voxel series of the head is ``S0 * (1 + bold + physio + drift)``: ``physio`` is
AR(1) noise per voxel plus a shared global component (Krüger & Glover, 2001: physiological
noise scales with signal), ``drift`` slow sinusoids (scanner drift). That head image is moved
rigidly by the ground-truth motion (trilinear resampling), thermal noise is added in the
complex domain (so the magnitude image has a Rician floor outside the head), rare spikes hit
single slices, and the result is rounded to int16 like a reconstructed EPI image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from rtdecode.geometry import VolumeGeometry, framewise_displacement, resample_rigid
from scanner_sim.brain import Subject

__all__ = ["MotionConfig", "NoiseConfig", "Run", "ScannerConfig", "acquire", "simulate_motion"]


@dataclass(frozen=True)
class NoiseConfig:
    """Noise levels (defaults calibrated, see ``scanner-sim calibrate``)."""

    thermal: float = field(
        default=9.0, metadata={"help": "thermal noise SD (image units; grey matter ~1000)"}
    )
    physio_pct: float = field(
        default=1.0, metadata={"help": "physiological noise SD, % of baseline (grey matter)"}
    )
    physio_ar: tuple[float, float] = (0.45, 0.75)
    global_fraction: float = 0.35
    drift_pct: float = 0.6
    spike_rate: float = field(default=0.003, metadata={"help": "probability of a spike per volume"})
    spike_pct: float = 25.0


@dataclass(frozen=True)
class MotionConfig:
    """Head motion: a mean-reverting random walk, slow settling and occasional jerks."""

    walk_mm: float = 0.035
    walk_deg: float = 0.03
    reversion: float = 0.03
    settle_mm_per_min: float = 0.04
    jerk_rate: float = field(default=0.008, metadata={"help": "probability of a jerk per TR"})
    jerk_mm: float = 0.6
    scale: float = field(default=1.0, metadata={"help": "multiplies all motion (0 = still head)"})


@dataclass(frozen=True)
class ScannerConfig:
    """Scanner settings."""

    tr: float = 2.0
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)


def simulate_motion(rng: np.random.Generator, n_tr: int, tr: float, cfg: MotionConfig) -> np.ndarray:
    """Ground-truth (n_tr, 6) motion parameters (mm, degrees), starting near zero.

    A mean-reverting random walk with a slow settling trend (the head sinks into the
    cushion), plus transient jerks that mostly recover within a few TRs.
    """
    rate = tr / 2.0
    step = np.array([cfg.walk_mm] * 3 + [cfg.walk_deg] * 3) * np.sqrt(rate)
    settle = np.array([0, 0.3, -1.0, 1.0, 0, 0]) * cfg.settle_mm_per_min * tr / 60
    jerk_sd = np.array([cfg.jerk_mm] * 3 + [cfg.jerk_mm * 0.8] * 3) / 2
    walk = np.zeros(6)
    jerk = np.zeros(6)
    p = np.zeros((n_tr, 6))
    for t in range(n_tr):
        jerk *= 0.6**rate
        if t and rng.random() < cfg.jerk_rate * rate:
            jerk += rng.normal(0, 1, 6) * jerk_sd
        if t:
            walk = walk * (1 - cfg.reversion * rate) + rng.normal(0, 1, 6) * step + settle
        p[t] = walk + jerk
    return (p * cfg.scale).astype(np.float32)


@dataclass
class Run:
    """One acquired run.

    Attributes
    ----------
    motion
        (n_tr, 6) ground-truth motion.
    fd
        (n_tr,) framewise displacement.
    spikes
        (n_tr,) slice index hit by a spike, or -1.
    volumes
        Iterator of (nx, ny, nz) int16 volumes (generated lazily, in TR order).
    """

    motion: np.ndarray
    fd: np.ndarray
    spikes: np.ndarray
    volumes: Iterator[np.ndarray]


class _VoxelNoise:
    """Per-TR physiological noise and drift for the head's voxels (stateful AR(1))."""

    def __init__(self, rng: np.random.Generator, subject: Subject, cfg: NoiseConfig, tr: float):
        self.rng = rng
        head = subject.baseline.ravel() > 1.0
        self.index = np.flatnonzero(head)
        tissue = subject.tissue.ravel()[self.index]
        scale = np.select([tissue == 4, tissue == 2, tissue == 1], [0.8, 1.4, 0.8], 1.0)
        self.sd = (cfg.physio_pct / 100 * scale).astype(np.float32)
        lo, hi = cfg.physio_ar
        self.rho = (rng.uniform(lo, hi, self.index.size) ** (tr / 2.0)).astype(np.float32)
        self.g_rho = float(np.mean(cfg.physio_ar)) ** (tr / 2.0)
        self.gf = cfg.global_fraction
        self.state = rng.standard_normal(self.index.size).astype(np.float32)
        self.g_state = float(rng.standard_normal())
        n = self.index.size
        self.drift_amp = (cfg.drift_pct / 100 * rng.uniform(0.3, 1.0, (2, n))).astype(np.float32)
        self.drift_phase = rng.uniform(0, 2 * np.pi, (2, n)).astype(np.float32)
        self.drift_period = rng.uniform(150, 600, 2)
        self.tr = tr

    def step(self, t: int) -> np.ndarray:
        """Relative fluctuation (physio + drift) of every head voxel at TR ``t``."""
        e = self.rng.standard_normal(self.index.size).astype(np.float32)
        self.state = self.rho * self.state + np.sqrt(1 - self.rho**2) * e
        self.g_state = self.g_rho * self.g_state + np.sqrt(1 - self.g_rho**2) * self.rng.standard_normal()
        physio = self.sd * (np.sqrt(1 - self.gf) * self.state + np.sqrt(self.gf) * self.g_state)
        time = t * self.tr
        drift = (
            self.drift_amp * np.sin(2 * np.pi * time / self.drift_period[:, None] + self.drift_phase)
        ).sum(0)
        return physio + drift


def voxel_series(
    subject: Subject, bold: np.ndarray, rng: np.random.Generator, cfg: ScannerConfig
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (head voxel indices, intensities) per TR before motion and thermal noise.

    This is the time series a perfect motion correction would recover; calibration reads it.
    """
    noise = _VoxelNoise(rng, subject, cfg.noise, cfg.tr)
    s0 = subject.baseline.ravel()[noise.index]
    pos = np.searchsorted(noise.index, subject.visual_index)
    for t in range(bold.shape[0]):
        rel = noise.step(t)
        rel[pos] += bold[t]
        yield noise.index, s0 * (1 + rel)


def acquire(
    subject: Subject,
    bold: np.ndarray,
    seed_seq: np.random.SeedSequence,
    cfg: ScannerConfig = ScannerConfig(),
    dtype: type = np.int16,
) -> Run:
    """Simulate one run: ground-truth motion now, volumes lazily.

    Parameters
    ----------
    subject
        The subject in the scanner.
    bold
        (n_tr, n_visual) BOLD signal change from :meth:`Subject.bold`.
    seed_seq
        Seed of this run (the same seed gives identical volumes).
    cfg
        Scanner settings.
    dtype
        ``int16`` (as a reconstructed EPI image) or ``float32``.
    """
    noise_rng, motion_rng, thermal_rng, spike_rng = (np.random.default_rng(s) for s in seed_seq.spawn(4))
    n_tr = bold.shape[0]
    motion = simulate_motion(motion_rng, n_tr, cfg.tr, cfg.motion)
    nz = subject.geometry.dims[2]
    spikes = np.where(spike_rng.random(n_tr) < cfg.noise.spike_rate, spike_rng.integers(0, nz, n_tr), -1)
    spike_gain = 1 + cfg.noise.spike_pct / 100 * spike_rng.uniform(0.5, 1.5, n_tr)

    geo = subject.geometry
    # The head extends beyond the slab: tissue moving into the field of view must be imaged,
    # so resample from a z-padded head (edge slices continued) and crop to the slab.
    pad = 6
    padded = VolumeGeometry((geo.dims[0], geo.dims[1], geo.dims[2] + 2 * pad), geo.voxel_size, geo.tr)

    def volumes() -> Iterator[np.ndarray]:
        head = np.zeros(geo.n_voxels, np.float32)
        for t, (index, values) in enumerate(voxel_series(subject, bold, noise_rng, cfg)):
            head[index] = values
            big = np.pad(head.reshape(geo.dims), ((0, 0), (0, 0), (pad, pad)), mode="edge")
            img = resample_rigid(big, motion[t], padded)[:, :, pad:-pad]
            yield _finish(img, thermal_rng, cfg.noise.thermal, spikes[t], spike_gain[t], dtype)

    return Run(motion=motion, fd=framewise_displacement(motion), spikes=spikes, volumes=volumes())


def _finish(
    img: np.ndarray,
    rng: np.random.Generator,
    thermal: float,
    spike_slice: int,
    spike_gain: float,
    dtype: type,
) -> np.ndarray:
    """Add complex thermal noise (magnitude image), a spike, and quantise."""
    re = img + rng.standard_normal(img.shape, dtype=np.float32) * thermal
    im = rng.standard_normal(img.shape, dtype=np.float32) * thermal
    mag = np.sqrt(re * re + im * im)
    if spike_slice >= 0:
        mag[:, :, spike_slice] *= spike_gain
    if np.dtype(dtype) == np.int16:
        return np.clip(np.rint(mag), 0, 32767).astype(np.int16)
    return mag.astype(dtype)
