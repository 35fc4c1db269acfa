"""Conditions: everything the decoders say about one TR, and how it travels (msgpack).

Arrays are serialised as ``{"__nd__": True, "dtype", "shape", "data"}`` maps so any msgpack
reader can rebuild them; every message carries ``schema`` (:data:`SCHEMA_VERSION`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

import msgpack
import numpy as np

__all__ = ["SCHEMA_VERSION", "Conditions", "pack", "pack_ndarrays", "unpack", "unpack_ndarrays"]

SCHEMA_VERSION = 1


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
    """msgpack ``object_hook=``: the inverse of :func:`pack_ndarrays` (writable arrays)."""
    if obj.get("__nd__") is True:
        arr = np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"]))
        return arr.reshape(obj["shape"]).copy()
    return obj


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
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
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
