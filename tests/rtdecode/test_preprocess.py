import numpy as np
import pytest

from rtdecode.geometry import VolumeGeometry
from rtdecode.preprocess import PreprocessConfig, Preprocessor, brain_mask, preprocess_run
from scanner_sim.brain import make_subject
from scanner_sim.scanner import MotionConfig, ScannerConfig, acquire


@pytest.fixture(scope="module")
def run():
    s = make_subject(0)
    bold = np.zeros((60, s.n_visual), np.float32)
    r = acquire(s, bold, np.random.SeedSequence(11), ScannerConfig(motion=MotionConfig(scale=2.0)))
    return s, np.stack(list(r.volumes)), r.motion


def test_motion_correction_recovers_ground_truth(run):
    s, vols, truth = run
    _, est, fd = preprocess_run(vols, s.geometry, PreprocessConfig())
    rel = truth - truth[0]  # the reference is the first volume
    err = np.abs(est - rel)
    assert np.ptp(truth[:, :3], axis=0).max() > 0.5  # there was motion to find
    assert np.median(err[:, :3]) < 0.1 and np.median(err[:, 3:]) < 0.1
    assert np.percentile(err, 95) < 0.1
    assert fd[0] == 0 and fd[1:].mean() > 0


def test_strictly_causal(run):
    s, vols, _ = run
    a, ma, _ = preprocess_run(vols, s.geometry)
    changed = vols.copy()
    changed[40:] = changed[40:] // 2 + 7  # the future is different
    b, mb, _ = preprocess_run(changed, s.geometry)
    assert np.array_equal(a[:40], b[:40]) and np.array_equal(ma[:40], mb[:40])
    assert not np.array_equal(a[40:], b[40:])


def test_detrend_zscore_and_despike():
    geo = VolumeGeometry(dims=(8, 8, 4), tr=2.0)
    rng = np.random.default_rng(0)
    t = np.arange(200)
    base = 1000 + 50 * rng.random(geo.dims)
    drift = 0.5 * t  # strong linear drift
    vols = base[None] + drift[:, None, None, None] + rng.normal(0, 5, (200, *geo.dims))
    vols[150, 2, 2, 1] += 400  # a spike
    mask = np.ones(geo.dims, bool)
    cfg = PreprocessConfig(motion_correction=False, despike_z=4.0)
    pre = Preprocessor(geo, cfg, mask=mask)
    out = [pre.step(v) for v in vols]
    z = np.stack([o.values for o in out])
    settled = z[30:]
    assert abs(settled.mean()) < 0.15  # drift removed
    assert 0.7 < settled.std() < 1.3  # unit-ish variance
    assert np.abs(z).max() <= 4.0 + 1e-6  # despiked (soft limit)
    assert out[150].spikes >= 1
    assert not out[3].settled and out[30].settled


def test_brain_mask_is_one_component_inside_the_head(run):
    s, vols, _ = run
    m = brain_mask(vols[0].astype(np.float32))
    overlap = (m & (s.tissue >= 2)).sum() / m.sum()  # brain and CSF, not scalp or air
    assert overlap > 0.85 and m.sum() > 0.6 * s.brain_mask.sum()
