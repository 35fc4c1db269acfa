"""``rtdecode bench``: latency and scaling benchmarks, and the headroom report.

Subcommands
-----------
latency   the real path — ``scanner-sim stream`` in a child process → LSL → :class:`Engine` → outputs —
          for N TRs: per-stage and end-to-end latency from the session record's per-TR stage
          timestamps, drops per stage, the sustained TR rate, and a check that the record holds
          every volume the simulator sent; JSON and plots.
scaling   how the per-TR cost grows with voxel count (offline: ingest/record, preprocessing and
          decoding of synthetic volumes in one process, no LSL), with frames per clip, frame
          resolution, sampler steps, backend, teacher vs student and fusion (the diffusion
          renderer); fitted growth (log-log slope) per stage; JSON and plots.
headroom  the plain-language recommendation (shortest TR, largest voxel count) from the JSON of
          the other two.

Every result carries the machine's description with the load average before and after, so a
figure measured while other work ran is recognisable as such.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rtdecode.config import add_config_arguments, config_to_dict, load_config
from rtdecode.decode import Decoder
from rtdecode.outputs.display import DisplayConfig
from rtdecode.outputs.feedback import FeedbackConfig
from rtdecode.outputs.mqtt import MqttConfig
from rtdecode.render import Renderer

__all__ = [
    "RESOURCES",
    "LatencyConfig",
    "ScalingConfig",
    "add_bench_parser",
    "analyse_timings",
    "bench_command",
    "check_record",
    "fit_growth",
    "headroom",
    "load_diffusion_renderer",
    "machine_info",
    "main",
    "max_voxels",
    "min_tr",
    "percentiles",
    "phantom_volumes",
    "run_latency",
    "run_scaling",
    "time_render",
    "time_voxel_point",
]

# Stage intervals of one TR, from the stamps the engine writes to timings.jsonl.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("transport", "acquired", "received"),
    ("record", "received", "recorded"),
    ("preprocess", "recorded", "preprocessed"),
    ("decode", "preprocessed", "decoded"),
    ("render", "decoded", "rendered"),
    ("output", "rendered", "output"),
)
# Spans the acceptance criteria and the README quote: engine-added (from the volume's receipt)
# and end to end (from the end of its acquisition, LSL transport included).
SPANS: dict[str, tuple[str, str]] = {
    "received_to_decoded": ("received", "decoded"),
    "received_to_clip": ("received", "rendered"),
    "received_to_output": ("received", "output"),
    "acquired_to_clip": ("acquired", "rendered"),
    "acquired_to_output": ("acquired", "output"),
}
BUDGETS_MS = {"received_to_decoded": 100.0, "received_to_clip": 500.0}  # p99, issue 8
# The engine's serial workers and the stages each runs: a worker keeps up when its stages
# together fit inside the TR (decode and render share the model thread).
RESOURCES: dict[str, tuple[str, ...]] = {
    "ingest thread": ("record",),
    "preprocess thread": ("preprocess",),
    "model thread": ("decode", "render"),
}


# ============================================================================ shared helpers


def machine_info() -> dict[str, Any]:
    """The machine a result was measured on: CPU model, cores, memory, library versions, load.

    Returns
    -------
    dict
        JSON-ready description; ``load_avg`` is the 1/5/15-minute load average now.
    """
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "arch": platform.machine(),
        "cores_logical": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import psutil

        info["cores_physical"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil is a dependency
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        pass
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info


def _busy_note(before: Sequence[float], after: Sequence[float], cores: int | None) -> str:
    """A warning when other work was running (1-min load above half the cores)."""
    cores = cores or 1
    worst = max(before[0], after[0])
    if worst > 0.5 * cores:
        return (
            f"machine busy: 1-min load {before[0]:.1f} before / {after[0]:.1f} after on {cores} cores; "
            "figures are not final"
        )
    return ""


_SECRET = ("password", "username", "keyfile", "certfile")


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _settings(cfg: Any) -> dict[str, Any]:
    """The settings of a run for its result file (credentials left out)."""
    return {k: v for k, v in _flat(config_to_dict(cfg)).items() if k.split(".")[-1] not in _SECRET}


def bench_command(kind: str, cfg: Any) -> str:
    """The ``rtdecode bench`` command line that reproduces ``cfg`` (non-default settings only)."""
    default = _flat(config_to_dict(type(cfg)()))
    parts = ["rtdecode", "bench", kind]
    for key, value in _settings(cfg).items():
        if default.get(key) == value:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            parts += [flag, ",".join(map(str, value))]
        elif value is not None:
            parts += [flag, str(value)]
    return " ".join(parts)


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run with ``n`` torch threads (0: leave as is), restoring the previous count after."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def percentiles(values: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean and n of some values (empty dict for none).

    Parameters
    ----------
    values
        Milliseconds (or any numbers); None and NaN are ignored.
    """
    arr = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {}
    out = {f"p{p}": float(np.percentile(arr, p)) for p in (50, 95, 99)}
    out.update(max=float(arr.max()), mean=float(arr.mean()), n=int(arr.size))
    return out


def fit_growth(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Fit ``y = a·x^b`` by least squares in log-log space and name the growth.

    Parameters
    ----------
    x, y
        Positive sizes and costs (at least two distinct sizes).

    Returns
    -------
    dict
        ``slope`` (b), ``intercept`` (ln a), ``r2``, ``n`` and ``growth``: ``"decreasing"``
        (b < -0.2: usually noise), ``"flat"`` (|b| ≤ 0.2), ``"sub-linear"`` (b < 0.85),
        ``"linear"`` (up to 1.15) or ``"super-linear"``.
    """
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = (xa > 0) & (ya > 0) & np.isfinite(xa) & np.isfinite(ya)
    lx, ly = np.log(xa[ok]), np.log(ya[ok])
    if lx.size < 2 or np.ptp(lx) == 0:
        raise ValueError("fit_growth needs at least two distinct positive sizes")
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    ss = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss if ss > 0 else 1.0
    if slope < -0.2:
        growth = "decreasing"
    elif slope <= 0.2:
        growth = "flat"
    elif slope < 0.85:
        growth = "sub-linear"
    elif slope <= 1.15:
        growth = "linear"
    else:
        growth = "super-linear"
    return {
        "slope": float(slope),
        "intercept": float(intercept),
        "r2": r2,
        "n": int(lx.size),
        "growth": growth,
    }


def _predict(fit: Mapping[str, float], x: float) -> float:
    """Cost of a fitted stage at size ``x`` (a negative slope, i.e. noise, counts as flat)."""
    return float(math.exp(fit["intercept"]) * x ** max(fit["slope"], 0.0))


# ============================================================================ headroom


def min_tr(
    costs_ms: Mapping[str, float],
    resources: Mapping[str, Sequence[str]] = RESOURCES,
    margin: float = 0.9,
) -> tuple[float, str, dict[str, float]]:
    """The shortest TR at which every worker's stages fit inside the TR.

    Parameters
    ----------
    costs_ms
        Per-TR cost of each stage (e.g. p95 service times) in ms; stages not given cost 0.
    resources
        Worker → the stages it runs one after the other.
    margin
        Fraction of the TR a worker may use (0.9 keeps 10 % for jitter).

    Returns
    -------
    tr_s, limiting worker, load of every worker in ms
    """
    load = {r: float(sum(costs_ms.get(s, 0.0) for s in stages)) for r, stages in resources.items()}
    worst = max(load, key=load.get)
    return load[worst] / 1000.0 / margin, worst, load


def max_voxels(
    tr_s: float,
    fits: Mapping[str, Mapping[str, float]],
    fixed_ms: Mapping[str, float],
    resources: Mapping[str, Sequence[str]] = RESOURCES,
    margin: float = 0.9,
    lo: float = 1e3,
    hi: float = 1e8,
) -> tuple[float | None, str]:
    """The largest voxel count at which every worker keeps inside ``margin × TR``.

    Parameters
    ----------
    tr_s
        The TR in seconds.
    fits
        Voxel-dependent stages: ``{stage: fit_growth(...) of cost in ms vs voxels}``.
    fixed_ms
        Stages whose cost does not depend on the voxel count (e.g. render), in ms.
    resources, margin
        As in :func:`min_tr`.
    lo, hi
        Search range; ``hi`` is returned when even that fits.

    Returns
    -------
    voxels, limiting worker
        ``voxels`` is None when the fixed costs alone exceed the budget (or ``lo`` does not fit).
    """
    budget = margin * tr_s * 1000.0

    def load(res: str, v: float) -> float:
        stages = resources[res]
        return sum(_predict(fits[s], v) if s in fits else fixed_ms.get(s, 0.0) for s in stages)

    best, limit = hi, "none (the search range's end)"
    for res in resources:
        if load(res, lo) > budget:
            return None, res
        if load(res, hi) <= budget:
            continue
        a, b = math.log(lo), math.log(hi)
        for _ in range(60):  # bisection in log space; each worker's load grows with v
            m = 0.5 * (a + b)
            a, b = (m, b) if load(res, math.exp(m)) <= budget else (a, m)
        if math.exp(a) < best:
            best, limit = math.exp(a), res
    return best, limit


def _fmt_voxels(v: float) -> str:
    return f"{v / 1e6:.2f} M" if v >= 1e6 else f"{round(v, -3):,.0f}"


def headroom(
    costs_ms: Mapping[str, float],
    setting: str,
    voxel_fits: Mapping[str, Mapping[str, float]] | None = None,
    trs: Sequence[float] = (2.0,),
    margin: float = 0.9,
    measured_voxels: tuple[float, float] | None = None,
) -> tuple[dict[str, Any], str]:
    """The headroom report: shortest TR and, per TR, largest voxel count, as data and as text.

    Parameters
    ----------
    costs_ms
        Per-TR cost of each stage at the user's settings (ms).
    setting
        Words describing those settings (``"64×64×32 with 16 frames of 64×64 and 2 steps"``).
    voxel_fits
        Voxel-dependent stages' fits (cost in ms vs voxels); without them no voxel statement.
    trs
        TRs (s) for which to state the largest voxel count.
    margin
        Fraction of the TR a worker may use.
    measured_voxels
        (smallest, largest) voxel counts measured, to flag extrapolation.
    """
    tr, worker, load = min_tr(costs_ms, RESOURCES, margin)
    parts = " + ".join(f"{s} {costs_ms[s]:.0f} ms" for s in RESOURCES[worker] if s in costs_ms) or "nothing"
    text = [
        f"At {setting}, this machine keeps up down to TR = {tr:.2f} s "
        f"(limited by the {worker}: {parts} per TR; {100 * (1 - margin):.0f} % of the TR kept free)."
    ]
    report: dict[str, Any] = {
        "setting": setting,
        "min_tr_s": tr,
        "max_tr_rate_hz": 1.0 / tr if tr > 0 else float("inf"),
        "limited_by": worker,
        "worker_load_ms": load,
        "costs_ms": dict(costs_ms),
        "margin": margin,
        "voxels": {},
    }
    if voxel_fits:
        fixed = {s: v for s, v in costs_ms.items() if s not in voxel_fits}
        for t in trs:
            v, lim = max_voxels(t, voxel_fits, fixed, RESOURCES, margin)
            report["voxels"][f"{t:g}"] = {"max_voxels": v, "limited_by": lim}
            if v is None:
                text.append(f"At TR = {t:g} s it cannot keep up at any voxel count ({lim} over budget).")
                continue
            if measured_voxels and v > 4 * measured_voxels[1]:
                text.append(
                    f"At TR = {t:g} s it handles more than the largest grid measured "
                    f"({measured_voxels[1]:,.0f} voxels); the fit says ≈ {_fmt_voxels(v)} (limited by the "
                    f"{lim}), an extrapolation to re-measure before relying on it."
                )
                continue
            note = ""
            if measured_voxels and v > measured_voxels[1]:
                note = f"; extrapolated beyond the {measured_voxels[1]:,.0f} measured"
            elif measured_voxels and v < measured_voxels[0]:
                note = f"; extrapolated below the {measured_voxels[0]:,.0f} measured"
            text.append(
                f"At TR = {t:g} s it handles up to ≈ {_fmt_voxels(v)} voxels (limited by the {lim}{note})."
            )
    return report, " ".join(text)


# ============================================================================ latency


@dataclass(frozen=True)
class LatencyConfig:
    """Settings of ``rtdecode bench latency``."""

    tr: float = field(default=1.0, metadata={"help": "TR (s) the simulator streams at"})
    n_tr: int = field(default=300, metadata={"help": "TRs to stream"})
    bundle: Path = Path("engines/default")
    renderer: Literal["auto", "bundle", "student", "teacher"] = field(
        default="auto",
        metadata={
            "help": "auto: the bundle's renderer if it is the diffusion renderer, else the diffusion "
            "student from the bundle's renderer.safetensors when present, else the bundle's"
        },
    )
    steps: int = field(default=0, metadata={"help": "sampler steps (0: renderer.json's)"})
    backend: str = field(default="auto", metadata={"help": "auto|torch|onnxruntime|tensorrt|torch-tensorrt"})
    precision: str = field(
        default="auto", metadata={"help": "auto|fp32|fp16|int8 (auto: int8 render engines on onnxruntime)"}
    )
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})
    warmup: int = field(default=2, metadata={"help": "decode+render passes before the stream starts"})
    subject: int = 1
    seed: int = 0
    movie_seed: int = field(default=7, metadata={"help": "the movie shown (not in the training data)"})
    out: Path = field(default=Path("benchmarks/results/latency"), metadata={"help": "JSON and plots go here"})
    name: str = field(default="", metadata={"help": "file name stem (default latency-tr<TR>)"})
    sessions: Path | None = field(
        default=None, metadata={"help": "keep the session record here (default: a temporary one, deleted)"}
    )
    video: Path | None = field(default=None, metadata={"help": "also write stimulus | reconstruction"})
    log_every: int = field(default=10, metadata={"help": "engine status line every N TRs"})
    margin: float = field(default=0.9, metadata={"help": "headroom: fraction of the TR a worker may use"})
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)


class _Wrapper:
    """Delegates what it does not define to ``inner`` (fusion hooks, last latents, ...)."""

    inner: Any

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class _TimedDecoder(_Wrapper, Decoder):
    """Measures the decoder's service time per call (the stamps include queueing)."""

    def __init__(self, inner: Decoder, sink: list[float]) -> None:
        self.inner, self.sink = inner, sink
        self.lags, self.mask_index = inner.lags, inner.mask_index

    def decode(self, window: np.ndarray, tr: int):
        t0 = time.perf_counter()
        cond = self.inner.decode(window, tr)
        self.sink.append((time.perf_counter() - t0) * 1e3)
        return cond


class _TimedRenderer(_Wrapper, Renderer):
    """Measures the renderer's service time per call."""

    def __init__(self, inner: Renderer, sink: list[float]) -> None:
        self.inner, self.sink = inner, sink
        self.frames_per_tr, self.size = inner.frames_per_tr, inner.size

    def render(self, conditions) -> np.ndarray:
        t0 = time.perf_counter()
        clip = self.inner.render(conditions)
        self.sink.append((time.perf_counter() - t0) * 1e3)
        return clip


class _ConditionBridge(_Wrapper, Renderer):
    """Feeds a ridge bundle's conditions (blurry frames only) to the diffusion renderer.

    The blurry frames are encoded to latents with the renderer's autoencoder and stretched to
    the clip's frame count; the sub-tasks a ridge decoder lacks enter the renderer as zeros (as
    under its condition drop-out). The denoiser's compute does not depend on their values, so
    the timing is the renderer's; the pictures are not a reconstruction to judge.
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.frames_per_tr, self.size = inner.frames_per_tr, inner.size

    def render(self, conditions) -> np.ndarray:
        import cv2
        import torch

        blurry = np.asarray(conditions.blurry, np.float32)
        if blurry.ndim == 4 and blurry.shape[-1] == 3:  # (f, h, w, 3) frames, not latents
            h, w = self.size
            big = np.stack([cv2.resize(fr, (w, h), interpolation=cv2.INTER_LINEAR) for fr in blurry])
            with torch.no_grad():
                lat = self.inner.ae.encode(torch.from_numpy(big).permute(0, 3, 1, 2).clamp(0, 1))
            pos = np.linspace(0, len(lat) - 1, self.frames_per_tr).round().astype(np.int64)
            blurry = lat[torch.from_numpy(pos)].numpy()
        return self.inner.render(dataclasses.replace(conditions, blurry=blurry))


def load_diffusion_renderer(bundle_dir: Path, which: str = "student", steps: int = 0):
    """The diffusion renderer kept beside a bundle that does not declare one (a ``ridge``
    bundle): ``renderer.safetensors`` + ``renderer.json`` and the autoencoder and world-CLIP
    of ``encoders.*``, as ``rtdecode train renderer`` writes them.

    Parameters
    ----------
    bundle_dir
        Directory holding ``renderer.*`` and ``encoders.*``.
    which
        ``"student"`` or ``"teacher"``.
    steps
        Sampler steps (0: the ``renderer.json`` value for that model).

    Returns
    -------
    DiffusionRenderer
    """
    from safetensors.numpy import load_file

    from rtdecode.render.diffusion import diffusion_renderer

    spec = json.loads((bundle_dir / "renderer.json").read_text())
    tensors = load_file(str(bundle_dir / "renderer.safetensors"))
    return diffusion_renderer(tensors, spec, _renderer_encoders(bundle_dir), which, steps or None)


def _renderer_encoders(directory: Path) -> dict[str, Any]:
    """The autoencoder and world-CLIP of ``encoders.*`` (not the evaluation models beside them)."""
    from safetensors.numpy import load_file

    from rtdecode.train.encoders import load_encoders

    doc = json.loads((directory / "encoders.json").read_text())
    tensors = load_file(str(directory / "encoders.safetensors"))
    return load_encoders(tensors, {k: doc["models"][k] for k in ("ae", "clip")})


def _choose_renderer(cfg: LatencyConfig, bundle) -> tuple[Renderer, dict[str, Any]]:
    """The renderer the latency run uses, and its description for the report."""
    from rtdecode.render import load_renderer

    beside = (Path(bundle.path) / "renderer.safetensors").exists()
    if bundle.kind != "ridge" or cfg.renderer == "bundle" or (cfg.renderer == "auto" and not beside):
        spec = "bundle" if cfg.renderer == "auto" else cfg.renderer
        own = load_renderer(bundle, spec, cfg.steps or None)
        desc = {"kind": type(own).__name__, "source": f"the bundle's ({spec})"}
        desc.update(steps=getattr(own, "steps", None), frames=own.frames_per_tr, size=list(own.size))
        return own, desc
    which = "teacher" if cfg.renderer == "teacher" else "student"
    diff = load_diffusion_renderer(Path(bundle.path), which, cfg.steps)
    desc = {
        "kind": "DiffusionRenderer",
        "source": f"{bundle.path}/renderer.safetensors ({which})",
        "steps": diff.steps,
        "frames": diff.frames_per_tr,
        "size": list(diff.size),
        "note": f"the {bundle.kind} decoder gives blurry frames only: they are encoded to latents and "
        "the other conditions enter as zeros (timing is the renderer's; pictures are not judged)",
    }
    return _ConditionBridge(diff), desc


def _stamp_ms(t: Mapping[str, float], a: str, b: str) -> float | None:
    if a in t and b in t:
        return (t[b] - t[a]) * 1000.0
    return None


def analyse_timings(
    timings: Sequence[Mapping[str, Any]],
    tr_s: float,
    lag: int,
    volumes: Iterable[tuple[int, str]] | None = None,
) -> dict[str, Any]:
    """Per-stage and end-to-end latency, coverage and sustained rate from ``timings.jsonl`` lines.

    Parameters
    ----------
    timings
        The record's per-TR stage timestamps (LSL clock, seconds).
    tr_s
        The stream's TR.
    lag
        The decoder's largest hemodynamic lag (TRs below it are never decoded).
    volumes
        (TR, status) of every recorded volume: counts the decodable TRs, including those dropped
        under load (the engine writes no timing line for a dropped TR). Default: from ``timings``.

    Returns
    -------
    dict
        ``stages`` and ``spans``: percentile dicts in ms; ``counts``; ``sustained``;
        ``per_tr``: the TR index and each stage's ms per rendered TR (for plots).
    """
    stages = {name: percentiles(_stamp_ms(t, a, b) for t in timings) for name, a, b in STAGES}
    spans = {name: percentiles(_stamp_ms(t, a, b) for t in timings) for name, (a, b) in SPANS.items()}
    rendered = sorted((t for t in timings if "rendered" in t), key=lambda t: t["tr"])
    received = sorted(t["received"] for t in timings if "received" in t)
    usable = [t for t in timings if "preprocessed" in t]
    if volumes is None:
        decodable = {t["tr"] for t in usable if t["tr"] >= lag}
    else:
        decodable = {tr for tr, status in volumes if status in ("ok", "late") and tr >= lag}
    sustained: dict[str, Any] = {"tr_s": tr_s}
    if len(received) > 1:
        iv = np.diff(received)
        sustained["volumes_per_s"] = (len(received) - 1) / (received[-1] - received[0])
        sustained["receive_interval_ms"] = percentiles(iv * 1e3)
    if len(rendered) > 1:
        done = sorted(t["rendered"] for t in rendered)
        span = done[-1] - done[0]
        sustained["clips_per_s"] = (len(done) - 1) / span if span > 0 else float("nan")
        sustained["sustained_tr_s"] = 1.0 / sustained["clips_per_s"] if span > 0 else float("nan")
    counts = {
        "timed_volumes": len(timings),
        "decodable": len(decodable),
        "decoded": sum(1 for t in timings if "decoded" in t),
        "rendered": len(rendered),
    }
    per_tr = {
        "tr": [int(t["tr"]) for t in rendered],
        **{name: [round(_stamp_ms(t, a, b) or 0.0, 3) for t in rendered] for name, a, b in STAGES},
    }
    return {"stages": stages, "spans": spans, "counts": counts, "sustained": sustained, "per_tr": per_tr}


def check_record(record_path: Path, sent_log: Path) -> dict[str, Any]:
    """Whether the session record holds every volume the simulator sent, byte-identical.

    Compares the (TR, SHA-1) of every line of the simulator's ``--sent-log`` with the record's
    volume index, and re-hashes every recorded volume.
    """
    from rtdecode.record import open_record

    rec = open_record(record_path)
    sent = sorted((e["tr"], e["sha1"]) for e in map(json.loads, sent_log.read_text().splitlines()))
    got = sorted((v.tr, v.sha1) for v in rec.volumes)
    missing = sorted(set(sent) - set(got))
    corrupt = rec.verify()
    return {
        "status": rec.status,
        "sent": len(sent),
        "recorded": len(got),
        "missing_trs": [tr for tr, _ in missing],
        "corrupt": len(corrupt),
        "all_recorded": not missing and not corrupt and len(got) >= len(sent),
    }


def _plot_latency(result: Mapping[str, Any], stem: Path, tr_s: float) -> list[str]:
    """Latency histogram, per-stage stacked bars and latency over time (PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = result["per_tr"]
    files = []
    ready = np.add.reduce([np.asarray(per[s]) for s in ("record", "preprocess", "decode", "render")])
    decoded = np.add.reduce([np.asarray(per[s]) for s in ("record", "preprocess", "decode")])
    title = f"TR {tr_s:g} s, {result['stream']['n_tr']} TRs — {result['renderer']['kind']}"

    fig, ax = plt.subplots(figsize=(7, 4))
    if len(ready):
        bins = np.linspace(0, max(ready.max(), 1.0) * 1.05, 40)
        ax.hist(decoded, bins=bins, alpha=0.7, label="received → decoded")
        ax.hist(ready, bins=bins, alpha=0.7, label="received → clip ready")
        for name, style in (("received_to_decoded", "C0"), ("received_to_clip", "C1")):
            if p := result["latency_ms"]["spans"].get(name, {}).get("p99"):
                ax.axvline(p, color=style, ls="--", lw=1, label=f"p99 {p:.0f} ms")
    ax.set(xlabel="engine-added latency (ms)", ylabel="TRs", title=title)
    ax.legend(fontsize=8)
    files.append(_save(fig, stem.with_name(stem.name + "-histogram.png")))

    fig, ax = plt.subplots(figsize=(6, 4))
    names = [s for s, _, _ in STAGES]
    stats = ("p50", "p95", "p99")
    bottom = np.zeros(len(stats))
    for i, s in enumerate(names):
        q = result["latency_ms"]["stages"].get(s, {})
        vals = np.array([q.get(k, 0.0) for k in stats])
        ax.bar(stats, vals, bottom=bottom, label=s, color=f"C{i}")
        bottom += vals
    ax.axhline(tr_s * 1e3, color="k", ls=":", lw=1, label=f"TR {tr_s * 1e3:.0f} ms")
    ax.set(ylabel="ms (each stage's percentile, stacked)", title="per-stage latency (acquired → output)")
    ax.legend(fontsize=8)
    files.append(_save(fig, stem.with_name(stem.name + "-stages.png")))

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(per["tr"], decoded, ".-", ms=3, lw=0.8, label="received → decoded")
    ax.plot(per["tr"], ready, ".-", ms=3, lw=0.8, label="received → clip ready")
    drops = result.get("drop_trs", [])
    if drops:
        ax.plot(drops, np.zeros(len(drops)), "rx", label=f"dropped ({len(drops)})")
    ax.axhline(tr_s * 1e3, color="k", ls=":", lw=1, label="TR")
    ax.set(xlabel="TR (volume index)", ylabel="ms", title=title)
    ax.legend(fontsize=8)
    files.append(_save(fig, stem.with_name(stem.name + "-timeline.png")))
    return files


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def run_latency(cfg: LatencyConfig, outputs: list | None = None) -> dict[str, Any]:
    """Run the real path for ``cfg.n_tr`` TRs and write ``<out>/<name>.json`` and its plots.

    Parameters
    ----------
    cfg
        Settings.
    outputs
        Extra engine outputs (beyond those ``cfg`` asks for).

    Returns
    -------
    dict
        The result written to the JSON file.
    """
    from rtdecode.bundle import load_bundle

    if cfg.tr <= 0 or cfg.n_tr < 2:
        raise ValueError("bench latency needs --tr > 0 and --n-tr ≥ 2")
    load_before = os.getloadavg()
    bundle = load_bundle(cfg.bundle)
    physical_tr = float(bundle.manifest["geometry"]["tr"])
    speed = physical_tr / cfg.tr  # the simulated world stays the bundle's; only the clock runs faster
    work = Path(tempfile.mkdtemp(prefix="rtdecode-bench-"))
    try:
        with _torch_threads(cfg.threads):
            return _latency_run(cfg, bundle, speed, work, load_before, outputs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _latency_run(
    cfg: LatencyConfig, bundle, speed: float, work: Path, load_before: Sequence[float], outputs: list | None
) -> dict[str, Any]:
    from rtdecode.cli import _make_outputs, _run_engine, _wait_for_simulator, start_simulator
    from rtdecode.decode import load_decoder
    from rtdecode.ingest import IngestConfig
    from rtdecode.pipeline import EngineConfig, compile_stages

    sessions = cfg.sessions or work / "sessions"
    sent_log = work / "sent.jsonl"
    source = f"bench-{uuid.uuid4().hex[:8]}"
    stimulus = cfg.video is not None or cfg.display.enabled
    extra = ["--sent-log", str(sent_log)] + ([] if stimulus else ["--no-stimulus-stream"])
    service: dict[str, list[float]] = {"preprocess": [], "decode": [], "render": []}
    with open(work / "simulator.log", "wb") as sim_log:
        # Start the simulator first: it builds its subject while the engine loads and warms up.
        sim = start_simulator(
            source,
            cfg.n_tr,
            speed,
            cfg.subject,
            cfg.seed,
            cfg.movie_seed,
            *extra,
            stdout=sim_log,
            stderr=sim_log,
        )
        try:
            decoder = load_decoder(bundle)
            renderer, rdesc = _choose_renderer(cfg, bundle)
            which = "teacher" if cfg.renderer == "teacher" else "student"
            cache = Path("cache/engines")
            compile_stages(bundle, decoder, renderer, cfg.backend, cache, which, cfg.precision)
            rdesc["backend"], rdesc["precision"] = cfg.backend, cfg.precision
            _wait_for_simulator(sim, source)
            ecfg = EngineConfig(
                bundle=cfg.bundle,
                sessions=sessions,
                log_every=cfg.log_every,
                warm_up=cfg.warmup,
                ingest=IngestConfig(
                    source_id=source,
                    max_trs=cfg.n_tr,
                    lost_timeout_s=5.0,
                    resolve_timeout_s=120.0,
                    stimulus=stimulus,
                ),
            )
            outs = list(outputs or [])
            if cfg.video is not None:
                from rtdecode.outputs.video import SideBySideVideo

                outs.append(SideBySideVideo(cfg.video, fps=float(bundle.manifest["fps"])))
            engine = _bench_engine_class()(
                ecfg,
                outs,
                bundle=bundle,
                decoder=_TimedDecoder(decoder, service["decode"]),
                renderer=_TimedRenderer(renderer, service["render"]),
                preprocess_sink=service["preprocess"],
            )
            engine.outputs += _make_outputs(cfg.mqtt, cfg.feedback, cfg.display, engine)
            t_run = time.perf_counter()
            summary = _run_engine(engine)
            wall = time.perf_counter() - t_run
            warm = engine.warm_ms
            for stage in ("decode", "render"):  # the warm-up passes are not service times
                del service[stage][: len(warm)]
        except BaseException:
            sim.kill()
            sys.stderr.write((work / "simulator.log").read_text(errors="replace")[-2000:])
            raise
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                sim.wait(15)
            sim.kill()
    result = _latency_result(cfg, bundle, engine, summary, service, rdesc, warm, sent_log, speed, wall)
    result["machine"] = {**machine_info(), "load_before": [round(x, 2) for x in load_before]}
    result["machine"]["load_after"] = result["machine"].pop("load_avg")
    result["note"] = _busy_note(load_before, result["machine"]["load_after"], os.cpu_count())
    cfg.out.mkdir(parents=True, exist_ok=True)
    stem = cfg.out / (cfg.name or f"latency-tr{cfg.tr:g}")
    result["plots"] = _plot_latency(result, stem, cfg.tr)
    path = stem.with_name(stem.name + ".json")
    path.write_text(json.dumps(result, indent=1, default=_json_default))
    result["json"] = str(path)
    return result


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _latency_result(
    cfg: LatencyConfig,
    bundle,
    engine,
    summary: Mapping[str, Any],
    service: Mapping[str, list[float]],
    rdesc: Mapping[str, Any],
    warm: list[float],
    sent_log: Path,
    speed: float,
    wall: float,
) -> dict[str, Any]:
    from rtdecode.record import open_record

    rec = open_record(summary["record"])
    lag = max(engine.lags)
    analysis = analyse_timings(rec.timings, cfg.tr, lag, [(v.tr, v.status) for v in rec.volumes])
    svc = {k: percentiles(v) for k, v in service.items()}
    svc["record"] = analysis["stages"]["record"]  # received → recorded has no queue before it
    drops = dict(summary["drops"])
    # Decode and render drops name the stimulus TR; plots and per_tr use the volume's TR.
    drop_trs = sorted(
        e["tr"] + (lag if e.get("stage") in ("decode", "render") else 0)
        for e in rec.events
        if e.get("kind") == "drop"
    )
    record_check = check_record(Path(summary["record"]), sent_log)
    expected = analysis["counts"]["decodable"]
    sustained = analysis["sustained"]
    sustained["kept_up"] = sum(drops.values()) == 0 and analysis["counts"]["rendered"] == expected
    spans = analysis["spans"]
    budgets = {
        f"{name}_p99_ms": {
            "budget": b,
            "measured": spans.get(name, {}).get("p99"),
            "ok": spans.get(name, {}).get("p99", math.inf) <= b,
        }
        for name, b in BUDGETS_MS.items()
    }
    costs = {s: svc[s].get("p95", 0.0) for s in ("record", "preprocess", "decode", "render")}
    geo = rec.geometry
    n = rdesc.get("steps")
    steps = f" and {n} step{'s' * (n != 1)}" if n else ""
    size = "×".join(map(str, rdesc.get("size", ())))
    setting = (
        f"{'×'.join(map(str, geo.dims))} ({geo.n_voxels:,} voxels) with {rdesc.get('frames', '?')} frames"
        f" of {size}{steps} ({rdesc['kind']})"
    )
    room, text = headroom(costs, setting, margin=cfg.margin)
    return {
        "benchmark": "latency",
        "command": bench_command("latency", cfg),
        "settings": _settings(cfg),
        "bundle": {"path": str(bundle.path), "kind": bundle.kind, "digest": bundle.digest},
        "renderer": dict(rdesc),
        "stream": {
            "n_tr": cfg.n_tr,
            "tr_s": cfg.tr,
            "physical_tr_s": cfg.tr * speed,
            "speed": speed,
            "dims": list(geo.dims),
            "voxels": geo.n_voxels,
            "dtype": rec.meta.get("dtype"),
        },
        "warmup_ms": warm,
        "wall_s": wall,
        "latency_ms": {"spans": spans, "stages": analysis["stages"]},
        "service_ms": svc,
        "budgets": budgets,
        "drops": drops,
        "drop_trs": drop_trs,
        "events": {k: len(v) for k, v in summary.get("events", {}).items()},
        "volumes": dict(summary["volumes"]),
        "counts": analysis["counts"],
        "sustained": sustained,
        "record": record_check,
        "headroom": {**room, "text": text, "costs": "p95 service times of this run"},
        "per_tr": analysis["per_tr"],
    }


def _bench_engine_class():
    """:class:`Engine` with preprocessing service times measured (defined lazily: the
    pipeline imports the ML stack)."""
    from rtdecode.pipeline import Engine

    class BenchEngine(Engine):
        def __init__(self, *args: Any, preprocess_sink: list[float], **kw: Any) -> None:
            super().__init__(*args, **kw)
            self._sink = preprocess_sink

        def _preprocessor(self):
            pre = super()._preprocessor()
            step, sink = pre.step, self._sink

            def timed(volume: np.ndarray):
                t0 = time.perf_counter()
                out = step(volume)
                sink.append((time.perf_counter() - t0) * 1e3)
                return out

            pre.step = timed
            return pre

    return BenchEngine


def _print_latency(result: Mapping[str, Any]) -> None:
    s = result["stream"]
    print(
        f"{s['n_tr']} TRs at TR {s['tr_s']:g} s ({'×'.join(map(str, s['dims']))}), "
        f"renderer {result['renderer']['kind']} ({result['renderer'].get('steps')} steps)"
    )
    print("  engine-added / end-to-end latency (ms):")
    for name, q in result["latency_ms"]["spans"].items():
        if q:
            print(
                f"    {name:22s} p50 {q['p50']:7.1f}  p95 {q['p95']:7.1f}  p99 {q['p99']:7.1f}  "
                f"max {q['max']:7.1f}  (n={q['n']})"
            )
    print(
        "  per stage (ms, incl. queueing):  "
        + "  ".join(
            f"{n} {q['p50']:.1f}/{q['p99']:.1f}" for n, q in result["latency_ms"]["stages"].items() if q
        )
        + "   (p50/p99)"
    )
    print(
        "  service time (ms, p50/p95):      "
        + "  ".join(f"{n} {q['p50']:.1f}/{q['p95']:.1f}" for n, q in result["service_ms"].items() if q)
    )
    for name, b in result["budgets"].items():
        m = "—" if b["measured"] is None else f"{b['measured']:.1f}"
        print(f"  budget {name} ≤ {b['budget']:.0f}: {'ok' if b['ok'] else 'OVER'} ({m})")
    sus = result["sustained"]
    print(
        f"  drops {result['drops']}; clips {result['counts']['rendered']}/{result['counts']['decodable']}; "
        f"sustained {sus.get('clips_per_s', float('nan')):.2f} clips/s; kept up: {sus['kept_up']}"
    )
    r = result["record"]
    print(
        f"  record: {r['recorded']}/{r['sent']} volumes sent are recorded, {r['corrupt']} corrupt"
        f" → {'complete' if r['all_recorded'] else 'INCOMPLETE'}"
    )
    print("  " + result["headroom"]["text"])
    if result.get("note"):
        print("  note: " + result["note"])
    print(f"  written: {result.get('json')} and {len(result['plots'])} plots")


# ============================================================================ scaling


@dataclass(frozen=True)
class ScalingConfig:
    """Settings of ``rtdecode bench scaling``."""

    axes: tuple[str, ...] = field(
        default=("voxels", "frames", "resolution", "steps", "models", "fusion", "backends"),
        metadata={"help": "what to vary: voxels,frames,resolution,steps,models,fusion,backends"},
    )
    voxels: tuple[int, ...] = field(
        default=(10_000, 30_000, 60_000, 131_072, 200_000, 300_000),
        metadata={"help": "volume sizes (grid voxels) of the synthetic voxel axis"},
    )
    select: int = field(
        default=4000, metadata={"help": "voxels the synthetic ridge decoder reads (0: every mask voxel)"}
    )
    voxel_trs: int = field(default=12, metadata={"help": "volumes per voxel count (the first builds state)"})
    frames: tuple[int, ...] = (4, 8, 16, 32)
    resolution: tuple[int, ...] = field(default=(32, 64, 96, 128), metadata={"help": "frame sizes (×16)"})
    steps: tuple[int, ...] = (1, 2, 4, 8)
    backends: tuple[str, ...] = field(
        default=("torch", "onnxruntime"), metadata={"help": "needs rtdecode.backends"}
    )
    base_frames: int = 16
    base_resolution: int = 64
    base_steps: int = field(default=0, metadata={"help": "0: the student's steps from renderer.json"})
    repeats: int = field(default=5, metadata={"help": "timed renders per point"})
    warmup: int = field(default=2, metadata={"help": "untimed renders per point first (kernel set-up)"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})
    bundle: Path = Path("engines/default")
    tr: tuple[float, ...] = field(default=(2.0, 1.0), metadata={"help": "TRs for the voxel headroom"})
    margin: float = 0.9
    out: Path = field(default=Path("benchmarks/results/scaling"), metadata={"help": "JSON and plots go here"})
    seed: int = 0


def phantom_volumes(
    n_voxels: int, n_tr: int, seed: int = 0, voxel_size: float = 3.0
) -> tuple[Any, list[np.ndarray]]:
    """Synthetic EPI-like volumes of about ``n_voxels`` (the 64×64×32 aspect) with head motion.

    An ellipsoidal head (about a third of the grid, as the simulator's) with smooth texture,
    moved by a small random walk (rigid, ~0.1 mm / 0.05° per TR) plus thermal noise — enough
    for motion correction to iterate as on real data. Timing only.

    Returns
    -------
    geometry, volumes
        :class:`~rtdecode.geometry.VolumeGeometry` and ``n_tr`` float32 volumes.
    """
    from scipy import ndimage

    from rtdecode.geometry import VolumeGeometry, resample_rigid

    s = (n_voxels / (64 * 64 * 32)) ** (1 / 3)
    dims = (max(8, round(64 * s)), max(8, round(64 * s)), max(6, round(32 * s)))
    geo = VolumeGeometry(dims, (voxel_size,) * 3, 2.0, subject="phantom")
    rng = np.random.default_rng(seed)
    grid = np.indices(dims, dtype=np.float32)
    r2 = sum(((grid[i] - (dims[i] - 1) / 2) / (0.42 * dims[i])) ** 2 for i in range(3))
    texture = ndimage.gaussian_filter(rng.standard_normal(dims).astype(np.float32), 1.5)
    texture /= texture.std() + 1e-6
    base = np.where(r2 < 1, 800 + 150 * texture, 30).astype(np.float32)
    base = ndimage.gaussian_filter(base, 0.7)
    steps = rng.normal(0, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05], (n_tr, 6))
    steps[0] = 0
    motion = np.cumsum(steps, axis=0)
    vols = [
        (resample_rigid(base, motion[t], geo) + rng.normal(0, 15, dims)).astype(np.float32)
        for t in range(n_tr)
    ]
    return geo, vols


def _synthetic_ridge(n_mask: int, select: int, k: int, blurry_shape: tuple[int, ...], seed: int):
    """A :class:`RidgeDecoder` with random weights of the bundle's shapes (its real decode path)."""
    from rtdecode.decode.ridge import RidgeDecoder

    rng = np.random.default_rng(seed)
    dec = RidgeDecoder.__new__(RidgeDecoder)
    n_sel = n_mask if select <= 0 else min(select, n_mask)
    dec.lags = (2, 3)
    dec.mask_index = np.arange(n_mask)
    dec.select = np.sort(rng.choice(n_mask, n_sel, replace=False))
    dec.weights = rng.standard_normal((len(dec.lags) * n_sel, k), np.float32) * 0.01
    dec.bias = np.zeros(k, np.float32)
    d = int(np.prod(blurry_shape))
    dec.basis = rng.standard_normal((k, d), np.float32) * 0.01
    dec.mean = np.full(d, 0.5, np.float32)
    dec.shape = tuple(blurry_shape)
    return dec


def time_voxel_point(
    n_voxels: int,
    n_tr: int,
    select: int,
    preprocess_cfg=None,
    k: int = 256,
    blurry_shape: tuple[int, ...] = (4, 16, 16, 3),
    seed: int = 0,
) -> dict[str, Any]:
    """Per-TR cost of ingest/record, preprocessing and decoding at one volume size (offline).

    The ingest thread's work (checksum, validation, the record's append) into a temporary
    session record, :class:`~rtdecode.preprocess.Preprocessor.step` and a ridge decode with
    random weights, on :func:`phantom_volumes`. The first volume (reference building) is not timed.
    """
    from rtdecode.ingest import validate_volume
    from rtdecode.preprocess import PreprocessConfig, Preprocessor
    from rtdecode.record import SessionRecord
    from rtdecode.volume import Volume, checksum

    geo, vols = phantom_volumes(n_voxels, n_tr, seed)
    pre = Preprocessor(geo, preprocess_cfg or PreprocessConfig())
    times: dict[str, list[float]] = {"record": [], "preprocess": [], "decode": []}
    window: list[np.ndarray] = []
    dec = None
    rec_log = logging.getLogger("rtdecode.record")
    level = rec_log.level
    rec_log.setLevel(logging.WARNING)  # a throw-away record per point: no chatter
    with tempfile.TemporaryDirectory(prefix="rtdecode-scaling-") as tmp:
        rec = SessionRecord.create(tmp, geo, {"benchmark": "scaling"})
        try:
            for t, v in enumerate(vols):
                t0 = time.perf_counter()
                vol = Volume(t, t, v, float(t), float(t), sha1=checksum(v))
                validate_volume(v)
                rec.write_volume(vol)
                t1 = time.perf_counter()
                res = pre.step(v)
                t2 = time.perf_counter()
                if dec is None:
                    dec = _synthetic_ridge(pre.n_voxels, select, k, blurry_shape, seed)
                window = [*window[-1:], res.values]
                t3 = t4 = t2
                if len(window) == 2:
                    t3 = time.perf_counter()
                    dec.decode(np.stack(window), t)
                    t4 = time.perf_counter()
                if t == 0:
                    continue
                times["record"].append((t1 - t0) * 1e3)
                times["preprocess"].append((t2 - t1) * 1e3)
                if t4 > t3:
                    times["decode"].append((t4 - t3) * 1e3)
        finally:
            rec.close()
            rec_log.setLevel(level)
    return {
        "voxels": geo.n_voxels,
        "dims": list(geo.dims),
        "mask_voxels": pre.n_voxels,
        "decoder_voxels": len(dec.select),
        "ms": {s: percentiles(v) for s, v in times.items()},
    }


def _render_inputs(renderer, caption: str = "a striped circle moving left", seed: int = 0):
    """Random conditions of the right shapes for a diffusion renderer (timing only)."""
    from rtdecode.conditions import Conditions

    rng = np.random.default_rng(seed)
    cfg = renderer.model.cfg
    c, h, w = renderer.ae.latent_shape
    f = cfg.frames
    return Conditions(
        tr=0,
        source_tr=3,
        blurry=rng.standard_normal((f, c, h, w)).astype(np.float32),
        semantic=rng.standard_normal(cfg.embed_dim).astype(np.float32),
        concepts=rng.random(cfg.n_concepts).astype(np.float32),
        caption=caption,
        mask=rng.random((cfg.mask_frames, h, w)).astype(np.float32),
        keyframe=rng.standard_normal((c, h, w)).astype(np.float32),
    )


class _RenderKit:
    """Builds diffusion renderers of any frames/resolution/steps from one bundle's weights.

    The denoiser's and the autoencoder's parameters do not depend on the frame count or the
    frame size, so the trained weights load at every point; without ``renderer.safetensors``
    the models are randomly initialised (timing is the same; the report says which).
    """

    def __init__(self, bundle_dir: Path) -> None:
        from rtdecode.models import module_tensors
        from rtdecode.models.autoencoder import FrameAutoencoder
        from rtdecode.models.video_denoiser import VideoDenoiser
        from rtdecode.models.worldclip import WorldCLIP

        d = Path(bundle_dir)
        self.trained = (d / "renderer.safetensors").exists() and (d / "encoders.json").exists()
        if self.trained:
            from safetensors.numpy import load_file

            self.spec = json.loads((d / "renderer.json").read_text())
            self.tensors = load_file(str(d / "renderer.safetensors"))
            enc = _renderer_encoders(d)
            self.ae, self.clip = enc["ae"], enc["clip"]
        else:
            model = VideoDenoiser()
            self.spec = {"config": model.config, "strength": 0.7, "student_steps": 2, "teacher_steps": 16}
            self.tensors = {**module_tensors(model, "student."), **module_tensors(model, "teacher.")}
            self.ae, self.clip = FrameAutoencoder(), WorldCLIP().eval()

    def renderer(self, frames: int, resolution: int, steps: int, which: str = "student"):
        """A :class:`~rtdecode.render.diffusion.DiffusionRenderer` at these settings."""
        from rtdecode.models.autoencoder import FrameAutoencoder
        from rtdecode.render.diffusion import diffusion_renderer

        if resolution % 16:
            raise ValueError(f"resolution {resolution} is not a multiple of 16")
        ae = FrameAutoencoder({**self.ae.config, "frame_size": resolution})
        ae.load_state_dict(self.ae.state_dict())
        spec = {**self.spec, "config": {**self.spec["config"], "frames": frames}}
        return diffusion_renderer(self.tensors, spec, {"ae": ae.eval(), "clip": self.clip}, which, steps)


def time_render(renderer, repeats: int, fusion: bool = False, warmup: int = 2) -> dict[str, Any]:
    """Per-clip cost of a diffusion renderer: ``sampler`` (text, tokens, steps), ``frame_decode``
    (the autoencoder), ``fusion`` and ``total``, as percentiles in ms.

    Parameters
    ----------
    renderer
        A :class:`~rtdecode.render.diffusion.DiffusionRenderer`.
    repeats
        Timed clips.
    fusion
        Continue every clip from the previous one's tail and cross-fade the boundary
        (multi-fMRI fusion on a same-scene boundary: its extra cost).
    warmup
        Untimed clips first: a new model's first calls allocate and choose kernels (seconds).
    """
    import torch

    from rtdecode.fuse import Fuser
    from rtdecode.models.autoencoder import to_uint8

    cond = _render_inputs(renderer)
    fuser = Fuser()
    out: dict[str, list[float]] = {"sampler": [], "frame_decode": [], "fusion": [], "total": []}
    for i in range(warmup + repeats):
        cond.tr = i
        t0 = time.perf_counter()
        lat = renderer.render_latents(cond)
        t1 = time.perf_counter()
        with torch.no_grad():
            clip = to_uint8(renderer.ae.decode(lat))
        t2 = time.perf_counter()
        if fusion:
            fuser.push(i, clip, cond.semantic, same=True)
            renderer.continue_from(lat[-1])
        t3 = time.perf_counter()
        if i < warmup:
            continue
        for k, v in (
            ("sampler", t1 - t0),
            ("frame_decode", t2 - t1),
            ("fusion", t3 - t2),
            ("total", t3 - t0),
        ):
            out[k].append(v * 1e3)
    renderer.continue_from(None)
    res = {k: percentiles(v) for k, v in out.items()}
    res["clips_per_s"] = 1000.0 / res["total"]["p50"]
    res["per_step_ms"] = res["sampler"]["p50"] / renderer.steps
    return res


def _backend_renderer(kit: _RenderKit, backend: str, frames: int, resolution: int, steps: int):
    """The renderer at these settings with its networks (denoiser, token projection, frame
    decoder, caption text tower) run by ``backend`` through
    :func:`rtdecode.backends.models.compile_render_stage` (built into, or loaded from, the engine
    cache) at the precision a session's ``--precision auto`` gives that backend.

    Raises
    ------
    ImportError
        When :mod:`rtdecode.backends` cannot be imported here.
    """
    import importlib

    try:
        stages = importlib.import_module("rtdecode.backends.models")
        choice = importlib.import_module("rtdecode.backends.choice")
    except ImportError as exc:
        raise ImportError(f"rtdecode.backends is not importable ({exc})") from exc
    precision = choice.stage_precisions(choice.resolve_backend(backend))[1]
    return stages.compile_render_stage(kit.renderer(frames, resolution, steps), backend, precision=precision)


def _fit_axis(points: list[dict[str, Any]], key: str, stages: Sequence[str]) -> dict[str, Any]:
    """Growth fits (median and p95 cost vs ``key``) of each stage over an axis's points."""
    fits: dict[str, Any] = {}
    xs = [p[key] for p in points]
    if len(set(xs)) < 2:
        return fits
    for s in stages:
        for q in ("p50", "p95"):
            ys = [p["ms"][s].get(q) for p in points]
            if all(y is not None and y > 0 for y in ys):
                fits.setdefault(s, {})[q] = fit_growth(xs, ys)
    return fits


def run_scaling(cfg: ScalingConfig) -> dict[str, Any]:
    """Time every asked axis and write ``<out>/scaling.json`` and ``scaling.png``.

    Returns
    -------
    dict
        The result written to the JSON file (points, fits, headroom, machine).
    """
    with _torch_threads(cfg.threads):
        return _run_scaling(cfg)


def _run_scaling(cfg: ScalingConfig) -> dict[str, Any]:
    load_before = os.getloadavg()
    unknown = set(cfg.axes) - {"voxels", "frames", "resolution", "steps", "models", "fusion", "backends"}
    if unknown:
        raise ValueError(f"unknown scaling axes: {', '.join(sorted(unknown))}")
    result: dict[str, Any] = {
        "benchmark": "scaling",
        "command": bench_command("scaling", cfg),
        "settings": _settings(cfg),
        "axes": {},
    }
    manifest = {}
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((cfg.bundle / "manifest.json").read_text())
    pcfg = None
    if manifest.get("preprocess"):
        from rtdecode.preprocess import PreprocessConfig

        saved = manifest["preprocess"]
        pcfg = PreprocessConfig(
            **{k: v for k, v in saved.items() if k in PreprocessConfig.__dataclass_fields__}
        )
    blurry_shape = tuple(manifest.get("blurry_shape", (4, 16, 16, 3)))

    if "voxels" in cfg.axes:
        pts = []
        for n in cfg.voxels:
            p = time_voxel_point(n, cfg.voxel_trs, cfg.select, pcfg, blurry_shape=blurry_shape, seed=cfg.seed)
            pts.append(p)
            ms = p["ms"]
            print(
                f"  voxels {p['voxels']:>8,} ({'×'.join(map(str, p['dims']))}, mask {p['mask_voxels']:,}): "
                + "  ".join(f"{s} {ms[s]['p50']:.1f} ms" for s in ms if ms[s])
            )
        result["axes"]["voxels"] = {
            "what": "offline, one process, synthetic phantom volumes (no LSL): the ingest thread's "
            "work (checksum, validation, record append), preprocessing, a ridge decode with "
            f"random weights reading {cfg.select or 'every mask'} voxel(s) at 2 lags",
            "points": pts,
            "fits": _fit_axis(pts, "voxels", ("record", "preprocess", "decode")),
        }

    render_axes = [
        a for a in ("frames", "resolution", "steps", "models", "fusion", "backends") if a in cfg.axes
    ]
    kit = _RenderKit(cfg.bundle) if render_axes else None
    steps0 = cfg.base_steps or (int(kit.spec["student_steps"]) if kit else 2)
    base = {"frames": cfg.base_frames, "resolution": cfg.base_resolution, "steps": steps0}
    weights = "trained student (teacher for the teacher point)" if kit and kit.trained else "random init"
    cache: dict[tuple, dict] = {}

    def point(frames: int, resolution: int, steps: int, which: str = "student", fusion: bool = False) -> dict:
        key = (frames, resolution, steps, which, fusion)
        if key not in cache:
            r = kit.renderer(frames, resolution, steps, which)
            cache[key] = {
                "frames": frames,
                "resolution": resolution,
                "steps": steps,
                "model": which,
                "fusion": fusion,
                "ms": time_render(r, cfg.repeats, fusion, cfg.warmup),
            }
            m = cache[key]["ms"]
            print(
                f"  render F={frames:<3d} {resolution}×{resolution} steps={steps:<2d} {which}"
                f"{' +fusion' if fusion else ''}: {m['total']['p50']:.0f} ms "
                f"(sampler {m['sampler']['p50']:.0f}, frame decoding {m['frame_decode']['p50']:.0f})"
            )
        return cache[key]

    for axis, values in (("frames", cfg.frames), ("resolution", cfg.resolution), ("steps", cfg.steps)):
        if axis not in cfg.axes:
            continue
        pts = [point(**{**base, axis: v}) for v in values]
        result["axes"][axis] = {
            "what": f"diffusion renderer per clip ({weights}); others at {base}",
            "points": pts,
            "fits": _fit_axis(pts, axis, ("total", "sampler", "frame_decode")),
        }
    if "models" in cfg.axes:
        pts = [point(**base)]
        if kit.trained:
            pts.append(point(base["frames"], base["resolution"], int(kit.spec["teacher_steps"]), "teacher"))
            ratio = pts[1]["ms"]["total"]["p50"] / pts[0]["ms"]["total"]["p50"]
            result["axes"]["models"] = {
                "what": "teacher vs student at their own steps",
                "points": pts,
                "teacher_over_student": ratio,
            }
        else:
            result["axes"]["models"] = {"skipped": "no trained renderer in the bundle"}
    if "fusion" in cfg.axes:
        pts = [point(**base), point(**base, fusion=True)]
        result["axes"]["fusion"] = {
            "what": "same-scene continuation (start from the previous tail + cross-fade) vs none",
            "points": pts,
            "with_over_without": pts[1]["ms"]["total"]["p50"] / pts[0]["ms"]["total"]["p50"],
        }
    if "backends" in cfg.axes:
        result["axes"]["backends"] = _backends_axis(cfg, kit, base, point)

    _scaling_headroom(result, cfg, base, point(**base) if kit else None)
    result["machine"] = {**machine_info(), "load_before": [round(x, 2) for x in load_before]}
    result["machine"]["load_after"] = result["machine"].pop("load_avg")
    result["note"] = _busy_note(load_before, result["machine"]["load_after"], os.cpu_count())
    cfg.out.mkdir(parents=True, exist_ok=True)
    result["plots"] = _plot_scaling(result, cfg.out / "scaling.png")
    path = cfg.out / "scaling.json"
    path.write_text(json.dumps(result, indent=1, default=_json_default))
    result["json"] = str(path)
    return result


def _backends_axis(cfg: ScalingConfig, kit: _RenderKit, base: dict, point: Callable) -> dict[str, Any]:
    pts, skipped = [], {}
    for b in cfg.backends:
        if b == "torch":
            pts.append({**point(**base), "backend": "torch"})
            continue
        t0 = time.perf_counter()
        try:
            r = _backend_renderer(kit, b, base["frames"], base["resolution"], base["steps"])
        except ImportError as exc:
            skipped[b] = f"{exc}; backend {b!r} skipped"
            print(f"  backends: {skipped[b]}")
            continue
        except Exception as exc:  # a backend that cannot run or build must not lose the other axes
            skipped[b] = f"{type(exc).__name__}: {exc}"
            print(f"  backends: {b} skipped: {skipped[b]}")
            continue
        build = time.perf_counter() - t0
        ms = time_render(r, cfg.repeats, warmup=cfg.warmup)
        pts.append({**base, "backend": b, "ms": ms, "build_or_load_s": build})
        print(f"  render {b}: {ms['total']['p50']:.0f} ms (engines built or loaded in {build:.1f} s)")
    out: dict[str, Any] = {"what": f"base renderer per backend ({base})", "points": pts, "skipped": skipped}
    if len(pts) > 1 and pts[0]["backend"] == "torch":
        t = pts[0]["ms"]["total"]["p50"]
        out["speedup_vs_torch"] = {p["backend"]: t / p["ms"]["total"]["p50"] for p in pts[1:]}
    return out


def _scaling_headroom(
    result: dict[str, Any], cfg: ScalingConfig, base: dict, base_pt: Mapping[str, Any] | None
) -> None:
    """Headroom at the bundle's geometry and the base render settings, from the scaling points."""
    vox = result["axes"].get("voxels")
    dims = (64, 64, 32)
    with contextlib.suppress(OSError, ValueError, KeyError):
        dims = tuple(json.loads((cfg.bundle / "manifest.json").read_text())["geometry"]["dims"])
    n0 = int(np.prod(dims))
    costs: dict[str, float] = {}
    fits: dict[str, Any] = {}
    measured = None
    if vox and vox["fits"]:
        fits = {s: f["p95"] for s, f in vox["fits"].items() if "p95" in f}
        costs.update({s: _predict(f, n0) for s, f in fits.items()})
        xs = [p["voxels"] for p in vox["points"]]
        measured = (min(xs), max(xs))
    setting = f"{'×'.join(map(str, dims))} ({n0:,} voxels) without rendering (no render axis measured)"
    if base_pt is not None:
        costs["render"] = base_pt["ms"]["total"]["p95"]
        setting = (
            f"{'×'.join(map(str, dims))} ({n0:,} voxels) with {base['frames']} frames of "
            f"{base['resolution']}×{base['resolution']} and {base['steps']} step{'s' * (base['steps'] != 1)}"
        )
    if not costs:
        return
    room, text = headroom(costs, setting, fits or None, cfg.tr, cfg.margin, measured)
    result["headroom"] = {**room, "text": text, "costs": "p95 per stage; voxel stages from their fits"}


def _plot_scaling(result: Mapping[str, Any], path: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (a, k, s)
        for a, k, s in (
            ("voxels", "voxels", ("record", "preprocess", "decode")),
            ("frames", "frames", ("total", "sampler", "frame_decode")),
            ("resolution", "resolution", ("total", "sampler", "frame_decode")),
            ("steps", "steps", ("total", "sampler", "frame_decode")),
        )
        if a in result["axes"] and result["axes"][a].get("points")
    ]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (axis, key, stages) in zip(axes[0], panels):
        data = result["axes"][axis]
        xs = np.array([p[key] for p in data["points"]], float)
        for i, s in enumerate(stages):
            ys = np.array(
                [p["ms"][s].get("p50", np.nan) if p["ms"].get(s) else np.nan for p in data["points"]]
            )
            fit = data["fits"].get(s, {}).get("p50")
            label = f"{s} (slope {fit['slope']:.2f})" if fit else s
            ax.loglog(xs, ys, "o", color=f"C{i}", label=label)
            if fit:
                xx = np.geomspace(xs.min(), xs.max(), 50)
                ax.loglog(xx, np.exp(fit["intercept"]) * xx ** fit["slope"], "-", color=f"C{i}", lw=1)
        ax.set(xlabel=key, ylabel="ms per TR (median)", title=axis)
        ax.legend(fontsize=7)
    return [_save(fig, path)]


def _print_scaling(result: Mapping[str, Any]) -> None:
    for axis, data in result["axes"].items():
        if "skipped" in data and not data.get("points"):
            print(f"{axis}: skipped — {data['skipped']}")
            continue
        for stage, f in data.get("fits", {}).items():
            q = f.get("p50")
            if q:
                print(f"{axis:10s} {stage:10s} slope {q['slope']:5.2f} ({q['growth']}, r² {q['r2']:.2f})")
        for k in ("teacher_over_student", "with_over_without"):
            if k in data:
                print(f"{axis:10s} {k.replace('_', ' ')}: {data[k]:.2f}×")
        if data.get("speedup_vs_torch"):
            print(f"{axis:10s} speed-up vs torch: {data['speedup_vs_torch']}")
        for b, why in data.get("skipped", {}).items() if isinstance(data.get("skipped"), dict) else ():
            print(f"{axis:10s} {b}: skipped — {why}")
    if "headroom" in result:
        print(result["headroom"]["text"])
    if result.get("note"):
        print("note: " + result["note"])
    print(f"written: {result.get('json')}")


# ============================================================================ command line


def _cmd_latency(args: argparse.Namespace) -> int:
    cfg = load_config(LatencyConfig, args)
    result = run_latency(cfg)
    _print_latency(result)
    ok = result["record"]["all_recorded"] and result["counts"]["rendered"] > 0
    return 0 if ok else 1


def _cmd_scaling(args: argparse.Namespace) -> int:
    result = run_scaling(load_config(ScalingConfig, args))
    _print_scaling(result)
    return 0


def _cmd_headroom(args: argparse.Namespace) -> int:
    scaling = json.loads(Path(args.scaling).read_text()) if args.scaling else {}
    latency = json.loads(Path(args.latency).read_text()) if args.latency else {}
    if not scaling and not latency:
        raise ValueError("give --scaling and/or --latency result files")
    room = scaling.get("headroom") or {}
    costs = dict(room.get("costs_ms", {}))
    setting = room.get("setting", "these settings")
    fits: dict[str, dict[str, float]] = {}
    measured = None
    if vox := scaling.get("axes", {}).get("voxels"):
        fits = {s: dict(f["p95"]) for s, f in vox.get("fits", {}).items() if "p95" in f}
        xs = [p["voxels"] for p in vox["points"]]
        measured = (min(xs), max(xs))
    if latency:  # the real path's service times replace the offline estimates ...
        n0 = latency["stream"]["voxels"]
        for s in ("record", "preprocess", "decode", "render"):
            if q := latency.get("service_ms", {}).get(s):
                costs[s] = q["p95"]
                if s in fits:  # ... and anchor the voxel fits there (the offline slope is kept)
                    fits[s]["intercept"] = math.log(q["p95"]) - max(fits[s]["slope"], 0.0) * math.log(n0)
        setting = latency["headroom"].get("setting", setting)
    trs = [float(t) for t in args.tr.split(",") if t.strip()]
    _, text = headroom(costs, setting, fits or None, trs, args.margin, measured)
    print(text)
    return 0


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``bench latency|scaling|headroom`` to the ``rtdecode`` subcommands.

    Parameters
    ----------
    subparsers
        What ``ArgumentParser.add_subparsers()`` returned for ``rtdecode``.

    Returns
    -------
    argparse.ArgumentParser
        The ``bench`` parser.
    """
    from rtdecode.cli import _add_output_flags

    p = subparsers.add_parser("bench", help="latency and scaling benchmarks, headroom report")
    sub = p.add_subparsers(dest="bench", required=True)
    b = sub.add_parser(
        "latency", help="simulator → LSL → engine for N TRs: per-stage latency, drops, sustained rate"
    )
    add_config_arguments(b, LatencyConfig)
    _add_output_flags(b)
    b.set_defaults(func=_cmd_latency)
    b = sub.add_parser("scaling", help="cost vs voxels, frames, resolution, steps, backend; fitted growth")
    add_config_arguments(b, ScalingConfig)
    b.set_defaults(func=_cmd_scaling)
    b = sub.add_parser("headroom", help="shortest TR and largest voxel count, from bench results")
    b.add_argument("--scaling", type=Path, default=None, help="a scaling.json")
    b.add_argument("--latency", type=Path, default=None, help="a latency-*.json (its service times win)")
    b.add_argument("--tr", default="2,1", help="TRs (s) for the voxel statement, comma-separated")
    b.add_argument("--margin", type=float, default=0.9, help="fraction of the TR a worker may use")
    b.set_defaults(func=_cmd_headroom)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m rtdecode.bench latency|scaling|headroom ...`` (same as ``rtdecode bench``)."""
    parser = argparse.ArgumentParser(prog="rtdecode", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
