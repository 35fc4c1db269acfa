"""The experimenter's live window (pyqtgraph on PySide6).

It shows the reconstructed stream playing continuously at its frame rate with the stimulus
beside it (when a stimulus stream is present), the decoded concepts (bars, top names) and
caption, head motion (translations, rotations, framewise displacement with a threshold line),
per-stage latency, the TR counter, drops, faults and stream health.

The window only ever receives small dict messages (see :meth:`DisplayWindow.handle`), from
one of two feeds:

* :func:`run_window` — a process of its own started by
  :class:`rtdecode.outputs.display.DisplayOutput` (``rtdecode run --display``), fed through a
  bounded multiprocessing queue;
* :func:`run_mqtt` — ``rtdecode display --mqtt HOST``, fed by subscribing to a session's
  MQTT topics from another machine; every message is size-limited and schema-checked first
  (:func:`rtdecode.listen.decode_message`), a malformed one logged and skipped.

Tests and scripts can drive :class:`DisplayWindow` directly and read its pixels with
:meth:`DisplayWindow.grab_rgb`.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np

os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")
log = logging.getLogger("rtdecode.display")


def ensure_platform() -> None:
    """Render offscreen when no display server is reachable (CI, ssh) instead of aborting."""
    if (
        sys.platform.startswith("linux")
        and not os.environ.get("QT_QPA_PLATFORM")
        and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    ):
        log.warning("no display server found: the window renders offscreen (set DISPLAY to see it)")
        os.environ["QT_QPA_PLATFORM"] = "offscreen"


ensure_platform()

import pyqtgraph as pg  # noqa: E402  (after choosing the Qt binding and platform)
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets  # noqa: E402

__all__ = ["DisplayWindow", "app", "ensure_platform", "run_mqtt", "run_window"]


pg.setConfigOptions(imageAxisOrder="row-major", antialias=True, background="#101418", foreground="#d0d4d8")

AXES = ("x", "y", "z")
PENS = ("#ff6b6b", "#51cf66", "#4dabf7", "#fcc419")
STAGES = (
    ("preprocess", "received", "preprocessed"),
    ("decode", "preprocessed", "decoded"),
    ("render", "decoded", "rendered"),
    ("total", "received", "rendered"),
)
FAULTS = ("gap", "late", "duplicate", "bad", "lost", "drop", "skipped", "error", "stimulus_lost")


def app() -> QtWidgets.QApplication:
    """The process's QApplication (created on first use)."""
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication(["rtdecode-display"])


def _resample(frames: np.ndarray | None, n: int) -> list[np.ndarray | None]:
    """``n`` frames picked evenly from ``frames`` (or ``n`` Nones)."""
    if frames is None or len(frames) == 0:
        return [None] * n
    idx = np.minimum(np.arange(n) * len(frames) // n, len(frames) - 1)
    return [frames[i] for i in idx]


class _Trace:
    """A plot with a fixed-length history of several named curves."""

    def __init__(self, title: str, names: list[str], units: str, history: int) -> None:
        self.widget = pg.PlotWidget(title=title)
        self.widget.setMenuEnabled(False)
        self.widget.setMouseEnabled(x=False, y=False)
        self.widget.setLabel("left", units)
        self.widget.getAxis("left").enableAutoSIPrefix(False)
        self.widget.showGrid(x=False, y=True, alpha=0.2)
        legend = self.widget.addLegend(offset=(5, 5), labelTextSize="8pt") if len(names) > 1 else None
        self.x: deque[float] = deque(maxlen=history)
        self.y = {n: deque(maxlen=history) for n in names}
        self.curves = {
            n: self.widget.plot(pen=pg.mkPen(PENS[i % len(PENS)], width=2), name=n)
            for i, n in enumerate(names)
        }
        self.legend = legend

    def add(self, x: float, values: dict[str, float | None]) -> None:
        self.x.append(float(x))
        for name, ys in self.y.items():
            v = values.get(name)
            ys.append(np.nan if v is None else float(v))
        xs = np.fromiter(self.x, float)
        for name, curve in self.curves.items():
            curve.setData(xs, np.fromiter(self.y[name], float), connect="finite")


class DisplayWindow(QtWidgets.QWidget):
    """The live window. Feed it with the ``update_*`` methods or :meth:`handle`.

    Parameters
    ----------
    fd_threshold
        Framewise displacement (mm) drawn as the red threshold line; TRs above it are counted.
    history
        TRs kept in the traces.
    top_concepts
        Concepts shown as bars (the most probable first).
    """

    def __init__(self, fd_threshold: float = 0.5, history: int = 200, top_concepts: int = 8) -> None:
        super().__init__()
        self.setWindowTitle("rtdecode — live")
        self.resize(1280, 820)
        self.fd_threshold = fd_threshold
        self.top_concepts = top_concepts
        self.vocabulary: list[str] = []
        self.session = ""
        self.stream = ""
        self.interval_s: float | None = None
        self.fps = 8.0
        self.state = "waiting"
        self.tr = -1
        self.clip_tr = -1
        self.feedback: float | None = None
        self.last_status = 0.0
        self.status: dict[str, Any] = {}
        self.faults: Counter[str] = Counter()
        self.last_fault = ""
        self.high_fd = 0
        self.shown_tr = -1
        self.playback: deque[tuple[int, np.ndarray, np.ndarray | None]] = deque()
        self.frames_per_clip = 16
        self._build(history)
        self.timer = QtCore.QTimer(self)
        self.timer.timeout.connect(self.advance)
        self._set_rate(self.fps)
        self.timer.start()
        self.health_timer = QtCore.QTimer(self)
        self.health_timer.timeout.connect(self._refresh_text)
        self.health_timer.start(500)

    # ------------------------------------------------------------------ layout
    def _image_panel(self, col: int, title: str) -> tuple[pg.ViewBox, pg.ImageItem, pg.LabelItem]:
        label = self.images.addLabel(title, row=0, col=col, size="11pt")
        view = self.images.addViewBox(row=1, col=col, lockAspect=True, invertY=True, enableMouse=False)
        view.setMenuEnabled(False)
        item = pg.ImageItem(np.zeros((64, 64, 3), np.uint8), levels=(0, 255))
        view.addItem(item)
        return view, item, label

    def _build(self, history: int) -> None:
        self.setStyleSheet("background: #0c0f12; color: #d0d4d8;")
        grid = QtWidgets.QGridLayout(self)
        grid.setContentsMargins(6, 6, 6, 6)
        self.header = QtWidgets.QLabel()
        self.header.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.header.setStyleSheet("font-size: 15px; color: #e8eaec; background: #1b2128; padding: 4px;")
        grid.addWidget(self.header, 0, 0, 1, 3)

        self.images = pg.GraphicsLayoutWidget()
        self.recon_view, self.recon_item, self.recon_label = self._image_panel(0, "reconstruction")
        self.stim_view, self.stim_item, self.stim_label = self._image_panel(1, "stimulus")
        self.no_stimulus = pg.TextItem("no stimulus stream", color="#8a9096", anchor=(0.5, 0.5))
        self.stim_view.addItem(self.no_stimulus)
        self.no_stimulus.setPos(32, 32)
        grid.addWidget(self.images, 1, 0, 1, 2)

        self.concept_plot = pg.PlotWidget(title="concepts")
        self.concept_plot.setMenuEnabled(False)
        self.concept_plot.setMouseEnabled(x=False, y=False)
        self.concept_plot.setXRange(0, 1, padding=0)
        self.concept_plot.setYRange(-0.5, self.top_concepts - 0.5, padding=0.02)
        self.concept_plot.invertY(True)
        self.concept_plot.setLabel("bottom", "probability")
        self.bars = pg.BarGraphItem(
            x0=np.zeros(self.top_concepts),
            y=np.arange(self.top_concepts),
            width=np.zeros(self.top_concepts),
            height=0.7,
            brush="#4dabf7",
        )
        self.concept_plot.addItem(self.bars)
        self.concept_plot.getAxis("left").setTicks([[]])
        self.no_concepts = pg.TextItem("— (no concept decoder)", color="#8a9096", anchor=(0.5, 0.5))
        self.concept_plot.addItem(self.no_concepts)
        self.no_concepts.setPos(0.5, (self.top_concepts - 1) / 2)
        grid.addWidget(self.concept_plot, 1, 2)

        self.caption = QtWidgets.QLabel("caption: —")
        self.caption.setStyleSheet("font-size: 17px; color: #f1f3f5; padding: 4px;")
        grid.addWidget(self.caption, 2, 0, 1, 3)

        self.translation = _Trace("translation", [f"t{a}" for a in AXES], "mm", history)
        self.rotation = _Trace("rotation", [f"r{a}" for a in AXES], "deg", history)
        self.fd = _Trace("framewise displacement", ["fd"], "mm", history)
        self.fd_line = pg.InfiniteLine(
            self.fd_threshold, angle=0, pen=pg.mkPen("#ff6b6b", width=1.5, style=QtCore.Qt.PenStyle.DashLine)
        )
        self.fd.widget.addItem(self.fd_line)
        grid.addWidget(self.translation.widget, 3, 0)
        grid.addWidget(self.rotation.widget, 3, 1)
        grid.addWidget(self.fd.widget, 3, 2)

        self.latency = _Trace("latency per stage", [s[0] for s in STAGES], "ms", history)
        grid.addWidget(self.latency.widget, 4, 0, 1, 2)
        self.health = QtWidgets.QLabel()
        self.health.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.health.setAlignment(QtCore.Qt.AlignmentFlag.AlignTop | QtCore.Qt.AlignmentFlag.AlignLeft)
        self.health.setStyleSheet("font-size: 13px; color: #d0d4d8; background: #1b2128; padding: 6px;")
        grid.addWidget(self.health, 4, 2)
        for row, stretch in enumerate((0, 5, 0, 3, 3)):
            grid.setRowStretch(row, stretch)
        self._refresh_text()

    # ------------------------------------------------------------------ updates
    def set_meta(self, meta: dict[str, Any]) -> None:
        """Session facts: ``session``, ``stream``, ``fps``, ``frames_per_tr``, ``interval_s``,
        ``vocabulary`` (any subset)."""
        self.session = str(meta.get("session") or self.session)
        self.stream = str(meta.get("stream") or self.stream)
        if meta.get("vocabulary"):
            self.vocabulary = [str(v) for v in meta["vocabulary"]]
        if meta.get("frames_per_tr"):
            self.frames_per_clip = int(meta["frames_per_tr"])
        if meta.get("interval_s"):
            self.interval_s = float(meta["interval_s"])
        if meta.get("fps"):
            self.fps = float(meta["fps"])
        self._set_rate(self.fps)
        if self.state == "waiting":
            self.state = "running"
        self._refresh_text()

    def _set_rate(self, fps: float) -> None:
        """Play at the clips' rate as streamed: F frames per volume interval (TR / speed-up)."""
        rate = self.frames_per_clip / self.interval_s if self.interval_s else fps
        self.timer.setInterval(max(10, round(1000.0 / max(rate, 1e-3))))

    def update_clip(
        self,
        tr: int,
        frames: np.ndarray,
        stimulus: np.ndarray | None = None,
        stamps: dict[str, float] | None = None,
    ) -> None:
        """Queue one TR's clip (F, H, W, 3) uint8 for playback, with the stimulus shown then."""
        frames = np.asarray(frames, np.uint8)
        if frames.ndim == 3:
            frames = frames[None]
        self.clip_tr = tr
        if len(frames) != self.frames_per_clip:
            self.frames_per_clip = len(frames)
            self._set_rate(self.fps)
        was_idle = not self.playback
        self.playback.extend((tr, f, s) for f, s in zip(frames, _resample(stimulus, len(frames))))
        # Stay at most one clip behind the newest: the stream keeps up with the scanner.
        while len(self.playback) > 2 * len(frames):
            self.playback.popleft()
        if was_idle:
            self.advance()
        if stamps:
            self.update_latency(tr, stamps)

    def advance(self) -> None:
        """Show the next buffered frame (the playback timer's slot); hold the last one if none."""
        if not self.playback:
            return
        if len(self.playback) > 1.5 * self.frames_per_clip:
            self.playback.popleft()  # behind by more than half a clip: skip a frame to catch up
        self.shown_tr, frame, stim = self.playback.popleft()
        self.recon_item.setImage(frame, autoLevels=False, levels=(0, 255))
        self.recon_label.setText(f"reconstruction — TR {self.shown_tr}")
        if stim is not None:
            self.stim_item.setImage(stim, autoLevels=False, levels=(0, 255))
            self.no_stimulus.setVisible(False)

    def update_latency(self, tr: int, stamps: dict[str, float]) -> None:
        """Add one TR's per-stage latency (ms) from its stage timestamps."""
        values = {
            name: (stamps[b] - stamps[a]) * 1000.0 if a in stamps and b in stamps else None
            for name, a, b in STAGES
        }
        self.latency.add(tr, values)

    def update_conditions(self, tr: int, concepts: np.ndarray | None, caption: str = "") -> None:
        """Show the decoded concept probabilities (top names) and caption ("—" when none)."""
        self.caption.setText(f"caption (TR {tr}): {caption or '—'}")
        k = self.top_concepts
        if concepts is None or len(concepts) == 0:
            self.bars.setOpts(width=np.zeros(k))
            self.concept_plot.getAxis("left").setTicks([[]])
            self.no_concepts.setVisible(True)
            return
        p = np.asarray(concepts, float).ravel()
        top = np.argsort(-p)[:k]
        widths = np.zeros(k)
        widths[: len(top)] = p[top]
        names = [self.vocabulary[i] if i < len(self.vocabulary) else f"#{i}" for i in top]
        self.bars.setOpts(width=widths)
        self.concept_plot.getAxis("left").setTicks([list(enumerate(names))])
        self.no_concepts.setVisible(False)

    def update_status(self, status: dict[str, Any]) -> None:
        """One preprocessed TR's health: motion traces, FD, counts, drops."""
        self.status = status
        self.last_status = time.monotonic()
        tr = status.get("tr", self.tr)
        if isinstance(tr, int) and tr >= 0:
            self.tr = max(self.tr, tr)
            motion = status.get("motion")
            if motion is not None and len(motion) == 6:
                self.translation.add(tr, {f"t{a}": motion[i] for i, a in enumerate(AXES)})
                self.rotation.add(tr, {f"r{a}": motion[3 + i] for i, a in enumerate(AXES)})
            fd = status.get("fd")
            if fd is not None:
                self.fd.add(tr, {"fd": fd})
                self.high_fd += int(fd > self.fd_threshold)
        state = status.get("state")
        if state in ("stopped", "lost"):
            self.state = state
        elif self.state in ("waiting", "stalled"):
            self.state = "running"
        self._refresh_text()

    def update_event(self, kind: str, tr: int, detail: str = "") -> None:
        """Count a reported fault (gap, late, bad, duplicate, lost, drop, ...)."""
        if kind == "lost":
            self.state = "lost"
        elif kind == "reconnected":
            self.state = "running"
        if kind in FAULTS:
            self.faults[kind] += 1
            self.last_fault = f"TR {tr}: {kind} — {detail}"[:90]
        self._refresh_text()

    def update_feedback(self, tr: int, score: float) -> None:
        """The latest feedback score (shown in the header)."""
        self.feedback = float(score)

    def set_state(self, state: str) -> None:
        """``running``, ``stopped``, ``lost`` or ``engine exited``."""
        self.state = state
        self._refresh_text()

    def handle(self, msg: dict[str, Any]) -> bool:
        """Apply one feed message; returns False for ``{"kind": "end"}``.

        Kinds: ``meta`` (see :meth:`set_meta`), ``clip`` (tr, frames, stimulus, stamps),
        ``conditions`` (tr, concepts, caption, vocabulary), ``status`` (the engine's per-TR
        status), ``event`` (event, tr, detail), ``feedback`` (tr, score), ``end``.
        """
        kind = msg.get("kind")
        if kind == "meta":
            self.set_meta(msg)
        elif kind == "clip":
            self.update_clip(msg["tr"], msg["frames"], msg.get("stimulus"), msg.get("stamps"))
        elif kind == "conditions":
            if msg.get("vocabulary"):
                self.vocabulary = list(msg["vocabulary"])
            self.update_conditions(msg["tr"], msg.get("concepts"), msg.get("caption", ""))
        elif kind == "status":
            self.update_status(msg)
        elif kind == "event":
            self.update_event(msg.get("event", "?"), msg.get("tr", -1), msg.get("detail", ""))
        elif kind == "feedback":
            self.update_feedback(msg.get("tr", -1), msg.get("score", float("nan")))
        elif kind == "end":
            self.set_state("stopped")
            return False
        return True

    # ------------------------------------------------------------------ text panels
    def _health_state(self) -> tuple[str, str]:
        """Stream health in words and colour: receiving, stalled, lost, stopped."""
        if self.state in ("stopped", "lost", "engine exited", "waiting"):
            return self.state, "#ff6b6b" if self.state in ("lost", "engine exited") else "#adb5bd"
        quiet = time.monotonic() - self.last_status if self.last_status else 0.0
        if self.interval_s and quiet > 3 * self.interval_s + 1.0:
            return f"stalled {quiet:.0f} s", "#fcc419"
        return "receiving", "#51cf66"

    def _refresh_text(self) -> None:
        health, colour = self._health_state()
        fb = f" &nbsp; feedback <b>{self.feedback:.3f}</b>" if self.feedback is not None else ""
        tr = self.tr if self.tr >= 0 else "—"
        clip_tr = self.clip_tr if self.clip_tr >= 0 else "—"
        self.header.setText(
            f"<b>TR {tr}</b> &nbsp; decoded TR {clip_tr}"
            f" &nbsp; <span style='color:{colour}'>● {health}</span>{fb}"
            f" &nbsp; <span style='color:#8a9096'>{self.session} {self.stream}</span>"
        )
        s = self.status
        counts = s.get("counts") or {}
        drops = s.get("drops") or {}
        faults = " ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        clip_ms = s.get("receive_to_clip_ms")
        self.health.setText(
            "<b>volumes</b> "
            + " ".join(f"{k} {counts.get(k, 0)}" for k in ("ok", "late", "duplicate", "bad"))
            + f"<br><b>gaps</b> {s.get('gaps', 0)} &nbsp; <b>drops</b> "
            + " ".join(f"{k} {v}" for k, v in drops.items())
            + (f" &nbsp; display {s['display_dropped']}" if s.get("display_dropped") else "")
            + f"<br><b>FD</b> {s.get('fd', 0.0):.2f} mm &nbsp; above {self.fd_threshold:g} mm: {self.high_fd}"
            + (f"<br><b>received → clip</b> {clip_ms:.0f} ms" if isinstance(clip_ms, (int, float)) else "")
            + f"<br><b>faults</b> {faults}"
            + (f"<br><span style='color:#fcc419'>{self.last_fault}</span>" if self.last_fault else "")
        )

    # ------------------------------------------------------------------ pixels
    def grab_rgb(self) -> np.ndarray:
        """The window's current pixels as an (H, W, 3) uint8 RGB array (``QWidget.grab``)."""
        app().processEvents()
        image = self.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
        h, w, stride = image.height(), image.width(), image.bytesPerLine()
        data = np.frombuffer(image.constBits(), np.uint8, count=h * stride).reshape(h, stride)
        return data[:, : w * 3].reshape(h, w, 3).copy()

    def region(self, name: str) -> tuple[int, int, int, int]:
        """Pixel box (x0, y0, x1, y1) in :meth:`grab_rgb` coordinates of a part of the window.

        ``reconstruction`` and ``stimulus`` are the shown image itself; ``translation``,
        ``rotation``, ``fd``, ``latency`` and ``concepts`` are the plots' data areas.
        """
        app().processEvents()
        ratio = self.devicePixelRatioF()
        if name in ("reconstruction", "stimulus"):
            item = self.recon_item if name == "reconstruction" else self.stim_item
            poly = self.images.mapFromScene(item.mapRectToScene(item.boundingRect()))
            rect = poly.boundingRect()
            origin = self.images.mapTo(self, QtCore.QPoint(0, 0))
            x0, y0 = origin.x() + rect.left(), origin.y() + rect.top()
            x1, y1 = x0 + rect.width(), y0 + rect.height()
        else:
            widget = {
                "translation": self.translation.widget,
                "rotation": self.rotation.widget,
                "fd": self.fd.widget,
                "latency": self.latency.widget,
                "concepts": self.concept_plot,
            }[name]
            vb = widget.getPlotItem().getViewBox()
            poly = widget.mapFromScene(vb.mapRectToScene(vb.boundingRect()))
            rect = poly.boundingRect()
            origin = widget.mapTo(self, QtCore.QPoint(0, 0))
            x0, y0 = origin.x() + rect.left(), origin.y() + rect.top()
            x1, y1 = x0 + rect.width(), y0 + rect.height()
        return tuple(round(v * ratio) for v in (x0, y0, x1, y1))


# ---------------------------------------------------------------------- feeds
def _pump(window: DisplayWindow, source: Any, on_end: Any, limit: int = 64) -> None:
    """Apply up to ``limit`` waiting messages from ``source`` (a queue) to the window."""
    for _ in range(limit):
        try:
            msg = source.get_nowait()
        except queue.Empty:
            return
        except (EOFError, OSError, ValueError):  # the feeding process is gone
            window.set_state("engine exited")
            return
        try:
            if not window.handle(msg):
                on_end()
                return
        except Exception:  # a bad message must not close the experimenter's window
            log.exception(
                "display: could not show a %s message", msg.get("kind") if isinstance(msg, dict) else "?"
            )


def run_window(source: Any, settings: dict[str, Any] | None = None) -> int:
    """Open the window and feed it from ``source`` (a queue of messages) until closed.

    Parameters
    ----------
    source
        Anything with ``get_nowait()`` raising :class:`queue.Empty` (a multiprocessing queue).
    settings
        ``fd_threshold``, ``history``, ``top_concepts``; ``exit_on_end`` (close the window at
        the ``end`` message); ``parent_pid`` (show "engine exited" when that process is gone).
    """
    settings = dict(settings or {})
    qt = app()
    window = DisplayWindow(
        fd_threshold=settings.get("fd_threshold", 0.5),
        history=settings.get("history", 200),
        top_concepts=settings.get("top_concepts", 8),
    )
    window.show()
    exit_on_end = settings.get("exit_on_end", False)
    parent = settings.get("parent_pid")

    def end() -> None:
        if exit_on_end:
            qt.quit()

    def tick() -> None:
        _pump(window, source, end)
        if parent and os.getppid() != parent and window.state != "engine exited":
            window.set_state("engine exited")

    timer = QtCore.QTimer()
    timer.timeout.connect(tick)
    timer.start(20)  # also lets Python run signal handlers while Qt's loop runs
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: qt.quit())
    return qt.exec()


class _MqttFeed:
    """Turns decoded MQTT messages into window messages (in the subscriber thread).

    With session ``+`` it follows the session whose status most recently said ``running``.
    """

    def __init__(self, out: queue.Queue, session: str) -> None:
        self.out = out
        self.session = None if session == "+" else session
        self.states: dict[str, str] = {}
        self.dropped = 0

    def _send(self, msg: dict[str, Any]) -> None:
        try:
            self.out.put_nowait(msg)
        except queue.Full:
            self.dropped += 1  # the window is behind: skip rather than queue stale frames

    def __call__(self, session: str, kind: str, body: dict[str, Any]) -> None:
        from rtdecode.outputs.mqtt import decode_frames

        if kind == "status":
            state = body.get("state", "running")
            self.states[session] = state
            current = self.session and self.states.get(self.session)
            if self.session is None or (current in ("stopped", "lost") and state == "running"):
                if session != self.session:
                    self.session = session
                    stream = (body.get("engine") or {}).get("stream") or {}
                    self._send(
                        {
                            "kind": "meta",
                            "session": session,
                            "stream": stream.get("name", ""),
                            "interval_s": stream.get("interval_s"),
                        }
                    )
        if session != self.session:
            return
        tr = body.get("tr", -1)
        if kind == "status":
            self._send({**body, "kind": "status"})
        elif kind == "conditions":
            self._send(
                {
                    "kind": "conditions",
                    "tr": tr,
                    "concepts": body.get("concepts"),
                    "caption": body.get("caption", ""),
                    "vocabulary": body.get("vocabulary"),
                }
            )
        elif kind == "clip":
            try:
                frames = decode_frames(body)
            except Exception as exc:  # ValueError, or OpenCV failing on a damaged image
                log.warning("skipping clip of TR %s: %s", tr, exc)
                return
            self._send({"kind": "meta", "fps": body.get("fps"), "frames_per_tr": len(frames)})
            self._send({"kind": "clip", "tr": tr, "frames": frames, "stamps": None})
        elif kind == "feedback":
            score = body.get("score")
            self._send({"kind": "feedback", "tr": tr, "score": float("nan") if score is None else score})


def run_mqtt(cfg: Any, session: str = "+", settings: dict[str, Any] | None = None) -> int:
    """Open the window fed by subscribing to ``<prefix>/<session>/#`` on the broker of ``cfg``.

    Parameters
    ----------
    cfg
        :class:`rtdecode.outputs.mqtt.MqttConfig` (host, port, credentials, TLS).
    session
        The session to show; ``+`` follows whichever session is running.
    """
    import asyncio

    from rtdecode.listen import subscribe

    feed_q: queue.Queue = queue.Queue(maxsize=64)
    feed = _MqttFeed(feed_q, session)
    holder: dict[str, Any] = {}

    async def main() -> None:
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), asyncio.Event()
        await subscribe(cfg, session, feed, holder["stop"])

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="mqtt-display", daemon=True)
    thread.start()
    try:
        return run_window(feed_q, {**(settings or {}), "exit_on_end": False})
    finally:
        if "loop" in holder:
            holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(2.0)
