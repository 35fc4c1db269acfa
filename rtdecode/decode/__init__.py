"""Decoders: a window of preprocessed TRs → :class:`~rtdecode.conditions.Conditions`.

The clip shown at stimulus TR ``s`` is decoded from the volumes ``s + lag`` for each of the
bundle's hemodynamic ``lags`` (default 2 and 3 TRs: 4–6 s later at TR = 2 s).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from rtdecode.bundle import Bundle, BundleError
from rtdecode.conditions import Conditions

__all__ = ["Decoder", "load_decoder"]


class Decoder(ABC):
    """Base class of the decoders a bundle can hold.

    Attributes
    ----------
    lags
        Hemodynamic lags in TRs; ``decode`` receives one preprocessed vector per lag.
    mask_index
        Flat voxel indices (on the bundle's grid) the preprocessed vectors are taken at.
    """

    lags: tuple[int, ...]
    mask_index: np.ndarray

    @abstractmethod
    def decode(self, window: np.ndarray, tr: int) -> Conditions:
        """Decode stimulus TR ``tr`` from ``window`` (len(lags), n_mask) float32."""


def load_decoder(bundle: Bundle) -> Decoder:
    """The decoder of a bundle, by its ``kind``."""
    if bundle.kind == "ridge":
        from rtdecode.decode.ridge import RidgeDecoder

        return RidgeDecoder(bundle)
    if bundle.kind == "neurons":
        from rtdecode.decode.neurons import NeuronsDecoder

        return NeuronsDecoder(bundle)
    raise BundleError(f"{bundle.path}: unknown decoder kind {bundle.kind!r}")
