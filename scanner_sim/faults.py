"""Fault injection for the simulated scanner stream.

Each fault kind is given on the command line as a comma-separated list of TR indices
(``--drop 10,57``) or as ``random:N`` (N distinct random TRs, seeded). Every injected fault is
logged with its TR index — to the logger and, if asked, as JSON lines to a file — so tests
can check that a receiver reports them at the right TRs.

Kinds
-----
drop
    The volume is never pushed (a gap in the timestamps).
delay
    The volume is pushed ``delay_s`` seconds late, keeping its acquisition timestamp.
duplicate
    The volume is pushed twice (identical data and timestamp).
nan
    A block of voxels is set to NaN (needs a float32 stream).
wrong_shape
    A truncated volume: its last slices are missing and arrive as zeros, as when a
    reconstruction is cut short (an LSL stream has a fixed sample size).
restart
    The outlet is destroyed before this TR and re-created after ``restart_pause_s``;
    volumes acquired meanwhile are sent late once a consumer has reconnected.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["FAULT_KINDS", "FaultConfig", "FaultPlan", "parse_tr_spec"]

FAULT_KINDS = ("drop", "delay", "duplicate", "nan", "wrong_shape", "restart")
log = logging.getLogger("scanner_sim.faults")


@dataclass(frozen=True)
class FaultConfig:
    """Which faults to inject where (TR lists like ``"10,57"`` or ``"random:3"``)."""

    drop: str = ""
    delay: str = ""
    duplicate: str = ""
    nan: str = ""
    wrong_shape: str = ""
    restart: str = ""
    delay_s: float = field(default=1.5, metadata={"help": "lateness of delayed volumes (s, wall clock)"})
    restart_pause_s: float = field(default=1.0, metadata={"help": "outlet down-time at a restart (s)"})
    missing_slices: int = 4
    seed: int = 0
    log_file: Path | None = field(default=None, metadata={"help": "write injected faults as JSON lines"})


def parse_tr_spec(spec: str, n_tr: int, rng: np.random.Generator, exclude: set[int]) -> list[int]:
    """TR indices of a spec: ``""``, ``"3,17"`` or ``"random:N"`` (avoiding ``exclude``).

    Raises
    ------
    ValueError
        On a malformed spec or an index outside the run.
    """
    spec = spec.strip()
    if not spec:
        return []
    if spec.startswith("random:"):
        n = int(spec.split(":", 1)[1])
        pool = np.array(sorted(set(range(2, n_tr)) - exclude))
        if n > pool.size:
            raise ValueError(f"cannot place {n} random faults in {n_tr} TRs")
        return sorted(int(x) for x in rng.choice(pool, n, replace=False))
    out = []
    for part in spec.split(","):
        k = int(part)
        if not 0 <= k < n_tr:
            raise ValueError(f"fault TR {k} is outside the run (0–{n_tr - 1})")
        out.append(k)
    return sorted(set(out))


class FaultPlan:
    """The faults of one streamed run, by TR index."""

    def __init__(self, cfg: FaultConfig, n_tr: int) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        taken: set[int] = set()
        self.at: dict[str, set[int]] = {}
        for kind in FAULT_KINDS:
            trs = parse_tr_spec(getattr(cfg, kind), n_tr, rng, taken)
            self.at[kind] = set(trs)
            taken |= set(trs)
        self._log_fh = open(cfg.log_file, "a") if cfg.log_file else None
        self.injected: list[tuple[str, int]] = []

    def has(self, kind: str, tr: int) -> bool:
        """Whether fault ``kind`` is planned at TR ``tr``."""
        return tr in self.at[kind]

    def record(self, kind: str, tr: int, **detail) -> None:
        """Log an injected fault."""
        self.injected.append((kind, tr))
        log.warning("fault %s at TR %d %s", kind, tr, detail or "")
        if self._log_fh:
            self._log_fh.write(json.dumps({"fault": kind, "tr": tr, **detail}) + "\n")
            self._log_fh.flush()

    def corrupt(self, volume: np.ndarray, tr: int) -> np.ndarray:
        """Apply the data faults (NaN, truncation) planned at ``tr`` to a copy of the volume."""
        if self.has("nan", tr):
            if not np.issubdtype(volume.dtype, np.floating):
                raise ValueError("NaN corruption needs a float32 stream (use --dtype float32)")
            volume = volume.copy()
            x0 = volume.shape[0] // 3
            volume[x0 : x0 + 8, :, volume.shape[2] // 2] = np.nan
            self.record("nan", tr, voxels=int(8 * volume.shape[1]))
        if self.has("wrong_shape", tr):
            volume = volume.copy()
            k = self.cfg.missing_slices
            volume[:, :, -k:] = 0
            self.record("wrong_shape", tr, slices=volume.shape[2] - k)
        return volume

    def close(self) -> None:
        """Close the fault log."""
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None
