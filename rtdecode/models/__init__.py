"""Neural networks of the engine and the helpers every model shares.

Convention
----------
Every model class of the project

- holds a JSON-able ``config: dict`` attribute with everything its constructor needs, and
- has a ``from_config(config) -> Model`` classmethod that rebuilds an untrained instance,

so that a model is stored as its config (in a manifest, JSON) plus a flat dict of numpy tensors
(in safetensors, under a prefix such as ``"ae."``) — never pickled. :func:`module_tensors`
writes such a dict and :func:`load_module` reads it back (strictly: a missing, unexpected or
misshapen tensor is an error).

Example
-------
>>> from torch import nn
>>> net = nn.Linear(2, 3)
>>> tensors = module_tensors(net, "head.")
>>> sorted(tensors)
['head.bias', 'head.weight']
>>> load_module(nn.Linear(2, 3), tensors, "head.")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["count_gflop", "count_parameters", "load_module", "module_tensors"]


def module_tensors(
    module: nn.Module, prefix: str = "", dtype: np.dtype | None = None
) -> dict[str, np.ndarray]:
    """A module's state dict as numpy arrays, keys prefixed with ``prefix``.

    Parameters
    ----------
    module
        Any module (parameters and persistent buffers are included).
    prefix
        Prepended verbatim to every key (include the separator, e.g. ``"ae."``).
    dtype
        If given, floating-point tensors are cast to it (e.g. ``np.float16`` for storage);
        integer and boolean buffers keep their type.

    Returns
    -------
    dict
        ``{prefix + name: contiguous numpy array}``.
    """
    out: dict[str, np.ndarray] = {}
    for name, value in module.state_dict().items():
        arr = value.detach().cpu().contiguous().numpy().copy()
        if dtype is not None and np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(dtype)
        out[prefix + name] = arr
    return out


def load_module(module: nn.Module, tensors: Mapping[str, np.ndarray], prefix: str = "") -> None:
    """Load the tensors under ``prefix`` into ``module`` (strict; cast to the module's dtypes).

    Parameters
    ----------
    module
        The module to fill (built from its config).
    tensors
        A flat dict such as :func:`module_tensors` returns; keys without the prefix are ignored.
    prefix
        The prefix used when the tensors were written.

    Raises
    ------
    KeyError
        When a tensor the module needs is missing, or the dict has extra tensors under the prefix.
    ValueError
        When a tensor's shape differs from the module's.
    """
    own = module.state_dict()
    given = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(given))
    extra = sorted(set(given) - set(own))
    if missing or extra:
        raise KeyError(f"load_module({prefix!r}): missing {missing[:5]}, unexpected {extra[:5]}")
    state = {}
    for name, ref in own.items():
        arr = np.asarray(given[name])
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(
                f"load_module: {prefix}{name} has shape {arr.shape}, expected {tuple(ref.shape)}"
            )
        state[name] = torch.from_numpy(np.ascontiguousarray(arr)).to(ref.dtype)
    module.load_state_dict(state, strict=True)


def count_gflop(fn: Callable[[], Any]) -> float:
    """GFLOP that ``fn()`` runs (torch's FLOP counter; without autograd)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())
