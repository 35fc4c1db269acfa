"""Outputs: where rendered clips, conditions and health go (display, MQTT, LSL, video).

Every output implements some hooks of :class:`Output`; the engine calls them on the event
loop, so each must return at once and do slow work in its own thread or process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rtdecode.conditions import Conditions
from rtdecode.volume import Event

if TYPE_CHECKING:
    from rtdecode.pipeline import Engine
    from rtdecode.preprocess import Preprocessed

__all__ = ["ClipResult", "Output", "session_name"]


def session_name(engine: Engine, given: str = "") -> str:
    """The session's name: ``given`` or the record directory's name (MQTT-topic safe)."""
    name = given or (engine.record.path.name if engine.record is not None else "session")
    for bad in "/+#":
        name = name.replace(bad, "_")
    return name


@dataclass
class ClipResult:
    """One rendered TR as it reaches the outputs.

    Attributes
    ----------
    tr
        The stimulus TR the clip reconstructs.
    source_tr
        The newest volume it was decoded from.
    clip
        (F, H, W, 3) uint8 frames.
    conditions
        The decoded conditions.
    stamps
        Stage-boundary timestamps (LSL clock) of ``source_tr``.
    """

    tr: int
    source_tr: int
    clip: np.ndarray
    conditions: Conditions
    stamps: dict[str, float]


class Output:
    """Base class of the engine's outputs (every hook optional, none may block)."""

    name = "output"

    def start(self, engine: Engine) -> None:
        """Called once the stream's geometry is known and the record is open."""

    def preprocessed(self, tr: int, result: Preprocessed, status: dict[str, Any]) -> None:
        """Called for every preprocessed TR with its health summary."""

    def decoded(self, conditions: Conditions) -> None:
        """Called for every decoded TR (before rendering, which may drop it under load)."""

    def clip(self, result: ClipResult) -> None:
        """Called for every rendered clip."""

    def event(self, event: Event) -> None:
        """Called for every reported event."""

    def close(self) -> None:
        """Called at shutdown."""
