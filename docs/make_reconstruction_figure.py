"""Draw ``docs/reconstruction.png``: stimulus, blurry decode and final reconstruction.

Held-out test TRs of the bundle's subject (fMRI averaged over the test repeats, as in the
evaluation table), decoded by the bundle and rendered twice: the decoded blurry video through
the autoencoder, and the final clip of the bundle's diffusion student. Each cell shows four of
the TR's 16 frames.

Usage::

    .venv/bin/python docs/make_reconstruction_figure.py [--bundle engines/default]
        [--dataset data/cc2017] [--out docs/reconstruction.png] [--n 4]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Render the figure; returns 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtdecode.bundle import load_bundle
    from rtdecode.decode import load_decoder
    from rtdecode.render import LatentRenderer, load_renderer
    from rtdecode.train.decoders import DecoderData, DecodersConfig, _splits, prepare
    from rtdecode.train.evaluate import _ground_truth
    from rtdecode.train.evaluate_render import decoded_conditions
    from scanner_sim.dataset import Dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=Path("engines/default"))
    p.add_argument("--dataset", type=Path, default=Path("data/cc2017"))
    p.add_argument("--out", type=Path, default=Path("docs/reconstruction.png"))
    p.add_argument("--n", type=int, default=4, help="test TRs shown")
    args = p.parse_args(argv)

    bundle = load_bundle(args.bundle)
    if bundle.kind != "neurons":
        raise SystemExit(f"{args.bundle} is a {bundle.kind} bundle; the figure needs a neurons bundle")
    decoder = load_decoder(bundle)
    final = load_renderer(bundle)
    blurry = load_renderer(bundle, "blurry")
    assert isinstance(blurry, LatentRenderer)
    m = bundle.manifest
    cfg = replace(
        DecodersConfig(),
        dataset=args.dataset,
        subject=m["subject"],
        lags=tuple(m["lags"]),
        n_voxels=m["training"]["n_voxels"],
    )
    prep, select = prepare(cfg, progress=False)
    with Dataset(args.dataset) as ds:
        data = DecoderData(prep, ds.runs, ds.config.segment_trs, select, cfg.lags, cfg.warmup)
        x_test, test_index = data.averaged(_splits(ds.runs)[2])
        rows = np.linspace(0, len(test_index) - 1, args.n).astype(int)
        truth = _ground_truth(ds, test_index[rows])
    outputs = decoder.outputs(x_test[rows])
    conds = decoded_conditions(outputs, test_index[rows], np.arange(len(rows)))
    clips = {
        "stimulus": list(truth),
        "blurry decode": [blurry.render(c) for c in conds],
        "rtdecode (student, 2 steps)": [final.render(c) for c in conds],
    }
    pick = [0, 5, 10, 15]
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 1.35 * len(rows) + 0.5))
    for j, (name, cs) in enumerate(clips.items()):
        for i, clip in enumerate(cs):
            ax = axes[i, j]
            ax.imshow(np.concatenate([clip[k] for k in pick], axis=1))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=10)
            if j == 0:
                ax.set_ylabel(f"TR {conds[i].tr}", fontsize=8)
            if j == 2:
                ax.set_xlabel(f"decoded caption: {conds[i].caption or '—'}", fontsize=7)
    fig.suptitle(f"held-out test TRs, {m['subject']} (frames 1, 6, 11, 16 of each TR)", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
