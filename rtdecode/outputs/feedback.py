"""The neurofeedback signal: one LSL sample per decoded TR (and the score MQTT publishes).

Stream: type ``Feedback``, ``float32``, irregular rate (a TR can be dropped), channel 0 the
scalar feedback score, channels ``1..C`` the concept probabilities over the bundle's
vocabulary (zeros when the decoder gives none). Each sample carries the acquisition timestamp
of the newest volume it was decoded from, so LabRecorder lines it up with the scanner stream.

Scores (``FeedbackConfig.score``)
---------------------------------
``similarity`` (default)
    Pearson correlation between this TR's blurry reconstruction and the previous decoded
    TR's (the semantic embedding when a bundle has no blurry output); 0 for the first TR.
    High while the decoded scene is stable, low at decoded scene changes.
``concept:<name>``
    The decoded probability of one concept of the vocabulary. Falls back to ``similarity``
    (with one warning) while the bundle decodes no concepts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pylsl

from rtdecode.conditions import Conditions
from rtdecode.outputs import Output, session_name

if TYPE_CHECKING:
    from rtdecode.pipeline import Engine

__all__ = ["FEEDBACK_STREAM_TYPE", "FeedbackConfig", "FeedbackOutlet", "FeedbackScore"]

log = logging.getLogger("rtdecode.outputs.feedback")

FEEDBACK_STREAM_TYPE = "Feedback"


@dataclass(frozen=True)
class FeedbackConfig:
    """Settings of the LSL feedback outlet (``rtdecode run --feedback``)."""

    enabled: bool = field(default=False, metadata={"help": "publish the LSL feedback stream"})
    name: str = field(default="rtdecode_feedback", metadata={"help": "LSL stream name"})
    score: str = field(default="similarity", metadata={"help": "'similarity' or 'concept:<name>'"})
    session: str = field(default="", metadata={"help": "session id (default: the record's directory name)"})
    source_id: str = field(
        default="", metadata={"help": "LSL source id (default: rtdecode-feedback-<session>)"}
    )


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


class FeedbackScore:
    """Turns each TR's conditions into the scalar feedback score and the concept vector.

    Parameters
    ----------
    spec
        ``"similarity"`` or ``"concept:<name>"`` (see the module docstring).
    vocabulary
        The bundle's concept names.

    Raises
    ------
    ValueError
        If ``spec`` is unknown or names a concept outside the vocabulary.
    """

    def __init__(self, spec: str, vocabulary: Sequence[str]) -> None:
        self.spec = spec
        self.vocabulary = list(vocabulary)
        self.concept: int | None = None
        if spec.startswith("concept:"):
            name = spec.split(":", 1)[1]
            if name not in self.vocabulary:
                raise ValueError(
                    f"feedback score {spec!r}: {name!r} is not in the bundle's vocabulary "
                    f"({', '.join(self.vocabulary[:6])}, ...)"
                )
            self.concept = self.vocabulary.index(name)
        elif spec != "similarity":
            raise ValueError(f"unknown feedback score {spec!r}: use 'similarity' or 'concept:<name>'")
        self.previous: np.ndarray | None = None
        self.warned = False

    def concepts(self, cond: Conditions) -> np.ndarray:
        """Concept probabilities as ``float32`` of the vocabulary's length (zeros if none)."""
        out = np.zeros(len(self.vocabulary), np.float32)
        if cond.concepts is not None:
            p = np.asarray(cond.concepts, np.float32).ravel()[: len(out)]
            out[: len(p)] = p
        return out

    def __call__(self, cond: Conditions) -> float:
        """The score of one decoded TR (call once per TR, in order)."""
        current = cond.blurry if cond.blurry is not None else cond.semantic
        similarity = (
            _pearson(current, self.previous) if current is not None and self.previous is not None else 0.0
        )
        if current is not None:
            self.previous = np.array(current, np.float32)
        if self.concept is None:
            return similarity
        if cond.concepts is None:
            if not self.warned:
                log.warning("feedback score %s: the decoder gives no concepts; using similarity", self.spec)
                self.warned = True
            return similarity
        return float(self.concepts(cond)[self.concept])


class FeedbackOutlet(Output):
    """LSL outlet of per-TR decoded values (see the module docstring).

    Parameters
    ----------
    config
        Stream name, score, session and source id.
    vocabulary
        The bundle's concept names. When given together with a session or source id, the
        outlet opens at once, so stimulus software can connect before the scan starts;
        otherwise it opens when the engine starts (the record's name is then known).
    """

    name = "feedback"

    def __init__(
        self, config: FeedbackConfig = FeedbackConfig(), vocabulary: Sequence[str] | None = None
    ) -> None:
        self.cfg = config
        self.outlet: pylsl.StreamOutlet | None = None
        self.score: FeedbackScore | None = None
        self.sent = 0
        if vocabulary is not None:
            FeedbackScore(config.score, vocabulary)  # a bad score spec fails before the run
            if config.source_id or config.session:
                self._open(vocabulary, config.session or config.source_id)

    def _open(self, vocabulary: Sequence[str], session: str) -> None:
        self.score = FeedbackScore(self.cfg.score, vocabulary)
        source_id = self.cfg.source_id or f"rtdecode-feedback-{session}"
        info = pylsl.StreamInfo(
            self.cfg.name,
            FEEDBACK_STREAM_TYPE,
            1 + len(vocabulary),
            pylsl.IRREGULAR_RATE,
            pylsl.cf_float32,
            source_id,
        )
        desc = info.desc()
        desc.append_child_value("session", session)
        desc.append_child_value("score", self.cfg.score)
        desc.append_child_value("timestamp", "acquisition of the newest volume decoded")
        channels = desc.append_child("channels")
        for label, kind in [(f"score:{self.cfg.score}", "score")] + [(v, "probability") for v in vocabulary]:
            ch = channels.append_child("channel")
            ch.append_child_value("label", label)
            ch.append_child_value("type", kind)
            ch.append_child_value("unit", "a.u." if kind == "score" else "probability")
        self.outlet = pylsl.StreamOutlet(info, chunk_size=1, max_buffered=600)
        log.info(
            "feedback stream %r (source id %s): %d channels", self.cfg.name, source_id, 1 + len(vocabulary)
        )

    def start(self, engine: Engine) -> None:
        vocabulary = engine.bundle.manifest.get("vocabulary", [])
        if self.outlet is None:
            self._open(vocabulary, session_name(engine, self.cfg.session))
        elif list(vocabulary) != self.score.vocabulary:
            raise ValueError(
                "the feedback outlet was opened with another vocabulary than the engine's bundle"
            )

    def decoded(self, conditions: Conditions) -> None:
        if self.outlet is None:
            return
        sample = np.empty(1 + len(self.score.vocabulary), np.float32)
        sample[0] = self.score(conditions)
        sample[1:] = self.score.concepts(conditions)
        stamp = conditions.stamps.get("acquired", 0.0)
        # push_sample copies into liblsl's buffer and returns: it never waits for a consumer.
        self.outlet.push_sample(sample, stamp)
        self.sent += 1

    def close(self) -> None:
        self.outlet = None
