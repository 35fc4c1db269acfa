"""onnxruntime's graph forms: fused contrib kernels and transpose-light layouts in exported graphs.

Why (measured in ``docs/backends.md``)
    The exporter decomposes diffusers' attention into three projections, four head-split
    transposes and reshapes, a scaled MatMul, Softmax, MatMul and a transpose back, and the
    exact GELU into Div, Erf, Add, Mul, Mul. onnxruntime's optimiser does not fuse either
    pattern as exported, and on two cores these small, poorly threaded kernels — transposes
    above all — are a large part of a denoiser call. onnxruntime ships fused CPU kernels for
    both: ``com.microsoft.MultiHeadAttention`` (inputs ``(B, S, heads × head_dim)``: no
    transposes) and ``com.microsoft.Gelu`` (the erf form). Two more exact rewrites remove work
    the exported graph does for nothing: GEGLU's one projection followed by a Split (a copy)
    becomes two projections, and the temporal transformer's 5-D input permute (onnxruntime's
    generic N-D transpose: 170 µs of a 12 ms call) becomes a group norm computed in place and
    one batched 2-D transpose; ``pixel_unshuffle`` becomes SpaceToDepth and a block swap instead
    of a 6-D transpose.

How
    :func:`ort_fusions` temporarily rewrites a module (restored on exit): every diffusers
    :class:`~diffusers.models.attention_processor.Attention` whose configuration the fused kernel
    covers (no attention mask, no norms inside attention, no residual connection or output
    rescaling) gets :class:`FusedAttnProcessor`, which calls the custom torch operator
    ``rtdecode::attention`` — eager, exactly ``scaled_dot_product_attention`` with the head
    split and merge; every ``GEGLU`` and ``TransformerTemporalModel`` gets the forward above.
    Each computes what diffusers computes (tested to float rounding). :func:`translations` is
    the exporter's ``custom_translation_table``: ``rtdecode::attention`` becomes
    ``MultiHeadAttention`` and ``aten::gelu`` ``Gelu`` (tanh form: ``FastGelu``). Contrib
    operators exist only in onnxruntime, so these graphs are built for the onnxruntime backend;
    TensorRT builds from the plain export and fuses attention itself.

Operator references: https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md
(``com.microsoft.MultiHeadAttention``, ``com.microsoft.Gelu``, ``com.microsoft.FastGelu``) and the
exporter's custom translation tables:
https://pytorch.org/tutorials/beginner/onnx/onnx_registry_tutorial.html
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DOMAIN", "VERSION", "FusedAttnProcessor", "ort_fusions", "translations"]

#: The contrib operators' ONNX domain.
DOMAIN = "com.microsoft"
#: Version of the forms :func:`ort_fusions` exports (part of the engine cache key: a change rebuilds).
VERSION = 2


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

    Only for modules :func:`ort_fusions` found fusable; inputs are ``(B, S, C)`` tokens (what
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


def _geglu_forward(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """diffusers ``GEGLU``: the projection's two halves as two projections (no Split copy)."""
    w_out, w_gate = self.proj.weight.chunk(2, dim=0)
    b_out, b_gate = self.proj.bias.chunk(2, dim=0) if self.proj.bias is not None else (None, None)
    return F.linear(hidden_states, w_out, b_out) * self.gelu(F.linear(hidden_states, w_gate, b_gate))


def _temporal_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    timestep: torch.Tensor | None = None,
    class_labels: torch.Tensor | None = None,
    num_frames: int = 1,
    cross_attention_kwargs: dict[str, Any] | None = None,
    return_dict: bool = True,
) -> Any:
    """diffusers ``TransformerTemporalModel`` without its 5-D permutes.

    diffusers permutes ``(B, F, C, H, W)`` to ``(B, C, F, H, W)`` for the group norm and then to
    ``(B·H·W, F, C)`` tokens. Here the group norm (statistics per group of channels over frames
    and positions) is computed in the ``(B, F, C, H·W)`` layout, and the tokens are one batched
    2-D transpose of ``(B, F·C, H·W)``; the way back likewise.
    """
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput

    bf, c, h, w = hidden_states.shape
    b, f, norm = bf // num_frames, num_frames, self.norm
    x = hidden_states.reshape(b, f, norm.num_groups, c // norm.num_groups, h * w)
    mean = x.mean(dim=(1, 3, 4), keepdim=True)
    var = (x - mean).square().mean(dim=(1, 3, 4), keepdim=True)
    x = ((x - mean) * torch.rsqrt(var + norm.eps)).reshape(b, f, c, h * w)
    x = x * norm.weight.view(1, 1, c, 1) + norm.bias.view(1, 1, c, 1)
    x = self.proj_in(x.reshape(b, f * c, h * w).transpose(1, 2).reshape(b * h * w, f, c))
    for block in self.transformer_blocks:
        x = block(
            x,
            encoder_hidden_states=encoder_hidden_states,
            timestep=timestep,
            cross_attention_kwargs=cross_attention_kwargs,
            class_labels=class_labels,
        )
    x = self.proj_out(x).reshape(b, h * w, f * c).transpose(1, 2).reshape(bf, c, h, w)
    out = x + hidden_states
    return TransformerTemporalModelOutput(sample=out) if return_dict else (out,)


def _temporal_fusable(m: nn.Module) -> bool:
    norm = getattr(m, "norm", None)
    return isinstance(norm, nn.GroupNorm) and norm.affine


def _rewrites() -> list[tuple[type, Callable[[nn.Module], bool], str, Callable[[nn.Module], Any]]]:
    """(module class, applies to this instance?, attribute, its new value for the instance) of
    :func:`ort_fusions`."""
    from diffusers.models.activations import GEGLU
    from diffusers.models.attention_processor import Attention
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    def method(fn: Callable) -> Callable[[nn.Module], Any]:
        return lambda m: types.MethodType(fn, m)

    return [
        (Attention, _fusable, "processor", lambda m: FusedAttnProcessor()),
        (GEGLU, lambda m: True, "forward", method(_geglu_forward)),
        (TransformerTemporalModel, _temporal_fusable, "forward", method(_temporal_forward)),
    ]


@contextlib.contextmanager
def ort_fusions(module: nn.Module) -> Iterator[dict[str, int]]:
    """Within the block, ``module``'s diffusers blocks take onnxruntime's graph forms (module doc).

    Yields
    ------
    dict
        How many modules of each class were rewritten.
    """
    _missing = object()
    done: list[tuple[nn.Module, str, Any]] = []
    counts: dict[str, int] = {}
    try:
        for cls, applies, attr, value in _rewrites():
            for m in module.modules():
                if isinstance(m, cls) and applies(m):
                    # The instance's own value (a processor) comes back; one set on it only (a
                    # forward, which lives on the class) goes again.
                    done.append((m, attr, m.__dict__.get(attr, _missing)))
                    setattr(m, attr, value(m))
                    counts[cls.__name__] = counts.get(cls.__name__, 0) + 1
        yield counts
    finally:
        for m, attr, old in reversed(done):
            if old is _missing:
                delattr(m, attr)
            else:
                setattr(m, attr, old)


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

    return {
        torch.ops.rtdecode.attention.default: attention_onnx,
        torch.ops.aten.gelu.default: gelu_onnx,
        torch.ops.aten.pixel_unshuffle.default: _pixel_unshuffle_onnx,
    }


def _pixel_unshuffle_onnx(x: Any, downscale_factor: int) -> Any:
    """``pixel_unshuffle`` of a ``(N, C, H, W)`` tensor as SpaceToDepth and a channel-block swap.

    SpaceToDepth orders the output channels (block row, block column, channel); torch orders
    them (channel, block row, block column). Swapping two axes of ``(N, r², C, H·W/r²)`` fixes
    the order — a transpose onnxruntime does as block copies, unlike the exporter's 6-D
    ``(N, C, H/r, r, W/r, r)`` transpose.
    """
    from onnxscript import opset18 as op

    r = int(downscale_factor)
    c, h, w = (int(d) for d in x.shape[-3:])
    y = op.SpaceToDepth(x, blocksize=r)
    y = op.Reshape(y, op.Constant(value_ints=[-1, r * r, c, (h // r) * (w // r)]))
    y = op.Transpose(y, perm=[0, 2, 1, 3])
    return op.Reshape(y, op.Constant(value_ints=[-1, c * r * r, h // r, w // r]))
