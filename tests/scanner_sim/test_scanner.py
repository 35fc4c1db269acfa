import numpy as np

from rtdecode.geometry import VolumeGeometry, framewise_displacement, resample_rigid
from scanner_sim.brain import make_subject
from scanner_sim.scanner import MotionConfig, ScannerConfig, acquire, simulate_motion


def test_motion_is_realistic_and_seeded():
    a = simulate_motion(np.random.default_rng(1), 300, 2.0, MotionConfig())
    b = simulate_motion(np.random.default_rng(1), 300, 2.0, MotionConfig())
    assert np.array_equal(a, b)
    fd = framewise_displacement(a)
    assert 0.03 < fd.mean() < 0.4
    assert np.abs(a[:, :3]).max() < 5.0


def test_volumes_are_int16_epi_with_ground_truth_motion():
    s = make_subject(0)
    bold = np.zeros((6, s.n_visual), np.float32)
    run = acquire(s, bold, np.random.SeedSequence(7))
    vols = np.stack(list(run.volumes))
    assert vols.dtype == np.int16 and vols.shape == (6, 64, 64, 32)
    brain = vols[0][s.brain_mask]
    assert 500 < np.median(brain) < 1500  # EPI-like intensity
    outside = vols[0][s.tissue == 0]
    assert 0 < outside.mean() < 40  # Rician noise floor, not zeros
    assert run.motion.shape == (6, 6)
    again = np.stack(list(acquire(s, bold, np.random.SeedSequence(7)).volumes))
    assert np.array_equal(vols, again)


def test_motion_moves_the_image_as_the_parameters_say():
    s = make_subject(0)
    cfg = ScannerConfig(motion=MotionConfig(scale=0.0))
    still = np.stack(
        list(acquire(s, np.zeros((1, s.n_visual), np.float32), np.random.SeedSequence(2), cfg).volumes)
    )[0]
    shifted = resample_rigid(still, np.array([3.0, 0, 0, 0, 0, 0]), s.geometry)
    # A 3 mm (one voxel) x-translation moves the head one voxel along x.
    assert np.corrcoef(shifted[1:].ravel(), still[:-1].ravel())[0, 1] > 0.99


def test_rigid_resampling_round_trips():
    geo = VolumeGeometry()
    rng = np.random.default_rng(0)
    from scipy import ndimage

    vol = ndimage.gaussian_filter(rng.random(geo.dims), 3).astype(np.float32)
    p = np.array([1.0, -0.5, 0.3, 1.5, -1.0, 2.0])
    back = resample_rigid(resample_rigid(vol, p, geo, order=3), p, geo, order=3, inverse=True)
    core = (slice(10, -10), slice(10, -10), slice(8, -8))
    assert np.abs(back[core] - vol[core]).max() < 0.02 * np.ptp(vol)
