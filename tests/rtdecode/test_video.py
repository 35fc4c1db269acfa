"""Video files and clip layouts (rtdecode.video)."""

import threading

import numpy as np
import pytest

from rtdecode import video
from rtdecode.outputs import ClipResult
from rtdecode.outputs.video import SideBySideVideo
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


def test_frames_before_an_error_are_kept(tmp_path):
    # libx264 holds the first frames: without a flush on error no file was written at all.
    clip = _smooth_clip(5, 32, 32)

    def frames():
        yield from clip
        raise RuntimeError("source failed")

    path = tmp_path / "partial.mp4"
    with pytest.raises(RuntimeError, match="source failed"):
        write_video(path, frames(), fps=8)
    back = read_video(path)
    assert back.shape == clip.shape and np.abs(back.astype(int) - clip).mean() < 8


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


class _Engine:
    """The two things SideBySideVideo asks of the engine: the stimulus search's outcome and
    the stimulus frames of a TR (here: none for TR 0, as before the stimulus inlet opens)."""

    def __init__(self, stimulus: bool) -> None:
        self.stimulus_known = threading.Event()
        self.frames = object() if stimulus else None

    def stimulus_frames(self, tr: int, n: int) -> np.ndarray | None:
        if self.frames is None or tr == 0:
            return None
        return np.full((n, 8, 8, 3), 250, np.uint8)


def _clip_result(tr: int) -> ClipResult:
    return ClipResult(tr, tr + 2, np.full((4, 8, 8, 3), 20 * (tr + 1), np.uint8), None, {})


@pytest.mark.parametrize("stimulus", [True, False])
def test_side_by_side_video_keeps_one_layout(tmp_path, stimulus):
    engine = _Engine(stimulus)
    out = SideBySideVideo(tmp_path / "v.mp4", fps=8, scale=4)
    out.start(engine)
    for tr in range(3):  # rendered before the engine knows about the stimulus stream
        out.clip(_clip_result(tr))
    engine.stimulus_known.set()
    out.close()
    assert not out.failed and out.frames_written == 12
    back = read_video(tmp_path / "v.mp4")
    assert back.shape[0] == 12
    recon = back[:, -16:, -16:].mean(axis=(1, 2, 3))
    assert np.allclose(recon, np.repeat([20, 40, 60], 4), atol=6)
    if stimulus:  # side by side, TR 0's stimulus panel the grey placeholder
        assert back.shape[2] == 32 + 2 + 32
        left = back[:, -16:, 4:16].mean(axis=(1, 2, 3))
        assert np.allclose(left[:4], 96, atol=6) and np.allclose(left[4:], 250, atol=6)
    else:
        assert back.shape[1:3] == (32, 32)
