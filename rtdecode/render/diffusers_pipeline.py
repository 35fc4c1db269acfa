"""A local diffusers pipeline as the renderer (``--renderer diffusers:PATH``).

For labs with a GPU and their own text- or image-to-video model saved as a diffusers pipeline
directory (``model_index.json`` plus one folder per component). Nothing is fetched from a hub:
the directory is loaded with ``local_files_only=True``.

Each TR the pipeline is called with whatever its ``__call__`` accepts among:

``prompt``
    ``conditions.caption``.
``image``
    For image-to-video (or image-to-image) pipelines: a PIL RGB image of the TR, chosen by
    :meth:`DiffusersPipelineRenderer.condition_image` — the keyframe when it holds pixels, else
    the middle blurry frame when the blurry reconstruction holds pixels, else the last frame of
    the previous rendered clip (NEURONS bundles carry latent keyframes and latent blurry
    videos), else mid-gray when the pipeline requires an image and there is none yet.
``num_frames``
    ``frames_per_tr`` (or ``pipeline_frames``).
``height``, ``width``
    ``size`` rounded up to a multiple of the pipeline's VAE scale factor (or ``pipeline_size``).
``num_inference_steps``, ``generator``, ``output_type="np"``
    ``steps``; a CPU generator seeded with ``seed + conditions.tr`` (the same TR gives the
    same clip); numpy output.

The output (``.frames`` of a video pipeline, ``.images`` of an image pipeline) is resampled
to exactly ``frames_per_tr`` frames of ``size`` with :func:`rtdecode.render.resize_clip`. A
text-to-image pipeline therefore yields one image repeated over the TR's frames.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np

from rtdecode.conditions import Conditions
from rtdecode.render import Renderer, resize_clip

__all__ = ["DiffusersPipelineRenderer", "load_diffusers_renderer", "parse_diffusers_spec"]

SPEC_PREFIX = "diffusers:"

# Call arguments the renderer fills in itself; ``call_kwargs`` may not override them.
_MANAGED = ("prompt", "image", "num_frames", "height", "width", "num_inference_steps", "generator")


def parse_diffusers_spec(spec: str) -> Path:
    """The directory named by a ``diffusers:PATH`` renderer spec (``~`` expanded).

    Raises
    ------
    ValueError
        If ``spec`` does not start with ``diffusers:`` or names no path.
    """
    if not spec.startswith(SPEC_PREFIX):
        raise ValueError(f"renderer spec {spec!r} does not start with {SPEC_PREFIX!r}")
    path = spec[len(SPEC_PREFIX) :].strip()
    if not path:
        raise ValueError(f"renderer spec {spec!r} names no pipeline directory (diffusers:PATH)")
    return Path(path).expanduser()


def _pixels(arr: np.ndarray | None) -> np.ndarray | None:
    """(h, w, 3) uint8 RGB of a pixel image, or None when ``arr`` is not one (e.g. a latent).

    Pixels are channels-last (h, w, 3) or (h, w, 1), or (h, w) grey: uint8, or floats in
    [0, 1]. Channels-first (C, h, w) arrays are taken for latents.
    """
    if arr is None:
        return None
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3 or min(a.shape[:2]) < 2:
        return None
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    return (np.clip(np.nan_to_num(a.astype(np.float32)), 0, 1) * 255 + 0.5).astype(np.uint8)


def _float_clip(out: Any) -> np.ndarray:
    """A pipeline's output as a (F, h, w, 3) float32 clip in [0, 1].

    Accepts an output object with ``.frames`` (video) or ``.images`` (image), a
    ``return_dict=False`` tuple, and within them numpy arrays, torch tensors, PIL images or
    (nested) lists of those; only the first item of a batch is kept.
    """
    if isinstance(out, tuple):
        out = out[0]
    for name in ("frames", "images", "videos"):
        if hasattr(out, name):
            out = getattr(out, name)
            break
    if isinstance(out, (list, tuple)):
        if not out:
            raise ValueError("the pipeline returned no frames")
        if isinstance(out[0], (list, tuple)):  # a batch of videos: the first one
            out = out[0]
        out = np.stack([np.asarray(x) for x in out])
    if hasattr(out, "detach"):  # a torch tensor
        out = out.detach().float().cpu().numpy()
    a = np.asarray(out)
    if a.ndim == 5:  # (B, F, ...): the first video
        a = a[0]
    if a.ndim == 3:  # one image
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"cannot read a clip from pipeline output of shape {a.shape}")
    if a.shape[-1] not in (1, 3, 4) and a.shape[1] in (1, 3, 4):  # channels-first
        a = a.transpose(0, 2, 3, 1)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a[..., :3]  # drop alpha
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    return np.clip(np.nan_to_num(a.astype(np.float32)), 0, 1)


class DiffusersPipelineRenderer(Renderer):
    """A diffusers pipeline object rendering each TR's caption (and image) into a clip.

    Parameters
    ----------
    pipeline
        A loaded pipeline (any callable whose ``__call__`` accepts ``prompt`` and/or
        ``image``; see the module docstring for the arguments it is given).
    frames_per_tr
        Frames per returned clip.
    size
        (H, W) of the returned frames.
    steps
        ``num_inference_steps``.
    seed
        Base seed: TR ``t`` is generated with ``seed + t``.
    pipeline_frames
        ``num_frames`` asked of the pipeline (default ``frames_per_tr``); for models that
        need a particular count (e.g. 4k + 1). The output is resampled to ``frames_per_tr``.
    pipeline_size
        (H, W) asked of the pipeline (default ``size`` rounded up to a multiple of its VAE
        scale factor), e.g. the model's native resolution; the output is resized to ``size``.
    call_kwargs
        Further arguments for every call (``guidance_scale``, ``negative_prompt``...).

    Raises
    ------
    ValueError
        If the pipeline's call signature accepts neither ``prompt`` nor ``image``, or
        ``call_kwargs`` names an argument it does not accept or one the renderer sets.
    """

    def __init__(
        self,
        pipeline: Any,
        frames_per_tr: int,
        size: tuple[int, int],
        steps: int = 25,
        seed: int = 0,
        pipeline_frames: int | None = None,
        pipeline_size: tuple[int, int] | None = None,
        call_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.frames_per_tr = int(frames_per_tr)
        self.size = (int(size[0]), int(size[1]))
        self.steps = int(steps)
        self.seed = int(seed)
        self.pipeline_frames = int(pipeline_frames or frames_per_tr)
        if pipeline_size is None:
            q = int(getattr(pipeline, "vae_scale_factor", None) or 8)
            pipeline_size = tuple(-(-s // q) * q for s in self.size)
        self.pipeline_size = (int(pipeline_size[0]), int(pipeline_size[1]))
        self.params = inspect.signature(pipeline.__call__).parameters
        kind = type(pipeline).__name__
        if "prompt" not in self.params and "image" not in self.params:
            raise ValueError(
                f"pipeline {kind} cannot render conditions: its __call__ accepts neither 'prompt' nor "
                f"'image' (it takes {', '.join(self.params) or 'nothing'})"
            )
        call_kwargs = dict(call_kwargs or {})
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in self.params.values())
        unknown = [k for k in call_kwargs if k not in self.params and not takes_any]
        if unknown:
            raise ValueError(f"pipeline {kind} does not accept {unknown}")
        clash = [k for k in call_kwargs if k in _MANAGED]
        if clash:
            raise ValueError(f"call_kwargs may not set {clash}: the renderer sets them")
        self.call_kwargs = call_kwargs
        img = self.params.get("image")
        self.image_required = img is not None and img.default is inspect.Parameter.empty
        self.last_image_source: str | None = None  # where the last call's ``image`` came from
        self._previous: np.ndarray | None = None  # last frame of the previous clip (uint8)

    def condition_image(self, conditions: Conditions) -> tuple[np.ndarray | None, str | None]:
        """The picture of the TR for an image-conditioned pipeline, and where it came from.

        The keyframe when it holds pixels ("keyframe"); else the middle blurry frame when the
        blurry reconstruction holds pixel frames ("blurry"); else the previous clip's last
        frame ("previous"); else ``(None, None)``.
        """
        key = _pixels(conditions.keyframe)
        if key is not None:
            return key, "keyframe"
        b = conditions.blurry
        if b is not None and np.ndim(b) == 4:
            mid = _pixels(np.asarray(b)[len(b) // 2])
            if mid is not None:
                return mid, "blurry"
        if self._previous is not None:
            return self._previous, "previous"
        return None, None

    def call_arguments(self, conditions: Conditions) -> dict[str, Any]:
        """The keyword arguments of the pipeline call for ``conditions`` (those it accepts)."""
        import torch
        from PIL import Image

        h, w = self.pipeline_size
        args: dict[str, Any] = {
            "prompt": conditions.caption or "",
            "num_frames": self.pipeline_frames,
            "height": h,
            "width": w,
            "num_inference_steps": self.steps,
            "generator": torch.Generator("cpu").manual_seed(self.seed + int(conditions.tr)),
            "output_type": "np",
        }
        self.last_image_source = None
        if "image" in self.params:
            pix, source = self.condition_image(conditions)
            if pix is None and self.image_required:
                pix, source = np.full((h, w, 3), 128, np.uint8), "gray"
            if pix is not None:
                args["image"] = Image.fromarray(pix).resize((w, h), Image.BICUBIC)
                self.last_image_source = source
        args = {k: v for k, v in args.items() if k in self.params}
        return {**args, **self.call_kwargs}

    def render(self, conditions: Conditions) -> np.ndarray:
        """(F, H, W, 3) uint8 clip for ``conditions.tr``."""
        import torch

        with torch.inference_mode():
            out = self.pipeline(**self.call_arguments(conditions))
        clip = resize_clip(_float_clip(out), self.frames_per_tr, self.size)
        clip = (np.clip(clip, 0, 1) * 255 + 0.5).astype(np.uint8)
        self._previous = clip[-1]
        return clip


def _dtype_kwarg() -> str:
    """``dtype`` for diffusers that take it (and deprecate ``torch_dtype``), else ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def load_diffusers_renderer(
    spec: str,
    frames_per_tr: int,
    size: tuple[int, int],
    steps: int = 25,
    device: str = "auto",
    *,
    seed: int = 0,
    pipeline_frames: int | None = None,
    pipeline_size: tuple[int, int] | None = None,
    call_kwargs: dict[str, Any] | None = None,
) -> Renderer:
    """Load the local diffusers pipeline directory of ``spec`` (``"diffusers:PATH"``).

    Parameters
    ----------
    spec
        ``"diffusers:PATH"``; PATH is a directory written by ``DiffusionPipeline.save_pretrained``.
    frames_per_tr, size, steps
        See :class:`DiffusersPipelineRenderer`.
    device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        Weights are cast to float16 on CUDA and float32 on CPU.
    seed, pipeline_frames, pipeline_size, call_kwargs
        See :class:`DiffusersPipelineRenderer`.

    Returns
    -------
    Renderer
        A :class:`DiffusersPipelineRenderer`.

    Raises
    ------
    ValueError
        If ``spec`` is malformed.
    FileNotFoundError
        If PATH does not exist or is not a diffusers pipeline directory (no ``model_index.json``).
    ImportError
        If diffusers is not installed (``pip install rtdecode[ml]``).
    RuntimeError
        If diffusers cannot load the directory (a component missing or of an unknown class...).
    """
    path = parse_diffusers_spec(spec)
    if not path.exists():
        raise FileNotFoundError(f"diffusers pipeline directory {str(path)!r} does not exist")
    if not path.is_dir() or not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a diffusers pipeline directory: it has no model_index.json "
            "(save one with DiffusionPipeline.save_pretrained)"
        )
    try:
        import torch
        from diffusers import DiffusionPipeline
    except ImportError as exc:
        raise ImportError(
            f"--renderer diffusers:PATH needs diffusers (pip install rtdecode[ml]): {exc}"
        ) from exc

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    try:
        pipe = DiffusionPipeline.from_pretrained(
            # safetensors only: never unpickle a .bin checkpoint from the folder
            os.fspath(path),
            local_files_only=True,
            use_safetensors=True,
            **{_dtype_kwarg(): dtype},
        )
    except Exception as exc:  # diffusers raises many kinds; say which directory failed
        raise RuntimeError(f"diffusers could not load the pipeline in {str(path)!r}: {exc}") from exc
    pipe = pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return DiffusersPipelineRenderer(
        pipe,
        frames_per_tr,
        size,
        steps=steps,
        seed=seed,
        pipeline_frames=pipeline_frames,
        pipeline_size=pipeline_size,
        call_kwargs=call_kwargs,
    )
