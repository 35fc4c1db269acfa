"""Conditions: everything the decoders say about one TR, and how it travels (msgpack).

Arrays are serialised as ``{"__nd__": True, "dtype", "shape", "data"}`` maps so any msgpack
reader can rebuild them; every message carries ``schema`` (:data:`SCHEMA_VERSION`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

import msgpack
import numpy as np

__all__ = ["SCHEMA_VERSION", "Conditions", "pack", "pack_ndarrays", "unpack", "unpack_ndarrays"]

SCHEMA_VERSION = 1
_PLAIN_DTYPE = re.compile(r"[<>|=]?[biufc][0-9]{1,2}")  # e.g. <f4, |u1, |b1, <i8, <c8


def pack_ndarrays(obj: Any) -> Any:
    """msgpack ``default=`` hook: numpy arrays as ``{"__nd__", dtype, shape, data}``.

    Numpy scalars become plain Python numbers; anything else msgpack cannot encode raises
    ``TypeError``.
    """
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("object arrays cannot be packed")
        arr = np.ascontiguousarray(obj)
        return {"__nd__": True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def unpack_ndarrays(obj: dict) -> Any:
    """msgpack ``object_hook=``: the inverse of :func:`pack_ndarrays` (writable arrays).

    Raises
    ------
    ValueError
        If an ``__nd__`` map is malformed or names a non-numeric dtype (object, string,
        structured...): only plain numbers are ever rebuilt from a message.
    """
    if obj.get("__nd__") is not True:
        return obj
    dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if not (isinstance(dtype, str) and isinstance(data, bytes) and isinstance(shape, list)):
        raise ValueError("malformed array: dtype, shape or data missing or of the wrong type")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape) or len(shape) > 32:
        raise ValueError(f"malformed array shape {shape!r}")
    # Checked before numpy parses it: np.dtype() accepts a whole mini-language (structured
    # types, sub-arrays; "," even raises SyntaxError), none of which a message needs.
    if not _PLAIN_DTYPE.fullmatch(dtype):
        raise ValueError(f"array dtype {dtype!r} is not a plain numeric type")
    dt = np.dtype(dtype)
    arr = np.frombuffer(data, dtype=dt)
    return arr.reshape(shape).copy()


def pack(obj: Any) -> bytes:
    """msgpack bytes of a structure that may hold numpy arrays."""
    return msgpack.packb(obj, default=pack_ndarrays, use_bin_type=True)


def unpack(data: bytes, max_bytes: int = 64 << 20) -> Any:
    """Inverse of :func:`pack`; refuses payloads larger than ``max_bytes``.

    Raises
    ------
    ValueError
        On oversized or malformed input.
    """
    if len(data) > max_bytes:
        raise ValueError(f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        return msgpack.unpackb(data, object_hook=unpack_ndarrays, raw=False, strict_map_key=False)
    # KeyError..OverflowError: an object_hook failing on odd input must not escape as a crash.
    except (
        msgpack.UnpackException,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        OverflowError,
    ) as exc:
        raise ValueError(f"malformed msgpack message: {exc}") from exc


@dataclass
class Conditions:
    """Decoded conditions of one stimulus TR.

    Attributes
    ----------
    tr
        The stimulus TR these conditions describe.
    source_tr
        The newest volume used (``tr`` + the largest hemodynamic lag).
    stamps
        Stage-boundary timestamps of ``source_tr`` (LSL clock).
    blurry
        (F, h, w, 3) float32 low-resolution frames in [0, 1] (or latents, per the bundle).
    pixels
        (F, s, s, 3) float32 in [0, 1]: the blurry video in pixels, when the bundle's decoder
        gives it beside the latents in ``blurry``.
    semantic, concepts, caption, mask, motion, keyframe
        The other sub-tasks' outputs when the bundle has them.
    """

    tr: int
    source_tr: int
    stamps: dict[str, float] = field(default_factory=dict)
    blurry: np.ndarray | None = None
    semantic: np.ndarray | None = None
    concepts: np.ndarray | None = None
    caption: str = ""
    mask: np.ndarray | None = None
    motion: np.ndarray | None = None
    keyframe: np.ndarray | None = None
    pixels: np.ndarray | None = None
    degraded: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-ready dict (with the schema version)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["schema"] = SCHEMA_VERSION
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Conditions:
        """Inverse of :meth:`to_dict`; rejects other schema versions."""
        if d.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"conditions schema {d.get('schema')!r} is not {SCHEMA_VERSION}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_msgpack(self) -> bytes:
        """Serialised form."""
        return pack(self.to_dict())

    @classmethod
    def from_msgpack(cls, data: bytes) -> Conditions:
        """Parse :meth:`to_msgpack` output."""
        d = unpack(data)
        if not isinstance(d, dict):
            raise ValueError("conditions message is not a map")
        return cls.from_dict(d)
