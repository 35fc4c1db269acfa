"""A video file of the stimulus beside its reconstruction (the demo's output)."""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

from rtdecode.outputs import ClipResult, Output
from rtdecode.video import side_by_side, upscale, write_video

__all__ = ["SideBySideVideo"]

log = logging.getLogger("rtdecode.outputs.video")


class SideBySideVideo(Output):
    """Write ``stimulus | reconstruction`` for every rendered TR to a video file.

    The stimulus frames come from the engine's stimulus stream (the frames displayed during
    the reconstructed TR); without one, only the reconstruction is written. Encoding runs in
    a thread of its own.

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
        self.thread = threading.Thread(target=self._encode, name="video-writer", daemon=True)

    def start(self, engine) -> None:
        self.engine = engine
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.thread.start()

    def _encode(self) -> None:
        def frames():
            while (item := self.q.get()) is not None:
                yield from item

        self.frames_written = write_video(self.path, frames(), self.fps)

    def clip(self, result: ClipResult) -> None:
        clip = result.clip
        stim = self.engine.stimulus_frames(result.tr, len(clip))
        if stim is not None:
            frames = side_by_side(
                upscale(stim, self.scale),
                upscale(clip, self.scale),
                labels=["stimulus", f"reconstruction (TR {result.tr})"],
            )
        else:
            frames = upscale(clip, self.scale)
        try:
            self.q.put_nowait(list(frames))
        except queue.Full:
            log.warning("video writer is behind; TR %d not written to %s", result.tr, self.path)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(60)
