"""Fuzzing: random and mutated volumes through ingestion, malformed messages through the
subscribers. Nothing may crash or hang, and every bad input must be reported.

* 10,000 mutated volumes (NaN, inf, truncated, zeroed, bit-flipped, random bytes, extreme
  values) with mutated timestamps (duplicate, non-finite, out of order, clock jumps) go
  through the ingest path (TR clock, validation, session record) without LSL; 2,000 odd
  objects through :func:`validate_volume`; 200 more volumes over real LSL.
* 12,000+ mutated MQTT messages (random bytes, truncation, bit flips, wrong types, broken
  arrays, decompression bombs, oversized payloads, bad topics) go through the subscriber
  path (:func:`rtdecode.listen.handle_message`) into both subscribers' handlers: the
  ``listen`` summary and the display's MQTT feed, whose output drives a real window.
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import time
import zlib
from collections.abc import Iterator

import msgpack
import numpy as np
import pylsl
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt loads (CI has no display)

from rtdecode.conditions import SCHEMA_VERSION, Conditions
from rtdecode.geometry import VolumeGeometry
from rtdecode.ingest import IngestConfig, TRClock, VolumeIngest, validate_volume
from rtdecode.lsl import VolumeOutlet
from rtdecode.outputs import ClipResult
from rtdecode.outputs.feedback import FeedbackScore
from rtdecode.outputs.mqtt import MqttConfig, MqttPublisher
from rtdecode.record import SessionRecord, open_record
from rtdecode.volume import checksum

DIMS = (8, 8, 4)
N_VOLUMES = 10_000


# --------------------------------------------------------------------------- volumes


def _is_bad(a: np.ndarray) -> bool:
    """The oracle: what must never be processed (an independent statement of the rules)."""
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        return True
    return not np.any(a) or not np.any(a[:, :, -1])


def _mutate(rng: np.random.Generator, k: int, dtype: np.dtype) -> np.ndarray:
    """Volume ``k``: clean, or one of many corruptions."""
    base = (rng.normal(500, 50, DIMS) + 100).astype(dtype)
    kind = rng.integers(12)
    if kind == 0:
        return base
    if kind == 1 and dtype.kind == "f":
        base.flat[rng.integers(0, base.size, rng.integers(1, 20))] = np.nan
    elif kind == 2 and dtype.kind == "f":
        base.flat[rng.integers(0, base.size)] = rng.choice([np.inf, -np.inf])
    elif kind == 3:
        base[:, :, -rng.integers(1, DIMS[2] + 1) :] = 0  # truncated, or all slices gone
    elif kind == 4:
        base[...] = 0
    elif kind == 5:  # bit flips anywhere (may make NaN/inf, huge or tiny values)
        raw = base.view(np.uint8).reshape(-1)
        for i in rng.integers(0, raw.size, rng.integers(1, 16)):
            raw[i] ^= np.uint8(1 << rng.integers(8))
    elif kind == 6:  # random bytes reinterpreted as samples
        base = np.frombuffer(rng.bytes(base.nbytes), dtype).reshape(DIMS).copy()
    elif kind == 7:
        info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
        base.flat[rng.integers(0, base.size, 8)] = rng.choice([info.max, info.min])
    elif kind == 8:  # one voxel left
        one = np.zeros_like(base)
        one.flat[rng.integers(0, base.size)] = 1
        base = one
    elif kind == 9 and dtype.kind == "f":
        base[...] = rng.choice([-0.0, 1e-45, -1e-40])  # negative zeros, denormals
    elif kind == 10:
        base[rng.integers(0, DIMS[0])] = 0  # a zeroed plane that is not the last slice
    return base


def _offline_ingest(dtype: np.dtype, on_volume, on_event) -> VolumeIngest:
    """The LSL ingest without its inlet: samples are written to its ring and handled."""
    ingest = VolumeIngest(IngestConfig(), on_volume, on_event)
    ingest.geometry = VolumeGeometry(DIMS, (3.0, 3.0, 3.0), 0.1)
    ingest.dtype = np.dtype(dtype)
    ingest.interval = 0.1
    ingest.clock = TRClock(0.1, 0.5, max_jump=1000)
    ingest.ring = np.empty((4, int(np.prod(DIMS))), dtype)
    return ingest


def test_fuzzed_volumes_through_ingest_and_record(tmp_path, caplog):
    rng = np.random.default_rng(20261130)
    record = SessionRecord.create(tmp_path, VolumeGeometry(DIMS, (3.0,) * 3, 0.1), name="fuzz")
    seen, events = [], []
    checks = {"bad data": 0, "bad timestamp": 0, "clean": 0}

    def on_volume(vol):
        record.write_volume(vol)  # as the engine does: record first
        seen.append((vol.seq, vol.tr, vol.status, vol.usable, vol.sha1))

    t_start = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="rtdecode.ingest"):  # 10k warnings are slow to capture
        for dtype, n in ((np.dtype(np.float32), 6000), (np.dtype(np.int16), N_VOLUMES - 6000)):
            ingest = _offline_ingest(dtype, on_volume, events.append)
            t, k = 100.0, 0
            for i in range(n):
                data = _mutate(rng, i, dtype)
                r = rng.random()
                if r < 0.04:
                    ts = t  # same timestamp as the previous: a duplicate TR
                elif r < 0.06:
                    ts = float(rng.choice([np.nan, np.inf, -np.inf]))
                elif r < 0.08:
                    ts = t - 0.1 * rng.integers(1, 5)  # out of order
                elif r < 0.085:
                    ts = t + float(rng.choice([1e6, -1e6, 1e300]))  # the sender's clock jumped
                else:
                    k += 1
                    t = 100.0 + 0.1 * k + rng.normal(0, 0.01)
                    ts = t
                slot = i % len(ingest.ring)
                ingest.ring[slot] = data.reshape(-1)
                before = len(seen)
                ingest._handle(slot, ts, ts + abs(rng.normal(0.02, 0.05)))
                assert len(seen) == before + 1
                _, tr, status, usable, _ = seen[-1]
                if _is_bad(data):
                    checks["bad data"] += 1
                    assert status in ("bad", "duplicate") and not usable, (i, status)
                elif not np.isfinite(ts):
                    checks["bad timestamp"] += 1
                    assert status == "bad" and tr == -1 and not usable
                elif ts == t and status != "duplicate" and r >= 0.085:
                    checks["clean"] += 1
                    assert status in ("ok", "late") and usable, (i, status)
                if usable:  # what preprocessing would see is always finite and complete
                    assert validate_volume(data, DIMS, dtype) == ""
            counts = ingest.counts
            by_kind = {
                kind: sum(1 for e in events if e.kind == kind) for kind in ("late", "duplicate", "bad")
            }
            assert by_kind == {k2: counts[k2] for k2 in by_kind}, (by_kind, counts)  # each one reported
            events.clear()
            assert ingest.clock.last < 2 * n  # clock jumps did not invent TRs
    elapsed = time.monotonic() - t_start
    record.close()
    assert len(seen) == N_VOLUMES and min(checks.values()) > 100, checks
    # every volume is in the record, byte-identical, whatever it contained
    rec = open_record(record.path)
    assert len(rec.volumes) == N_VOLUMES and not rec.truncated_tail
    assert [(v.seq, v.status, v.sha1) for v in rec.volumes] == [(s[0], s[2], s[4]) for s in seen]
    assert rec.verify() == []
    print(f"\n{N_VOLUMES} volumes in {elapsed:.1f} s: {checks}")


def test_validate_volume_never_raises():
    """Whatever arrives: non-arrays, scalars, empty, object, strings, bools, complex, wrong
    shapes and types — a reason, never an exception, never accepted."""
    rng = np.random.default_rng(1)
    odd = [
        None,
        3,
        "volume",
        [1.0, 2.0],
        b"\x00" * 8,
        np.float32(1.0),
        np.array(1.0),
        np.zeros(0, np.float32),
        np.zeros((0, 4, 4), np.float32),
        np.array([object()] * 8),
        np.array(["a"] * 8),
        np.ones(8, bool),
        np.ones(8, np.complex64),
        np.ones((8, 8, 4), np.float64),
        np.ones((8, 8), np.float32),
        np.ones((4, 8, 8), np.float32),
        np.ones((8, 8, 4, 1), np.float32),
        np.ones(8, "datetime64[s]"),
        np.zeros(2, [("a", "f4"), ("b", "i2")]),
    ]
    n = 0
    for _ in range(100):
        for thing in odd:
            reason = validate_volume(thing, DIMS, np.float32)
            assert isinstance(reason, str) and reason, thing
            n += 1
        shape = tuple(int(x) for x in rng.integers(0, 5, rng.integers(0, 5)))
        arr = rng.random(shape).astype(rng.choice(["f2", "f4", "f8", "i1", "u2", "i8"]))
        assert isinstance(validate_volume(arr), str) and isinstance(validate_volume(arr, DIMS, "f4"), str)
        n += 2
    assert n >= 2000


@pytest.mark.timeout(60)
def test_fuzzed_volumes_over_lsl(source_id, tmp_path):
    """The same mutations through a real outlet and inlet: every sample arrives, is recorded
    as sent, and exactly the bad ones are reported bad."""
    rng = np.random.default_rng(7)
    n, interval = 200, 0.01
    geo = VolumeGeometry(DIMS, (3.0, 3.0, 3.0), interval)
    outlet = VolumeOutlet(geo, "fuzz", source_id)
    record = SessionRecord.create(tmp_path, geo, name="lsl")
    got, events = [], []

    def on_volume(vol):
        record.write_volume(vol)
        got.append((vol.tr, vol.status, vol.sha1))

    ingest = VolumeIngest(IngestConfig(source_id=source_id, max_trs=n), on_volume, events.append)
    ingest.connect()
    ingest.start()
    sent, bad = [], 0
    try:
        t0 = pylsl.local_clock() + 0.2
        for k in range(n):
            data = _mutate(rng, k, np.dtype(np.float32))
            bad += _is_bad(data)
            while pylsl.local_clock() < t0 + k * interval:
                time.sleep(0.001)
            outlet.push(data, t0 + k * interval)
            sent.append((k, checksum(data)))
        assert ingest.finished.wait(20)
    finally:
        ingest.stop()
        outlet.close()
        record.close()
    assert [(tr, sha1) for tr, _, sha1 in got] == sent
    assert ingest.counts["bad"] == bad > 20 and sum(e.kind == "bad" for e in events) == bad
    rec = open_record(record.path)
    assert [(v.tr, v.sha1) for v in rec.volumes] == sent and rec.verify() == []


# --------------------------------------------------------------------------- messages


def _valid_corpus() -> Iterator[tuple[str, bytes]]:
    """Real messages, encoded by the publisher's own code: (kind, payload)."""
    pub = MqttPublisher(MqttConfig(host="127.0.0.1", buffer=10_000))  # never started: no thread
    pub.session = "fuzz"
    pub.topic = "rtdecode/fuzz/"
    pub.fps = 8.0
    pub.score = FeedbackScore("similarity", ["a", "b", "c"])
    pub.stream = {"name": "sim", "source_id": "sim-1", "interval_s": 0.1, "bundle": "engines/x"}
    rng = np.random.default_rng(3)
    for tr in range(60):
        status = {
            "tr": tr,
            "fd": float(rng.random()),
            "motion": rng.normal(0, 0.2, 6).tolist(),
            "spikes": 3,
            "settled": tr > 8,
            "counts": {"ok": tr, "late": 1, "duplicate": 0, "bad": 0},
            "gaps": 0,
            "drops": {"preprocess": 0, "decode": 1, "render": 2},
            "receive_to_preprocessed_ms": 2.5,
            "time": time.time(),
        }
        if tr % 3:
            status["receive_to_clip_ms"] = 30.0
        pub.preprocessed(tr, None, status)
        cond = Conditions(
            tr,
            tr + 3,
            stamps={"acquired": 1.0 + tr, "received": 1.01 + tr},
            blurry=rng.random((2, 4, 4, 3), dtype=np.float32),
            semantic=rng.random(16, dtype=np.float32),
            concepts=rng.random(3, dtype=np.float32),
            caption=f"a shape number {tr}",
            mask=rng.random((2, 4, 4), dtype=np.float32),
        )
        pub.decoded(cond)
        pub.cfg = MqttConfig(host="127.0.0.1", clip_format=("png", "jpeg", "raw")[tr % 3])
        frames = rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
        pub.clip(ClipResult(tr, tr + 3, frames, cond, {}))
        for msg in list(pub.buffer.items):
            yield msg.kind, pub._encode(msg)
            pub.buffer.done(msg)
    yield "status", msgpack.packb({"schema": SCHEMA_VERSION, "session": "fuzz", "state": "lost", "tr": -1})


def _png_header(h: int, w: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + b"IHDR"
        + ihdr
        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    )


_WRONG = [b"\x00", msgpack.ExtType(42, b"x")]  # wrong for every checked field
_ANY = [
    0,
    -1,
    2**64 - 1,
    -(2**63),
    1.5,
    float("nan"),
    float("inf"),
    "",
    "x" * 300,
    [],
    [1, "a", None],
    {},
    {"a": {"b": [1.0]}},
    None,
    True,
    b"",
    msgpack.ExtType(1, b""),
    {"__nd__": True, "dtype": "<f4", "shape": [2], "data": b"\0" * 8},
]
_BROKEN_ARRAYS = [
    {"__nd__": True, "dtype": "O", "shape": [1], "data": b"\0" * 8},
    {"__nd__": True, "dtype": "<U2", "shape": [1], "data": b"\0" * 8},
    {"__nd__": True, "dtype": "V4", "shape": [1], "data": b"\0" * 4},
    {"__nd__": True, "dtype": "[('a', '<f4')]", "shape": [1], "data": b"\0" * 4},
    {"__nd__": True, "dtype": 7, "shape": [1], "data": b"\0" * 4},
    {"__nd__": True, "dtype": "nonsense", "shape": [1], "data": b"\0" * 4},
    {"__nd__": True, "dtype": ",", "shape": [1], "data": b"\0" * 4},  # np.dtype: SyntaxError
    {"__nd__": True, "dtype": "<f4,", "shape": [1], "data": b"\0" * 4},
    {"__nd__": True, "dtype": "(2,)f4", "shape": [1], "data": b"\0" * 8},
    {"__nd__": True, "dtype": "<f4", "shape": [3], "data": b"\0" * 8},
    {"__nd__": True, "dtype": "<f4", "shape": [-1], "data": b"\0" * 8},
    {"__nd__": True, "dtype": "<f4", "shape": [2**40, 2**40], "data": b"\0" * 8},
    {"__nd__": True, "dtype": "<f4", "shape": "2", "data": b"\0" * 8},
    {"__nd__": True, "dtype": "<f4", "shape": [2], "data": "not bytes"},
    {"__nd__": True, "dtype": "<f4", "shape": [2]},
    {"__nd__": True},
    {"__nd__": True, "dtype": "<f4", "shape": [True, 2], "data": b"\0" * 8},
]
_REQUIRED = {
    "status": ["tr"],
    "conditions": ["tr"],
    "feedback": ["tr"],
    "clip": ["tr", "encoding", "shape", "frames"],
}
_CHECKED = {
    "status": ["tr", "state", "fd", "motion", "counts", "drops", "engine", "mqtt", "settled", "time"],
    "conditions": ["tr", "source_tr", "stamps", "caption", "blurry", "concepts", "semantic", "mask"],
    "clip": ["tr", "fps", "encoding", "shape", "frames"],
    "feedback": ["tr", "score", "kind", "acquired", "source_tr"],
}


def _mutations(rng: np.random.Generator, corpus: list[tuple[str, bytes]], n: int):
    """(topic, payload, must_reject, category) for ``n`` mutated messages."""
    for _ in range(n):
        kind, payload = corpus[rng.integers(len(corpus))]
        topic = f"rtdecode/fuzz/{kind}"
        body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        m = rng.integers(12)
        if m == 0:
            yield topic, rng.bytes(rng.integers(0, 200)), True, "random bytes"
        elif m == 1:
            yield topic, payload[: rng.integers(0, len(payload))], True, "truncated"
        elif m == 2:
            raw = bytearray(payload)
            for i in rng.integers(0, len(raw), rng.integers(1, 9)):
                raw[i] ^= 1 << rng.integers(8)
            yield topic, bytes(raw), False, "bit flips"
        elif m == 3:
            raw = bytearray(payload)
            i = rng.integers(len(raw))
            raw[i:i] = rng.bytes(rng.integers(1, 6)) if rng.random() < 0.5 else b""
            del raw[rng.integers(len(raw))]
            yield topic, bytes(raw), False, "insert/delete"
        elif m == 4:
            body.pop(str(rng.choice(_REQUIRED[kind])))
            yield topic, msgpack.packb(body), True, "required field missing"
        elif m == 5:
            body[str(rng.choice(_CHECKED[kind]))] = _WRONG[rng.integers(len(_WRONG))]
            yield topic, msgpack.packb(body), True, "wrong type"
        elif m == 6:
            keys = [*body, "extra"]
            body[keys[rng.integers(len(keys))]] = _ANY[rng.integers(len(_ANY))]
            yield topic, msgpack.packb(body), False, "any value"
        elif m == 7 and kind in ("conditions", "clip"):
            fields = ["blurry", "concepts", "semantic", "mask"] if kind == "conditions" else ["frames"]
            if kind == "clip":
                body["encoding"] = "raw"
            body[str(rng.choice(fields))] = _BROKEN_ARRAYS[rng.integers(len(_BROKEN_ARRAYS))]
            yield topic, msgpack.packb(body), True, "broken array"
        elif m == 8:
            body["schema"] = _ANY[rng.integers(len(_ANY))] if rng.random() < 0.5 else SCHEMA_VERSION + 1
            yield topic, msgpack.packb(body), True, "schema version"
        elif m == 9:
            # a decompression bomb: a PNG header claiming a huge image
            h, w = (int(x) for x in rng.integers(5000, 60000, 2))  # > MAX_CLIP_BYTES decoded
            bomb = _png_header(h, w) + b"\0" * 32
            shape = [1, h, w, 3] if rng.random() < 0.5 else [1, 16, 16, 3]
            clip = {"schema": SCHEMA_VERSION, "tr": 1, "encoding": "png", "shape": shape, "frames": [bomb]}
            yield "rtdecode/fuzz/clip", msgpack.packb(clip), True, "image bomb"
        elif m == 10:
            nested = b"\x91" * int(rng.integers(600, 5000)) + b"\x00"  # arrays inside arrays
            head = msgpack.packb({"schema": SCHEMA_VERSION, "tr": 1})
            deep = bytes([head[0] + 1]) + head[1:] + msgpack.packb("deep") + nested
            yield topic, deep, False, "deep nesting"  # refused past msgpack's depth limit
        else:
            bad_topic = str(
                rng.choice(["rtdecode/fuzz/other", "other/fuzz/status", "rtdecode/status", "", "#"])
            )
            yield bad_topic, payload, True, "bad topic"


@pytest.mark.timeout(120)
def test_fuzzed_messages_through_the_subscribers(caplog):
    from rtdecode.display_app import DisplayWindow, _MqttFeed, app
    from rtdecode.listen import handle_message, summarize

    app()
    window = DisplayWindow()
    window_q: queue.Queue = queue.Queue()
    feed = _MqttFeed(window_q, "+")
    problems: list[str] = []

    def handler(session, kind, body):
        summarize(kind, body)  # `rtdecode listen`
        feed(session, kind, body)  # `rtdecode display --mqtt`

    def drain():
        while not window_q.empty():
            msg = window_q.get_nowait()
            try:
                window.handle(msg)
            except Exception as exc:  # would be logged by the window's pump; must not happen
                problems.append(f"window: {msg.get('kind')}: {exc!r}")

    corpus = list(_valid_corpus())
    max_bytes = 256 << 10
    rng = np.random.default_rng(11)
    stats: dict[str, list[int]] = {}
    slowest = 0.0
    with caplog.at_level(logging.WARNING, logger="rtdecode"):
        for kind, payload in corpus:  # genuine messages are all accepted
            assert handle_message(f"rtdecode/fuzz/{kind}", payload, "rtdecode", handler, max_bytes), kind
        oversized = [(f"rtdecode/fuzz/{k}", p + b"\0" * max_bytes, True, "oversized") for k, p in corpus[:40]]
        not_bytes = [
            ("rtdecode/fuzz/status", x, True, "payload not bytes") for x in (None, "text", 5, [b"x"])
        ] * 5
        cases = [*oversized, *not_bytes, *_mutations(rng, corpus, 12_000)]
        for i, (topic, payload, must_reject, category) in enumerate(cases):
            t = time.perf_counter()
            accepted = handle_message(topic, payload, "rtdecode", handler, max_bytes)
            slowest = max(slowest, time.perf_counter() - t)
            stats.setdefault(category, [0, 0])[accepted] += 1
            if must_reject and accepted:
                problems.append(f"accepted a {category} message: {payload[:80]!r}")
            if i % 200 == 0:
                drain()
        drain()
    rejected = sum(r for r, _ in stats.values())
    logged = [r for r in caplog.records if r.name == "rtdecode.listen"]
    failed_handlers = [r.getMessage() for r in logged if "could not handle" in r.getMessage()]
    print(f"\n{len(cases)} messages, {rejected} rejected, slowest {slowest * 1000:.1f} ms; {stats}")
    assert not problems, problems[:10]
    assert not failed_handlers, failed_handlers[:5]  # accepted messages never made a handler fail
    assert sum(1 for r in logged if "skipping a malformed message" in r.getMessage()) == rejected
    assert len(cases) >= 10_000 and rejected >= 7_000
    assert slowest < 10.0  # no hang, no huge allocation (a bound, not a timing: CPUs may be shared)
    window.close()
