"""The simulator's LSL stream, received by a plain pylsl inlet in another process."""

import json

import numpy as np
import pylsl
import pytest
from pylsl.util import LostError

from rtdecode.lsl import geometry_from_info
from tests.conftest import spawn

N_TR = 24
SPEED = 20.0  # 0.1 s per TR


def _reconnect(source_id: str) -> pylsl.StreamInlet:
    """Resolve the restarted outlet (the old one may still be in the resolver's cache)."""
    start = pylsl.local_clock()
    while pylsl.local_clock() - start < 20:
        for info in pylsl.resolve_bypred(f"source_id='{source_id}'", 1, 2):
            inlet = pylsl.StreamInlet(info, max_buflen=60, recover=False)
            try:
                inlet.open_stream(2)
                return inlet
            except (LostError, TimeoutError):
                continue
    raise AssertionError("the restarted stream did not come back")


def _receive(source_id: str, n_expected: int, timeout: float = 60.0):
    """Pull every volume with a plain pylsl inlet; reconnect if the outlet restarts."""
    infos = pylsl.resolve_bypred(f"source_id='{source_id}'", 1, 30)
    assert infos, "stream not found"
    inlet = pylsl.StreamInlet(infos[0], max_buflen=60, recover=False)
    info = inlet.info(10)
    n = info.channel_count()
    buf = np.empty((1, n), np.float32)
    got, restarts = [], 0
    start = pylsl.local_clock()
    while len(got) < n_expected and pylsl.local_clock() - start < timeout:
        try:
            _, ts = inlet.pull_chunk(timeout=0.5, max_samples=1, dest_obj=buf)
        except LostError:
            restarts += 1
            inlet = _reconnect(source_id)
            continue
        if ts:
            got.append((ts[0], pylsl.local_clock(), buf[0].copy()))
    return info, got, restarts


@pytest.mark.timeout(180)
def test_round_trip_with_every_fault_visible_to_plain_pylsl(source_id, tmp_path):
    log = tmp_path / "faults.jsonl"
    proc = spawn(
        "scanner_sim.cli",
        "stream",
        "--n-tr",
        str(N_TR),
        "--speed",
        str(SPEED),
        "--source-id",
        source_id,
        "--no-stimulus-stream",
        "--faults.drop",
        "5",
        "--faults.duplicate",
        "8",
        "--faults.nan",
        "11",
        "--faults.wrong-shape",
        "13",
        "--faults.delay",
        "15",
        "--faults.delay-s",
        "0.35",
        "--faults.restart",
        "19",
        "--faults.log-file",
        str(log),
    )
    try:
        # dropped: 1, duplicated: +1 → N_TR samples in all
        info, got, restarts = _receive(source_id, N_TR)
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    geo = geometry_from_info(info)
    assert geo.dims == (64, 64, 32) and geo.voxel_size == (3.0, 3.0, 3.0)
    assert geo.subject == "sub-01" and info.channel_count() == 64 * 64 * 32
    assert len(got) == N_TR
    interval = 2.0 / SPEED
    t0 = got[0][0]
    idx = [round((ts - t0) / interval) for ts, _, _ in got]
    # drop: TR 5 never arrives
    assert 5 not in idx and set(range(N_TR)) - set(idx) == {5}
    # duplicate: TR 8 twice, identical
    dup = [g for g, i in zip(got, idx) if i == 8]
    assert len(dup) == 2 and np.array_equal(dup[0][2], dup[1][2], equal_nan=True)
    vols = {i: g[2].reshape(64, 64, 32) for g, i in zip(got, idx)}
    # NaN: TR 11 only
    assert np.isnan(vols[11]).any()
    assert not any(np.isnan(v).any() for i, v in vols.items() if i != 11)
    # wrong shape: the last slices of TR 13 are missing (zeros); EPI never has a zero slice
    assert np.all(vols[13][:, :, -1] == 0)
    assert all(np.any(v[:, :, -1] != 0) for i, v in vols.items() if i != 13)
    # delay: TR 15 arrives ~0.35 s after its timestamp, after TR 16..
    lateness = {i: recv - ts for (ts, recv, _), i in zip(got, idx)}
    assert lateness[15] > 0.3 and np.median(list(lateness.values())) < 0.05
    assert idx.index(15) > idx.index(16)
    # restart: the inlet lost the stream once, and TR 19.. still arrived
    assert restarts == 1 and {19, 20, 23} <= set(idx)
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert {(e["fault"], e["tr"]) for e in logged} == {
        ("drop", 5),
        ("duplicate", 8),
        ("nan", 11),
        ("wrong_shape", 13),
        ("delay", 15),
        ("restart", 19),
    }


def _drain(inlet: pylsl.StreamInlet, n: int, timeout: float = 30.0) -> tuple[list, list]:
    """Pull until ``n`` samples arrived (short timeouts: never block on a finished stream)."""
    data, stamps = [], []
    start = pylsl.local_clock()
    while len(stamps) < n and pylsl.local_clock() - start < timeout:
        d, ts = inlet.pull_chunk(timeout=0.2, max_samples=n - len(stamps), min_samples=1, as_numpy=True)
        if len(ts):
            data.append(d)
            stamps.extend(ts)
    return data, stamps


@pytest.mark.timeout(120)
def test_stimulus_frames_share_the_volume_clock(source_id):
    proc = spawn("scanner_sim.cli", "stream", "--n-tr", "6", "--speed", "8", "--source-id", source_id)
    try:
        infos = pylsl.resolve_bypred(f"source_id='{source_id}-stimulus'", 1, 30)
        frames = pylsl.StreamInlet(infos[0], max_buflen=60, recover=False)
        vinfo = pylsl.resolve_bypred(f"source_id='{source_id}'", 1, 30)[0]
        vols = pylsl.StreamInlet(vinfo, max_buflen=60, recover=False)
        vols.open_stream(10)
        frames.open_stream(10)
        _, vts = _drain(vols, 6)
        fdata, fts = _drain(frames, 6 * 16)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    assert len(vts) == 6 and len(fts) == 6 * 16
    f = np.concatenate(fdata).view(np.uint8).reshape(-1, 64, 64, 3)
    assert f.std() > 10
    interval = 2.0 / 8
    # Frames of TR k fall inside [t_k - TR, t_k) where t_k is volume k's timestamp.
    fts = np.asarray(fts)
    for t in vts:
        inside = (fts >= t - interval - 1e-6) & (fts < t - 1e-6)
        assert inside.sum() == 16
