"""Paired comparison of two methods scored on the same test clips: is a difference real?

The table's scores are means over a few hundred test clips, and neighbouring TRs of a movie
are correlated, so two methods a few thousandths apart may differ by chance. The bootstrap
here resamples groups of clips (contiguous blocks of TRs) rather than single clips, so the
interval reflects that correlation.
"""

from __future__ import annotations

import numpy as np

__all__ = ["paired_bootstrap"]


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 4000,
    level: float = 0.95,
    rng: np.random.Generator | int | None = 0,
) -> dict[str, float]:
    """Mean difference ``a − b`` of paired per-clip scores with a block-bootstrap interval.

    Parameters
    ----------
    a, b : ndarray, shape (N,)
        Scores of two methods on the same N clips (e.g. each clip's 2-way accuracy).
    groups : ndarray of int, shape (N,), optional
        Group of each clip (e.g. its block of contiguous TRs); groups are resampled with
        replacement. Default: every clip its own group.
    n_boot : int
        Bootstrap resamples.
    level : float
        Coverage of the interval.
    rng : numpy Generator, int or None
        Random source (default seed 0: deterministic).

    Returns
    -------
    dict
        ``diff`` (mean of ``a − b``), ``lo`` and ``hi`` (percentile interval), ``p`` (two-sided
        bootstrap p-value of "no difference": twice the smaller tail of the resampled means
        beyond 0, at most 1) and ``groups`` (number of groups).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"expected two equal, non-empty 1-d score arrays, got {a.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    groups = np.arange(len(a)) if groups is None else np.asarray(groups)
    if groups.shape != a.shape:
        raise ValueError(f"groups: shape {groups.shape}, expected {a.shape}")
    _, g = np.unique(groups, return_inverse=True)
    n_groups = int(g.max()) + 1
    sums = np.bincount(g, weights=a - b, minlength=n_groups)
    counts = np.bincount(g, minlength=n_groups).astype(np.float64)
    pick = np.random.default_rng(rng).integers(0, n_groups, (n_boot, n_groups))
    boot = sums[pick].sum(1) / counts[pick].sum(1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail])
    p = min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0)))
    diff = float(np.mean(a - b))
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "p": float(p), "groups": n_groups}
