"""Ingestion: the LSL inlet that receives whole volumes, numbers them and checks them.

A dedicated thread pulls samples into preallocated numpy buffers (never the asyncio loop:
a blocking pull there would stall every stage) and hands each :class:`~rtdecode.volume.Volume`
to a callback in that same thread, so the session record can write it before anything else
happens. Each volume gets a TR index from its acquisition timestamp (clock-corrected by
LSL), which makes gaps, late arrivals and duplicates visible:

* a TR index beyond the next expected one → ``gap`` for every TR skipped;
* a volume arriving more than ``late_fraction`` of a TR after its acquisition, or after a
  later TR → ``late``;
* a TR index already received → ``duplicate`` (``conflict`` if the data differ);
* a non-finite timestamp → ``bad`` (TR -1); a timestamp more than ``max_jump_trs`` TRs away
  from the last one (a sender's clock jumped) → ``clock_jump``, and TRs count on from the
  last one instead of inventing thousands of gaps;
* non-finite values, a truncated volume (trailing slices of zeros) or an all-zero volume →
  ``bad``; recorded, reported, not processed;
* the outlet disappearing → ``lost``; the inlet re-resolves the same source and reports
  ``reconnected`` (or ``ended`` after ``lost_timeout_s``); a stream that comes back with
  another geometry or sample type → ``error``, and the inlet keeps waiting for the right one.

The stimulus-frame stream is optional ground truth: when it disappears the run goes on
without it (``stimulus_lost``) and picks it up again if it returns (``stimulus_reconnected``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pylsl
from pylsl.util import LostError

from rtdecode.geometry import VolumeGeometry
from rtdecode.lsl import (
    STIMULUS_STREAM_TYPE,
    StreamNotFoundError,
    frame_size_from_info,
    geometry_from_info,
    local_clock,
    numpy_dtype,
    resolve_stream,
)
from rtdecode.volume import Event, Volume, checksum

__all__ = ["FrameIngest", "IngestConfig", "TRClock", "VolumeIngest", "validate_volume"]

log = logging.getLogger("rtdecode.ingest")


@dataclass(frozen=True)
class IngestConfig:
    """Where the volumes come from and how they are checked."""

    name: str = field(default="", metadata={"help": "LSL stream name to resolve"})
    type: str = field(default="fMRI", metadata={"help": "LSL stream type to resolve"})
    source_id: str = field(default="", metadata={"help": "LSL source id to resolve"})
    resolve_timeout_s: float = 30.0
    lost_timeout_s: float = field(
        default=30.0, metadata={"help": "end the run if a lost stream stays away this long"}
    )
    late_fraction: float = field(
        default=0.5, metadata={"help": "late: arrival more than this many TRs after acquisition"}
    )
    dims: tuple[int, ...] = field(
        default=(), metadata={"help": "geometry for a stream without rtdecode's desc: nx,ny,nz"}
    )
    voxel_size: tuple[float, ...] = (3.0, 3.0, 3.0)
    tr: float = field(
        default=0.0, metadata={"help": "TR (s) for a stream without desc (default: 1/nominal rate)"}
    )
    max_trs: int = field(default=0, metadata={"help": "stop after this many TRs (0: until the stream ends)"})
    max_jump_trs: int = field(
        default=1000, metadata={"help": "a timestamp jump beyond this many TRs restarts the TR clock"}
    )
    stimulus: bool = field(
        default=True, metadata={"help": "also receive a stimulus-frame stream if one is present"}
    )
    buffers: int = 64


def validate_volume(
    data: np.ndarray, dims: tuple[int, ...] | None = None, dtype: np.dtype | str | None = None
) -> str:
    """Why a volume is unusable, or ``""``.

    Parameters
    ----------
    data
        The volume as received.
    dims, dtype
        The shape and sample type expected (not checked when None).

    Returns
    -------
    str
        Empty for a usable volume; otherwise the reason: not a numeric array, wrong shape or
        type, non-finite values, all zeros, or truncated (trailing slices of zeros). Never
        raises, whatever ``data`` is.
    """
    if not isinstance(data, np.ndarray):
        return f"not an array: {type(data).__name__}"
    if dims is not None and tuple(data.shape) != tuple(dims):
        return f"wrong shape: {data.shape}, expected {tuple(dims)}"
    if dtype is not None and data.dtype != np.dtype(dtype):
        return f"wrong dtype: {data.dtype}, expected {np.dtype(dtype)}"
    if data.dtype.kind not in "iuf":
        return f"unsupported dtype {data.dtype}"
    if data.ndim == 0 or data.size == 0:
        return f"not a volume: shape {data.shape}"
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            return f"{data.size - int(finite.sum())} non-finite values"
    if not data.any():
        return "all-zero volume"
    nz = data.shape[-1]
    empty = 0
    while empty < nz and not data[..., nz - 1 - empty].any():
        empty += 1
    if empty:
        return f"truncated: {nz - empty} of {nz} slices"
    return ""


class TRClock:
    """Assigns TR indices from acquisition timestamps and classifies arrivals.

    Parameters
    ----------
    interval
        Seconds between volumes as streamed (TR / speed).
    late_fraction
        An arrival later than ``late_fraction × interval`` after acquisition is late.
    max_jump
        A timestamp more than this many TRs from the last TR re-anchors the clock so that it
        becomes the next TR (see :attr:`jump`): a sender whose clock jumped must neither end
        the run nor make the engine report (and remember) millions of gaps.
    """

    def __init__(self, interval: float, late_fraction: float = 0.5, max_jump: int = 1000) -> None:
        self.interval = interval
        self.late_after = late_fraction * interval
        self.max_jump = max_jump
        self.t0: float | None = None
        self.last = -1
        self.seen: dict[int, str] = {}
        self.jump = ""  # why the last assign() re-anchored the clock ("" if it did not)

    def assign(self, timestamp: float, received: float, sha1: str) -> tuple[int, str, str, list[int]]:
        """Return (TR index, status, reason, newly skipped TRs) for one arrival."""
        self.jump = ""
        if not math.isfinite(timestamp):
            return -1, "bad", f"non-finite timestamp {timestamp}", []
        if self.t0 is None:
            self.t0 = timestamp
        x = (timestamp - self.t0) / self.interval
        if not math.isfinite(x) or abs(x - self.last) > self.max_jump:
            self.jump = f"timestamp {x - self.last:+.4g} TRs from TR {self.last}; counting on from it"
            self.t0 = timestamp - (self.last + 1) * self.interval
            x = float(self.last + 1)
        k = round(x)
        if k in self.seen:
            same = self.seen[k] == sha1
            return k, "duplicate", "identical copy" if same else "conflict: different data", []
        self.seen[k] = sha1
        skipped = list(range(self.last + 1, k))
        delay = received - timestamp
        if k < self.last:
            return (
                k,
                "late",
                f"out of order: arrived {delay:.3f} s after acquisition, after TR {self.last}",
                [],
            )
        self.last = k
        if delay > self.late_after:
            return k, "late", f"arrived {delay:.3f} s after acquisition", skipped
        return k, "ok", "", skipped

    def missing(self) -> list[int]:
        """TRs up to the last one received that never arrived."""
        return [k for k in range(self.last + 1) if k not in self.seen]


def _geometry(info: pylsl.StreamInfo, cfg: IngestConfig) -> VolumeGeometry:
    """Geometry from the stream's desc, or from the user's settings for a plain stream."""
    geo = geometry_from_info(info)
    if geo is not None:
        return geo
    if not cfg.dims:
        raise ValueError(
            f"stream {info.name()!r} carries no geometry in its desc; give it with "
            f"--ingest.dims NX,NY,NZ (and --ingest.voxel-size, --ingest.tr)"
        )
    tr = cfg.tr or (1.0 / info.nominal_srate() if info.nominal_srate() > 0 else 0.0)
    if tr <= 0:
        raise ValueError(f"stream {info.name()!r} has an irregular rate; give the TR with --ingest.tr")
    geo = VolumeGeometry(tuple(cfg.dims), tuple(cfg.voxel_size), tr)
    if geo.n_voxels != info.channel_count():
        raise ValueError(
            f"--ingest.dims {tuple(cfg.dims)} makes {geo.n_voxels} voxels but stream "
            f"{info.name()!r} has {info.channel_count()} channels"
        )
    return geo


class VolumeIngest:
    """Receive volumes from an LSL stream in a background thread.

    Parameters
    ----------
    config
        Stream selection and checks.
    on_volume
        Called in the ingest thread with every received volume (in arrival order).
    on_event
        Called in the ingest thread with every reported event.
    """

    def __init__(
        self, config: IngestConfig, on_volume: Callable[[Volume], None], on_event: Callable[[Event], None]
    ) -> None:
        self.cfg = config
        self.on_volume = on_volume
        self.on_event = on_event
        self.info: pylsl.StreamInfo | None = None
        self.geometry: VolumeGeometry | None = None
        self.inlet: pylsl.StreamInlet | None = None
        self.clock: TRClock | None = None
        self.seq = 0
        self.counts = {"ok": 0, "late": 0, "duplicate": 0, "bad": 0}
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ connection
    def connect(self) -> VolumeGeometry:
        """Resolve the stream and open an inlet; returns the volume geometry.

        Raises
        ------
        StreamNotFoundError
            If no stream matches within ``resolve_timeout_s``.
        ValueError
            If the stream's geometry is missing or inconsistent.
        """
        c = self.cfg
        info = resolve_stream(c.name or None, c.type or None, c.source_id or None, c.resolve_timeout_s)
        self.inlet = self._open(info)
        self.info = self.inlet.info(10.0)
        self.geometry = _geometry(self.info, c)
        self.dtype = numpy_dtype(self.info)
        self.interval = 1.0 / self.info.nominal_srate() if self.info.nominal_srate() > 0 else self.geometry.tr
        self.clock = TRClock(self.interval, c.late_fraction, c.max_jump_trs)
        n = self.geometry.n_voxels
        # Preallocated ring: the volume handed on is a view into it, valid for `buffers` pulls.
        self.ring = np.empty((max(c.buffers, 2), n), self.dtype)
        log.info(
            "receiving %s (%s, %s voxels, %s) from %s, one volume every %.3f s",
            self.info.name(),
            self.geometry.dims,
            n,
            self.dtype,
            self.info.hostname(),
            self.interval,
        )
        return self.geometry

    def _open(self, info: pylsl.StreamInfo) -> pylsl.StreamInlet:
        inlet = pylsl.StreamInlet(
            info, max_buflen=360, max_chunklen=1, recover=False, processing_flags=pylsl.proc_clocksync
        )
        inlet.open_stream(10.0)
        # The first clock-offset estimate takes several round trips; do it now, not on the
        # first volume's pull (where it delayed that volume by ~0.7 s).
        inlet.time_correction(5.0)
        return inlet

    def _reconnect(self) -> bool:
        """Find the same source again after it was lost; False after ``lost_timeout_s``."""
        source = self.info.source_id() or None
        deadline = local_clock() + self.cfg.lost_timeout_s
        refused: set[str] = set()
        while not self.stopping.is_set() and local_clock() < deadline:
            pred = f"source_id='{source}'" if source else f"name='{self.info.name()}'"
            for info in pylsl.resolve_bypred(pred, 1, 1.0):
                try:
                    inlet = self._open(info)
                    full = inlet.info(5.0)
                except (LostError, TimeoutError):
                    continue  # the resolver's cache still held the old outlet
                try:
                    geo, dtype = _geometry(full, self.cfg), numpy_dtype(full)
                except ValueError as exc:  # e.g. a desc that disagrees with the channel count
                    geo, dtype, problem = None, None, str(exc)
                else:
                    problem = ""
                if geo is None or geo.dims != self.geometry.dims or dtype != self.dtype:
                    # Keep waiting: the right stream may still come back before the timeout.
                    why = problem or f"geometry {geo.dims} / {dtype}"
                    if why not in refused:  # once, not on every re-resolve
                        refused.add(why)
                        self._event(
                            "error",
                            -1,
                            f"the restarted stream is not usable: {why}, "
                            f"expected {self.geometry.dims} / {self.dtype}",
                        )
                    inlet.close_stream()
                    self.stopping.wait(0.5)
                    continue
                self.inlet = inlet
                return True
        return False

    # ------------------------------------------------------------------ receiving
    def _event(self, kind: str, tr: int, detail: str, **data) -> None:
        level = logging.INFO if kind in ("reconnected", "ended") else logging.WARNING
        log.log(level, "TR %d: %s — %s", tr, kind, detail)
        self.on_event(Event(kind, tr, detail, data=data))

    def _handle(self, slot: int, timestamp: float, received: float) -> None:
        flat = self.ring[slot]
        data = flat.reshape(self.geometry.dims)
        sha1 = checksum(flat)
        k, status, reason, skipped = self.clock.assign(timestamp, received, sha1)
        if self.clock.jump:
            self._event("clock_jump", k, self.clock.jump)
        for m in skipped:
            self._event("gap", m, "no volume received for this TR (yet)")
        if status == "ok" or status == "late":
            bad = validate_volume(data, self.geometry.dims, self.dtype)
            if bad:
                status, reason = "bad", bad
        if status != "ok":
            self._event(status, k, reason)
        vol = Volume(
            self.seq,
            k,
            data,
            timestamp,
            received,
            status,
            reason,
            sha1,
            stamps={"acquired": timestamp, "received": received},
        )
        self.seq += 1
        self.counts[status] += 1
        self.on_volume(vol)

    def _loop(self) -> None:
        slot = 0
        try:
            while not self.stopping.is_set():
                try:
                    _, ts = self.inlet.pull_chunk(
                        timeout=0.2, max_samples=1, dest_obj=self.ring[slot : slot + 1]
                    )
                except LostError:
                    nxt = self.clock.last + 1
                    self._event("lost", nxt, "the volume stream disappeared; waiting for it to return")
                    if not self._reconnect():
                        self._event(
                            "ended",
                            nxt,
                            f"the stream did not return within {self.cfg.lost_timeout_s:g} s; ending the run",
                        )
                        return
                    self._event("reconnected", self.clock.last + 1, "the volume stream is back")
                    continue
                if len(ts) == 0:
                    continue
                self._handle(slot, float(ts[0]), local_clock())
                slot = (slot + 1) % len(self.ring)
                if self.cfg.max_trs and self.clock.last >= self.cfg.max_trs - 1:
                    return
        except Exception as exc:  # the run must end visibly, never hang
            log.exception("ingest failed")
            self._event("error", -1, f"ingest failed: {exc!r}")
        finally:
            for k in self.clock.missing() if self.clock else []:
                self._event("missing", k, "this TR never arrived")
            self.finished.set()

    def start(self) -> None:
        """Start the ingest thread (after :meth:`connect`)."""
        if self.inlet is None:
            raise RuntimeError("connect() first")
        self.thread = threading.Thread(target=self._loop, name="ingest", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop receiving and wait for the thread."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)


class FrameIngest:
    """Receive a stimulus-frame stream (ground truth for the display and the demo video).

    Frames are kept with their display timestamps for ``keep_s`` seconds. The stream is
    optional: if it disappears, ``stimulus_lost`` is reported and the inlet looks for the same
    source again (``stimulus_reconnected``) until :meth:`stop`; volumes are never affected.

    Parameters
    ----------
    info
        The stimulus stream.
    keep_s
        Seconds of frames kept.
    on_event
        Called (in the receiving thread) with each reported event.
    """

    def __init__(
        self, info: pylsl.StreamInfo, keep_s: float = 120.0, on_event: Callable[[Event], None] | None = None
    ) -> None:
        self.on_event = on_event
        self.source_id = info.source_id()
        self.inlet, full = self._open(info)
        self.size = frame_size_from_info(full)
        fps = full.nominal_srate() or 8.0
        self.frames: deque[tuple[float, np.ndarray]] = deque(maxlen=int(keep_s * fps))
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="stimulus-ingest", daemon=True)

    @staticmethod
    def _open(info: pylsl.StreamInfo) -> tuple[pylsl.StreamInlet, pylsl.StreamInfo]:
        inlet = pylsl.StreamInlet(info, max_buflen=60, recover=False, processing_flags=pylsl.proc_clocksync)
        full = inlet.info(5.0)
        inlet.time_correction(5.0)  # see VolumeIngest._open
        return inlet, full

    @classmethod
    def find(
        cls,
        volume_info: pylsl.StreamInfo,
        timeout: float = 2.0,
        on_event: Callable[[Event], None] | None = None,
        keep_s: float = 120.0,
    ) -> FrameIngest | None:
        """The stimulus stream that belongs to a volume stream (source id + ``-stimulus``);
        None if there is none or it cannot be opened (the run goes on without it)."""
        sid = volume_info.source_id()
        pred = f"source_id='{sid}-stimulus'" if sid else f"type='{STIMULUS_STREAM_TYPE}'"
        found = pylsl.resolve_bypred(pred, 1, timeout)
        if not found:
            return None
        try:
            return cls(found[0], keep_s=keep_s, on_event=on_event)
        except Exception as exc:  # gone between resolving and opening, or a malformed desc
            log.warning("could not open the stimulus stream (%r); running without it", exc)
            return None

    def _event(self, kind: str, detail: str) -> None:
        log.warning("%s — %s", kind, detail)
        if self.on_event is not None:
            self.on_event(Event(kind, -1, detail))

    def _reconnect(self) -> bool:
        """Wait for the same stimulus source to return (until :meth:`stop`)."""
        pred = f"source_id='{self.source_id}'" if self.source_id else f"type='{STIMULUS_STREAM_TYPE}'"
        while not self.stopping.is_set():
            for info in pylsl.resolve_bypred(pred, 1, 1.0):
                try:
                    inlet, full = self._open(info)
                    if frame_size_from_info(full) != self.size:
                        raise ValueError(f"frame size {frame_size_from_info(full)} != {self.size}")
                except (LostError, TimeoutError, ValueError) as exc:
                    log.debug("stimulus stream not usable yet: %r", exc)
                    self.stopping.wait(1.0)
                    continue
                self.inlet = inlet
                return True
        return False

    def _loop(self) -> None:
        h, w = self.size
        try:
            while not self.stopping.is_set():
                try:
                    data, ts = self.inlet.pull_chunk(
                        timeout=0.2, max_samples=64, min_samples=1, as_numpy=True
                    )
                except (LostError, StreamNotFoundError):
                    self._event("stimulus_lost", "the stimulus stream disappeared; going on without it")
                    if not self._reconnect():
                        return
                    self._event("stimulus_reconnected", "the stimulus stream is back")
                    continue
                if len(ts):
                    frames = data.view(np.uint8).reshape(-1, h, w, 3)
                    with self.lock:
                        self.frames.extend(zip(ts.tolist(), frames.copy()))
        except Exception as exc:  # ground truth is optional: report, never take the run down
            log.exception("stimulus ingest failed")
            self._event("stimulus_lost", f"stimulus ingest failed: {exc!r}; the run goes on without it")

    def start(self) -> None:
        """Start receiving."""
        self.thread.start()

    def stop(self) -> None:
        """Stop receiving."""
        self.stopping.set()
        self.thread.join(2.0)

    def between(self, t0: float, t1: float) -> np.ndarray:
        """Frames displayed in ``[t0, t1)`` as (n, H, W, 3) uint8 (n may be 0)."""
        with self.lock:
            sel = [f for t, f in self.frames if t0 <= t < t1]
        if not sel:
            return np.zeros((0, *self.size, 3), np.uint8)
        return np.stack(sel)
