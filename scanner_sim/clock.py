"""Wall-clock pacing for streams that must hold their rate (p99 jitter of a few ms).

``time.sleep`` alone overshoots by up to a scheduler tick; the pacer sleeps until shortly
before the deadline and then spins on :func:`pylsl.local_clock` for the rest.
"""

from __future__ import annotations

import os
import time

from rtdecode.lsl import local_clock

__all__ = ["Pacer", "raise_priority"]


def raise_priority() -> str:
    """Ask the OS to schedule this thread ahead of ordinary work, as a scanner's clock would be.

    Tries real-time FIFO scheduling, then a higher nice level; returns what was granted
    (``"fifo"``, ``"nice"`` or ``"normal"`` when neither is permitted). Without it a busy
    machine delays wake-ups by milliseconds.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        return "fifo"
    except (AttributeError, PermissionError, OSError):
        pass
    try:
        os.nice(-10)
        return "nice"
    except (AttributeError, PermissionError, OSError):
        return "normal"


class Pacer:
    """Release events at ``start + k * period / speed`` on the LSL clock.

    Parameters
    ----------
    period
        Nominal interval between events in seconds (e.g. the TR).
    speed
        Run this many times faster than real time (``period / speed`` between events).
    start
        LSL time of event 0; defaults to now.
    spin
        Seconds before each deadline at which to stop sleeping and spin.
    """

    def __init__(
        self, period: float, speed: float = 1.0, start: float | None = None, spin: float = 0.012
    ) -> None:
        if period <= 0 or speed <= 0:
            raise ValueError("period and speed must be positive")
        self.interval = period / speed
        self.start = local_clock() if start is None else start
        self.spin = spin

    def deadline(self, k: float) -> float:
        """LSL time of event ``k`` (fractional k allowed, e.g. for frames within a TR)."""
        return self.start + k * self.interval

    def wait_until(self, t: float) -> float:
        """Block until LSL time ``t``; return the time actually reached."""
        while True:
            now = local_clock()
            left = t - now
            if left <= 0:
                return now
            if left > self.spin:
                time.sleep(left - self.spin)

    def wait(self, k: float) -> float:
        """Block until event ``k`` is due; return the LSL time reached."""
        return self.wait_until(self.deadline(k))

    def shift(self, seconds: float) -> None:
        """Move all later deadlines (after a pause such as an outlet restart)."""
        self.start += seconds
