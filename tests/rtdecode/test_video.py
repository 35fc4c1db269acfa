"""Video files and clip layouts (rtdecode.video)."""

import numpy as np
import pytest

from rtdecode import video
from rtdecode.video import read_video, side_by_side, upscale, write_video


def _smooth_clip(n: int, h: int, w: int) -> np.ndarray:
    """Moving colour gradients: compressible, so a lossy codec keeps them close."""
    y, x = np.mgrid[:h, :w]
    frames = [
        np.stack([(x * 4 + 6 * i) % 256, (y * 3 + 2 * i) % 256, np.full_like(x, 40 + 10 * i)], -1)
        for i in range(n)
    ]
    return np.stack(frames).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_write_read_round_trip(tmp_path, suffix):
    clip = _smooth_clip(10, 64, 96)
    path = tmp_path / f"clip{suffix}"
    assert write_video(path, iter(clip), fps=8) == 10
    back = read_video(path)
    assert back.shape == clip.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - clip).mean() < 8


def test_odd_sizes_are_padded_and_cropped_back(tmp_path):
    clip = _smooth_clip(4, 33, 47)
    path = tmp_path / "odd.mp4"
    assert write_video(path, clip, fps=8.0) == 4
    back = read_video(path)
    assert back.shape == clip.shape
    assert np.abs(back.astype(int) - clip).mean() < 8


def test_mpeg4_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "_codec", lambda: "mpeg4")
    clip = _smooth_clip(6, 32, 32)
    path = tmp_path / "fallback.mp4"
    write_video(path, clip, fps=8)
    back = read_video(path)
    assert back.shape == clip.shape and np.abs(back.astype(int) - clip).mean() < 8


def test_no_frames_writes_nothing(tmp_path):
    assert write_video(tmp_path / "empty.mp4", [], fps=8) == 0
    assert not (tmp_path / "empty.mp4").exists()


def test_bad_frames_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", [np.zeros((8, 8, 3), np.float32)], fps=8)
    frames = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)]
    with pytest.raises(ValueError, match="differs"):
        write_video(tmp_path / "y.mp4", frames, fps=8)


def test_side_by_side_shapes_and_content():
    a = np.full((5, 64, 64, 3), 10, np.uint8)
    b = np.full((5, 32, 48, 3), 200, np.uint8)  # half height: resized to 64×96
    out = side_by_side(a, b, gap=2)
    assert out.shape == (5, 64, 64 + 2 + 96, 3)
    assert (out[:, :, :64] == 10).all() and (out[:, :, 64:66] == 0).all()
    assert (out[:, :, 66:] == 200).all()
    labelled = side_by_side(a, b, a, gap=4, labels=["stim", "recon", "blur"])
    assert labelled.shape[0] == 5 and labelled.shape[2] == 64 + 4 + 96 + 4 + 64
    band = labelled.shape[1] - 64
    assert band > 0 and labelled[:, :band].max() > 0  # text was drawn
    assert side_by_side(a[0], b[0]).shape == (64, 162, 3)  # single frames
    with pytest.raises(ValueError, match="lengths"):
        side_by_side(a, b[:3])


def test_upscale_nearest():
    clip = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(1, 2, 2, 3)
    up = upscale(clip, 3)
    assert up.shape == (1, 6, 6, 3)
    assert (up[0, :3, :3] == clip[0, 0, 0]).all() and (up[0, 3:, 3:] == clip[0, 1, 1]).all()
    assert upscale(clip[0], 2).shape == (4, 4, 3)
