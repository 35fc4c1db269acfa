"""Shared by the reliability tests: a small synthetic bundle and a scripted LSL volume outlet.

The small bundle (16×16×8 voxels, random ridge weights) loads and decodes in milliseconds, so
engine-level fault tests need neither the simulator nor the trained tiny bundle; the scripted
outlet pushes exactly the faults a test asks for, at exactly the times it asks for.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pylsl

from rtdecode.bundle import save_bundle
from rtdecode.geometry import VolumeGeometry
from rtdecode.lsl import FrameOutlet, VolumeOutlet
from rtdecode.volume import checksum

SMALL_DIMS = (16, 16, 8)


def brain(dims: tuple[int, ...] = SMALL_DIMS) -> np.ndarray:
    """A smooth ellipsoidal 'brain' (values ~1000 inside, ~0 outside)."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in dims], indexing="ij")
    r2 = sum((g / 0.75) ** 2 for g in grid)
    return (1000.0 / (1.0 + np.exp((r2 - 1.0) * 8.0))).astype(np.float32)


def synthetic_volume(k: int, dims: tuple[int, ...] = SMALL_DIMS, seed: int = 0) -> np.ndarray:
    """Volume of TR ``k``: the brain, a slow signal and noise (never zero anywhere)."""
    rng = np.random.default_rng([seed, k])
    base = brain(dims)
    signal = 20.0 * np.sin(k / 3.0 + np.arange(base.size).reshape(dims) % 7)
    return (base + signal + 50.0 + rng.normal(0, 5.0, dims)).astype(np.float32)


def make_small_bundle(path: Path, dims: tuple[int, ...] = SMALL_DIMS, seed: int = 0) -> Path:
    """A ridge bundle on a small grid with random weights (decodes nonsense, quickly)."""
    rng = np.random.default_rng(seed)
    mask_index = np.flatnonzero(brain(dims).ravel() > 500).astype(np.int32)
    n_select = min(100, mask_index.size)
    blurry_shape = [2, 8, 8, 3]
    d = int(np.prod(blurry_shape))
    manifest = {
        "name": path.name,
        "kind": "ridge",
        "subject": "sub-01",
        "geometry": {"dims": list(dims), "voxel_size": [3.0, 3.0, 3.0], "tr": 2.0},
        "lags": [2, 3],
        "tr": 2.0,
        "fps": 8.0,
        "frames_per_tr": 4,
        "frame_size": [16, 16],
        "blurry_shape": blurry_shape,
        "vocabulary": ["a", "b"],
        "preprocess": {"motion_correction": True, "mc_iterations": 4, "warmup": 3},
    }
    tensors = {
        "mask_index": mask_index,
        "select": np.arange(n_select, dtype=np.int32),
        "weights": rng.normal(0, 0.05, (2 * n_select, 4)).astype(np.float32),
        "bias": np.zeros(4, np.float32),
        "basis": rng.normal(0, 0.1, (4, d)).astype(np.float32),
        "mean": np.full(d, 0.5, np.float32),
    }
    save_bundle(path, manifest, tensors)
    return path


@dataclass
class Push:
    """One sample to push: TR ``tr``'s slot in time, after ``delay`` s more, ``data`` or the
    default synthetic volume."""

    tr: int
    data: np.ndarray | None = None
    delay: float = 0.0


class ScriptedOutlet:
    """Push volumes of a small grid over LSL from a thread, on a schedule with faults.

    Volume ``k`` is timestamped ``t0 + (k + 1) · interval`` (end of its acquisition) and pushed
    then, plus its ``delay``. Every pushed sample's (tr, sha1) is kept in :attr:`sent`.

    Parameters
    ----------
    source_id
        LSL source id.
    dims, interval, dtype
        Grid, seconds between volumes, sample type.
    stimulus_until
        Also stream stimulus frames (8 per TR) until this TR, then close that outlet (None:
        no stimulus stream).
    """

    def __init__(
        self,
        source_id: str,
        dims: tuple[int, ...] = SMALL_DIMS,
        interval: float = 0.1,
        dtype: np.dtype | str = np.float32,
        stimulus_until: int | None = None,
    ) -> None:
        self.dims, self.interval, self.dtype = dims, interval, np.dtype(dtype)
        geometry = VolumeGeometry(dims, (3.0, 3.0, 3.0), interval, subject="sub-01")
        self.outlet: VolumeOutlet | None = VolumeOutlet(geometry, "scripted", source_id, self.dtype)
        self.frames = (
            FrameOutlet((16, 16), 8 / interval, "scripted_stimulus", f"{source_id}-stimulus")
            if stimulus_until is not None
            else None
        )
        self.stimulus_until = stimulus_until
        self.sent: list[tuple[int, str]] = []
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, plan: list[Push], wait_consumer: float = 20.0, close_after: bool = False) -> None:
        """Push ``plan`` in a thread once an inlet is connected; ``close_after`` destroys the
        outlet after the last push (the stream disappears)."""
        self.thread = threading.Thread(target=self._run, args=(plan, wait_consumer, close_after), daemon=True)
        self.thread.start()

    def _run(self, plan: list[Push], wait_consumer: float, close_after: bool) -> None:
        self.outlet.wait_for_consumers(wait_consumer)
        if self.frames is not None:
            self.frames.outlet.wait_for_consumers(5.0)
        t0 = pylsl.local_clock() + 0.3
        events = sorted(
            [(t0 + (p.tr + 1) * self.interval + p.delay, 1, i) for i, p in enumerate(plan)]
            + (
                [(t0 + j * self.interval / 8, 0, -j - 1) for j in range(8 * self.stimulus_until)]
                if self.frames is not None
                else []
            )
        )
        for due, _, i in events:
            while (left := due - pylsl.local_clock()) > 0:
                if self.stop.wait(min(left, 0.05)):
                    return
            if i < 0:  # a stimulus frame
                j = -i - 1
                frame = np.full((16, 16, 3), (j * 7) % 256, np.uint8)
                self.frames.push(frame, due)
                if j == 8 * self.stimulus_until - 1:
                    self.frames.close()
                    self.frames = None
                continue
            p = plan[i]
            data = synthetic_volume(p.tr, self.dims) if p.data is None else p.data
            data = np.ascontiguousarray(data, self.dtype)
            self.outlet.push(data, t0 + (p.tr + 1) * self.interval)
            self.sent.append((p.tr, checksum(data)))
        if close_after:
            self.stop.wait(0.5)  # let the last samples leave the outlet's buffer
            self.close()

    def close(self) -> None:
        """Destroy the outlet(s)."""
        self.stop.set()
        if self.outlet is not None:
            self.outlet.close()
            self.outlet = None
        if self.frames is not None:
            self.frames.close()
            self.frames = None

    def join(self, timeout: float = 30.0) -> None:
        """Wait for the pushing thread."""
        if self.thread is not None:
            self.thread.join(timeout)


def wait_for(pred, timeout: float = 10.0) -> bool:
    """Poll ``pred()`` every 50 ms until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False
