"""Tests of the procedural stimulus world (scanner_sim.stimuli)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from scanner_sim.stimuli import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    TEXTURES,
    VOCABULARY,
    Movie,
    StimulusConfig,
    caption_vocabulary,
    generate_movie,
    object_colours,
)

LONG = 6000


@pytest.fixture(scope="module")
def movie() -> Movie:
    return generate_movie(LONG, seed=7)


def _run_lengths(ids: np.ndarray) -> np.ndarray:
    """Lengths of runs of equal values."""
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return np.diff(np.r_[starts, len(ids)])


def test_vocabulary() -> None:
    assert len(SHAPES) == 16 and len(set(SHAPES)) == 16
    assert len(TEXTURES) == 4
    assert len(VOCABULARY) == len(set(VOCABULARY)) == 64
    assert VOCABULARY[0] == f"{TEXTURES[0]} {SHAPES[0]}"
    names = [name for name, _ in COLOURS]
    assert len(names) >= 10 and len(set(names)) == len(names)
    words = caption_vocabulary()
    assert len(words) == len(set(words))
    assert all(" " not in w for w in words)


def test_shapes_and_dtypes() -> None:
    cfg = StimulusConfig(size=(48, 80), fps=4.0)
    m = generate_movie(50, seed=1, config=cfg, scene_offset=10)
    assert len(m) == 50
    assert m.frames.shape == (50, 48, 80, 3) and m.frames.dtype == np.uint8
    assert m.mask.shape == (50, 48, 80) and m.mask.dtype == bool
    assert m.concepts.shape == (50, 64) and m.concepts.dtype == bool
    assert m.motion.shape == (50, 6) and m.motion.dtype == np.float32
    for name, dtype in (
        ("key_concept", np.int16),
        ("colour", np.int16),
        ("background", np.int16),
        ("scene", np.int32),
        ("caption_id", np.int32),
    ):
        assert getattr(m, name).dtype == dtype, name
    assert m.scene[0] == 10 and np.all(np.diff(m.scene) >= 0)
    lengths = _run_lengths(m.scene)
    assert np.all((lengths[:-1] >= 8) & (lengths[:-1] <= 24))  # 2–6 s at 4 fps
    assert generate_movie(0, seed=1).frames.shape == (0, 64, 64, 3)


def test_determinism() -> None:
    a, b = generate_movie(100, seed=3), generate_movie(100, seed=3)
    for name in (
        "frames",
        "concepts",
        "mask",
        "key_concept",
        "colour",
        "background",
        "motion",
        "scene",
        "caption_id",
    ):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.captions == b.captions
    assert not np.array_equal(a.frames, generate_movie(100, seed=4).frames)
    prefix = generate_movie(40, seed=3)  # a shorter movie is a prefix of a longer one
    assert np.array_equal(prefix.frames, a.frames[:40])
    assert [prefix.caption(t) for t in range(40)] == [a.caption(t) for t in range(40)]


def test_all_concepts_appear(movie: Movie) -> None:
    assert movie.concepts.any(axis=0).all()
    assert len(np.unique(movie.key_concept)) == 64
    assert movie.concepts[np.arange(LONG), movie.key_concept].all()
    n_visible = movie.concepts.sum(axis=1)
    assert n_visible.min() >= 1 and n_visible.max() <= 2
    assert 0.1 < np.mean(n_visible == 2) < 0.5  # distractors in ~35 % of scenes


def test_scene_cuts(movie: Movie) -> None:
    assert np.all(np.diff(movie.scene) >= 0) and np.all(np.diff(movie.scene) <= 1)
    assert movie.scene[0] == 0
    lengths = _run_lengths(movie.scene)
    assert np.all((lengths[:-1] >= 16) & (lengths[:-1] <= 48))
    assert lengths[:-1].std() > 5  # durations vary
    # object identity and background are constant within a scene
    for labels in (movie.key_concept, movie.colour, movie.background):
        assert np.all(np.diff(labels)[np.diff(movie.scene) == 0] == 0)


def test_backgrounds(movie: Movie) -> None:
    photos = [i for i, b in enumerate(BACKGROUNDS) if b.startswith("photo:")]
    assert photos, "no photographic backgrounds in the installed scikit-image"
    is_photo = np.isin(movie.background, photos)
    assert 0.2 < is_photo.mean() < 0.6
    assert len(np.unique(movie.background)) >= 10


def test_mask_area(movie: Movie) -> None:
    area = movie.mask.sum(axis=(1, 2))
    h, w = movie.mask.shape[1:]
    assert area.min() >= 10
    assert area.max() <= 0.5 * h * w


def _segment_distance(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance from point x to the segment a–b."""
    lam = np.clip(np.dot(x - a, b - a) / max(float(np.dot(b - a, b - a)), 1e-9), 0, 1)
    return float(np.linalg.norm(x - (a + lam * (b - a))))


def test_mask_colour(movie: Movie) -> None:
    """Inside the mask the pixels have the key object's colour and differ from outside."""
    frames = np.flatnonzero(movie.concepts.sum(axis=1) == 1)[::5]
    assert len(frames) > 500
    segments = [object_colours(c) for c in range(len(COLOURS))]
    hits, contrast = [], []
    for t in frames:
        img, mask = movie.frames[t].astype(np.float32), movie.mask[t]
        inside, outside = img[mask].mean(axis=0), img[~mask].mean(axis=0)
        dist = [_segment_distance(inside, pat, base) for base, pat in segments]
        hits.append(int(np.argmin(dist)) == movie.colour[t] and min(dist) < 40)
        contrast.append(np.linalg.norm(inside - outside))
    assert np.mean(hits) > 0.95
    assert np.mean(np.asarray(contrast) > 30) > 0.95


def test_mask_follows_motion(movie: Movie) -> None:
    """In translation scenes the mask centroid moves by motion[:, 0:2]."""
    m = movie.motion
    speed = np.hypot(m[:, 0], m[:, 1])
    translating = (m[:, 2] == 0) & (m[:, 3] == 0) & np.all(m[:, 4:] == 0, axis=1) & (speed > 0.55)
    same_scene = np.r_[movie.scene[1:] == movie.scene[:-1], False]
    frames = np.flatnonzero(translating & same_scene)
    assert len(frames) > 300
    yy, xx = np.mgrid[: movie.mask.shape[1], : movie.mask.shape[2]]

    def centroid(t: int) -> np.ndarray:
        mask = movie.mask[t]
        return np.array([xx[mask].mean(), yy[mask].mean()])

    err = np.array([centroid(t + 1) - centroid(t) - m[t, :2] for t in frames])
    assert np.median(np.abs(err)) < 0.2
    assert np.percentile(np.abs(err), 95) < 0.6
    # static scenes: nothing moves
    still = np.all(m == 0, axis=1) & same_scene
    assert still.any()
    t = np.flatnonzero(still)[0]
    assert np.array_equal(movie.mask[t], movie.mask[t + 1])


def test_motion_kinds(movie: Movie) -> None:
    m = movie.motion
    assert np.mean(m[:, 2] != 0) > 0.1  # rotation
    assert np.mean(m[:, 3] != 0) > 0.1  # zoom
    assert np.mean(np.any(m[:, 4:] != 0, axis=1)) > 0.1  # camera pan
    assert np.abs(m[:, 2]).max() <= 10.001 and np.abs(m[:, 3]).max() < 0.06


def test_captions(movie: Movie) -> None:
    vocab = set(caption_vocabulary())
    assert max(movie.caption_id) < len(movie.captions)
    for t in range(0, LONG, 3):
        text = movie.caption(t)
        assert set(text.split()) <= vocab, text
        name = f"{COLOURS[movie.colour[t]][0]} {VOCABULARY[movie.key_concept[t]]}"
        assert name in text, (name, text)
        assert ("pans" in text) == bool(np.any(movie.motion[t, 4:] != 0)), text
        assert ("spinning" in text) == bool(movie.motion[t, 2] != 0), text
        assert (" beside " in text) == bool(movie.concepts[t].sum() == 2), text
    moving = [t for t in range(LONG) if " moving right " in movie.caption(t)]
    assert moving and np.mean(movie.motion[moving, 0] > 0) > 0.95


def test_pan_moves_background(movie: Movie) -> None:
    """In pan scenes, shifting frame t by motion[t, 4:6] reproduces frame t + 1's background."""
    m = movie.motion
    same_scene = np.r_[movie.scene[1:] == movie.scene[:-1], False]
    frames = np.flatnonzero(np.any(m[:, 4:] != 0, axis=1) & same_scene & (movie.concepts.sum(axis=1) == 1))[
        ::4
    ]
    assert len(frames) > 50
    h, w = movie.mask.shape[1:]
    better = []
    for t in frames:
        a, b = movie.frames[t].astype(np.float32), movie.frames[t + 1].astype(np.float32)
        shift = np.float32([[1, 0, m[t, 4]], [0, 1, m[t, 5]]])
        moved = cv2.warpAffine(a, shift, (w, h), flags=cv2.INTER_LINEAR)
        keep = ~(movie.mask[t] | movie.mask[t + 1])
        keep = cv2.erode(keep.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        keep[:4], keep[-4:], keep[:, :4], keep[:, -4:] = False, False, False, False
        better.append(np.abs(moved - b)[keep].mean() < np.abs(a - b)[keep].mean())
    assert np.mean(better) > 0.95
