"""``scanner-sim stream``: push simulated volumes (and stimulus frames) over LSL on the clock.

The volume of TR ``k`` is acquired over ``[k, k+1)`` TRs after the start and pushed at the end
of its acquisition, timestamped with that moment; the frames shown during TR ``k`` go out on
a second stream at their display times. ``speed`` runs the whole schedule N times faster.
Volumes are generated ahead of time by a producer thread so that generation never delays a
push. Faults (:mod:`scanner_sim.faults`) are injected by TR index and logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rtdecode.geometry import VolumeGeometry
from rtdecode.lsl import FrameOutlet, VolumeOutlet, local_clock
from scanner_sim import stimuli
from scanner_sim.brain import BrainConfig, make_subject, stimulus_features
from scanner_sim.clock import Pacer, raise_priority
from scanner_sim.faults import FaultConfig, FaultPlan
from scanner_sim.scanner import ScannerConfig, acquire

__all__ = ["StreamConfig", "StreamSource", "simulated_source", "stream"]

log = logging.getLogger("scanner_sim.stream")


@dataclass(frozen=True)
class StreamConfig:
    """Settings of ``scanner-sim stream``."""

    subject: int = field(default=1, metadata={"help": "subject number (1-based)"})
    seed: int = 0
    n_tr: int = field(default=300, metadata={"help": "volumes to stream"})
    speed: float = field(default=1.0, metadata={"help": "run N times faster than real time"})
    dtype: Literal["float32", "int16"] = "float32"
    name: str = "scanner_sim"
    source_id: str = field(default="", metadata={"help": "LSL source id (default scanner_sim-<subject>)"})
    stimulus_stream: bool = field(default=True, metadata={"help": "also stream the stimulus frames"})
    wait_consumer_s: float = field(default=30.0, metadata={"help": "wait this long for a receiver first"})
    movie_seed: int = 1
    dataset: Path | None = field(default=None, metadata={"help": "stream a run of this dataset instead"})
    run: int = 0
    linger_s: float = field(
        default=2.0, metadata={"help": "keep the outlet open this long after the last volume"}
    )
    sent_log: Path | None = field(
        default=None, metadata={"help": "JSON lines: TR, timestamp, sha1 of every volume sent"}
    )
    faults: FaultConfig = field(default_factory=FaultConfig)
    scanner: ScannerConfig = field(default_factory=ScannerConfig)
    brain: BrainConfig = field(default_factory=BrainConfig)
    stim: stimuli.StimulusConfig = field(default_factory=stimuli.StimulusConfig)


@dataclass
class StreamSource:
    """What is streamed: geometry, volumes (lazily) and the frames of every TR."""

    geometry: VolumeGeometry
    n_tr: int
    volumes: Iterator[np.ndarray]
    frames: np.ndarray | None  # (n_tr * F, H, W, 3) uint8
    fps: float
    motion: np.ndarray | None = None


def simulated_source(cfg: StreamConfig) -> StreamSource:
    """Simulate subject ``cfg.subject`` watching a movie, or read a dataset run."""
    f = round(cfg.scanner.tr * cfg.stim.fps)
    if cfg.dataset is not None:
        from scanner_sim.dataset import Dataset

        ds = Dataset(cfg.dataset)
        name = ds.subjects[cfg.subject - 1]
        run = ds.runs[cfg.run]
        vols = ds.volumes(name, cfg.run)[: cfg.n_tr]
        geometry = ds.geometry(name)
        frames = ds.frames(run.segment)[: len(vols) * f]
        return StreamSource(
            geometry,
            len(vols),
            iter(vols),
            frames,
            ds.config.stimulus.fps,
            ds.subject(name)["motion"][cfg.run][: len(vols)],
        )
    subject = make_subject(cfg.subject - 1, cfg.seed, cfg.brain, cfg.stim.fps, cfg.stim.size)
    movie = stimuli.generate_movie(cfg.n_tr * f, seed=cfg.movie_seed, config=cfg.stim)
    bold = subject.bold(stimulus_features(movie), cfg.stim.fps, cfg.scanner.tr, cfg.n_tr)
    run = acquire(
        subject,
        bold,
        np.random.SeedSequence([cfg.seed, 9000 + cfg.subject, cfg.movie_seed]),
        cfg.scanner,
        np.dtype(cfg.dtype),
    )
    geometry = VolumeGeometry(
        subject.geometry.dims,
        subject.geometry.voxel_size,
        cfg.scanner.tr,
        subject=subject.name,
        session=f"sim-{cfg.seed}-{cfg.movie_seed}",
    )
    return StreamSource(geometry, cfg.n_tr, run.volumes, movie.frames, cfg.stim.fps, run.motion)


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this child when the streaming process dies (even by
    SIGKILL), so no producer is left behind holding a subject's volumes."""
    with contextlib.suppress(Exception):  # not Linux / no libc: the daemon flag still applies
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)


def _produce(it: Iterator[np.ndarray], q, parent: int) -> None:
    _die_with_parent(parent)
    try:
        for v in it:
            q.put(v)
    finally:
        q.put(None)


def _prefetch(it: Iterator[np.ndarray], depth: int = 8) -> Iterator[np.ndarray]:
    """Generate volumes ahead in a child process (forked: it inherits the generator).

    A thread would share the GIL with the pushing loop and delay pushes by milliseconds
    (resampling a volume holds it); a separate process keeps the stream on its clock.
    """
    ctx = mp.get_context("fork")
    q = ctx.Queue(depth)
    proc = ctx.Process(target=_produce, args=(it, q, os.getpid()), daemon=True, name="volume-producer")
    proc.start()
    try:
        while (v := q.get()) is not None:
            yield v
    finally:
        proc.terminate()


class _Streamer:
    """Runs the event schedule of one streamed run."""

    def __init__(
        self,
        cfg: StreamConfig,
        src: StreamSource,
        stop: threading.Event | None,
        on_volume: Callable[[int, float, np.ndarray], None] | None,
    ) -> None:
        self.cfg, self.src, self.stop = cfg, src, stop or threading.Event()
        self.on_volume = on_volume
        self.source_id = cfg.source_id or f"scanner_sim-{cfg.subject}"
        self.plan = FaultPlan(cfg.faults, src.n_tr)
        self.volumes = _prefetch(src.volumes)
        self.buffer: dict[int, np.ndarray] = {}
        self.next_volume = 0
        self.extra = {"speed": cfg.speed, "simulator": "scanner_sim"}
        self.outlet = self._volume_outlet()
        self.frame_outlet = None
        if cfg.stimulus_stream and src.frames is not None:
            h, w = src.frames.shape[1:3]
            self.frame_outlet = FrameOutlet(
                (h, w), src.fps * cfg.speed, f"{cfg.name}_stimulus", f"{self.source_id}-stimulus"
            )
        self.sent_fh = open(cfg.sent_log, "w") if cfg.sent_log else None
        self.sent = 0

    def _volume_outlet(self) -> VolumeOutlet:
        # nominal_srate reflects the actual rate; desc keeps the physical TR.
        geo = self.src.geometry
        fast = VolumeGeometry(
            geo.dims,
            geo.voxel_size,
            geo.tr / self.cfg.speed,
            geo.affine,
            subject=geo.subject,
            session=geo.session,
        )
        extra = {**self.extra, "physical_tr": geo.tr}
        return VolumeOutlet(fast, self.cfg.name, self.source_id, np.dtype(self.cfg.dtype), extra)

    def _volume(self, k: int) -> np.ndarray:
        """Volume ``k`` ready to push: faults applied, in the stream's dtype, contiguous."""
        while k not in self.buffer:
            raw = next(self.volumes)
            i = self.next_volume
            self.buffer[i] = np.ascontiguousarray(self.plan.corrupt(raw, i), self.outlet.dtype)
            self.next_volume += 1
        return self.buffer[k]

    def _push_volume(self, k: int, ts: float) -> None:
        vol = self._volume(k)
        if self.plan.has("drop", k):
            self.plan.record("drop", k)
        else:
            copies = 2 if self.plan.has("duplicate", k) else 1
            for _ in range(copies):
                self.outlet.push(vol, ts)
                pushed = local_clock()
                self.sent += 1
                self._log_sent(k, ts, pushed, vol)
            if copies == 2:
                self.plan.record("duplicate", k)
        del self.buffer[k]

    def _log_sent(self, k: int, ts: float, pushed: float, vol: np.ndarray) -> None:
        if self.sent_fh:
            digest = hashlib.sha1(vol.tobytes()).hexdigest()
            line = {"tr": k, "timestamp": ts, "pushed": pushed, "sha1": digest}
            self.sent_fh.write(json.dumps(line) + "\n")
            self.sent_fh.flush()
        if self.on_volume:
            self.on_volume(k, ts, vol)

    def _restart(self, k: int) -> None:
        self.plan.record("restart", k, pause_s=self.cfg.faults.restart_pause_s)
        self.outlet.close()
        self.stop.wait(self.cfg.faults.restart_pause_s)
        self.outlet = self._volume_outlet()
        if not self.outlet.wait_for_consumers(self.cfg.wait_consumer_s):
            log.warning("no receiver reconnected within %.0f s after the restart", self.cfg.wait_consumer_s)

    def schedule(self, pacer: Pacer) -> list[tuple[float, int, str, int, int]]:
        """All events: (due time, order, kind, TR, frame) sorted by time."""
        f = round(self.src.geometry.tr * self.src.fps)
        events = []
        for k in range(self.src.n_tr):
            t_acq = pacer.deadline(k + 1)
            due = t_acq + (self.cfg.faults.delay_s if self.plan.has("delay", k) else 0.0)
            if self.plan.has("restart", k):
                events.append((due - 1e-4, 0, "restart", k, 0))
            events.append((due, 1, "volume", k, 0))
            # Fetch and convert it half a TR early: CPU work at a push's deadline delays it.
            events.append((pacer.deadline(k + 0.5), 3, "prepare", k, 0))
            if self.frame_outlet is not None:
                events.extend((pacer.deadline(k + j / f), 2, "frame", k, k * f + j) for j in range(f))
        heapq.heapify(events)
        return events

    def run(self) -> int:
        if self.cfg.wait_consumer_s > 0 and not self.outlet.wait_for_consumers(self.cfg.wait_consumer_s):
            log.warning("no receiver after %.0f s; streaming anyway", self.cfg.wait_consumer_s)
        if self.frame_outlet is not None:
            # A display subscribes to both streams; give it a moment to join the second.
            self.frame_outlet.outlet.wait_for_consumers(min(self.cfg.wait_consumer_s, 1.0))
        if self.src.n_tr:
            self._volume(0)  # wait for the first volume before the clock starts
        log.debug("scheduling: %s", raise_priority())
        pacer = Pacer(self.src.geometry.tr, self.cfg.speed, start=local_clock() + 0.2)
        events = self.schedule(pacer)
        log.info(
            "streaming %d volumes of %s every %.3f s", self.src.n_tr, self.src.geometry.dims, pacer.interval
        )
        try:
            while events and not self.stop.is_set():
                due, _, kind, k, j = heapq.heappop(events)
                pacer.wait_until(due)
                if kind == "volume":
                    if self.plan.has("delay", k):
                        self.plan.record("delay", k, late_s=self.cfg.faults.delay_s)
                    self._push_volume(k, pacer.deadline(k + 1))
                elif kind == "frame":
                    self.frame_outlet.push(self.src.frames[j], due)
                elif kind == "prepare":
                    self._volume(k)
                else:
                    self._restart(k)
            # Closing at once could cut off the last samples still in the outlet's buffers.
            self.stop.wait(self.cfg.linger_s)
        finally:
            self.plan.close()
            if self.sent_fh:
                self.sent_fh.close()
        return self.sent


def stream(
    cfg: StreamConfig,
    stop: threading.Event | None = None,
    on_volume: Callable[[int, float, np.ndarray], None] | None = None,
    source: StreamSource | None = None,
) -> int:
    """Stream a run over LSL; returns the number of volume samples pushed.

    Parameters
    ----------
    cfg
        Stream settings (subject, speed, faults, ...).
    stop
        Set it to end the stream early.
    on_volume
        Called with (TR, timestamp, volume) after every push.
    source
        What to stream (default: :func:`simulated_source`).
    """
    src = source or simulated_source(cfg)
    return _Streamer(cfg, src, stop, on_volume).run()
