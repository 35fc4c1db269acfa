import numpy as np

from rtdecode.ingest import TRClock, validate_volume


def test_tr_clock_classifies_arrivals():
    c = TRClock(interval=2.0, late_fraction=0.5)
    assert c.assign(100.0, 100.01, "a") == (0, "ok", "", [])
    assert c.assign(102.0, 102.01, "b")[:2] == (1, "ok")
    # TR 2 dropped: TR 3 arrives, TR 2 is reported as a gap
    k, status, _, skipped = c.assign(106.003, 106.02, "d")
    assert (k, status, skipped) == (3, "ok", [2])
    # TR 3 again, identical: duplicate; with other data: conflict
    assert c.assign(106.003, 106.05, "d")[1:3] == ("duplicate", "identical copy")
    assert "conflict" in c.assign(106.003, 106.05, "x")[2]
    # TR 2 finally arrives after TR 3: late, out of order
    k, status, reason, _ = c.assign(104.0, 107.0, "c")
    assert (k, status) == (2, "late") and "out of order" in reason
    # in order but 1.5 s after acquisition: late
    k, status, _, _ = c.assign(108.0, 109.5, "e")
    assert (k, status) == (4, "late")
    assert c.missing() == []


def test_missing_lists_never_received():
    c = TRClock(1.0)
    for t in (0, 1, 4):
        c.assign(float(t), float(t), str(t))
    assert c.missing() == [2, 3]


def test_validation_finds_bad_volumes():
    rng = np.random.default_rng(0)
    good = (rng.random((8, 8, 6)) * 100 + 1).astype(np.float32)
    assert validate_volume(good) == ""
    nan = good.copy()
    nan[1, 2, 3] = np.nan
    assert "non-finite" in validate_volume(nan)
    cut = good.copy()
    cut[:, :, -2:] = 0
    assert validate_volume(cut) == "truncated: 4 of 6 slices"
    assert validate_volume(np.zeros((4, 4, 4), np.int16)) == "all-zero volume"
    assert validate_volume(good.astype(np.int16)) == ""


def test_no_stream_gives_a_clear_error(source_id):
    import pytest

    from rtdecode.ingest import IngestConfig, VolumeIngest
    from rtdecode.lsl import StreamNotFoundError

    ingest = VolumeIngest(IngestConfig(source_id=source_id, resolve_timeout_s=0.5), print, print)
    with pytest.raises(StreamNotFoundError, match=f"source_id='{source_id}'.*scanner-sim stream"):
        ingest.connect()


def test_third_party_stream_without_desc_needs_and_uses_the_users_geometry(source_id):

    import time

    import pylsl
    import pytest

    from rtdecode.ingest import IngestConfig, VolumeIngest

    dims = (16, 16, 8)
    n = int(np.prod(dims))
    info = pylsl.StreamInfo("thirdparty", "fMRI", n, 10.0, pylsl.cf_float32, source_id)  # no desc
    outlet = pylsl.StreamOutlet(info)
    with pytest.raises(ValueError, match=r"--ingest\.dims"):
        VolumeIngest(IngestConfig(source_id=source_id, resolve_timeout_s=5), print, print).connect()
    with pytest.raises(ValueError, match="makes 512 voxels"):
        VolumeIngest(IngestConfig(source_id=source_id, dims=(8, 8, 8)), print, print).connect()
    got, events = [], []
    ingest = VolumeIngest(IngestConfig(source_id=source_id, dims=dims, max_trs=6), got.append, events.append)
    geo = ingest.connect()
    assert geo.dims == dims and abs(geo.tr - 0.1) < 1e-9
    ingest.start()
    rng = np.random.default_rng(0)
    t0 = pylsl.local_clock()
    for k in range(6):
        vol = rng.random(n, dtype=np.float32) + 1
        if k == 3:
            vol[5] = np.nan
        outlet.push_chunk(vol.reshape(1, -1), t0 + k * 0.1)
        time.sleep(0.1)
    assert ingest.finished.wait(10)
    assert [v.tr for v in got] == list(range(6))
    assert [v.status for v in got] == ["ok", "ok", "ok", "bad", "ok", "ok"]
    assert got[0].data.shape == dims
    assert [e.kind for e in events] == ["bad"] and events[0].tr == 3
