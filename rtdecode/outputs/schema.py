"""What a subscriber accepts: size limits and the field schema of each MQTT topic.

Publishing and subscribing may run on different machines and versions, and a broker relays
whatever any client sends, so every subscribing side (``rtdecode listen``, ``rtdecode display
--mqtt``) checks each message before using it: the payload is size-limited, unpacked with
:func:`rtdecode.conditions.unpack` (arrays rebuilt only from numeric dtypes), and then
:func:`validate_message` checks the fields the subscribers read — their types, array shapes
and, for clips, the announced frame size against the size written in each PNG/JPEG header,
so that no image is decompressed to more than :data:`MAX_CLIP_BYTES`. Fields a subscriber does
not read may be anything (newer publishers may add some). A failed check raises
:class:`ValueError` saying what is wrong; the subscribers log it and skip the message.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from rtdecode.conditions import SCHEMA_VERSION

__all__ = ["MAX_CLIP_BYTES", "MAX_MESSAGE_BYTES", "TOPIC_KINDS", "image_size", "validate_message"]

MAX_MESSAGE_BYTES = 16 << 20  # a 16-frame 256×256 raw clip is 3 MB; conditions far less
MAX_CLIP_BYTES = 64 << 20  # decoded (F, H, W, 3) uint8 frames of one clip
MAX_ARRAY_DIMS = 5
TOPIC_KINDS = ("conditions", "clip", "feedback", "status")

Check = Callable[[Any], str]  # "" when the value is acceptable, else what is wrong


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> str:
    return "" if _is_int(v) else "not an integer"


def _num(v: Any) -> str:
    return "" if _is_num(v) else "not a number"


def _opt_num(v: Any) -> str:
    return "" if v is None or _is_num(v) else "not a number or nil"


def _str(v: Any) -> str:
    return "" if isinstance(v, str) else "not a string"


def _bool(v: Any) -> str:
    return "" if isinstance(v, bool) else "not a boolean"


def _map(v: Any) -> str:
    return "" if isinstance(v, dict) else "not a map"


def _counts(v: Any) -> str:
    if not isinstance(v, dict):
        return "not a map"
    if not all(isinstance(k, str) and _is_int(n) for k, n in v.items()):
        return "not a map of names to integers"
    return ""


def _stamps(v: Any) -> str:
    if not isinstance(v, dict):
        return "not a map"
    if not all(isinstance(k, str) and _is_num(t) for k, t in v.items()):
        return "not a map of names to numbers"
    return ""


def _motion(v: Any) -> str:
    if isinstance(v, list) and len(v) == 6 and all(_is_num(x) for x in v):
        return ""
    return "not a list of 6 numbers"


def _strings(v: Any) -> str:
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return ""
    return "not a list of strings"


def _array(v: Any, ndim: int | None = None) -> str:
    if not isinstance(v, np.ndarray):
        return "not an array"
    if v.dtype.kind not in "biuf":
        return f"an array of dtype {v.dtype}"
    if not 1 <= v.ndim <= MAX_ARRAY_DIMS or (ndim is not None and v.ndim != ndim):
        return f"an array of shape {v.shape}"
    return ""


def _engine(v: Any) -> str:
    if not isinstance(v, dict):
        return "not a map"
    stream = v.get("stream")
    if stream is not None and not isinstance(stream, dict):
        return "stream is not a map"
    interval = stream.get("interval_s") if isinstance(stream, dict) else None
    if interval is not None and not (_is_num(interval) and 0 < interval < 1e6):
        return "stream.interval_s is not a positive number of seconds"
    return ""


# field → (check, required). Only fields some subscriber reads are listed.
COMMON: dict[str, tuple[Check, bool]] = {"tr": (_int, True), "session": (_str, False)}
FIELDS: dict[str, dict[str, tuple[Check, bool]]] = {
    "status": {
        "state": (_str, False),
        "fd": (_num, False),
        "motion": (_motion, False),
        "spikes": (_int, False),
        "settled": (_bool, False),
        "counts": (_counts, False),
        "gaps": (_int, False),
        "drops": (_counts, False),
        "display_dropped": (_int, False),
        "receive_to_preprocessed_ms": (_opt_num, False),
        "receive_to_clip_ms": (_opt_num, False),
        "time": (_num, False),
        "engine": (_engine, False),
        "mqtt": (_map, False),
        "summary": (_map, False),
    },
    "conditions": {
        "source_tr": (_int, False),
        "stamps": (_stamps, False),
        "caption": (_str, False),
        "degraded": (_str, False),
        "vocabulary": (_strings, False),
        "concepts": (lambda v: _array(v, 1), False),
        **{name: (_array, False) for name in ("blurry", "semantic", "mask", "motion", "keyframe", "pixels")},
    },
    "clip": {
        "source_tr": (_int, False),
        "fps": (lambda v: "" if _is_num(v) and 0 < v < 1000 else "not a frame rate", False),
        "encoding": (lambda v: "" if v in ("png", "jpeg", "raw") else "not png, jpeg or raw", True),
        "shape": (lambda v: "", True),  # checked with the frames below
        "frames": (lambda v: "", True),
    },
    "feedback": {
        "source_tr": (_int, False),
        "score": (_opt_num, False),
        "kind": (_str, False),
        "acquired": (_opt_num, False),
    },
}


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, height, width) from a PNG or JPEG header, without decoding; None if neither.

    Reading the header first lets a subscriber refuse an image that would decompress to far
    more than its announced size (a decompression bomb).
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return "png", h, w
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):  # walk the JPEG segments up to the frame header (SOFn)
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # segments without a length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return "jpeg", h, w
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2:
            return None
        i += 2 + length
    return None


def _check_clip(body: dict[str, Any]) -> str:
    shape, frames, encoding = body["shape"], body["frames"], body["encoding"]
    if not (isinstance(shape, list) and len(shape) == 4 and all(_is_int(s) and s > 0 for s in shape)):
        return f"shape {shape!r} is not [F, H, W, 3]"
    if shape[3] != 3 or math.prod(shape) > MAX_CLIP_BYTES:
        return f"shape {shape} is not [F, H, W, 3] within {MAX_CLIP_BYTES >> 20} MB"
    if encoding == "raw":
        if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and list(frames.shape) == shape):
            return "raw frames are not a uint8 array of the announced shape"
        return ""
    if not (isinstance(frames, list) and len(frames) == shape[0]):
        return f"frames are not a list of {shape[0]} images"
    for data in frames:
        size = image_size(data) if isinstance(data, bytes) else None
        if size is None or size[0] != encoding or size[1:] != (shape[1], shape[2]):
            return f"a frame is not a {encoding} image of {shape[1]}×{shape[2]} pixels"
    return ""


def validate_message(kind: str, body: Any) -> dict[str, Any]:
    """Check one unpacked message of topic ``kind``; returns ``body`` when it is acceptable.

    Raises
    ------
    ValueError
        Saying which field is missing or wrong (unknown kind, not a map, other schema version,
        wrong types or shapes, a clip larger than :data:`MAX_CLIP_BYTES` or whose images do
        not match the announced shape).
    """
    if kind not in FIELDS:
        raise ValueError(f"unknown message kind {kind!r}")
    if not isinstance(body, dict):
        raise ValueError(f"payload is a {type(body).__name__}, not a map")
    if not _is_int(body.get("schema")) or body["schema"] != SCHEMA_VERSION:
        raise ValueError(f"schema {body.get('schema')!r} is not {SCHEMA_VERSION}")
    for name, (check, required) in {**COMMON, **FIELDS[kind]}.items():
        if name not in body:
            if required:
                raise ValueError(f"{kind} message lacks {name!r}")
            continue
        problem = check(body[name])
        if problem:
            raise ValueError(f"{kind} field {name!r} is {problem}")
    if kind == "clip" and (problem := _check_clip(body)):
        raise ValueError(f"clip {problem}")
    return body
