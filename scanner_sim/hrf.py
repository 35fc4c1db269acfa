"""The canonical double-gamma haemodynamic response function.

SPM's canonical HRF (Friston et al., 1998; Glover, 1999): a gamma density with shape 6
(peaking at 5 s) minus 1/6 of a gamma density with shape 16 (the undershoot, at 15 s).
``delay`` shifts both peaks, which gives voxels slightly different lags as in real cortex
(Handwerker et al., 2004, report peak times varying by about ±1 s across voxels).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["convolve_hrf", "double_gamma", "hrf_peak_time"]


def double_gamma(t: np.ndarray, delay: float = 0.0, undershoot_ratio: float = 1 / 6) -> np.ndarray:
    """Canonical double-gamma HRF sampled at times ``t`` (seconds), peak normalised to 1.

    Parameters
    ----------
    t
        Sample times in seconds (values < 0 give 0).
    delay
        Shift of the response and undershoot peaks in seconds.
    undershoot_ratio
        Amplitude of the undershoot relative to the response.
    """
    t = np.asarray(t, dtype=float)
    h = stats.gamma.pdf(t, 6.0 + delay) - undershoot_ratio * stats.gamma.pdf(t, 16.0 + delay)
    peak = np.max(np.abs(double_gamma_grid(delay, undershoot_ratio)))
    return h / peak


def double_gamma_grid(
    delay: float = 0.0, undershoot_ratio: float = 1 / 6, dt: float = 0.01, length: float = 32.0
) -> np.ndarray:
    """The (unnormalised) HRF on a fine grid, used to normalise the peak."""
    t = np.arange(0, length, dt)
    return stats.gamma.pdf(t, 6.0 + delay) - undershoot_ratio * stats.gamma.pdf(t, 16.0 + delay)


def hrf_peak_time(delay: float = 0.0, dt: float = 0.01) -> float:
    """Time of the HRF's maximum in seconds."""
    return float(np.argmax(double_gamma_grid(delay, dt=dt)) * dt)


def convolve_hrf(
    signal: np.ndarray,
    dt: float,
    delays: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    length: float = 32.0,
) -> np.ndarray:
    """Convolve time series (time on axis 0) with the HRF, causally.

    Parameters
    ----------
    signal
        (T, N) neural time series sampled every ``dt`` seconds.
    dt
        Sampling interval in seconds.
    delays
        HRF delays, one per group (default: a single canonical HRF).
    groups
        (N,) index into ``delays`` for each column.

    Returns
    -------
    numpy.ndarray
        (T, N) float32 BOLD response; sample ``i`` depends only on samples ``<= i``.
    """
    x = np.asarray(signal, dtype=np.float32)
    n_t = x.shape[0]
    t = np.arange(0, length, dt)
    delays = np.zeros(1) if delays is None else np.asarray(delays, dtype=float)
    groups = np.zeros(x.shape[1], dtype=int) if groups is None else np.asarray(groups)
    n_fft = int(2 ** np.ceil(np.log2(n_t + len(t))))
    fx = np.fft.rfft(x, n_fft, axis=0)
    out = np.empty_like(x)
    for g, delay in enumerate(delays):
        cols = np.flatnonzero(groups == g)
        if cols.size == 0:
            continue
        kernel = double_gamma(t, delay) * dt
        fk = np.fft.rfft(kernel, n_fft)
        out[:, cols] = np.fft.irfft(fx[:, cols] * fk[:, None], n_fft, axis=0)[:n_t]
    return out
