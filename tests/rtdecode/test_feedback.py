"""The LSL feedback outlet: a plain pylsl inlet gets one sample per decoded TR."""

from __future__ import annotations

import asyncio

import numpy as np
import pylsl
import pytest

from rtdecode.bundle import load_bundle
from rtdecode.conditions import Conditions
from rtdecode.ingest import IngestConfig
from rtdecode.outputs import Output
from rtdecode.outputs.feedback import FEEDBACK_STREAM_TYPE, FeedbackConfig, FeedbackOutlet, FeedbackScore
from rtdecode.pipeline import Engine, EngineConfig
from tests.conftest import spawn


class Clips(Output):
    def __init__(self):
        self.stamps = {}

    def clip(self, result):
        self.stamps[result.tr] = result.stamps["acquired"]


@pytest.mark.timeout(180)  # includes building tiny_bundle when first
def test_plain_inlet_gets_one_sample_per_decoded_tr(tiny_bundle, source_id, tmp_path):
    vocabulary = load_bundle(tiny_bundle).manifest["vocabulary"]
    # Opened before the run (a session id is given), so the inlet connects before the scan starts.
    outlet = FeedbackOutlet(FeedbackConfig(enabled=True, source_id=f"{source_id}-fb"), vocabulary=vocabulary)
    (info,) = pylsl.resolve_bypred(f"source_id='{source_id}-fb'", 1, 10.0)
    inlet = pylsl.StreamInlet(info, max_buflen=60)
    inlet.open_stream(10.0)
    full = inlet.info(5.0)
    assert full.type() == FEEDBACK_STREAM_TYPE and full.channel_count() == 1 + len(vocabulary)
    ch = full.desc().child("channels").first_child()
    labels = []
    while not ch.empty():
        labels.append(ch.child_value("label"))
        ch = ch.next_sibling()
    assert labels == ["score:similarity", *vocabulary]

    sim = spawn("scanner_sim.cli", "stream", "--n-tr", "20", "--speed", "10", "--source-id", source_id)
    clips = Clips()
    cfg = EngineConfig(
        bundle=tiny_bundle,
        sessions=tmp_path / "sessions",
        log_every=0,
        ingest=IngestConfig(source_id=source_id, max_trs=20, lost_timeout_s=10.0),
    )
    try:
        summary = asyncio.run(Engine(cfg, [outlet, clips]).run())
        assert sim.wait(30) == 0
    finally:
        sim.kill()
    samples, stamps = [], []
    while len(samples) < summary["clips"]:
        data, ts = inlet.pull_chunk(timeout=2.0)
        if not ts:
            break
        samples += data
        stamps += ts
    assert summary["clips"] >= 14 and len(samples) == summary["clips"] == outlet.sent
    data = np.array(samples, np.float32)
    assert data.shape == (summary["clips"], 1 + len(vocabulary))
    # stamped with each source volume's acquisition time: lines up with the scanner stream
    assert np.allclose(stamps, [clips.stamps[tr] for tr in sorted(clips.stamps)], atol=1e-6)
    assert data[0, 0] == 0.0 and np.all(np.abs(data[1:, 0]) <= 1.0) and np.ptp(data[1:, 0]) > 0
    assert not data[:, 1:].any()  # the ridge decoder gives no concepts: zeros


def test_scores():
    vocab = ["dog", "cat"]
    a = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)
    sim = FeedbackScore("similarity", vocab)
    assert sim(Conditions(0, 3, blurry=a)) == 0.0  # nothing to compare with yet
    assert sim(Conditions(1, 4, blurry=a)) == pytest.approx(1.0)
    assert sim(Conditions(2, 5, blurry=1 - a)) == pytest.approx(-1.0)
    cat = FeedbackScore("concept:cat", vocab)
    assert cat(Conditions(0, 3, blurry=a, concepts=np.array([0.2, 0.7]))) == pytest.approx(0.7)
    assert cat(Conditions(1, 4, blurry=a)) == pytest.approx(1.0)  # no concepts: falls back to similarity
    assert list(cat.concepts(Conditions(1, 4))) == [0.0, 0.0]
    with pytest.raises(ValueError, match="not in the bundle's vocabulary"):
        FeedbackScore("concept:cow", vocab)
    with pytest.raises(ValueError, match="unknown feedback score"):
        FeedbackScore("loudness", vocab)
