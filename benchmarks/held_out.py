"""Shared setup of the held-out-segment benchmarks (``decoder_pixels.py``, ``render_blend.py``,
``class_profile.py``).

Design choices are measured on the last training segment of one subject (repeats averaged),
never on the test set: the stimulus models and targets of the bundle's encoders, the subject's
prepared data, and the held-out segment's inputs and ground truth.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rtdecode.models.text import WordTokenizer
from rtdecode.train.decoders import DecoderData, DecoderRun, DecodersConfig, _splits, prepare, train_decoder
from rtdecode.train.evaluate import (
    _constant_recon,
    _ground_truth,
    _ridge_recon,
    load_stimulus_models,
    scorers,
)
from rtdecode.train.targets import compute_targets
from scanner_sim import stimuli


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The data, subject, encoders and checkpoint options every held-out benchmark takes."""
    ap.add_argument("--dataset", type=Path, default=Path("data/cc2017"))
    ap.add_argument("--subject", default="sub-01")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--encoders", type=Path, default=Path("engines/default"))
    ap.add_argument("--checkpoints", type=Path, default=Path("/tmp/evalck"), help="decoder checkpoints root")


@dataclass
class Setup:
    """Models, targets and prepared data of one subject (see :func:`load`)."""

    models: dict
    tokenizer: WordTokenizer
    targets: object
    base: DecodersConfig
    prep: object
    select: np.ndarray
    scorers: tuple


def load(args: argparse.Namespace) -> Setup:
    """Stimulus models, targets, the default decoder config and the subject's prepared data."""
    models, digest = load_stimulus_models(args.encoders)
    tokenizer = WordTokenizer(stimuli.caption_vocabulary())
    targets = compute_targets(args.dataset, models, digest, tokenizer, 24, False)
    base = DecodersConfig(dataset=args.dataset, subject=args.subject, steps=args.steps)
    base = replace(base, encoders=args.encoders, out=args.checkpoints)
    prep, select = prepare(base, False)
    return Setup(models, tokenizer, targets, base, prep, select, scorers(models))


def validation_decoder(setup: Setup, tag: str, **overrides) -> DecoderRun:
    """The decoder trained without the held-out segment (``overrides`` change ``setup.base``), under
    its own checkpoints ``decoder-<subject><tag>`` (resumed if there), its outputs on the segment."""
    cfg = replace(setup.base, **overrides)
    dim = setup.targets.image_emb.shape[1]
    return train_decoder(cfg, setup.targets, setup.tokenizer, dim, setup.prep, setup.select, True, True, tag)


def save_results(path: Path, results: dict, **meta) -> None:
    """Merge ``results`` into the JSON at ``path`` (read just before writing: runs for other
    subjects may have finished meanwhile), append this command line, set ``meta``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(path.read_text()) if path.exists() else {"results": {}, "commands": []}
    doc["results"].update(results)
    doc["commands"] = [*doc.get("commands", []), " ".join(sys.argv)]
    doc.update(meta)
    path.write_text(json.dumps(doc, indent=1, default=float))


@dataclass
class Segment:
    """The held-out segment: its ground truth (N, F, H, W, 3) in [0, 1] and, each computed only
    when called, what ridge makes of it (fitting takes minutes) and the constant mean training clip."""

    index: np.ndarray
    truth: np.ndarray
    ridge: Callable[[], np.ndarray]
    constant: Callable[[], np.ndarray]


def segment(setup: Setup, ds) -> Segment:
    """The held-out segment of an open dataset ``ds`` (keep it open while ``ridge`` is called)."""
    data = DecoderData(
        setup.prep, ds.runs, ds.config.segment_trs, setup.select, setup.base.lags, setup.base.warmup
    )
    fit, val, _ = _splits(ds.runs)
    x_val, index = data.averaged(val)
    truth = _ground_truth(ds, index).astype(np.float32) / 255
    fit_samples = data.samples(fit)
    return Segment(
        index,
        truth,
        lambda: _ridge_recon(data, ds, fit_samples, x_val).astype(np.float32),
        lambda: np.array(_constant_recon(data, ds, fit_samples, len(index)), np.float32),
    )
