"""Regenerate ``docs/display.png``: the live window during a short simulated session.

Runs ``scanner-sim stream`` (with its stimulus stream and one dropped volume, so the fault
panel has something to show), the engine with a :class:`DisplayOutput` feeding a window in
this process, renders offscreen and saves the window once the reconstruction reaches a TR.

Usage (from the repository root)::

    .venv/bin/python docs/make_screenshot.py [--bundle engines/default] [--out docs/display.png]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import sys
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
from pyqtgraph.Qt import QtCore  # noqa: E402

from rtdecode.cli import start_simulator  # noqa: E402
from rtdecode.display_app import DisplayWindow, app  # noqa: E402
from rtdecode.ingest import IngestConfig  # noqa: E402
from rtdecode.outputs.display import DisplayConfig, DisplayOutput  # noqa: E402
from rtdecode.pipeline import Engine, EngineConfig  # noqa: E402


def main() -> int:
    """Run the session, save the screenshot; returns a process exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "engines/default")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/display.png")
    ap.add_argument("--at-tr", type=int, default=36, help="grab when the reconstruction shows this TR")
    ap.add_argument("--speed", type=float, default=4.0)
    ap.add_argument("--sessions", type=Path, default=Path("/tmp/rtdecode-screenshot-sessions"))
    args = ap.parse_args()

    n_tr = args.at_tr + 8
    source = f"screenshot-{uuid.uuid4().hex[:8]}"
    # subject 1, world seed 0, the movie of the demo (seed 7); one dropped volume to show
    sim = start_simulator(source, n_tr, args.speed, 1, 0, 7, "--faults.drop", "20", cwd=ROOT)
    feed: queue.Queue = queue.Queue(256)
    cfg = EngineConfig(
        bundle=args.bundle,
        sessions=args.sessions,
        log_every=0,
        ingest=IngestConfig(source_id=source, max_trs=n_tr, resolve_timeout_s=120.0, lost_timeout_s=10.0),
    )
    engine = Engine(cfg, [DisplayOutput(DisplayConfig(), sink=feed)])
    done: dict = {}
    runner = threading.Thread(target=lambda: done.update(summary=asyncio.run(engine.run())), daemon=True)
    runner.start()

    qt = app()
    window = DisplayWindow()
    window.show()
    deadline = time.monotonic() + 240

    def tick() -> None:
        while True:
            try:
                window.handle(feed.get_nowait())
            except queue.Empty:
                break
        if window.clip_tr >= args.at_tr:
            cv2.imwrite(str(args.out), window.grab_rgb()[..., ::-1])
            print(f"wrote {args.out} at TR {window.tr} (clip TR {window.clip_tr})")
            qt.quit()
        elif time.monotonic() > deadline or (not runner.is_alive() and feed.empty()):
            print(f"the session ended before the screenshot TR: {done}", file=sys.stderr)
            qt.exit(1)

    timer = QtCore.QTimer()
    timer.timeout.connect(tick)
    timer.start(20)
    code = qt.exec()
    runner.join(60)
    sim.kill()
    return code


if __name__ == "__main__":
    sys.exit(main())
