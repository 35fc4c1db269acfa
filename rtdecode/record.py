"""The session record: one directory per run, crash-safe, readable back and replayable.

Layout of a record directory
----------------------------
``session.json``
    ``{format, status, created, closed, geometry, meta, counts}``, replaced atomically.
    ``status`` stays ``"open"`` until :meth:`SessionRecord.close`: a record found ``"open"``
    belongs to an engine that crashed (or is still running).
``volumes.bin``
    Every received volume, as received, one self-describing record each (see
    :data:`VOLUME_HEADER`), appended with one ``write`` on an ``O_APPEND`` descriptor. This is
    the source of truth: readers scan it and stop cleanly at a truncated or corrupt tail.
``volumes.jsonl``
    One JSON line per volume (``seq, tr, status, reason, timestamps, sha1, offset``); may lag
    ``volumes.bin`` by the volume in flight.
``events.jsonl``, ``timings.jsonl``, ``preprocess.jsonl``
    JSON lines, one write per line.
``conditions.msgpack``
    A stream of msgpack maps ``{tr, **conditions}``; numpy arrays as ``{"__nd__": True,
    dtype, shape, data}`` (:func:`pack_ndarrays` / :func:`unpack_ndarrays`).
``clips.bin``
    Rendered clips, ``(F, H, W, 3)`` ``uint8``, self-describing records like the volumes
    (see :data:`CLIP_HEADER`); turned into ``reconstruction.mp4`` on close.

Crash safety: every append is one ``os.write`` (the data is in the OS page cache when it
returns, so killing the process loses nothing already written; pass ``fsync=True`` to survive
power loss too). A failed append is truncated back, so the files never hold a torn record
in the middle. A live run writes through :class:`GuardedRecord`, which reports a failed write
(disk full) once and lets the run go on instead of raising.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import json
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from rtdecode.conditions import pack_ndarrays, unpack_ndarrays
from rtdecode.geometry import VolumeGeometry
from rtdecode.lsl import VolumeOutlet, local_clock
from rtdecode.volume import STATUSES, Event, Volume, checksum

__all__ = [
    "CLIP_HEADER",
    "RECORD_FORMAT",
    "VOLUME_HEADER",
    "GuardedRecord",
    "Record",
    "RecordError",
    "SessionRecord",
    "VolumeEntry",
    "open_record",
    "replay_record",
]

log = logging.getLogger("rtdecode.record")

RECORD_FORMAT = 1

# magic, format, header size, seq, tr, status code, dtype (numpy dtype.str), ndim, shape[3],
# timestamp, received, sha1 (raw), data length, crc32 of all preceding header bytes.
VOLUME_HEADER = struct.Struct("<4sHHIiB8sB3Idd20sII")
VOLUME_MAGIC = b"RTDV"
# magic, format, header size, tr, frames, height, width, data length, crc32 of the above.
CLIP_HEADER = struct.Struct("<4sHHiIIIII")
CLIP_MAGIC = b"RTDC"

SESSION_FILE = "session.json"
VOLUMES_FILE = "volumes.bin"
VIDEO_FILE = "reconstruction.mp4"


class RecordError(RuntimeError):
    """A record cannot be read, or writing to it failed."""


# --------------------------------------------------------------------------- serialisation


def _plain(obj: Any) -> Any:
    """Numpy scalars/arrays (also nested in dicts, lists, tuples) → plain Python for JSON."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _json_line(obj: dict) -> bytes:
    line = json.dumps(_plain(obj), allow_nan=True, separators=(",", ":"), default=str)
    return (line + "\n").encode()


def _now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON to a temporary file, fsync it, and rename it over ``path``.

    On failure (disk full) ``path`` keeps its previous content and the temporary file is
    removed.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(_plain(obj), f, indent=2, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# --------------------------------------------------------------------------- writer


class _AppendFile:
    """An ``O_APPEND`` file that appends whole records or nothing (truncated back on error)."""

    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
        self.fd = os.open(path, flags, 0o644)
        self.size = os.fstat(self.fd).st_size  # end of the last complete record

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; return the offset it starts at. Raises OSError after rolling back."""
        start = self.size
        view = memoryview(data).cast("B")
        try:
            done = os.write(self.fd, view)
            while done < len(view):  # short write (e.g. the disk just filled up)
                done += os.write(self.fd, view[done:])
            if self.fsync:
                os.fsync(self.fd)
        except OSError:
            self.truncate(start)
            raise
        self.size = start + len(view)
        return start

    def truncate(self, size: int) -> None:
        """Cut the file back to ``size`` bytes (best effort) and append from there."""
        try:
            os.ftruncate(self.fd, size)
            self.size = size
        except OSError as exc:  # pragma: no cover - nothing more can be done
            log.error("could not truncate %s back to %d bytes: %s", self.path, size, exc)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "session"


def _make_unique_dir(root: Path, name: str) -> Path:
    """Create ``root/name`` (or ``name-2``, ``name-3``, ...) and return it."""
    root.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        path = root / (name if k == 1 else f"{name}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RecordError(f"could not find a free record directory name for {name!r} in {root}")


def _volume_record(vol: Volume) -> tuple[bytes, memoryview, str]:
    """Header bytes, data bytes and the hex SHA-1 of one volume."""
    data = np.asarray(vol.data)
    dtype = data.dtype.str.encode()
    if data.dtype.hasobject or len(dtype) > 8:
        raise RecordError(f"volume of TR {vol.tr} has dtype {data.dtype}, which cannot be recorded")
    if not 1 <= data.ndim <= 3:  # scalars and >3-D arrays are stored flat
        data = data.reshape(-1)
    data = np.ascontiguousarray(data)
    sha1 = vol.sha1 or checksum(data)
    if len(sha1) != 40:
        raise RecordError(f"volume of TR {vol.tr} has a malformed sha1 {sha1!r}")
    shape = [*data.shape, 0, 0, 0][:3]
    status = STATUSES.index(vol.status) if vol.status in STATUSES else STATUSES.index("bad")
    head = VOLUME_HEADER.pack(
        VOLUME_MAGIC,
        RECORD_FORMAT,
        VOLUME_HEADER.size,
        vol.seq,
        vol.tr,
        status,
        dtype,
        data.ndim,
        *shape,
        float(vol.timestamp),
        float(vol.received),
        bytes.fromhex(sha1),
        data.nbytes,
        0,
    )[:-4]
    header = head + struct.pack("<I", zlib.crc32(head))
    return header, memoryview(data.reshape(-1).view(np.uint8)), sha1


class SessionRecord:
    """Writer of one session record directory (thread-safe; see the module docstring).

    Use :meth:`create` to make one.
    """

    def __init__(self, path: Path, geometry: VolumeGeometry, meta: dict, fsync: bool) -> None:
        self.path = Path(path)
        self.geometry = geometry
        self.meta = meta
        self.fsync = fsync
        self._lock = threading.Lock()
        self._session = {
            "format": RECORD_FORMAT,
            "status": "open",
            "created": _now_iso(),
            "geometry": geometry.to_dict(),
            "meta": meta,
        }
        self._files: dict[str, _AppendFile] = {}
        self._counts = {"volumes": 0, "events": 0, "conditions": 0, "clips": 0}
        self._last_tr: int | None = None
        self._closed = False
        self._buf = bytearray()

    # ---------------------------------------------------------------- life cycle

    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        geometry: VolumeGeometry,
        meta: dict | None = None,
        name: str | None = None,
        fsync: bool = False,
    ) -> SessionRecord:
        """Create a new record directory under ``root`` and write its ``session.json``.

        Parameters
        ----------
        root
            Parent directory (created if needed).
        geometry
            Geometry of the stream being recorded.
        meta
            JSON-friendly metadata (config, engine version, stream info, ...).
        name
            Directory name; default ``YYYYmmdd-HHMMSS_<subject or 'session'>``. A suffix
            ``-2``, ``-3``, ... is added if it exists.
        fsync
            ``fsync`` after every append (survives power loss; costs disk latency per TR).
        """
        if name is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            name = f"{stamp}_{_safe_name(geometry.subject or 'session')}"
        try:
            path = _make_unique_dir(Path(root), name)
            rec = cls(path, geometry, dict(meta or {}), fsync)
            _write_json_atomic(path / SESSION_FILE, rec._session)
            for fname in (VOLUMES_FILE, "volumes.jsonl", "events.jsonl"):
                rec._file(fname)
        except OSError as exc:
            raise RecordError(f"could not create a session record under {root}: {exc}") from exc
        log.info("recording session to %s", path)
        return rec

    def __enter__(self) -> SessionRecord:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("closed" if exc_type is None else "error")

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    @property
    def counts(self) -> dict[str, int]:
        """Items written so far by kind."""
        return dict(self._counts)

    def _file(self, name: str) -> _AppendFile:
        f = self._files.get(name)
        if f is None:
            f = self._files[name] = _AppendFile(self.path / name, self.fsync)
        return f

    def _check_open(self) -> None:
        if self._closed:
            raise RecordError(f"the session record {self.path} is closed")

    # ---------------------------------------------------------------- volumes

    def _intact_up_to(self) -> str:
        if self._last_tr is None:
            return "no volume had been recorded before"
        return f"the record up to TR {self._last_tr} is intact"

    def write_volume(self, vol: Volume) -> None:
        """Append one received volume (and its index line); sets ``vol.stamps['recorded']``.

        Raises
        ------
        RecordError
            If the write fails (disk full, I/O error); the files are rolled back to the
            previous volume, so the record stays readable.
        """
        header, data, sha1 = _volume_record(vol)
        with self._lock:
            self._check_open()
            vfile = self._file(VOLUMES_FILE)
            n = len(header) + len(data)
            if len(self._buf) < n:
                self._buf = bytearray(n)
            buf = memoryview(self._buf)
            buf[: len(header)] = header
            buf[len(header) : n] = data
            try:
                offset = vfile.append(buf[:n])
                try:
                    self._file("volumes.jsonl").append(
                        _json_line(
                            {
                                "seq": vol.seq,
                                "tr": vol.tr,
                                "status": vol.status,
                                "reason": vol.reason,
                                "timestamp": vol.timestamp,
                                "received": vol.received,
                                "sha1": sha1,
                                "offset": offset,
                            }
                        )
                    )
                except OSError:
                    vfile.truncate(offset)  # keep volumes.bin and its index in step
                    raise
            except OSError as exc:
                raise RecordError(self._failure("volume of TR", vol.tr, exc)) from exc
            self._last_tr = vol.tr
            self._counts["volumes"] += 1
        if not vol.sha1:
            vol.sha1 = sha1
        vol.stamps["recorded"] = local_clock()

    def _failure(self, what: str, tr: int, exc: OSError) -> str:
        cause = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else f"{exc}"
        prefix = "disk full while writing" if cause == "disk full" else "could not write"
        msg = f"{prefix} {what} {tr} to {self.path}"
        if cause != "disk full":
            msg += f" ({cause})"
        return f"{msg}; {self._intact_up_to()}"

    # ---------------------------------------------------------------- JSON lines

    def _append_line(self, fname: str, obj: dict, what: str, tr: int, count: str = "") -> None:
        line = _json_line(obj)
        with self._lock:
            self._check_open()
            try:
                self._file(fname).append(line)
            except OSError as exc:
                raise RecordError(self._failure(what, tr, exc)) from exc
            if count:
                self._counts[count] += 1

    def write_event(self, event: Event) -> None:
        """Append one event (gap, late, drop, error, ...) to ``events.jsonl``."""
        self._append_line(
            "events.jsonl", event.to_dict(), f"{event.kind} event of TR", event.tr, count="events"
        )

    def write_timing(self, tr: int, stamps: dict[str, float]) -> None:
        """Append the stage-boundary timestamps of one TR to ``timings.jsonl``."""
        self._append_line("timings.jsonl", {"tr": tr, **stamps}, "timings of TR", tr)

    def write_preprocess(self, tr: int, motion: Sequence[float], fd: float, **extra: Any) -> None:
        """Append one TR's motion parameters, framewise displacement and extras."""
        obj = {"tr": tr, "motion": list(np.asarray(motion, dtype=float).ravel()), "fd": fd, **extra}
        self._append_line("preprocess.jsonl", obj, "preprocessing of TR", tr)

    # ---------------------------------------------------------------- conditions, clips

    def write_conditions(self, tr: int, payload: dict) -> None:
        """Append one TR's decoded conditions (msgpack; numpy arrays allowed)."""
        obj = {"tr": int(tr), **{k: v for k, v in payload.items() if k != "tr"}}
        data = msgpack.packb(obj, default=pack_ndarrays, use_bin_type=True)
        with self._lock:
            self._check_open()
            try:
                self._file("conditions.msgpack").append(data)
            except OSError as exc:
                raise RecordError(self._failure("conditions of TR", tr, exc)) from exc
            self._counts["conditions"] += 1

    def write_clip(self, tr: int, frames: np.ndarray) -> None:
        """Append one rendered clip, ``(F, H, W, 3)`` ``uint8``, to ``clips.bin``."""
        arr = np.ascontiguousarray(frames)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"a clip must be (F, H, W, 3) uint8, got {arr.shape} {arr.dtype}")
        f, h, w = arr.shape[:3]
        head = CLIP_HEADER.pack(CLIP_MAGIC, RECORD_FORMAT, CLIP_HEADER.size, int(tr), f, h, w, arr.nbytes, 0)[
            :-4
        ]
        data = head + struct.pack("<I", zlib.crc32(head)) + arr.tobytes()
        with self._lock:
            self._check_open()
            try:
                self._file("clips.bin").append(data)
            except OSError as exc:
                raise RecordError(self._failure("clip of TR", tr, exc)) from exc
            self._counts["clips"] += 1

    # ---------------------------------------------------------------- close

    def close(self, status: str = "closed", video_fps: float | None = None) -> None:
        """Encode the clips into ``reconstruction.mp4`` and mark the record closed.

        Parameters
        ----------
        status
            Final status written to ``session.json`` (``closed``, ``error``, ``aborted``...).
        video_fps
            Frame rate of the video (default 8).

        Idempotent: later calls do nothing.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for f in self._files.values():
                f.close()
            self._files.clear()
            self._buf = bytearray()
        session = dict(self._session)
        if self._counts["clips"]:
            try:
                n = _encode_clips(self.path, video_fps or 8.0)
                session["video"] = {"file": VIDEO_FILE, "frames": n, "fps": video_fps or 8.0}
            except Exception as exc:  # the record matters more than its preview video
                log.exception("could not encode %s", self.path / VIDEO_FILE)
                session["video_error"] = f"{type(exc).__name__}: {exc}"
        session.update(status=status, closed=_now_iso(), counts=dict(self._counts))
        try:
            _write_json_atomic(self.path / SESSION_FILE, session)
        except OSError as exc:
            raise RecordError(
                f"could not mark {self.path} as {status} ({exc}); its data is intact but "
                f"{SESSION_FILE} still says 'open'"
            ) from exc
        self._session = session
        log.info("closed session record %s (%s): %s", self.path, status, self._counts)


class GuardedRecord:
    """A :class:`SessionRecord` for a live run: a failed write is reported, never raised.

    A scan cannot be repeated, so when the disk fills up (or any write fails) the run goes on
    — the display, the feedback and the other outputs still work — and the record keeps
    everything written before the failure, readable (each append is all or nothing). Volumes
    keep being offered to the record, so recording resumes as soon as space is freed.

    Every failed ``write_*`` is counted (:attr:`failures`, :attr:`failed` per method). The
    record's own message (what could not be written, and up to which TR the record is intact)
    is logged as an error and passed to ``on_problem`` at the first failure of each method,
    and again whenever volumes fail after having been written again; the first volume written
    after failures is reported as ``record_resumed``. Small side files may fail and succeed
    alternately on a nearly full disk; they are reported once (then every ``remind_every``
    failures), not at every flip. Other attributes pass through to the record.

    Parameters
    ----------
    record
        The record written to.
    on_problem
        Called with ``(kind, tr, detail)``: kind ``error`` or ``record_resumed``. It may write
        to this record again (a nested failure is only counted).
    remind_every
        Log a reminder every this many failed writes of one method.
    """

    def __init__(
        self,
        record: SessionRecord,
        on_problem: Callable[[str, int, str], None] | None = None,
        remind_every: int = 200,
    ) -> None:
        self.record = record
        self.on_problem = on_problem
        self.remind_every = remind_every
        self.failures = 0
        self.failed: dict[str, int] = {}
        self.volumes_failing = False
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.record, name)

    def _report(self, kind: str, tr: int, detail: str) -> None:
        if self.on_problem is not None:
            self.on_problem(kind, tr, detail)

    def _write(self, method: str, tr: int, *args: Any, **kw: Any) -> bool:
        volume = method == "write_volume"
        try:
            getattr(self.record, method)(*args, **kw)
        except RecordError as exc:
            with self._lock:
                self.failures += 1
                n = self.failed[method] = self.failed.get(method, 0) + 1
                newly = n == 1 or (volume and not self.volumes_failing)
                self.volumes_failing |= volume
            if newly:
                log.error("%s. The run goes on; this data is not recorded until a write succeeds", exc)
                self._report("error", tr, str(exc))
            elif n % self.remind_every == 0:
                log.error(
                    "the session record still cannot be written: %d %s calls failed (%s)", n, method, exc
                )
            return False
        if volume and self.volumes_failing:
            with self._lock:
                resumed, self.volumes_failing = self.volumes_failing, False
            if resumed:
                msg = f"volumes are recorded again from TR {tr} on ({self.failures} writes had failed)"
                log.warning("%s", msg)
                self._report("record_resumed", tr, msg)
        return True

    def write_volume(self, vol: Volume) -> bool:
        """:meth:`SessionRecord.write_volume`; False if it failed (reported)."""
        return self._write("write_volume", vol.tr, vol)

    def write_event(self, event: Event) -> bool:
        """:meth:`SessionRecord.write_event`; False if it failed (reported)."""
        return self._write("write_event", event.tr, event)

    def write_timing(self, tr: int, stamps: dict[str, float]) -> bool:
        """:meth:`SessionRecord.write_timing`; False if it failed (reported)."""
        return self._write("write_timing", tr, tr, stamps)

    def write_preprocess(self, tr: int, motion: Sequence[float], fd: float, **extra: Any) -> bool:
        """:meth:`SessionRecord.write_preprocess`; False if it failed (reported)."""
        return self._write("write_preprocess", tr, tr, motion, fd, **extra)

    def write_conditions(self, tr: int, payload: dict) -> bool:
        """:meth:`SessionRecord.write_conditions`; False if it failed (reported)."""
        return self._write("write_conditions", tr, tr, payload)

    def write_clip(self, tr: int, frames: np.ndarray) -> bool:
        """:meth:`SessionRecord.write_clip`; False if it failed (reported)."""
        return self._write("write_clip", tr, tr, frames)

    def close(self, status: str = "closed", video_fps: float | None = None) -> bool:
        """:meth:`SessionRecord.close`; False (logged) if ``session.json`` could not be updated."""
        try:
            self.record.close(status, video_fps)
        except RecordError as exc:
            log.error("%s", exc)
            return False
        return True


def _encode_clips(path: Path, fps: float) -> int:
    """Write all clips of ``clips.bin`` in TR order into ``reconstruction.mp4``."""
    import cv2

    from rtdecode.video import write_video

    index = sorted(_scan_clips(path / "clips.bin")[0], key=lambda c: c[0])
    if not index:
        return 0

    def frames() -> Iterator[np.ndarray]:
        size = index[0][2][1:3]
        with open(path / "clips.bin", "rb") as f:
            for _, off, shape in index:
                clip = _read_at(f, off, np.uint8, shape)
                if clip.shape[1:3] != size:  # a renderer change mid-run: fit the first size
                    clip = np.stack([cv2.resize(c, size[::-1]) for c in clip])
                yield from clip

    return write_video(path / VIDEO_FILE, frames(), fps)


# --------------------------------------------------------------------------- reader


@dataclasses.dataclass
class VolumeEntry:
    """Where and what one recorded volume is (scanned from ``volumes.bin``)."""

    seq: int
    tr: int
    status: str
    reason: str
    timestamp: float
    received: float
    sha1: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # start of the record (header) in volumes.bin
    header_size: int = VOLUME_HEADER.size

    @property
    def data_offset(self) -> int:
        """Where the volume's bytes start in ``volumes.bin``."""
        return self.offset + self.header_size

    @property
    def nbytes(self) -> int:
        """Size of the volume's data."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def usable(self) -> bool:
        """Whether the engine could use this volume (same rule as :attr:`Volume.usable`)."""
        return self.status in ("ok", "late") and not self.reason.startswith("out of order")


def _read_at(f, offset: int, dtype, shape: Sequence[int]) -> np.ndarray:
    """Read one array stored at ``offset`` of an open binary file."""
    f.seek(offset)
    count = int(np.prod(shape))
    arr = np.fromfile(f, dtype=np.dtype(dtype), count=count)
    if arr.size != count:
        raise RecordError(f"{f.name}: short data at offset {offset}")
    return arr.reshape(tuple(shape))


def _parse_volume_header(raw: bytes, offset: int, size: int) -> VolumeEntry | None:
    """The entry of the volume record starting at ``offset`` of a ``size``-byte file, or
    None if it is not a valid, complete record (bad magic or crc, unknown fields, short)."""
    if len(raw) < VOLUME_HEADER.size or raw[:4] != VOLUME_MAGIC:
        return None
    fields = VOLUME_HEADER.unpack(raw[: VOLUME_HEADER.size])
    if zlib.crc32(raw[: VOLUME_HEADER.size - 4]) != fields[-1]:
        return None
    _, fmt, hsize, seq, tr, status, dtype, ndim, s0, s1, s2, ts, rcv, sha1, nbytes, _ = fields
    if fmt != RECORD_FORMAT or hsize < VOLUME_HEADER.size or status >= len(STATUSES):
        return None
    try:
        dt = np.dtype(dtype.rstrip(b"\0").decode())
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
    shape = (s0, s1, s2)[:ndim]
    if not 1 <= ndim <= 3 or int(np.prod(shape)) * dt.itemsize != nbytes:
        return None
    if offset + hsize + nbytes > size:  # short data: the write in flight
        return None
    return VolumeEntry(seq, tr, STATUSES[status], "", ts, rcv, sha1.hex(), dt.str, shape, offset, hsize)


def _scan_volumes(path: Path) -> tuple[list[VolumeEntry], bool]:
    """Index ``volumes.bin``; stop at the first truncated or corrupt record."""
    entries: list[VolumeEntry] = []
    if not path.exists():
        return entries, False
    size = path.stat().st_size
    offset = 0
    with open(path, "rb") as f:
        while offset < size:
            f.seek(offset)
            entry = _parse_volume_header(f.read(VOLUME_HEADER.size), offset, size)
            if entry is None:
                return entries, True
            entries.append(entry)
            offset = entry.data_offset + entry.nbytes
    return entries, False


def _scan_clips(path: Path) -> tuple[list[tuple[int, int, tuple[int, int, int, int]]], bool]:
    """Index ``clips.bin`` as (tr, data offset, shape); stop at a corrupt tail."""
    out: list[tuple[int, int, tuple[int, int, int, int]]] = []
    if not path.exists():
        return out, False
    size = path.stat().st_size
    offset = 0
    with open(path, "rb") as f:
        while offset < size:
            f.seek(offset)
            raw = f.read(CLIP_HEADER.size)
            if len(raw) < CLIP_HEADER.size or raw[:4] != CLIP_MAGIC:
                return out, True
            _, fmt, hsize, tr, nf, h, w, nbytes, crc = CLIP_HEADER.unpack(raw)
            bad = zlib.crc32(raw[:-4]) != crc or fmt != RECORD_FORMAT or hsize < CLIP_HEADER.size
            if bad or nf * h * w * 3 != nbytes or offset + hsize + nbytes > size:
                return out, True
            out.append((tr, offset + hsize, (nf, h, w, 3)))
            offset += hsize + nbytes
    return out, False


def _read_json_lines(path: Path) -> list[dict]:
    """The complete JSON lines of a file (a partial or unparsable line is skipped)."""
    if not path.exists():
        return []
    out = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):  # the line in flight when the engine stopped
                break
            try:
                obj = json.loads(line)
            except ValueError:
                log.warning("%s: skipping an unreadable line", path)
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


@dataclasses.dataclass
class Record:
    """A session record opened for reading (see :func:`open_record`).

    Attributes
    ----------
    path, geometry, meta, status, format
        From ``session.json``; ``status == "open"`` means the engine never closed the record
        (it crashed, or it is still running).
    session
        The whole ``session.json``.
    volumes
        Every complete volume in ``volumes.bin``, in arrival order.
    truncated_tail
        Whether ``volumes.bin`` ended in an incomplete or corrupt record (ignored).
    events, timings, preprocess
        The JSON lines of ``events.jsonl``, ``timings.jsonl``, ``preprocess.jsonl``.
    """

    path: Path
    geometry: VolumeGeometry
    meta: dict
    status: str
    format: int
    session: dict
    volumes: list[VolumeEntry]
    truncated_tail: bool
    events: list[dict]
    timings: list[dict]
    preprocess: list[dict]

    @property
    def video_path(self) -> Path | None:
        """``reconstruction.mp4`` if it exists."""
        p = self.path / VIDEO_FILE
        return p if p.exists() else None

    def read_volume(self, i: int) -> np.ndarray:
        """The data of ``volumes[i]`` exactly as received (a writable array)."""
        e = self.volumes[i]
        with open(self.path / VOLUMES_FILE, "rb") as f:
            return _read_at(f, e.data_offset, e.dtype, e.shape)

    def iter_volumes(self) -> Iterator[tuple[VolumeEntry, np.ndarray]]:
        """Yield ``(entry, data)`` for every volume in arrival order."""
        with open(self.path / VOLUMES_FILE, "rb") as f:
            for e in self.volumes:
                yield e, _read_at(f, e.data_offset, e.dtype, e.shape)

    def volume_for_tr(self, tr: int) -> np.ndarray | None:
        """The first usable (``ok``/``late``) volume of TR ``tr``, or None."""
        for i, e in enumerate(self.volumes):
            if e.tr == tr and e.status in ("ok", "late"):
                return self.read_volume(i)
        return None

    def verify(self) -> list[int]:
        """Positions of volumes whose data does not match their SHA-1 (empty if all good)."""
        return [i for i, (e, data) in enumerate(self.iter_volumes()) if checksum(data) != e.sha1]

    def conditions(self) -> list[dict]:
        """All decoded conditions, in write order, numpy arrays restored."""
        path = self.path / "conditions.msgpack"
        if not path.exists():
            return []
        out = []
        with open(path, "rb") as f:
            unpacker = msgpack.Unpacker(f, object_hook=unpack_ndarrays, raw=False, max_buffer_size=2**31 - 1)
            try:
                for obj in unpacker:  # a truncated tail simply ends the iteration
                    if not isinstance(obj, dict):
                        break
                    out.append(obj)
            except (msgpack.UnpackException, ValueError, TypeError, KeyError):
                log.warning("%s: ignoring a corrupt tail after %d objects", path, len(out))
        return out

    def clips(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(tr, frames)`` for every complete clip, in write order."""
        index, _ = _scan_clips(self.path / "clips.bin")
        if not index:
            return
        with open(self.path / "clips.bin", "rb") as f:
            for tr, off, shape in index:
                yield tr, _read_at(f, off, np.uint8, shape)


def open_record(path: str | os.PathLike) -> Record:
    """Open a session record directory for reading (also one still being written).

    Raises
    ------
    RecordError
        If ``path`` has no readable ``session.json`` or its format is unknown.
    """
    path = Path(path)
    session_file = path / SESSION_FILE
    if not session_file.is_file():
        raise RecordError(f"{path} is not a session record: it has no {SESSION_FILE}")
    try:
        session = json.loads(session_file.read_text(encoding="utf-8"))
        fmt = session["format"]
        geometry = VolumeGeometry.from_dict(session["geometry"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordError(f"{session_file} is unreadable: {exc}") from exc
    if fmt != RECORD_FORMAT:
        raise RecordError(
            f"{path}: record format {fmt!r} is not supported (this rtdecode reads format {RECORD_FORMAT})"
        )
    volumes, truncated = _scan_volumes(path / VOLUMES_FILE)
    reasons = {d.get("seq"): d.get("reason", "") for d in _read_json_lines(path / "volumes.jsonl")}
    for e in volumes:
        e.reason = reasons.get(e.seq, "") or ""
    if truncated:
        log.warning("%s: ignoring an incomplete record at the end of %s", path, VOLUMES_FILE)
    return Record(
        path=path,
        geometry=geometry,
        meta=session.get("meta") or {},
        status=session.get("status", "open"),
        format=fmt,
        session=session,
        volumes=volumes,
        truncated_tail=truncated,
        events=_read_json_lines(path / "events.jsonl"),
        timings=_read_json_lines(path / "timings.jsonl"),
        preprocess=_read_json_lines(path / "preprocess.jsonl"),
    )


# --------------------------------------------------------------------------- replay


def _interruptible_wait(pacer, t: float, stop_event) -> bool:
    """Wait until LSL time ``t``; False if ``stop_event`` was set meanwhile."""
    if stop_event is not None:
        while t - local_clock() > 0.05:
            if stop_event.wait(min(0.05, t - local_clock() - 0.02)):
                return False
        if stop_event.is_set():
            return False
    pacer.wait_until(t)
    return True


def _wait_for_consumer(outlet: VolumeOutlet, timeout: float, stop_event) -> bool:
    """Wait for an inlet in short slices (so ``stop_event`` is honoured)."""
    end = local_clock() + timeout
    while True:
        left = end - local_clock()
        if outlet.wait_for_consumers(max(0.0, min(0.1, left))):
            return True
        if left <= 0 or (stop_event is not None and stop_event.is_set()):
            return False


def _replay_entries(rec: Record, usable_only: bool) -> tuple[list[VolumeEntry], np.dtype]:
    """The volumes to replay (arrival order) and the stream's dtype."""
    n = rec.geometry.n_voxels
    entries = sorted(rec.volumes, key=lambda e: e.seq)
    if usable_only:
        entries = [e for e in entries if e.usable]
    fits = [e for e in entries if int(np.prod(e.shape)) == n]
    if len(fits) < len(entries):
        log.warning(
            "skipping %d volumes whose size differs from the geometry's %d voxels",
            len(entries) - len(fits),
            n,
        )
    dtypes = [e.dtype for e in fits]
    dtype = np.dtype(max(set(dtypes), key=dtypes.count)) if dtypes else np.dtype(np.float32)
    return fits, dtype


def replay_record(
    path: str | os.PathLike,
    speed: float = 1.0,
    name: str = "rtdecode_replay",
    source_id: str | None = None,
    usable_only: bool = False,
    wait_for_consumer: float = 10.0,
    stop_event: threading.Event | None = None,
    linger: float = 2.0,
) -> int:
    """Stream a record's volumes back over LSL with their original relative timing.

    Parameters
    ----------
    path
        The record directory.
    speed
        Replay this many times faster than the acquisition.
    name, source_id
        LSL stream name and source id (default source id: ``name``).
    usable_only
        Replay only volumes the engine could use (``ok``/``late``); default: all, so the
        receiving engine sees the same duplicates and bad volumes.
    wait_for_consumer
        Seconds to wait for an inlet before starting.
    stop_event
        A ``threading.Event``; setting it stops the replay early.
    linger
        Seconds to keep the outlet alive after the last push.

    Returns
    -------
    int
        Number of volumes pushed.
    """
    from scanner_sim.clock import Pacer

    if not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")
    rec = open_record(path)
    entries, dtype = _replay_entries(rec, usable_only)
    geometry = dataclasses.replace(rec.geometry, tr=rec.geometry.tr / speed)
    outlet = VolumeOutlet(
        geometry,
        name=name,
        source_id=source_id or name,
        dtype=dtype,
        extra={"replay_of": str(rec.path), "speed": speed},
    )
    pushed = 0
    try:
        if not _wait_for_consumer(outlet, wait_for_consumer, stop_event):
            log.warning("no consumer after %.1f s; replaying anyway", wait_for_consumer)
        if not entries or (stop_event is not None and stop_event.is_set()):
            return 0
        t0 = local_clock() + 0.01
        ts0 = entries[0].timestamp
        pacer = Pacer(rec.geometry.tr, speed, start=t0)
        log.info("replaying %d volumes of %s at %gx", len(entries), rec.path, speed)
        with open(rec.path / VOLUMES_FILE, "rb") as f:
            for e in entries:
                data = _read_at(f, e.data_offset, e.dtype, e.shape)
                ts = t0 + (e.timestamp - ts0) / speed
                if not _interruptible_wait(pacer, ts, stop_event):
                    break
                outlet.push(data, ts)
                pushed += 1
        _interruptible_wait(pacer, local_clock() + linger, stop_event)
    finally:
        outlet.close()
    log.info("replayed %d volumes", pushed)
    return pushed
