"""Nishimoto-style retrieval baseline (Nishimoto et al., 2011).

Ridge regression predicts stimulus features from the fMRI window; the reconstruction of a
test TR is the average of the ``k`` library clips whose features best match the prediction.
The library holds only training clips (the test clips are never in it). Features: the
world-CLIP embedding of the clip's middle frame (semantics) and a PCA of its coarse frames
(layout and colour), each standardised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtdecode.train.ridge import fit_ridge

__all__ = ["RetrievalBaseline", "clip_features"]


def clip_features(
    image_emb: np.ndarray, coarse: np.ndarray, n_pca: int = 64, basis: tuple | None = None
) -> tuple[np.ndarray, tuple]:
    """Standardised [embedding, coarse-frame PCA] features; returns the PCA/scaling used."""
    flat = coarse.reshape(len(coarse), -1).astype(np.float32)
    if basis is None:
        mean = flat.mean(0)
        _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
        pcs = (flat - mean) @ vt[:n_pca].T
        feats = np.concatenate([image_emb, pcs], axis=1)
        basis = (mean, vt[:n_pca], feats.mean(0), feats.std(0) + 1e-6)
    mean, vt, fm, fs = basis
    feats = np.concatenate([image_emb, (flat - mean) @ vt.T], axis=1)
    return (feats - fm) / fs, basis


@dataclass
class RetrievalBaseline:
    """A fitted retrieval decoder.

    Attributes
    ----------
    weights, bias
        Ridge from the flattened fMRI window to the library's feature space.
    library
        (n_library, n_features) standardised features of the training clips.
    library_index
        Global TR index of each library clip (to fetch its frames).
    k
        Clips averaged per reconstruction.
    """

    weights: np.ndarray
    bias: np.ndarray
    library: np.ndarray
    library_index: np.ndarray
    k: int = 10

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        features: np.ndarray,
        library: np.ndarray,
        library_index: np.ndarray,
        alphas=(1e3, 1e4, 3e4, 1e5),
        x_val=None,
        f_val=None,
        k: int = 10,
    ) -> RetrievalBaseline:
        """Fit the feature regression (penalty chosen on validation data if given)."""
        w, b, _, _ = fit_ridge(x, features, tuple(alphas), x_val, f_val)
        return cls(w, b, library, library_index, k)

    def match(self, x: np.ndarray) -> np.ndarray:
        """(n, k) global TR indices of the best-matching library clips for each input."""
        pred = x @ self.weights + self.bias
        pred /= np.linalg.norm(pred, axis=1, keepdims=True) + 1e-9
        lib = self.library / (np.linalg.norm(self.library, axis=1, keepdims=True) + 1e-9)
        order = np.argsort(-(pred @ lib.T), axis=1)[:, : self.k]
        return self.library_index[order]

    def reconstruct(self, x: np.ndarray, clip_frames) -> np.ndarray:
        """(n, F, H, W, 3) float reconstructions: the mean of the matched clips' frames.

        ``clip_frames(index) -> (F, H, W, 3) uint8`` fetches a library clip.
        """
        return np.stack([np.mean([clip_frames(i) for i in row], axis=0) / 255.0 for row in self.match(x)])
