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
