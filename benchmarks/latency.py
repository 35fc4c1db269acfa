"""Engine-added latency over the real path: simulator → LSL → engine → outputs.

A thin wrapper of ``rtdecode bench latency`` (see ``rtdecode/bench.py``): streams N TRs from
``scanner-sim stream`` in a child process, reads the session record's per-TR stage timestamps
and writes ``benchmarks/results/latency/latency-tr<TR>.json`` plus three plots. The acceptance
runs of issue 8 (the second one is expected to drop renders, newest wins):

    .venv/bin/python benchmarks/latency.py --tr 1.0 --n-tr 300
    .venv/bin/python benchmarks/latency.py --tr 0.5 --n-tr 300
"""

from __future__ import annotations

import sys

from rtdecode.bench import main

if __name__ == "__main__":
    sys.exit(main(["latency", *sys.argv[1:]]))
