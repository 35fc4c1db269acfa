"""``rtdecode``: the real-time engine's command line.

Subcommands
-----------
run       receive volumes over LSL, decode and render them live, record the session
demo      start the simulator and the engine together; write stimulus | reconstruction video
replay    stream a session record back over LSL (re-run any session offline)
train     train models (``train encoders|ridge|decoders|renderer|frame-decoder``)
display   the live window on another machine, fed over MQTT
listen    print the messages a session publishes over MQTT (to check a setup)
evaluate  the evaluation table (every method, every subject)
bench     latency, scaling and headroom benchmarks of this machine
engines   build and list compiled engines (onnxruntime, TensorRT) of a bundle
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
from rtdecode.outputs.display import DisplayConfig
from rtdecode.outputs.feedback import FeedbackConfig
from rtdecode.outputs.mqtt import MqttConfig, parse_host_port
from rtdecode.pipeline import EngineConfig

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
    renderer: str = field(
        default="bundle", metadata={"help": "bundle (its student), teacher, blurry or diffusers:PATH"}
    )
    steps: int = field(default=0, metadata={"help": "sampler steps (0: the bundle's)"})
    sessions: Path = Path("demo_out/sessions")
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)


@dataclass(frozen=True)
class RunConfig(EngineConfig):
    """Settings of ``rtdecode run``: the engine's, plus its optional outputs'."""

    mqtt: MqttConfig = field(default_factory=MqttConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)


class _HostPort(argparse.Action):
    """``--mqtt HOST[:PORT]``: shorthand for ``--mqtt.host HOST --mqtt.port PORT``."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        try:
            host, port = parse_host_port(value)
        except ValueError as exc:
            parser.error(f"{option_string}: {exc}")
        setattr(namespace, f"{self.dest}host", host)
        if ":" in value.lstrip("[").split("]")[-1]:
            setattr(namespace, f"{self.dest}port", port)


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    """Shorthands of ``run`` and ``demo`` for the outputs' ``enabled`` / ``host`` settings."""
    p.add_argument(
        "--mqtt",
        metavar="HOST[:PORT]",
        dest="cfg:mqtt.",
        action=_HostPort,
        default=argparse.SUPPRESS,
        help="publish to this MQTT broker (see --mqtt.* for credentials and TLS)",
    )
    for name, text in (("display", "open the live window"), ("feedback", "publish the LSL feedback stream")):
        p.add_argument(
            f"--{name}",
            dest=f"cfg:{name}.enabled",
            action="store_const",
            const=True,
            default=argparse.SUPPRESS,
            help=f"{text} (same as --{name}.enabled)",
        )


def _make_outputs(mqtt: MqttConfig, feedback: FeedbackConfig, display: DisplayConfig, engine) -> list:
    """The outputs these settings ask for (none by default)."""
    outputs = []
    if display.enabled:
        from rtdecode.outputs.display import DisplayOutput

        outputs.append(DisplayOutput(display, score=feedback.score))
    if mqtt.host:
        from rtdecode.outputs.mqtt import MqttPublisher

        outputs.append(MqttPublisher(mqtt, score=feedback.score))
    if feedback.enabled:
        from rtdecode.outputs.feedback import FeedbackOutlet

        outputs.append(FeedbackOutlet(feedback, vocabulary=engine.bundle.manifest.get("vocabulary", [])))
    return outputs


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
    import dataclasses

    from rtdecode.outputs.video import SideBySideVideo
    from rtdecode.pipeline import Engine

    cfg = load_config(RunConfig, args)
    # The engine (and its record) gets the engine settings only: no broker password on disk.
    ecfg = EngineConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(EngineConfig)})
    outputs = [SideBySideVideo(args.video)] if args.video else []
    engine = Engine(ecfg, outputs)
    engine.outputs += _make_outputs(cfg.mqtt, cfg.feedback, cfg.display, engine)
    summary = _run_engine(engine)
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


def start_simulator(
    source: str,
    n_tr: int,
    speed: float,
    subject: int,
    seed: int,
    movie_seed: int,
    *extra: str,
    **popen,
) -> subprocess.Popen:
    """Start ``scanner-sim stream`` in a child process (it waits up to 120 s for a receiver).

    Shared by ``rtdecode demo``, ``rtdecode bench latency``, the soak benchmark and the display
    screenshot; ``extra`` appends stream options, ``popen`` goes to :class:`subprocess.Popen`.
    """
    argv = [
        sys.executable,
        "-m",
        "scanner_sim.cli",
        "stream",
        "--n-tr",
        str(n_tr),
        "--speed",
        str(speed),
        "--subject",
        str(subject),
        "--seed",
        str(seed),
        "--movie-seed",
        str(movie_seed),
        "--source-id",
        source,
        "--wait-consumer-s",
        "120",
        *extra,
    ]
    return subprocess.Popen(argv, **popen)


def _cmd_demo(args: argparse.Namespace) -> int:
    from rtdecode.bundle import load_bundle
    from rtdecode.ingest import IngestConfig
    from rtdecode.outputs.video import SideBySideVideo
    from rtdecode.pipeline import Engine, EngineConfig

    cfg = load_config(DemoConfig, args)
    bundle = load_bundle(cfg.bundle)
    source = f"demo-{uuid.uuid4().hex[:8]}"
    sim = start_simulator(source, cfg.n_tr, cfg.speed, cfg.subject, cfg.seed, cfg.movie_seed)
    try:
        _wait_for_simulator(sim, source)
        ecfg = EngineConfig(
            bundle=cfg.bundle,
            sessions=cfg.sessions,
            renderer=cfg.renderer,
            steps=cfg.steps,
            ingest=IngestConfig(
                source_id=source, max_trs=cfg.n_tr, lost_timeout_s=5.0, resolve_timeout_s=120.0
            ),
        )
        video = SideBySideVideo(cfg.out / "demo.mp4", fps=float(bundle.manifest["fps"]))
        engine = Engine(ecfg, [video], bundle=bundle)
        engine.outputs += _make_outputs(cfg.mqtt, cfg.feedback, cfg.display, engine)
        summary = _run_engine(engine)
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


def _broker(args: argparse.Namespace) -> tuple[MqttConfig, str]:
    """The broker settings and session (``+``: all) of ``display`` / ``listen``."""
    cfg = load_config(MqttConfig, args)
    if not cfg.host:
        raise ConfigError("give the broker with --mqtt HOST[:PORT]")
    return cfg, cfg.session or "+"


def _cmd_display(args: argparse.Namespace) -> int:
    from rtdecode.display_app import run_mqtt

    cfg, session = _broker(args)
    settings = {"fd_threshold": args.fd_threshold, "history": args.history, "top_concepts": args.top_concepts}
    return run_mqtt(cfg, session, settings)


def _cmd_listen(args: argparse.Namespace) -> int:
    from rtdecode.listen import listen

    cfg, session = _broker(args)
    n = listen(cfg, session, count=args.count, timeout_s=args.timeout, max_bytes=args.max_bytes)
    print(f"{n} messages", file=sys.stderr)
    return 0


def _add_broker_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, MqttConfig)
    p.add_argument(
        "--mqtt",
        metavar="HOST[:PORT]",
        dest="cfg:",
        action=_HostPort,
        default=argparse.SUPPRESS,
        help="the broker (same as --host HOST --port PORT)",
    )


def _cmd_train_encoders(args: argparse.Namespace) -> int:
    from rtdecode.train.encoders import EncodersConfig, train_encoders

    result = train_encoders(load_config(EncodersConfig, args))
    print(json.dumps(result, indent=1, default=str))
    return 0


def _cmd_train_decoders(args: argparse.Namespace) -> int:
    from rtdecode.train.decoders import DecodersConfig, train_decoders_cli

    bundle = train_decoders_cli(load_config(DecodersConfig, args))
    print(json.dumps(bundle.manifest["metrics"], indent=1, default=float))
    print(f"bundle written to {bundle.path}")
    return 0


def _cmd_train_renderer(args: argparse.Namespace) -> int:
    from rtdecode.train.renderer import RendererTrainConfig, train_renderer_cli

    print(json.dumps(train_renderer_cli(load_config(RendererTrainConfig, args)), indent=1))
    return 0


def _cmd_train_frame_decoder(args: argparse.Namespace) -> int:
    from rtdecode.train.renderer import FrameDecoderTrainConfig, train_frame_decoder_cli

    print(json.dumps(train_frame_decoder_cli(load_config(FrameDecoderTrainConfig, args)), indent=1))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rtdecode.metrics import format_table
    from rtdecode.train.evaluate import EvaluateConfig, evaluate

    cfg = load_config(EvaluateConfig, args)
    result = evaluate(cfg)
    print(format_table(result["rows"]))
    print(f"table written to {cfg.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``rtdecode`` argument parser."""
    from rtdecode.train.decoders import DecodersConfig
    from rtdecode.train.encoders import EncodersConfig
    from rtdecode.train.evaluate import EvaluateConfig
    from rtdecode.train.renderer import FrameDecoderTrainConfig, RendererTrainConfig
    from rtdecode.train.ridge import RidgeConfig

    parser = argparse.ArgumentParser(
        prog="rtdecode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the engine on an LSL volume stream")
    add_config_arguments(p, RunConfig)
    _add_output_flags(p)
    p.add_argument("--video", type=Path, default=None, help="also write stimulus | reconstruction here")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="simulator + engine + video, no broker or GPU needed")
    add_config_arguments(p, DemoConfig)
    _add_output_flags(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("display", help="the live window, fed over MQTT from another machine")
    _add_broker_arguments(p)
    p.add_argument("--fd-threshold", type=float, default=0.5, help="framewise displacement line (mm)")
    p.add_argument("--history", type=int, default=200, help="TRs shown in the traces")
    p.add_argument("--top-concepts", type=int, default=8, help="concepts shown as bars")
    p.set_defaults(func=_cmd_display)

    p = sub.add_parser("listen", help="print what a session publishes over MQTT")
    _add_broker_arguments(p)
    p.add_argument("--count", type=int, default=0, help="stop after N messages (0: until Ctrl-C)")
    p.add_argument("--timeout", type=float, default=0.0, help="stop after S seconds (0: never)")
    p.add_argument("--max-bytes", type=int, default=16 << 20, help="skip larger messages")
    p.set_defaults(func=_cmd_listen)

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
    t = tsub.add_parser("encoders", help="stimulus-side encoders and evaluation models (no fMRI)")
    add_config_arguments(t, EncodersConfig)
    t.set_defaults(func=_cmd_train_encoders)
    t = tsub.add_parser("decoders", help="the brain decoder (all sub-tasks) of one subject → a bundle")
    add_config_arguments(t, DecodersConfig)
    t.set_defaults(func=_cmd_train_decoders)

    t = tsub.add_parser("renderer", help="the video diffusion teacher and its few-step student")
    add_config_arguments(t, RendererTrainConfig)
    t.set_defaults(func=_cmd_train_renderer)
    t = tsub.add_parser("frame-decoder", help="the renderer's light frame decoder (keeps teacher/student)")
    add_config_arguments(t, FrameDecoderTrainConfig)
    t.set_defaults(func=_cmd_train_frame_decoder)

    p = sub.add_parser("evaluate", help="the evaluation table (every method, every subject)")
    add_config_arguments(p, EvaluateConfig)
    p.set_defaults(func=_cmd_evaluate)
    from rtdecode.backends.cli import add_engines_parser
    from rtdecode.bench import add_bench_parser

    add_bench_parser(sub)
    add_engines_parser(sub)
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
