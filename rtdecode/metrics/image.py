"""Pixel-level metrics: SSIM (two variants), PSNR and hue similarity.

Input convention (all functions of this module)
-----------------------------------------------
Images are RGB with the channel last: one frame ``(H, W, 3)``, a batch of frames ``(N, H, W, 3)`` or a
batch of clips ``(N, F, H, W, 3)`` (any number of leading axes). Two dtypes are accepted:

* ``uint8`` in ``[0, 255]`` — divided by 255;
* floating point in ``[0, 1]`` — used as is (not clipped; values outside ``[0, 1]`` are the caller's
  responsibility).

Both inputs of a metric must have the same shape. Every function returns one value per image, with the
leading (batch) shape of the input — ``(N,)`` for frames, ``(N, F)`` for clips, a 0-d array for one
frame — so the caller chooses how to average (the published code averages frames within a clip, then
clips; with equal clip lengths that is the plain mean).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["hue_similarity", "psnr", "ssim_gray", "ssim_rgb", "to_float", "to_uint8"]

#: ITU-R BT.709 luma weights used by ``skimage.color.rgb2gray`` (and therefore by the published SSIM).
GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])

_K1, _K2 = 0.01, 0.03
_CHUNK = 64  # images per vectorised SSIM step


def to_float(x: np.ndarray) -> np.ndarray:
    """Images as float64 in ``[0, 1]``: ``uint8`` is divided by 255, floats are returned as float64.

    Raises
    ------
    TypeError
        For integer dtypes other than ``uint8`` (their range is ambiguous).
    """
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float64, copy=False)
    if x.dtype == np.bool_:
        return x.astype(np.float64)
    raise TypeError(f"images must be uint8 in [0, 255] or float in [0, 1], got {x.dtype}")


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Images as ``uint8``: floats in ``[0, 1]`` are scaled by 255, rounded and clipped."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(to_float(x) * 255.0), 0, 255).astype(np.uint8)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"expected RGB images (..., H, W, 3), got shape {a.shape}")
    return a, b


def _ssim_map(
    x: np.ndarray,
    y: np.ndarray,
    smooth: Callable[[np.ndarray], np.ndarray],
    data_range: float,
    crop: tuple[slice, ...],
) -> np.ndarray:
    """Wang et al. (2004) SSIM map with population covariance, as scikit-image computes it."""
    ux, uy = smooth(x), smooth(y)
    vx = smooth(x * x) - ux * ux
    vy = smooth(y * y) - uy * uy
    vxy = smooth(x * y) - ux * uy
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s[crop]


def ssim_gray(a: np.ndarray, b: np.ndarray, *, sigma: float = 1.5, columnwise: bool = False) -> np.ndarray:
    """Grayscale Gaussian-weighted SSIM — the MinD-Video / NeuroClips / MindEye "SSIM".

    Definition followed: NeuroClips ``eval_metrics.ssim_metric`` (and MindEye's image SSIM): both
    images are converted with ``skimage.color.rgb2gray`` (BT.709 weights 0.2125, 0.7154, 0.0721 on
    ``[0, 1]`` floats) and compared with ``skimage.metrics.structural_similarity(gray_a, gray_b,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)``, i.e. the original
    Wang et al. (2004) SSIM: 11-tap Gaussian window (sigma 1.5, truncated at 3.5 sigma, ``reflect``
    borders), population covariances, K1 = 0.01, K2 = 0.03, and the mean of the SSIM map after
    cropping the 5-pixel border. This is a vectorised re-implementation (one ``gaussian_filter`` over the
    batch); it equals scikit-image's to float precision.

    Parameters
    ----------
    a, b : ndarray, shape (..., H, W, 3)
        Reconstruction and ground truth, ``uint8`` or float in ``[0, 1]``; ``H, W >= 11``.
    sigma : float
        Gaussian window width (1.5 in every published evaluation).
    columnwise : bool
        Reproduce the published *code* rather than the intended metric: NeuroClips / MindEye pass the
        2-D gray image with ``channel_axis=-1`` (``multichannel=True`` in older scikit-image), which makes
        scikit-image treat each image column as a separate "channel" and compute a 1-D SSIM down every
        column. ``True`` gives exactly that number (it is lower than the 2-D SSIM); the default ``False``
        is the 2-D SSIM.

    Returns
    -------
    ndarray, shape (...)
        SSIM of each image pair (1 for identical images).
    """
    a, b = _check_pair(a, b)
    lead = a.shape[:-3]
    h, w = a.shape[-3:-1]
    a, b = a.reshape(-1, h, w, 3), b.reshape(-1, h, w, 3)
    truncate = 3.5
    pad = int(truncate * sigma + 0.5)
    if h < 2 * pad + 1 or (not columnwise and w < 2 * pad + 1):
        raise ValueError(f"images of {h}x{w} are smaller than the {2 * pad + 1}-pixel SSIM window")
    if columnwise:

        def smooth(z):
            return ndimage.gaussian_filter1d(z, sigma, axis=1, mode="reflect", truncate=truncate)

        crop = (slice(None), slice(pad, h - pad), slice(None))
    else:

        def smooth(z):
            return ndimage.gaussian_filter(z, sigma, mode="reflect", truncate=truncate, axes=(1, 2))

        crop = (slice(None), slice(pad, h - pad), slice(pad, w - pad))
    out = np.empty(len(a))
    for i in range(0, len(a), _CHUNK):  # chunks bound the memory of the ~10 temporaries
        x = to_float(a[i : i + _CHUNK]) @ GRAY_WEIGHTS
        y = to_float(b[i : i + _CHUNK]) @ GRAY_WEIGHTS
        out[i : i + _CHUNK] = _ssim_map(x, y, smooth, 1.0, crop).mean(axis=(1, 2))
    return out.reshape(lead)


def ssim_rgb(a: np.ndarray, b: np.ndarray, *, win_size: int = 7) -> np.ndarray:
    """RGB SSIM with a uniform 7×7 window — the MinD-Video / Mind-Animator "SSIM" on colour frames.

    Definition followed: MinD-Video ``eval_metrics.ssim_metric_org`` and Mind-Animator
    ``Evaluation_Metrics/SSIM.py``: ``skimage.metrics.structural_similarity(a, b, data_range=255,
    channel_axis=-1)`` on ``uint8`` frames, i.e. scikit-image's defaults — a 7×7 uniform window
    (``scipy.ndimage.uniform_filter``, ``reflect`` borders), *sample* covariances (normalised by
    N - 1 = 48), K1 = 0.01, K2 = 0.03, the 3-pixel border cropped, SSIM computed per channel and the
    three channel means averaged. (``data_range=255`` on uint8 equals ``data_range=1`` on ``[0, 1]``
    floats: SSIM is invariant to a common scaling of images and range.) Vectorised over the batch.

    Parameters
    ----------
    a, b : ndarray, shape (..., H, W, 3)
        Reconstruction and ground truth, ``uint8`` or float in ``[0, 1]``; ``H, W >= win_size``.
    win_size : int
        Side of the uniform window (odd; 7 in the published code).

    Returns
    -------
    ndarray, shape (...)
        SSIM of each image pair.
    """
    a, b = _check_pair(a, b)
    if win_size % 2 != 1:
        raise ValueError("win_size must be odd")
    lead = a.shape[:-3]
    h, w = a.shape[-3:-1]
    if min(h, w) < win_size:
        raise ValueError(f"images of {h}x{w} are smaller than the {win_size}-pixel SSIM window")
    a, b = a.reshape(-1, h, w, 3), b.reshape(-1, h, w, 3)
    cov_norm = win_size**2 / (win_size**2 - 1)  # sample covariance: scikit-image's default

    def smooth(z):
        return ndimage.uniform_filter(z, size=(1, win_size, win_size, 1), mode="reflect")

    pad = (win_size - 1) // 2
    out = np.empty(len(a))
    for i in range(0, len(a), _CHUNK):
        x, y = to_float(a[i : i + _CHUNK]), to_float(b[i : i + _CHUNK])
        ux, uy = smooth(x), smooth(y)
        vx = cov_norm * (smooth(x * x) - ux * ux)
        vy = cov_norm * (smooth(y * y) - uy * uy)
        vxy = cov_norm * (smooth(x * y) - ux * uy)
        c1, c2 = _K1**2, _K2**2
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        s = s[:, pad : h - pad, pad : w - pad, :]
        # mean per channel, then over channels (equal-sized channels: same as the overall mean)
        out[i : i + _CHUNK] = s.mean(axis=(1, 2)).mean(axis=-1)
    return out.reshape(lead)


def psnr(a: np.ndarray, b: np.ndarray, *, max_db: float | None = None) -> np.ndarray:
    """Peak signal-to-noise ratio per image, data range 1 on ``[0, 1]`` (255 on ``uint8``).

    Definition followed: MinD-Video / NeuroClips ``psnr_metric`` =
    ``skimage.metrics.peak_signal_noise_ratio(a, b, data_range=255)`` per frame on ``uint8`` RGB frames:
    ``10 log10(1 / MSE)`` with the MSE over all pixels and channels of the frame.

    Parameters
    ----------
    a, b : ndarray, shape (..., H, W, 3)
        Reconstruction and ground truth, ``uint8`` or float in ``[0, 1]``.
    max_db : float or None
        ``None`` (default, as scikit-image): identical images give ``inf``. A number caps the value —
        Mind-Animator's ``PSNR.py`` returns 100 dB when MSE < 1e-10, so ``max_db=100`` reproduces it and
        keeps averages finite.

    Returns
    -------
    ndarray, shape (...)
        PSNR in dB of each image pair.
    """
    a, b = _check_pair(a, b)
    lead = a.shape[:-3]
    a, b = a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:])
    mse = np.empty(len(a))
    for i in range(0, len(a), _CHUNK):
        mse[i : i + _CHUNK] = np.mean(
            (to_float(a[i : i + _CHUNK]) - to_float(b[i : i + _CHUNK])) ** 2, axis=(1, 2, 3)
        )
    mse = mse.reshape(lead)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(1.0 / mse)
    if max_db is not None:
        out = np.where(mse < 1e-10 / 255.0**2, max_db, np.minimum(out, max_db))
    return out


def hue_similarity(a: np.ndarray, b: np.ndarray, *, swap_rb: bool = False) -> np.ndarray:
    """Hue similarity per image — Mind-Animator's "Hue-pcc".

    Definition followed: Mind-Animator ``Evaluation_Metrics/hue_pcc.py`` (``calculate_hue_similarity``):
    both ``uint8`` frames are converted to HSV with OpenCV (hue in ``[0, 180)``), the hue maps are
    divided by 360 and compared by their *cosine similarity* ``sum(h1 h2) / (|h1| |h2|)`` over all
    pixels (despite the name, not a Pearson correlation; the scale factor cancels). Float inputs are
    first converted to ``uint8`` (``rint(255 x)``). Edge cases the published code leaves as NaN: if
    both hue maps are all zero (e.g. gray or pure red frames) the similarity is 1, if only one is, 0.

    Parameters
    ----------
    a, b : ndarray, shape (..., H, W, 3)
        Reconstruction and ground truth (RGB), ``uint8`` or float in ``[0, 1]``.
    swap_rb : bool
        The published code feeds RGB frames (read from GIFs) to ``cv2.COLOR_BGR2HSV``, i.e. it measures
        the hue of the colour-swapped image. ``True`` reproduces that; the default ``False`` converts
        RGB correctly (``COLOR_RGB2HSV``).

    Returns
    -------
    ndarray, shape (...)
        Similarity in ``[0, 1]`` of each image pair (1 for identical images).
    """
    a, b = _check_pair(a, b)
    lead = a.shape[:-3]
    h, w = a.shape[-3:-1]
    code = cv2.COLOR_BGR2HSV if swap_rb else cv2.COLOR_RGB2HSV

    def hue(z: np.ndarray) -> np.ndarray:
        # colour conversion is per pixel: convert the whole batch as one tall image
        flat = np.ascontiguousarray(to_uint8(z).reshape(-1, w, 3))
        return cv2.cvtColor(flat, code)[..., 0].reshape(-1, h * w).astype(np.float64) / 360.0

    a, b = a.reshape(-1, h, w, 3), b.reshape(-1, h, w, 3)
    na, nb, dot = np.empty(len(a)), np.empty(len(a)), np.empty(len(a))
    for i in range(0, len(a), _CHUNK):
        ha, hb = hue(a[i : i + _CHUNK]), hue(b[i : i + _CHUNK])
        na[i : i + _CHUNK], nb[i : i + _CHUNK] = np.linalg.norm(ha, axis=1), np.linalg.norm(hb, axis=1)
        dot[i : i + _CHUNK] = np.einsum("ij,ij->i", ha, hb)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = dot / (na * nb)
    sim = np.where((na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, sim))
    return sim.reshape(lead)
