"""int8 onnxruntime engines: static QDQ quantization calibrated on the render stage's own inputs.

Why int8, and which parts (measured in ``docs/backends.md``)
    On this CPU class (AVX-512 VNNI) onnxruntime's int8 convolutions run about twice as fast
    as fp32 ones, and convolutions are most of the render cost (the autoencoder decoder's and
    the denoiser's residual blocks). So ``precision="int8"`` quantizes the **convolutions**
    of the denoiser and the autoencoder decoder: weights int8 per output channel, activations
    uint8 per tensor, in QDQ form so onnxruntime fuses them into ``QLinearConv``. Attention,
    normalisation and the time embedding stay fp32 — quantizing them too (all op types) gave
    31 % relative error on the denoiser's velocity for a few ms; the brain decoder stays fp32
    (its conditions feed everything after it, and it costs ~4 ms).

Calibration (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html)
    Activation ranges come from the inputs the engine will see, not from noise:
    :func:`render_calibration` makes clips with the world's own stimulus generator
    (:func:`scanner_sim.stimuli.generate_movie`, no data set needed), encodes them with the
    bundle's autoencoder, degrades the ground truth into decoded-looking conditions exactly
    as the teacher was trained (:func:`rtdecode.train.renderer.degrade_conditions`), runs
    the torch renderer on them and records every denoiser call and every clip's final latents.
    Ranges are min/max over those calls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CALIBRATION",
    "INT8_MIN_PSNR_DB",
    "QUANTIZED_OPS",
    "ae_calibration",
    "quantize_onnx",
    "render_calibration",
]

log = logging.getLogger("rtdecode.backends")

#: Operator types quantized by ``precision="int8"`` (see the module docstring).
QUANTIZED_OPS = ("Conv",)
#: The stated tolerance of int8 render engines: every clip's frames at least this PSNR (dB, mean
#: over the clip's frames) from the fp32 / torch frames of the same conditions and noise.
INT8_MIN_PSNR_DB = 30.0
#: The calibration set's identity (part of the engine cache key: other clips, other ranges).
CALIBRATION = {"clips": 8, "seed": 20261201, "ops": list(QUANTIZED_OPS)}


class _Feeds:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: Iterable[Mapping[str, Any]]) -> None:
        self._it = iter([{k: np.ascontiguousarray(np.asarray(v)) for k, v in f.items()} for f in feeds])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # read once: the calibrator asks for one pass
        pass


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    calibration: Sequence[Mapping[str, Any]],
    op_types: Sequence[str] = QUANTIZED_OPS,
) -> None:
    """Static int8 QDQ quantization of an fp32 ONNX graph (weights per channel, min/max ranges).

    Parameters
    ----------
    src, dst
        The fp32 graph and where its int8 version goes (checked by ``onnx.checker``).
    calibration
        Feed dicts ``{input name: array}`` with the inputs the graph will see.
    op_types
        Operator types to quantize.

    Raises
    ------
    ValueError
        Without calibration data.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from rtdecode.backends.export import check_onnx

    if not calibration:
        raise ValueError("int8 quantization needs calibration inputs (none given)")
    dst = Path(dst)
    pre = dst.with_name(dst.stem + ".pre.onnx")
    # Shape inference and constant folding first, as the quantization guide recommends.
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(dst),
        _Feeds(calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        # 7-bit weights: x86 CPUs without VNNI compute U8S8 with VPMADDUBSW, whose int16
        # accumulation saturates (onnxruntime's quantization guide); measured here on an AVX2-only
        # CPU, full-range weights put the int8 render 7.9 grey levels off the fp32 one on average.
        reduce_range=True,
        op_types_to_quantize=list(op_types),
        calibrate_method=CalibrationMethod.MinMax,
    )
    pre.unlink(missing_ok=True)
    check_onnx(dst)


class _Recorder(torch.nn.Module):
    """Wraps a denoiser and keeps every call's inputs (as numpy feed dicts)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[dict[str, np.ndarray]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, channels: torch.Tensor, tokens: torch.Tensor):
        names = ("x", "t", "channels", "tokens")
        self.calls.append({k: v.numpy().copy() for k, v in zip(names, (x, t, channels, tokens))})
        return self.model(x, t, channels, tokens)


def _simulated_clips(ae: Any, frames: int, clips: int, seed: int) -> tuple[Any, torch.Tensor]:
    """A movie of ``clips`` clips from the world's generator at the autoencoder's frame size,
    and its latents ``(clips, frames, C, h, w)``."""
    from scanner_sim.stimuli import StimulusConfig, generate_movie

    size = int(ae.config["frame_size"])
    movie = generate_movie(clips * frames, seed, StimulusConfig(size=(size, size)))
    with torch.no_grad():
        latents = ae.encode(movie.frames).reshape(clips, frames, *ae.latent_shape).float()
    return movie, latents


def ae_calibration(
    ae: Any, frames: int, clips: int = CALIBRATION["clips"], seed: int = CALIBRATION["seed"]
) -> list[dict[str, np.ndarray]]:
    """Autoencoder-decoder feeds without a denoiser (a ``LatentRenderer``): simulated clips' latents."""
    return [{"latents": z.numpy()} for z in _simulated_clips(ae, frames, clips, seed)[1]]


def _fit(a: np.ndarray, n: int) -> np.ndarray:
    """The last axis cut or zero-padded to ``n`` (a renderer trained on another vocabulary)."""
    out = np.zeros((*a.shape[:-1], n), np.float32)
    k = min(n, a.shape[-1])
    out[..., :k] = a[..., :k]
    return out


def _calibration_conditions(renderer: Any, clips: int, seed: int) -> list[Any]:
    """Decoded-looking :class:`~rtdecode.conditions.Conditions` of simulated clips (see module doc)."""
    from rtdecode.conditions import Conditions
    from rtdecode.train.data import block_means
    from rtdecode.train.renderer import degrade_conditions

    f, cfg = renderer.frames_per_tr, renderer.model.cfg
    movie, latents = _simulated_clips(renderer.ae, f, clips, seed)
    captions = [movie.caption(k * f + f // 2) for k in range(clips)]
    text = torch.as_tensor(np.asarray(renderer.text_encoder(captions), np.float32))
    # Key-object masks at the latent size, on evenly spaced frames (those the mask head decodes).
    masks = block_means(movie.mask, f, cfg.mask_frames, renderer.ae.latent_shape[1])
    batch = {
        "latents": latents,
        "masks": torch.as_tensor(masks).float(),
        "image_emb": text,  # the world-CLIP space is shared; the caption stands in for the keyframe
        "text_emb": text,
        "concepts": torch.as_tensor(_fit(movie.concepts.reshape(clips, f, -1).any(axis=1), cfg.n_concepts)),
    }
    c = degrade_conditions(batch, torch.Generator().manual_seed(seed))
    return [
        Conditions(tr=k, source_tr=k, caption=captions[k], **{n: c[n][k].numpy() for n in _CONDITIONS})
        for k in range(clips)
    ]


_CONDITIONS = ("blurry", "mask", "keyframe", "semantic", "concepts")


def render_calibration(
    renderer: Any, clips: int = CALIBRATION["clips"], seed: int = CALIBRATION["seed"]
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Calibration feeds for a diffusion renderer's denoiser and autoencoder-decoder engines.

    Parameters
    ----------
    renderer
        A torch :class:`~rtdecode.render.diffusion.DiffusionRenderer` (before compilation).
    clips, seed
        How many simulated clips, and the seed of the movie and of the degradation.

    Returns
    -------
    denoiser_feeds, ae_feeds
        ``{"x", "t", "channels", "tokens"}`` per denoiser call (``clips × steps``) and
        ``{"latents"}`` per clip (its F frames, as the engine decodes them).
    """
    from rtdecode.render.diffusion import sample_flow

    model = renderer.model
    recorder = _Recorder(model)
    ae_feeds = []
    strength = renderer.strength if renderer.blurry_init else 1.0
    for cond in _calibration_conditions(renderer, clips, seed):
        x, channels, tokens = renderer.inputs(cond)
        lat = sample_flow(recorder, x, channels, tokens, renderer.steps, strength)[0]
        ae_feeds.append({"latents": lat.numpy().copy()})
    return recorder.calls, ae_feeds
