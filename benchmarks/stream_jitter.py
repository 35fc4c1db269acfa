"""Does `scanner-sim stream` hold its clock? Inter-sample interval jitter at the receiver.

Streams full 64×64×32 volumes (131,072 voxels, float32) at TR = 2 s from one process and
receives them with a plain pylsl inlet in another; prints the p50/p95/p99/max absolute
deviation of the arrival intervals from the TR (the acceptance bound: p99 < 5 ms), and the
same for the sender's push times (from the simulator's sent log) to show where jitter arises.

    .venv/bin/python benchmarks/stream_jitter.py --n-tr 60
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pylsl


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-tr", type=int, default=60)
    ap.add_argument("--tr", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stream_jitter.json")
    args = ap.parse_args()
    sid = f"jitter-{uuid.uuid4().hex[:8]}"
    sent_log = Path(tempfile.mkdtemp()) / "sent.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scanner_sim.cli",
            "stream",
            "--n-tr",
            str(args.n_tr),
            "--scanner.tr",
            str(args.tr),
            "--source-id",
            sid,
            "--no-stimulus-stream",
            "--sent-log",
            str(sent_log),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        info = pylsl.resolve_bypred(f"source_id='{sid}'", 1, 60)[0]
        inlet = pylsl.StreamInlet(info, max_buflen=60, recover=False)
        buf = np.empty((1, info.channel_count()), np.float32)
        arrivals = []
        while len(arrivals) < args.n_tr:
            _, ts = inlet.pull_chunk(timeout=args.tr * 3, max_samples=1, dest_obj=buf)
            if ts:
                arrivals.append(pylsl.local_clock())
            elif proc.poll() is not None:
                break
        proc.wait(30)
    finally:
        proc.kill()
    jitter = np.abs(np.diff(arrivals) - args.tr) * 1e3
    pushed = [json.loads(line)["pushed"] for line in sent_log.read_text().splitlines()]
    push_jitter = np.abs(np.diff(pushed) - args.tr) * 1e3
    q = {f"p{p}": float(np.percentile(jitter, p)) for p in (50, 95, 99)}
    qp = {f"push_p{p}_ms": float(np.percentile(push_jitter, p)) for p in (50, 95, 99)}
    result = {
        "benchmark": "stream_jitter",
        "voxels": int(info.channel_count()),
        "tr_s": args.tr,
        "intervals": len(jitter),
        **{f"{k}_ms": v for k, v in q.items()},
        "max_ms": float(jitter.max()),
        **qp,
        "push_max_ms": float(push_jitter.max()),
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "cpus": __import__("os").cpu_count(),
        "python": platform.python_version(),
    }
    print(
        f"{len(jitter)} intervals at TR {args.tr:g} s, {info.channel_count()} voxels: "
        f"jitter p50 {q['p50']:.2f} ms, p95 {q['p95']:.2f} ms, p99 {q['p99']:.2f} ms, "
        f"max {jitter.max():.2f} ms  (bound: p99 < 5 ms)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0 if q["p99"] < 5.0 else 1


if __name__ == "__main__":
    sys.exit(main())
