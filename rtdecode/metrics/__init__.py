"""Evaluation metrics of the paper's table (MinD-Video / NeuroClips / Mind-Animator conventions).

Clips are ``(N, F, H, W, 3)`` and frames ``(N, H, W, 3)`` RGB arrays, ``uint8`` in ``[0, 255]`` or float
in ``[0, 1]``. Each function's docstring names the published definition it follows.
"""

from rtdecode.metrics.compare import paired_bootstrap
from rtdecode.metrics.image import hue_similarity, psnr, ssim_gray, ssim_rgb
from rtdecode.metrics.motion import (
    FARNEBACK_PARAMS,
    ShuffleResult,
    epe,
    epe_shuffle_test,
    optical_flow,
    shuffle_test,
)
from rtdecode.metrics.semantic import NWayResult, clip_pcc, clip_similarity, identification, n_way_accuracy
from rtdecode.metrics.table import COLUMNS, column_info, evaluate_clips, format_table, write_table

__all__ = [
    "COLUMNS",
    "FARNEBACK_PARAMS",
    "NWayResult",
    "ShuffleResult",
    "clip_pcc",
    "clip_similarity",
    "column_info",
    "epe",
    "epe_shuffle_test",
    "evaluate_clips",
    "format_table",
    "hue_similarity",
    "identification",
    "n_way_accuracy",
    "optical_flow",
    "paired_bootstrap",
    "psnr",
    "shuffle_test",
    "ssim_gray",
    "ssim_rgb",
    "write_table",
]
