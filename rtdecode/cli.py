"""``rtdecode``: the real-time engine's command line.

Subcommands
-----------
run       receive volumes over LSL, decode and render them live, record the session
demo      start the simulator and the engine together; write stimulus | reconstruction video
replay    stream a session record back over LSL (re-run any session offline)
train     train a model bundle (``train ridge``)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rtdecode.config import ConfigError, add_config_arguments, load_config

__all__ = ["main"]

log = logging.getLogger("rtdecode")


@dataclass(frozen=True)
class DemoConfig:
    """Settings of ``rtdecode demo``."""

    n_tr: int = field(default=60, metadata={"help": "TRs to stream"})
    speed: float = field(default=4.0, metadata={"help": "simulator speed-up (TR 2 s / speed)"})
    subject: int = 1
    seed: int = 0
    movie_seed: int = field(default=7, metadata={"help": "the movie shown (not in the training data)"})
    out: Path = field(default=Path("demo_out"), metadata={"help": "where the video and summary go"})
    bundle: Path = Path("engines/default")
    sessions: Path = Path("demo_out/sessions")


def _print_summary(summary: dict) -> None:
    lat = summary.get("latency_ms", {})
    print(f"volumes: {summary['volumes']}  clips: {summary['clips']}  drops: {summary['drops']}")
    for name, q in lat.items():
        print(
            f"  {name:26s} p50 {q['p50']:7.1f} ms  p95 {q['p95']:7.1f} ms  p99 {q['p99']:7.1f} ms  "
            f"max {q['max']:7.1f} ms  (n={q['n']})"
        )
    noted = {k: v for k, v in summary.get("events", {}).items() if k not in ("reconnected",)}
    if noted:
        print(
            "  events: "
            + ", ".join(f"{k} at TR {v[:8]}{'…' if len(v) > 8 else ''}" for k, v in noted.items())
        )
    print(f"  record: {summary['record']}")


def _run_engine(engine) -> dict:
    """Run an engine with Ctrl-C wired to a clean stop."""

    async def main() -> dict:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, engine.request_stop)
            loop.add_signal_handler(signal.SIGTERM, engine.request_stop)
        return await engine.run()

    return asyncio.run(main())


def _cmd_run(args: argparse.Namespace) -> int:
    from rtdecode.outputs.video import SideBySideVideo
    from rtdecode.pipeline import Engine, EngineConfig

    cfg = load_config(EngineConfig, args)
    outputs = [SideBySideVideo(args.video)] if args.video else []
    summary = _run_engine(Engine(cfg, outputs))
    _print_summary(summary)
    return 0


def _wait_for_simulator(sim: subprocess.Popen, source: str, timeout: float = 120.0) -> None:
    """Wait until the simulator's stream is visible; fail at once if the simulator dies."""
    import time

    from rtdecode.lsl import StreamNotFoundError, resolve_stream

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sim.poll() is not None:
            raise StreamNotFoundError(f"the simulator exited with code {sim.returncode} before streaming")
        try:
            resolve_stream(source_id=source, timeout=1.0)
            return
        except StreamNotFoundError:
            continue
    raise StreamNotFoundError(f"the simulator did not start streaming within {timeout:g} s")


def _cmd_demo(args: argparse.Namespace) -> int:
    from rtdecode.bundle import load_bundle
    from rtdecode.ingest import IngestConfig
    from rtdecode.outputs.video import SideBySideVideo
    from rtdecode.pipeline import Engine, EngineConfig

    cfg = load_config(DemoConfig, args)
    bundle = load_bundle(cfg.bundle)
    source = f"demo-{uuid.uuid4().hex[:8]}"
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scanner_sim.cli",
            "stream",
            "--n-tr",
            str(cfg.n_tr),
            "--speed",
            str(cfg.speed),
            "--subject",
            str(cfg.subject),
            "--seed",
            str(cfg.seed),
            "--movie-seed",
            str(cfg.movie_seed),
            "--source-id",
            source,
            "--wait-consumer-s",
            "120",
        ],
    )
    try:
        _wait_for_simulator(sim, source)
        ecfg = EngineConfig(
            bundle=cfg.bundle,
            sessions=cfg.sessions,
            ingest=IngestConfig(
                source_id=source, max_trs=cfg.n_tr, lost_timeout_s=5.0, resolve_timeout_s=120.0
            ),
        )
        video = SideBySideVideo(cfg.out / "demo.mp4", fps=float(bundle.manifest["fps"]))
        summary = _run_engine(Engine(ecfg, [video], bundle=bundle))
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            sim.wait(10)
        sim.kill()
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=1))
    _print_summary(summary)
    print(f"video: {cfg.out / 'demo.mp4'} ({video.frames_written} frames: stimulus | reconstruction)")
    return 0 if summary["clips"] > 0 else 1


def _cmd_replay(args: argparse.Namespace) -> int:
    from rtdecode.record import replay_record

    n = replay_record(
        args.session,
        speed=args.speed,
        name=args.name,
        source_id=args.source_id,
        usable_only=args.usable_only,
        wait_for_consumer=args.wait,
    )
    print(f"sent {n} volumes", file=sys.stderr)
    return 0


def _cmd_train_ridge(args: argparse.Namespace) -> int:
    from rtdecode.train.ridge import RidgeConfig, train_ridge

    cfg = load_config(RidgeConfig, args)
    bundle = train_ridge(cfg)
    print(json.dumps(bundle.manifest["metrics"], indent=1))
    print(f"bundle written to {bundle.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``rtdecode`` argument parser."""
    from rtdecode.pipeline import EngineConfig
    from rtdecode.train.ridge import RidgeConfig

    parser = argparse.ArgumentParser(
        prog="rtdecode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the engine on an LSL volume stream")
    add_config_arguments(p, EngineConfig)
    p.add_argument("--video", type=Path, default=None, help="also write stimulus | reconstruction here")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="simulator + engine + video, no broker or GPU needed")
    add_config_arguments(p, DemoConfig)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("replay", help="stream a session record back over LSL")
    p.add_argument("session", type=Path)
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--name", default="rtdecode_replay")
    p.add_argument("--source-id", default=None)
    p.add_argument("--usable-only", action="store_true", help="skip bad and duplicate volumes")
    p.add_argument("--wait", type=float, default=30.0, help="wait this long for a receiver")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("train", help="train a model bundle")
    tsub = p.add_subparsers(dest="model", required=True)
    t = tsub.add_parser("ridge", help="ridge regression to blurry frames")
    add_config_arguments(t, RidgeConfig)
    t.set_defaults(func=_cmd_train_ridge)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rtdecode``."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from rtdecode.bundle import BundleError
    from rtdecode.lsl import StreamNotFoundError
    from rtdecode.record import RecordError

    try:
        return args.func(args)
    except (
        ConfigError,
        BundleError,
        StreamNotFoundError,
        RecordError,
        FileNotFoundError,
        ValueError,
        RuntimeError,
    ) as exc:
        print(f"rtdecode: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
