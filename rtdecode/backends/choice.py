"""Which backend runs the models: the choice, what each one needs, and what this machine has."""

from __future__ import annotations

import functools
import importlib
import platform
from typing import Any

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "backend_version",
    "cpu_model",
    "cuda_available",
    "device_name",
    "module_available",
    "resolve_backend",
    "stage_precisions",
]

#: Names accepted by ``--backend``.
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt", "torch-tensorrt")

#: Names accepted by ``--precision``.
PRECISION_CHOICES = ("auto", "fp32", "fp16", "int8")

# The importable module behind each compiled backend (torch is always there).
_MODULES = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "torch-tensorrt": "torch_tensorrt"}
_PIP = {
    "onnxruntime": "pip install 'rtdecode[ml]'",
    "tensorrt": "pip install 'rtdecode[gpu]'",
    "torch-tensorrt": "pip install 'rtdecode[gpu]'",
}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that this machine cannot run (the message says what is missing)."""


@functools.cache
def module_available(name: str) -> bool:
    """Whether ``import name`` works (cached; a package that is installed but broken counts as absent)."""
    try:
        importlib.import_module(name)
    except Exception:  # ImportError, or a CUDA library the package cannot load
        return False
    return True


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def device_name() -> str:
    """The GPU model TensorRT engines are built for (``torch.cuda.get_device_name``), or ``"cpu"``."""
    if not cuda_available():
        return "cpu"
    import torch

    return torch.cuda.get_device_name(torch.cuda.current_device())


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` where there is one)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def backend_version(backend: str) -> str:
    """Version string of a backend (for cache keys): e.g. ``"onnxruntime 1.32.0"``.

    TensorRT engines also depend on the TensorRT library under torch-tensorrt, so both
    versions go into its string.
    """
    import torch

    if backend == "torch":
        return f"torch {torch.__version__}"
    if backend == "onnxruntime":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    if backend == "tensorrt":
        import tensorrt

        return f"tensorrt {tensorrt.__version__}"
    if backend == "torch-tensorrt":
        import tensorrt
        import torch_tensorrt

        return f"torch-tensorrt {torch_tensorrt.__version__} (tensorrt {tensorrt.__version__})"
    raise ValueError(f"unknown backend {backend!r}")


def _missing(backend: str) -> list[str]:
    """What ``backend`` needs that this machine lacks (empty: it can run)."""
    import torch

    missing = []
    if backend in ("tensorrt", "torch-tensorrt") and not cuda_available():
        why = (
            f"this torch ({torch.__version__}) is a CPU-only build"
            if torch.version.cuda is None
            else "torch sees no CUDA device (no GPU, driver or CUDA_VISIBLE_DEVICES)"
        )
        missing.append(f"a CUDA GPU ({why})")
    module = _MODULES.get(backend)
    if module and not module_available(module):
        missing.append(f"the Python package {module!r} ({_PIP[backend]})")
    return missing


def resolve_backend(name: str) -> str:
    """The concrete backend for a ``--backend`` value.

    ``auto`` picks ``tensorrt`` when CUDA and TensorRT are present, else ``onnxruntime``
    (else ``torch`` when even onnxruntime is missing). An explicit choice is checked, never
    replaced by another one.

    Parameters
    ----------
    name
        One of :data:`BACKENDS`.

    Returns
    -------
    str
        ``torch``, ``onnxruntime``, ``tensorrt`` or ``torch-tensorrt``.

    Raises
    ------
    BackendUnavailableError
        When the requested backend cannot run here; the message lists every missing piece.
    ValueError
        For an unknown name.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        if not _missing("tensorrt"):
            return "tensorrt"
        return "onnxruntime" if not _missing("onnxruntime") else "torch"
    missing = _missing(name)
    if missing:
        raise BackendUnavailableError(
            f"backend {name!r} cannot run on this machine: it needs {' and '.join(missing)}. "
            "Use --backend auto (onnxruntime on CPU) or --backend onnxruntime."
        )
    return name


def environment() -> dict[str, Any]:
    """What the backends see here (for ``rtdecode engines list`` and benchmark reports)."""
    out: dict[str, Any] = {"device": device_name(), "cpu": cpu_model()}
    for backend in ("torch", "onnxruntime", "tensorrt", "torch-tensorrt"):
        try:
            out[backend] = backend_version(backend)
        except Exception:
            out[backend] = None
    return out


def stage_precisions(backend: str, precision: str = "auto") -> tuple[str | None, str | None]:
    """The precision of the decode stage's and of the render stage's engines.

    Parameters
    ----------
    backend
        A resolved backend (not ``auto``).
    precision
        ``auto``: int8 render engines on onnxruntime (convolutions quantized, measured in
        docs/backends.md), the backend's default elsewhere (fp16 on GPUs); ``fp32`` / ``fp16``:
        both stages; ``int8``: the render stage (onnxruntime only; the decoder keeps its float
        default, its conditions feed everything after it).

    Returns
    -------
    decoder, render
        Precisions for :func:`~rtdecode.backends.compile_module` (``None``: the backend's default).
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if precision == "auto":
        return None, ("int8" if backend == "onnxruntime" else None)
    if precision == "int8":
        return None, "int8"
    return precision, precision
