"""onnxruntime's fused CPU kernels in exported graphs: attention and GELU as contrib operators.

Why (measured in ``docs/backends.md``)
    The exporter decomposes diffusers' attention into three projections, four head-split
    transposes and reshapes, a scaled MatMul, Softmax, MatMul and a transpose back, and the
    exact GELU into Div, Erf, Add, Mul, Mul. onnxruntime's optimiser does not fuse either
    pattern as exported, and on two cores these small, poorly threaded kernels — transposes
    above all — are a large part of a denoiser call. onnxruntime ships fused CPU kernels for
    both: ``com.microsoft.MultiHeadAttention`` (inputs ``(B, S, heads × head_dim)``: no
    transposes) and ``com.microsoft.Gelu`` (the erf form).

How
    :func:`contrib_ops` swaps every diffusers :class:`~diffusers.models.attention_processor.Attention`
    whose configuration the fused kernel covers (no attention mask, no norms inside attention,
    no residual connection or output rescaling) to :class:`FusedAttnProcessor`, which calls the
    custom torch operator ``rtdecode::attention`` — eager, it is exactly
    ``scaled_dot_product_attention`` with the head split and merge, so the module computes what
    it computed before — and restores the original processors afterwards.
    :data:`TRANSLATIONS` is the exporter's ``custom_translation_table``: it turns
    ``rtdecode::attention`` into ``MultiHeadAttention`` and ``aten::gelu`` into ``Gelu`` (tanh
    form: ``FastGelu``). Contrib operators exist only in onnxruntime, so these graphs are built
    for the onnxruntime backend; TensorRT builds from the plain export and fuses attention itself.

Operator references: https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md
(``com.microsoft.MultiHeadAttention``, ``com.microsoft.Gelu``, ``com.microsoft.FastGelu``) and the
exporter's custom translation tables:
https://pytorch.org/tutorials/beginner/onnx/onnx_registry_tutorial.html
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DOMAIN", "FusedAttnProcessor", "contrib_ops", "translations"]

#: The contrib operators' ONNX domain.
DOMAIN = "com.microsoft"


@torch.library.custom_op("rtdecode::attention", mutates_args=())
def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot-product attention on ``(B, S, heads × head_dim)`` projections.

    Eager: heads split, :func:`torch.nn.functional.scaled_dot_product_attention`, heads merged —
    the computation of diffusers' ``AttnProcessor2_0`` between its projections. Exported:
    ``com.microsoft.MultiHeadAttention``.
    """
    b, s, d = query.shape

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(query), split(key), split(value))
    return out.transpose(1, 2).reshape(b, s, d)


@attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    return torch.empty_like(query)


def _fusable(attn: nn.Module) -> bool:
    """Whether the fused kernel computes exactly what ``attn`` (a diffusers Attention) does."""
    return (
        getattr(attn, "spatial_norm", None) is None
        and getattr(attn, "group_norm", None) is None
        and getattr(attn, "norm_q", None) is None
        and getattr(attn, "norm_k", None) is None
        and not getattr(attn, "norm_cross", None)
        and not getattr(attn, "residual_connection", False)
        and float(getattr(attn, "rescale_output_factor", 1.0)) == 1.0
        and float(getattr(attn, "scale", 0.0)) == (attn.inner_dim // attn.heads) ** -0.5
    )


class FusedAttnProcessor:
    """A diffusers attention processor that runs the attention core as ``rtdecode::attention``.

    Only for modules :func:`contrib_ops` found fusable; inputs are ``(B, S, C)`` tokens (what
    diffusers' transformer blocks pass).
    """

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError("the fused attention takes (B, S, C) tokens without a mask")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        out = torch.ops.rtdecode.attention(q, k, v, attn.heads)
        return attn.to_out[1](attn.to_out[0](out))


@contextlib.contextmanager
def contrib_ops(module: nn.Module) -> Iterator[int]:
    """Within the block, ``module``'s fusable diffusers attentions use :class:`FusedAttnProcessor`.

    Yields
    ------
    int
        How many attention modules were swapped.
    """
    from diffusers.models.attention_processor import Attention

    swapped = [(m, m.processor) for m in module.modules() if isinstance(m, Attention) and _fusable(m)]
    try:
        for m, _ in swapped:
            m.processor = FusedAttnProcessor()
        yield len(swapped)
    finally:
        for m, processor in swapped:
            m.processor = processor


def translations() -> dict[Any, Any]:
    """The exporter's ``custom_translation_table`` for the contrib operators (module docstring)."""
    import onnxscript
    from onnx.defs import OpSchema

    opset = onnxscript.values.Opset(DOMAIN, 1)

    def op(name: str, inputs: list[str], attributes: dict[str, OpSchema.AttrType]) -> Any:
        # onnx itself does not register the contrib schemas (onnxruntime does): declare them.
        schema = OpSchema(
            name,
            DOMAIN,
            1,
            inputs=[OpSchema.FormalParameter(i, "T") for i in inputs],
            outputs=[OpSchema.FormalParameter("output", "T")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
            attributes=[OpSchema.Attribute(a, t, a) for a, t in attributes.items()],
        )
        return onnxscript.values.Op(opset, name, schema)

    mha = op("MultiHeadAttention", ["query", "key", "value"], {"num_heads": OpSchema.AttrType.INT})
    gelu, fast_gelu = op("Gelu", ["X"], {}), op("FastGelu", ["X"], {})

    def attention_onnx(query: Any, key: Any, value: Any, heads: int) -> Any:
        return mha(query, key, value, num_heads=heads)

    def gelu_onnx(x: Any, approximate: str = "none") -> Any:
        return fast_gelu(x) if approximate == "tanh" else gelu(x)

    return {torch.ops.rtdecode.attention.default: attention_onnx, torch.ops.aten.gelu.default: gelu_onnx}
