"""DICOM-folder bridge: watch the folder a scanner exports to and stream each volume over LSL.

Real scanners write one DICOM file per volume (Siemens mosaic, or an enhanced multi-frame
file) or one file per slice into an export folder while the run goes on. :class:`DicomBridge`
polls that folder (no dependencies beyond pydicom), reads each new file once it is complete,
assembles volumes, puts them in acquisition order and pushes each one to a
:class:`rtdecode.lsl.VolumeOutlet` as soon as it is complete, so the engine connects to a real
scanner exactly as it connects to ``scanner_sim``.

Conventions
-----------
* **Volume array.** Shape ``(nx, ny, nz)`` with ``x`` = DICOM column index, ``y`` = DICOM row
  index, ``z`` = slice (each 2-D image ``(row, col)`` is transposed to ``(x=col, y=row)``),
  flattened in C order on the wire (the ``"xyz"`` axis order of :mod:`rtdecode.geometry`).
* **Siemens mosaic** (``ImageType`` contains ``MOSAIC``): ``n`` slices from the private tag
  (0019,100A) NumberOfImagesInMosaic (else the Siemens CSA header, else the ``slices``
  argument); the tile grid is ``g = ceil(sqrt(n))`` tiles per side, each tile
  ``Rows/g × Columns/g``; slice ``k`` is tile ``(k // g, k % g)`` (tile row, tile column).
  The volume has shape ``(Columns/g, Rows/g, n)``.
* **Single-slice files** are grouped into volumes by (SeriesInstanceUID,
  TemporalPositionIdentifier, else AcquisitionNumber) and ordered along the slice normal
  (the cross product of the ImageOrientationPatient row and column cosines) by their
  ImagePositionPatient. A volume is complete when it has ``slices`` slices (the argument, or
  learned from the first volume once files of the next volume arrive).
* **Multi-frame** (NumberOfFrames > 1) non-mosaic files: the frames are the slices of one
  volume (ordered by their per-frame positions when present).
* **Order.** Volumes are emitted in (SeriesNumber, volume number) order, the volume number
  being AcquisitionNumber (else InstanceNumber) for one-file-per-volume series. A volume that
  completes before its predecessor is held until the predecessor arrives or for
  ``reorder_timeout_s``; then the gap is reported and the stream moves on. The TR index of a
  volume counts acquisitions (a gap skips indices); the first volume has index 0.
* **Geometry.** Dims from the first volume; voxel size from PixelSpacing (column spacing →
  x, row spacing → y) and the slice spacing (the measured distance between slice positions,
  else SpacingBetweenSlices, else SliceThickness); TR from RepetitionTime (ms → s) unless
  ``tr`` is given. Later volumes must have the same dims and voxel size; others are reported
  and skipped.
* **Affine** (voxel → RAS mm), approximations: built from ImageOrientationPatient and
  ImagePositionPatient of the first volume only (later changes, e.g. by prospective motion
  correction, are ignored) and flipped from DICOM LPS to RAS. For mosaics the position is
  corrected from the mosaic's corner to the first tile's, and the slice direction is the
  CSA SliceNormalVector when nibabel can read it, else the row × column cross product
  (i.e. slices assumed stored in ascending order along that normal). Without orientation
  tags the default centred diagonal affine is used.
* **Data type.** ``int16`` if the pixel data is integer, unscaled and its stored range fits
  in int16 (e.g. 12-bit unsigned), else ``float32`` (RescaleSlope/Intercept applied).
* **Timestamps**: :func:`rtdecode.lsl.local_clock` at push.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom

from rtdecode.geometry import VolumeGeometry
from rtdecode.lsl import VolumeOutlet, local_clock

__all__ = ["DicomBridge", "FileProblem", "is_mosaic", "mosaic_slice_count", "unpack_mosaic"]

log = logging.getLogger("scanner_sim.bridge")

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".swp", "~")
_MOSAIC_TAG = (0x0019, 0x100A)


class FileProblem(Exception):
    """A file that was read but cannot be used; ``kind`` names the problem."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# --------------------------------------------------------------------------------------------
# Reading DICOM attributes


def _find(ds: pydicom.Dataset, keyword: str):
    """An attribute's value from the top level, else from the first item of the shared or
    the first per-frame functional group (enhanced multi-frame files); None if absent."""
    if keyword in ds:
        return ds[keyword].value
    for group_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(group_name)
        if not groups:
            continue
        for element in groups[0]:
            if element.VR == "SQ" and element.value and keyword in element.value[0]:
                return element.value[0][keyword].value
    return None


def _floats(value) -> np.ndarray | None:
    if value is None or value == "":
        return None
    try:
        return np.asarray([float(v) for v in value], dtype=float)
    except TypeError:
        return np.asarray([float(value)], dtype=float)


def _int_or_none(value) -> int | None:
    if value is None or value == "":
        return None
    return int(value)


def is_mosaic(ds: pydicom.Dataset) -> bool:
    """Whether a dataset is a Siemens mosaic (``ImageType`` contains ``MOSAIC``)."""
    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    return any(str(v).upper() == "MOSAIC" for v in image_type)


def _private_uint(value) -> int | None:
    """A US value that may come back as int, a list, or raw bytes (implicit VR)."""
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value[:2], "little") if len(value) >= 2 else None
    if isinstance(value, Sequence) and not isinstance(value, str):
        return int(value[0]) if len(value) else None
    return None if value is None else int(value)


def _csa_header(ds: pydicom.Dataset):
    """The Siemens CSA image header via nibabel, or None."""
    if (0x0029, 0x1010) not in ds:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nibabel.nicom import csareader
        return csareader.get_csa_header(ds, "image")
    except Exception:  # nibabel missing, or an unreadable CSA header
        return None


def mosaic_slice_count(ds: pydicom.Dataset, default: int | None = None) -> int:
    """Number of slices in a mosaic: (0019,100A), else the CSA header, else ``default``.

    Raises
    ------
    ValueError
        If none of them gives a count.
    """
    n = _private_uint(ds[_MOSAIC_TAG].value) if _MOSAIC_TAG in ds else None
    if not n:
        csa = _csa_header(ds)
        if csa is not None:
            try:
                from nibabel.nicom import csareader

                n = int(csareader.get_n_mosaic(csa))
            except Exception:
                n = None
    n = n or default
    if not n:
        raise ValueError(
            "mosaic file without NumberOfImagesInMosaic (0019,100A) or CSA header: "
            "pass slices= (the number of slices per volume)"
        )
    return int(n)


def unpack_mosaic(pixels: np.ndarray, n_slices: int) -> np.ndarray:
    """Cut a mosaic image into a volume.

    Parameters
    ----------
    pixels
        The mosaic image, ``(Rows, Columns)``.
    n_slices
        Number of slices in the mosaic.

    Returns
    -------
    np.ndarray
        ``(Columns/g, Rows/g, n_slices)`` with ``g = ceil(sqrt(n_slices))``; slice ``k`` is
        tile ``(k // g, k % g)``, transposed from ``(row, col)`` to ``(x=col, y=row)``.
    """
    rows, cols = pixels.shape
    grid = math.ceil(math.sqrt(n_slices))
    if rows % grid or cols % grid:
        raise FileProblem(
            "bad mosaic", f"a {rows}×{cols} mosaic cannot hold a {grid}×{grid} grid of {n_slices} slices"
        )
    th, tw = rows // grid, cols // grid
    tiles = pixels.reshape(grid, th, grid, tw).transpose(0, 2, 1, 3).reshape(-1, th, tw)
    return np.ascontiguousarray(tiles[:n_slices].transpose(2, 1, 0))


def _orientation(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    iop = _floats(_find(ds, "ImageOrientationPatient"))
    if iop is None or iop.size != 6:
        return None
    return iop[:3], iop[3:]


def _normal(ds: pydicom.Dataset) -> np.ndarray | None:
    orient = _orientation(ds)
    return None if orient is None else np.cross(*orient)


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float]:
    """(row spacing, column spacing) in mm; (1, 1) if absent."""
    ps = _floats(_find(ds, "PixelSpacing"))
    return (float(ps[0]), float(ps[1])) if ps is not None and ps.size == 2 else (1.0, 1.0)


def _slice_spacing(ds: pydicom.Dataset) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _floats(_find(ds, keyword))
        if value is not None and value[0] > 0:
            return float(value[0])
    return 1.0


def _tr_seconds(ds: pydicom.Dataset) -> float | None:
    value = _floats(_find(ds, "RepetitionTime"))
    return float(value[0]) / 1000.0 if value is not None and value[0] > 0 else None


def _pixels(ds: pydicom.Dataset, arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """Rescaled pixel values, and whether they can go out as int16 unchanged."""
    slope = _floats(_find(ds, "RescaleSlope"))
    inter = _floats(_find(ds, "RescaleIntercept"))
    slope_v = float(slope[0]) if slope is not None else 1.0
    inter_v = float(inter[0]) if inter is not None else 0.0
    if slope_v != 1.0 or inter_v != 0.0:
        return arr.astype(np.float32) * np.float32(slope_v) + np.float32(inter_v), False
    if not np.issubdtype(arr.dtype, np.integer):
        return arr, False
    bits = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    fits = bits <= 16 if signed else bits <= 15
    info = np.iinfo(arr.dtype)
    return arr, fits or (info.min >= -32768 and info.max <= 32767)


def _affine(ds: pydicom.Dataset, ipp: np.ndarray | None, slice_vec: np.ndarray) -> np.ndarray | None:
    """Voxel (x=col, y=row, z=slice) → RAS affine; None without orientation/position."""
    orient = _orientation(ds)
    if orient is None or ipp is None or ipp.size != 3:
        return None
    row_sp, col_sp = _pixel_spacing(ds)
    lps = np.eye(4)
    lps[:3, 0] = orient[0] * col_sp
    lps[:3, 1] = orient[1] * row_sp
    lps[:3, 2] = slice_vec
    lps[:3, 3] = ipp
    return _LPS_TO_RAS @ lps


# --------------------------------------------------------------------------------------------
# Volumes


@dataclass
class _Volume:
    """A complete volume waiting to be pushed in order."""

    key: tuple[int, int]
    data: np.ndarray
    voxel_size: tuple[float, float, float]
    affine: np.ndarray | None
    tr: float | None
    int_ok: bool
    files: list[str]
    ready_at: float = 0.0


@dataclass
class _Slice:
    position: float
    pixels: np.ndarray
    ipp: np.ndarray | None
    int_ok: bool
    path: str


@dataclass
class _Group:
    """Single-slice images of one acquisition."""

    key: tuple[int, int]
    ds: pydicom.Dataset
    slices: list[_Slice] = field(default_factory=list)
    touched: int = 0


@dataclass
class _FileState:
    sig: tuple[int, int]
    since: float
    error: str = ""


def _series_number(ds: pydicom.Dataset) -> int:
    return _int_or_none(ds.get("SeriesNumber")) or 0


def _whole_volume_key(ds: pydicom.Dataset) -> tuple[int, int]:
    number = _int_or_none(ds.get("AcquisitionNumber"))
    if number is None:
        number = _int_or_none(ds.get("InstanceNumber"))
    if number is None:
        raise FileProblem("no volume number", "neither AcquisitionNumber nor InstanceNumber")
    return _series_number(ds), number


def _mosaic_volume(ds: pydicom.Dataset, arr: np.ndarray, path: str, slices: int | None) -> _Volume:
    n = mosaic_slice_count(ds, slices)
    data, int_ok = _pixels(ds, arr)
    volume = unpack_mosaic(data, n)
    row_sp, col_sp = _pixel_spacing(ds)
    spacing = _slice_spacing(ds)
    normal = _normal(ds)
    csa = _csa_header(ds)
    if csa is not None:
        try:
            from nibabel.nicom import csareader

            csa_normal = csareader.get_slice_normal(csa)
            if csa_normal is not None:
                normal = np.asarray(csa_normal, dtype=float)
        except Exception:
            pass
    ipp = _floats(_find(ds, "ImagePositionPatient"))
    orient = _orientation(ds)
    if ipp is not None and orient is not None:
        # ImagePositionPatient is the mosaic's corner; move it to the first tile's corner.
        rows, cols = arr.shape
        nx, ny = volume.shape[:2]
        ipp = ipp + orient[0] * col_sp * (cols - nx) / 2 + orient[1] * row_sp * (rows - ny) / 2
    slice_vec = normal * spacing if normal is not None else np.array([0.0, 0.0, spacing])
    return _Volume(
        _whole_volume_key(ds),
        volume,
        (col_sp, row_sp, spacing),
        _affine(ds, ipp, slice_vec),
        _tr_seconds(ds),
        int_ok,
        [path],
    )


def _frame_positions(ds: pydicom.Dataset, n_frames: int) -> list[np.ndarray] | None:
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if not frames or len(frames) != n_frames:
        return None
    out = []
    for item in frames:
        plane = item.get("PlanePositionSequence")
        if not plane or "ImagePositionPatient" not in plane[0]:
            return None
        out.append(_floats(plane[0].ImagePositionPatient))
    return out


def _stack_volume(
    ds: pydicom.Dataset, images: list[np.ndarray], positions: list[np.ndarray | None]
) -> tuple[np.ndarray, tuple, np.ndarray | None]:
    """Stack 2-D images (already in slice order) into ``(nx, ny, nz)``; voxel size, affine."""
    volume = np.ascontiguousarray(np.stack(images).transpose(2, 1, 0))
    row_sp, col_sp = _pixel_spacing(ds)
    normal = _normal(ds)
    known = all(p is not None and p.size == 3 for p in positions)
    if known and len(positions) > 1:
        slice_vec = (positions[-1] - positions[0]) / (len(positions) - 1)
        spacing = float(np.linalg.norm(slice_vec)) or _slice_spacing(ds)
    else:
        spacing = _slice_spacing(ds)
        slice_vec = normal * spacing if normal is not None else np.array([0.0, 0.0, spacing])
    affine = _affine(ds, positions[0] if known else None, slice_vec)
    return volume, (col_sp, row_sp, spacing), affine


def _multiframe_volume(ds: pydicom.Dataset, arr: np.ndarray, path: str) -> _Volume:
    data, int_ok = _pixels(ds, arr)
    positions = _frame_positions(ds, data.shape[0])
    normal = _normal(ds)
    order = list(range(data.shape[0]))
    if positions is not None and normal is not None:
        order = sorted(order, key=lambda i: float(positions[i] @ normal))
    images = [data[i] for i in order]
    pos = [positions[i] for i in order] if positions is not None else [None] * len(order)
    volume, voxel_size, affine = _stack_volume(ds, images, pos)
    return _Volume(_whole_volume_key(ds), volume, voxel_size, affine, _tr_seconds(ds), int_ok, [path])


def _group_volume(group: _Group) -> _Volume:
    slices = sorted(group.slices, key=lambda s: s.position)
    volume, voxel_size, affine = _stack_volume(group.ds, [s.pixels for s in slices], [s.ipp for s in slices])
    return _Volume(
        group.key,
        volume,
        voxel_size,
        affine,
        _tr_seconds(group.ds),
        all(s.int_ok for s in slices),
        [s.path for s in slices],
    )


# --------------------------------------------------------------------------------------------
# The bridge


class DicomBridge:
    """Watch a DICOM export folder and push each complete volume to an LSL volume stream.

    See the module docstring for the array layout, ordering, geometry and data-type rules.

    Parameters
    ----------
    folder
        The folder the scanner exports to (files directly in it; names are free).
    name, source_id
        LSL stream name and source id (default source id: ``"dicom_bridge:<folder>"``).
    slices
        Slices per volume, for single-slice series (else learned from the first volume) and
        for mosaics whose header lacks the count.
    tr
        TR in seconds, overriding RepetitionTime.
    poll_s
        Polling interval of :meth:`run` in seconds.
    give_up_s
        A file still unreadable this long after its size stopped changing is reported and
        skipped.
    reorder_timeout_s
        How long a volume that arrived before its predecessor is held before the gap is
        reported and the stream moves on.
    existing
        Also process files already in the folder at start (default); if False they are
        ignored.
    wait_for_consumer
        When the outlet is created (at the first volume), wait up to this many seconds for
        an inlet before pushing, so the first volume is not lost.
    on_volume
        Called with ``(tr_index, volume, timestamp)`` after each push.
    subject, session
        Identifiers written into the stream's geometry description.

    Attributes
    ----------
    volumes_sent : int
        Volumes pushed so far.
    files_skipped : int
        Files not used in any pushed volume because of a reported problem.
    events : list of (str, str)
        Reported problems as ``(kind, detail)``: ``unreadable``, ``gap``, ``late``,
        ``duplicate``, ``mismatch``, ``incomplete``, ``clipped``, ...
    geometry : VolumeGeometry or None
        The stream's geometry, known after the first volume.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        name: str = "dicom_bridge",
        source_id: str | None = None,
        slices: int | None = None,
        tr: float | None = None,
        poll_s: float = 0.1,
        give_up_s: float = 5.0,
        reorder_timeout_s: float = 2.0,
        existing: bool = True,
        wait_for_consumer: float = 5.0,
        on_volume: Callable[[int, np.ndarray, float], None] | None = None,
        subject: str = "",
        session: str = "",
    ) -> None:
        self.folder = os.fspath(folder)
        self.name = name
        self.source_id = source_id or f"dicom_bridge:{os.path.abspath(self.folder)}"
        self.slices = slices
        self.tr = tr
        self.poll_s = poll_s
        self.give_up_s = give_up_s
        self.reorder_timeout_s = reorder_timeout_s
        self.wait_for_consumer = wait_for_consumer
        self.on_volume = on_volume
        self.subject, self.session = subject, session
        self.volumes_sent = 0
        self.files_skipped = 0
        self.events: list[tuple[str, str]] = []
        self.geometry: VolumeGeometry | None = None
        self._outlet: VolumeOutlet | None = None
        self._done: set[str] = set()
        self._states: dict[str, _FileState] = {}
        self._groups: dict[tuple[str, int], _Group] = {}
        self._finished_groups: set[tuple[str, int]] = set()
        self._learned_slices: int | None = None
        self._ready: dict[tuple[int, int], _Volume] = {}
        self._last_key: tuple[int, int] | None = None
        self._last_index = -1
        self._poll_count = 0
        self._missing_warned = False
        self.last_activity = time.monotonic()
        if not existing:
            self._done.update(self._scan())

    # -- public ------------------------------------------------------------------------------

    def poll_once(self) -> list[int]:
        """Process what is in the folder now.

        Reads the files that became complete, assembles volumes and pushes those whose turn
        has come. The outlet is created on the first volume (its geometry is known only
        then), waiting up to ``wait_for_consumer`` s for an inlet.

        Returns
        -------
        list of int
            TR indices of the volumes pushed by this call.

        Raises
        ------
        ValueError
            On a configuration problem that affects every file (no TR in the files and no
            ``tr``; a mosaic without slice count and no ``slices``).
        """
        now = time.monotonic()
        self._poll_count += 1
        for path in self._scan():
            read = self._check_file(path, now)
            if read is not None:
                self._ingest(path, *read, now)
                self._done.add(path)
                self._states.pop(path, None)
                self.last_activity = now
        self._learn_slices()
        self._complete_groups(now)
        pushed = self._emit(now)
        if pushed:
            self.last_activity = time.monotonic()
        return pushed

    def flush(self, limit: int | None = None) -> list[int]:
        """Push held volumes now (reporting gaps) and report incomplete volumes.

        Parameters
        ----------
        limit
            Push at most this many volumes.
        """
        pushed = self._emit(time.monotonic(), flush=True, limit=limit)
        for gkey, group in list(self._groups.items()):
            self._drop_group(
                gkey, group, "incomplete", f"volume {group.key} has {len(group.slices)} slices at the end"
            )
        return pushed

    def run(
        self,
        stop_event: threading.Event | None = None,
        max_volumes: int | None = None,
        idle_timeout: float | None = None,
    ) -> int:
        """Poll every ``poll_s`` until stopped.

        Parameters
        ----------
        stop_event
            Set it to stop.
        max_volumes
            Stop after pushing this many volumes.
        idle_timeout
            Stop when no file has been read and no volume pushed for this many seconds.

        Returns
        -------
        int
            Volumes pushed by this call. On stop or idle timeout, held volumes are flushed.
        """
        stop = stop_event or threading.Event()
        start = self.volumes_sent
        self.last_activity = time.monotonic()
        log.info(
            "watching %s (poll %.3g s), stream %r/%r", self.folder, self.poll_s, self.name, self.source_id
        )
        while not stop.is_set():
            self.poll_once()
            if max_volumes is not None and self.volumes_sent - start >= max_volumes:
                return self.volumes_sent - start
            if idle_timeout is not None and time.monotonic() - self.last_activity >= idle_timeout:
                log.info("no new data for %g s; stopping", idle_timeout)
                break
            stop.wait(self.poll_s)
        left = None if max_volumes is None else max_volumes - (self.volumes_sent - start)
        self.flush(limit=left)
        return self.volumes_sent - start

    def close(self) -> None:
        """Close the outlet (inlets see the stream end)."""
        if self._outlet is not None:
            self._outlet.close()
            self._outlet = None

    def __enter__(self) -> DicomBridge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- files -------------------------------------------------------------------------------

    def _scan(self) -> list[str]:
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            if not self._missing_warned:
                log.warning("folder %s does not exist (yet); waiting for it", self.folder)
                self._missing_warned = True
            return []
        names = sorted(
            e.path
            for e in entries
            if not e.name.startswith(".")
            and not e.name.endswith(_TEMP_SUFFIXES)
            and e.path not in self._done
            and e.is_file()
        )
        return names

    def _check_file(self, path: str, now: float) -> tuple[pydicom.Dataset, np.ndarray] | None:
        """Read a file once its size is stable and it decodes fully; None if not (yet)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._states.pop(path, None)
            return None
        sig = (st.st_size, st.st_mtime_ns)
        state = self._states.get(path)
        if state is None or state.sig != sig:
            self._states[path] = _FileState(sig, now)
            return None
        try:
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array
        except Exception as exc:
            state.error = f"{type(exc).__name__}: {exc}"
            if now - state.since >= self.give_up_s:
                self._skip_file(path, "unreadable", state.error)
            return None
        return ds, arr

    def _skip_file(self, path: str, kind: str, reason: str) -> None:
        self._done.add(path)
        self._states.pop(path, None)
        self.files_skipped += 1
        self._report(kind, f"{os.path.basename(path)}: {reason}")

    def _report(self, kind: str, detail: str) -> None:
        self.events.append((kind, detail))
        log.warning("%s: %s", kind, detail)

    # -- assembling volumes ------------------------------------------------------------------

    def _ingest(self, path: str, ds: pydicom.Dataset, arr: np.ndarray, now: float) -> None:
        try:
            if is_mosaic(ds):
                self._add_ready(_mosaic_volume(ds, arr, path, self.slices), now)
            elif int(ds.get("NumberOfFrames") or 1) > 1:
                self._add_ready(_multiframe_volume(ds, arr, path), now)
            else:
                self._add_slice(path, ds, arr)
        except FileProblem as exc:
            self._skip_file(path, exc.kind, str(exc))

    def _add_ready(self, volume: _Volume, now: float) -> None:
        if volume.key in self._ready:
            self.files_skipped += len(volume.files)
            self._report("duplicate", f"volume {volume.key} again in {volume.files}")
            return
        volume.ready_at = now
        self._ready[volume.key] = volume

    def _volume_number(self, ds: pydicom.Dataset) -> int:
        for keyword in ("TemporalPositionIdentifier", "AcquisitionNumber"):
            number = _int_or_none(ds.get(keyword))
            if number is not None:
                return number
        instance = _int_or_none(ds.get("InstanceNumber"))
        if instance is not None and self.slices:
            return (instance - 1) // self.slices + 1
        raise FileProblem(
            "no volume number",
            "single-slice file without "
            "TemporalPositionIdentifier or AcquisitionNumber (pass slices= to "
            "group by InstanceNumber)",
        )

    def _add_slice(self, path: str, ds: pydicom.Dataset, arr: np.ndarray) -> None:
        number = self._volume_number(ds)
        gkey = (str(ds.get("SeriesInstanceUID", "")), number)
        if gkey in self._finished_groups:
            raise FileProblem("late", f"slice of volume {number} after the volume was complete")
        group = self._groups.get(gkey)
        if group is None:
            group = self._groups[gkey] = _Group((_series_number(ds), number), ds)
        if group.slices and arr.shape != group.slices[0].pixels.shape:
            raise FileProblem(
                "mismatch", f"slice {arr.shape} in a volume of {group.slices[0].pixels.shape} slices"
            )
        ipp = _floats(ds.get("ImagePositionPatient"))
        normal = _normal(ds)
        if ipp is not None and normal is not None and ipp.size == 3:
            position = float(ipp @ normal)
        else:
            ipp = None
            position = float(_int_or_none(ds.get("InstanceNumber")) or len(group.slices))
        if any(abs(s.position - position) < 1e-4 for s in group.slices):
            raise FileProblem("duplicate", f"second slice at position {position:g} in volume {number}")
        pixels, int_ok = _pixels(ds, arr)
        group.slices.append(_Slice(position, pixels, ipp, int_ok, path))
        group.touched = self._poll_count

    def _expected_slices(self) -> int | None:
        return self.slices or self._learned_slices

    def _learn_slices(self) -> None:
        """Learn the slice count from the first volume once the next one has started."""
        if self._expected_slices() or len(self._groups) < 2:
            return
        first = min(self._groups.values(), key=lambda g: g.key)
        later = any(g.key[0] == first.key[0] and g.key[1] > first.key[1] for g in self._groups.values())
        if later and first.touched < self._poll_count:
            self._learned_slices = len(first.slices)
            log.info("learned %d slices per volume from volume %s", len(first.slices), first.key)

    def _complete_groups(self, now: float) -> None:
        n = self._expected_slices()
        if not n:
            return
        for gkey, group in list(self._groups.items()):
            if len(group.slices) == n:
                del self._groups[gkey]
                self._finished_groups.add(gkey)
                self._add_ready(_group_volume(group), now)
            elif len(group.slices) > n:
                self._drop_group(
                    gkey,
                    group,
                    "mismatch",
                    f"volume {group.key} has {len(group.slices)} slices, expected {n}",
                )

    def _drop_group(self, gkey: tuple[str, int], group: _Group, kind: str, detail: str) -> None:
        del self._groups[gkey]
        self._finished_groups.add(gkey)
        self.files_skipped += len(group.slices)
        self._report(kind, detail)

    # -- ordered output ----------------------------------------------------------------------

    def _is_next(self, key: tuple[int, int]) -> bool:
        last = self._last_key
        if last is None:
            return key[1] <= 1
        if key[0] == last[0]:
            return key[1] == last[1] + 1
        return key[0] > last[0] and key[1] <= 1

    def _emit(self, now: float, flush: bool = False, limit: int | None = None) -> list[int]:
        pushed: list[int] = []
        while self._ready and (limit is None or len(pushed) < limit):
            key = min(self._ready)
            volume = self._ready[key]
            if self._last_key is not None and key <= self._last_key:
                del self._ready[key]
                self.files_skipped += len(volume.files)
                kind = "duplicate" if key == self._last_key else "late"
                self._report(kind, f"volume {key} arrived after volume {self._last_key} was sent; dropped")
                continue
            waited = now - volume.ready_at >= self.reorder_timeout_s
            if not (flush or waited or self._is_next(key)):
                break
            if not self._is_next(key):
                self._report_gap(key)
            index = self._push(volume)  # may raise (no TR): the volume then stays held
            del self._ready[key]
            if index is not None:
                pushed.append(index)
        return pushed

    def _report_gap(self, key: tuple[int, int]) -> None:
        if self._last_key is None:
            log.info("starting at volume %s (series, number)", key)
        elif key[0] == self._last_key[0]:
            self._report("gap", f"series {key[0]}: volumes {self._last_key[1] + 1}..{key[1] - 1} missing")
        else:
            self._report(
                "gap",
                f"series {key[0]} starts at volume {key[1]} after series "
                f"{self._last_key[0]} volume {self._last_key[1]}",
            )

    def _next_index(self, key: tuple[int, int]) -> int:
        last = self._last_key
        if last is None:
            return 0
        if key[0] == last[0]:
            return self._last_index + key[1] - last[1]
        return self._last_index + 1

    def _push(self, volume: _Volume) -> int | None:
        index = self._next_index(volume.key)
        if self._outlet is None:
            self._open(volume)
        self._last_key, self._last_index = volume.key, index
        if not self._matches(volume):
            self.files_skipped += len(volume.files)
            self._report(
                "mismatch",
                f"volume {volume.key}: {volume.data.shape} voxels of "
                f"{volume.voxel_size} mm, stream has {self.geometry.dims} of "
                f"{self.geometry.voxel_size} mm; skipped",
            )
            return None
        data = self._cast(volume)
        stamp = local_clock()
        self._outlet.push(data, stamp)
        self.volumes_sent += 1
        log.debug("volume %s pushed as TR %d at %.4f", volume.key, index, stamp)
        if self.on_volume is not None:
            self.on_volume(index, data, stamp)
        return index

    def _matches(self, volume: _Volume) -> bool:
        return tuple(volume.data.shape) == self.geometry.dims and np.allclose(
            volume.voxel_size, self.geometry.voxel_size, rtol=1e-3
        )

    def _cast(self, volume: _Volume) -> np.ndarray:
        dtype = self._outlet.dtype
        data = volume.data
        if dtype == np.int16 and not volume.int_ok:
            rounded = np.rint(data)
            if rounded.min() < -32768 or rounded.max() > 32767:
                self._report("clipped", f"volume {volume.key} exceeds the int16 range")
            data = np.clip(rounded, -32768, 32767)
        return np.ascontiguousarray(data, dtype=dtype)

    def _open(self, volume: _Volume) -> None:
        tr = self.tr or volume.tr
        if tr is None:
            raise ValueError(f"volume {volume.key} has no RepetitionTime: pass tr= (seconds)")
        self.geometry = VolumeGeometry(
            dims=volume.data.shape,
            voxel_size=volume.voxel_size,
            tr=tr,
            affine=None if volume.affine is None else tuple(volume.affine.ravel()),
            subject=self.subject,
            session=self.session,
        )
        dtype = np.int16 if volume.int_ok else np.float32
        self._outlet = VolumeOutlet(
            self.geometry,
            name=self.name,
            source_id=self.source_id,
            dtype=dtype,
            extra={"source": "dicom_bridge", "folder": self.folder},
        )
        log.info(
            "stream %r/%r: %s voxels of %s mm, TR %.3f s, %s",
            self.name,
            self.source_id,
            self.geometry.dims,
            self.geometry.voxel_size,
            tr,
            np.dtype(dtype).name,
        )
        if self.wait_for_consumer > 0 and not self._outlet.wait_for_consumers(self.wait_for_consumer):
            log.warning("no inlet connected within %g s; pushing anyway", self.wait_for_consumer)
