"""MQTT publishing (aiomqtt + msgpack): conditions, clips, feedback and status of a session.

Topics under ``<prefix>/<session>/`` (prefix ``rtdecode``):

=============  ====  ========  ==============================================================
topic          QoS   retained  payload (a msgpack map; every one has ``schema`` and ``session``)
=============  ====  ========  ==============================================================
``conditions``  1    no        :meth:`Conditions.to_dict` (arrays as ``__nd__`` maps)
``clip``        0    no        ``tr``, ``source_tr``, ``fps``, ``encoding``, ``shape``, ``frames``
``feedback``    0    no        ``tr``, ``source_tr``, ``score``, ``kind``, ``acquired``
``status``      1    yes       per-TR health (``state`` running), ``stopped`` at the end,
                               ``lost`` as the broker-sent will if the engine dies
=============  ====  ========  ==============================================================

The hooks only append to a bounded, thread-safe buffer; a thread of its own runs an asyncio
loop that connects, publishes and reconnects with exponential backoff. The engine therefore
never waits on the broker: while the broker is away, messages wait in the buffer, which sheds
the oldest clip first (then the oldest other message) when full, counting what it dropped.
A message leaves the buffer only once published (QoS 1: acknowledged), so QoS-1 messages
queued during an outage are delivered after the reconnect (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from rtdecode.conditions import SCHEMA_VERSION, Conditions, pack
from rtdecode.outputs import ClipResult, Output, session_name
from rtdecode.outputs.feedback import FeedbackScore
from rtdecode.volume import Event

if TYPE_CHECKING:
    import aiomqtt

    from rtdecode.pipeline import Engine
    from rtdecode.preprocess import Preprocessed

__all__ = [
    "TOPICS",
    "MqttConfig",
    "MqttPublisher",
    "OutgoingBuffer",
    "client_options",
    "decode_frames",
    "encode_frames",
]

log = logging.getLogger("rtdecode.outputs.mqtt")

TOPICS = ("conditions", "clip", "feedback", "status")
PASSWORD_ENV = "RTDECODE_MQTT_PASSWORD"


@dataclass(frozen=True)
class MqttConfig:
    """Broker connection and publishing settings (``--mqtt.*`` flags, ``[mqtt]`` in TOML)."""

    host: str = field(default="", metadata={"help": "broker host (empty: no MQTT)"})
    port: int = field(default=1883, metadata={"help": "broker port (TLS usually 8883)"})
    session: str = field(default="", metadata={"help": "topic level (default: the record's directory name)"})
    prefix: str = field(default="rtdecode", metadata={"help": "first topic level"})
    username: str = ""
    password: str = field(default="", metadata={"help": f"password (safer: set {PASSWORD_ENV})"})
    tls: bool = field(default=False, metadata={"help": "connect over TLS"})
    ca_file: Path | None = field(default=None, metadata={"help": "CA certificate(s) (default: system CAs)"})
    certfile: Path | None = field(default=None, metadata={"help": "client certificate (TLS client auth)"})
    keyfile: Path | None = field(default=None, metadata={"help": "client private key"})
    tls_insecure: bool = field(default=False, metadata={"help": "do not check the broker's host name"})
    client_id: str = field(default="", metadata={"help": "MQTT client id (default: random)"})
    keepalive: int = field(default=30, metadata={"help": "keepalive interval (s)"})
    clip_format: Literal["png", "jpeg", "raw", "none"] = field(
        default="png", metadata={"help": "how clip frames travel ('none': no clip topic)"}
    )
    buffer: int = field(default=256, metadata={"help": "messages held while the broker is away"})
    timeout_s: float = field(default=5.0, metadata={"help": "connect / acknowledgement timeout"})
    backoff_max_s: float = field(default=2.0, metadata={"help": "longest wait between reconnects"})
    close_timeout_s: float = field(default=5.0, metadata={"help": "time to flush the buffer at the end"})


def parse_host_port(text: str, default_port: int = 1883) -> tuple[str, int]:
    """``"host"``, ``"host:port"`` or ``"[v6addr]:port"`` → (host, port)."""
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = int(p)
    if not host:
        raise ValueError(f"no host in {text!r}")
    return host, port


def client_options(cfg: MqttConfig, client_id: str | None = None) -> dict[str, Any]:
    """Keyword arguments of :class:`aiomqtt.Client` for these settings (publisher or subscriber)."""
    import aiomqtt

    opts: dict[str, Any] = {
        "hostname": cfg.host,
        "port": cfg.port,
        "keepalive": cfg.keepalive,
        "timeout": cfg.timeout_s,
        "identifier": cfg.client_id or client_id or f"rtdecode-{uuid.uuid4().hex[:10]}",
    }
    if cfg.username:
        opts["username"] = cfg.username
        opts["password"] = cfg.password or os.environ.get(PASSWORD_ENV) or None
    if cfg.tls or cfg.ca_file or cfg.certfile:
        opts["tls_params"] = aiomqtt.TLSParameters(
            ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
            certfile=str(cfg.certfile) if cfg.certfile else None,
            keyfile=str(cfg.keyfile) if cfg.keyfile else None,
        )
        if cfg.tls_insecure:
            opts["tls_insecure"] = True
    return opts


def encode_frames(frames: np.ndarray, fmt: str) -> dict[str, Any]:
    """Clip payload fields for (F, H, W, 3) uint8 ``frames``: ``encoding``, ``shape``, ``frames``.

    ``png``/``jpeg``: a list of one encoded image per frame; ``raw``: the array itself.
    """
    frames = np.ascontiguousarray(frames, np.uint8)
    out: dict[str, Any] = {"encoding": fmt, "shape": list(frames.shape)}
    if fmt == "raw":
        out["frames"] = frames
        return out
    ext, params = (
        (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if fmt == "png"
        else (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90])
    )
    encoded = []
    for frame in frames:
        ok, buf = cv2.imencode(ext, frame[..., ::-1], params)  # OpenCV wants BGR
        if not ok:
            raise ValueError(f"could not encode a frame as {fmt}")
        encoded.append(buf.tobytes())
    out["frames"] = encoded
    return out


def decode_frames(body: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_frames`: (F, H, W, 3) uint8.

    Raises
    ------
    ValueError
        If the payload's frames are missing, undecodable or not of the announced shape.
    """
    fmt, shape, frames = body.get("encoding"), body.get("shape"), body.get("frames")
    if not isinstance(shape, list) or len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"clip shape {shape!r} is not (F, H, W, 3)")
    if fmt == "raw":
        arr = np.asarray(frames)
        if not isinstance(frames, np.ndarray) or arr.dtype != np.uint8 or list(arr.shape) != shape:
            raise ValueError("raw clip frames are not a uint8 array of the announced shape")
        return arr
    if fmt not in ("png", "jpeg") or not isinstance(frames, list) or len(frames) != shape[0]:
        raise ValueError(f"clip encoding {fmt!r} with {type(frames).__name__} frames is not readable")
    out = []
    for data in frames:
        img = (
            cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if isinstance(data, bytes) else None
        )
        if img is None or list(img.shape) != shape[1:]:
            raise ValueError("a clip frame could not be decoded to the announced size")
        out.append(img[..., ::-1])
    return np.stack(out)


@dataclass
class Message:
    """One outgoing message; its payload is packed in the publisher thread when sent."""

    kind: str
    body: dict[str, Any]
    qos: int
    retain: bool = False
    queued: float = field(default_factory=time.monotonic)


class OutgoingBuffer:
    """A thread-safe bounded FIFO that sheds the oldest clip first, then the oldest message.

    Messages being published (taken with :meth:`take`) are never shed; one leaves the buffer
    with :meth:`done` once published, or returns to the queue with :meth:`release_all` when
    the connection broke before the broker had it.

    Parameters
    ----------
    maxlen
        Messages held at most (in flight included).
    """

    def __init__(self, maxlen: int) -> None:
        self.maxlen = max(int(maxlen), 2)
        self.items: deque[Message] = deque()
        self.inflight: set[int] = set()  # ids of the messages being published
        self.dropped: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.items)

    def put(self, msg: Message) -> Message | None:
        """Append ``msg``; returns the message shed to make room (or None)."""
        with self.lock:
            shed = None
            if len(self.items) >= self.maxlen:
                idle = [m for m in self.items if id(m) not in self.inflight]
                shed = next((m for m in idle if m.kind == "clip"), idle[0] if idle else None)
                if shed is not None:
                    self.items.remove(shed)
                    self.dropped[shed.kind] += 1
            self.items.append(msg)
            return shed

    def take(self) -> Message | None:
        """The oldest message not yet in flight, now in flight (None if there is none)."""
        with self.lock:
            for m in self.items:
                if id(m) not in self.inflight:
                    self.inflight.add(id(m))
                    return m
            return None

    def done(self, msg: Message) -> None:
        """Remove a message that was published (or could not be encoded)."""
        with self.lock:
            with contextlib.suppress(ValueError):
                self.items.remove(msg)
            self.inflight.discard(id(msg))

    def release_all(self) -> None:
        """Put every message in flight back in the queue (the connection broke)."""
        with self.lock:
            self.inflight.clear()


class _Disconnected(Exception):
    """The broker connection ended while publishing."""


class MqttPublisher(Output):
    """Publish a session to an MQTT broker (see the module docstring).

    Parameters
    ----------
    config
        Broker and publishing settings; ``config.host`` must be set.
    score
        The feedback score published on ``feedback`` (see :mod:`rtdecode.outputs.feedback`).

    Attributes
    ----------
    state
        ``idle``, ``connecting``, ``connected``, ``disconnected``, ``refused`` or ``stopped``.
    error
        The last connection problem, in words (empty while all is well).
    """

    name = "mqtt"
    WINDOW = 16  # publishes in flight at once

    def __init__(self, config: MqttConfig, score: str = "similarity") -> None:
        if not config.host:
            raise ValueError("MqttPublisher needs a broker host (--mqtt HOST[:PORT])")
        try:  # import now, not in the publisher thread while TRs arrive (it holds the GIL)
            import aiomqtt  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("MQTT publishing needs aiomqtt: pip install 'rtdecode[mqtt]'") from exc

        self.cfg = config
        self.score_spec = score
        self.buffer = OutgoingBuffer(config.buffer)
        self.state = "idle"
        self.error = ""
        self.connects = 0
        self.sent: Counter[str] = Counter()
        self.latency_ms: deque[float] = deque(maxlen=2000)
        self.events: Counter[str] = Counter()
        self.last_tr = -1
        self.clips = 0
        self._closing = threading.Event()
        self._deadline = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ engine hooks (enqueue only)
    def start(self, engine: Engine) -> None:
        self.engine = engine
        self.session = session_name(engine, self.cfg.session)
        self.topic = f"{self.cfg.prefix}/{self.session}/"
        manifest = engine.bundle.manifest
        self.fps = float(manifest.get("fps", 8.0))
        self.score = FeedbackScore(self.score_spec, manifest.get("vocabulary", []))
        info = engine.ingest.info
        self.stream = {
            "name": info.name() if info is not None else "",
            "source_id": info.source_id() if info is not None else "",
            "interval_s": getattr(engine.ingest, "interval", None),
            "bundle": str(engine.bundle.path),
        }
        self._put("status", {"state": "running", "tr": -1, "engine": self._health()}, qos=1, retain=True)
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="mqtt", daemon=True)
        self._thread.start()
        log.info("publishing to mqtt://%s:%d/%s", self.cfg.host, self.cfg.port, self.topic + "#")

    def preprocessed(self, tr: int, result: Preprocessed, status: dict[str, Any]) -> None:
        self.last_tr = max(self.last_tr, tr)
        self._put("status", {**status, "state": "running", "engine": self._health()}, qos=1, retain=True)

    def decoded(self, conditions: Conditions) -> None:
        # Published as soon as decoded: rendering may still drop this TR under load.
        body = conditions.to_dict()
        body["stamps"] = dict(conditions.stamps)  # a snapshot: later stages add stamps
        self._put("conditions", body, qos=1)
        feedback = {
            "tr": conditions.tr,
            "source_tr": conditions.source_tr,
            "score": self.score(conditions),
            "kind": self.score_spec,
            "acquired": conditions.stamps.get("acquired"),
        }
        self._put("feedback", feedback, qos=0)

    def clip(self, result: ClipResult) -> None:
        self.clips += 1
        if self.cfg.clip_format != "none":
            clip = {
                "tr": result.tr,
                "source_tr": result.source_tr,
                "fps": self.fps,
                "frames": np.array(result.clip),
            }
            self._put("clip", clip, qos=0)

    def event(self, event: Event) -> None:
        self.events[event.kind] += 1

    def close(self) -> None:
        """Publish the final retained status, flush for up to ``close_timeout_s``, disconnect."""
        if self._thread is None:
            return
        summary = self.engine.summary() if hasattr(self, "engine") else {}
        self._put("status", {"state": "stopped", "tr": self.last_tr, "summary": summary}, qos=1, retain=True)
        self._deadline = time.monotonic() + self.cfg.close_timeout_s
        self._closing.set()
        self._notify()
        self._thread.join(self.cfg.close_timeout_s + self.cfg.timeout_s + 1.0)
        if len(self.buffer):
            log.warning(
                "MQTT: %d message(s) not delivered to %s:%d at the end (%s)",
                len(self.buffer),
                self.cfg.host,
                self.cfg.port,
                self.error or "broker too slow",
            )

    # ------------------------------------------------------------------ buffer
    def _health(self) -> dict[str, Any]:
        return {"clips": self.clips, "events": dict(self.events), "stream": self.stream}

    def _put(self, kind: str, body: dict[str, Any], qos: int, retain: bool = False) -> None:
        body = {"schema": SCHEMA_VERSION, "session": self.session, **body}
        shed = self.buffer.put(Message(kind, body, qos, retain))
        if shed is not None and sum(self.buffer.dropped.values()) in (1, 10, 100, 1000):
            log.warning("MQTT buffer full: %s messages dropped so far", dict(self.buffer.dropped))
        if len(self.buffer) == 1:  # the publisher waits only on an empty buffer: wake it once
            self._notify()

    def _notify(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(wake.set)

    def stats(self) -> dict[str, Any]:
        """Publisher health: state, connects, sent, dropped, buffered, queue→ack latency."""
        lat = np.array(list(self.latency_ms)) if self.latency_ms else None
        with self.buffer.lock:  # the hooks may add a key meanwhile
            dropped = dict(self.buffer.dropped)
        return {
            "state": self.state,
            "error": self.error,
            "connects": self.connects,
            "sent": dict(self.sent),
            "dropped": dropped,
            "buffered": len(self.buffer),
            "latency_ms": {
                "p50": float(np.percentile(lat, 50)),
                "p95": float(np.percentile(lat, 95)),
                "max": float(lat.max()),
            }
            if lat is not None
            else {},
        }

    def _encode(self, msg: Message) -> bytes:
        body = msg.body
        if msg.kind == "clip":
            body = {**body, **encode_frames(body["frames"], self.cfg.clip_format)}
        elif msg.kind == "status":
            body = {**body, "mqtt": self.stats()}
        return pack(body)

    # ------------------------------------------------------------------ publisher thread
    def _will(self) -> aiomqtt.Will:
        import aiomqtt

        lost = {"schema": SCHEMA_VERSION, "session": self.session, "state": "lost", "tr": -1}
        return aiomqtt.Will(self.topic + "status", pack(lost), qos=1, retain=True)

    def _finished(self) -> bool:
        # At the end: flushed, out of time, or refused (waiting would not deliver anything).
        return self._closing.is_set() and (
            not len(self.buffer) or time.monotonic() > self._deadline or self.state == "refused"
        )

    async def _main(self) -> None:
        import aiomqtt
        from aiomqtt.exceptions import MqttConnectError

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        backoff, lost_at = 0.1, None
        where = f"{self.cfg.host}:{self.cfg.port}"
        while not self._finished():
            self.state = "connecting"
            try:
                async with aiomqtt.Client(**client_options(self.cfg), will=self._will()) as client:
                    self.connects += 1
                    self.state, self.error, backoff = "connected", "", 0.1
                    if lost_at is not None:
                        log.info(
                            "MQTT: reconnected to %s after %.1f s; sending %d buffered message(s)",
                            where,
                            time.monotonic() - lost_at,
                            len(self.buffer),
                        )
                    lost_at = None
                    await self._pump(client)
                    break
            except MqttConnectError as exc:
                self._report("refused", f"broker {where} refused the connection: {exc}", logging.ERROR)
                backoff = self.cfg.backoff_max_s  # credentials rarely fix themselves; retry slowly
            except (aiomqtt.MqttError, _Disconnected, OSError) as exc:
                lost_at = lost_at or time.monotonic()
                self._report("disconnected", f"broker {where} unreachable: {exc or type(exc).__name__}")
            if self._finished():
                break
            await asyncio.sleep(min(backoff, max(0.0, self._deadline - time.monotonic())))
            backoff = min(backoff * 2, self.cfg.backoff_max_s)
        self.state = "stopped"

    def _report(self, state: str, error: str, level: int = logging.WARNING) -> None:
        """Log a connection problem once (not on every retry), keep it for :meth:`stats`."""
        if error != self.error:
            tail = (
                "; the run continues, messages are buffered"
                if level == logging.WARNING
                else ("; check --mqtt.username / --mqtt.password. The run continues without publishing")
            )
            log.log(level, "MQTT: %s%s", error, tail)
        self.state, self.error = state, error

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Publish buffered messages until closing (and flushed); raises when disconnected.

        Up to ``WINDOW`` publishes are in flight at once (paho writes them in order), so a
        broker round trip per QoS-1 message does not limit the rate.
        """
        client.pending_calls_threshold = self.WINDOW + 4  # aiomqtt warns above this
        watcher = asyncio.ensure_future(self._watch(client))
        tasks: set[asyncio.Task] = set()
        try:
            while True:
                for task in [t for t in tasks if t.done()]:
                    tasks.discard(task)
                    task.result()  # a failed publish: reconnect and resend
                if watcher.done():
                    watcher.result()
                    raise _Disconnected("connection closed")
                if self._closing.is_set() and (not len(self.buffer) or time.monotonic() > self._deadline):
                    return
                self._wake.clear()
                msg = self.buffer.take() if len(tasks) < self.WINDOW else None
                if msg is None:
                    wake = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait({wake, watcher, *tasks}, return_when=asyncio.FIRST_COMPLETED)
                    wake.cancel()
                    continue
                try:
                    payload = self._encode(msg)
                except (TypeError, ValueError) as exc:
                    log.error("MQTT: cannot encode a %s message, dropped: %s", msg.kind, exc)
                    self.buffer.done(msg)
                    continue
                tasks.add(asyncio.ensure_future(self._publish(client, msg, payload)))
        finally:
            for task in tasks:
                task.cancel()
            if watcher.done() and not watcher.cancelled():
                watcher.exception()  # retrieved: no "exception was never retrieved" noise
            watcher.cancel()
            self.buffer.release_all()

    async def _publish(self, client: aiomqtt.Client, msg: Message, payload: bytes) -> None:
        await client.publish(self.topic + msg.kind, payload, qos=msg.qos, retain=msg.retain)
        self.buffer.done(msg)
        self.sent[msg.kind] += 1
        self.latency_ms.append((time.monotonic() - msg.queued) * 1000.0)

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        # Iterating the (unused) incoming queue raises MqttError as soon as the connection drops.
        async for _ in client.messages:
            pass
