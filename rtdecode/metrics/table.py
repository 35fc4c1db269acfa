"""The paper's evaluation table: every metric for one set of reconstructions, and its markdown / JSON."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtdecode.metrics.image import hue_similarity, psnr, ssim_gray, ssim_rgb, to_float
from rtdecode.metrics.motion import epe
from rtdecode.metrics.semantic import clip_pcc, clip_similarity, identification, n_way_accuracy

__all__ = ["COLUMNS", "column_info", "evaluate_clips", "format_table", "write_table"]

FrameFn = Callable[[np.ndarray], np.ndarray]
"""``frames (M, H, W, 3) float32 in [0, 1] -> (M, C) class probabilities or (M, D) embeddings``."""
ClipFn = Callable[[np.ndarray], np.ndarray]
"""``clips (N, F, H, W, 3) float32 in [0, 1] -> (N, C) class probabilities``."""

#: Known columns in table order: key -> (header label, higher is better, number format).
COLUMNS: dict[str, tuple[str, bool, str]] = {
    "video_2way": ("Video 2-way", True, ".3f"),
    "video_50way": ("Video 50-way", True, ".3f"),
    "frame_2way": ("Frame 2-way", True, ".3f"),
    "frame_50way": ("Frame 50-way", True, ".3f"),
    "ident_2way": ("Ident. 2-way", True, ".3f"),
    "ident_50way": ("Ident. 50-way", True, ".3f"),
    "clip_sim": ("CLIP sim", True, ".3f"),
    "ssim_gray": ("SSIM", True, ".3f"),
    "ssim_rgb": ("SSIM RGB 7×7", True, ".3f"),
    "psnr": ("PSNR (dB)", True, ".2f"),
    "hue": ("Hue sim", True, ".3f"),
    "clip_pcc_adjacent": ("CLIP-pcc adj.", True, ".3f"),
    "clip_pcc_all_pairs": ("CLIP-pcc all", True, ".3f"),
    "epe": ("EPE", False, ".3f"),
}

_WAY = re.compile(r"^(video|frame|ident)_(\d+)way$")


def column_info(key: str) -> tuple[str, bool | None, str]:
    """Header label, direction (True: higher is better; None: unknown) and number format of a column."""
    if key in COLUMNS:
        return COLUMNS[key]
    m = _WAY.match(key)
    if m:
        return f"{m.group(1).capitalize()} {m.group(2)}-way", True, ".3f"
    return key, None, ".3f"


def _batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int | None) -> np.ndarray:
    """``fn`` over ``x`` in batches along axis 0, inputs as float32 in [0, 1], outputs concatenated."""
    bs = len(x) if not batch_size else batch_size
    outs = [np.asarray(fn(to_float(x[i : i + bs]).astype(np.float32))) for i in range(0, len(x), bs)]
    return np.concatenate(outs, axis=0).astype(np.float64)


def evaluate_clips(
    pred: np.ndarray,
    true: np.ndarray,
    classifier_frame: FrameFn | None,
    classifier_video: ClipFn | None,
    embed: FrameFn | None,
    rng: np.random.Generator | int | None = 0,
    *,
    ways: Sequence[int] = (2, 50),
    trials: int = 100,
    top: int = 3,
    exact: bool = False,
    batch_size: int | None = 256,
    psnr_max_db: float | None = 100.0,
    per_clip: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Every column of the evaluation table for one set of reconstructions.

    Columns (each the mean over clips, and frames where per-frame):

    * ``video_{n}way`` — :func:`~rtdecode.metrics.n_way_accuracy` of the video classifier's output on
      the reconstructed clips against its output on the ground-truth clips (MinD-Video protocol: the
      ground truth's ``top`` classes, ``trials`` random trials);
    * ``frame_{n}way`` — the same with the frame classifier on every frame (N·F samples);
    * ``ident_{n}way`` — :func:`~rtdecode.metrics.identification`: each clip's reconstruction
      against its own and ``n - 1`` other test clips' ground truths in the evaluation embedding
      (clips with fewer than ``n`` in the set: that column is left out). A constant picture
      scores chance here, unlike in the classifier-based columns;
    * ``clip_sim`` — cosine similarity of the evaluation embedding of each reconstructed frame and its
      ground-truth frame (MinD-Video's CLIP score);
    * ``ssim_gray`` / ``ssim_rgb`` / ``psnr`` / ``hue`` — per frame (:mod:`rtdecode.metrics.image`);
      PSNR capped at ``psnr_max_db`` (Mind-Animator's 100 dB for identical frames);
    * ``clip_pcc_adjacent`` / ``clip_pcc_all_pairs`` — :func:`~rtdecode.metrics.clip_pcc` of the
      reconstructions' frame embeddings;
    * ``epe`` — Farneback end-point error against the ground truth (:func:`~rtdecode.metrics.epe`).

    The models are plain callables so this module needs no torch; wrap models as

    * ``classifier_frame(frames (M, H, W, 3) float32 in [0, 1]) -> (M, C)`` probabilities (or logits),
    * ``classifier_video(clips (N, F, H, W, 3) float32 in [0, 1]) -> (N, C)`` probabilities (or logits),
    * ``embed(frames (M, H, W, 3) float32 in [0, 1]) -> (M, D)`` embeddings.

    A callable given as ``None`` drops its columns.

    Parameters
    ----------
    pred, true : ndarray, shape (N, F, H, W, 3)
        Reconstructed and ground-truth clips, ``uint8`` or float in ``[0, 1]``; ``F >= 2``,
        ``H, W >= 11``.
    classifier_frame, classifier_video, embed : callable or None
        The evaluation models (never used as training targets), see above.
    rng : numpy Generator, int or None
        Random source of the n-way trials (default seed 0: deterministic).
    ways : sequence of int
        The n of the n-way accuracies; each needs ``n - 1 + top`` classes or fewer.
    trials, top, exact
        Passed to :func:`~rtdecode.metrics.n_way_accuracy`.
    batch_size : int or None
        Items per call of the callables (frames for ``classifier_frame``/``embed``, clips for
        ``classifier_video``); ``None`` for a single call.
    psnr_max_db : float or None
        Cap of the PSNR of identical frames (``None``: ``inf``).
    per_clip : dict, optional
        Filled with each clip's score (N,) of every column that is a mean over clips (all but
        the CLIP-pcc columns), for paired comparisons of methods
        (:func:`~rtdecode.metrics.paired_bootstrap`).

    Returns
    -------
    dict
        Column key -> value (floats), keys as in :data:`COLUMNS`.
    """
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"shape mismatch: {pred.shape} vs {true.shape}")
    if pred.ndim != 5 or pred.shape[-1] != 3:
        raise ValueError(f"expected clips (N, F, H, W, 3), got shape {pred.shape}")
    n, f, h, w, _ = pred.shape
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    pred_frames, true_frames = pred.reshape(n * f, h, w, 3), true.reshape(n * f, h, w, 3)
    clips: dict[str, np.ndarray] = {}

    def n_way(prefix: str, pp: np.ndarray, pt: np.ndarray) -> None:
        for nw in ways:
            res = n_way_accuracy(pp, pt, nw, trials=trials, top=top, rng=gen, exact=exact)
            clips[f"{prefix}_{nw}way"] = res.per_sample.reshape(n, -1).mean(1)

    if classifier_video is not None:
        bs = None if batch_size is None else max(1, batch_size // f)
        n_way("video", _batched(classifier_video, pred, bs), _batched(classifier_video, true, bs))
    if classifier_frame is not None:
        n_way(
            "frame",
            _batched(classifier_frame, pred_frames, batch_size),
            _batched(classifier_frame, true_frames, batch_size),
        )
    if embed is not None:
        e_pred = _batched(embed, pred_frames, batch_size)
        e_true = _batched(embed, true_frames, batch_size)
        clips["clip_sim"] = clip_similarity(e_pred, e_true)
    clips["ssim_gray"] = ssim_gray(pred_frames, true_frames)
    clips["ssim_rgb"] = ssim_rgb(pred_frames, true_frames)
    clips["psnr"] = psnr(pred_frames, true_frames, max_db=psnr_max_db)
    clips["hue"] = hue_similarity(pred_frames, true_frames)
    # Every clip has F frames, so the mean of per-clip means is the mean over all frames.
    clips = {k: np.asarray(v, np.float64).reshape(n, -1).mean(1) for k, v in clips.items()}
    if embed is not None:  # per clip already: each clip against the other clips
        e_clips = (e_pred.reshape(n, f, -1), e_true.reshape(n, f, -1))
        for nw in (w for w in ways if w <= n):
            clips[f"ident_{nw}way"] = identification(*e_clips, nw, trials, gen)
    out = {k: float(v.mean()) for k, v in clips.items()}
    if embed is not None:
        pcc = clip_pcc(e_pred.reshape(n, f, -1))
        out["clip_pcc_adjacent"] = pcc["adjacent"]
        out["clip_pcc_all_pairs"] = pcc["all_pairs"]
    clips["epe"] = np.asarray(epe(pred, true), np.float64)
    out["epe"] = float(clips["epe"].mean())
    if per_clip is not None:
        per_clip.update(clips)
    order = list(COLUMNS)
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "–"
    v = float(value)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    return format(v, spec)


def _default_columns(rows: Mapping[str, Mapping[str, float]]) -> list[str]:
    seen: list[str] = []
    for r in rows.values():
        for k in r:
            if k not in seen:
                seen.append(k)
    known = [k for k in COLUMNS if k in seen]
    ways = sorted(
        (k for k in seen if k not in COLUMNS and _WAY.match(k)),
        key=lambda k: (_WAY.match(k).group(1) != "video", int(_WAY.match(k).group(2))),
    )
    return known + ways + [k for k in seen if k not in COLUMNS and k not in ways]


def format_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str] | None = None) -> str:
    """Markdown table of evaluation rows, the best value of each column in bold.

    Parameters
    ----------
    rows : mapping
        Row name (method) -> {column key -> value}, e.g. the outputs of :func:`evaluate_clips`.
        Missing or NaN values are shown as "–".
    columns : sequence of str or None
        Column keys in order; default: every key present, known columns (:data:`COLUMNS`) first in
        table order.

    Returns
    -------
    str
        A markdown table. Headers carry ↑ (higher is better) or ↓ (lower is better); in each column the
        best value (after formatting, so displayed ties are all bold) is bold when at least two rows
        have a value. Columns of unknown direction get no arrow and no bold.
    """
    cols = list(columns) if columns is not None else _default_columns(rows)
    header = ["Method"]
    best: dict[str, str | None] = {}
    for c in cols:
        label, higher, spec = column_info(c)
        header.append(label + ("" if higher is None else (" ↑" if higher else " ↓")))
        vals = [float(r[c]) for r in rows.values() if r.get(c) is not None and not math.isnan(float(r[c]))]
        if higher is None or len(vals) < 2:
            best[c] = None
        else:
            best[c] = _fmt(max(vals) if higher else min(vals), spec)
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join([":---"] + ["---:"] * len(cols)) + " |",
    ]
    for name, r in rows.items():
        cells = [str(name)]
        for c in cols:
            s = _fmt(r.get(c), column_info(c)[2])
            cells.append(f"**{s}**" if best[c] is not None and s == best[c] else s)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_safe(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def write_table(
    path: str | Path,
    rows: Mapping[str, Mapping[str, float]],
    meta: Mapping[str, Any] | None = None,
    columns: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Write the table as markdown at ``path`` and as JSON beside it (same name, ``.json``).

    Parameters
    ----------
    path : str or Path
        Markdown file (conventionally ``*.md``); parent directories are created.
    rows : mapping
        Row name -> {column key -> value} (see :func:`format_table`).
    meta : mapping or None
        Provenance (command, dataset, subject, seed, ...): listed under the markdown table and stored
        under ``"meta"`` in the JSON.
    columns : sequence of str or None
        Column keys in order (see :func:`format_table`).

    Returns
    -------
    (Path, Path)
        The markdown and JSON paths. In the JSON, non-finite numbers (NaN, ±inf) are written as
        ``null``; ``"columns"`` lists each column's key, label and direction.
    """
    md_path = Path(path)
    json_path = md_path.with_suffix(".json")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(columns) if columns is not None else _default_columns(rows)
    text = format_table(rows, cols)
    if meta:
        text += "\n" + "\n".join(
            f"- {k}: {v if isinstance(v, str) else json.dumps(_json_safe(v))}" for k, v in meta.items()
        )
        text += "\n"
    md_path.write_text(text, encoding="utf-8")
    doc = {
        "meta": _json_safe(dict(meta or {})),
        "columns": [
            {"key": c, "label": column_info(c)[0], "higher_is_better": column_info(c)[1]} for c in cols
        ],
        "rows": _json_safe({str(k): dict(v) for k, v in rows.items()}),
    }
    json_path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return md_path, json_path
