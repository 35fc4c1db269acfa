"""A thin layer over pylsl for whole-volume fMRI streams and stimulus-frame streams.

The volume stream contract: type ``fMRI``; one sample is one whole volume flattened in C order
(see :mod:`rtdecode.geometry`); ``int16`` or ``float32``; ``nominal_srate = 1/TR``; the
stream's ``desc`` holds a ``geometry`` element (dims, voxel size, affine, axis order, TR) and
``subject``/``session``. The sample timestamp marks the end of the volume's acquisition, on
the sender's :func:`pylsl.local_clock`.

Large samples go through ``push_chunk``/``pull_chunk`` with numpy buffers: pylsl's
``push_sample`` builds a ctypes array element by element, which costs milliseconds per volume.
"""

from __future__ import annotations

import numpy as np
import pylsl

from rtdecode.geometry import VolumeGeometry

__all__ = [
    "STIMULUS_STREAM_TYPE",
    "VOLUME_STREAM_TYPE",
    "FrameOutlet",
    "StreamNotFoundError",
    "VolumeOutlet",
    "frame_stream_info",
    "geometry_from_info",
    "local_clock",
    "resolve_stream",
    "volume_stream_info",
]

VOLUME_STREAM_TYPE = "fMRI"
STIMULUS_STREAM_TYPE = "VideoFrames"

_FORMATS = {
    np.dtype(np.float32): pylsl.cf_float32,
    np.dtype(np.int16): pylsl.cf_int16,
    np.dtype(np.int8): pylsl.cf_int8,
    np.dtype(np.int32): pylsl.cf_int32,
    np.dtype(np.float64): pylsl.cf_double64,
}
_DTYPES = {v: k for k, v in _FORMATS.items()}

local_clock = pylsl.local_clock


class StreamNotFoundError(RuntimeError):
    """No LSL stream matched within the timeout."""


def _add_child_values(parent, name: str, values) -> None:
    node = parent.append_child(name)
    for v in values:
        node.append_child_value("v", repr(float(v)) if isinstance(v, float) else str(v))


def _child_values(parent, name: str, cast=float) -> list:
    node = parent.child(name)
    out = []
    child = node.first_child()
    while not child.empty():
        out.append(cast(child.child_value()))
        child = child.next_sibling()
    return out


def lsl_format(dtype: np.dtype | str) -> int:
    """The LSL channel format of a numpy dtype."""
    try:
        return _FORMATS[np.dtype(dtype)]
    except KeyError as exc:
        raise ValueError(f"dtype {np.dtype(dtype)} cannot be streamed over LSL") from exc


def numpy_dtype(info: pylsl.StreamInfo) -> np.dtype:
    """The numpy dtype of a stream's samples."""
    fmt = info.channel_format()
    if fmt not in _DTYPES:
        raise ValueError(f"stream {info.name()!r} has a non-numeric channel format ({fmt})")
    return _DTYPES[fmt]


def volume_stream_info(
    geometry: VolumeGeometry,
    name: str = "scanner_sim",
    source_id: str = "scanner_sim",
    dtype: np.dtype | str = np.float32,
    extra: dict | None = None,
) -> pylsl.StreamInfo:
    """A StreamInfo for a volume stream, its ``desc`` carrying the geometry.

    Parameters
    ----------
    geometry
        Dims, voxel size, affine and TR of the volumes.
    name, source_id
        LSL stream name and source id (a restarted outlet keeps its source id).
    dtype
        ``float32`` or ``int16``.
    extra
        Further key/value pairs written under ``desc/acquisition``.
    """
    info = pylsl.StreamInfo(
        name, VOLUME_STREAM_TYPE, geometry.n_voxels, 1.0 / geometry.tr, lsl_format(dtype), source_id
    )
    desc = info.desc()
    geo = desc.append_child("geometry")
    _add_child_values(geo, "dims", geometry.dims)
    _add_child_values(geo, "voxel_size", geometry.voxel_size)
    _add_child_values(geo, "affine", geometry.affine)
    geo.append_child_value("axis_order", geometry.axis_order)
    geo.append_child_value("tr", repr(float(geometry.tr)))
    desc.append_child_value("subject", geometry.subject)
    desc.append_child_value("session", geometry.session)
    desc.append_child_value("timestamp", "end of acquisition")
    acq = desc.append_child("acquisition")
    for key, value in (extra or {}).items():
        acq.append_child_value(str(key), str(value))
    return info


def geometry_from_info(info: pylsl.StreamInfo) -> VolumeGeometry | None:
    """Read the geometry from a stream's ``desc``; None if the stream carries none.

    Raises
    ------
    ValueError
        If the geometry is present but disagrees with the channel count.
    """
    geo = info.desc().child("geometry")
    if geo.empty():
        return None
    dims = tuple(_child_values(geo, "dims", int))
    geometry = VolumeGeometry(
        dims=dims,
        voxel_size=tuple(_child_values(geo, "voxel_size")),
        affine=tuple(_child_values(geo, "affine")) or None,
        axis_order=geo.child_value("axis_order") or "xyz",
        tr=float(geo.child_value("tr") or 1.0 / max(info.nominal_srate(), 1e-9)),
        subject=info.desc().child_value("subject"),
        session=info.desc().child_value("session"),
    )
    if geometry.n_voxels != info.channel_count():
        raise ValueError(
            f"stream {info.name()!r}: geometry {dims} has {geometry.n_voxels} voxels but the "
            f"stream has {info.channel_count()} channels"
        )
    return geometry


def acquisition_extra(info: pylsl.StreamInfo) -> dict[str, str]:
    """The ``desc/acquisition`` key/value pairs of a stream."""
    node = info.desc().child("acquisition")
    out = {}
    child = node.first_child()
    while not child.empty():
        out[child.name()] = child.child_value()
        child = child.next_sibling()
    return out


def resolve_stream(
    name: str | None = None,
    stype: str | None = VOLUME_STREAM_TYPE,
    source_id: str | None = None,
    timeout: float = 10.0,
) -> pylsl.StreamInfo:
    """Find one stream by name, type and/or source id.

    Raises
    ------
    StreamNotFoundError
        With a message that says what was looked for and what was seen instead.
    """
    clauses = []
    if name:
        clauses.append(f"name='{name}'")
    if stype:
        clauses.append(f"type='{stype}'")
    if source_id:
        clauses.append(f"source_id='{source_id}'")
    pred = " and ".join(clauses) or "count(.)>=0"
    found = pylsl.resolve_bypred(pred, 1, timeout)
    if found:
        return found[0]
    seen = pylsl.resolve_streams(min(1.0, timeout))
    others = ", ".join(f"{s.name()!r} (type {s.type()!r}, source {s.source_id()!r})" for s in seen)
    raise StreamNotFoundError(
        f"no LSL stream matching {pred} within {timeout:g} s; "
        + (f"streams seen: {others}" if others else "no LSL streams are visible on this network")
        + ". Is the scanner bridge or `scanner-sim stream` running?"
    )


class VolumeOutlet:
    """An LSL outlet that pushes whole volumes.

    Parameters
    ----------
    geometry
        Geometry of the volumes (written into the stream's desc).
    name, source_id, dtype, extra
        As :func:`volume_stream_info`.
    """

    def __init__(
        self,
        geometry: VolumeGeometry,
        name: str = "scanner_sim",
        source_id: str = "scanner_sim",
        dtype: np.dtype | str = np.float32,
        extra: dict | None = None,
    ) -> None:
        self.geometry = geometry
        self.dtype = np.dtype(dtype)
        self.info = volume_stream_info(geometry, name, source_id, self.dtype, extra)
        # max_buffered in seconds (for irregular streams, samples): a few minutes of volumes.
        self.outlet = pylsl.StreamOutlet(self.info, chunk_size=1, max_buffered=360)

    def push(self, volume: np.ndarray, timestamp: float = 0.0) -> None:
        """Push one volume (any array with ``n_voxels`` values) with its timestamp."""
        flat = np.ascontiguousarray(volume, dtype=self.dtype).reshape(1, -1)
        if flat.shape[1] != self.geometry.n_voxels:
            raise ValueError(
                f"volume has {flat.shape[1]} values, the stream expects {self.geometry.n_voxels}"
            )
        self.outlet.push_chunk(flat, timestamp or local_clock())

    def have_consumers(self) -> bool:
        """Whether any inlet is connected."""
        return self.outlet.have_consumers()

    def wait_for_consumers(self, timeout: float) -> bool:
        """Block until an inlet connects or ``timeout`` passes."""
        return self.outlet.wait_for_consumers(timeout)

    def close(self) -> None:
        """Destroy the outlet (inlets see the stream disappear)."""
        del self.outlet


def frame_stream_info(
    size: tuple[int, int],
    fps: float,
    name: str = "scanner_sim_stimulus",
    source_id: str = "scanner_sim_stimulus",
) -> pylsl.StreamInfo:
    """A StreamInfo for RGB stimulus frames: one sample per frame, ``H*W*3`` uint8 values
    sent as int8 bytes (LSL has no unsigned 8-bit format; view the sample as uint8)."""
    h, w = size
    info = pylsl.StreamInfo(name, STIMULUS_STREAM_TYPE, h * w * 3, fps, pylsl.cf_int8, source_id)
    desc = info.desc()
    desc.append_child_value("height", str(h))
    desc.append_child_value("width", str(w))
    desc.append_child_value("channels", "3")
    desc.append_child_value("encoding", "uint8 RGB, row-major (H, W, 3), sent as int8 bytes")
    return info


def frame_size_from_info(info: pylsl.StreamInfo) -> tuple[int, int]:
    """Height and width of a stimulus-frame stream."""
    return int(info.desc().child_value("height")), int(info.desc().child_value("width"))


class FrameOutlet:
    """An LSL outlet for stimulus frames (uint8 RGB), on the same clock as the volumes."""

    def __init__(
        self,
        size: tuple[int, int],
        fps: float,
        name: str = "scanner_sim_stimulus",
        source_id: str = "scanner_sim_stimulus",
    ) -> None:
        self.size = tuple(size)
        self.info = frame_stream_info(self.size, fps, name, source_id)
        self.outlet = pylsl.StreamOutlet(self.info, chunk_size=1, max_buffered=60)

    def push(self, frame: np.ndarray, timestamp: float = 0.0) -> None:
        """Push one (H, W, 3) uint8 frame."""
        arr = np.ascontiguousarray(frame, dtype=np.uint8)
        if arr.shape != (*self.size, 3):
            raise ValueError(f"frame shape {arr.shape} != {(*self.size, 3)}")
        self.outlet.push_chunk(arr.view(np.int8).reshape(1, -1), timestamp or local_clock())

    def close(self) -> None:
        """Destroy the outlet."""
        del self.outlet
