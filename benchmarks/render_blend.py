"""Can the rendered clip keep the blurry decode's pixel fidelity? Measured on held-out training data.

The renderer's clips identify the stimulus better than ridge but score lower SSIM, hue and EPE
(smoothness-rewarding columns). This scores post-hoc mixes of the student's clip with the
decoder's blurry pixels on the last training segment (repeats averaged; the test set is not
touched): a blend ``(1 - a) · render + a · pixels`` and a low-frequency swap
``render + G_σ * (pixels - render)`` (the render's detail over the blurry decode's coarse
structure), beside ridge. Uses the validation decoder of ``decoder_pixels.py``'s "mse" row
(``DECODER``; ``decoder-<subject>-val-mse`` under ``--checkpoints``; trained if missing) and the bundle's
fusion threshold. Results go to ``benchmarks/results/render_blend.json``.

    .venv/bin/python benchmarks/render_blend.py --subject sub-01
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import held_out
import numpy as np

from rtdecode.bundle import load_bundle
from rtdecode.fuse import FusionConfig
from rtdecode.metrics.table import evaluate_clips
from rtdecode.render import load_renderer
from rtdecode.train.evaluate import pixel_clips
from rtdecode.train.evaluate_render import decoded_conditions, render_clips
from scanner_sim.dataset import Dataset

COLUMNS = (
    "ident_2way",
    "ident_50way",
    "frame_2way",
    "video_2way",
    "clip_sim",
    "ssim_gray",
    "psnr",
    "hue",
    "epe",
)


# The decoder the committed results used: the defaults before 2026-12-03 (checkpoint ``-val-mse``,
# ``decoder_pixels.py``'s "mse" row), pinned so that a later change of defaults cannot reuse the name.
DECODER = {"lag_features": "mixed", "average_repeats": 0.0}


def low_pass(clips: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of every frame of ``(N, F, H, W, 3)`` float clips."""
    return np.stack([np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in c]) for c in clips])


def mixes(render: np.ndarray, pixels: np.ndarray, blends, sigmas) -> dict[str, np.ndarray]:
    """The render, the blurry pixels and their blends / low-frequency swaps, all in [0, 1]."""
    out = {"render": render, "blurry pixels": pixels}
    for a in blends:
        out[f"blend a={a:g}"] = (1 - a) * render + a * pixels
    for s in sigmas:
        out[f"low-frequency swap sigma={s:g}"] = np.clip(render + low_pass(pixels - render, s), 0, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    held_out.add_arguments(ap)
    ap.add_argument("--blends", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "render_blend.json")
    args = ap.parse_args()
    setup = held_out.load(args)
    run = held_out.validation_decoder(setup, "-val-mse", **DECODER)
    with Dataset(args.dataset) as ds:
        seg = held_out.segment(setup, ds)
        ridge = seg.ridge()
    bundle = load_bundle(args.encoders)  # the student and fusion threshold the engine would use
    conds = decoded_conditions(run.test_outputs, run.test_index, np.arange(len(run.test_index)))
    fusion = bundle.manifest["fusion"]["threshold"]
    rendered, _, _ = render_clips(load_renderer(bundle, "student"), conds, FusionConfig(), fusion)
    render = rendered.astype(np.float32) / 255
    pixels = pixel_clips(run.test_outputs["pixels"], render.shape[2:4])
    frame_cls, video_cls, embed = setup.scorers
    results = {}
    clips = {"ridge": ridge, **mixes(render, pixels.astype(np.float32), args.blends, args.sigmas)}
    for name, clip in clips.items():
        row = evaluate_clips(clip, seg.truth, frame_cls, video_cls, embed, rng=0)
        results[f"{args.subject} {name}"] = {k: row[k] for k in COLUMNS}
        print(f"{args.subject} {name}: " + " ".join(f"{k} {row[k]:.3f}" for k in COLUMNS), flush=True)
    doc = {
        "results": results,
        "command": " ".join(sys.argv),
        "held_out_trs": len(seg.index),
        "steps": args.steps,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
