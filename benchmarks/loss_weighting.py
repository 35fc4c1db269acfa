"""Which loss weighting across the decoder's sub-tasks? Measured on held-out training data.

Trains the decoder of one subject three times — ``uniform``, ``progressive`` (NEURONS) and
``uncertainty`` (Kendall et al.) weighting, same steps and seed — on the training runs minus the
last training segment, and scores every sub-task on that held-out segment (repeats averaged).
The test set is not touched. Writes ``benchmarks/results/loss_weighting.json``.

    .venv/bin/python benchmarks/loss_weighting.py --subject sub-01 --steps 3000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from rtdecode.models.text import WordTokenizer
from rtdecode.train.decoders import DecodersConfig, prepare, train_decoder
from rtdecode.train.evaluate import load_stimulus_models
from rtdecode.train.targets import compute_targets
from scanner_sim import stimuli


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=Path("data/cc2017"))
    ap.add_argument("--subject", default="sub-01")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--encoders", type=Path, default=Path("engines/default"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loss_weighting.json")
    args = ap.parse_args()
    models, digest = load_stimulus_models(args.encoders)
    tokenizer = WordTokenizer(stimuli.caption_vocabulary())
    targets = compute_targets(args.dataset, models, digest, tokenizer, 24)
    base = DecodersConfig(dataset=args.dataset, subject=args.subject, steps=args.steps, out=args.encoders)
    prep, select = prepare(base)
    results = {}
    for weighting in ("uniform", "progressive", "uncertainty"):
        t0 = time.time()
        cfg = replace(base, weighting=weighting)
        # its own checkpoints: neither the subject's real decoder nor another weighting's
        run = train_decoder(
            cfg,
            targets,
            tokenizer,
            targets.image_emb.shape[1],
            prep,
            select,
            validation=True,
            tag=f"-validation-{weighting}",
        )
        results[weighting] = {**run.metrics, "seconds": time.time() - t0}
        print(weighting, json.dumps(run.metrics, default=float))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"subject": args.subject, "steps": args.steps, "results": results}, indent=1, default=float
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
