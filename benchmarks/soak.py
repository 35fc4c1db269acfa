"""Soak: hours of simulated scanning, faster than real time, with random faults.

`scanner-sim stream` (a child process) plays ``--hours`` of scanning at TR 2 s, ``--speed``
times faster than real time, with random faults from its fault flags (dropped, delayed,
duplicated, NaN and truncated volumes, outlet restarts; rates per simulated hour); the engine
runs in this process with the given bundle and no outputs, as ``rtdecode run`` would. Reports:

* duration (wall and simulated), TRs sent / received / recorded / preprocessed / decoded;
* the injected faults (from the simulator's fault log) and how each was reported;
* drops, split into *injected* (the simulator dropped the volume), *designed* (volumes not
  used because a fault made them unusable, newest-wins drops of decoding and rendering, a
  preprocessing queue that overflowed, decode windows that could not be filled) and
  *unexplained* (anything else: the acceptance figure, expected 0);
* memory: the process's RSS sampled every ``--sample-s`` seconds and a least-squares slope in
  MB per simulated hour (and per wall hour) after the warm-up;
* whether every volume sent is in the session record, byte-identical.

Writes ``benchmarks/results/soak.json``. The acceptance run (≈ 6–8 min; on a quiet machine)::

    .venv/bin/python benchmarks/soak.py --hours 2 --speed 20

A quick check of the script itself: ``--hours 0.0833`` (5 simulated minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rtdecode.cli import start_simulator  # noqa: E402
from rtdecode.ingest import IngestConfig  # noqa: E402
from rtdecode.outputs import Output  # noqa: E402
from rtdecode.pipeline import Engine, EngineConfig  # noqa: E402
from rtdecode.record import open_record  # noqa: E402

log = logging.getLogger("soak")

# Faults per simulated hour (at least one of each kind in any run).
RATES = {"drop": 3, "delay": 3, "duplicate": 3, "nan": 3, "wrong_shape": 3, "restart": 1}
MAX_SLOPE_MB_PER_HOUR = 25.0  # the acceptance bound on memory growth


class Progress(Output):
    """Counts what the engine emits (no arrays kept: the soak measures the engine's memory)."""

    name = "soak"

    def __init__(self) -> None:
        self.preprocessed_trs: set[int] = set()
        self.decoded_trs: set[int] = set()
        self.clip_trs: set[int] = set()

    def preprocessed(self, tr, result, status) -> None:
        self.preprocessed_trs.add(tr)

    def decoded(self, conditions) -> None:
        self.decoded_trs.add(conditions.tr)

    def clip(self, result) -> None:
        self.clip_trs.add(result.tr)


class Sampler(threading.Thread):
    """RSS of this process over time, with the TR reached."""

    def __init__(self, engine: Engine, tr: float, every: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.engine, self.tr, self.every = engine, tr, every
        self.samples: list[dict[str, float]] = []
        self.stop = threading.Event()
        self.proc = psutil.Process()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.wait(self.every):
            ingest = getattr(self.engine, "ingest", None)
            last = ingest.clock.last if ingest is not None and ingest.clock is not None else -1
            if last < 0:
                continue
            if ingest.finished.is_set():  # closing (video encoding...) is not growth over time
                return
            self.samples.append(
                {
                    "wall_s": round(time.monotonic() - t0, 2),
                    "tr": last,
                    "sim_h": (last + 1) * self.tr / 3600.0,
                    "rss_mb": self.proc.memory_info().rss / 2**20,
                    "threads": self.proc.num_threads(),
                    "fds": self.proc.num_fds(),
                }
            )


def _slope(x: np.ndarray, y: np.ndarray) -> float | None:
    """Least-squares slope of y over x (None with fewer than 3 points)."""
    if len(x) < 3 or np.ptp(x) <= 0:
        return None
    return float(np.polyfit(x, y, 1)[0])


def _lines(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def analyse(
    summary: dict[str, Any],
    record_path: Path,
    sent: list[dict],
    faults: list[dict],
    progress: Progress,
    lags: tuple[int, ...],
    n_tr: int,
) -> dict[str, Any]:
    """Faults, drops (injected / designed / unexplained) and record completeness of a run."""
    rec = open_record(record_path)
    injected: dict[str, list[int]] = {}
    for f in faults:
        injected.setdefault(f["fault"], []).append(int(f["tr"]))
    inj = {k: set(v) for k, v in injected.items()}
    events: dict[str, list[int]] = summary["events"]
    ev = {k: set(v) for k, v in events.items()}
    unexplained: list[str] = []

    # every volume sent is in the record, byte-identical
    sent_set = Counter((int(s["tr"]), s["sha1"]) for s in sent)
    rec_set = Counter((v.tr, v.sha1) for v in rec.volumes)
    not_recorded = sorted((sent_set - rec_set).elements())
    corrupt = rec.verify()
    unexplained += [f"TR {tr}: sent but not in the record" for tr, _ in not_recorded]
    unexplained += [f"record position {i}: data does not match its checksum" for i in corrupt]

    # TRs that never arrived: exactly the injected drops
    missing = ev.get("missing", set())
    last = max((v.tr for v in rec.volumes), default=-1)
    detectable = {t for t in inj.get("drop", set()) if t < last}  # a drop after the last volume is silent
    unexplained += [
        f"TR {t}: missing but not dropped by the simulator" for t in sorted(missing - inj.get("drop", set()))
    ]
    unexplained += [f"TR {t}: dropped but not reported" for t in sorted(detectable - missing)]

    # volumes not used: each explained by a fault at that TR
    reasons = {
        "bad": inj.get("nan", set()) | inj.get("wrong_shape", set()),
        "duplicate": inj.get("duplicate", set()),
        "out of order": inj.get("delay", set()) | inj.get("restart", set()),
    }
    unused: Counter[str] = Counter()
    for v in rec.volumes:
        if v.usable:
            continue
        why = "out of order" if v.status == "late" else v.status
        unused[why] += 1
        explained = v.tr in reasons.get(why, set())
        if why == "out of order" and not explained:
            # a volume held back by a fault delays the next ones behind it on the wire
            explained = any(0 < v.tr - k <= 3 for k in reasons["out of order"])
        if not explained:
            unexplained.append(f"TR {v.tr}: {v.status} ({v.reason}) without an injected fault")

    # every usable volume was preprocessed, unless the preprocessing queue shed it (reported)
    dropped: dict[str, set[int]] = {}
    for e in rec.events:
        if e.get("kind") == "drop":
            dropped.setdefault(e.get("stage", "?"), set()).add(int(e["tr"]))
    usable = {v.tr for v in rec.volumes if v.usable}
    not_pre = usable - progress.preprocessed_trs - dropped.get("preprocess", set())
    unexplained += [f"TR {t}: usable but not preprocessed and no drop reported" for t in sorted(not_pre)]

    # every stimulus TR was decoded and rendered, or why not was reported: its newest volume
    # was unusable or shed (a reported fault or drop), the window could not be filled
    # (skipped), or decoding / rendering fell behind (newest wins: a drop)
    lag = max(lags)
    no_source = {t - lag for t in set(range(n_tr)) - progress.preprocessed_trs}
    skipped = ev.get("skipped", set())
    for t in sorted(
        set(range(n_tr - lag)) - progress.decoded_trs - no_source - skipped - dropped.get("decode", set())
    ):
        unexplained.append(f"stimulus TR {t}: not decoded and nothing reported")
    for t in sorted(progress.decoded_trs - progress.clip_trs - dropped.get("render", set())):
        unexplained.append(f"stimulus TR {t}: decoded, no clip and no drop reported")

    designed = {
        "unusable_volumes": dict(unused),
        "engine_drops": summary["drops"],
        "decode_skipped": len(events.get("skipped", [])),
        "degraded_windows": sum(1 for c in rec.conditions() if c.get("degraded")),
    }
    return {
        "record": {
            "path": str(record_path),
            "status": rec.status,
            "volumes": len(rec.volumes),
            "sent": len(sent),
            "every_volume_recorded": not not_recorded and not corrupt,
            "not_recorded": len(not_recorded),
            "checksum_mismatches": len(corrupt),
        },
        "injected_faults": {k: sorted(v) for k, v in injected.items()},
        "reported_events": {k: len(v) for k, v in events.items()},
        "drops": {
            "injected": sorted(inj.get("drop", set())),
            "designed": designed,
            "unexplained": len(unexplained),
            "unexplained_detail": unexplained[:50],
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=2.0, help="simulated hours (TR 2 s)")
    ap.add_argument("--speed", type=float, default=20.0, help="times faster than real time")
    ap.add_argument("--bundle", type=Path, default=ROOT / "engines" / "default")
    ap.add_argument("--renderer", default="", help="the engine's --renderer (default: the engine's default)")
    ap.add_argument("--seed", type=int, default=0, help="fault placement")
    ap.add_argument("--no-stimulus", action="store_true", help="no stimulus-frame stream")
    ap.add_argument("--sample-s", type=float, default=2.0, help="RSS sampling interval (wall s)")
    ap.add_argument(
        "--warmup", type=float, default=0.1, help="fraction of the run (≥ 128 TRs) left out of the memory fit"
    )
    ap.add_argument("--sessions", type=Path, default=None, help="where the record goes (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the session record")
    ap.add_argument("--verbose", action="store_true", help="log every late volume, gap, ...")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    if not args.verbose:  # one line per late volume is noise here; the summary counts them
        logging.getLogger("rtdecode.ingest").setLevel(logging.ERROR)

    tr = 2.0
    n_tr = max(20, round(args.hours * 3600 / tr))
    counts = {k: max(1, round(rate * args.hours)) for k, rate in RATES.items()}
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    sessions = args.sessions or work / "sessions"
    sent_log, fault_log = work / "sent.jsonl", work / "faults.jsonl"
    sid = f"soak-{uuid.uuid4().hex[:8]}"
    interval = tr / args.speed
    # subject 1, world seed 0, movie seed 1: the stream's defaults
    stream_opts = [
        "--sent-log",
        str(sent_log),
        "--faults.seed",
        str(args.seed),
        "--faults.log-file",
        str(fault_log),
        "--faults.delay-s",
        f"{2.5 * interval:g}",  # behind the next two volumes: late, out of order
        "--faults.restart-pause-s",
        f"{max(1.0, 5 * interval):g}",
        *(x for kind, n in counts.items() for x in (f"--faults.{kind.replace('_', '-')}", f"random:{n}")),
        *(["--no-stimulus-stream"] if args.no_stimulus else []),
    ]
    # resolve: the simulator builds hours of BOLD before its first volume (minutes when loaded)
    ecfg = EngineConfig(
        bundle=args.bundle,
        sessions=sessions,
        log_every=0,
        ingest=IngestConfig(source_id=sid, max_trs=n_tr, lost_timeout_s=15.0, resolve_timeout_s=900.0),
    )
    if args.renderer:
        ecfg = dataclasses.replace(ecfg, renderer=args.renderer)
    progress = Progress()
    engine = Engine(ecfg, [progress])
    load_before = os.getloadavg()
    log.info("soak: %d TRs (%.2f simulated h) at %gx, faults %s", n_tr, args.hours, args.speed, counts)
    with open(work / "sim.log", "w") as sim_log:  # the child keeps its own copy
        # Its own process group: the simulator forks a volume producer, which must go with it.
        sim = start_simulator(
            sid,
            n_tr,
            args.speed,
            1,
            0,
            1,
            *stream_opts,
            stdout=subprocess.DEVNULL,
            stderr=sim_log,
            cwd=ROOT,
            start_new_session=True,
        )
    sampler = Sampler(engine, tr, args.sample_s)
    sampler.start()
    t0 = time.monotonic()
    try:
        summary = asyncio.run(engine.run())
        wall = time.monotonic() - t0
        sim_rc = sim.wait(120)
    finally:
        sampler.stop.set()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sim.pid, signal.SIGKILL)  # whatever is left of its group
        sim.wait(10)
    sampler.join(5)
    load_after = os.getloadavg()

    record_path = Path(summary["record"])
    received = [v.received for v in open_record(record_path).volumes if np.isfinite(v.received)]
    streamed = max(received) - min(received) if received else 0.0  # first to last volume
    report = analyse(summary, record_path, _lines(sent_log), _lines(fault_log), progress, engine.lags, n_tr)
    samples = sampler.samples
    # Warm-up: buffers that fill once (the ingest ring of 64 volumes, 64 intervals of stimulus
    # frames, allocator arenas) are not growth.
    warm_tr = max(args.warmup * n_tr, 128)
    fit = [s for s in samples if s["tr"] >= warm_tr]
    x_sim = np.array([s["sim_h"] for s in fit])
    x_wall = np.array([s["wall_s"] / 3600.0 for s in fit])
    rss = np.array([s["rss_mb"] for s in fit])
    slope = _slope(x_sim, rss)
    memory = {
        "samples": len(samples),
        "fit_samples": len(fit),
        "rss_mb_start": samples[0]["rss_mb"] if samples else None,
        "rss_mb_end": samples[-1]["rss_mb"] if samples else None,
        "rss_mb_max": max(s["rss_mb"] for s in samples) if samples else None,
        "slope_mb_per_sim_hour": slope,
        "slope_mb_per_wall_hour": _slope(x_wall, rss),
        "threads_end": samples[-1]["threads"] if samples else None,
        "fds_start_end": [samples[0]["fds"], samples[-1]["fds"]] if samples else None,
        "trace": [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()}
            for s in samples[:: max(1, len(samples) // 200)]
        ],
    }
    result = {
        "command": " ".join(["python", "benchmarks/soak.py", *sys.argv[1:]]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in load_after],
        },
        "bundle": {"path": str(args.bundle), "digest": engine.bundle.digest, "kind": engine.bundle.kind},
        "duration": {
            "wall_s": round(wall, 1),
            "streaming_wall_s": round(streamed, 1),
            "simulated_s": n_tr * tr,
            "simulated_h": round(n_tr * tr / 3600.0, 3),
            "speedup": round(n_tr * tr / streamed, 1) if streamed > 0 else None,
            "tr_s": tr,
            "interval_s": interval,
        },
        "trs": {
            "designed": n_tr,
            "sent": report["record"]["sent"],
            "received": sum(summary["volumes"].values()),
            "recorded": report["record"]["volumes"],
            "preprocessed": len(progress.preprocessed_trs),
            "decoded": len(progress.decoded_trs),
            "clips": len(progress.clip_trs),
        },
        "volumes": summary["volumes"],
        "simulator_exit": sim_rc,
        **{k: v for k, v in report.items() if k != "record"},
        "record": report["record"],
        "memory": memory,
        "latency_ms": summary["latency_ms"],
        "record_errors": summary.get("record_errors", 0),
        "pass": {
            "no_unexplained_drops": report["drops"]["unexplained"] == 0,
            "every_volume_recorded": report["record"]["every_volume_recorded"],
            # None: too short a run to fit a slope after the warm-up
            "memory_bounded": None if slope is None else bool(slope < MAX_SLOPE_MB_PER_HOUR),
            "memory_bound_mb_per_sim_hour": MAX_SLOPE_MB_PER_HOUR,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
        if args.sessions is None:
            shutil.rmtree(record_path, ignore_errors=True)
    d, m = result["duration"], memory
    print(
        f"soak: {d['simulated_h']} simulated h streamed in {d['streaming_wall_s']} s ({d['speedup']}x; "
        f"{d['wall_s']} s with start-up and close), "
        f"{result['trs']['recorded']}/{result['trs']['sent']} volumes recorded, "
        f"injected {sum(len(v) for v in report['injected_faults'].values())} faults, "
        f"drops: injected {len(report['drops']['injected'])}, "
        f"unexplained {report['drops']['unexplained']}; "
        f"RSS {m['rss_mb_start'] or 0:.0f}→{m['rss_mb_end'] or 0:.0f} MB, "
        f"slope {m['slope_mb_per_sim_hour'] if slope is not None else float('nan'):.2f} MB/simulated h"
    )
    print(f"wrote {args.out}")
    return 0 if all(v for k, v in result["pass"].items() if isinstance(v, bool)) else 1


if __name__ == "__main__":
    sys.exit(main())
