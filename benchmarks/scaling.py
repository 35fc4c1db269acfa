"""How the per-TR cost grows: voxels, frames, resolution, sampler steps, backend, models, fusion.

A thin wrapper of ``rtdecode bench scaling`` (see ``rtdecode/bench.py``): writes
``benchmarks/results/scaling/scaling.json`` and ``scaling.png`` with the fitted log-log slopes
and the headroom report (shortest TR, largest voxel count at TR 2 s and 1 s):

    .venv/bin/python benchmarks/scaling.py
"""

from __future__ import annotations

import sys

from rtdecode.bench import main

if __name__ == "__main__":
    sys.exit(main(["scaling", *sys.argv[1:]]))
