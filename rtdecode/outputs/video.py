"""A video file of the stimulus beside its reconstruction (the demo's output)."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from pathlib import Path

import numpy as np

from rtdecode.outputs import ClipResult, Output
from rtdecode.video import side_by_side, upscale, write_video

__all__ = ["SideBySideVideo"]

log = logging.getLogger("rtdecode.outputs.video")


class SideBySideVideo(Output):
    """Write ``stimulus | reconstruction`` for every rendered TR to a video file.

    The stimulus frames come from the engine's stimulus stream (the frames displayed during
    the reconstructed TR). A video file has one frame size, so the layout is fixed once the
    engine knows whether there is a stimulus stream: with one, every TR is written side by
    side (a grey "not received" panel where its frames are missing, e.g. before the stimulus
    inlet opened); without one, only the reconstruction. Composing and encoding run in a
    thread of their own.

    Parameters
    ----------
    path
        Output file (``.mp4``).
    fps
        Frame rate of the clips.
    scale
        Nearest-neighbour upscaling for viewing (64 px frames are small).
    """

    name = "video"

    def __init__(self, path: Path, fps: float = 8.0, scale: int = 4) -> None:
        self.path = Path(path)
        self.fps = fps
        self.scale = scale
        self.q: queue.Queue = queue.Queue(maxsize=64)
        self.frames_written = 0
        self.failed = False
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._encode, name="video-writer", daemon=True)

    def start(self, engine) -> None:
        self.engine = engine
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.thread.start()

    def _with_stimulus(self) -> bool:
        """Wait until the engine knows whether a stimulus stream exists (or we are closing)."""
        while not self.engine.stimulus_known.wait(0.2) and not self.closing.is_set():
            pass
        return self.engine.frames is not None

    def _compose(self, tr: int, clip: np.ndarray, stim: np.ndarray | None, with_stimulus: bool) -> np.ndarray:
        recon = upscale(clip, self.scale)
        if not with_stimulus:
            return recon
        label = "stimulus"
        if stim is None:
            stim, label = np.full_like(clip, 96), "stimulus: not received"
        return side_by_side(upscale(stim, self.scale), recon, labels=[label, f"reconstruction (TR {tr})"])

    def _encode(self) -> None:
        with_stimulus = self._with_stimulus()

        def frames():
            while (item := self.q.get()) is not None:
                yield from self._compose(*item, with_stimulus)

        try:
            self.frames_written = write_video(self.path, frames(), self.fps)
        except Exception:
            self.failed = True
            log.exception("video writer failed; %s keeps the frames written before the error", self.path)

    def clip(self, result: ClipResult) -> None:
        if self.failed:
            return
        stim = self.engine.stimulus_frames(result.tr, len(result.clip))
        try:
            # A copy: the clip must not change under the writer if a later stage reuses its buffer.
            self.q.put_nowait((result.tr, np.array(result.clip), stim))
        except queue.Full:
            log.warning("video writer is behind; TR %d not written to %s", result.tr, self.path)

    def close(self) -> None:
        self.closing.set()
        # The writer may have died with a full queue: never block shutdown on it.
        with contextlib.suppress(queue.Full):
            self.q.put(None, timeout=60)
        self.thread.join(60)
