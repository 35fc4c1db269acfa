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
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtdecode.bundle import Bundle, load_bundle
from rtdecode.conditions import Conditions
from rtdecode.config import config_to_dict
from rtdecode.decode import Decoder, load_decoder
from rtdecode.fuse import Fuser, FusionConfig, render_fused
from rtdecode.geometry import VolumeGeometry
from rtdecode.ingest import FrameIngest, IngestConfig, VolumeIngest
from rtdecode.lsl import local_clock
from rtdecode.outputs import ClipResult, Output
from rtdecode.preprocess import PreprocessConfig, Preprocessed, Preprocessor
from rtdecode.record import GuardedRecord, RecordError, SessionRecord
from rtdecode.render import Renderer, load_renderer
from rtdecode.volume import Event, Volume

__all__ = ["ClipResult", "Engine", "EngineConfig", "LatestSlot", "Output", "make_preprocessor"]

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
    renderer: str = field(
        default="bundle",
        metadata={"help": "bundle (its student), teacher, blurry (no diffusion) or diffusers:PATH"},
    )
    steps: int = field(default=0, metadata={"help": "sampler steps (0: the bundle's)"})
    warm_up: int = field(default=1, metadata={"help": "decode+render passes before the stream starts"})
    backend: str = field(
        default="auto", metadata={"help": "auto|torch|onnxruntime|tensorrt|torch-tensorrt (models' runtime)"}
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto|fp32|fp16|int8 (auto: int8 render engines on onnxruntime, fp16 on GPUs)"},
    )
    engine_cache: Path = field(default=Path("cache/engines"), metadata={"help": "compiled engines"})
    ingest: IngestConfig = field(default_factory=IngestConfig)
    preprocess: PreprocessConfig | None = field(default=None, metadata={"help": "default: the bundle's"})
    fusion: FusionConfig = field(default_factory=FusionConfig)


def make_preprocessor(
    bundle: Bundle, decoder: Decoder, geometry: VolumeGeometry, config: PreprocessConfig | None = None
) -> Preprocessor:
    """The preprocessing a bundle calls for: its saved settings (or ``config``) and the
    decoder's voxel mask on the stream's grid (shared by the engine and offline checks)."""
    if config is None:
        saved = bundle.manifest.get("preprocess", {})
        known = PreprocessConfig.__dataclass_fields__
        config = PreprocessConfig(**{k: v for k, v in saved.items() if k in known})
    mask = np.zeros(geometry.n_voxels, bool)
    mask[decoder.mask_index] = True
    return Preprocessor(geometry, config, mask=mask.reshape(geometry.dims))


def compile_stages(
    bundle: Bundle,
    decoder: Decoder | None,
    renderer: Renderer | None,
    backend: str,
    cache: Path,
    which: str = "student",
    precision: str = "auto",
) -> None:
    """Swap a bundle's decoder and renderer networks for compiled engines, in place (cached;
    see :mod:`rtdecode.backends`). Stages without compilable networks are left as they are.

    With ``backend="auto"`` a failure is logged and the stages stay in torch; an explicitly
    requested backend raises.
    """
    from rtdecode.backends.choice import resolve_backend, stage_precisions
    from rtdecode.backends.models import bundle_digest, compile_decoder_stage, compile_render_stage

    key = {"bundle": bundle_digest(bundle.path)}  # the key `rtdecode engines build` uses
    try:
        p_dec, p_ren = stage_precisions(resolve_backend(backend), precision)
        if decoder is not None:
            compile_decoder_stage(decoder, backend, cache, key, precision=p_dec)
        if renderer is not None:
            frames = bundle.manifest["frames_per_tr"]
            name = f"denoiser-{which}"
            compile_render_stage(renderer, backend, cache, key, name=name, frames=frames, precision=p_ren)
    except Exception as exc:
        if backend != "auto":
            raise
        # auto promises a working engine: eager torch is slower but always there.
        log.warning("compiled engines unavailable (%s); running the models in torch", exc)


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
        self.renderer = renderer or load_renderer(self.bundle, config.renderer, config.steps or None)
        if config.backend != "torch":
            compile_stages(
                self.bundle,
                self.decoder if decoder is None else None,
                self.renderer if renderer is None else None,
                config.backend,
                config.engine_cache,
                "teacher" if config.renderer == "teacher" else "student",
                config.precision,
            )
        calibrated = self.bundle.manifest.get("fusion", {}).get("threshold", 0.8)
        self.fuser = Fuser(config.fusion, calibrated)
        self.outputs = list(outputs or [])
        self.lags = self.decoder.lags
        self.events: list[Event] = []
        self.drops = {"preprocess": 0, "decode": 0, "render": 0}
        self.latencies: list[dict[str, float]] = []
        self.record: GuardedRecord | None = None
        self.frames: FrameIngest | None = None
        # Set once the stimulus stream is found or known to be absent (outputs whose layout
        # depends on it, like the side-by-side video, wait for it).
        self.stimulus_known = threading.Event()
        self.window: dict[int, np.ndarray] = {}
        self.warm_ms: list[float] = []
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
        return make_preprocessor(self.bundle, self.decoder, self.ingest.geometry, self.cfg.preprocess)

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
            clip, fusion = await self.loop.run_in_executor(self._model_exec, self._render_fused, cond)
            vol.stamps["rendered"] = local_clock()
            self.record.write_clip(cond.tr, clip)
            result = ClipResult(cond.tr, vol.tr, clip, cond, vol.stamps)
            for out in self.outputs:
                out.clip(result)
            vol.stamps["output"] = local_clock()
            self.latencies.append(dict(vol.stamps))
            self.record.write_timing(vol.tr, {**vol.stamps, "clip_tr": cond.tr, **fusion})

    # ------------------------------------------------------------------ health
    def _render_fused(self, cond: Conditions) -> tuple[np.ndarray, dict[str, Any]]:
        """Render one TR's clip and fuse it into the stream (model thread)."""
        clip, same, similarity = render_fused(self.renderer, self.fuser, cond)
        return clip, {"same_scene": bool(same), "similarity": round(similarity, 4)}

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
            "record_errors": getattr(self.record, "failures", 0),
        }

    # ------------------------------------------------------------------ run
    def request_stop(self) -> None:
        """Ask the run to end (Ctrl-C): stop receiving, finish queued work, close the record."""
        log.info("stopping: finishing queued work and closing the record")
        self.ingest.stop(timeout=0)

    def warm_up(self, passes: int = 1) -> list[float]:
        """Decode and render a zero window ``passes`` times (ms each), then reset the renderer.

        A torch model's first calls allocate and pick kernels; run before the stream starts,
        so that cost does not land on the first TRs.
        """
        window = np.zeros((len(self.decoder.lags), len(self.decoder.mask_index)), np.float32)
        times = []
        for i in range(passes):
            t0 = time.perf_counter()
            self.renderer.render(self.decoder.decode(window, i))
            times.append((time.perf_counter() - t0) * 1e3)
        if hasattr(self.renderer, "continue_from"):
            self.renderer.continue_from(None)
        return times

    async def run(self) -> dict[str, Any]:
        """Warm the models up, connect, run until the stream ends (or :meth:`request_stop`),
        close the record."""
        self.loop = asyncio.get_running_loop()
        if self.cfg.warm_up:
            self.warm_ms = await self.loop.run_in_executor(self._model_exec, self.warm_up, self.cfg.warm_up)
            log.info("models warmed up (%s ms)", ", ".join(f"{t:.0f}" for t in self.warm_ms))
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
        # Guarded: a failed write (disk full) is reported once and the run goes on.
        self.record = GuardedRecord(
            SessionRecord.create(self.cfg.sessions, self.ingest.geometry, meta, fsync=self.cfg.fsync),
            lambda kind, tr, detail: self._on_event(Event(kind, tr, detail)),
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
        try:
            await self._find_stimulus()
            await self.loop.run_in_executor(None, self.ingest.finished.wait)
        finally:
            self.ingest.stop()
            self._enqueue(END)
            await asyncio.gather(*stages, return_exceptions=True)
            await self._close()
        return self.summary()

    async def _find_stimulus(self) -> None:
        try:
            if self.cfg.ingest.stimulus:
                # Frames are needed only until their TR is rendered: keep 64 volume intervals (an
                # accelerated stream would otherwise hold minutes of frames at 20x the frame rate).
                keep_s = 64 * self.ingest.interval
                self.frames = await self.loop.run_in_executor(
                    None, lambda: FrameIngest.find(self.ingest.info, on_event=self._on_event, keep_s=keep_s)
                )
                if self.frames is not None:
                    self.frames.start()
        finally:
            self.stimulus_known.set()

    async def _close(self) -> None:
        if self.frames is not None:
            self.frames.stop()
        for out in self.outputs:
            try:
                out.close()
            except Exception:  # an output failing at shutdown must not lose the record
                log.exception("output %s failed to close", out.name)
        summary = self.summary()
        try:
            (self.record.path / "summary.json").write_text(json.dumps(summary, indent=1))
        except OSError as exc:  # disk full: the record's own files matter more
            log.error("could not write %s: %s", self.record.path / "summary.json", exc)
        self.record.close(video_fps=float(self.bundle.manifest["fps"]))
        self._pre_exec.shutdown(wait=False)
        self._model_exec.shutdown(wait=False)
