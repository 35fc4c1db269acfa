"""What ingestion hands to the rest of the engine: received volumes and reported events."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["STATUSES", "Event", "Volume", "checksum"]

# ok: in order and on time; late: arrived late or after later TRs; duplicate: a TR seen before;
# bad: failed validation (non-finite values, truncated, wrong size or type).
STATUSES = ("ok", "late", "duplicate", "bad")


def checksum(data: np.ndarray) -> str:
    """SHA-1 of a volume's bytes as received (the record's and the tests' identity)."""
    return hashlib.sha1(np.ascontiguousarray(data).tobytes()).hexdigest()


@dataclass
class Volume:
    """One received volume.

    Attributes
    ----------
    seq
        Arrival order (0, 1, 2, ... over the whole session, duplicates included).
    tr
        TR index assigned from the acquisition timestamp (0 = first volume of the run).
    data
        The volume as received, shape ``geometry.dims``, in the stream's dtype.
    timestamp
        Acquisition timestamp on the local LSL clock (sender's clock, corrected).
    received
        Local LSL clock when the sample was pulled.
    status
        One of :data:`STATUSES`.
    reason
        Why a volume is late, duplicate or bad (empty when ok).
    stamps
        Stage-boundary timestamps (LSL clock): ``received``, ``recorded``, ``preprocessed``, ...
    """

    seq: int
    tr: int
    data: np.ndarray
    timestamp: float
    received: float
    status: str = "ok"
    reason: str = ""
    sha1: str = ""
    stamps: dict[str, float] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """Whether preprocessing may use this volume."""
        return self.status in ("ok", "late") and not self.reason.startswith("out of order")


@dataclass
class Event:
    """Something the engine reports: a gap, a late or bad volume, a lost stream, a drop...

    Attributes
    ----------
    kind
        Short name (``gap``, ``late``, ``duplicate``, ``bad``, ``lost``, ``reconnected``,
        ``drop``, ``error``, ...).
    tr
        The TR the event concerns (-1 if none).
    detail
        Human-readable explanation.
    time
        Wall-clock time (``time.time()``) when it was reported.
    data
        Extra machine-readable fields.
    """

    kind: str
    tr: int
    detail: str = ""
    time: float = field(default_factory=time.time)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"kind": self.kind, "tr": self.tr, "detail": self.detail, "time": self.time, **self.data}
