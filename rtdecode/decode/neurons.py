"""The NEURONS/NeuroClips decoder of a bundle of kind ``neurons`` (all sub-tasks at once)."""

from __future__ import annotations

import numpy as np
import torch

from rtdecode.bundle import Bundle
from rtdecode.conditions import Conditions
from rtdecode.decode import Decoder
from rtdecode.models import load_module
from rtdecode.models.decoders import BrainDecoder, pixel_frames
from rtdecode.models.text import WordTokenizer

__all__ = ["NeuronsDecoder"]


class NeuronsDecoder(Decoder):
    """Runs a :class:`~rtdecode.models.decoders.BrainDecoder` held in a bundle.

    Tensors: ``mask_index``, ``select`` and the network under the prefix ``decoder.``. The
    manifest's ``decoder`` entry holds the network config, the caption vocabulary and the
    motion normalisation.
    """

    def __init__(self, bundle: Bundle) -> None:
        spec = bundle.manifest["decoder"]
        self.lags = bundle.lags
        self.mask_index = bundle.tensor("mask_index").astype(np.int64)
        self.select = bundle.tensor("select").astype(np.int64)
        self.model = BrainDecoder.from_config(spec["config"])
        load_module(self.model, bundle.tensors, "decoder.")
        self.model.eval()
        self.tokenizer = WordTokenizer.from_list(spec["words"])
        self.motion_mean = np.asarray(spec["motion_mean"], np.float32)
        self.motion_std = np.asarray(spec["motion_std"], np.float32)

    @torch.no_grad()
    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray | list[str]]:
        """Every head's output for a batch of windows (n, n_lags, n_select), as numpy.

        Concepts and masks are probabilities, motion is in stimulus units, captions are text.
        """
        out = self.model(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
        res: dict[str, np.ndarray | list[str]] = {}
        for name in ("semantic", "keyframe", "blurry"):
            if name in out:
                res[name] = out[name].numpy()
        if "concepts" in out:
            res["concepts"] = torch.sigmoid(out["concepts"]).numpy()
        if "mask" in out:
            res["mask"] = torch.sigmoid(out["mask"]).numpy()
        if "motion" in out:
            res["motion"] = out["motion"].numpy() * self.motion_std + self.motion_mean
        if "pixels" in out:
            res["pixels"] = pixel_frames(out["pixels"]).numpy()
        if self.model.caption is not None:
            ids = self.model.caption.generate(out["hidden"], WordTokenizer.BOS, WordTokenizer.EOS)
            res["caption"] = [self.tokenizer.decode(row) for row in ids.tolist()]
        return res

    def decode(self, window: np.ndarray, tr: int) -> Conditions:
        """Conditions of stimulus TR ``tr`` from a (n_lags, n_mask) window."""
        res = self.outputs(window[:, self.select][None])
        first = {k: v[0] for k, v in res.items()}
        return Conditions(
            tr=tr,
            source_tr=tr + max(self.lags),
            blurry=first.get("blurry"),
            semantic=first.get("semantic"),
            concepts=first.get("concepts"),
            caption=first.get("caption", ""),
            mask=first.get("mask"),
            motion=first.get("motion"),
            keyframe=first.get("keyframe"),
            pixels=first.get("pixels"),
        )
