"""Shared setup of the held-out-segment benchmarks (``decoder_pixels.py``, ``render_blend.py``).

Design choices are measured on the last training segment of one subject (repeats averaged),
never on the test set: the stimulus models and targets of the bundle's encoders, the subject's
prepared data, and the held-out segment's inputs and ground truth.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rtdecode.models.text import WordTokenizer
from rtdecode.train.decoders import DecoderData, DecodersConfig, _splits, prepare
from rtdecode.train.evaluate import _ground_truth, _ridge_recon, load_stimulus_models, scorers
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


@dataclass
class Segment:
    """The held-out segment: its ground truth (N, F, H, W, 3) in [0, 1] and what ridge makes of it."""

    index: np.ndarray
    truth: np.ndarray
    ridge: Callable[[], np.ndarray]  # fitting ridge takes minutes: only when asked


def segment(setup: Setup, ds) -> Segment:
    """The held-out segment of an open dataset ``ds`` (keep it open while ``ridge`` is called)."""
    data = DecoderData(
        setup.prep, ds.runs, ds.config.segment_trs, setup.select, setup.base.lags, setup.base.warmup
    )
    fit, val, _ = _splits(ds.runs)
    x_val, index = data.averaged(val)
    truth = _ground_truth(ds, index).astype(np.float32) / 255
    return Segment(index, truth, lambda: _ridge_recon(data, ds, data.samples(fit), x_val).astype(np.float32))
