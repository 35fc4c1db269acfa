"""The fault matrix (docs/reliability.md): each fault injected, its documented outcome checked.

Faults the scanner simulator already injects end to end are covered in test_pipeline.py
(dropped, duplicated, NaN volumes, an outlet restart, SIGKILL), test_mqtt.py (broker away and
back) and test_display.py (display closed). Here, a scripted outlet on a small synthetic
bundle injects the rest with exact timing, in-process, in a few seconds each.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pylsl
import pytest

from rtdecode.ingest import IngestConfig, VolumeIngest
from rtdecode.outputs import Output
from rtdecode.pipeline import Engine, EngineConfig
from rtdecode.record import open_record
from tests.conftest import spawn
from tests.rtdecode.helpers import (
    SMALL_DIMS,
    Push,
    ScriptedOutlet,
    make_small_bundle,
    synthetic_volume,
    wait_for,
)


class Collect(Output):
    """What the engine emitted."""

    def __init__(self) -> None:
        self.values: dict[int, np.ndarray] = {}
        self.clips: list[int] = []
        self.events: list[tuple[str, int, str]] = []

    def preprocessed(self, tr, result, status):
        self.values[tr] = result.values.copy()

    def clip(self, result):
        self.clips.append(result.tr)

    def event(self, event):
        self.events.append((event.kind, event.tr, event.detail))


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> Path:
    return make_small_bundle(tmp_path_factory.mktemp("bundle") / "small")


def _engine(bundle: Path, source_id: str, sessions: Path, outputs=(), **ingest) -> Engine:
    cfg = EngineConfig(
        bundle=bundle,
        sessions=sessions,
        log_every=0,
        ingest=IngestConfig(source_id=source_id, resolve_timeout_s=10.0, **ingest),
    )
    return Engine(cfg, list(outputs))


def _recorded(rec) -> list[tuple[int, str]]:
    return sorted((v.tr, v.sha1) for v in rec.volumes)


# --------------------------------------------------------------------------- volumes


@pytest.mark.timeout(60)
def test_late_duplicate_and_corrupt_volumes(small_bundle, source_id, tmp_path):
    """Late (in order / after later TRs), duplicate, conflicting, NaN, inf, truncated, all-zero
    and dropped volumes: each reported at its TR, all recorded as received, only good ones
    preprocessed, decoding goes on with neighbouring TRs."""
    n = 32
    nan = synthetic_volume(17)
    nan[3:5, :, 4] = np.nan
    cut = synthetic_volume(19)
    cut[:, :, -2:] = 0  # a reconstruction cut short: its last slices arrive as zeros
    inf = synthetic_volume(25)
    inf[0, 0, 0] = np.inf
    special = {
        6: [Push(6, delay=0.07)],  # later than half a TR: late, still in order
        10: [Push(10, delay=0.25)],  # after TRs 11 and 12: a gap first, then late out of order
        13: [Push(13), Push(13)],  # an identical copy
        15: [Push(15), Push(15, data=synthetic_volume(15) + 1)],  # same TR, other data
        17: [Push(17, data=nan)],
        19: [Push(19, data=cut)],
        21: [Push(21, data=np.zeros(SMALL_DIMS, np.float32))],
        23: [],  # dropped
        25: [Push(25, data=inf)],
    }
    plan = [p for k in range(n) for p in special.get(k, [Push(k)])]
    outlet = ScriptedOutlet(source_id)
    collect = Collect()
    engine = _engine(small_bundle, source_id, tmp_path / "sessions", [collect], max_trs=n)
    outlet.start(plan)
    try:
        summary = asyncio.run(engine.run())
    finally:
        outlet.close()
    ev = summary["events"]
    assert {6, 10} <= set(ev["late"])
    assert {10, 23} <= set(ev["gap"]) and ev["missing"] == [23]
    assert ev["duplicate"] == [13, 15]
    assert ev["bad"] == [17, 19, 21, 25]
    # every sample received is in the record, byte for byte, with its reason
    rec = open_record(summary["record"])
    assert rec.status == "closed" and rec.verify() == []
    assert _recorded(rec) == sorted(outlet.sent) and len(rec.volumes) == n + 1
    reasons = {(v.tr, v.status): v.reason for v in rec.volumes}
    assert "out of order" in reasons[(10, "late")] and "conflict" in reasons[(15, "duplicate")]
    assert "non-finite" in reasons[(17, "bad")] and "truncated" in reasons[(19, "bad")]
    assert reasons[(21, "bad")] == "all-zero volume"
    # only usable volumes were preprocessed (in-order late ones are, out-of-order ones not)
    assert set(collect.values) == set(range(n)) - {10, 17, 19, 21, 23, 25}
    # decoding went on to the end, filling missing TRs with neighbours (said so)
    assert max(collect.clips) == n - 1 - 3
    degraded = [c for c in rec.conditions() if c.get("degraded")]
    assert degraded and all("missing, used" in c["degraded"] for c in degraded)


@pytest.mark.timeout(60)
def test_stimulus_stream_stops_then_volume_stream_disappears(small_bundle, source_id, tmp_path):
    """The stimulus stream ends at TR 6 (reported, volumes unaffected); then the volume
    stream vanishes for longer than lost_timeout_s: lost, ended, record closed, nothing lost."""
    n = 16
    outlet = ScriptedOutlet(source_id, stimulus_until=6)
    collect = Collect()
    engine = _engine(small_bundle, source_id, tmp_path / "sessions", [collect], lost_timeout_s=1.5)
    outlet.start([Push(k) for k in range(n)], close_after=True)
    t0 = time.monotonic()
    try:
        summary = asyncio.run(engine.run())
    finally:
        outlet.close()
    assert time.monotonic() - t0 < 30
    ev = summary["events"]
    assert ev["stimulus_lost"] == [-1] and ("stimulus_lost", -1) in [e[:2] for e in collect.events]
    assert ev["lost"] == [n] and ev["ended"] == [n] and "missing" not in ev
    rec = open_record(summary["record"])
    assert rec.status == "closed" and _recorded(rec) == sorted(outlet.sent) and len(rec.volumes) == n
    assert summary["volumes"]["ok"] + summary["volumes"]["late"] == n
    assert set(collect.values) == set(range(n)) and max(collect.clips) == n - 1 - 3
    # ground truth while it streamed, none after
    assert engine.stimulus_frames(2, 4) is not None and engine.stimulus_frames(n - 4, 4) is None


# --------------------------------------------------------------------------- shape and type


@pytest.mark.timeout(60)
def test_restarted_stream_with_wrong_shape_or_dtype_is_refused(source_id):
    """A stream that comes back with another shape or sample type is refused (an error,
    once each) and the inlet waits for the right one, which then continues the TR count."""
    from rtdecode.geometry import VolumeGeometry
    from rtdecode.lsl import VolumeOutlet

    interval = 0.1
    good = VolumeGeometry(SMALL_DIMS, (3.0, 3.0, 3.0), interval)
    got, events = [], []
    outlet = VolumeOutlet(good, "restart", source_id)
    ingest = VolumeIngest(IngestConfig(source_id=source_id, lost_timeout_s=20.0), got.append, events.append)
    ingest.connect()
    ingest.start()
    t0 = pylsl.local_clock()

    def push(out, k):
        out.push(synthetic_volume(k), t0 + (k + 1) * interval)

    try:
        for k in range(3):
            push(outlet, k)
        assert wait_for(lambda: len(got) == 3, 15.0)
        outlet.close()
        assert wait_for(lambda: any(e.kind == "lost" for e in events), 15.0)
        for dims, dtype, why in (((16, 16, 4), np.float32, "(16, 16, 4)"), (SMALL_DIMS, np.int16, "int16")):
            wrong = VolumeOutlet(VolumeGeometry(dims, (3.0,) * 3, interval), "restart", source_id, dtype)
            assert wait_for(lambda w=why: any(e.kind == "error" and w in e.detail for e in events), 15.0)
            wrong.close()
        outlet = VolumeOutlet(good, "restart", source_id)
        assert wait_for(lambda: any(e.kind == "reconnected" for e in events), 15.0)
        for k in range(3, 6):
            push(outlet, k)
        assert wait_for(lambda: len(got) == 6, 15.0)
    finally:
        ingest.stop()
        outlet.close()
    assert [v.tr for v in got] == list(range(6)) and all(v.usable for v in got)
    kinds = [e.kind for e in events if e.kind != "late"]
    assert kinds == ["lost", "error", "error", "reconnected"], events


def test_stream_of_another_type_or_grid_is_refused_at_start(small_bundle, source_id, tmp_path):
    """A non-numeric stream, or one whose grid is not the bundle's: a clear error, no run."""
    info = pylsl.StreamInfo("text", "fMRI", 8, 10.0, pylsl.cf_string, source_id)
    text = pylsl.StreamOutlet(info)
    with pytest.raises(ValueError, match="non-numeric channel format"):
        cfg = IngestConfig(source_id=source_id, resolve_timeout_s=5, dims=(2, 2, 2))
        VolumeIngest(cfg, print, print).connect()
    del text
    other = ScriptedOutlet(source_id + "-grid", dims=(16, 16, 4))
    try:
        engine = _engine(small_bundle, source_id + "-grid", tmp_path / "sessions")
        with pytest.raises(ValueError, match=r"\(16, 16, 4\) but bundle .* trained on \(16, 16, 8\)"):
            asyncio.run(engine.run())
    finally:
        other.close()
    assert not (tmp_path / "sessions").exists()  # refused before any record was made


# --------------------------------------------------------------------------- disk full


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return res.returncode == 0


def _simulate_full_disk(monkeypatch, root: Path, budget: int) -> None:
    """Make os.write to files under ``root`` fail with ENOSPC once ``budget`` bytes are used
    (a short write first, as a filling disk does)."""
    real_write = os.write
    used = [0]

    def write(fd, data):
        try:
            ours = os.readlink(f"/proc/self/fd/{fd}").startswith(str(root))
        except OSError:
            ours = False
        if not ours:
            return real_write(fd, data)
        n = len(memoryview(data).cast("B"))
        room = budget - used[0]
        if room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        done = real_write(fd, memoryview(data).cast("B")[: min(n, room)])
        used[0] += done
        return done

    monkeypatch.setattr(os, "write", write)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("disk", ["tmpfs", "simulated"])
def test_disk_full_under_the_record(disk, small_bundle, source_id, tmp_path, monkeypatch, caplog):
    """The disk fills up mid-run: one clear error naming what is intact, the run goes on to
    the end, and everything written before stays readable."""
    root = tmp_path / "disk"
    if disk == "tmpfs":
        if not _mount_tmpfs(root, "256k"):
            pytest.skip("mounting a tmpfs needs root and CAP_SYS_ADMIN")
    else:
        if not os.path.exists("/proc/self/fd"):
            pytest.skip("needs /proc/self/fd")
        root.mkdir()
        _simulate_full_disk(monkeypatch, root, 256 << 10)
    n = 40
    outlet = ScriptedOutlet(source_id)
    collect = Collect()
    engine = _engine(small_bundle, source_id, root, [collect], max_trs=n)
    outlet.start([Push(k) for k in range(n)])
    try:
        with caplog.at_level(logging.ERROR, logger="rtdecode"):
            summary = asyncio.run(engine.run())
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        (path,) = [p for p in root.iterdir() if p.is_dir()]
        rec = open_record(path)
        first = errors[0]
        assert "disk full while writing" in first and str(path) in first and "is intact" in first
        assert "The run goes on" in first
        assert 1 <= len(errors) <= 9  # once per kind of file (and at close), not once per TR
        assert summary["record_errors"] > 0 and "error" in summary["events"]
        # the run went on to the end
        assert set(collect.values) == set(range(n)) and max(collect.clips) == n - 4
        # the volumes recorded before the disk filled are intact and readable
        trs = [v.tr for v in rec.volumes]
        assert 5 <= len(trs) < n and trs == list(range(len(trs)))
        assert rec.verify() == [] and not rec.truncated_tail
        assert rec.status in ("open", "closed")  # session.json may be unwritable at the end
    finally:
        outlet.close()
        if disk == "tmpfs":
            subprocess.run(["umount", "-l", str(root)], check=False)


# --------------------------------------------------------------------------- signals


def _sockets(pid: int) -> tuple[list, list]:
    """(TCP sockets listening, UDP sockets on liblsl's ports 16571–16604) of a process."""
    listening, lsl_udp = [], []
    for c in psutil.Process(pid).net_connections(kind="inet"):
        if c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN:
            listening.append(c)
        elif c.type == socket.SOCK_DGRAM and c.laddr and 16571 <= c.laddr.port <= 16604:
            lsl_udp.append(c)
    return listening, lsl_udp


def _recorded_lines(sessions: Path) -> int:
    """Volumes indexed so far in the (single) record under ``sessions``."""
    index = list(sessions.glob("*/volumes.jsonl")) if sessions.exists() else []
    return len(index[0].read_bytes().splitlines()) if index else 0


@pytest.mark.timeout(120)
def test_sigint_stops_cleanly_and_nothing_listens(small_bundle, source_id, tmp_path):
    """`rtdecode run` without outputs opens no listening socket; Ctrl-C mid-run finishes the
    queued work, closes the record (every received volume in it) and exits 0."""
    sessions = tmp_path / "sessions"
    outlet = ScriptedOutlet(source_id, interval=0.05)
    engine = spawn(
        "rtdecode.cli",
        "run",
        "--bundle",
        str(small_bundle),
        "--sessions",
        str(sessions),
        "--ingest.source-id",
        source_id,
        "--ingest.resolve-timeout-s",
        "60",
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(engine.stderr.readline, "")), daemon=True).start()
    outlet.start([Push(k) for k in range(2000)], wait_consumer=90)
    try:
        assert wait_for(lambda: _recorded_lines(sessions) >= 20, 90), "".join(lines)[-3000:]
        # liblsl's resolver binds UDP ports of its range while it resolves (the stimulus
        # stream is looked for at the start), then closes them; nothing ever listens on TCP
        # and the discovery port 16571 is never bound (only outlets answer queries).
        samples = []
        for _ in range(40):
            samples.append(_sockets(engine.pid))
            if not samples[-1][1]:
                break
            time.sleep(0.2)
        engine.send_signal(signal.SIGINT)
        engine.wait(30)
        out = engine.stdout.read()
    finally:
        engine.kill()
        outlet.close()
    err = "".join(lines)
    assert all(not tcp for tcp, _ in samples), samples
    assert all(c.laddr.port != 16571 for _, udp in samples for c in udp), samples
    assert samples[-1][1] == [], samples  # the resolver's sockets were closed again
    assert engine.returncode == 0, err[-3000:]
    assert "stopping: finishing queued work" in err and "received_to_clip" in out
    (path,) = sessions.iterdir()
    rec = open_record(path)
    summary = json.loads((path / "summary.json").read_text())
    assert rec.status == "closed" and rec.verify() == [] and len(rec.volumes) >= 20
    # every volume the engine received (counted in its summary) is in the record
    assert len(rec.volumes) == sum(summary["volumes"].values())
    assert _recorded(rec) == sorted(outlet.sent)[: len(rec.volumes)]
