"""How much of the n-way scores is the evaluation classifiers' fixed profile for blurred input?

The n-way protocol (MinD-Video: the ground truth's top-3 classes, a trial succeeds if any of
them outscores the distractors) gives a score profile unrelated to the truth about 0.75 at 2-way
and 3/52 at 50-way. On the held-out training segment of one subject (repeats averaged, as
``decoder_pixels.py``; the test set is not touched) this scores, per method (the decoders' blurry
pixels, ridge, the constant mean training clip) and per classifier (frame, video):

- the method's own n-way accuracy (exact expectation over distractor sets: no sampling noise);
- the same with the method's *average* profile given to every sample: what the blur's fixed
  profile scores, with no per-sample information at all;
- a random profile per sample (chance, measured).

Results go to ``benchmarks/results/class_profile.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/class_profile.py --subject sub-01
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import held_out
import numpy as np

from rtdecode.metrics.semantic import n_way_accuracy
from rtdecode.train.evaluate import pixel_clips
from scanner_sim.dataset import Dataset

WAYS = (2, 50)


def scores(probs_pred: np.ndarray, probs_true: np.ndarray) -> dict[str, float]:
    """Own, average-profile and random-profile n-way accuracies (exact expectations)."""
    mean = np.broadcast_to(probs_pred.mean(0), probs_pred.shape)
    rand = np.random.default_rng(0).random(probs_pred.shape)
    out = {}
    for n in WAYS:
        out[f"{n}way"] = n_way_accuracy(probs_pred, probs_true, n, exact=True).mean
        out[f"{n}way_average_profile"] = n_way_accuracy(mean, probs_true, n, exact=True).mean
        out[f"{n}way_random_profile"] = n_way_accuracy(rand, probs_true, n, exact=True).mean
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    held_out.add_arguments(ap)
    ap.add_argument("--tag", default="-val-sepavg", help="the validation decoder's checkpoint tag")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "class_profile.json")
    args = ap.parse_args()
    setup = held_out.load(args)
    frame_cls, video_cls, _ = setup.scorers
    run = held_out.validation_decoder(setup, args.tag)
    with Dataset(args.dataset) as ds:
        seg = held_out.segment(setup, ds)
        recon = {
            "decoders' pixels": pixel_clips(run.test_outputs["pixels"], ds.config.stimulus.size),
            "ridge": seg.ridge(),
            "constant": seg.constant(),
        }
    truth = seg.truth
    true_probs = {"frame": frame_cls(truth.reshape(-1, *truth.shape[2:])), "video": video_cls(truth)}
    results = {}
    for name, clips in recon.items():
        clips = np.ascontiguousarray(clips, np.float32)
        pred = {"frame": frame_cls(clips.reshape(-1, *clips.shape[2:])), "video": video_cls(clips)}
        for kind in ("frame", "video"):
            results[f"{args.subject} {name} {kind}"] = row = scores(pred[kind], true_probs[kind])
            line = " ".join(f"{k} {v:.3f}" for k, v in row.items())
            print(f"{args.subject} {name} {kind}: {line}", flush=True)
    held_out.save_results(args.out, results, held_out_trs=len(seg.index), decoder=args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
