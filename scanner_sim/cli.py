"""``scanner-sim``: the simulated scanner and the real-scanner bridges.

Subcommands
-----------
generate    write a dataset (cc2017 scale by default; ``--preset small|tiny``)
calibrate   print the noise/reliability/motion statistics beside published ranges
stream      push simulated volumes (and stimulus frames) over LSL, with fault injection
replay      stream a 4-D NIfTI (or CIFTI dense time series) over LSL
bridge      watch a folder a scanner exports DICOM files to and stream each volume
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from rtdecode.config import ConfigError, add_config_arguments, load_config

__all__ = ["main"]


@dataclass(frozen=True)
class CalibrateConfig:
    """Settings of ``scanner-sim calibrate``."""

    subjects: int = 3
    seed: int = 0
    n_tr: int = field(default=240, metadata={"help": "movie length in TRs (shown twice)"})


def _cmd_generate(args: argparse.Namespace) -> int:
    from scanner_sim.dataset import generate, with_preset

    preset = getattr(args, "cfg:preset", "cc2017")
    base = with_preset(preset)
    cfg = load_config(type(base), args, base=base)
    out = generate(cfg, args.out)
    print(f"dataset written to {out}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from scanner_sim.calibrate import calibrate_subject, format_table

    cfg = load_config(CalibrateConfig, args)
    results = []
    for i in range(cfg.subjects):
        results.append(calibrate_subject(i, cfg.seed, cfg.n_tr))
    print(format_table(results))
    return 0 if all(all(r.within().values()) for r in results) else 1


def _cmd_stream(args: argparse.Namespace) -> int:
    from scanner_sim.stream import StreamConfig, stream

    cfg = load_config(StreamConfig, args)
    stop = threading.Event()
    try:
        sent = stream(cfg, stop)
    except KeyboardInterrupt:
        stop.set()
        print("stopped", file=sys.stderr)
        return 130
    print(f"sent {sent} volumes", file=sys.stderr)
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from scanner_sim.replay import replay_nifti

    n = replay_nifti(
        args.file,
        speed=args.speed,
        name=args.name,
        source_id=args.source_id,
        tr=args.tr,
        loop=args.loop,
        wait_for_consumer=args.wait,
    )
    print(f"sent {n} volumes", file=sys.stderr)
    return 0


def _cmd_bridge(args: argparse.Namespace) -> int:
    from scanner_sim.bridge import DicomBridge

    bridge = DicomBridge(
        args.watch, name=args.name, source_id=args.source_id, slices=args.slices, tr=args.tr, poll_s=args.poll
    )
    try:
        bridge.run(idle_timeout=args.idle_timeout)
    except KeyboardInterrupt:
        pass
    print(f"sent {bridge.volumes_sent} volumes, skipped {bridge.files_skipped} files", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``scanner-sim`` argument parser."""
    from scanner_sim.dataset import DatasetConfig
    from scanner_sim.stream import StreamConfig

    parser = argparse.ArgumentParser(
        prog="scanner-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write a simulated dataset (HDF5)")
    p.add_argument("out", type=Path, help="output directory")
    add_config_arguments(p, DatasetConfig)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("calibrate", help="noise statistics beside published ranges")
    add_config_arguments(p, CalibrateConfig)
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("stream", help="stream simulated volumes over LSL")
    add_config_arguments(p, StreamConfig)
    p.set_defaults(func=_cmd_stream)

    p = sub.add_parser("replay", help="stream a 4-D NIfTI / CIFTI file over LSL")
    p.add_argument("file", type=Path)
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--tr", type=float, default=None, help="TR in s if the header has none")
    p.add_argument("--name", default="nifti_replay")
    p.add_argument("--source-id", default=None)
    p.add_argument("--loop", action="store_true")
    p.add_argument("--wait", type=float, default=30.0, help="wait this long for a receiver")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("bridge", help="stream DICOM files as a scanner writes them")
    p.add_argument("--watch", type=Path, required=True, help="folder the scanner exports to")
    p.add_argument("--slices", type=int, default=None, help="slices per volume if not in the files")
    p.add_argument("--tr", type=float, default=None, help="override the TR (s)")
    p.add_argument("--name", default="dicom_bridge")
    p.add_argument("--source-id", default=None)
    p.add_argument("--poll", type=float, default=0.1)
    p.add_argument("--idle-timeout", type=float, default=None, help="stop after this long without files")
    p.set_defaults(func=_cmd_bridge)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``scanner-sim``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, OSError) as exc:
        print(f"scanner-sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
