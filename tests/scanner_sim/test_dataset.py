import json

import h5py
import numpy as np
import pytest

from scanner_sim.dataset import Dataset, estimate_bytes, plan_runs, with_preset


def test_default_is_cc2017_scale():
    cfg = with_preset("cc2017")
    assert cfg.train_segments * cfg.segment_trs >= 4000 and cfg.train_repeats == 2
    assert cfg.test_segments * cfg.segment_trs >= 1000 and cfg.test_repeats == 10
    assert cfg.subjects >= 3 and cfg.scanner.tr == 2.0 and cfg.workers <= 2
    assert estimate_bytes(cfg) < 20e9


def test_tiny_dataset_reads_back(tiny_dataset):
    with Dataset(tiny_dataset) as ds:
        cfg = ds.config
        assert ds.subjects == ["sub-01", "sub-02"]
        runs = plan_runs(cfg)
        assert len(ds.runs) == len(runs)
        assert len(ds.split_runs("test")) == cfg.test_segments * cfg.test_repeats
        vols = ds.volumes("sub-01", 0)
        assert vols.shape == (cfg.segment_trs, *cfg.brain.dims) and vols.dtype == np.int16
        f = ds.subject("sub-01")
        assert f["run_done"][()].all()
        assert f["motion"].shape == (len(runs), cfg.segment_trs, 6)
        assert set(np.unique(f["roi"][()])) == {0, 1, 2, 3, 4}
        movie = ds.movie(0)
        assert movie.frames.shape == (cfg.segment_trs * 16, 64, 64, 3)
        assert len(movie.caption(0).split()) > 3
        # The two repeats of a training segment share the stimulus, not the noise.
        r0, r1 = [r.index for r in ds.runs if r.segment == 0][:2]
        assert not np.array_equal(ds.volumes("sub-01", r0), ds.volumes("sub-01", r1))
        assert ds.geometry("sub-01").dims == (64, 64, 32)


def test_generation_is_deterministic_and_resumes(tiny_dataset, tmp_path):
    from scanner_sim.dataset import generate

    cfg = with_preset("tiny")
    cfg = type(cfg)(**{**cfg.__dict__, "subjects": 1, "test_repeats": 2})
    generate(cfg, tmp_path, progress=False)
    # Simulate an interruption: mark one run unfinished and zero it; generate again.
    with h5py.File(tmp_path / "sub-01.h5", "a") as f:
        expected = f["volumes"][3]
        f["volumes"][3] = 0
        f["run_done"][3] = False
    generate(cfg, tmp_path, progress=False)
    with h5py.File(tmp_path / "sub-01.h5", "r") as f:
        assert np.array_equal(f["volumes"][3], expected)
    # Identical to the same subject in the session's dataset (same seed, same world).
    with h5py.File(tiny_dataset / "sub-01.h5", "r") as f:
        assert np.array_equal(f["volumes"][0], Dataset(tmp_path).volumes("sub-01", 0))


def test_another_dataset_in_the_same_directory_is_refused(tmp_path):
    from scanner_sim.dataset import generate

    (tmp_path / "dataset.json").write_text(json.dumps({"fingerprint": "someone-else"}))
    with pytest.raises(FileExistsError):
        generate(with_preset("tiny"), tmp_path, progress=False)


def test_incomplete_dataset_is_refused_with_advice(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"format": 1, "complete": False}))
    with pytest.raises(ValueError, match="resume"):
        Dataset(tmp_path)
