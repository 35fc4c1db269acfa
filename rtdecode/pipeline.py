"""The real-time pipeline: ingest → record → preprocess → decode → render → fuse → outputs.

Stages are asyncio tasks joined by queues. Ingestion and recording happen in the ingest
thread and never wait for anything downstream. Preprocessing sees every usable volume (its
state is causal and must not skip), in a bounded queue that sheds its oldest entry — counted
and reported — only if preprocessing falls a whole buffer behind. Decoding and rendering
take the newest TR from a one-place slot: when they fall behind, stale work is dropped,
counted and reported, never silently queued. CPU-heavy calls run in executor threads so the
loop stays responsive. Every TR carries stage-boundary timestamps (``acquired``,
``received``, ``recorded``, ``preprocessed``, ``decoded``, ``rendered``, ``output``) on the
LSL clock, written to the session record's ``timings.jsonl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtdecode.bundle import Bundle, load_bundle
from rtdecode.config import config_to_dict
from rtdecode.decode import Decoder, load_decoder
from rtdecode.ingest import FrameIngest, IngestConfig, VolumeIngest
from rtdecode.lsl import local_clock
from rtdecode.outputs import ClipResult, Output
from rtdecode.preprocess import PreprocessConfig, Preprocessed, Preprocessor
from rtdecode.record import RecordError, SessionRecord
from rtdecode.render import Renderer, load_renderer
from rtdecode.volume import Event, Volume

__all__ = ["ClipResult", "Engine", "EngineConfig", "LatestSlot", "Output"]

log = logging.getLogger("rtdecode.pipeline")
END = object()


@dataclass(frozen=True)
class EngineConfig:
    """Settings of ``rtdecode run`` (and the engine part of ``rtdecode demo``)."""

    bundle: Path = field(default=Path("engines/default"), metadata={"help": "model bundle directory"})
    sessions: Path = field(default=Path("sessions"), metadata={"help": "where session records go"})
    fsync: bool = field(default=False, metadata={"help": "fsync every volume (power-loss safety)"})
    queue_size: int = field(default=32, metadata={"help": "volumes preprocessing may fall behind"})
    log_every: int = field(default=1, metadata={"help": "status line every N TRs (0: never)"})
    ingest: IngestConfig = field(default_factory=IngestConfig)
    preprocess: PreprocessConfig | None = field(default=None, metadata={"help": "default: the bundle's"})


class LatestSlot:
    """A one-place queue where a new item replaces (drops) the waiting one: newest wins.

    :meth:`close` lets the consumer take the waiting item first, then :data:`END`.
    """

    def __init__(self, on_drop: Callable[[Any], None]) -> None:
        self.item: Any = None
        self.closed = False
        self.ready = asyncio.Event()
        self.on_drop = on_drop

    def put(self, item: Any) -> None:
        """Offer an item; a waiting item not yet taken is dropped."""
        if self.item is not None:
            self.on_drop(self.item)
        self.item = item
        self.ready.set()

    def close(self) -> None:
        """No more items: the consumer drains the slot, then receives END."""
        self.closed = True
        self.ready.set()

    async def get(self) -> Any:
        """Wait for and take the newest item (END once closed and empty)."""
        await self.ready.wait()
        item, self.item = self.item, None
        if item is None:
            return END
        if not self.closed:
            self.ready.clear()
        return item


def _ms(stamps: dict[str, float], a: str, b: str) -> float | None:
    if a in stamps and b in stamps:
        return (stamps[b] - stamps[a]) * 1000.0
    return None


class Engine:
    """One real-time session.

    Parameters
    ----------
    config
        Engine settings.
    outputs
        Extra outputs (display, MQTT, LSL feedback, demo video ...).
    bundle, decoder, renderer
        Override what the bundle provides (tests, benchmarks).
    """

    def __init__(
        self,
        config: EngineConfig,
        outputs: list[Output] | None = None,
        bundle: Bundle | None = None,
        decoder: Decoder | None = None,
        renderer: Renderer | None = None,
    ) -> None:
        self.cfg = config
        self.bundle = bundle or load_bundle(config.bundle)
        self.decoder = decoder or load_decoder(self.bundle)
        self.renderer = renderer or load_renderer(self.bundle)
        self.outputs = list(outputs or [])
        self.lags = self.decoder.lags
        self.events: list[Event] = []
        self.drops = {"preprocess": 0, "decode": 0, "render": 0}
        self.latencies: list[dict[str, float]] = []
        self.record: SessionRecord | None = None
        self.frames: FrameIngest | None = None
        self.window: dict[int, np.ndarray] = {}
        self._pre_exec = ThreadPoolExecutor(1, thread_name_prefix="preprocess")
        self._model_exec = ThreadPoolExecutor(1, thread_name_prefix="model")

    # ------------------------------------------------------------------ setup
    def _check_geometry(self) -> None:
        geo = self.ingest.geometry
        want = tuple(self.bundle.manifest["geometry"]["dims"])
        if geo.dims != want:
            raise ValueError(
                f"the stream's volumes are {geo.dims} but bundle {self.bundle.path} was "
                f"trained on {want}; use a bundle for this geometry"
            )

    def _preprocessor(self) -> Preprocessor:
        cfg = self.cfg.preprocess
        if cfg is None:
            saved = self.bundle.manifest.get("preprocess", {})
            cfg = PreprocessConfig(
                **{k: v for k, v in saved.items() if k in PreprocessConfig.__dataclass_fields__}
            )
        mask = np.zeros(self.ingest.geometry.n_voxels, bool)
        mask[self.decoder.mask_index] = True
        return Preprocessor(self.ingest.geometry, cfg, mask=mask.reshape(self.ingest.geometry.dims))

    def tr_end_time(self, tr: int) -> float | None:
        """LSL time at which TR ``tr``'s acquisition ended (None before the first volume)."""
        clock = self.ingest.clock
        if clock is None or clock.t0 is None:
            return None
        return clock.t0 + tr * clock.interval

    def stimulus_frames(self, tr: int, n: int) -> np.ndarray | None:
        """The ``n`` stimulus frames shown during stimulus TR ``tr`` (None without a stimulus
        stream or before any frame of that TR arrived)."""
        if self.frames is None or (end := self.tr_end_time(tr)) is None:
            return None
        shown = self.frames.between(end - self.ingest.interval, end)
        if len(shown) == 0:
            return None
        return shown[np.minimum(np.arange(n) * len(shown) // n, len(shown) - 1)]

    # ------------------------------------------------------------------ thread → loop
    def _on_volume(self, vol: Volume) -> None:
        """Ingest thread: record first, then hand over to the loop."""
        try:
            self.record.write_volume(vol)
        except RecordError as exc:
            self._on_event(Event("error", vol.tr, str(exc)))
        self.loop.call_soon_threadsafe(self._enqueue, vol)

    def _on_event(self, event: Event) -> None:
        """Any thread: record and publish an event."""
        self.events.append(event)
        if self.record is not None:
            with contextlib.suppress(RecordError):
                self.record.write_event(event)
        if getattr(self, "loop", None) is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._notify_event, event)

    def _notify_event(self, event: Event) -> None:
        for out in self.outputs:
            out.event(event)

    def _enqueue(self, vol: Volume) -> None:
        if self.pre_q.full():
            old = self.pre_q.get_nowait()
            self._drop("preprocess", old.tr if old is not END else -1)
        self.pre_q.put_nowait(vol)

    def _drop(self, stage: str, tr: int) -> None:
        self.drops[stage] += 1
        self._on_event(
            Event("drop", tr, f"{stage} fell behind; TR {tr} skipped (newest wins)", data={"stage": stage})
        )

    # ------------------------------------------------------------------ stages
    async def _preprocess_stage(self) -> None:
        pre = self._preprocessor()
        while (vol := await self.pre_q.get()) is not END:
            if not vol.usable:
                self.record.write_timing(vol.tr, {**vol.stamps, "status": vol.status})
                continue
            data = np.array(vol.data, dtype=np.float32)  # leave the ingest ring buffer at once
            result = await self.loop.run_in_executor(self._pre_exec, pre.step, data)
            vol.stamps["preprocessed"] = local_clock()
            self.record.write_preprocess(
                vol.tr,
                result.motion,
                result.fd,
                spikes=result.spikes,
                settled=result.settled,
                iterations=result.iterations,
            )
            self.window[vol.tr] = result.values
            for old in [k for k in self.window if k < vol.tr - max(self.lags) - 4]:
                del self.window[old]
            status = self._status(vol, result)
            for out in self.outputs:
                out.preprocessed(vol.tr, result, status)
            stim_tr = vol.tr - max(self.lags)
            if stim_tr >= 0:
                self.decode_slot.put((stim_tr, vol))
            else:
                self.record.write_timing(vol.tr, dict(vol.stamps))
        self.decode_slot.close()

    def _window(self, stim_tr: int) -> tuple[np.ndarray, str]:
        rows, degraded = [], []
        for lag in self.lags:
            k = stim_tr + lag
            for cand in (k, k - 1, k + 1):
                if cand in self.window:
                    rows.append(self.window[cand])
                    if cand != k:
                        degraded.append(f"TR {k} missing, used {cand}")
                    break
            else:
                return np.empty(0), f"TR {k} missing"
        return np.stack(rows), "; ".join(degraded)

    async def _decode_stage(self) -> None:
        while (item := await self.decode_slot.get()) is not END:
            stim_tr, vol = item
            window, degraded = self._window(stim_tr)
            if window.size == 0:
                self._on_event(Event("skipped", stim_tr, f"cannot decode: {degraded}"))
                self.record.write_timing(vol.tr, dict(vol.stamps))
                continue
            cond = await self.loop.run_in_executor(self._model_exec, self.decoder.decode, window, stim_tr)
            vol.stamps["decoded"] = local_clock()
            cond.degraded = degraded
            cond.stamps = vol.stamps
            self.record.write_conditions(stim_tr, cond.to_dict())
            for out in self.outputs:
                out.decoded(cond)
            self.render_slot.put((cond, vol))
        self.render_slot.close()

    async def _render_stage(self) -> None:
        while (item := await self.render_slot.get()) is not END:
            cond, vol = item
            clip = await self.loop.run_in_executor(self._model_exec, self.renderer.render, cond)
            vol.stamps["rendered"] = local_clock()
            self.record.write_clip(cond.tr, clip)
            result = ClipResult(cond.tr, vol.tr, clip, cond, vol.stamps)
            for out in self.outputs:
                out.clip(result)
            vol.stamps["output"] = local_clock()
            self.latencies.append(dict(vol.stamps))
            self.record.write_timing(vol.tr, {**vol.stamps, "clip_tr": cond.tr})

    # ------------------------------------------------------------------ health
    def _status(self, vol: Volume, result: Preprocessed) -> dict[str, Any]:
        counts = dict(self.ingest.counts)
        gaps = sum(1 for e in self.events if e.kind == "gap")
        status = {
            "tr": vol.tr,
            "fd": result.fd,
            "motion": result.motion.tolist(),
            "spikes": result.spikes,
            "settled": result.settled,
            "counts": counts,
            "gaps": gaps,
            "drops": dict(self.drops),
            "receive_to_preprocessed_ms": _ms(vol.stamps, "received", "preprocessed"),
            "time": time.time(),
        }
        if self.latencies:
            last = self.latencies[-1]
            status["receive_to_clip_ms"] = _ms(last, "received", "rendered")
        if self.cfg.log_every and vol.tr % self.cfg.log_every == 0:
            clip = status.get("receive_to_clip_ms")
            log.info(
                "TR %4d | pre %5.1f ms | clip %s | FD %.2f mm | late %d bad %d dup %d gaps %d | drops %d",
                vol.tr,
                status["receive_to_preprocessed_ms"] or 0.0,
                f"{clip:5.1f} ms" if clip is not None else "  —  ",
                result.fd,
                counts["late"],
                counts["bad"],
                counts["duplicate"],
                gaps,
                sum(self.drops.values()),
            )
        return status

    def summary(self) -> dict[str, Any]:
        """Counts, missing TRs, drops and latency percentiles of the session."""
        lat: dict[str, Any] = {}
        for name, (a, b) in {
            "received_to_preprocessed": ("received", "preprocessed"),
            "received_to_decoded": ("received", "decoded"),
            "received_to_clip": ("received", "rendered"),
        }.items():
            vals = [v for v in (_ms(s, a, b) for s in self.latencies) if v is not None]
            if vals:
                lat[name] = {f"p{p}": float(np.percentile(vals, p)) for p in (50, 95, 99)}
                lat[name]["max"] = float(np.max(vals))
                lat[name]["n"] = len(vals)
        kinds: dict[str, list[int]] = {}
        for e in self.events:
            kinds.setdefault(e.kind, []).append(e.tr)
        return {
            "volumes": dict(self.ingest.counts),
            "events": kinds,
            "drops": dict(self.drops),
            "clips": len(self.latencies),
            "latency_ms": lat,
            "record": str(self.record.path) if self.record else None,
        }

    # ------------------------------------------------------------------ run
    def request_stop(self) -> None:
        """Ask the run to end (Ctrl-C): stop receiving, finish queued work, close the record."""
        log.info("stopping: finishing queued work and closing the record")
        self.ingest.stop(timeout=0)

    async def run(self) -> dict[str, Any]:
        """Connect, run until the stream ends (or :meth:`request_stop`), close the record."""
        self.loop = asyncio.get_running_loop()
        self.pre_q: asyncio.Queue = asyncio.Queue(self.cfg.queue_size)
        self.decode_slot = LatestSlot(lambda item: self._drop("decode", item[0]))
        self.render_slot = LatestSlot(lambda item: self._drop("render", item[0].tr))
        self.ingest = VolumeIngest(self.cfg.ingest, self._on_volume, self._on_event)
        await self.loop.run_in_executor(None, self.ingest.connect)
        self._check_geometry()
        meta = {
            "config": config_to_dict(self.cfg),
            "bundle": str(self.bundle.path),
            "bundle_digest": self.bundle.digest,
            "stream": self.ingest.info.name(),
            "source_id": self.ingest.info.source_id(),
            "dtype": str(self.ingest.dtype),
        }
        self.record = SessionRecord.create(
            self.cfg.sessions, self.ingest.geometry, meta, fsync=self.cfg.fsync
        )
        log.info("session record: %s", self.record.path)
        for out in self.outputs:
            out.start(self)
        # Start pulling at once: volumes waiting in the inlet would otherwise count as late.
        self.ingest.start()
        stages = [
            asyncio.create_task(c)
            for c in (self._preprocess_stage(), self._decode_stage(), self._render_stage())
        ]
        if self.cfg.ingest.stimulus:
            self.frames = await self.loop.run_in_executor(None, FrameIngest.find, self.ingest.info)
            if self.frames is not None:
                self.frames.start()
        try:
            await self.loop.run_in_executor(None, self.ingest.finished.wait)
        finally:
            self.ingest.stop()
            self._enqueue(END)
            await asyncio.gather(*stages, return_exceptions=True)
            await self._close()
        return self.summary()

    async def _close(self) -> None:
        if self.frames is not None:
            self.frames.stop()
        for out in self.outputs:
            try:
                out.close()
            except Exception:  # an output failing at shutdown must not lose the record
                log.exception("output %s failed to close", out.name)
        summary = self.summary()
        (self.record.path / "summary.json").write_text(json.dumps(summary, indent=1))
        self.record.close(video_fps=float(self.bundle.manifest["fps"]))
        self._pre_exec.shutdown(wait=False)
        self._model_exec.shutdown(wait=False)
