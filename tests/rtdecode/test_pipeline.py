"""The engine end to end over real LSL: faults, the lossless record, online = offline."""

import asyncio
import json
import os
import signal
import time

import numpy as np
import pylsl
import pytest

from rtdecode.ingest import IngestConfig
from rtdecode.outputs import Output
from rtdecode.pipeline import Engine, EngineConfig
from rtdecode.preprocess import Preprocessor
from rtdecode.record import open_record
from tests.conftest import spawn


class Collect(Output):
    """Keeps what the engine emits, for the assertions."""

    def __init__(self):
        self.values, self.clips, self.status = {}, [], []

    def preprocessed(self, tr, result, status):
        self.values[tr] = result.values.copy()
        self.status.append(status)

    def clip(self, result):
        self.clips.append(result.tr)


def _sent(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.timeout(400)
def test_300_trs_with_faults_lose_nothing(tiny_bundle, source_id, tmp_path):
    sent_log = tmp_path / "sent.jsonl"
    sim = spawn(
        "scanner_sim.cli",
        "stream",
        "--n-tr",
        "300",
        "--speed",
        "10",
        "--source-id",
        source_id,
        "--no-stimulus-stream",
        "--faults.drop",
        "30,120",
        "--faults.duplicate",
        "50,200",
        "--faults.nan",
        "80,250",
        "--faults.restart",
        "150",
        "--sent-log",
        str(sent_log),
    )
    collect = Collect()
    cfg = EngineConfig(
        bundle=tiny_bundle,
        sessions=tmp_path / "sessions",
        log_every=0,
        # resolve: the simulator builds its subject first (slow on a loaded CI machine)
        ingest=IngestConfig(source_id=source_id, max_trs=300, lost_timeout_s=15.0, resolve_timeout_s=180.0),
    )
    engine = Engine(cfg, [collect])
    try:
        summary = asyncio.run(engine.run())
        assert sim.wait(60) == 0, sim.stderr.read()[-2000:]
    finally:
        sim.kill()
    rec = open_record(summary["record"])
    assert rec.status == "closed"
    # every volume the simulator sent is in the record, byte-identical
    sent = sorted((e["tr"], e["sha1"]) for e in _sent(sent_log))
    got = sorted((v.tr, v.sha1) for v in rec.volumes)
    assert got == sent and len(sent) == 300  # 2 dropped, 2 duplicated
    for i, v in enumerate(rec.volumes):
        from rtdecode.volume import checksum

        assert checksum(rec.read_volume(i)) == v.sha1
    # the injected faults are reported at the right TRs
    kinds = summary["events"]
    assert set(kinds["missing"]) == {30, 120}
    assert sorted(kinds["duplicate"]) == [50, 200]
    assert sorted(kinds["bad"]) == [80, 250]
    assert kinds["lost"] == [150] and kinds["reconnected"] == [150]
    # the run did not stop: clips after the restart and up to the end
    assert max(collect.clips) >= 290 and any(150 < c < 200 for c in collect.clips)
    assert summary["volumes"]["bad"] == 2 and summary["volumes"]["duplicate"] == 2
    # online preprocessing equals the offline path on the recorded volumes
    pre = Preprocessor(rec.geometry, engine._preprocessor().cfg, mask=engine._preprocessor().mask)
    for entry, data in rec.iter_volumes():
        if entry.status != "ok" and not (entry.status == "late" and "out of order" not in entry.reason):
            continue
        offline = pre.step(data.astype(np.float32)).values
        assert np.abs(offline - collect.values[entry.tr]).max() < 1e-5
    # per-stage timestamps in the record
    timing = [t for t in rec.timings if "rendered" in t]
    assert len(timing) > 250 and all(
        t["received"] <= t["preprocessed"] <= t["decoded"] <= t["rendered"] for t in timing
    )


@pytest.mark.timeout(200)
def test_sigkill_loses_at_most_the_volume_in_flight(tiny_bundle, source_id, tmp_path):
    sent_log = tmp_path / "sent.jsonl"
    sessions = tmp_path / "sessions"
    sim = spawn(
        "scanner_sim.cli",
        "stream",
        "--n-tr",
        "200",
        "--speed",
        "10",
        "--source-id",
        source_id,
        "--no-stimulus-stream",
        "--sent-log",
        str(sent_log),
    )
    engine = spawn(
        "rtdecode.cli",
        "run",
        "--bundle",
        str(tiny_bundle),
        "--sessions",
        str(sessions),
        "--ingest.source-id",
        source_id,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and (not sent_log.exists() or len(_sent(sent_log)) < 40):
            time.sleep(0.1)
        os.kill(engine.pid, signal.SIGKILL)
        killed_at = pylsl.local_clock()
        engine.wait(10)
    finally:
        engine.kill()
        sim.kill()
    (path,) = sessions.iterdir()
    rec = open_record(path)
    assert rec.status == "open"  # never closed: the engine died
    recorded = {(v.tr, v.sha1) for v in rec.volumes}
    # volumes pushed well before the kill had been received; at most one was in flight
    before = [(e["tr"], e["sha1"]) for e in _sent(sent_log) if e["timestamp"] < killed_at - 0.15]
    assert len(before) >= 35
    lost = [v for v in before if v not in recorded]
    assert len(lost) <= 1, lost


@pytest.mark.timeout(200)
def test_demo_writes_stimulus_beside_reconstruction(tiny_bundle, tmp_path):
    from rtdecode.video import read_video
    from tests.conftest import cli

    out = tmp_path / "demo"
    res = cli(
        "rtdecode.cli",
        "demo",
        "--bundle",
        str(tiny_bundle),
        "--n-tr",
        "16",
        "--speed",
        "10",
        "--out",
        str(out),
        "--sessions",
        str(out / "sessions"),
        timeout=180,
    )
    assert "received_to_clip" in res.stdout
    video = read_video(out / "demo.mp4")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"] >= 10 and len(video) == 16 * summary["clips"]
    half = video.shape[2] // 2
    left, right = video[:, 30:, : half - 4], video[:, 30:, half + 4 :]
    assert left.std() > 10  # the stimulus
    assert right.std() > 1 and not np.allclose(left.mean(), right.mean(), atol=0.01)
