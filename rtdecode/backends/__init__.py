"""Compiled engines: torch eager, onnxruntime (CPU), TensorRT and torch-tensorrt (GPU).

One backend choice (:func:`resolve_backend`: ``auto`` → TensorRT when CUDA and TensorRT are
present, else onnxruntime), one build cache (:mod:`rtdecode.backends.cache`, default
``cache/engines/``), one runner interface (:func:`compile_module` → :class:`Runner`,
``runner(**inputs) -> {name: tensor}`` on every backend), and one call per stage to switch it
(:func:`~rtdecode.backends.models.compile_decoder_stage`,
:func:`~rtdecode.backends.models.compile_render_stage`).

Submodules: ``choice`` (the backend choice, versions, device), ``export`` (ONNX), ``ort`` (onnxruntime
sessions), ``quantize`` (int8 onnxruntime engines, calibrated on simulated clips), ``tensorrt``
(TensorRT and torch-tensorrt; imports without them), ``cache``,
``compile`` (:func:`compile_module`), ``models`` (the engine's graphs and stage stand-ins),
``cli`` (``rtdecode engines build|list``). See ``docs/backends.md``.

Example
-------
>>> import torch
>>> from torch import nn
>>> from rtdecode.backends import compile_module
>>> runner = compile_module(nn.Linear(4, 2), {"input": torch.zeros(1, 4)}, "tiny", "torch")
>>> runner(input=torch.ones(1, 4))["output"].shape
torch.Size([1, 2])
"""

from __future__ import annotations

from rtdecode.backends.cache import DEFAULT_CACHE_DIR, CacheEntry, list_entries
from rtdecode.backends.choice import (
    BACKENDS,
    BackendUnavailableError,
    backend_version,
    cuda_available,
    device_name,
    resolve_backend,
)
from rtdecode.backends.compile import Runner, compile_module, engine_key
from rtdecode.backends.export import check_onnx, export_onnx, module_digest

__all__ = [
    "BACKENDS",
    "DEFAULT_CACHE_DIR",
    "BackendUnavailableError",
    "CacheEntry",
    "Runner",
    "backend_version",
    "check_onnx",
    "compile_module",
    "cuda_available",
    "device_name",
    "engine_key",
    "export_onnx",
    "list_entries",
    "module_digest",
    "resolve_backend",
]
