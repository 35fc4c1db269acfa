"""GPU engines: TensorRT (from the exported ONNX graph) and torch-tensorrt (``ir="dynamo"``).

This module imports without TensorRT: ``tensorrt`` and ``torch_tensorrt`` are imported inside
the functions that need them (:func:`rtdecode.backends.choice.resolve_backend` refuses these
backends first, with a message that says what is missing).

TensorRT 11 (written against the current documentation)
    * Networks are always strongly typed: the precision of every layer follows from the
      graph's tensor types, and the weak-typing builder flags (``BuilderFlag.FP16``, ``INT8``,
      ...) are removed. So the fp16 path is an fp16 ONNX graph (the model's half copy, exported
      by :func:`rtdecode.backends.export.export_onnx` with ``precision="fp16"``), and no
      precision flag is set on the builder. ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is
      deprecated and ignored in 11.x; it is passed only to a TensorRT 10 library, where it is
      still needed for the same behaviour. ``EXPLICIT_BATCH`` is gone (always explicit).

      - Migrating from TensorRT 10.x to 11.x (strongly typed networks are now required):
        https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x.html
      - Migrating Python code from 10.x to 11.x (build with a strongly typed network):
        https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/migration/tensorrt-10x-to-11x-python-api.html
      - Removed Python APIs in 11.x (``BuilderFlag.FP16`` → strong typing):
        https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
      - ``NetworkDefinitionCreationFlag`` (STRONGLY_TYPED deprecated, ignored in 11.0):
        https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Builder.html
    * Build: ``Builder`` → ``create_network`` → ``OnnxParser.parse_from_file`` → builder config
      with a workspace limit and one optimisation profile (``min = opt = max`` for static
      inputs; ``1 … max_batch`` on axis 0 with ``opt`` at the example's batch for a dynamic
      batch) → ``build_serialized_network`` → the plan is cached.

      - Python API documentation (build phase, ONNX parser, serialisation, inference):
        https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/python-api-docs.html
      - ``IOptimizationProfile.set_shape``:
        https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/OptimizationProfile.html
    * Run with the tensor-address API: ``Runtime.deserialize_cuda_engine``,
      ``create_execution_context``; per call ``set_input_shape`` and ``set_tensor_address`` for
      every I/O tensor (named tensors: ``num_io_tensors``, ``get_tensor_name``,
      ``get_tensor_mode``), then ``execute_async_v3(stream)`` on a torch CUDA stream.

      - ``IExecutionContext``:
        https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
      - Named-tensor I/O and enqueueV3 (migration patterns):
        https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/api/migration/tensorrt-8x-to-10x-python-api-patterns.html
    * Plans are tied to the GPU model and the TensorRT version; the cache key holds both
      (:mod:`rtdecode.backends.cache`).

torch-tensorrt
    ``torch_tensorrt.compile(module, ir="dynamo", arg_inputs=...)`` (torch.export capture, then
    ``torch_tensorrt.dynamo.compile``) with explicit typing (the default in current releases;
    ``enabled_precisions`` is deprecated), so the fp16 variant compiles the same half-copy
    wrapper the ONNX path exports. Saved with ``torch_tensorrt.save(..., arg_inputs=...)`` as an
    ExportedProgram and loaded with ``torch.export.load(path).module()``.

    - Compiling exported programs (settings, ``use_explicit_typing``):
      https://docs.pytorch.org/TensorRT/user_guide/compilation/dynamo_export.html
    - ``torch_tensorrt.dynamo.compile`` reference: https://docs.pytorch.org/TensorRT/py_api/dynamo.html
    - Saving models compiled with Torch-TensorRT:
      https://docs.pytorch.org/TensorRT/user_guide/runtime_performance/saving_models.html
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["TensorRTRunner", "TorchTensorRTRunner", "build_plan", "compile_torch_tensorrt"]

WORKSPACE_BYTES = 2 << 30


def _trt() -> Any:
    import tensorrt as trt

    return trt


def _torch_dtype(trt_dtype: Any) -> torch.dtype:
    trt = _trt()
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.UINT8: torch.uint8,
    }
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    return table[trt_dtype]


def build_plan(
    onnx_path: str | Path,
    shapes: Mapping[str, Sequence[int]],
    dynamic_batch: bool = False,
    max_batch: int = 64,
    workspace: int = WORKSPACE_BYTES,
) -> bytes:
    """Build a serialized TensorRT engine (plan) from an ONNX file.

    Parameters
    ----------
    onnx_path
        The graph (fp16 graph for an fp16 engine: the network is strongly typed).
    shapes
        The example input shapes: the profile's ``opt`` (and ``min``/``max`` for static shapes).
    dynamic_batch
        Axis 0 ranges over ``1 … max_batch`` in the profile.
    max_batch
        Upper bound of the batch axis.
    workspace
        Builder workspace memory limit in bytes.

    Returns
    -------
    bytes
        The plan.

    Raises
    ------
    RuntimeError
        When the parser or the builder fails (with the parser's errors).
    """
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    major = int(trt.__version__.split(".")[0])
    if major < 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # 10.x: opt in
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        opt = tuple(int(s) for s in shapes[name])
        lo = (1, *opt[1:]) if dynamic_batch else opt
        hi = (max(max_batch, opt[0]), *opt[1:]) if dynamic_batch else opt
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    return bytes(plan)


class TensorRTRunner:
    """Runs a TensorRT plan: ``runner(**inputs) -> {name: tensor}`` with the tensor-address API.

    Inputs may live on the CPU or the GPU; outputs are returned on the device of the first
    input (copies, safe to keep). Output buffers are allocated once per input-shape signature.

    Parameters
    ----------
    plan
        A serialized engine (from :func:`build_plan`).
    device
        The CUDA device the plan was built for.
    """

    backend = "tensorrt"

    def __init__(self, plan: bytes, device: str | torch.device = "cuda") -> None:
        trt = _trt()
        self.device = torch.device(device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the plan (another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: _torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        self._buffers: dict[tuple, dict[str, torch.Tensor]] = {}
        self.stream = torch.cuda.Stream(device=self.device)

    def __call__(self, **inputs: Any) -> dict[str, torch.Tensor]:
        missing = set(self.input_names) - set(inputs)
        unknown = set(inputs) - set(self.input_names)
        if missing or unknown:
            raise TypeError(f"inputs: missing {sorted(missing)}, unexpected {sorted(unknown)}")
        first = torch.as_tensor(inputs[self.input_names[0]])
        feeds = {}
        for name in self.input_names:
            t = torch.as_tensor(inputs[name]).to(self.device, self._dtypes[name], non_blocking=True)
            feeds[name] = t.contiguous()
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, feeds[name].data_ptr())
        signature = tuple(tuple(t.shape) for t in feeds.values())
        if signature not in self._buffers:
            self._buffers[signature] = {
                n: torch.empty(
                    tuple(self.context.get_tensor_shape(n)), dtype=self._dtypes[n], device=self.device
                )
                for n in self.output_names
            }
        outputs = self._buffers[signature]
        for name, buf in outputs.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        # The inputs were written on torch's current stream; the engine runs on its own stream.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log)")
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return {k: v.to(first.device, copy=True) for k, v in outputs.items()}


class _Positional(nn.Module):
    """Positional tensors in, for torch-tensorrt (its inputs are a flat list of tensors)."""

    def __init__(self, graph: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.net = graph  # not "graph": that name is an fx.GraphModule attribute after export
        self.names = list(names)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.net(dict(zip(self.names, args)))


def compile_torch_tensorrt(
    graph: nn.Module, example_inputs: Mapping[str, torch.Tensor], path: str | Path, device: str = "cuda"
) -> None:
    """Compile a :class:`~rtdecode.backends.export.GraphModule` with torch-tensorrt and save it.

    Parameters
    ----------
    graph
        The graph wrapper (dict of inputs in, tuple out; its precision is already set).
    example_inputs
        ``{name: tensor}`` (static shapes).
    path
        Where the ExportedProgram goes (``.pt2``, the archive name ``torch.export.load`` expects).
    device
        The CUDA device.
    """
    import inspect

    import torch_tensorrt

    module = _Positional(graph, list(example_inputs)).to(device).eval()
    args = [v.to(device) for v in example_inputs.values()]
    options: dict[str, Any] = {}
    if "use_explicit_typing" in inspect.signature(torch_tensorrt.dynamo.compile).parameters:
        options["use_explicit_typing"] = True  # default in current releases; older ones need it said
    with torch.no_grad():
        compiled = torch_tensorrt.compile(module, ir="dynamo", arg_inputs=args, **options)
    torch_tensorrt.save(compiled, str(path), output_format="exported_program", arg_inputs=args)


class TorchTensorRTRunner:
    """Runs a saved torch-tensorrt ExportedProgram: ``runner(**inputs) -> {name: tensor}``.

    Parameters
    ----------
    path
        The ``.pt2`` file from :func:`compile_torch_tensorrt`.
    output_names
        Names of the flat outputs, in order.
    device
        The CUDA device.
    """

    backend = "torch-tensorrt"

    def __init__(
        self, path: str | Path, input_names: Sequence[str], output_names: Sequence[str], device: str = "cuda"
    ) -> None:
        import torch_tensorrt  # noqa: F401  (registers the TensorRT runtime ops the program calls)

        self.device = torch.device(device)
        self.module = torch.export.load(str(path)).module()
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    @torch.no_grad()
    def __call__(self, **inputs: Any) -> dict[str, torch.Tensor]:
        first = torch.as_tensor(inputs[self.input_names[0]])
        out = self.module(*[torch.as_tensor(inputs[k]).to(self.device) for k in self.input_names])
        return {k: v.to(first.device) for k, v in zip(self.output_names, out)}
