"""Interpretability: which voxels each decoder head relies on, checked against the ROI truth.

The simulator knows every voxel's region (early visual pRFs, MT motion, category-selective,
non-visual). For each head, the gradient × input saliency of its output on test windows is
summed per region and compared with that region's share of the selected voxels: a head that
reads motion should draw more than its share from MT, one that reads layout from early visual
cortex, and no head should rely on non-visual voxels.
"""

from __future__ import annotations

import numpy as np
import torch

from rtdecode.models.decoders import BrainDecoder

__all__ = ["HEAD_SCALARS", "roi_saliency"]

ROI_NAMES = ("outside", "nonvisual", "early_visual", "motion", "category")


def _scalar(out: dict[str, torch.Tensor], head: str) -> torch.Tensor:
    """One scalar per sample summarising a head's output (its norm, or the top logit)."""
    v = out[head]
    if head == "concepts":
        return v.max(dim=1).values
    return v.flatten(1).norm(dim=1)


HEAD_SCALARS = ("concepts", "blurry", "motion", "semantic", "mask", "keyframe")


def roi_saliency(
    model: BrainDecoder, x: np.ndarray, voxel_roi: np.ndarray, heads: tuple[str, ...] = HEAD_SCALARS
) -> dict[str, dict[str, float]]:
    """Share of each head's |gradient × input| saliency per ROI, and each ROI's voxel share.

    Parameters
    ----------
    model
        A trained decoder.
    x
        (n, n_lags, n_voxels) test windows.
    voxel_roi
        (n_voxels,) ROI index of every input voxel (indices into :data:`ROI_NAMES`).

    Returns
    -------
    dict
        ``{head: {roi: share}}`` plus ``{"voxels": {roi: share}}``; shares sum to 1.
    """
    model.eval()
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).requires_grad_(True)
    out = model(xt)
    present = [r for r in range(len(ROI_NAMES)) if np.any(voxel_roi == r)]
    result = {"voxels": {ROI_NAMES[r]: float(np.mean(voxel_roi == r)) for r in present}}
    for head in heads:
        if head not in out:
            continue
        grad = torch.autograd.grad(_scalar(out, head).sum(), xt, retain_graph=True)[0]
        sal = (grad * xt).abs().sum(dim=(0, 1)).detach().numpy()
        total = sal.sum() + 1e-12
        result[head] = {ROI_NAMES[r]: float(sal[voxel_roi == r].sum() / total) for r in present}
    return result
