"""The engine's models as compiled graphs, and drop-in stand-ins for the decode and render stages.

Graphs (what is exported)
    ``decoder``
        :class:`DecoderGraph`: the whole :class:`~rtdecode.models.decoders.BrainDecoder` *and*
        the caption head's greedy decoding in one graph. ``generate`` runs a fixed
        ``max_words`` steps with argmax feedback and no data-dependent exit (EOS and what follows
        are masked afterwards), so the export unrolls it into a static graph: one engine call
        per TR instead of one backbone call plus 24 small GRU calls, and no step-wise state
        shuttling between Python and the engine. Outputs: every head, ``hidden`` and
        ``caption_ids``. Axis 0 (windows) is dynamic: evaluation decodes many windows at once.
    ``denoiser-<student|teacher>``
        :class:`DenoiserGraph`: ``VideoDenoiser(x, t, channels, tokens) -> velocity``, static
        shapes (one clip of F frames per call; the sampler calls it ``steps`` times per TR).
    ``tokens-<student|teacher>``
        :class:`TokensGraph`: ``VideoDenoiser.tokens`` (the cross-attention tokens; once per TR).
    ``ae-decode``
        :class:`AutoencoderDecodeGraph`: scaled latents (F, C, h, w) → frames in [0, 1].
    ``text-encoder``
        :class:`TextGraph`: the world-CLIP text tower, caption token ids → the renderer's caption
        embedding (once per TR with a new caption); axis 0 dynamic.

Stand-ins (how a stage switches backend with one call)
    :func:`compile_decoder_stage` swaps a :class:`~rtdecode.decode.neurons.NeuronsDecoder`'s
    ``model`` for a :class:`CompiledBrainDecoder`; :func:`compile_render_stage` swaps a
    :class:`~rtdecode.render.diffusion.DiffusionRenderer`'s ``model``, ``ae`` and ``text_encoder``
    for a :class:`CompiledDenoiser`, a :class:`CompiledAutoencoder` and a
    :class:`CompiledCaptionEncoder`. The stand-ins answer the calls
    those stages make (``model(x)``, ``model.caption.generate(hidden, bos, eos)``,
    ``model(x, t, channels, tokens)``, ``model.tokens(...)``, ``ae.decode(latents)``) and pass
    anything else to the torch model they wrap.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rtdecode.backends.cache import DEFAULT_CACHE_DIR
from rtdecode.backends.choice import resolve_backend
from rtdecode.backends.compile import Runner, compile_module

__all__ = [
    "AutoencoderDecodeGraph",
    "CompiledAutoencoder",
    "CompiledBrainDecoder",
    "CompiledCaptionEncoder",
    "CompiledDenoiser",
    "DecoderGraph",
    "DenoiserGraph",
    "EngineSpec",
    "TextGraph",
    "TokensGraph",
    "bundle_digest",
    "bundle_engines",
    "compile_decoder_stage",
    "compile_render_stage",
    "decoder_inputs",
    "denoiser_inputs",
    "text_inputs",
    "tokens_inputs",
]

log = logging.getLogger("rtdecode.backends")

# --------------------------------------------------------------------------------------- graphs


class DecoderGraph(nn.Module):
    """BrainDecoder heads + greedy caption ids: ``x (B, n_lags, n_voxels) -> dict``.

    Parameters
    ----------
    decoder
        The trained decoder (eval mode).
    bos, eos
        Caption token ids (``WordTokenizer.BOS`` / ``EOS``).
    """

    def __init__(self, decoder: nn.Module, bos: int = 1, eos: int = 2) -> None:
        super().__init__()
        self.decoder = decoder
        self.bos, self.eos = int(bos), int(eos)
        self.config = {**decoder.config, "bos": self.bos, "eos": self.eos}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.decoder(x)
        if self.decoder.caption is not None:
            out["caption_ids"] = self.decoder.caption.generate(out["hidden"], self.bos, self.eos)
        return out


class DenoiserGraph(nn.Module):
    """``VideoDenoiser`` forward with a named output: ``{"velocity": (B, F, C, h, w)}``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, channels: torch.Tensor, tokens: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {"velocity": self.model(x, t, channels, tokens)}


class TokensGraph(nn.Module):
    """``VideoDenoiser.tokens``: ``{"tokens": (B, 4, D)}``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = {**model.config, "graph": "tokens"}

    def forward(
        self, semantic: torch.Tensor, text: torch.Tensor, concepts: torch.Tensor, coverage: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {"tokens": self.model.tokens(semantic, text, concepts, coverage)}


class AutoencoderDecodeGraph(nn.Module):
    """``FrameAutoencoder.decode`` as a graph: scaled latents ``(N, C, h, w)`` → ``{"frames"}`` in [0, 1]."""

    def __init__(self, ae: nn.Module) -> None:
        super().__init__()
        self.ae = ae
        self.config = ae.config
        self.scale = float(ae.config["scaling_factor"])
        self.shift = float(ae.config["shift_factor"])

    def forward(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.ae.decode_raw(latents / self.scale + self.shift)
        return {"frames": ((x + 1) / 2).clamp(0, 1)}


class TextGraph(nn.Module):
    """The world-CLIP text tower: caption token ids ``(N, L)`` → ``{"text": (N, D)}`` (L2-normalised)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.config = {**clip.config, "graph": "text"}

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"text": self.clip.encode_tokens(tokens)}


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def decoder_inputs(config: Mapping[str, Any], batch: int = 1) -> dict[str, torch.Tensor]:
    """Example inputs of a decoder graph (``config``: ``BrainDecoder.config``)."""
    return {"x": _randn(batch, config["n_lags"], config["n_voxels"])}


def denoiser_inputs(
    config: Mapping[str, Any], latent_hw: tuple[int, int] = (16, 16)
) -> dict[str, torch.Tensor]:
    """Example inputs of a denoiser graph for one clip (``config``: ``VideoDenoiser.config``)."""
    f, c = config["frames"], config["latent_channels"]
    h, w = latent_hw
    return {
        "x": _randn(1, f, c, h, w, seed=1),
        "t": torch.full((1,), 0.7),
        "channels": _randn(1, f, 2 * c + 1, h, w, seed=2),
        "tokens": _randn(1, 4, config["embed_dim"], seed=3),
    }


def tokens_inputs(config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Example inputs of a tokens graph (``config``: ``VideoDenoiser.config``)."""
    d = config["embed_dim"]
    return {
        "semantic": _randn(1, d, seed=4),
        "text": _randn(1, d, seed=5),
        "concepts": torch.rand(1, config["n_concepts"], generator=torch.Generator().manual_seed(6)),
        "coverage": torch.full((1, 1), 0.3),
    }


def text_inputs(clip: nn.Module) -> dict[str, torch.Tensor]:
    """Example inputs of a text graph: one caption's token ids (``max_words + 2``, padded)."""
    return {"tokens": clip.tokenize(["a caption"])}


def ae_inputs(ae: nn.Module, frames: int) -> dict[str, torch.Tensor]:
    """Example inputs of an autoencoder-decode graph: one clip of ``frames`` latents."""
    return {"latents": _randn(frames, *ae.latent_shape, seed=7)}


# ----------------------------------------------------------------------------------- stand-ins


class _Delegate:
    """Attributes not defined here come from the wrapped torch model."""

    _torch: Any

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_torch":
            raise AttributeError(name)
        return getattr(self._torch, name)

    def eval(self) -> _Delegate:
        return self


class _CompiledCaption(_Delegate):
    """``caption.generate`` answered from the decoder graph's ``caption_ids`` of the same call."""

    def __init__(self, head: nn.Module, bos: int, eos: int) -> None:
        self._torch = head
        self._bos, self._eos = bos, eos
        self._hidden: torch.Tensor | None = None
        self._ids: torch.Tensor | None = None

    def remember(self, hidden: torch.Tensor, ids: torch.Tensor | None) -> None:
        self._hidden, self._ids = hidden, ids

    def generate(self, h: torch.Tensor, bos: int, eos: int) -> torch.Tensor:
        # Identity, not equality: only the very tensor the graph returned with these ids qualifies.
        if h is self._hidden and self._ids is not None and (bos, eos) == (self._bos, self._eos):
            return self._ids
        return self._torch.generate(h, bos, eos)


class CompiledBrainDecoder(_Delegate):
    """Stands in for a ``BrainDecoder`` in :class:`~rtdecode.decode.neurons.NeuronsDecoder`.

    ``model(x)`` runs the decoder graph; ``model.caption.generate(out["hidden"], BOS, EOS)``
    then returns the ids the graph computed in that call. Teacher-forced calls
    (``caption_tokens``) run the torch model.
    """

    def __init__(self, model: nn.Module, runner: Runner, bos: int = 1, eos: int = 2) -> None:
        self._torch = model
        self.runner = runner
        self.caption = _CompiledCaption(model.caption, bos, eos) if model.caption is not None else None

    def __call__(
        self, x: torch.Tensor, caption_tokens: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if caption_tokens is not None:
            return self._torch(x, caption_tokens)
        out = self.runner(x=x)
        ids = out.pop("caption_ids", None)
        if self.caption is not None:
            self.caption.remember(out["hidden"], ids)
        return out


class CompiledDenoiser(_Delegate):
    """Stands in for a ``VideoDenoiser`` in :class:`~rtdecode.render.diffusion.DiffusionRenderer`."""

    def __init__(self, model: nn.Module, forward: Runner, tokens: Runner | None = None) -> None:
        self._torch = model
        self.forward_runner = forward
        self.tokens_runner = tokens

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, channels: torch.Tensor, tokens: torch.Tensor
    ) -> torch.Tensor:
        return self.forward_runner(x=x, t=t, channels=channels, tokens=tokens)["velocity"]

    def tokens(
        self, semantic: torch.Tensor, text: torch.Tensor, concepts: torch.Tensor, coverage: torch.Tensor
    ) -> torch.Tensor:
        if self.tokens_runner is None:
            with torch.no_grad():
                return self._torch.tokens(semantic, text, concepts, coverage)
        return self.tokens_runner(semantic=semantic, text=text, concepts=concepts, coverage=coverage)[
            "tokens"
        ]


class CompiledAutoencoder(_Delegate):
    """Stands in for a ``FrameAutoencoder`` where only ``decode`` of one clip is compiled.

    ``decode`` of the compiled shape runs the engine; other shapes (and ``encode``) run torch.
    """

    def __init__(self, ae: nn.Module, runner: Runner, shape: tuple[int, ...]) -> None:
        self._torch = ae
        self.runner = runner
        self.shape = tuple(shape)

    def decode(self, latents: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        z = torch.as_tensor(latents, dtype=torch.float32)
        if tuple(z.shape) != self.shape:
            with torch.no_grad():
                return self._torch.decode(z, batch_size)
        return self.runner(latents=z)["frames"]


class CompiledCaptionEncoder(_Delegate):
    """Stands in for a :class:`~rtdecode.render.diffusion.CaptionEncoder`: tokenisation in Python,
    the text tower on the engine."""

    def __init__(self, encoder: Any, runner: Runner) -> None:
        self._torch = encoder
        self.runner = runner

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.runner(tokens=self._torch.tokens(texts))["text"].numpy()


# ------------------------------------------------------------------------------ stage helpers


def compile_decoder_stage(
    decoder: Any,
    backend: str = "auto",
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    key_parts: Mapping[str, Any] | None = None,
    threads: int | None = None,
    precision: str | None = None,
) -> Any:
    """Run a :class:`~rtdecode.decode.neurons.NeuronsDecoder` through a compiled engine (in place).

    Parameters
    ----------
    decoder
        The stage: a ``NeuronsDecoder`` (its ``model`` is replaced by a
        :class:`CompiledBrainDecoder`); any other decoder is returned unchanged.
    backend
        ``auto|torch|onnxruntime|tensorrt|torch-tensorrt`` (``torch``: unchanged).
    cache_dir, key_parts, threads, precision
        As :func:`~rtdecode.backends.compile_module` (float precisions only).

    Returns
    -------
    The same decoder.
    """
    from rtdecode.models.decoders import BrainDecoder
    from rtdecode.models.text import WordTokenizer

    model = getattr(decoder, "model", None)
    if resolve_backend(backend) == "torch" or not isinstance(model, BrainDecoder):
        return decoder  # eager, already compiled, or a decoder without a network (ridge)
    graph = DecoderGraph(model, WordTokenizer.BOS, WordTokenizer.EOS)
    runner = compile_module(
        graph,
        decoder_inputs(model.config),
        "decoder",
        backend,
        cache_dir,
        key_parts,
        dynamic_batch=True,
        threads=threads,
        precision=precision,
    )
    decoder.model = CompiledBrainDecoder(model, runner, WordTokenizer.BOS, WordTokenizer.EOS)
    return decoder


def compile_render_stage(
    renderer: Any,
    backend: str = "auto",
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    key_parts: Mapping[str, Any] | None = None,
    threads: int | None = None,
    name: str = "denoiser-student",
    frames: int | None = None,
    precision: str | None = None,
) -> Any:
    """Run a renderer's networks through compiled engines (in place).

    A :class:`~rtdecode.render.diffusion.DiffusionRenderer` gets its denoiser, token projection,
    autoencoder decoder and (a :class:`~rtdecode.render.diffusion.CaptionEncoder`) caption text
    tower compiled; a renderer with only an autoencoder (``LatentRenderer``) its decoder; any
    other renderer (no networks of ours) is returned unchanged.

    Parameters
    ----------
    renderer
        The stage (its ``model``, ``ae`` and ``text_encoder`` are replaced by stand-ins).
    backend
        ``auto|torch|onnxruntime|tensorrt|torch-tensorrt`` (``torch``: unchanged).
    cache_dir, key_parts, threads
        As :func:`~rtdecode.backends.compile_module`.
    name
        The denoiser's name in the cache: ``denoiser-student`` or ``denoiser-teacher`` (the names
        ``rtdecode engines build`` uses, so a session finds the engines it built).
    frames
        Frames per clip of the autoencoder engine (default: the denoiser's, else the renderer's
        ``frames_per_tr``, else 16).
    precision
        As :func:`~rtdecode.backends.compile_module`; ``int8`` (onnxruntime) quantizes the
        denoiser's and the autoencoder decoder's convolutions, calibrated by
        :func:`~rtdecode.backends.quantize.render_calibration` on this renderer (the token
        projection stays fp32).

    Returns
    -------
    The same renderer.
    """
    from rtdecode.backends.quantize import ae_calibration
    from rtdecode.models.autoencoder import FrameAutoencoder
    from rtdecode.models.video_denoiser import VideoDenoiser
    from rtdecode.render.diffusion import CaptionEncoder

    model, ae = getattr(renderer, "model", None), getattr(renderer, "ae", None)
    if resolve_backend(backend) == "torch" or not isinstance(ae, FrameAutoencoder):
        return renderer  # eager, already compiled, or no networks of ours (resampling, diffusers)
    if not isinstance(model, VideoDenoiser):
        model = None
    calib = _memoised_calibration(renderer, model)
    q_parts = {**(key_parts or {}), **_calibration_key(precision)}
    if model is not None:
        fwd = compile_module(
            DenoiserGraph(model),
            denoiser_inputs(model.config, ae.latent_shape[1:]),
            name,
            backend,
            cache_dir,
            q_parts,
            threads=threads,
            precision=precision,
            calibration=lambda: calib()[0],
        )
        tok = compile_module(
            TokensGraph(model),
            tokens_inputs(model.config),
            name.replace("denoiser", "tokens"),
            backend,
            cache_dir,
            key_parts,
            threads=threads,
        )
        renderer.model = CompiledDenoiser(model, fwd, tok)
    frames = frames or (model.cfg.frames if model is not None else getattr(renderer, "frames_per_tr", 16))
    example = ae_inputs(ae, frames)
    dec = compile_module(
        AutoencoderDecodeGraph(ae),
        example,
        "ae-decode",
        backend,
        cache_dir,
        q_parts,
        threads=threads,
        precision=precision,
        calibration=lambda: calib()[1] or ae_calibration(ae, frames),
    )
    renderer.ae = CompiledAutoencoder(ae, dec, tuple(example["latents"].shape))
    text = getattr(renderer, "text_encoder", None)
    if isinstance(text, CaptionEncoder):
        runner = compile_module(
            TextGraph(text.clip),
            text_inputs(text.clip),
            "text-encoder",
            backend,
            cache_dir,
            key_parts,
            dynamic_batch=True,
            threads=threads,
        )
        renderer.text_encoder = CompiledCaptionEncoder(text, runner)
    return renderer


def _memoised_calibration(renderer: Any, model: nn.Module | None) -> Any:
    """``() -> (denoiser feeds, autoencoder feeds)``, run once and only if an int8 engine is built."""
    from rtdecode.backends.quantize import CALIBRATION, render_calibration

    memo: list = []

    def calib() -> tuple[list, list]:
        if not memo:
            log.info("int8: calibrating on %d simulated clips", CALIBRATION["clips"])
            memo.append(render_calibration(renderer) if model is not None else ([], []))
        return memo[0]

    return calib


def _calibration_key(precision: str | None) -> dict[str, Any]:
    """The key parts an engine of ``precision`` adds: the calibration's identity for int8."""
    from rtdecode.backends.quantize import CALIBRATION

    return {"calibration": CALIBRATION} if precision == "int8" else {}


# --------------------------------------------------------------------------------- bundles


@dataclass
class EngineSpec:
    """One engine of a bundle: what to compile and with which example inputs."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    dynamic_batch: bool = False
    precision: str | None = None
    calibration: Any = None  # int8: () -> feed dicts
    key_parts: dict[str, Any] | None = None  # int8: the calibration's identity


def bundle_digest(path: str | Path) -> str:
    """Hash of a bundle directory's safetensors files (names and contents): 16 hex digits.

    Covers files the manifest does not list (``renderer.safetensors``, ``encoders.safetensors``
    beside a ``ridge`` bundle), unlike :attr:`rtdecode.bundle.Bundle.digest`.
    """
    from rtdecode.bundle import sha256_file

    files = sorted(Path(path).glob("*.safetensors"))
    doc = {f.name: sha256_file(f) for f in files}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def bundle_engines(
    path: str | Path,
    renderer: str = "student",
    render_precision: str | None = None,
    decoder_precision: str | None = None,
) -> tuple[list[EngineSpec], list[str]]:
    """The engines a bundle directory needs, and notes on the models it lacks.

    Looks for the brain decoder (a ``neurons`` bundle's ``decoder``), the renderer's denoiser
    (the manifest's ``renderer`` entry, else ``renderer.json`` + ``renderer.safetensors``), and
    the autoencoder and world-CLIP (the manifest's ``encoders`` entry, else ``encoders.json`` +
    ``encoders.safetensors``; the text tower is compiled when there is a renderer to condition).

    Parameters
    ----------
    path
        The bundle directory.
    renderer
        ``student``, ``teacher`` or ``both``.
    render_precision, decoder_precision
        Precision of the denoiser and autoencoder engines, and of the decoder engine (``None``:
        the backend's default); ``int8`` adds each one's calibration and its key, as
        :func:`compile_render_stage` does.

    Returns
    -------
    specs, notes
    """
    from safetensors.numpy import load_file

    from rtdecode.backends.quantize import ae_calibration
    from rtdecode.bundle import load_bundle
    from rtdecode.models import load_module
    from rtdecode.models.decoders import BrainDecoder
    from rtdecode.models.text import WordTokenizer
    from rtdecode.models.video_denoiser import VideoDenoiser
    from rtdecode.train.encoders import load_encoders, read_encoders

    path = Path(path)
    manifest: dict[str, Any] = {}
    tensors: dict[str, np.ndarray] = {}
    if (path / "manifest.json").exists():
        b = load_bundle(path)
        manifest, tensors = b.manifest, b.tensors
    specs: list[EngineSpec] = []
    notes: list[str] = []

    if "decoder" in manifest:
        model = BrainDecoder.from_config(manifest["decoder"]["config"])
        load_module(model, tensors, "decoder.")
        graph = DecoderGraph(model.eval(), WordTokenizer.BOS, WordTokenizer.EOS)
        specs.append(
            EngineSpec(
                "decoder",
                graph,
                decoder_inputs(model.config),
                dynamic_batch=True,
                precision=decoder_precision,
            )
        )
    else:
        notes.append(f"no brain decoder in {path} (kind {manifest.get('kind', '?')!r}): decoder skipped")

    int8 = render_precision == "int8"
    names = ("ae", "clip")  # the autoencoder's decoder; the caption text tower (and int8 calibration)
    if "encoders" in manifest:
        models = manifest["encoders"]["models"]
        encoders = load_encoders(tensors, {k: models[k] for k in names})
    elif (path / "encoders.json").exists():
        encoders = read_encoders(path)
    else:
        encoders = {}
        notes.append(f"no autoencoder in {path}: ae-decode skipped")
    ae = encoders.get("ae")

    if "renderer" in manifest:
        spec, weights = manifest["renderer"], tensors
    elif (path / "renderer.json").exists():
        spec = json.loads((path / "renderer.json").read_text())
        weights = load_file(str(path / "renderer.safetensors"))
    else:
        spec = None
        notes.append(f"no diffusion renderer in {path}: denoiser skipped")
    if spec is not None and ae is not None:  # the renderer decodes with its own frame decoder
        from rtdecode.render.diffusion import renderer_autoencoder

        ae = renderer_autoencoder(weights, spec, ae)
    latent_hw = tuple(ae.latent_shape[1:]) if ae is not None else (16, 16)
    frames = int(manifest.get("frames_per_tr", 16))
    parts = _calibration_key(render_precision)
    ae_calib: Any = None
    if spec is not None:
        for which in ("student", "teacher") if renderer == "both" else (renderer,):
            calib = None
            if int8 and ae is not None:  # calibrated on this denoiser's own renders
                from rtdecode.render.diffusion import diffusion_renderer

                ren = diffusion_renderer(weights, spec, encoders, which)
                den, memo = ren.model, _memoised_calibration(ren, ren.model)
                calib, ae_calib = (lambda m=memo: m()[0]), ae_calib or (lambda m=memo: m()[1])
            else:
                den = VideoDenoiser.from_config(spec["config"])
                load_module(den, weights, f"{which}.")
                den.eval()
            specs.append(
                EngineSpec(
                    f"denoiser-{which}",
                    DenoiserGraph(den),
                    denoiser_inputs(den.config, latent_hw),
                    precision=render_precision,
                    calibration=calib,
                    key_parts=parts,
                )
            )
            specs.append(EngineSpec(f"tokens-{which}", TokensGraph(den), tokens_inputs(den.config)))
        frames = int(spec["config"]["frames"])
    if spec is not None and encoders.get("clip") is not None:
        clip = encoders["clip"].eval()
        specs.append(EngineSpec("text-encoder", TextGraph(clip), text_inputs(clip), dynamic_batch=True))
    if ae is not None:
        specs.append(
            EngineSpec(
                "ae-decode",
                AutoencoderDecodeGraph(ae.eval()),
                ae_inputs(ae, frames),
                precision=render_precision,
                calibration=ae_calib or (lambda: ae_calibration(ae, frames)),
                key_parts=parts,
            )
        )
    return specs, notes
