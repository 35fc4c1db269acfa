"""ONNX export of the engine's models.

Exporter
    ``torch.export.export(..., strict=False)`` captures the graph and ``torch.onnx.export`` (the
    dynamo-based exporter, the default since torch 2.9; it needs ``onnxscript``) translates and
    optimises it. On the renderer's denoiser (diffusers ResNet, spatial and temporal transformer
    blocks) both exporters give correct graphs, but the dynamo graph is about half the size
    (475 vs 873 nodes: attention and normalisations come out fused) and onnxruntime runs it
    1.6× faster (57 vs 92 ms, 1 thread); the TorchScript exporter is deprecated.
Inputs and outputs
    Models are exported through :class:`GraphModule`, which takes the inputs as one dict (their
    names become the graph's input names), returns a flat tuple (named after the model's
    output dict keys, or ``output`` / ``output_<i>``), and in the ``fp16`` variant casts floating
    inputs to half, runs a half copy of the model and casts floating outputs back to float32.
    So every variant of a model has the same float32 interface; only the arithmetic inside
    differs (TensorRT's strongly typed networks take their precision from the graph).
Shapes
    Static by default: the engine runs one TR at a time and static shapes let onnxruntime and
    TensorRT plan memory and kernels once. ``dynamic_batch=True`` makes axis 0 of every input
    and output symbolic (``batch``); torch.export specialises a size-1 axis, so the example is
    traced at batch 2 in that case.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "OPSET",
    "TOLERANCE",
    "GraphModule",
    "check_onnx",
    "export_onnx",
    "max_difference",
    "module_digest",
    "output_dict",
    "output_names",
    "within_tolerance",
]

#: ONNX opset of exported graphs (≥ 17 for LayerNormalization; 18 is the dynamo exporter's base).
OPSET = 18
PRECISIONS = ("fp32", "fp16")
#: Parity of a compiled model with torch eager: ``max|out - ref| <= atol + rtol * max|ref|`` per
#: output. fp32 engines differ from torch only by operation order and fused kernels (measured
#: ≤ 3e-6 on the engine's models); fp16 graphs by half-precision rounding.
TOLERANCE = {"fp32": (1e-4, 1e-4), "fp16": (1e-2, 1e-2)}


def module_digest(module: nn.Module) -> str:
    """Hash of a module's class, ``config`` attribute and every tensor of its state dict.

    Two modules with the same digest compute the same function, so a cached engine built from
    one can serve the other. Cost: one pass over the weights (~20 ms for the denoiser).
    """
    h = hashlib.sha256(type(module).__qualname__.encode())
    config = getattr(module, "config", None)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, value in module.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def output_names(out: Any) -> list[str]:
    """Names of a model's outputs: dict keys, ``["output"]`` or ``output_<i>`` for a tuple."""
    if isinstance(out, Mapping):
        return [str(k) for k in out]
    if isinstance(out, (tuple, list)):
        return [f"output_{i}" for i in range(len(out))]
    return ["output"]


def output_dict(out: Any, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """A model's output (tensor, tuple or dict) as ``{name: tensor}`` in a fixed order."""
    if isinstance(out, Mapping):
        return {k: out[k] for k in (names or list(out))}
    seq = list(out) if isinstance(out, (tuple, list)) else [out]
    return dict(zip(names or output_names(out), seq))


class GraphModule(nn.Module):
    """The exported form of a model: dict of inputs in, flat tuple out (see the module docstring).

    Parameters
    ----------
    module
        The model (called as ``module(**inputs)``).
    names
        Output names in order (from :func:`output_names` of a reference run).
    precision
        ``"fp32"``, or ``"fp16"`` for a half copy of ``module`` behind float32 inputs/outputs.
    """

    def __init__(self, module: nn.Module, names: Sequence[str], precision: str = "fp32") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.half_ = precision == "fp16"
        self.net = copy.deepcopy(module).half() if self.half_ else module
        self.names = list(names)

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if self.half_:
            inputs = {k: v.half() if v.is_floating_point() else v for k, v in inputs.items()}
        out = output_dict(self.net(**inputs), self.names)
        return tuple(v.float() if self.half_ and v.is_floating_point() else v for v in out.values())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints, diffusers' deprecation warnings and the
    registry's "torchvision is not installed" notices (noise in ``rtdecode engines build``)."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _batch2(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Example inputs with batch ≥ 2 (torch.export specialises a size-1 axis to a constant)."""
    return {k: v.repeat(2, *([1] * (v.dim() - 1))) if v.shape[0] == 1 else v for k, v in inputs.items()}


def _name_batch_axis(model: Any, symbol_of_inputs: set[str]) -> None:
    """Rename the exporter's batch symbol (``s0``, ``s29``, ...) to ``batch`` everywhere."""
    graph = model.graph
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in symbol_of_inputs:
                d.dim_param = "batch"


def export_onnx(
    module: nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    precision: str = "fp32",
    dynamic_batch: bool = False,
    max_batch: int = 64,
    opset: int = OPSET,
    fusions: bool = False,
) -> list[str]:
    """Export ``module(**example_inputs)`` to an ONNX file and check it with ``onnx.checker``.

    Parameters
    ----------
    module
        The model, in eval mode, on the CPU.
    example_inputs
        ``{name: tensor}``; names are ``module.forward``'s parameter names and become the graph's
        input names.
    path
        Where the ``.onnx`` goes (one file, weights inside).
    precision
        ``"fp32"`` or ``"fp16"`` (see :class:`GraphModule`).
    dynamic_batch
        Make axis 0 symbolic (``batch``, 1 … ``max_batch``); otherwise every shape is static.
    max_batch
        Upper bound of the batch axis when dynamic.
    opset
        ONNX opset (≥ 17).
    fusions
        Export onnxruntime's graph forms: fused attention and GELU contrib operators, layouts
        without the large transposes (:mod:`rtdecode.backends.fusions`; onnxruntime only).

    Returns
    -------
    list of str
        The graph's output names.
    """
    import onnx

    from rtdecode.backends.fusions import ort_fusions, translations

    if opset < 17:
        raise ValueError(f"opset must be ≥ 17, got {opset}")
    inputs = {k: torch.as_tensor(v) for k, v in example_inputs.items()}
    with _quiet(), torch.no_grad():
        names = output_names(module(**inputs))
    with ort_fusions(module) if fusions else contextlib.nullcontext():
        table = translations() if fusions else None
        model = _export(module, inputs, names, precision, dynamic_batch, max_batch, opset, table)
    if dynamic_batch:
        symbols = {
            d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim[:1] if d.dim_param
        }
        _name_batch_axis(model, symbols)
    check_onnx(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return names


def _export(
    module: nn.Module,
    inputs: dict[str, torch.Tensor],
    names: list[str],
    precision: str,
    dynamic_batch: bool,
    max_batch: int,
    opset: int,
    translation_table: dict[Any, Any] | None,
) -> Any:
    """torch.export + the dynamo ONNX exporter (with ``translation_table`` as its custom
    translations); the ONNX ModelProto."""
    graph = GraphModule(module, names, precision).eval()
    dynamic_shapes = None
    if dynamic_batch:
        inputs = _batch2(inputs)
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        dynamic_shapes = ({k: {0: batch} for k in inputs},)
    with _quiet(), torch.no_grad():
        program = torch.export.export(graph, (inputs,), dynamic_shapes=dynamic_shapes, strict=False)
        onnx_program = torch.onnx.export(
            program,
            (),
            input_names=list(inputs),
            output_names=names,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
            custom_translation_table=translation_table,
        )
    return onnx_program.model_proto


def max_difference(out: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Largest absolute difference per output (integer outputs: number of differing elements)."""
    res = {}
    for name, r in ref.items():
        o = torch.as_tensor(out[name]).cpu()
        r = torch.as_tensor(r).cpu()
        if r.is_floating_point():
            res[name] = float((o.double() - r.double()).abs().max()) if r.numel() else 0.0
        else:
            res[name] = float((o != r).sum())
    return res


def within_tolerance(
    out: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor], precision: str = "fp32"
) -> bool:
    """Whether every output agrees with the reference within :data:`TOLERANCE` (integers: exactly)."""
    atol, rtol = TOLERANCE[precision]
    diffs = max_difference(out, ref)
    for name, r in ref.items():
        r = torch.as_tensor(r)
        bound = atol + rtol * float(r.abs().max()) if r.is_floating_point() and r.numel() else 0.0
        if diffs[name] > bound:
            return False
    return True


def check_onnx(model: Any) -> None:
    """``onnx.checker.check_model`` with full checks (a path or a ModelProto); raises if invalid."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    onnx.checker.check_model(model, full_check=True)
