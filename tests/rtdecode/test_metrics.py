"""Evaluation metrics: equality with reference implementations and hand-computed cases."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.color import rgb2gray
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rtdecode.metrics import (
    COLUMNS,
    clip_pcc,
    clip_similarity,
    epe,
    epe_shuffle_test,
    evaluate_clips,
    format_table,
    hue_similarity,
    identification,
    n_way_accuracy,
    paired_bootstrap,
    psnr,
    shuffle_test,
    ssim_gray,
    ssim_rgb,
    write_table,
)

GRAY_KW = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)


def _pair(seed: int, shape=(6, 24, 30, 3), noise: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    b = np.clip(a + noise * rng.standard_normal(shape), 0, 1)
    return a, b


def _texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A smooth random RGB texture in [0, 1] (trackable by optical flow)."""
    t = ndimage.gaussian_filter(rng.random((size, size, 3)), sigma=(2, 2, 0), mode="wrap")
    t -= t.min()
    return t / t.max()


# ---------------------------------------------------------------- image metrics


@pytest.mark.parametrize("dtype", ["float", "uint8"])
def test_ssim_gray_equals_skimage(dtype):
    a, b = _pair(0)
    if dtype == "uint8":
        a, b = (a * 255).astype(np.uint8), (b * 255).astype(np.uint8)
    ours = ssim_gray(a, b)
    ref = [structural_similarity(rgb2gray(x), rgb2gray(y), **GRAY_KW) for x, y in zip(a, b)]
    assert ours.shape == (6,)
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
    # the published code's column-wise variant (channel_axis=-1 on a 2-D gray image)
    ref_cols = [
        structural_similarity(rgb2gray(x), rgb2gray(y), channel_axis=-1, **GRAY_KW) for x, y in zip(a, b)
    ]
    np.testing.assert_allclose(ssim_gray(a, b, columnwise=True), ref_cols, atol=1e-6, rtol=0)


def test_ssim_rgb_equals_skimage():
    a, b = _pair(1)
    au, bu = (a * 255).astype(np.uint8), (b * 255).astype(np.uint8)
    ref = [structural_similarity(x, y, data_range=255, channel_axis=-1) for x, y in zip(au, bu)]
    np.testing.assert_allclose(ssim_rgb(au, bu), ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ssim_rgb(au / 255.0, bu / 255.0), ref, atol=1e-6, rtol=0)
    ref_f = [structural_similarity(x, y, data_range=1.0, channel_axis=-1) for x, y in zip(a, b)]
    np.testing.assert_allclose(ssim_rgb(a, b), ref_f, atol=1e-6, rtol=0)


def test_ssim_batch_shapes_and_identity():
    a, _ = _pair(2, shape=(2, 3, 16, 16, 3))
    assert ssim_gray(a, a).shape == (2, 3)
    np.testing.assert_allclose(ssim_gray(a, a), 1.0)
    np.testing.assert_allclose(ssim_rgb(a, a), 1.0)
    assert ssim_rgb(a[0, 0], a[0, 0]).shape == ()
    with pytest.raises(ValueError):
        ssim_gray(a[..., :8, :8, :], a[..., :8, :8, :])  # smaller than the 11-pixel window
    with pytest.raises(TypeError):
        ssim_rgb(a.astype(np.int32), a.astype(np.int32))


def test_psnr_reference_identity_and_cap():
    a, b = _pair(3)
    ref = [peak_signal_noise_ratio(x, y, data_range=1.0) for x, y in zip(a, b)]
    np.testing.assert_allclose(psnr(a, b), ref, rtol=1e-12)
    au = (a * 255).astype(np.uint8)
    assert np.all(np.isinf(psnr(au, au)))
    np.testing.assert_array_equal(psnr(au, au, max_db=100.0), 100.0)
    # uint8 and the same values as floats agree
    bu = (b * 255).astype(np.uint8)
    np.testing.assert_allclose(psnr(au, bu), psnr(au / 255.0, bu / 255.0))


def test_hue_similarity():
    a, b = _pair(4)
    np.testing.assert_allclose(hue_similarity(a, a), 1.0)
    s = hue_similarity(a, b)
    assert s.shape == (6,) and np.all((s > 0) & (s < 1))
    # independent random colours are less similar than a noisy copy
    c = np.random.default_rng(5).random(a.shape)
    assert hue_similarity(a, c).mean() < s.mean()
    # gray frames have zero hue: identical gray → 1, gray vs coloured → 0
    gray = np.full((1, 16, 16, 3), 0.5)
    assert hue_similarity(gray, gray)[0] == 1.0
    assert hue_similarity(gray, a[:1, :16, :16])[0] == 0.0
    # the published BGR-order variant differs but is also 1 on identical frames
    np.testing.assert_allclose(hue_similarity(a, a, swap_rb=True), 1.0)


# ---------------------------------------------------------------- n-way accuracy


def test_n_way_hand_computed_three_classes():
    true = np.array([[0.7, 0.2, 0.1]] * 3)  # ground-truth class 0
    pred = np.array(
        [
            [0.6, 0.3, 0.1],  # GT highest → beats either distractor → 1
            [0.1, 0.3, 0.6],  # GT lowest → 0
            [0.3, 0.6, 0.1],  # beats class 2, loses to class 1 → 1/2
        ]
    )
    res = n_way_accuracy(pred, true, 2, top=1, exact=True)
    np.testing.assert_allclose(res.per_sample, [1.0, 0.0, 0.5])
    assert res.mean == pytest.approx(0.5)
    mc = n_way_accuracy(pred, true, 2, trials=4000, top=1, rng=0)
    np.testing.assert_allclose(mc.per_sample, [1.0, 0.0, 0.5], atol=0.03)


def test_n_way_hand_computed_larger():
    true = np.array([[0.9, 0.05, 0.02, 0.02, 0.01]])
    pred = np.array([[0.3, 0.5, 0.1, 0.05, 0.05]])
    # 3-way: 2 distractors from {1, 2, 3, 4}; GT wins iff class 1 is not drawn: C(3,2)/C(4,2) = 1/2
    assert n_way_accuracy(pred, true, 3, top=1, exact=True).mean == pytest.approx(0.5)
    # top-2 of the reconstruction: at most one distractor may beat the GT → always
    assert n_way_accuracy(pred, true, 3, top=1, top_k=2, exact=True).mean == pytest.approx(1.0)
    # ties count against the ground truth (published ascending argsort)
    tie = np.array([[0.5, 0.5, 0.0, 0.0, 0.0]])
    assert n_way_accuracy(tie, true, 2, top=1, exact=True).mean == pytest.approx(0.75)


def test_n_way_top3_any_vs_mean():
    # GT's top-2 classes {0, 1}; distractors from {2, 3}
    true = np.array([[0.5, 0.3, 0.1, 0.1]])
    pred = np.array([[0.1, 0.4, 0.3, 0.2]])  # class 1 beats both distractors, class 0 neither
    assert n_way_accuracy(pred, true, 2, top=2, exact=True).mean == pytest.approx(1.0)  # "any" (published)
    assert n_way_accuracy(pred, true, 2, top=2, exact=True, combine="mean").mean == pytest.approx(0.5)


def _published_loop(pred_row, gt_ids, n_way, num_trials, top_k, rng):
    """MinD-Video's ``n_way_top_k_acc`` loop, transcribed to numpy (stable sort for ties)."""
    pick_range = [i for i in range(len(pred_row)) if i not in gt_ids]
    corrects = 0
    for _ in range(num_trials):
        idxs = rng.choice(pick_range, n_way - 1, replace=False)
        for g in gt_ids:
            picked = np.concatenate([[pred_row[g]], pred_row[idxs]])
            if 0 in np.argsort(picked, kind="stable")[-top_k:]:
                corrects += 1
                break
    return corrects / num_trials


def test_n_way_exact_equals_enumeration_and_monte_carlo():
    rng = np.random.default_rng(0)
    c = 12
    true, pred = rng.random((5, c)), rng.random((5, c))
    for n, top, top_k in [(2, 3, 1), (5, 3, 1), (4, 1, 2), (9, 3, 2)]:
        exact = n_way_accuracy(pred, true, n, top=top, top_k=top_k, exact=True).per_sample
        exact_mean = n_way_accuracy(pred, true, n, top=top, top_k=top_k, exact=True, combine="mean")
        for i in range(5):
            gt = list(np.argsort(-true[i])[:top])
            pool = [j for j in range(c) if j not in gt]
            wins = [
                [np.sum(pred[i, list(d)] >= pred[i, g]) < top_k for g in gt]
                for d in itertools.combinations(pool, n - 1)
            ]
            assert exact[i] == pytest.approx(np.mean(np.any(wins, axis=1)))
            assert exact_mean.per_sample[i] == pytest.approx(np.mean(wins))
        mc = n_way_accuracy(pred, true, n, trials=3000, top=top, top_k=top_k, rng=1).per_sample
        np.testing.assert_allclose(mc, exact, atol=0.04)
        loop = [
            _published_loop(
                pred[i], list(np.argsort(true[i])[-top:]), n, 3000, top_k, np.random.default_rng(2)
            )
            for i in range(5)
        ]
        np.testing.assert_allclose(loop, exact, atol=0.04)


def test_n_way_deterministic_and_validated():
    rng = np.random.default_rng(3)
    true, pred = rng.random((7, 60)), rng.random((7, 60))
    a = n_way_accuracy(pred, true, 50, trials=100, top=3, rng=5)
    b = n_way_accuracy(pred, true, 50, trials=100, top=3, rng=5)
    np.testing.assert_array_equal(a.per_sample, b.per_sample)
    assert a.per_sample.shape == (7,)
    with pytest.raises(ValueError, match="distractors"):
        n_way_accuracy(pred, true, 59, top=3)
    # perfect reconstructions: the GT's top class is the reconstruction's top class
    assert n_way_accuracy(true, true, 50, top=3, exact=True).mean == pytest.approx(1.0)


# ---------------------------------------------------------------- CLIP metrics


def test_clip_pcc():
    rng = np.random.default_rng(0)
    const = np.repeat(rng.standard_normal((4, 1, 64)), 8, axis=1)
    r = clip_pcc(const)
    assert r["adjacent"] == pytest.approx(1.0) and r["all_pairs"] == pytest.approx(1.0)
    r = clip_pcc(rng.standard_normal((50, 8, 512)))
    assert abs(r["adjacent"]) < 0.02 and abs(r["all_pairs"]) < 0.02
    # hand case: frames e0, e1, e0 → adjacent pairs (0, 0) → 0; all pairs: one of three pairs is 1 → 1/3
    e = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    r = clip_pcc(e)
    assert r["adjacent"] == pytest.approx(0.0) and r["all_pairs"] == pytest.approx(1 / 3)


def test_clip_similarity():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 16))
    np.testing.assert_allclose(clip_similarity(x, 2 * x), 1.0)
    np.testing.assert_allclose(clip_similarity(x, -x), -1.0)
    assert clip_similarity(x, x).shape == (3, 4)


# ---------------------------------------------------------------- motion


def _moving_clip(texture: np.ndarray, speed: int, frames: int = 5) -> np.ndarray:
    return np.stack([np.roll(texture, speed * t, axis=1) for t in range(frames)])[None]


def test_epe_zero_for_identical_and_grows_with_shift():
    tex = _texture(np.random.default_rng(0))
    static = _moving_clip(tex, 0)
    assert epe(static, static)[0] == 0.0
    moving = _moving_clip(tex, 1)
    assert epe(moving, moving)[0] == 0.0
    errs = [epe(_moving_clip(tex, s), static)[0] for s in (1, 2, 4)]
    assert errs[0] > 0.3 and errs[0] < errs[1] < errs[2], errs
    # uint8 input gives the same result as its float version
    u8 = (moving * 255).round().astype(np.uint8)
    assert epe(u8, static)[0] == pytest.approx(epe(u8 / 255.0, static)[0])


def test_shuffle_test_power_and_null():
    rng = np.random.default_rng(0)
    true = rng.standard_normal((200, 6))
    stat, null, p = shuffle_test(true + 0.7 * rng.standard_normal(true.shape), true, n_perm=1000, rng=1)
    assert p < 0.01 and stat > 0.5 and abs(null) < 0.05
    res = shuffle_test(rng.standard_normal(true.shape), true, n_perm=1000, rng=1)
    assert res.p_value > 0.05 and abs(res.statistic) < 0.1
    # deterministic given the seed
    assert shuffle_test(true, true, n_perm=50, rng=3) == shuffle_test(true, true, n_perm=50, rng=3)
    # frame-order shuffle (Mind-Animator style) on (N, T, D) motion with a temporal structure
    t = np.cumsum(rng.standard_normal((40, 8, 2)), axis=1)
    stat, null, p = shuffle_test(t + 0.3 * rng.standard_normal(t.shape), t, n_perm=200, rng=2, over="time")
    assert p < 0.05 and stat > null


def test_epe_shuffle_test():
    rng = np.random.default_rng(0)
    true = np.concatenate([_moving_clip(_texture(rng, 32), 1, frames=6) for _ in range(3)])
    stat, null, p = epe_shuffle_test(true, true, n_perm=19, rng=0)
    assert stat == 0.0 and null > 0 and p == pytest.approx(1 / 20)


# ---------------------------------------------------------------- table


def _tiny_models(n_classes: int = 60):
    proj = np.random.default_rng(7).standard_normal((12 * 12 * 3, n_classes))

    def classifier_frame(frames):
        assert frames.dtype == np.float32 and frames.ndim == 4
        z = frames.reshape(len(frames), -1) @ proj
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def classifier_video(clips):
        assert clips.ndim == 5
        return classifier_frame(clips.reshape(-1, *clips.shape[2:])).reshape(*clips.shape[:2], -1).mean(1)

    def embed(frames):
        return frames.reshape(len(frames), -1)[:, :32] - 0.5

    return classifier_frame, classifier_video, embed


def test_evaluate_clips_every_column():
    rng = np.random.default_rng(0)
    true = (rng.random((5, 4, 12, 12, 3)) * 255).astype(np.uint8)
    pred = np.clip(true / 255.0 + 0.2 * rng.standard_normal(true.shape), 0, 1)
    models = _tiny_models()
    out = evaluate_clips(pred, true, *models, rng=0, batch_size=7)
    assert list(out) == [c for c in COLUMNS if c != "ident_50way"]  # 5 clips: no 50-way identification
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert out == evaluate_clips(pred, true, *models, rng=0, batch_size=7)  # deterministic
    perfect = evaluate_clips(true, true, *models, rng=0, batch_size=None)
    assert perfect["video_50way"] == 1.0 and perfect["frame_2way"] == 1.0
    assert perfect["ssim_gray"] == pytest.approx(1.0) and perfect["psnr"] == 100.0
    assert perfect["epe"] == 0.0 and perfect["hue"] == pytest.approx(1.0)
    assert perfect["clip_sim"] == pytest.approx(1.0) and perfect["ident_2way"] == 1.0
    assert perfect["ssim_rgb"] > out["ssim_rgb"]
    clips: dict = {}
    assert evaluate_clips(pred, true, *models, rng=0, batch_size=7, per_clip=clips) == out
    assert set(clips) == set(out) - {"clip_pcc_adjacent", "clip_pcc_all_pairs"}
    for key, values in clips.items():  # one score per clip, averaging to the column
        assert values.shape == (5,) and values.mean() == pytest.approx(out[key])
    # without models only the pixel and motion columns remain
    assert set(evaluate_clips(pred, true, None, None, None)) == {
        "ssim_gray",
        "ssim_rgb",
        "psnr",
        "hue",
        "epe",
    }


def test_identification_hand_computed_and_chance_for_a_constant():
    true = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pred = np.array([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0]])
    # cosines with truths 0, 1, 2 — row 0: 0.995, 0.0995, 0.774 (own first: wins both);
    # row 1: 1, 0, 0.707 (own 0: loses both); row 2: 0, 1, 0.707 (own 0.707: wins one, loses one).
    np.testing.assert_allclose(identification(pred, true, 2), [1.0, 0.0, 0.5])
    assert identification(pred, true, 3, trials=5).tolist() == [1.0, 0.0, 0.0]
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((60, 4, 8))  # (clips, frames, dim)
    assert identification(truth, truth, 2).min() == 1.0
    constant = np.broadcast_to(rng.standard_normal((1, 4, 8)), truth.shape)
    assert identification(constant, truth, 2).mean() == pytest.approx(0.5)  # whatever the picture
    assert identification(constant, truth, 50, trials=200, rng=1).mean() < 0.1
    with pytest.raises(ValueError, match="2 <= n"):
        identification(truth, truth, 61)


def test_format_table_bolds_best(tmp_path):
    rows = {
        "ridge": {"video_2way": 0.61, "ssim_gray": 0.2, "epe": 2.5},
        "rtdecode": {"video_2way": 0.83, "ssim_gray": 0.3, "epe": 1.25},
        "oracle": {"video_2way": float("nan"), "ssim_gray": 0.3, "epe": 3.0},
    }
    md = format_table(rows)
    lines = md.strip().splitlines()
    assert lines[0] == "| Method | Video 2-way ↑ | SSIM ↑ | EPE ↓ |"
    assert lines[2] == "| ridge | 0.610 | 0.200 | 2.500 |"
    assert lines[3] == "| rtdecode | **0.830** | **0.300** | **1.250** |"
    assert lines[4] == "| oracle | – | **0.300** | 3.000 |"  # displayed ties are all bold
    md_path, json_path = write_table(
        tmp_path / "t" / "table.md", rows, {"command": "rtdecode eval", "seed": 0}
    )
    assert md_path.read_text().startswith(md) and "- command: rtdecode eval" in md_path.read_text()
    doc = json.loads(json_path.read_text())
    assert json_path.name == "table.json" and doc["meta"]["seed"] == 0
    assert doc["rows"]["oracle"]["video_2way"] is None and doc["rows"]["ridge"]["epe"] == 2.5
    assert [c["key"] for c in doc["columns"]] == ["video_2way", "ssim_gray", "epe"]


def test_paired_bootstrap_finds_real_differences_only():
    rng = np.random.default_rng(1)
    b = rng.random(400)
    better = paired_bootstrap(b + 0.05 + 0.05 * rng.standard_normal(400), b)
    assert better["lo"] > 0 and better["p"] < 0.01 and better["diff"] == pytest.approx(0.05, abs=0.01)
    same = paired_bootstrap(b + 0.05 * rng.standard_normal(400), b)
    assert same["lo"] < 0 < same["hi"] and same["p"] > 0.05
    # Errors shared within blocks of 20 clips: resampling blocks widens the interval.
    shared = np.repeat(0.05 * rng.standard_normal(20), 20)
    clip_wise = paired_bootstrap(b + shared, b)
    block_wise = paired_bootstrap(b + shared, b, groups=np.arange(400) // 20)
    assert block_wise["groups"] == 20 and clip_wise["groups"] == 400
    assert block_wise["hi"] - block_wise["lo"] > 2 * (clip_wise["hi"] - clip_wise["lo"])
    assert paired_bootstrap(b, b, rng=3) == paired_bootstrap(b, b, rng=3)
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap(b, b[:-1])
