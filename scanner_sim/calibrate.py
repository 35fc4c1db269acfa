"""Calibration of the simulated scanner against published fMRI statistics.

For each subject a short movie is shown twice and four statistics are measured on the
voxel series a perfect motion correction would recover (the simulator knows the motion, so
no estimation error enters): median temporal SNR in the brain, split-half reliability of
visual voxels, lag-1 autocorrelation of the noise, and mean framewise displacement of the
ground-truth motion. Each is printed beside its target range and the source of that range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtdecode.geometry import framewise_displacement
from scanner_sim import stimuli
from scanner_sim.brain import ROI, BrainConfig, make_subject, stimulus_features
from scanner_sim.scanner import ScannerConfig, simulate_motion, voxel_series

__all__ = ["TARGETS", "CalibrationResult", "calibrate_subject", "format_table"]

# (low, high, source): ranges as reported for 3 T BOLD EPI at ~3 mm and TR ~2 s.
TARGETS: dict[str, tuple[float, float, str]] = {
    "tsnr": (
        40.0,
        120.0,
        "Triantafyllou et al. 2005, NeuroImage 26:243; Murphy et al. 2007, NeuroImage 34:565",
    ),
    "reliability": (
        0.15,
        0.60,
        "Hasson et al. 2004, Science 303:1634; Wen et al. 2018, Cereb Cortex 28:4136 (cc2017)",
    ),
    "ar1": (
        0.10,
        0.50,
        "Purdon & Weisskoff 1998, Hum Brain Mapp 6:239; Woolrich et al. 2001, NeuroImage 14:1370",
    ),
    "fd": (0.05, 0.30, "Power et al. 2012, NeuroImage 59:2142; Power et al. 2014, NeuroImage 84:320"),
}
LABELS = {
    "tsnr": "median tSNR in brain",
    "reliability": "split-half r, visual voxels (median)",
    "ar1": "noise lag-1 autocorrelation (median)",
    "fd": "mean framewise displacement (mm)",
}


@dataclass
class CalibrationResult:
    """The four statistics of one subject."""

    subject: str
    tsnr: float
    reliability: float
    ar1: float
    fd: float

    def within(self) -> dict[str, bool]:
        """Whether each statistic lies in its target range."""
        return {k: TARGETS[k][0] <= getattr(self, k) <= TARGETS[k][1] for k in TARGETS}


def _detrend(x: np.ndarray, order: int = 2) -> np.ndarray:
    """Remove a polynomial trend along axis 0 (as every tSNR/reliability analysis does)."""
    t = np.linspace(-1, 1, x.shape[0])
    basis = np.stack([t**k for k in range(order + 1)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    return x - basis @ coef


def _series(subject, bold, seed_seq, cfg: ScannerConfig) -> np.ndarray:
    """(n_tr, n_head) motion-free voxel series with thermal noise, as after perfect correction."""
    rng_noise, rng_thermal = (np.random.default_rng(s) for s in seed_seq.spawn(2))
    rows = [values for _, values in voxel_series(subject, bold, rng_noise, cfg)]
    x = np.stack(rows)
    return x + rng_thermal.standard_normal(x.shape, dtype=np.float32) * cfg.noise.thermal


def _rowwise_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = (a - a.mean(0)) / (a.std(0) + 1e-12)
    b = (b - b.mean(0)) / (b.std(0) + 1e-12)
    return (a * b).mean(0)


def calibrate_subject(
    index: int,
    seed: int = 0,
    n_tr: int = 240,
    brain: BrainConfig = BrainConfig(),
    scanner: ScannerConfig = ScannerConfig(),
    stim: stimuli.StimulusConfig = stimuli.StimulusConfig(),
) -> CalibrationResult:
    """Measure the calibration statistics of subject ``index``.

    Parameters
    ----------
    index, seed
        Which subject of which world.
    n_tr
        Length of the calibration movie in TRs (shown twice).
    """
    subject = make_subject(index, seed, brain, stim.fps, stim.size)
    frames_per_tr = round(scanner.tr * stim.fps)
    movie = stimuli.generate_movie(n_tr * frames_per_tr, seed=seed * 7919 + 17, config=stim)
    bold = subject.bold(stimulus_features(movie), stim.fps, scanner.tr, n_tr)
    base = np.random.SeedSequence([seed, 5000 + index])
    rep1, rep2, motion_seed = base.spawn(3)
    head = np.flatnonzero(subject.baseline.ravel() > 1.0)
    x1 = _series(subject, bold, rep1, scanner)
    x2 = _series(subject, bold, rep2, scanner)
    in_brain = subject.brain_mask.ravel()[head]
    roi = subject.roi.ravel()[head]
    skip = 5  # let the AR processes forget their start, as real analyses drop dummy scans
    d1 = _detrend(x1[skip:])
    d2 = _detrend(x2[skip:])
    tsnr = x1[skip:, in_brain].mean(0) / (d1[:, in_brain].std(0) + 1e-12)
    visual = roi >= ROI["early_visual"]
    rel = _rowwise_corr(d1[:, visual], d2[:, visual])
    noise = d1[:, roi == ROI["nonvisual"]]
    ar1 = _rowwise_corr(noise[1:], noise[:-1])
    motion = simulate_motion(np.random.default_rng(motion_seed), n_tr, scanner.tr, scanner.motion)
    fd = framewise_displacement(motion)[1:]
    return CalibrationResult(
        subject.name, float(np.median(tsnr)), float(np.median(rel)), float(np.median(ar1)), float(fd.mean())
    )


def format_table(results: list[CalibrationResult]) -> str:
    """A plain-text table: each statistic per subject beside its target and source."""
    lines = []
    for key, label in LABELS.items():
        lo, hi, source = TARGETS[key]
        lines.append(f"{label}  [target {lo:g}–{hi:g}; {source}]")
        for r in results:
            v = getattr(r, key)
            ok = "ok" if r.within()[key] else "OUT OF RANGE"
            lines.append(f"    {r.subject}: {v:8.3f}  {ok}")
    return "\n".join(lines)
