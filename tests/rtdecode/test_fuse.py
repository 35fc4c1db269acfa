import numpy as np

from rtdecode.conditions import Conditions
from rtdecode.fuse import Fuser, FusionConfig, calibrate_threshold, render_fused, roc_curve


def test_roc_and_threshold():
    rng = np.random.default_rng(0)
    same = rng.random(500) < 0.8
    sim = np.where(same, rng.normal(0.9, 0.05, 500), rng.normal(0.5, 0.1, 500))
    _, _, _, auc = roc_curve(sim, same)
    assert auc > 0.95
    thr, info = calibrate_threshold(sim, same)
    assert 0.6 < thr < 0.85 and info["tpr"] > 0.9 and info["fpr"] < 0.1
    assert roc_curve(rng.random(1000), rng.random(1000) < 0.5)[3] < 0.6


def test_same_scene_blends_and_cuts_stay_cuts():
    f = Fuser(FusionConfig(threshold=0.8, blend_frames=4))
    e = np.array([1.0, 0.0])
    a = np.full((8, 2, 2, 3), 100, np.uint8)
    out = f.push(0, a, e)
    assert np.array_equal(out, a)  # the first clip has nothing to continue
    b = np.full((8, 2, 2, 3), 200, np.uint8)
    out = f.push(1, b, np.array([0.99, 0.1]))
    assert f.decisions[-1][1] and 100 < out[0].mean() < out[3].mean() < 200 and out[4].mean() == 200
    c = np.full((8, 2, 2, 3), 0, np.uint8)
    out = f.push(2, c, np.array([0.0, 1.0]))  # orthogonal: a cut
    assert not f.decisions[-1][1] and np.array_equal(out, c)
    out = f.push(4, c, np.array([0.0, 1.0]))  # TR 3 missing: no continuation across a gap
    assert not f.decisions[-1][1]


class _ContinuingRenderer:
    """Records what each render was seeded with; its clip's value is the TR."""

    def __init__(self):
        self.seeds, self.tail = [], None

    def continue_from(self, tail):
        self.tail = tail

    def render(self, cond):
        self.seeds.append(None if self.tail is None else float(self.tail.mean()))
        self.last_latents = np.full((8, 4, 2, 2), float(cond.tr))
        return np.full((8, 2, 2, 3), 10 * cond.tr, np.uint8)


def test_render_fused_continues_a_scene_and_restarts_at_a_cut():
    r, f = _ContinuingRenderer(), Fuser(FusionConfig(threshold=0.8))
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    decisions = [
        render_fused(r, f, Conditions(tr, tr + 3, semantic=e))[1] for tr, e in enumerate([e1, e1, e2])
    ]
    assert decisions == [False, True, False]
    assert r.seeds == [None, 0.0, None]  # TR 1 starts from TR 0's last latent; TR 2 is a cut
