"""Replay a recorded 4-D NIfTI or CIFTI-2 dense time series as a live volume stream.

The file's volumes go out over a :class:`rtdecode.lsl.VolumeOutlet`, one per TR on the wall
clock (or ``speed`` times faster), so the engine can be run on real recorded data exactly as
it runs on a scanner.

Conventions
-----------
* NIfTI: the data array ``(nx, ny, nz, T)`` is served as ``T`` volumes of shape
  ``(nx, ny, nz)`` (voxel index order as stored, flattened in C order on the wire); the
  geometry comes from the header: ``zooms[:3]`` as voxel size, ``img.affine`` (sform, else
  qform) as affine, ``zooms[3]`` as TR converted to seconds with the header's time unit.
  Spatial units other than mm (metres, microns) are converted to mm.
* CIFTI-2 (``.dtseries.nii``): one "volume" is the flat grayordinate vector of one time
  point, described as ``dims = (n_grayordinates, 1, 1)`` with voxel size ``(1, 1, 1)`` and the
  default affine; TR is the series axis step.
* ``int16`` data without scaling stays ``int16``; any other data (other integer types, or
  non-trivial ``scl_slope``/``scl_inter``) is scaled and sent as ``float32``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import nibabel as nib
import numpy as np

from rtdecode.geometry import VolumeGeometry
from rtdecode.lsl import VolumeOutlet, local_clock
from scanner_sim.clock import Pacer

__all__ = ["load_nifti", "replay_nifti"]

log = logging.getLogger("scanner_sim.replay")

_TIME_SCALE = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
_SPACE_SCALE = {"mm": 1.0, "meter": 1000.0, "micron": 1e-3, "unknown": 1.0}


def load_nifti(path: str | os.PathLike, tr: float | None = None) -> tuple[np.ndarray, VolumeGeometry]:
    """Read a 4-D NIfTI (``.nii``, ``.nii.gz``) or CIFTI-2 dense time series.

    Parameters
    ----------
    path
        The file.
    tr
        Repetition time in seconds. Overrides the header's; required when the header has none
        (a time step of 0) or when the time unit is not a time (e.g. Hz).

    Returns
    -------
    data
        ``(T, nx, ny, nz)`` array, ``int16`` (unscaled int16 files) or ``float32``.
    geometry
        Dims, voxel size (mm), affine and TR of the volumes.

    Raises
    ------
    ValueError
        If the file is not a 4-D image, or it has no usable TR and ``tr`` is not given.
    """
    img = nib.load(os.fspath(path))
    if isinstance(img, nib.Cifti2Image):
        return _load_cifti(img, path, tr)
    return _load_volume_series(img, path, tr)


def _load_volume_series(img, path, tr: float | None) -> tuple[np.ndarray, VolumeGeometry]:
    shape = tuple(img.shape)
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 4:
        raise ValueError(f"{path}: expected a 4-D image (x, y, z, time), got shape {img.shape}")
    header = img.header
    space_unit, time_unit = header.get_xyzt_units()
    zooms = header.get_zooms()
    tr_s = _resolve_tr(float(zooms[3]) if len(zooms) > 3 else 0.0, time_unit, tr, path)
    scale = _SPACE_SCALE.get(space_unit, 1.0)
    affine = np.asarray(img.affine, dtype=float).copy()
    affine[:3, :] *= scale
    voxel_size = _voxel_size(np.asarray(zooms[:3], dtype=float) * scale, affine)
    data = _read_array(img).reshape(shape)
    data = np.ascontiguousarray(np.moveaxis(data, 3, 0))
    geometry = VolumeGeometry(dims=shape[:3], voxel_size=voxel_size, tr=tr_s, affine=tuple(affine.ravel()))
    return data, geometry


def _load_cifti(img, path, tr: float | None) -> tuple[np.ndarray, VolumeGeometry]:
    axes = [img.header.get_axis(i) for i in range(img.ndim)]
    series = [i for i, ax in enumerate(axes) if isinstance(ax, nib.cifti2.SeriesAxis)]
    if img.ndim != 2 or len(series) != 1:
        raise ValueError(
            f"{path}: expected a CIFTI-2 dense time series (one series axis and "
            f"one brain-model axis), got axes {[type(a).__name__ for a in axes]}"
        )
    axis = axes[series[0]]
    unit = "sec" if str(axis.unit).upper() == "SECOND" else str(axis.unit)
    tr_s = _resolve_tr(float(axis.step), unit, tr, path)
    data = _read_array(img)
    if series[0] == 1:
        data = data.T
    n_time, n_gray = data.shape
    data = np.ascontiguousarray(data).reshape(n_time, n_gray, 1, 1)
    geometry = VolumeGeometry(dims=(n_gray, 1, 1), voxel_size=(1.0, 1.0, 1.0), tr=tr_s)
    return data, geometry


def _resolve_tr(step: float, unit: str, tr: float | None, path) -> float:
    """The TR in seconds: ``tr`` if given, else the header's step converted from ``unit``."""
    if tr is not None:
        if not tr > 0:
            raise ValueError(f"tr must be positive, got {tr}")
        return float(tr)
    if unit not in _TIME_SCALE and unit != "unknown":
        raise ValueError(
            f"{path}: the time axis is in {unit!r}, not a time unit; pass tr= (seconds) to replay it"
        )
    if not np.isfinite(step) or step <= 0:
        raise ValueError(
            f"{path}: the header has no repetition time (time step {step}); pass tr= (seconds) to replay it"
        )
    if unit == "unknown":
        log.info("%s: time unit not set in the header; taking TR %g as seconds", path, step)
    return step * _TIME_SCALE.get(unit, 1.0)


def _voxel_size(zooms: np.ndarray, affine: np.ndarray) -> tuple[float, float, float]:
    """Header zooms, with non-positive entries replaced by the affine's column lengths."""
    cols = np.linalg.norm(affine[:3, :3], axis=0)
    out = [z if z > 0 else (c if c > 0 else 1.0) for z, c in zip(zooms, cols, strict=True)]
    return tuple(float(v) for v in out)


def _read_array(img) -> np.ndarray:
    """The image data: raw ``int16`` when stored unscaled as int16, else scaled ``float32``."""
    proxy = img.dataobj
    slope = float(getattr(proxy, "slope", 1.0))
    inter = float(getattr(proxy, "inter", 0.0))
    trivial = slope == 1.0 and inter == 0.0
    if trivial and img.get_data_dtype() == np.int16 and hasattr(proxy, "get_unscaled"):
        return np.asarray(proxy.get_unscaled(), dtype=np.int16)
    return np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)


def replay_nifti(
    path: str | os.PathLike,
    speed: float = 1.0,
    name: str = "nifti_replay",
    source_id: str | None = None,
    tr: float | None = None,
    loop: bool = False,
    wait_for_consumer: float = 10.0,
    stop_event: threading.Event | None = None,
    on_volume: Callable[[int, float], None] | None = None,
    linger: float = 1.0,
) -> int:
    """Stream the volumes of a NIfTI/CIFTI file over LSL, one per TR on the wall clock.

    Parameters
    ----------
    path
        A 4-D NIfTI or CIFTI-2 dense time series (see :func:`load_nifti`).
    speed
        Run this many times faster than real time.
    name, source_id
        LSL stream name and source id (default source id: ``"<name>:<file name>"``).
    tr
        TR in seconds, overriding the header's (required if the header has none).
    loop
        Start over at the end of the file (TR indices keep counting) until ``stop_event``.
    wait_for_consumer
        Seconds to wait for an inlet before the first volume (then start anyway).
    stop_event
        Set it to stop early (checked between volumes and while waiting).
    on_volume
        Called with ``(tr_index, timestamp)`` after each push.
    linger
        Seconds to keep the outlet open after the last volume so inlets can fetch it.

    Returns
    -------
    int
        The number of volumes sent.
    """
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    data, geometry = load_nifti(path, tr=tr)
    sid = source_id or f"{name}:{os.path.basename(os.fspath(path))}"
    outlet = VolumeOutlet(
        geometry,
        name=name,
        source_id=sid,
        dtype=data.dtype,
        extra={"source": "nifti_replay", "file": os.fspath(path)},
    )
    log.info(
        "replaying %s: %d volumes of %s (%s), TR %.3f s, speed %gx, stream %r/%r",
        path,
        data.shape[0],
        geometry.dims,
        data.dtype,
        geometry.tr,
        speed,
        name,
        sid,
    )
    try:
        if not _wait_for_consumer(outlet, wait_for_consumer, stop_event):
            log.warning("no inlet connected within %g s; starting anyway", wait_for_consumer)
        sent = _stream(outlet, data, Pacer(geometry.tr, speed), loop, stop_event, on_volume)
        if sent:
            _sleep(linger, stop_event)
    finally:
        outlet.close()
    log.info("replay of %s finished: %d volumes sent", path, sent)
    return sent


def _stream(
    outlet: VolumeOutlet,
    data: np.ndarray,
    pacer: Pacer,
    loop: bool,
    stop_event: threading.Event | None,
    on_volume: Callable[[int, float], None] | None,
) -> int:
    """Push the volumes on the pacer's schedule; return how many were sent."""
    k = 0
    while True:
        for volume in data:
            if not _wait_due(pacer, k, stop_event):
                return k
            stamp = local_clock()
            outlet.push(volume, stamp)
            log.debug("volume %d pushed at %.4f", k, stamp)
            if on_volume is not None:
                on_volume(k, stamp)
            k += 1
        if not loop or len(data) == 0:
            return k


def _wait_due(pacer: Pacer, k: int, stop_event: threading.Event | None) -> bool:
    """Wait for event ``k``; False if ``stop_event`` was set meanwhile."""
    if stop_event is None:
        pacer.wait(k)
        return True
    left = pacer.deadline(k) - local_clock() - pacer.spin
    if left > 0 and stop_event.wait(left):
        return False
    if stop_event.is_set():
        return False
    pacer.wait(k)
    return True


def _wait_for_consumer(outlet: VolumeOutlet, timeout: float, stop_event: threading.Event | None) -> bool:
    """Wait up to ``timeout`` s for an inlet, in short slices so ``stop_event`` is honoured."""
    end = local_clock() + timeout
    while True:
        left = end - local_clock()
        if left <= 0 or (stop_event is not None and stop_event.is_set()):
            return outlet.have_consumers()
        if outlet.wait_for_consumers(min(left, 0.1)):
            return True


def _sleep(seconds: float, stop_event: threading.Event | None) -> None:
    if seconds <= 0:
        return
    if stop_event is None:
        threading.Event().wait(seconds)
    else:
        stop_event.wait(seconds)
