"""The live display output: the experimenter's window in a process of its own.

The window (:mod:`rtdecode.display_app`) runs in a separate process started with the
``spawn`` method, fed through a bounded multiprocessing queue with small messages (one clip
of 64 px frames, one status dict per TR). The hooks never block: when the window falls
behind, messages are dropped and counted; when the window is closed (or its process dies),
the output notices, logs it once and stops sending — the run goes on.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing as mp
import os
import queue
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rtdecode.outputs import ClipResult, Output
from rtdecode.outputs.feedback import FeedbackScore
from rtdecode.volume import Event

if TYPE_CHECKING:
    from rtdecode.pipeline import Engine
    from rtdecode.preprocess import Preprocessed

__all__ = ["DisplayConfig", "DisplayOutput"]

log = logging.getLogger("rtdecode.outputs.display")


@dataclass(frozen=True)
class DisplayConfig:
    """Settings of the live window (``rtdecode run --display``)."""

    enabled: bool = field(default=False, metadata={"help": "open the live window"})
    fd_threshold: float = field(default=0.5, metadata={"help": "framewise displacement threshold (mm)"})
    history: int = field(default=200, metadata={"help": "TRs shown in the traces"})
    top_concepts: int = field(default=8, metadata={"help": "concepts shown as bars"})
    queue: int = field(default=32, metadata={"help": "messages waiting for the window at most"})


def _window_main(source: Any, settings: dict[str, Any]) -> None:
    """Entry point of the window process (imports Qt only there, never in the engine)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from rtdecode.display_app import run_window

    run_window(source, settings)


class DisplayOutput(Output):
    """Send the session to the live window.

    Parameters
    ----------
    config
        Window settings.
    sink
        Where messages go instead of a new window process: anything with ``put_nowait``
        (a :class:`queue.Queue` read by a :class:`~rtdecode.display_app.DisplayWindow` in
        this process — tests, screenshots).
    score
        The feedback score shown in the header (see :mod:`rtdecode.outputs.feedback`).

    Notes
    -----
    The window process is started with ``spawn``, which re-imports the main module: a script
    that uses this output must keep its top-level code under ``if __name__ == "__main__":``.
    """

    name = "display"

    def __init__(
        self, config: DisplayConfig = DisplayConfig(), sink: Any = None, score: str = "similarity"
    ) -> None:
        if sink is None and not all(importlib.util.find_spec(m) for m in ("pyqtgraph", "PySide6")):
            raise RuntimeError(
                "the live display needs pyqtgraph and PySide6: pip install 'rtdecode[display]'"
            )
        self.cfg = config
        self.sink = sink
        self.score_spec = score
        self.process: mp.process.BaseProcess | None = None
        self.alive = True
        self.sent = 0
        self.dropped = 0

    def start(self, engine: Engine) -> None:
        self.engine = engine
        if self.sink is None:
            ctx = mp.get_context("spawn")  # never fork a process that runs threads and Qt
            self.sink = ctx.Queue(self.cfg.queue)
            settings = {
                "fd_threshold": self.cfg.fd_threshold,
                "history": self.cfg.history,
                "top_concepts": self.cfg.top_concepts,
                "exit_on_end": True,
                "parent_pid": os.getpid(),
            }
            self.process = ctx.Process(
                target=_window_main, args=(self.sink, settings), name="rtdecode-display", daemon=True
            )
            self.process.start()
        m = engine.bundle.manifest
        self.score = FeedbackScore(self.score_spec, m.get("vocabulary", []))
        info = engine.ingest.info
        self._send(
            {
                "kind": "meta",
                "session": engine.record.path.name if engine.record is not None else "",
                "stream": info.name() if info is not None else "",
                "fps": float(m.get("fps", 8.0)),
                "frames_per_tr": int(m.get("frames_per_tr", 16)),
                "interval_s": getattr(engine.ingest, "interval", None),
                "vocabulary": list(m.get("vocabulary", [])),
            }
        )

    def _window_gone(self) -> bool:
        if not self.alive:
            return True
        if self.process is not None and not self.process.is_alive():
            self.alive = False
            log.warning(
                "display window closed (exit code %s); the run continues without it", self.process.exitcode
            )
            self.sink.cancel_join_thread()  # never wait at exit for a reader that is gone
            return True
        return False

    def _send(self, msg: dict[str, Any]) -> None:
        if self._window_gone():
            return
        try:
            self.sink.put_nowait(msg)
            self.sent += 1
        except queue.Full:
            self.dropped += 1

    def preprocessed(self, tr: int, result: Preprocessed, status: dict[str, Any]) -> None:
        self._send({**status, "kind": "status", "display_dropped": self.dropped})

    def clip(self, result: ClipResult) -> None:
        cond = result.conditions
        frames = np.array(result.clip)  # the queue pickles later, in its feeder thread
        self._send(
            {
                "kind": "clip",
                "tr": result.tr,
                "frames": frames,
                "stimulus": self.engine.stimulus_frames(result.tr, len(frames)),
                "stamps": dict(result.stamps),
            }
        )
        concepts = None if cond.concepts is None else np.asarray(cond.concepts, np.float32)
        self._send({"kind": "conditions", "tr": result.tr, "concepts": concepts, "caption": cond.caption})
        self._send({"kind": "feedback", "tr": result.tr, "score": self.score(cond)})

    def event(self, event: Event) -> None:
        self._send({"kind": "event", "event": event.kind, "tr": event.tr, "detail": event.detail})

    def close(self) -> None:
        self._send({"kind": "end"})
        if self.process is None:
            return
        self.process.join(2.0)  # the window closes itself at "end"
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2.0)
        self.sink.cancel_join_thread()
        self.sink.close()
