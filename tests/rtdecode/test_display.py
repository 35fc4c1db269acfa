"""The live window, driven directly offscreen and read back from its pixels; its process dying."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import psutil
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # CI has no display; set before Qt loads

from rtdecode.display_app import DisplayWindow, app
from rtdecode.record import open_record
from tests.conftest import spawn


def _solid(rgb, n=16, size=64) -> np.ndarray:
    clip = np.zeros((n, size, size, 3), np.uint8)
    clip[...] = rgb
    return clip


def _mean(img, box, inset=0.2) -> np.ndarray:
    """Mean colour of the central part of a pixel box (the border may be antialiased)."""
    x0, y0, x1, y1 = box
    dx, dy = int((x1 - x0) * inset), int((y1 - y0) * inset)
    return img[y0 + dy : y1 - dy, x0 + dx : x1 - dx].reshape(-1, 3).mean(0)


def _crop(img, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1].astype(int)


@pytest.fixture
def window():
    app()
    w = DisplayWindow(fd_threshold=0.5)
    w.show()
    w.set_meta(
        {"session": "test", "fps": 8.0, "frames_per_tr": 16, "interval_s": 2.0, "vocabulary": ["a", "b"]}
    )
    yield w
    w.close()


def test_shown_frame_is_the_current_reconstruction(window):
    window.update_clip(5, _solid((255, 0, 0)), stimulus=_solid((0, 255, 0), n=16))
    img = window.grab_rgb()
    assert np.allclose(_mean(img, window.region("reconstruction")), (255, 0, 0), atol=2)
    assert np.allclose(_mean(img, window.region("stimulus")), (0, 255, 0), atol=2)
    # the next clip plays once the current one has: advance through its frames (the timer's job)
    window.update_clip(6, _solid((30, 60, 250)))
    for _ in range(16):
        window.advance()
    img = window.grab_rgb()
    assert np.allclose(_mean(img, window.region("reconstruction")), (30, 60, 250), atol=2)
    assert window.clip_tr == 6 and window.shown_tr == 6


def test_motion_trace_moves(window):
    def status(tr, shift):
        return {"tr": tr, "motion": [shift, 0.0, 0.0, 0.0, 0.0, 0.0], "fd": shift, "counts": {"ok": tr + 1}}

    for tr in range(20):
        window.update_status(status(tr, 0.0))
    before = window.grab_rgb()
    for tr in range(20, 30):
        window.update_status(status(tr, 0.1 * (tr - 19)))  # the head drifts 1 mm in x
    after = window.grab_rgb()
    for name in ("translation", "fd"):
        box = window.region(name)
        changed = np.abs(_crop(after, box) - _crop(before, box)).max(axis=2) > 40
        assert changed.mean() > 0.002, name  # the curve was redrawn elsewhere: the trace moved
    rot = window.region("rotation")
    assert _crop(after, rot).shape == _crop(before, rot).shape
    assert window.tr == 29 and window.high_fd == 5  # FD above 0.5 mm at TRs 25..29


def test_concept_bars_and_missing_concepts(window):
    box = window.region("concepts")
    window.update_conditions(3, None, "")
    empty = window.grab_rgb()
    assert window.caption.text().endswith("—")
    window.update_conditions(4, np.array([0.2, 0.9], np.float32), "a dog runs")
    bars = window.grab_rgb()
    blue = np.array([0x4D, 0xAB, 0xF7])
    share = lambda img: (np.abs(_crop(img, box) - blue).max(axis=2) < 30).mean()  # noqa: E731
    assert share(empty) < 0.001 and share(bars) > 0.05
    assert "a dog runs" in window.caption.text()


def _window_process(engine_pid: int, timeout: float = 30.0) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(engine_pid).children(recursive=True):
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.1)
    raise AssertionError("the display process did not start")


@pytest.mark.timeout(180)  # includes building tiny_bundle when first
def test_run_display_survives_its_window_being_killed(tiny_bundle, source_id, tmp_path, monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    sessions = tmp_path / "sessions"
    sim = spawn("scanner_sim.cli", "stream", "--n-tr", "30", "--speed", "10", "--source-id", source_id)
    engine = spawn(
        "rtdecode.cli",
        "run",
        "--display",
        "--bundle",
        str(tiny_bundle),
        "--sessions",
        str(sessions),
        "--ingest.source-id",
        source_id,
        "--ingest.max-trs",
        "30",
    )
    try:
        win = _window_process(engine.pid)
        time.sleep(1.5)  # let it show a few TRs
        os.kill(win.pid, signal.SIGKILL)
        out, err = engine.communicate(timeout=45)
    finally:
        engine.kill()
        sim.kill()
    assert engine.returncode == 0, err[-3000:]
    assert "display window closed" in err
    (path,) = sessions.iterdir()
    rec = open_record(path)
    assert rec.status == "closed" and len(rec.volumes) == 30
    assert "received_to_clip" in out


def test_mqtt_feed_drives_the_same_window(window):
    """What `rtdecode display --mqtt` does with decoded messages, without a broker."""
    import queue

    from rtdecode.display_app import _MqttFeed, _pump
    from rtdecode.outputs.mqtt import encode_frames

    q: queue.Queue = queue.Queue(64)
    feed = _MqttFeed(q, "+")
    stream = {"name": "sim", "interval_s": 0.2}
    feed("old", "status", {"schema": 1, "state": "stopped", "tr": 99})  # a retained, finished session
    feed("s1", "status", {"schema": 1, "state": "running", "tr": -1, "engine": {"stream": stream}})
    feed("s1", "status", {"schema": 1, "state": "running", "tr": 0, "motion": [0.0] * 6, "fd": 0.0})
    feed("s1", "clip", {"schema": 1, "tr": 4, "fps": 8.0, **encode_frames(_solid((250, 120, 0)), "png")})
    feed("s1", "conditions", {"schema": 1, "tr": 4, "caption": "a ball"})
    feed("s1", "feedback", {"schema": 1, "tr": 4, "score": 0.5})
    feed("other", "clip", {"schema": 1, "tr": 7, "fps": 8.0, **encode_frames(_solid((0, 0, 0)), "png")})
    feed("s1", "clip", {"schema": 1, "tr": 5, "encoding": "png", "shape": [1, 2, 2, 3], "frames": [b"junk"]})
    _pump(window, q, lambda: None)
    assert window.session == "s1" and window.clip_tr == 4 and window.feedback == 0.5
    assert "a ball" in window.caption.text()
    img = window.grab_rgb()
    assert np.allclose(_mean(img, window.region("reconstruction")), (250, 120, 0), atol=2)
