"""Ridge regression from fMRI to blurry frames — the classic linear reconstruction.

Low-resolution frames (a few per TR) are predicted in a PCA basis of the training frames,
from the selected voxels at each hemodynamic lag. Trained by :mod:`rtdecode.train.ridge`.
"""

from __future__ import annotations

import numpy as np

from rtdecode.bundle import Bundle
from rtdecode.conditions import Conditions
from rtdecode.decode import Decoder

__all__ = ["RidgeDecoder"]


class RidgeDecoder(Decoder):
    """Linear decoder held in a bundle of kind ``ridge``.

    Tensors: ``mask_index`` (flat voxel indices), ``select`` (columns of the preprocessed
    vector used), ``weights`` (n_lags·n_select, k), ``bias`` (k,), ``basis`` (k, D),
    ``mean`` (D,). The manifest's ``blurry_shape`` is (F, h, w, 3).
    """

    def __init__(self, bundle: Bundle) -> None:
        self.lags = bundle.lags
        self.mask_index = bundle.tensor("mask_index").astype(np.int64)
        self.select = bundle.tensor("select").astype(np.int64)
        self.weights = bundle.tensor("weights").astype(np.float32)
        self.bias = bundle.tensor("bias").astype(np.float32)
        self.basis = bundle.tensor("basis").astype(np.float32)
        self.mean = bundle.tensor("mean").astype(np.float32)
        self.shape = tuple(bundle.manifest["blurry_shape"])

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N, n_features) → (N, F, h, w, 3) frames in [0, 1]."""
        coef = features @ self.weights + self.bias
        frames = coef @ self.basis + self.mean
        return np.clip(frames, 0, 1).reshape(-1, *self.shape)

    def features(self, window: np.ndarray) -> np.ndarray:
        """Flatten the selected voxels of every lag into one feature vector."""
        return window[:, self.select].reshape(1, -1)

    def decode(self, window: np.ndarray, tr: int) -> Conditions:
        """Blurry frames of stimulus TR ``tr``."""
        blurry = self.predict(self.features(window))[0]
        return Conditions(tr=tr, source_tr=tr + max(self.lags), blurry=blurry.astype(np.float32))
