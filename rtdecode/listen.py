"""Subscribing to a session's MQTT topics: decoding, checking and printing messages.

Used by ``rtdecode listen`` (print what arrives, to check a setup) and by
``rtdecode display --mqtt`` (feed the experimenter's window from another machine). Every
message is size-limited, unpacked with :func:`rtdecode.conditions.unpack` and checked against
the topic's schema (:mod:`rtdecode.outputs.schema`); a malformed message is logged and
skipped, never fatal, and so is a handler failing on one message.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from rtdecode.conditions import unpack
from rtdecode.outputs.mqtt import TOPICS, MqttConfig, client_options
from rtdecode.outputs.schema import MAX_MESSAGE_BYTES, validate_message

__all__ = ["DEFAULT_MAX_BYTES", "decode_message", "handle_message", "listen", "subscribe", "summarize"]

log = logging.getLogger("rtdecode.listen")

DEFAULT_MAX_BYTES = MAX_MESSAGE_BYTES

Handler = Callable[[str, str, dict[str, Any]], None]


def decode_message(
    topic: str, payload: bytes, prefix: str = "rtdecode", max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[str, str, dict[str, Any]]:
    """Check and decode one message: returns (session, kind, body).

    Raises
    ------
    ValueError
        If the topic is not ``<prefix>/<session>/<kind>`` with a known kind, the payload is
        too large or not msgpack, not a map, of another schema version, or its fields do not
        match the topic's schema (:func:`rtdecode.outputs.schema.validate_message`).
    """
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != prefix or parts[2] not in TOPICS:
        raise ValueError(f"unexpected topic {topic!r}")
    if not isinstance(payload, (bytes, bytearray)):
        raise ValueError(f"payload is {type(payload).__name__}, not bytes")
    body = unpack(bytes(payload), max_bytes=max_bytes)
    return parts[1], parts[2], validate_message(parts[2], body)


def _num(value: Any, fmt: str = ".1f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "—"


def summarize(kind: str, body: dict[str, Any]) -> str:
    """A one-line summary of a decoded message."""
    tr = body.get("tr", "—")
    if kind == "status":
        counts = body.get("counts") or {}
        drops = body.get("drops") or {}
        mqtt = body.get("mqtt") or {}
        dropped = mqtt.get("dropped")  # free-form health: read defensively
        if not (isinstance(dropped, dict) and all(type(v) is int for v in dropped.values())):
            dropped = {}
        return (
            f"tr={tr} state={body.get('state', '?')} fd={_num(body.get('fd'), '.2f')} mm "
            f"ok={counts.get('ok', '—')} late={counts.get('late', '—')} bad={counts.get('bad', '—')} "
            f"drops={sum(drops.values()) if drops else 0} clip={_num(body.get('receive_to_clip_ms'))} ms"
            + (f" mqtt-dropped={sum(dropped.values())}" if dropped else "")
        )
    if kind == "conditions":
        parts = [f"tr={tr} source_tr={body.get('source_tr', '—')}"]
        for name in ("blurry", "semantic", "concepts", "mask", "keyframe"):
            value = body.get(name)
            if value is not None and hasattr(value, "shape"):
                parts.append(f"{name}={tuple(value.shape)}")
        caption = body.get("caption") or "—"
        parts.append(f"caption={caption[:60]!r}" if caption != "—" else "caption=—")
        if body.get("degraded"):
            parts.append(f"degraded={body['degraded'][:40]!r}")
        return " ".join(parts)
    if kind == "clip":
        frames = body.get("frames")
        size = sum(len(f) for f in frames) if isinstance(frames, list) else getattr(frames, "nbytes", 0)
        return (
            f"tr={tr} shape={tuple(body.get('shape') or ())} {body.get('encoding', '?')} "
            f"{size / 1024:.1f} kB fps={_num(body.get('fps'), 'g')}"
        )
    return f"tr={tr} score={_num(body.get('score'), '.3f')} ({body.get('kind', '?')})"


async def subscribe(
    cfg: MqttConfig,
    session: str,
    handler: Handler,
    stop: asyncio.Event | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> None:
    """Receive ``<prefix>/<session>/#`` and call ``handler(session, kind, body)`` per valid message.

    Reconnects with exponential backoff (capped at ``cfg.backoff_max_s``) until ``stop`` is set.
    ``session`` may be ``+`` for every session on the broker.
    """
    import aiomqtt

    stop = stop or asyncio.Event()
    where = f"{cfg.host}:{cfg.port}"
    backoff, reported = 0.1, ""
    while not stop.is_set():
        try:
            async with aiomqtt.Client(**client_options(cfg), max_queued_incoming_messages=1000) as client:
                await client.subscribe(f"{cfg.prefix}/{session}/#", qos=1)
                log.info("subscribed to %s/%s/# on %s", cfg.prefix, session, where)
                backoff, reported = 0.1, ""
                receive = asyncio.ensure_future(_receive(client, cfg.prefix, handler, max_bytes))
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({receive, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if receive.done():
                    receive.result()  # raises the disconnection
                receive.cancel()
                return
        except aiomqtt.MqttError as exc:
            if str(exc) != reported:
                log.warning("MQTT broker %s: %s; retrying", where, exc)
                reported = str(exc)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, cfg.backoff_max_s)


def handle_message(topic: str, payload: Any, prefix: str, handler: Handler, max_bytes: int) -> bool:
    """Decode one message and pass it to ``handler``; False (and a log line) if it was refused.

    Never raises: a malformed message, or a handler failing on an odd one, must not end the
    subscription.
    """
    try:
        session, kind, body = decode_message(topic, payload, prefix, max_bytes)
    except ValueError as exc:
        log.warning("skipping a malformed message on %s: %s", topic, exc)
        return False
    try:
        handler(session, kind, body)
    except Exception:
        log.exception("could not handle a %s message on %s; skipped", kind, topic)
        return False
    return True


async def _receive(client: Any, prefix: str, handler: Handler, max_bytes: int) -> None:
    async for message in client.messages:
        handle_message(str(message.topic), message.payload, prefix, handler, max_bytes)


def listen(
    cfg: MqttConfig,
    session: str = "+",
    count: int = 0,
    timeout_s: float = 0.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    out: TextIO = sys.stdout,
) -> int:
    """Print every valid message of ``session`` (``+``: all) as ``topic  summary`` lines.

    Parameters
    ----------
    cfg
        Broker settings (``host``, ``port``, credentials, TLS).
    count
        Stop after this many messages (0: until Ctrl-C or ``timeout_s``).
    timeout_s
        Stop after this many seconds (0: never).

    Returns
    -------
    int
        The number of messages printed.
    """
    printed = 0

    async def main() -> None:
        stop = asyncio.Event()

        def show(sess: str, kind: str, body: dict[str, Any]) -> None:
            nonlocal printed
            print(f"{cfg.prefix}/{sess}/{kind:<10s} {summarize(kind, body)}", file=out, flush=True)
            printed += 1
            if count and printed >= count:
                stop.set()

        if timeout_s:
            asyncio.get_running_loop().call_later(timeout_s, stop.set)
        await subscribe(cfg, session, show, stop, max_bytes)

    started = time.monotonic()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    log.debug("listened %.1f s", time.monotonic() - started)
    return printed
