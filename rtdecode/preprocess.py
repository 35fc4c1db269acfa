"""Causal preprocessing of fMRI volumes, one TR at a time.

The same :class:`Preprocessor` serves the online engine and the offline preparation of
training data (:func:`preprocess_run` just calls :meth:`Preprocessor.step` in order), so the
two can never disagree. Every step uses only volumes ≤ t:

1. **Motion correction** — rigid six-parameter registration to a reference volume by
   Gauss–Newton on smoothed intensities (plus a global intensity gain), with the Jacobian
   precomputed from the reference so an iteration costs one trilinear sampling of the
   brain. Parameters follow :mod:`rtdecode.geometry` (mm, degrees); framewise
   displacement as Power et al. (2012).
2. **Masking** — the brain mask of the reference (or a bundle's voxel mask).
3. **Incremental detrending** — an exponentially weighted linear fit per voxel over past
   TRs (forgetting time ``detrend_tau_s``); the residual is the value minus the fit's
   one-step forecast, so the current TR never fits itself.
4. **Running z-score** with **despiking** — residuals are scaled by running statistics
   and squashed softly beyond ``despike_z`` (``c·tanh(z/c)``) before updating them, so a
   spike neither passes through nor inflates the variance.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from rtdecode.geometry import VolumeGeometry, rotation_matrix

__all__ = [
    "MotionCorrector",
    "PreprocessConfig",
    "Preprocessed",
    "Preprocessor",
    "brain_mask",
    "preprocess_run",
]


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing settings."""

    motion_correction: bool = True
    mc_iterations: int = field(default=12, metadata={"help": "maximum Gauss-Newton iterations"})
    mc_tolerance: float = field(default=0.002, metadata={"help": "stop when the update is below (mm/deg)"})
    mc_smooth: float = field(
        default=1.0, metadata={"help": "Gaussian smoothing (voxels) before registration"}
    )
    mc_step: int = field(default=2, metadata={"help": "use every n-th voxel for registration"})
    mask_threshold: float = field(
        default=0.45, metadata={"help": "brain mask: fraction of the 98th percentile"}
    )
    detrend_tau_s: float = field(
        default=120.0, metadata={"help": "forgetting time of the incremental detrend"}
    )
    despike_z: float = field(default=4.0, metadata={"help": "soft limit for z-scores"})
    warmup: int = field(default=8, metadata={"help": "TRs before outputs count as settled"})


def brain_mask(reference: np.ndarray, threshold: float = 0.45) -> np.ndarray:
    """A brain mask from an EPI volume: intensity threshold, largest component, holes filled."""
    smooth = ndimage.gaussian_filter(reference.astype(np.float32), 1.0)
    mask = smooth > threshold * np.percentile(smooth, 98)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


class MotionCorrector:
    """Rigid registration of volumes to a fixed reference.

    Parameters
    ----------
    reference
        The reference volume (head space).
    geometry
        Grid geometry (voxel size, rotation centre).
    mask
        Voxels to register on (default: the reference's brain mask, dilated by two voxels
        so the head's edges, where most of the information is, take part).
    """

    def __init__(
        self,
        reference: np.ndarray,
        geometry: VolumeGeometry,
        config: PreprocessConfig = PreprocessConfig(),
        mask: np.ndarray | None = None,
    ) -> None:
        self.geometry = geometry
        self.cfg = config
        ref = ndimage.gaussian_filter(reference.astype(np.float32), config.mc_smooth)
        if mask is None:
            mask = ndimage.binary_dilation(brain_mask(reference, config.mask_threshold), iterations=2)
        sub = np.zeros_like(mask)
        s = config.mc_step
        sub[::s, ::s, ::s] = True
        # Tissue moves in and out of the slab at its ends: keep away from the edge slices.
        sub[:, :, :2] = sub[:, :, -2:] = False
        idx = np.argwhere(mask & sub).astype(np.float32)  # (N, 3) voxel indices
        self.vox = np.asarray(geometry.voxel_size, dtype=np.float32)
        self.centre = geometry.centre.astype(np.float32)
        self.points_mm = (idx - self.centre) * self.vox  # head-space positions
        self.ref_values = ref[tuple(idx.T.astype(int))]
        grads = np.gradient(ref)
        g = np.stack([grads[i][tuple(idx.T.astype(int))] / self.vox[i] for i in range(3)], axis=1)
        # d(position)/d(rotation in degrees) at zero rotation, for rx, ry, rz.
        y = self.points_mm * (np.pi / 180)
        d_rx = np.stack([np.zeros(len(y)), -y[:, 2], y[:, 1]], axis=1)
        d_ry = np.stack([y[:, 2], np.zeros(len(y)), -y[:, 0]], axis=1)
        d_rz = np.stack([-y[:, 1], y[:, 0], np.zeros(len(y))], axis=1)
        jac = np.stack(
            [
                g[:, 0],
                g[:, 1],
                g[:, 2],
                (g * d_rx).sum(1),
                (g * d_ry).sum(1),
                (g * d_rz).sum(1),
                self.ref_values,
            ],
            axis=1,
        ).astype(np.float64)
        self.jacobian = jac
        self.solver = np.linalg.pinv(jac.T @ jac) @ jac.T  # (7, N): constant Gauss-Newton step

    def _sample(
        self, volume: np.ndarray, params: np.ndarray, points_mm: np.ndarray, order: int = 1
    ) -> np.ndarray:
        """Values of an acquired volume at the scanner positions of head-space points."""
        rot = rotation_matrix(*params[3:6]).astype(np.float32)
        pos = points_mm @ rot.T + params[:3].astype(np.float32)
        coords = (pos / self.vox + self.centre).T
        return ndimage.map_coordinates(volume, coords, order=order, mode="nearest", prefilter=False)

    def estimate(self, volume: np.ndarray, init: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Motion parameters of ``volume`` relative to the reference, and iterations used."""
        smooth = ndimage.gaussian_filter(volume.astype(np.float32), self.cfg.mc_smooth)
        p = np.zeros(7) if init is None else np.concatenate([init[:6], [0.0]])
        iterations = 0
        while iterations < self.cfg.mc_iterations:
            iterations += 1
            moved = self._sample(smooth, p, self.points_mm)
            residual = moved * (1 - p[6]) - self.ref_values
            step = self.solver @ residual
            p[:6] -= step[:6]
            p[6] += step[6]
            if np.abs(step[:6]).max() < self.cfg.mc_tolerance:
                break
        return p[:6].copy(), iterations

    def resample(self, volume: np.ndarray, params: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Values of ``volume`` realigned to the reference, at flat voxel ``index``es."""
        idx = np.stack(np.unravel_index(index, self.geometry.dims), axis=1).astype(np.float32)
        points = (idx - self.centre) * self.vox
        return self._sample(volume.astype(np.float32, copy=False), params, points)


@dataclass
class Preprocessed:
    """One preprocessed TR.

    Attributes
    ----------
    values
        (n_mask,) float32 z-scored, detrended, despiked voxel values.
    motion
        (6,) estimated motion parameters (mm, degrees).
    fd
        Framewise displacement to the previous processed TR (mm).
    spikes
        Number of voxels whose z-score was squashed.
    settled
        False during the warm-up TRs, while running statistics are still forming.
    iterations
        Registration iterations used.
    """

    values: np.ndarray
    motion: np.ndarray
    fd: float
    spikes: int
    settled: bool
    iterations: int = 0


class Preprocessor:
    """Stateful, strictly causal preprocessing; call :meth:`step` once per TR, in order.

    Parameters
    ----------
    geometry
        Volume geometry.
    config
        Settings.
    mask
        Boolean volume of the voxels to output (default: brain mask of the reference).
    reference
        Reference volume for motion correction (default: the first volume stepped).
    """

    def __init__(
        self,
        geometry: VolumeGeometry,
        config: PreprocessConfig = PreprocessConfig(),
        mask: np.ndarray | None = None,
        reference: np.ndarray | None = None,
    ) -> None:
        self.geometry = geometry
        self.cfg = config
        self.mask = mask
        self.corrector: MotionCorrector | None = None
        self.reference: np.ndarray | None = None
        self.index: np.ndarray | None = None
        self.n = 0
        self.prev_motion = np.zeros(6)
        self.lam = float(np.exp(-geometry.tr / config.detrend_tau_s))
        if reference is not None:
            self._init_reference(reference)

    def _init_reference(self, reference: np.ndarray) -> None:
        self.reference = np.asarray(reference, dtype=np.float32).copy()
        if self.mask is None:
            self.mask = brain_mask(self.reference, self.cfg.mask_threshold)
        self.index = np.flatnonzero(self.mask.ravel())
        if self.cfg.motion_correction:
            self.corrector = MotionCorrector(self.reference, self.geometry, self.cfg)
        n = self.index.size
        # Exponentially weighted sums over lags u = t - s for the detrend fit x = a + b·u.
        self.s0 = self.s1 = self.s2 = 0.0
        self.sx = np.zeros(n)
        self.sxu = np.zeros(n)
        # Running mean/variance of the residuals (Welford).
        self.count = 0
        self.mean = np.zeros(n)
        self.m2 = np.zeros(n)

    @property
    def n_voxels(self) -> int:
        """Length of the output vectors (0 before the reference is known)."""
        return 0 if self.index is None else int(self.index.size)

    def _realign(self, volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        if self.corrector is None:
            return volume.reshape(-1)[self.index].astype(np.float64), np.zeros(6), 0
        params, iters = self.corrector.estimate(volume, self.prev_motion)
        values = self.corrector.resample(volume, params, self.index).astype(np.float64)
        return values, params, iters

    def _detrend(self, x: np.ndarray) -> np.ndarray:
        lam = self.lam
        # Age all past samples by one TR, then forecast the current one (lag 0).
        self.s2 = lam * (self.s2 + 2 * self.s1 + self.s0)
        self.sxu = lam * (self.sxu + self.sx)
        self.s1 = lam * (self.s1 + self.s0)
        self.sx = lam * self.sx
        self.s0 = lam * self.s0
        det = self.s0 * self.s2 - self.s1**2
        if self.s0 > 0 and det > 1e-9 * max(self.s0, 1.0) ** 2:
            b = (self.s0 * self.sxu - self.s1 * self.sx) / det
            forecast = (self.sx - b * self.s1) / self.s0
        elif self.s0 > 0:
            forecast = self.sx / self.s0
        else:
            forecast = x
        self.s0 += 1.0
        self.sx = self.sx + x
        return x - forecast

    def _zscore(self, r: np.ndarray) -> tuple[np.ndarray, int]:
        c = self.cfg.despike_z
        if self.count >= 2:
            sd = np.sqrt(self.m2 / (self.count - 1)) + 1e-6
            z = (r - self.mean) / sd
            squashed = c * np.tanh(z / c)
            spikes = int(np.count_nonzero(np.abs(z) > c))
            r = self.mean + squashed * sd  # the despiked residual updates the statistics
        else:
            squashed = np.zeros_like(r)
            spikes = 0
        self.count += 1
        delta = r - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (r - self.mean)
        return squashed.astype(np.float32), spikes

    def step(self, volume: np.ndarray) -> Preprocessed:
        """Preprocess the next TR's volume (shape ``geometry.dims``)."""
        if self.reference is None:
            self._init_reference(volume)
        values, params, iters = self._realign(volume)
        d = np.abs(params - self.prev_motion)
        fd = float(d[:3].sum() + 50 * np.deg2rad(d[3:]).sum()) if self.n else 0.0
        self.prev_motion = params
        z, spikes = self._zscore(self._detrend(values))
        self.n += 1
        return Preprocessed(z, params.astype(np.float32), fd, spikes, self.n > self.cfg.warmup, iters)


def preprocess_run(
    volumes: Iterable[np.ndarray],
    geometry: VolumeGeometry,
    config: PreprocessConfig = PreprocessConfig(),
    mask: np.ndarray | None = None,
    reference: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offline preprocessing of a run with the online code path.

    Returns
    -------
    values, motion, fd
        (T, n_mask) float32, (T, 6) float32 and (T,) float32.
    """
    pre = Preprocessor(geometry, config, mask, reference)
    out = [pre.step(v) for v in volumes]
    return (
        np.stack([o.values for o in out]),
        np.stack([o.motion for o in out]),
        np.array([o.fd for o in out], np.float32),
    )
