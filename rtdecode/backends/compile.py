"""One call from a torch module to a runner on any backend, through the build cache."""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rtdecode.backends.cache import DEFAULT_CACHE_DIR, CacheEntry, entry_for
from rtdecode.backends.choice import backend_version, device_name, resolve_backend
from rtdecode.backends.export import OPSET, GraphModule, export_onnx, module_digest, output_dict, output_names
from rtdecode.backends.fusions import VERSION as FUSIONS_VERSION

__all__ = ["Runner", "TorchRunner", "compile_module", "engine_key"]

log = logging.getLogger("rtdecode.backends")

_EXT = {"onnxruntime": "onnx", "tensorrt": "plan", "torch-tensorrt": "pt2"}  # .pt2: torch.export.save
_GPU = ("tensorrt", "torch-tensorrt")


class TorchRunner:
    """Eager torch behind the runner interface (``no_grad``, outputs as a dict)."""

    backend = "torch"

    def __init__(self, module: nn.Module, input_names: list[str], output_names: list[str]) -> None:
        self.module = module.eval()
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    @torch.no_grad()
    def __call__(self, **inputs: Any) -> dict[str, torch.Tensor]:
        return output_dict(self.module(**inputs), self.output_names)


class Runner:
    """A compiled model: ``runner(**inputs) -> {output name: tensor}`` on any backend.

    Attributes
    ----------
    name
        The model's name (cache file prefix).
    backend
        ``torch``, ``onnxruntime``, ``tensorrt`` or ``torch-tensorrt``.
    input_names, output_names
        The graph's interface.
    entry
        The cache entry it was loaded from (``None`` for torch).
    built
        Whether this call built the artifact (``False``: loaded from the cache).
    reason
        Why it was built (``"missing"``, ``"checksum mismatch"``, ...), or ``""``.
    """

    def __init__(
        self, impl: Any, name: str, entry: CacheEntry | None = None, built: bool = False, reason: str = ""
    ) -> None:
        self.impl = impl
        self.name = name
        self.backend: str = impl.backend
        self.entry = entry
        self.built = built
        self.reason = reason

    @property
    def input_names(self) -> list[str]:
        return list(self.impl.input_names)

    @property
    def output_names(self) -> list[str]:
        return list(self.impl.output_names)

    def __call__(self, **inputs: Any) -> dict[str, torch.Tensor]:
        return self.impl(**inputs)

    def __repr__(self) -> str:
        return f"Runner({self.name!r}, backend={self.backend!r}, built={self.built})"


def _check_inputs(module: nn.Module, inputs: Mapping[str, Any]) -> None:
    """The example inputs must name ``module.forward``'s parameters (all required ones)."""
    params = inspect.signature(module.forward).parameters
    required = {
        n for n, p in params.items() if p.default is inspect.Parameter.empty and p.kind != p.VAR_KEYWORD
    }
    unknown = set(inputs) - set(params)
    if unknown or required - set(inputs):
        raise TypeError(
            f"example inputs {sorted(inputs)} do not match {type(module).__name__}.forward"
            f"({', '.join(params)}): missing {sorted(required - set(inputs))}, unexpected {sorted(unknown)}"
        )


def engine_key(
    module: nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    name: str,
    backend: str,
    precision: str,
    dynamic_batch: bool = False,
    max_batch: int = 64,
    key_parts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The cache key of a compiled model (see :mod:`rtdecode.backends.cache`).

    Parameters
    ----------
    module, example_inputs, name, backend, precision, dynamic_batch, max_batch
        As :func:`compile_module`.
    key_parts
        More fields (e.g. ``{"bundle": digest}``); they cannot override the fields above.
    """
    key = dict(key_parts or {})
    key.update(
        {
            "model": name,
            "backend": backend,
            "backend_version": backend_version(backend),
            "torch": torch.__version__,
            "device": device_name() if backend in _GPU else "cpu",
            "precision": precision,
            "opset": OPSET,
            # onnxruntime graphs take its own forms (rtdecode.backends.fusions).
            "ort_fusions": FUSIONS_VERSION if backend == "onnxruntime" else None,
            "inputs": [
                [k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in example_inputs.items()
            ],
            "dynamic_batch": bool(dynamic_batch),
            "max_batch": int(max_batch) if dynamic_batch else None,
            "weights": module_digest(module),
        }
    )
    return key


def _build(
    backend: str,
    module: nn.Module,
    inputs: dict[str, torch.Tensor],
    entry: CacheEntry,
    precision: str,
    dynamic_batch: bool,
    max_batch: int,
    calibration: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
) -> list[str]:
    """Build the artifact of ``entry``; returns the output names."""
    entry.artifact.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=entry.artifact.parent, prefix=".build-") as tmp:
        tmp_path = Path(tmp) / f"model.{_EXT[backend]}"
        if backend == "torch-tensorrt":
            from rtdecode.backends.tensorrt import compile_torch_tensorrt

            with torch.no_grad():
                names = output_names(module(**inputs))
            compile_torch_tensorrt(GraphModule(module, names, precision).eval(), inputs, tmp_path)
        elif backend == "tensorrt":
            from rtdecode.backends.tensorrt import build_plan

            onnx_path = Path(tmp) / "model.onnx"
            names = export_onnx(
                module,
                inputs,
                onnx_path,
                precision=precision,
                dynamic_batch=dynamic_batch,
                max_batch=max_batch,
            )
            tmp_path.write_bytes(
                build_plan(onnx_path, {k: v.shape for k, v in inputs.items()}, dynamic_batch, max_batch)
            )
        elif precision == "int8":
            from rtdecode.backends.quantize import quantize_onnx

            fp32 = Path(tmp) / "model.fp32.onnx"
            names = export_onnx(
                module, inputs, fp32, dynamic_batch=dynamic_batch, max_batch=max_batch, fusions=True
            )
            quantize_onnx(fp32, tmp_path, calibration())
        else:
            names = export_onnx(
                module,
                inputs,
                tmp_path,
                precision=precision,
                dynamic_batch=dynamic_batch,
                max_batch=max_batch,
                fusions=True,
            )
        entry.key_file.unlink(missing_ok=True)
        os.replace(tmp_path, entry.artifact)
    return names


def _load(backend: str, entry: CacheEntry, input_names: list[str], threads: int | None) -> Any:
    if backend == "onnxruntime":
        from rtdecode.backends.ort import OrtRunner

        return OrtRunner(entry.artifact, threads=threads)
    if backend == "tensorrt":
        from rtdecode.backends.tensorrt import TensorRTRunner

        return TensorRTRunner(entry.artifact.read_bytes())
    from rtdecode.backends.tensorrt import TorchTensorRTRunner

    return TorchTensorRTRunner(entry.artifact, input_names, entry.info()["outputs"])


def compile_module(
    module: nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    name: str,
    backend: str = "auto",
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    key_parts: Mapping[str, Any] | None = None,
    *,
    precision: str | None = None,
    dynamic_batch: bool = False,
    max_batch: int = 64,
    threads: int | None = None,
    rebuild: bool = False,
    calibration: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
) -> Runner:
    """A runner of ``module`` on ``backend``, built or loaded from the cache.

    Parameters
    ----------
    module
        The model (CPU, float32); called as ``module(**inputs)``; its output is a tensor, a tuple
        or a dict of tensors (dict keys become the output names).
    example_inputs
        ``{forward parameter name: tensor}`` with the shapes the engine will run.
    name
        Model name (file prefix in the cache, e.g. ``"denoiser-student"``).
    backend
        ``auto``, ``torch``, ``onnxruntime``, ``tensorrt`` or ``torch-tensorrt``
        (:func:`~rtdecode.backends.choice.resolve_backend`).
    cache_dir
        The build cache directory.
    key_parts
        Extra key fields, e.g. ``{"bundle": bundle_digest}``.
    precision
        ``fp32``, ``fp16`` or ``int8``; default ``fp32`` on onnxruntime (fp16 is slower on
        CPUs), ``fp16`` on TensorRT and torch-tensorrt. ``int8`` (onnxruntime only): static
        QDQ quantization (:mod:`rtdecode.backends.quantize`), which needs ``calibration``.
    dynamic_batch
        Let axis 0 vary (1 … ``max_batch``) instead of fixing every shape.
    max_batch
        Upper bound of the batch axis when dynamic.
    threads
        onnxruntime intra-op threads (``None``: all cores this process may use).
    rebuild
        Build even when a valid entry exists.
    calibration
        For ``int8``: returns the feed dicts ``{input name: array}`` whose activation ranges
        the quantized graph uses (called only when the engine is built; its identity belongs in
        ``key_parts``).

    Returns
    -------
    Runner
        ``runner(**inputs) -> {name: tensor}``; outputs on the inputs' device.

    Raises
    ------
    BackendUnavailableError
        When the backend cannot run here.
    TypeError
        When the example inputs do not match ``module.forward``.
    ValueError
        For ``int8`` on another backend than onnxruntime, or without ``calibration``.
    """
    backend = resolve_backend(backend)
    if precision == "int8" and (backend != "onnxruntime" or calibration is None):
        raise ValueError(
            f"int8 engines are built for onnxruntime with calibration inputs (backend {backend!r}, "
            f"calibration {'given' if calibration else 'missing'})"
        )
    module.eval()
    inputs = {k: torch.as_tensor(v) for k, v in example_inputs.items()}
    _check_inputs(module, inputs)
    if backend == "torch":
        with torch.no_grad():
            names = output_names(module(**inputs))
        return Runner(TorchRunner(module, list(inputs), names), name)
    precision = precision or ("fp16" if backend in _GPU else "fp32")
    key = engine_key(module, inputs, name, backend, precision, dynamic_batch, max_batch, key_parts)
    entry = entry_for(cache_dir, key, _EXT[backend])
    reason = "rebuild requested" if rebuild else entry.check()
    if reason is not None:
        log.info("building %s on %s (%s)", name, backend, reason)
        t0 = time.perf_counter()
        names = _build(backend, module, inputs, entry, precision, dynamic_batch, max_batch, calibration)
        seconds = time.perf_counter() - t0
        entry.commit({"inputs": list(inputs), "outputs": names, "build_seconds": round(seconds, 2)})
        log.info("built %s on %s in %.1f s → %s", name, backend, seconds, entry.artifact)
    impl = _load(backend, entry, list(inputs), threads)
    return Runner(impl, name, entry, built=reason is not None, reason=reason or "")
