"""Which loss for the decoder's blurry pixels? Measured on held-out training data, against ridge.

Trains one validation decoder per variant (training runs minus the last training segment, same
steps and seed; each variant overrides ``DecodersConfig`` fields, e.g. ``perceptual=2`` or
``ssim=1``) and fits the ridge baseline on the same runs; scores the pixel output of each and
ridge's reconstruction on the held-out segment (repeats averaged) with the evaluation table's
metrics. The test set is not touched. Checkpoints are resumable (``--checkpoints``); results go
to ``benchmarks/results/decoder_pixels.json`` (rows merge with the file's earlier ones).

    .venv/bin/python benchmarks/decoder_pixels.py --subject sub-01 --variants mse= feature=perceptual=2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

import held_out
import numpy as np

from rtdecode.metrics.table import evaluate_clips
from rtdecode.train.decoders import DecodersConfig
from rtdecode.train.evaluate import pixel_clips
from scanner_sim.dataset import Dataset

COLUMNS = ("video_2way", "video_50way", "frame_2way", "frame_50way", "ident_2way", "ident_50way", "ssim_gray")


def parse_variant(text: str) -> tuple[str, dict]:
    """``name=field=value,field=value`` (or ``name=`` for the defaults) → name and overrides."""
    name, _, spec = text.partition("=")
    types = {f.name: f.type for f in fields(DecodersConfig)}
    overrides = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"unknown DecodersConfig field {key!r} in variant {text!r}")
        if types[key] in ("float", float):
            overrides[key] = float(value)
        elif types[key] in ("int", int):
            overrides[key] = int(value)
        elif types[key] in ("bool", bool):
            overrides[key] = value.lower() in ("1", "true", "yes")
        else:
            overrides[key] = value
    return name, overrides


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    held_out.add_arguments(ap)
    ap.add_argument("--variants", nargs="+", default=["mse="], help="name=field=value,...")
    ap.add_argument("--no-ridge", action="store_true", help="skip the ridge row")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decoder_pixels.json")
    args = ap.parse_args()
    setup = held_out.load(args)
    frame_cls, video_cls, embed = setup.scorers
    results = {}
    with Dataset(args.dataset) as ds:  # open throughout: ridge reads the stimulus frames
        seg = held_out.segment(setup, ds)
        size = ds.config.stimulus.size
        recon = {} if args.no_ridge else {"ridge": seg.ridge}
        for text in args.variants:
            name, overrides = parse_variant(text)

            def decode(name=name, overrides=overrides):
                # its own checkpoints: neither the subject's real decoder nor another variant's
                run = held_out.validation_decoder(setup, f"-val-{name}", **overrides)
                return pixel_clips(run.test_outputs["pixels"], size)

            recon[f"decoder {name} {json.dumps(overrides)}"] = decode
        for name, make in recon.items():
            t0 = time.time()
            row = evaluate_clips(make().astype(np.float32), seg.truth, frame_cls, video_cls, embed, rng=0)
            results[f"{args.subject} {name}"] = {k: row[k] for k in COLUMNS} | {"seconds": time.time() - t0}
            print(f"{args.subject} {name}: " + " ".join(f"{k} {row[k]:.3f}" for k in COLUMNS), flush=True)
    held_out.save_results(args.out, results, steps=args.steps, held_out_trs=len(seg.index))
    return 0


if __name__ == "__main__":
    sys.exit(main())
