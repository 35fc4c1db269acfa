"""The session record (rtdecode.record): round trip, crash tolerance, disk full, replay."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import numpy as np
import pylsl
import pytest

from rtdecode.geometry import VolumeGeometry
from rtdecode.lsl import geometry_from_info
from rtdecode.record import (
    VOLUME_HEADER,
    RecordError,
    SessionRecord,
    open_record,
    replay_record,
)
from rtdecode.video import read_video
from rtdecode.volume import Event, Volume, checksum
from tests.conftest import ROOT

GEO = VolumeGeometry(dims=(8, 6, 4), voxel_size=(2.0, 2.0, 3.0), tr=0.1, subject="sub-01", session="ses-a")


def _data(seed: int, dtype=np.float32, shape=GEO.dims) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        return rng.integers(-3000, 3000, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _volumes() -> list[Volume]:
    """Volumes with every status, two dtypes and a wrong-size one."""
    nan = _data(5)
    nan[1, 2, 3] = np.nan
    specs = [
        (0, _data(0), "ok", ""),
        (1, _data(1, np.int16), "ok", ""),
        (3, _data(3), "ok", ""),
        (2, _data(2), "late", "arrived 0.40 s late"),
        (3, _data(3), "duplicate", "TR 3 seen before"),
        (4, nan, "bad", "non-finite values"),
        (5, _data(6, shape=(100,)), "bad", "wrong size: 100 values"),
    ]
    return [
        Volume(
            seq,
            tr,
            data,
            timestamp=100.0 + 0.1 * tr,
            received=100.05 + 0.1 * seq,
            status=status,
            reason=reason,
        )
        for seq, (tr, data, status, reason) in enumerate(specs)
    ]


def _write_volumes(rec: SessionRecord, n: int, start: int = 0) -> list[Volume]:
    vols = [
        Volume(s, s, _data(s), timestamp=10.0 + 0.1 * s, received=10.01 + 0.1 * s)
        for s in range(start, start + n)
    ]
    for v in vols:
        rec.write_volume(v)
    return vols


# --------------------------------------------------------------------------- round trip


def test_round_trip(tmp_path):
    rec = SessionRecord.create(tmp_path, GEO, meta={"engine": "test", "n": 3})
    assert re.fullmatch(r"\d{8}-\d{6}_sub-01", rec.path.name)
    vols = _volumes()
    for v in vols:
        rec.write_volume(v)
        assert v.sha1 == checksum(v.data) and "recorded" in v.stamps
    rec.write_event(Event("gap", 2, "TR 2 missing", time=5.0, data={"n": np.int64(1)}))
    rec.write_event(Event("duplicate", 3, "TR 3 seen before", time=6.0))
    rec.write_timing(0, {"received": np.float64(1.5), "recorded": 1.6})
    rec.write_preprocess(
        0,
        np.arange(6, dtype=np.float32),
        np.float32(0.25),
        mask_voxels=np.int64(120),
        spikes=np.array([1, 2]),
    )
    conds = {
        "semantic": _data(7, shape=(16,)),
        "mask": np.ones((2, 4, 4), np.uint8),
        "concepts": np.linspace(0, 1, 5, dtype=np.float16),
        "caption": "a red ball",
        "score": np.float32(0.5),
        "version": 1,
    }
    rec.write_conditions(3, conds)
    rec.write_conditions(4, {"caption": "a cat", "semantic": np.zeros(3)})
    clip0 = np.full((4, 32, 48, 3), 50, np.uint8)
    clip1 = np.full((3, 32, 48, 3), 200, np.uint8)
    rec.write_clip(1, clip1)  # out of TR order: the video puts TR 0 first
    rec.write_clip(0, clip0)
    rec.close(video_fps=8)
    rec.close("error")  # idempotent: the first close wins
    with pytest.raises(RecordError, match="closed"):
        rec.write_volume(vols[0])

    r = open_record(rec.path)
    assert r.status == "closed" and r.format == 1 and not r.truncated_tail
    assert r.geometry == GEO and r.meta == {"engine": "test", "n": 3}
    assert r.session["counts"]["volumes"] == 7 and r.session["counts"]["events"] == 2
    assert len(r.volumes) == len(vols)
    for (entry, data), v in zip(r.iter_volumes(), vols):
        assert (entry.seq, entry.tr, entry.status, entry.reason) == (v.seq, v.tr, v.status, v.reason)
        assert (entry.timestamp, entry.received) == (v.timestamp, v.received)
        assert data.dtype == v.data.dtype and data.shape == v.data.shape
        assert data.tobytes() == v.data.tobytes() and entry.sha1 == checksum(data)
    assert r.verify() == []
    assert np.array_equal(r.read_volume(1), vols[1].data)
    assert np.array_equal(r.volume_for_tr(3), vols[2].data)
    assert np.array_equal(r.volume_for_tr(2), vols[3].data)  # late is usable
    assert r.volume_for_tr(4) is None and r.volume_for_tr(99) is None  # bad / never seen

    assert [e["kind"] for e in r.events] == ["gap", "duplicate"] and r.events[0]["n"] == 1
    assert r.timings == [{"tr": 0, "received": 1.5, "recorded": 1.6}]
    pre = r.preprocess[0]
    assert pre["motion"] == [0, 1, 2, 3, 4, 5] and pre["fd"] == 0.25
    assert pre["mask_voxels"] == 120 and pre["spikes"] == [1, 2]

    c = r.conditions()
    assert [x["tr"] for x in c] == [3, 4]
    for key in ("semantic", "mask", "concepts"):
        assert c[0][key].dtype == conds[key].dtype and np.array_equal(c[0][key], conds[key])
    assert c[0]["caption"] == "a red ball" and c[0]["score"] == 0.5 and c[0]["version"] == 1

    clips = list(r.clips())
    assert [tr for tr, _ in clips] == [1, 0]
    assert np.array_equal(clips[0][1], clip1) and np.array_equal(clips[1][1], clip0)
    video = read_video(r.video_path)
    assert video.shape == (7, 32, 48, 3)
    assert abs(video[:4].mean() - 50) < 3 and abs(video[4:].mean() - 200) < 3


def test_unique_names_and_bad_paths(tmp_path):
    a = SessionRecord.create(tmp_path, GEO, name="run")
    b = SessionRecord.create(tmp_path, GEO, name="run")
    assert a.path.name == "run" and b.path.name == "run-2"
    with SessionRecord.create(tmp_path, VolumeGeometry(dims=(4, 4, 4))) as c:
        assert c.path.name.endswith("_session")
    assert open_record(c.path).status == "closed"
    assert not (c.path / "reconstruction.mp4").exists()  # no clips, no video
    assert open_record(a.path).status == "open" and open_record(a.path).volumes == []

    with pytest.raises(RecordError, match=r"no session\.json"):
        open_record(tmp_path / "nowhere")
    session = json.loads((a.path / "session.json").read_text())
    session["format"] = 99
    (a.path / "session.json").write_text(json.dumps(session))
    with pytest.raises(RecordError, match="format 99"):
        open_record(a.path)


# --------------------------------------------------------------------------- crash tolerance


def _copy_with(src: Path, dst: Path, fname: str, content: bytes) -> Path:
    shutil.copytree(src, dst)
    (dst / fname).write_bytes(content)
    return dst


def test_truncated_or_corrupt_tail(tmp_path):
    rec = SessionRecord.create(tmp_path, GEO, name="src")
    vols = _write_volumes(rec, 5)
    blob = (rec.path / "volumes.bin").read_bytes()
    last = open_record(rec.path).volumes[-1].offset
    hs = VOLUME_HEADER.size
    cuts = [last + 1, last + 3, last + 20, last + hs - 1, last + hs, last + hs + 7, len(blob) - 1]
    for k, cut in enumerate(cuts):
        r = open_record(_copy_with(rec.path, tmp_path / f"cut{k}", "volumes.bin", blob[:cut]))
        assert len(r.volumes) == 4 and r.truncated_tail, cut
        assert r.verify() == [] and [e.seq for e in r.volumes] == [0, 1, 2, 3]
    r = open_record(_copy_with(rec.path, tmp_path / "exact", "volumes.bin", blob[:last]))
    assert len(r.volumes) == 4 and not r.truncated_tail

    garbage = blob + b"\x00garbage" * 50
    r = open_record(_copy_with(rec.path, tmp_path / "garbage", "volumes.bin", garbage))
    assert len(r.volumes) == 5 and r.truncated_tail
    assert np.array_equal(r.read_volume(4), vols[4].data)
    flipped = bytearray(blob)
    flipped[last + 10] ^= 0xFF  # inside the last header: its crc no longer matches
    r = open_record(_copy_with(rec.path, tmp_path / "flip", "volumes.bin", bytes(flipped)))
    assert len(r.volumes) == 4 and r.truncated_tail


def test_lagging_and_partial_side_files(tmp_path):
    rec = SessionRecord.create(tmp_path, GEO, name="src")
    vols = _volumes()[:5]
    for v in vols:
        rec.write_volume(v)
    rec.write_event(Event("gap", 2, "TR 2 missing"))
    for tr in range(3):
        rec.write_conditions(tr, {"semantic": np.full(8, tr, np.float32)})
    rec.write_clip(0, np.zeros((2, 8, 8, 3), np.uint8))
    rec.write_clip(1, np.ones((2, 8, 8, 3), np.uint8))
    path = rec.path
    # the index line of the last volume was never written: the volume is still there
    lines = (path / "volumes.jsonl").read_bytes().splitlines(keepends=True)
    (path / "volumes.jsonl").write_bytes(b"".join(lines[:-1]))
    with open(path / "events.jsonl", "ab") as f:
        f.write(b'{"kind": "late", "tr"')  # partial last line
    with open(path / "timings.jsonl", "ab") as f:
        f.write(b'{"tr": 0, "received": 1.0}\nnot json\n{"tr": 1}\n{"tr"')
    cond = (path / "conditions.msgpack").read_bytes()
    (path / "conditions.msgpack").write_bytes(cond[:-5])
    clips = (path / "clips.bin").read_bytes()
    (path / "clips.bin").write_bytes(clips[:-1])

    r = open_record(path)
    assert len(r.volumes) == 5 and r.volumes[3].reason == "arrived 0.40 s late"
    assert r.volumes[4].status == "duplicate" and r.volumes[4].reason == ""
    assert [e["kind"] for e in r.events] == ["gap"]
    assert r.timings == [{"tr": 0, "received": 1.0}, {"tr": 1}]
    assert [c["tr"] for c in r.conditions()] == [0, 1]
    assert [tr for tr, _ in r.clips()] == [0]

    (path / "conditions.msgpack").write_bytes(cond + b"\xc1\xc1 not msgpack")
    assert [c["tr"] for c in open_record(path).conditions()] == [0, 1, 2]
    (path / "conditions.msgpack").write_bytes(cond + msgpack.packb(7))
    assert [c["tr"] for c in open_record(path).conditions()] == [0, 1, 2]


_KILL_CHILD = r"""
import sys, numpy as np
from rtdecode.geometry import VolumeGeometry
from rtdecode.record import SessionRecord
from rtdecode.volume import Volume
rec = SessionRecord.create(sys.argv[1], VolumeGeometry(dims=(64, 64, 32)), name="killed")
base = np.random.default_rng(0).standard_normal((64, 64, 32)).astype(np.float32)
for seq in range(400):  # bounded, so a slow parent cannot fill the disk
    rec.write_volume(Volume(seq, seq, base + np.float32(seq), 2.0 * seq, 2.0 * seq + 0.01))
    print(seq, flush=True)
import time
time.sleep(60)
"""


@pytest.mark.timeout(60)
def test_sigkill_loses_at_most_the_volume_in_flight(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_CHILD, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = -1
        while seen < 29:
            line = proc.stdout.readline()
            assert line, f"the writer died: {proc.stderr.read()}"
            seen = int(line)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
        # read through the text wrapper: readline() may already hold later lines in its buffer
        rest = proc.stdout.read()
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    last = max([seen, *(int(x) for x in rest.split())])
    r = open_record(tmp_path / "killed")
    assert r.status == "open"
    n = len(r.volumes)
    assert last + 1 <= n <= last + 2  # written and printed, plus at most one unprinted
    assert [e.seq for e in r.volumes] == list(range(n))
    assert r.verify() == []


# --------------------------------------------------------------------------- disk full


def _fail_writes(monkeypatch, match: bytes, nth: int) -> dict:
    """Make the ``nth`` os.write starting with ``match`` write part of its data, then every
    later os.write fail with ENOSPC (until ``state["full"]`` is reset)."""
    real_write = os.write
    state = {"seen": 0, "full": False}

    def fake_write(fd, data):
        view = memoryview(data)
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        if bytes(view[: len(match)]) == match:
            state["seen"] += 1
            if state["seen"] == nth:
                state["full"] = True
                # a short write, as when space runs out
                return real_write(fd, view[: min(1000, len(view) // 2)])
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", fake_write)
    return state


def test_disk_full_keeps_the_record_intact(tmp_path, monkeypatch):
    rec = SessionRecord.create(tmp_path, GEO, name="full")
    vols = [Volume(s, 10 + s, _data(s), 1.0 + s, 1.1 + s) for s in range(4)]
    state = _fail_writes(monkeypatch, b"RTDV", 3)
    rec.write_volume(vols[0])
    rec.write_volume(vols[1])
    with pytest.raises(RecordError) as info:
        rec.write_volume(vols[2])
    msg = str(info.value)
    assert "disk full while writing volume of TR 12" in msg and "up to TR 11 is intact" in msg
    assert str(rec.path) in msg
    with pytest.raises(RecordError, match="disk full while writing gap event of TR 12"):
        rec.write_event(Event("gap", 12, "lost"))

    r = open_record(rec.path)
    assert len(r.volumes) == 2 and not r.truncated_tail and r.verify() == []
    assert r.events == []
    # space is back: recording continues after the hole
    state["full"] = False
    rec.write_volume(vols[3])
    r = open_record(rec.path)
    assert [e.tr for e in r.volumes] == [10, 11, 13] and r.verify() == []
    assert [v["tr"] for v in map(json.loads, (rec.path / "volumes.jsonl").open())] == [10, 11, 13]


def test_failed_index_line_rolls_back_the_volume(tmp_path, monkeypatch):
    rec = SessionRecord.create(tmp_path, GEO, name="index")
    _write_volumes(rec, 2)
    _fail_writes(monkeypatch, b'{"seq"', 1)
    with pytest.raises(RecordError, match=r"TR 2.*up to TR 1 is intact"):
        _write_volumes(rec, 1, start=2)
    r = open_record(rec.path)
    assert len(r.volumes) == 2 and not r.truncated_tail


# --------------------------------------------------------------------------- replay


def _receive(source_id: str, n_expected: int, dtype, timeout: float = 20.0):
    infos = pylsl.resolve_bypred(f"source_id='{source_id}'", 1, 10)
    assert infos, "replay stream not found"
    inlet = pylsl.StreamInlet(infos[0], max_buflen=60, recover=False)
    info = inlet.info(5)
    inlet.open_stream(5)
    buf = np.empty((1, info.channel_count()), dtype)
    got = []
    start = pylsl.local_clock()
    while len(got) < n_expected and pylsl.local_clock() - start < timeout:
        _, ts = inlet.pull_chunk(timeout=0.2, max_samples=1, dest_obj=buf)
        if ts:
            got.append((ts[0], pylsl.local_clock(), buf[0].copy()))
    inlet.close_stream()
    return info, got


def _replay_source(tmp_path) -> tuple[Path, list[Volume]]:
    """8 TRs 0.1 s apart, TR 3 duplicated, a bad volume at TR 6."""
    geo = VolumeGeometry(dims=(16, 16, 8), tr=0.1, subject="sub-02")
    rec = SessionRecord.create(tmp_path, geo, name="replay")
    vols, seq = [], 0
    for tr in range(8):
        data = _data(tr, shape=geo.dims)
        copies = [("ok", ""), ("duplicate", "seen before")] if tr == 3 else [("ok", "")]
        if tr == 6:
            copies = [("bad", "non-finite values")]
        for status, reason in copies:
            vols.append(Volume(seq, tr, data, 500.0 + 0.1 * tr, 500.01 + 0.1 * tr, status, reason))
            seq += 1
    for v in vols:
        rec.write_volume(v)
    rec.close()
    return rec.path, vols


def _run_replay(path, **kw) -> tuple[threading.Thread, dict]:
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("n", replay_record(path, **kw)))
    thread.start()
    return thread, out


@pytest.mark.timeout(60)
def test_replay_streams_the_record_back(tmp_path, source_id):
    path, vols = _replay_source(tmp_path)
    thread, out = _run_replay(path, speed=1.0, source_id=source_id, linger=1.0)
    info, got = _receive(source_id, len(vols), np.float32)
    thread.join(20)
    assert out["n"] == len(vols) == 9 and len(got) == 9
    geo = geometry_from_info(info)
    assert geo.dims == (16, 16, 8) and geo.subject == "sub-02"
    assert abs(geo.tr - 0.1) < 1e-9 and abs(info.nominal_srate() - 10.0) < 1e-6
    for (_, _, data), v in zip(got, vols):
        assert data.tobytes() == v.data.tobytes()
    ts = np.array([g[0] for g in got])
    arrived = np.array([g[1] for g in got])
    original = np.array([v.timestamp for v in vols])
    assert np.allclose(ts - ts[0], original - original[0], atol=1e-6)
    # arrivals follow the acquisition: 0.1 s apart, the duplicate right after TR 3 (loose
    # bounds: the receiving thread may be scheduled late on a busy machine)
    error = np.abs((arrived - arrived[0]) - (original - original[0]))
    assert np.median(error) < 0.02 and error.max() < 0.08, arrived - arrived[0]
    assert arrived[4] - arrived[3] < 0.06 and arrived[5] - arrived[4] > 0.04


@pytest.mark.timeout(60)
def test_replay_faster_usable_only(tmp_path, source_id):
    path, vols = _replay_source(tmp_path)
    usable = [v for v in vols if v.status == "ok"]
    thread, out = _run_replay(path, speed=2.0, source_id=source_id, usable_only=True, linger=0.5)
    info, got = _receive(source_id, len(usable), np.float32)
    thread.join(20)
    assert out["n"] == len(usable) == 7 and len(got) == 7
    assert abs(info.nominal_srate() - 20.0) < 1e-6
    assert all(d.tobytes() == v.data.tobytes() for (_, _, d), v in zip(got, usable))
    ts = np.array([g[0] for g in got])
    original = np.array([v.timestamp for v in usable])
    assert np.allclose(ts - ts[0], (original - original[0]) / 2.0, atol=1e-6)


def test_replay_stops_on_request(tmp_path, source_id):
    path, _ = _replay_source(tmp_path)
    stop = threading.Event()
    stop.set()
    assert replay_record(path, source_id=source_id, wait_for_consumer=0.1, stop_event=stop, linger=5.0) == 0
