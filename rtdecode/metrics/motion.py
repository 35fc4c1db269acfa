"""Motion metrics: optical-flow end-point error and the shuffle (permutation) test of decoded motion."""

from __future__ import annotations

from typing import Literal, NamedTuple

import cv2
import numpy as np

from rtdecode.metrics.image import to_uint8

__all__ = ["FARNEBACK_PARAMS", "ShuffleResult", "epe", "epe_shuffle_test", "optical_flow", "shuffle_test"]

#: ``cv2.calcOpticalFlowFarneback`` parameters of Mind-Animator's ``Evaluation_Metrics/EPE.py``.
FARNEBACK_PARAMS: dict[str, float | int] = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}


def _gray_clips(clips: np.ndarray) -> np.ndarray:
    """(N, F, H, W, 3) RGB → (N, F, H, W) uint8 gray (OpenCV weights), one ``cvtColor`` call."""
    c = np.asarray(clips)
    n, f, h, w, _ = c.shape
    flat = np.ascontiguousarray(to_uint8(c).reshape(-1, w, 3))  # per-pixel conversion: one tall image
    return cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY).reshape(n, f, h, w)


def _check_clips(c: np.ndarray, min_frames: int = 2) -> np.ndarray:
    c = np.asarray(c)
    if c.ndim != 5 or c.shape[-1] != 3 or c.shape[1] < min_frames:
        raise ValueError(f"expected clips (N, F >= {min_frames}, H, W, 3), got shape {c.shape}")
    return c


def _flows(gray: np.ndarray) -> np.ndarray:
    """Farneback flows of consecutive frames of one gray clip (F, H, W) → (F - 1, H, W, 2)."""
    p = FARNEBACK_PARAMS
    return np.stack(
        [
            cv2.calcOpticalFlowFarneback(
                gray[t],
                gray[t + 1],
                None,
                p["pyr_scale"],
                p["levels"],
                p["winsize"],
                p["iterations"],
                p["poly_n"],
                p["poly_sigma"],
                p["flags"],
            )
            for t in range(len(gray) - 1)
        ]
    )


def optical_flow(clips: np.ndarray) -> np.ndarray:
    """Farneback optical flow between consecutive frames of each clip.

    Parameters
    ----------
    clips : ndarray, shape (N, F, H, W, 3)
        RGB clips, ``uint8`` or float in ``[0, 1]`` (converted to ``uint8`` gray with OpenCV's
        ``COLOR_RGB2GRAY``), ``F >= 2``.

    Returns
    -------
    ndarray, shape (N, F - 1, H, W, 2), float32
        Flow ``(dx, dy)`` in pixels from frame ``t`` to ``t + 1``, :data:`FARNEBACK_PARAMS`.
    """
    c = _check_clips(clips)
    return np.stack([_flows(_gray_clips(c[i : i + 1])[0]) for i in range(len(c))])


def epe(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """End-point error between the optical flows of two sets of clips.

    Definition followed: Mind-Animator ``Evaluation_Metrics/EPE.py`` (``calculate_epe_ae``): the
    Farneback flow (OpenCV ``calcOpticalFlowFarneback`` on gray ``uint8`` frames, ``pyr_scale=0.5,
    levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0``) of every pair of
    consecutive frames of the reconstruction and of the ground truth; EPE is the L2 norm of the
    difference of the two flow vectors, averaged over pixels and frame pairs of a clip. (The published
    code converts with ``COLOR_BGR2GRAY``; here ``COLOR_RGB2GRAY``, as inputs are RGB — the gray
    weights then apply to the right channels.) Lower is better; 0 for identical clips.

    Parameters
    ----------
    a, b : ndarray, shape (N, F, H, W, 3)
        Reconstruction and ground-truth clips, ``uint8`` or float in ``[0, 1]``, ``F >= 2``.

    Returns
    -------
    ndarray, shape (N,)
        Mean EPE (pixels) of each clip; the table reports the mean over clips.
    """
    a, b = _check_clips(a), _check_clips(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    out = np.empty(len(a))
    for i in range(len(a)):  # clip by clip: memory independent of N
        fa = _flows(_gray_clips(a[i : i + 1])[0])
        fb = _flows(_gray_clips(b[i : i + 1])[0])
        out[i] = _epe_from_flows(fa[None], fb[None])[0]
    return out


def _epe_from_flows(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    return np.linalg.norm(fa.astype(np.float64) - fb, axis=-1).mean(axis=(1, 2, 3))


class ShuffleResult(NamedTuple):
    """Result of a permutation test (unpacks as ``statistic, null_mean, p_value``)."""

    statistic: float
    null_mean: float
    p_value: float


def _row_z(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm (rows with no variance become 0)."""
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def shuffle_test(
    pred: np.ndarray,
    true: np.ndarray,
    n_perm: int = 1000,
    rng: np.random.Generator | int | None = 0,
    *,
    over: Literal["samples", "time"] = "samples",
) -> ShuffleResult:
    """Permutation ("shuffle") test that decoded motion carries information about the true motion.

    Statistic: the mean over samples of the Pearson correlation between a sample's decoded and true
    motion (its motion dimensions, and time steps if any, flattened); a sample whose motion has no
    variance contributes 0. Null distribution: the same statistic after shuffling, ``n_perm`` times —

    * ``over="samples"`` (default): the decoded motions are permuted across samples (each prediction
      paired with another sample's truth), which tests that the decoder is sample-specific;
    * ``over="time"``: for ``(N, T, D)`` motion, the time steps of the decoded motion are permuted (one
      permutation per draw, shared by all samples) — the frame-order shuffle of Mind-Animator
      (``Explainable_analysis/shuffle_test/shuffle_for_EPE.py``, which shuffles the frame order of the
      reconstructions and recomputes EPE; see :func:`epe_shuffle_test` for that test on clips).

    p-value ``= (1 + #{null >= statistic}) / (1 + n_perm)`` (one-sided, the permutation estimate that
    is never 0). The null absorbs structure shared by all samples (e.g. motion dimensions with
    different typical values make every per-sample correlation positive), so the statistic is to be
    read against ``null_mean``, not against 0.

    Parameters
    ----------
    pred, true : ndarray, shape (N, D) or (N, T, D)
        Decoded and true motion (e.g. per-TR motion parameters), ``N >= 2``.
    n_perm : int
        Number of permutations.
    rng : numpy Generator, int or None
        Random source (default seed 0: deterministic).
    over : {"samples", "time"}
        What is shuffled (see above).

    Returns
    -------
    ShuffleResult
        ``(statistic, null_mean, p_value)``.
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs {t.shape}")
    if p.ndim < 2 or p.shape[0] < 2:
        raise ValueError(f"expected (N, D) or (N, T, D) with N >= 2, got shape {p.shape}")
    if n_perm < 1:
        raise ValueError("n_perm must be >= 1")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n = p.shape[0]
    zt = _row_z(t.reshape(n, -1))
    stat = float(np.einsum("ij,ij->i", _row_z(p.reshape(n, -1)), zt).mean())
    if over == "samples":
        zp = _row_z(p.reshape(n, -1))
        perms = gen.permuted(np.tile(np.arange(n), (n_perm, 1)), axis=1)  # (n_perm, N)
        # null[k] = mean_i r(pred[perm[k, i]], true[i]), in chunks of permutations
        null = np.empty(n_perm)
        step = max(1, 2**22 // zp.size)
        for k in range(0, n_perm, step):
            null[k : k + step] = np.einsum("knd,nd->kn", zp[perms[k : k + step]], zt).mean(axis=1)
    elif over == "time":
        if p.ndim != 3 or p.shape[1] < 2:
            raise ValueError(f"over='time' needs (N, T >= 2, D) motion, got shape {p.shape}")
        null = np.empty(n_perm)
        for k in range(n_perm):
            order = gen.permutation(p.shape[1])
            null[k] = np.einsum("ij,ij->i", _row_z(p[:, order].reshape(n, -1)), zt).mean()
    else:
        raise ValueError(f"over must be 'samples' or 'time', got {over!r}")
    p_value = (1.0 + np.sum(null >= stat - 1e-12)) / (1.0 + n_perm)
    return ShuffleResult(stat, float(null.mean()), float(p_value))


def epe_shuffle_test(
    pred: np.ndarray, true: np.ndarray, n_perm: int = 100, rng: np.random.Generator | int | None = 0
) -> ShuffleResult:
    """Mind-Animator's shuffle test on clips: EPE of the reconstructions vs. frame-shuffled ones.

    Definition followed: Mind-Animator ``Explainable_analysis/shuffle_test/shuffle_for_EPE.py``: the
    frame order of every reconstruction is permuted (one permutation of the F frames per draw, shared
    by all clips) and the mean EPE against the ground truth recomputed, ``n_perm`` times (100 in the
    paper). If the reconstructed motion comes from the brain, the real order has a lower EPE than
    shuffled orders. p-value ``= (1 + #{null EPE <= EPE}) / (1 + n_perm)``.

    Parameters
    ----------
    pred, true : ndarray, shape (N, F, H, W, 3)
        Reconstruction and ground-truth clips, ``uint8`` or float in ``[0, 1]``, ``F >= 3``.
    n_perm : int
        Number of frame permutations (each costs one optical-flow pass over the reconstructions).
    rng : numpy Generator, int or None
        Random source (default seed 0).

    Returns
    -------
    ShuffleResult
        ``(mean EPE, mean EPE under shuffling, p_value)``.
    """
    pred, true = _check_clips(pred, 3), _check_clips(true, 3)
    if pred.shape != true.shape:
        raise ValueError(f"shape mismatch: {pred.shape} vs {true.shape}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    flow_true = optical_flow(true)
    stat = float(_epe_from_flows(optical_flow(pred), flow_true).mean())
    null = np.empty(n_perm)
    for k in range(n_perm):
        order = gen.permutation(pred.shape[1])
        null[k] = _epe_from_flows(optical_flow(pred[:, order]), flow_true).mean()
    p_value = (1.0 + np.sum(null <= stat + 1e-12)) / (1.0 + n_perm)
    return ShuffleResult(stat, float(null.mean()), float(p_value))
