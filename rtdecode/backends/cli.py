"""``rtdecode engines build BUNDLE`` and ``rtdecode engines list``.

``build`` compiles every engine a bundle needs (brain decoder, denoiser and token projection,
autoencoder decoder) for one backend ahead of a session, with a progress bar, so the first TR
does not pay for exports and TensorRT builds. ``list`` shows the build cache.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rtdecode.backends.cache import DEFAULT_CACHE_DIR, list_entries
from rtdecode.backends.choice import BACKENDS, PRECISION_CHOICES

__all__ = ["add_engines_parser", "build_engines", "format_entries"]


def build_engines(
    bundle: str | Path,
    backend: str = "auto",
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    renderer: str = "student",
    rebuild: bool = False,
    progress: bool = True,
    precision: str = "auto",
) -> list[dict[str, Any]]:
    """Build (or verify and reuse) every engine of a bundle.

    Parameters
    ----------
    bundle
        The bundle directory.
    backend
        ``auto|onnxruntime|tensorrt|torch-tensorrt`` (``torch`` builds nothing).
    cache_dir
        The build cache.
    renderer
        Which denoiser(s): ``student``, ``teacher`` or ``both``.
    rebuild
        Rebuild even valid entries.
    progress
        Show a tqdm progress bar.
    precision
        ``auto|fp32|fp16|int8``, as a session's ``--precision``
        (:func:`~rtdecode.backends.choice.stage_precisions`), so the session finds these engines.

    Returns
    -------
    list of dict
        Per engine: ``name``, ``backend``, ``built`` (False: valid cache entry reused),
        ``seconds``, ``artifact``; and one ``note`` row per model the bundle lacks.
    """
    from tqdm import tqdm

    from rtdecode.backends.choice import resolve_backend, stage_precisions
    from rtdecode.backends.compile import compile_module
    from rtdecode.backends.models import bundle_digest, bundle_engines

    chosen = resolve_backend(backend)
    if chosen == "torch":
        return [{"note": "backend torch runs the models eagerly: there is nothing to build"}]
    p_dec, p_ren = stage_precisions(chosen, precision)
    specs, notes = bundle_engines(bundle, renderer, p_ren, p_dec)
    key_parts = {"bundle": bundle_digest(bundle)}
    rows: list[dict[str, Any]] = [{"note": n} for n in notes]
    bar = tqdm(specs, desc=f"engines ({chosen})", unit="engine", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        t0 = time.perf_counter()
        runner = compile_module(
            spec.module,
            spec.inputs,
            spec.name,
            chosen,
            cache_dir,
            {**key_parts, **(spec.key_parts or {})},
            dynamic_batch=spec.dynamic_batch,
            rebuild=rebuild,
            precision=spec.precision,
            calibration=spec.calibration,
        )
        rows.append(
            {
                "name": spec.name,
                "backend": chosen,
                "built": runner.built,
                "seconds": round(time.perf_counter() - t0, 2),
                "artifact": str(runner.entry.artifact) if runner.entry else None,
            }
        )
    return rows


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _age(s: float | None) -> str:
    if s is None:
        return "?"
    for unit, div in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= div:
            return f"{s / div:.0f} {unit}"
    return f"{s:.0f} s"


def format_entries(rows: list[dict[str, Any]]) -> str:
    """The ``engines list`` table: model, backend, precision, bundle, input shapes, size, age, status."""
    if not rows:
        return "(cache is empty)"
    table = [("model", "backend", "prec", "bundle", "inputs", "size", "age", "status")]
    for r in rows:
        k = r["key"]
        try:
            shapes = " ".join(
                f"{n}={'x'.join(str(d) for d in (['B', *s[1:]] if k.get('dynamic_batch') else s))}"
                for n, s, _dtype in k.get("inputs", [])
            )
        except (TypeError, ValueError):  # a key file of another layout
            shapes = "?"
        status = r["status"] + (f" ({r['reason']})" if r["reason"] else "")
        table.append(
            (
                k.get("model", r["file"]),
                k.get("backend", "?"),
                k.get("precision", "?"),
                str(k.get("bundle", "-"))[:8],
                shapes,
                _size(r["bytes"]),
                _age(r["age_s"]),
                status,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1] for row in table
    )


def _cmd_build(args: argparse.Namespace) -> int:
    rows = build_engines(
        args.bundle, args.backend, args.cache_dir, args.renderer, args.rebuild, precision=args.precision
    )
    for r in rows:
        if "note" in r:
            print(f"note: {r['note']}")
        else:
            what = "built" if r["built"] else "cached"
            print(f"{r['name']:<18} {r['backend']:<14} {what:<6} {r['seconds']:7.1f} s  {r['artifact']}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    rows = list_entries(args.cache_dir)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_entries(rows))
    return 0


def add_engines_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``engines build`` and ``engines list`` to the ``rtdecode`` sub-command parsers.

    Parameters
    ----------
    subparsers
        The object ``parser.add_subparsers()`` returned.

    Returns
    -------
    argparse.ArgumentParser
        The ``engines`` parser (its commands set ``func``, like the other sub-commands).
    """
    p = subparsers.add_parser("engines", help="build and list compiled engines (onnxruntime, TensorRT)")
    sub = p.add_subparsers(dest="engines_command", required=True)
    b = sub.add_parser("build", help="build a bundle's engines ahead of a session")
    b.add_argument("bundle", type=Path, help="model bundle directory (e.g. engines/default)")
    b.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="default: auto (TensorRT if CUDA, else onnxruntime)",
    )
    b.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="default: %(default)s")
    b.add_argument(
        "--renderer",
        choices=("student", "teacher", "both"),
        default="student",
        help="which denoiser(s) to build (default: %(default)s)",
    )
    b.add_argument("--rebuild", action="store_true", help="rebuild even valid cache entries")
    b.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="as the session's --precision (auto: int8 render engines on onnxruntime, fp16 on GPUs)",
    )
    b.set_defaults(func=_cmd_build)
    ls = sub.add_parser("list", help="show the build cache: model, backend, shapes, size, age, valid/stale")
    ls.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="default: %(default)s")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_cmd_list)
    return p
