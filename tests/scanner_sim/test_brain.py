import numpy as np
import pytest

from scanner_sim import stimuli
from scanner_sim.brain import ROI, make_subject, stimulus_features


@pytest.fixture(scope="module")
def subjects():
    return [make_subject(i, seed=0) for i in range(3)]


def test_subjects_are_deterministic(subjects):
    again = make_subject(0, seed=0)
    assert np.array_equal(again.baseline, subjects[0].baseline)
    assert np.array_equal(again.visual_index, subjects[0].visual_index)
    assert np.allclose(again.prf, subjects[0].prf)


def test_subjects_have_different_maps(subjects):
    a, b, c = subjects
    for other in (b, c):
        assert not np.array_equal(a.roi, other.roi)
        assert np.mean(a.brain_mask != other.brain_mask) > 0.005


def test_rois_are_labelled_and_sized(subjects):
    s = subjects[0]
    counts = {name: int((s.roi == i).sum()) for name, i in ROI.items()}
    assert counts["early_visual"] == 3000 and counts["motion"] == 600 and counts["category"] == 2400
    assert counts["nonvisual"] > 20000
    # Visual voxels lie in grey matter at the back of the brain, inside the mask.
    assert s.brain_mask.ravel()[s.visual_index].all()
    y = np.unravel_index(s.visual_index[s.visual_roi == ROI["early_visual"]], s.geometry.dims)[1]
    assert y.mean() < s.geometry.dims[1] * 0.35


def test_retinotopy_is_contralateral(subjects):
    s = subjects[0]
    early = s.visual_index[s.visual_roi == ROI["early_visual"]]
    x = np.unravel_index(early, s.geometry.dims)[0]
    left_hemi = x < s.geometry.centre[0]
    prf_x = s.prf[:, 0]
    assert np.mean(prf_x[left_hemi] > 0) > 0.9
    assert np.mean(prf_x[~left_hemi] < 0) > 0.9


def test_prf_voxels_respond_to_their_part_of_the_screen(subjects):
    """A flickering patch on the right drives right-field pRFs more than left-field ones."""
    s = subjects[0]
    movie = stimuli.generate_movie(64, seed=3)
    movie.frames[:] = 128
    movie.frames[::2, 16:48, 40:60] = 255  # flicker on the right half
    movie.frames[1::2, 16:48, 40:60] = 0
    resp = s.neural_response(stimulus_features(movie))[:, : len(s.prf)]
    right = (s.prf[:, 0] > 0.3) & (np.abs(s.prf[:, 1]) < 0.3)
    left = (s.prf[:, 0] < -0.3) & (np.abs(s.prf[:, 1]) < 0.3)
    assert resp[:, right].mean() > resp[:, left].mean() + 0.5


def test_bold_scale_is_percent_level(subjects):
    s = subjects[0]
    movie = stimuli.generate_movie(30 * 16, seed=4)
    bold = s.bold(stimulus_features(movie), 8.0, 2.0)
    assert bold.shape == (30, s.n_visual)
    sd = bold[5:].std(axis=0)
    assert 0.003 < np.median(sd) < 0.03
