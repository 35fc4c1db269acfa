"""Renderers: Conditions → a clip of F frames (uint8 RGB) for one TR."""

from __future__ import annotations

from abc import ABC, abstractmethod

import cv2
import numpy as np

from rtdecode.conditions import Conditions

__all__ = ["LatentRenderer", "Renderer", "UpsampleRenderer", "load_renderer", "resize_clip"]


def resize_clip(frames: np.ndarray, n_frames: int, size: tuple[int, int]) -> np.ndarray:
    """Resample a (F, h, w, 3) float clip to ``n_frames`` frames of ``size`` (H, W).

    Linear interpolation in time, bicubic in space; values stay float.
    """
    f = frames.shape[0]
    pos = np.linspace(0, f - 1, n_frames) if f > 1 else np.zeros(n_frames)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, f - 1)
    w = (pos - lo)[:, None, None, None]
    timed = frames[lo] * (1 - w) + frames[hi] * w
    h, wd = size
    return np.stack(
        [cv2.resize(fr.astype(np.float32), (wd, h), interpolation=cv2.INTER_CUBIC) for fr in timed]
    )


def _uint8_clip(frames: np.ndarray, n_frames: int, size: tuple[int, int]) -> np.ndarray:
    """Float frames in [0, 1] resampled (:func:`resize_clip`) to a uint8 clip."""
    return (np.clip(resize_clip(frames, n_frames, size), 0, 1) * 255 + 0.5).astype(np.uint8)


class Renderer(ABC):
    """Base class: turns one TR's conditions into a clip."""

    frames_per_tr: int
    size: tuple[int, int]

    @abstractmethod
    def render(self, conditions: Conditions) -> np.ndarray:
        """(F, H, W, 3) uint8 clip for ``conditions.tr``."""


class UpsampleRenderer(Renderer):
    """The blurry reconstruction itself, resampled to the clip's frame count and size."""

    def __init__(self, frames_per_tr: int, size: tuple[int, int]) -> None:
        self.frames_per_tr = frames_per_tr
        self.size = tuple(size)

    def render(self, conditions: Conditions) -> np.ndarray:
        return _uint8_clip(conditions.blurry, self.frames_per_tr, self.size)


class LatentRenderer(Renderer):
    """The decoded blurry video itself: the decoder's blurry frames in pixels, resampled, when
    it decodes them (``conditions.pixels``); else the autoencoder decodes the perception latents.

    Parameters
    ----------
    autoencoder
        A :class:`~rtdecode.models.autoencoder.FrameAutoencoder`.
    """

    def __init__(self, autoencoder) -> None:
        self.ae = autoencoder
        self.size = (autoencoder.config["frame_size"],) * 2

    def render(self, conditions: Conditions) -> np.ndarray:
        import torch

        from rtdecode.models.autoencoder import to_uint8

        if conditions.pixels is not None:
            return _uint8_clip(conditions.pixels, len(conditions.pixels), self.size)
        with torch.no_grad():
            return to_uint8(self.ae.decode(conditions.blurry))


def load_renderer(bundle, spec: str = "bundle", steps: int | None = None) -> Renderer:
    """The renderer for a bundle.

    Parameters
    ----------
    bundle
        The loaded :class:`~rtdecode.bundle.Bundle`.
    spec
        ``bundle``: the bundle's own — the distilled diffusion student when it ships a renderer,
        else its autoencoder decoding the perception latents (``neurons``) or its blurry frames
        resampled (``ridge``); ``blurry``: the decoded blurry video without diffusion;
        ``teacher``: the bundle's diffusion teacher; ``diffusers:PATH``: a local diffusers
        pipeline directory.
    steps
        Sampler steps (default: the bundle's setting for the student or teacher).
    """
    m = bundle.manifest
    if spec.startswith("diffusers:"):
        from rtdecode.render.diffusers_pipeline import load_diffusers_renderer

        return load_diffusers_renderer(spec, m["frames_per_tr"], tuple(m["frame_size"]), steps=steps or 4)
    if spec not in ("bundle", "blurry", "student", "teacher"):
        raise ValueError(f"unknown renderer {spec!r} (bundle, blurry, student, teacher or diffusers:PATH)")
    if bundle.kind == "neurons":
        from rtdecode.train.encoders import load_encoders

        models = load_encoders(bundle.tensors, {k: m["encoders"]["models"][k] for k in ("ae", "clip")})
        if spec != "blurry" and "renderer" in m:
            from rtdecode.render.diffusion import diffusion_renderer

            which = "teacher" if spec == "teacher" else "student"
            return diffusion_renderer(bundle.tensors, m["renderer"], models, which, steps)
        if spec in ("student", "teacher"):
            raise ValueError(f"bundle {bundle.path} ships no diffusion renderer")
        return LatentRenderer(models["ae"])
    if spec in ("student", "teacher"):
        raise ValueError(f"bundle {bundle.path} ({bundle.kind}) has no diffusion renderer")
    return UpsampleRenderer(m["frames_per_tr"], tuple(m["frame_size"]))
