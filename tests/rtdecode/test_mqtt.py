"""MQTT publishing against a real Mosquitto broker: every message, broker restarts, auth.

The broker is Debian's ``mosquitto`` (installed by ``scripts/setup.sh --test``), started on a
free local port per test with persistence off.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import paho.mqtt.client as paho
import pytest

from rtdecode.conditions import SCHEMA_VERSION, Conditions, pack
from rtdecode.ingest import IngestConfig
from rtdecode.listen import decode_message
from rtdecode.outputs import ClipResult, Output
from rtdecode.outputs.mqtt import MqttConfig, MqttPublisher, OutgoingBuffer, decode_frames
from rtdecode.pipeline import Engine, EngineConfig
from rtdecode.record import open_record
from tests.conftest import ROOT, cli, spawn
from tests.rtdecode.helpers import wait_for

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(
    not os.path.exists(MOSQUITTO), reason="mosquitto is not installed (scripts/setup.sh --test)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A Mosquitto process on a fixed local port; can be stopped and restarted."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None, tls: bool = False) -> None:
        self.port = _free_port()
        self.dir = workdir
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr"]
        if tls:  # a self-signed certificate for 127.0.0.1, which is also the CA clients trust
            self.cert = workdir / "broker.crt"
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                    "-keyout",
                    str(workdir / "broker.key"),
                    "-out",
                    str(self.cert),
                ],
                check=True,
                capture_output=True,
            )
            lines += [f"certfile {self.cert}", f"keyfile {workdir / 'broker.key'}"]
        if users:
            pw = workdir / "passwd"
            for i, (user, password) in enumerate(users.items()):
                flags = ["-b", "-c"] if i == 0 else ["-b"]
                subprocess.run(["mosquitto_passwd", *flags, str(pw), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if os.geteuid() == 0:
            lines.append("user root")  # keep reading files in the test's private tmp dir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.dir / "mosquitto.log", "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not start: {(self.dir / 'mosquitto.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def auth_broker(tmp_path):
    b = Broker(tmp_path, users={"rt": "secret"})
    b.start()
    yield b
    b.stop()


@pytest.fixture
def tls_broker(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    b = Broker(tmp_path, tls=True)
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A plain paho subscriber (reconnects on its own) that decodes everything it receives."""

    def __init__(self, port: int, topic: str, ca: Path | None = None) -> None:
        self.messages: list[tuple[float, str, str, dict, bool]] = []
        self.malformed: list[str] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.topic = topic
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        try:
            _, kind, body = decode_message(msg.topic, msg.payload)
        except ValueError as exc:
            self.malformed.append(str(exc))
            return
        with self.lock:
            self.messages.append((time.monotonic(), msg.topic, kind, body, bool(msg.retain)))

    def of(self, kind: str) -> list[dict]:
        with self.lock:
            return [m[3] for m in self.messages if m[2] == kind]

    def wait_for(self, pred, timeout: float = 10.0) -> bool:
        return wait_for(pred, timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Collect(Output):
    """What the engine emitted, to compare with what the broker delivered."""

    def __init__(self, on_status=None):
        self.status, self.clips = [], {}
        self.on_status = on_status

    def preprocessed(self, tr, result, status):
        self.status.append(status["tr"])
        if self.on_status:
            self.on_status(status["tr"])

    def clip(self, result):
        self.clips[result.tr] = result.clip.copy()


def _run(bundle, source_id, tmp_path, n_tr, outputs):
    sim = spawn(
        "scanner_sim.cli",
        "stream",
        "--n-tr",
        str(n_tr),
        "--speed",
        "10",
        "--source-id",
        source_id,
        "--no-stimulus-stream",
    )
    cfg = EngineConfig(
        bundle=bundle,
        sessions=tmp_path / "sessions",
        log_every=0,
        ingest=IngestConfig(source_id=source_id, max_trs=n_tr, lost_timeout_s=10.0),
    )
    try:
        summary = asyncio.run(Engine(cfg, outputs).run())
        assert sim.wait(30) == 0, sim.stderr.read()[-2000:]
    finally:
        sim.kill()
    return summary


def _usable(summary) -> int:
    # the first volume is sometimes a little late (inlet start-up); late volumes are still used
    return summary["volumes"]["ok"] + summary["volumes"]["late"]


@pytest.mark.timeout(180)  # includes building tiny_bundle when first
def test_every_status_and_conditions_message_arrives(broker, tiny_bundle, source_id, tmp_path):
    session = f"t{uuid.uuid4().hex[:8]}"
    sub = Subscriber(broker.port, f"rtdecode/{session}/#")
    pub = MqttPublisher(MqttConfig(host="127.0.0.1", port=broker.port, session=session))
    collect = Collect()
    try:
        summary = _run(tiny_bundle, source_id, tmp_path, 60, [pub, collect])
        assert sub.wait_for(lambda: any(s.get("state") == "stopped" for s in sub.of("status")))
    finally:
        sub.close()
    assert _usable(summary) == 60 and not sub.malformed
    # status: one per preprocessed TR (60), all decoded, schema-versioned, health included
    status = [s for s in sub.of("status") if s["state"] == "running" and s["tr"] >= 0]
    assert sorted(s["tr"] for s in status) == sorted(collect.status) == list(range(60))
    assert all(s["schema"] == SCHEMA_VERSION and s["session"] == session for s in status)
    assert all(len(s["motion"]) == 6 and "counts" in s and "mqtt" in s and "engine" in s for s in status)
    (final,) = [s for s in sub.of("status") if s["state"] == "stopped"]
    assert final["summary"]["clips"] == summary["clips"]
    # conditions: one per decoded TR, decodable back into Conditions
    conds = [Conditions.from_dict(c) for c in sub.of("conditions")]
    assert sorted(c.tr for c in conds) == sorted(collect.clips) and len(conds) >= 50
    assert all(c.blurry is not None and c.blurry.dtype == np.float32 and c.blurry.ndim == 4 for c in conds)
    # clips (QoS 0, PNG: lossless) decode to exactly what was rendered; feedback is a finite score
    clips = sub.of("clip")
    assert len(clips) >= 0.9 * len(collect.clips)
    for c in clips:
        assert np.array_equal(decode_frames(c), collect.clips[c["tr"]])
    feedback = sub.of("feedback")
    assert len(feedback) >= 0.9 * len(collect.clips) and all(np.isfinite(f["score"]) for f in feedback)
    stats = pub.stats()
    assert stats["dropped"] == {} and stats["buffered"] == 0 and stats["connects"] == 1
    print(f"\nqueue→ack latency: {stats['latency_ms']}")
    # the last status is retained: a late subscriber sees the session has stopped
    late = Subscriber(broker.port, f"rtdecode/{session}/status")
    try:
        assert late.wait_for(lambda: late.messages, 5)
        assert late.messages[0][3]["state"] == "stopped" and late.messages[0][4]  # retain flag
    finally:
        late.close()


@pytest.mark.timeout(180)
def test_broker_restart_mid_run_resumes_publishing(broker, tiny_bundle, source_id, tmp_path):
    session = f"t{uuid.uuid4().hex[:8]}"
    sub = Subscriber(broker.port, f"rtdecode/{session}/#")
    pub = MqttPublisher(MqttConfig(host="127.0.0.1", port=broker.port, session=session))
    times: dict[str, float] = {}

    def restart():
        broker.stop()
        times["stopped"] = time.monotonic()
        time.sleep(1.5)  # some TRs are preprocessed while the broker is away
        broker.start()
        times["restarted"] = time.monotonic()

    def on_status(tr):
        if tr == 15 and "thread" not in times:
            times["thread"] = 1
            threading.Thread(target=restart, daemon=True).start()

    collect = Collect(on_status)
    try:
        summary = _run(tiny_bundle, source_id, tmp_path, 60, [pub, collect])
        assert sub.wait_for(lambda: any(s.get("state") == "stopped" for s in sub.of("status")))
    finally:
        sub.close()
    # the run went on and recorded every volume
    assert _usable(summary) == 60 and collect.status == list(range(60))
    assert len(open_record(summary["record"]).volumes) == 60
    # publishing resumed after the restart: messages of later TRs arrived, from a new connection
    assert "restarted" in times and pub.connects >= 2
    with sub.lock:
        after = [m for m in sub.messages if m[0] > times["restarted"]]
    trs_after = {m[3]["tr"] for m in after if m[2] == "status" and m[3]["state"] == "running"}
    assert max(trs_after) == 59 and len(trs_after) >= 20
    assert {m[2] for m in after} >= {"status", "conditions", "clip", "feedback"}
    first = min(m[0] for m in after)
    print(
        f"\nfirst message {first - times['restarted']:.2f} s after the broker restarted; stats {pub.stats()}"
    )


@pytest.mark.timeout(180)
def test_wrong_password_is_refused_and_the_engine_runs_on(
    auth_broker, tiny_bundle, source_id, tmp_path, caplog
):
    import aiomqtt

    async def connect(password):
        async with aiomqtt.Client("127.0.0.1", auth_broker.port, username="rt", password=password, timeout=5):
            return True

    with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori"):
        asyncio.run(connect("wrong"))
    assert asyncio.run(connect("secret"))

    cfg = MqttConfig(host="127.0.0.1", port=auth_broker.port, username="rt", password="wrong", session="auth")
    pub = MqttPublisher(cfg)
    t0 = time.monotonic()
    with caplog.at_level("ERROR", logger="rtdecode.outputs.mqtt"):
        summary = _run(tiny_bundle, source_id, tmp_path, 12, [pub])
    assert _usable(summary) == 12 and summary["clips"] >= 6
    assert pub.state in ("refused", "stopped") and "not authori" in pub.error.lower()
    refusals = [r for r in caplog.records if "refused the connection" in r.getMessage()]
    assert len(refusals) == 1  # reported clearly, once, not on every retry
    assert time.monotonic() - t0 < 40  # closing did not wait for a broker that refuses


def test_listen_prints_valid_messages_and_skips_malformed(broker):
    pubc = paho.Client(paho.CallbackAPIVersion.VERSION2)
    pubc.connect("127.0.0.1", broker.port)
    pubc.loop_start()
    try:
        for topic, payload in (
            ("rtdecode/x/clip", b"\xc1 not msgpack"),
            ("rtdecode/x/feedback", pack({"schema": SCHEMA_VERSION + 99, "tr": 1})),
            ("rtdecode/x/status", pack({"schema": SCHEMA_VERSION, "state": "stopped", "tr": 41})),
        ):
            pubc.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        pubc.loop_stop()
        pubc.disconnect()
    res = cli(
        "rtdecode.cli",
        "listen",
        "--mqtt",
        f"127.0.0.1:{broker.port}",
        "--count",
        "1",
        "--timeout",
        "20",
        timeout=40,
    )
    assert "rtdecode/x/status" in res.stdout and "state=stopped" in res.stdout and "tr=41" in res.stdout
    assert res.stderr.count("skipping a malformed message") == 2
    # the documented third-party subscriber (plain paho + msgpack) reads the same messages
    example = subprocess.run(
        [sys.executable, "docs/subscriber_example.py", "--port", str(broker.port), "--count", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert "[x] status: state stopped, TR 41" in example.stdout
    assert example.stdout.count("skipped a malformed message") == 2


def _fake_engine(tmp_path):
    manifest = {"fps": 8.0, "vocabulary": ["a", "b"], "frames_per_tr": 4}
    return SimpleNamespace(
        record=SimpleNamespace(path=tmp_path / "20250101-000000_sub-01"),
        bundle=SimpleNamespace(manifest=manifest, path=tmp_path),
        ingest=SimpleNamespace(info=None, interval=0.2),
        summary=lambda: {"clips": 0},
    )


def test_hooks_never_wait_for_an_absent_broker(tmp_path):
    cfg = MqttConfig(host="127.0.0.1", port=_free_port(), buffer=20, close_timeout_s=0.5)
    pub = MqttPublisher(cfg)
    pub.start(_fake_engine(tmp_path))
    clip = np.zeros((4, 64, 64, 3), np.uint8)
    took = []
    for tr in range(200):
        t = time.perf_counter()
        pub.preprocessed(tr, None, {"tr": tr, "fd": 0.0, "motion": [0.0] * 6})
        cond = Conditions(tr, tr + 3, blurry=np.zeros((2, 4, 4, 3), np.float32))
        pub.decoded(cond)  # conditions + feedback
        pub.clip(ClipResult(tr, tr + 3, clip, cond, {"acquired": 1.0}))
        took.append(time.perf_counter() - t)
    # hooks only enqueue: well under a millisecond, never the connect timeout (GIL waits aside)
    assert np.median(took) < 0.002 and max(took) < 0.05
    assert len(pub.buffer) == 20 and pub.buffer.dropped["clip"] >= 195
    assert sum(pub.buffer.dropped.values()) == 1 + 4 * 200 - 20  # bounded: all but 20 shed
    deadline = time.monotonic() + 10
    while pub.state != "disconnected" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pub.state == "disconnected" and "unreachable" in pub.error
    t = time.monotonic()
    pub.close()
    assert time.monotonic() - t < 3


def test_buffer_sheds_oldest_clip_first_then_oldest_message():
    from rtdecode.outputs.mqtt import Message

    buf = OutgoingBuffer(4)
    msgs = [Message(k, {"i": i}, 0) for i, k in enumerate(["clip", "clip", "conditions", "clip"])]
    for m in msgs:
        assert buf.put(m) is None
    assert buf.take() is msgs[0]  # in flight: never shed
    assert buf.put(Message("status", {"i": 4}, 1)) is msgs[1]
    assert buf.put(Message("status", {"i": 5}, 1)) is msgs[3]
    assert buf.put(Message("status", {"i": 6}, 1)) is msgs[2]  # no idle clip left: the oldest idle
    assert buf.dropped == {"clip": 2, "conditions": 1}
    assert buf.take().body["i"] == 4  # the next one not in flight
    buf.release_all()  # the connection broke: both go out again, in order
    assert [buf.take().body["i"] for _ in range(2)] == [0, 4]
    buf.done(msgs[0])
    assert [m.body["i"] for m in buf.items] == [4, 5, 6]


def test_display_command_subscribes_and_survives_malformed_messages(broker, monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    proc = spawn("rtdecode.cli", "display", "--mqtt", f"127.0.0.1:{broker.port}", "--session", "s")
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    pubc = paho.Client(paho.CallbackAPIVersion.VERSION2)
    try:
        deadline = time.monotonic() + 30
        while "subscribed to rtdecode/s/#" not in "".join(lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        pubc.connect("127.0.0.1", broker.port)
        pubc.loop_start()
        for topic, payload in (
            ("rtdecode/s/clip", b"\x93garbage"),
            ("rtdecode/s/status", pack({"schema": SCHEMA_VERSION, "state": "running", "tr": 3, "fd": 0.1})),
        ):
            pubc.publish(topic, payload, qos=1).wait_for_publish(5)
        time.sleep(1.0)
        assert proc.poll() is None  # still showing
    finally:
        pubc.loop_stop()
        pubc.disconnect()
        proc.send_signal(signal.SIGINT)  # Ctrl-C closes the window
        try:
            proc.wait(10)
        finally:
            proc.kill()
    err = "".join(lines)
    assert "subscribed to rtdecode/s/#" in err and proc.returncode == 0
    assert "skipping a malformed message on rtdecode/s/clip" in err


def test_tls_publishing_and_an_untrusted_certificate(tls_broker, tmp_path):
    sub = Subscriber(tls_broker.port, "rtdecode/tls/status", ca=tls_broker.cert)
    good = MqttPublisher(
        MqttConfig(host="127.0.0.1", port=tls_broker.port, session="tls", ca_file=tls_broker.cert)
    )
    bad = MqttPublisher(
        MqttConfig(host="127.0.0.1", port=tls_broker.port, session="tls2", tls=True, close_timeout_s=0.5)
    )
    try:
        good.start(_fake_engine(tmp_path))
        bad.start(_fake_engine(tmp_path))
        assert sub.wait_for(lambda: sub.of("status"), 10)  # the start status, over TLS
        assert sub.of("status")[0]["state"] == "running"
        deadline = time.monotonic() + 10
        while bad.state != "disconnected" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "certificate verify failed" in bad.error  # system CAs do not trust it
    finally:
        good.close()
        bad.close()
        sub.close()
    assert good.connects == 1 and good.sent["status"] == 2  # start + stopped
