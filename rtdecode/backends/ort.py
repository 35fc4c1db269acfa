"""onnxruntime on the CPU: session settings and a runner bound to preallocated buffers.

Settings (https://onnxruntime.ai/docs/performance/tune-performance/threading.html)
    Explicit ``intra_op_num_threads`` (default :func:`default_threads`) and one inter-op thread
    with sequential execution (the graphs are chains; parallel branches do not pay on 2 cores);
    ``session.intra_op.allow_spinning = "0"`` (and inter-op) so idle pool threads sleep instead of
    spinning — a spinning pool steals the cores the receiver, preprocessing and the other
    sessions need; graph optimisation ``ORT_ENABLE_ALL`` (constant folding, node fusions,
    layout transformations). Spinning during a run only (``allow_spinning = "1"`` with
    ``session.force_spinning_stop = "1"``) was measured and not kept: at TR 1 s it cut the
    render p50 from 90 to 74 ms, but in overload (TR 0.1 s) the spinning pool took the cores
    preprocessing needs and the engine dropped 64 TRs instead of 16–26 (see docs/backends.md).
IO binding (https://onnxruntime.ai/docs/performance/tune-performance/iobinding.html)
    ``io_binding=True`` binds inputs zero-copy to the caller's (contiguous) tensors and outputs
    to buffers preallocated once per input-shape signature (output shapes from the graph,
    symbolic axes resolved from the inputs). On the CPU provider it does not help: ``run``
    already reads contiguous numpy inputs in place and allocates outputs from its arena.
    Measured (1 thread, 40 calls, median): denoiser 43.6 ms bound vs 43.7 ms ``run``; autoencoder
    decode 56–60 vs 51 ms; token projection 0.15 vs 0.08 ms. So it is off by default and kept
    for device providers, where it saves host↔device copies. Bound outputs are returned as
    copies unless ``copy_outputs=False`` (callers keep a TR's outputs while the next TR runs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["OrtRunner", "default_threads", "session_options"]

_ORT_TYPES = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(double)": torch.float64,
    "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32,
    "tensor(bool)": torch.bool,
    "tensor(uint8)": torch.uint8,
}
_NUMPY = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.float64: np.float64,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.bool: np.bool_,
    torch.uint8: np.uint8,
}


def default_threads() -> int:
    """Intra-op threads per session: every core the process may use (``os.sched_getaffinity``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None) -> Any:
    """``onnxruntime.SessionOptions`` as the module docstring describes.

    Parameters
    ----------
    threads
        Intra-op threads (``None``: :func:`default_threads`).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or default_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only: the engine's own log says what was built
    return so


class OrtRunner:
    """Runs an ONNX graph on onnxruntime's CPU provider: ``runner(**inputs) -> {name: tensor}``.

    Parameters
    ----------
    model
        Path of the ``.onnx`` file (or its bytes).
    threads
        Intra-op threads (``None``: :func:`default_threads`).
    io_binding
        Bind inputs and preallocated outputs (see the module docstring; off: plain ``run``).
    copy_outputs
        With ``io_binding``: return copies of the output buffers (safe to keep) rather than the
        buffers themselves (valid until the next call).

    Notes
    -----
    Not thread-safe: one runner serves one thread at a time (the engine runs its models on one
    executor thread).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        model: str | Path | bytes,
        threads: int | None = None,
        io_binding: bool = False,
        copy_outputs: bool = True,
    ) -> None:
        import onnxruntime as ort

        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(
            source, session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.threads = self.session.get_session_options().intra_op_num_threads
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._in_types = {i.name: _ORT_TYPES.get(i.type, torch.float32) for i in self.session.get_inputs()}
        self._in_shapes = {i.name: list(i.shape) for i in self.session.get_inputs()}
        self._outs = [(o.name, list(o.shape), _ORT_TYPES.get(o.type)) for o in self.session.get_outputs()]
        self._binding = self.session.io_binding()
        self._buffers: dict[tuple, dict[str, torch.Tensor]] = {}
        self.io_binding = io_binding
        self.copy_outputs = copy_outputs

    def _prepare(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        unknown = set(inputs) - set(self.input_names)
        missing = set(self.input_names) - set(inputs)
        if unknown or missing:
            raise TypeError(f"inputs: missing {sorted(missing)}, unexpected {sorted(unknown)}")
        out = {}
        for name in self.input_names:
            t = torch.as_tensor(inputs[name]).detach()
            if t.device.type != "cpu" or t.dtype != self._in_types[name]:
                t = t.to("cpu", self._in_types[name])
            out[name] = t.contiguous()
        return out

    def _output_buffers(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Preallocated outputs for these input shapes (``None`` if a shape cannot be resolved)."""
        signature = tuple(tuple(t.shape) for t in feeds.values())
        if signature in self._buffers:
            return self._buffers[signature]
        symbols: dict[str, int] = {}
        for name, t in feeds.items():
            for dim, size in zip(self._in_shapes[name], t.shape):
                if isinstance(dim, str):
                    symbols[dim] = int(size)
        buffers = {}
        for name, shape, dtype in self._outs:
            dims = [d if isinstance(d, int) else symbols.get(d) for d in shape]
            if dtype is None or any(d is None for d in dims):
                return None
            buffers[name] = torch.empty(dims, dtype=dtype)
        self._buffers[signature] = buffers
        return buffers

    def __call__(self, **inputs: Any) -> dict[str, torch.Tensor]:
        feeds = self._prepare(inputs)
        buffers = self._output_buffers(feeds) if self.io_binding else None
        if buffers is None:  # onnxruntime returns fresh arrays: safe to keep
            res = self.session.run(None, {k: v.numpy() for k, v in feeds.items()})
            return {k: torch.from_numpy(v) for k, v in zip(self.output_names, res)}
        b = self._binding
        for name, t in feeds.items():
            b.bind_input(name, "cpu", 0, _NUMPY[t.dtype], tuple(t.shape), t.data_ptr())
        for name, buf in buffers.items():
            b.bind_output(name, "cpu", 0, _NUMPY[buf.dtype], tuple(buf.shape), buf.data_ptr())
        self.session.run_with_iobinding(b)
        return {k: v.clone() for k, v in buffers.items()} if self.copy_outputs else dict(buffers)
