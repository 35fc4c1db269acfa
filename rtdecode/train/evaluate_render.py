"""The renderer's rows of the evaluation table: full system, ablations, oracle, steps curve.

Every row renders the same held-out test TRs — contiguous blocks, so that multi-fMRI fusion
sees real scene continuations and cuts — and is scored by
:func:`rtdecode.metrics.evaluate_clips` with the evaluation models.

Ablations remove one decoded condition at render time (it enters as zeros, the teacher's
"missing" value under its condition drop-out), start from pure noise instead of the blurry
video (no blurry init), or switch fusion off. The oracle feeds the renderer the ground-truth
conditions. The steps curve renders with teacher and student at several step counts and
times every clip.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from rtdecode.conditions import Conditions
from rtdecode.fuse import Fuser, FusionConfig, calibrate_threshold, render_fused, roc_curve
from rtdecode.metrics import epe, evaluate_clips
from rtdecode.train.targets import Targets

__all__ = [
    "ABLATIONS",
    "ablate",
    "blocks",
    "boundary_scores",
    "calibrate_fusion",
    "calibrate_fusion_on_runs",
    "consecutive_similarity",
    "decoded_conditions",
    "fusion_roc",
    "oracle_conditions",
    "render_clips",
    "render_gflop",
    "same_scene_truth",
    "score_rows",
    "steps_curve",
]

# row name → what is removed ("condition": None, or a renderer/fusion switch)
ABLATIONS: dict[str, dict] = {
    "− semantic": {"semantic": None},
    "− caption": {"caption": ""},
    "− concepts": {"concepts": None},
    "− mask": {"mask": None},
    "− keyframe": {"keyframe": None},
    "− blurry init": {"blurry_init": False},
    "− fusion": {"fusion": False},
}


def blocks(n: int, block: int, count: int) -> np.ndarray:
    """Indices of ``count`` contiguous blocks of ``block`` items spread evenly over ``range(n)``."""
    count = max(1, min(count, n // block))
    starts = np.linspace(0, n - block, count).astype(int)
    return np.unique(np.concatenate([s + np.arange(block) for s in starts]))


def same_scene_truth(ds, index: np.ndarray) -> np.ndarray:
    """For each global TR, whether its keyframe (middle frame) shows the same scene as the
    previous TR's keyframe — the design's "same scene" (False for a segment's first TR)."""
    f, t = ds.config.frames_per_tr, ds.config.segment_trs
    scene = ds.stimuli["scene"]
    starts = ds.stimuli["segment_start"][()]
    out = np.zeros(len(index), bool)
    for i, g in enumerate(index):
        seg, k = divmod(int(g), t)
        if k == 0:
            continue
        key = int(starts[seg]) + k * f + f // 2
        out[i] = scene[key] == scene[key - f]
    return out


def decoded_conditions(outputs: dict, index: np.ndarray, rows: np.ndarray) -> list[Conditions]:
    """Conditions of the decoder's outputs ``outputs`` (one row per test TR) for ``rows``."""

    def get(name, i):
        return outputs[name][i] if name in outputs else None

    return [
        Conditions(
            tr=int(index[i]),
            source_tr=int(index[i]),
            blurry=get("blurry", i),
            semantic=get("semantic", i),
            concepts=get("concepts", i),
            caption=outputs.get("caption", [""] * (i + 1))[i],
            mask=get("mask", i),
            motion=get("motion", i),
            keyframe=get("keyframe", i),
            pixels=get("pixels", i),
        )
        for i in rows
    ]


def oracle_conditions(targets: Targets, index: np.ndarray) -> list[Conditions]:
    """Ground-truth conditions of global TRs ``index`` (the renderer's ceiling)."""
    mid = targets.latents.shape[1] // 2
    return [
        Conditions(
            tr=int(g),
            source_tr=int(g),
            blurry=targets.latents[g].astype(np.float32),
            semantic=targets.image_emb[g],
            concepts=targets.concepts[g].astype(np.float32),
            caption=targets.captions[g],
            mask=targets.masks[g].astype(np.float32),
            keyframe=targets.latents[g, mid].astype(np.float32),
        )
        for g in index
    ]


def render_clips(
    renderer, conditions: list[Conditions], fusion: FusionConfig, threshold: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Render conditions in order through the engine's fuse logic.

    Returns
    -------
    clips
        (N, F, H, W, 3) uint8.
    same
        (N,) the fusion decision per clip (False where fusion is off or at a gap).
    ms_per_clip
        Mean wall time per clip (render + fuse).
    """
    fuser = Fuser(fusion, threshold)
    if hasattr(renderer, "continue_from"):
        renderer.continue_from(None)
    clips, same = [], []
    t0 = time.perf_counter()
    for cond in conditions:
        clip, s, _ = render_fused(renderer, fuser, cond)
        clips.append(clip)
        same.append(s)
    ms = (time.perf_counter() - t0) * 1000 / max(len(conditions), 1)
    return np.stack(clips), np.asarray(same), ms


def ablate(conditions: list[Conditions], change: dict) -> list[Conditions]:
    """The conditions with the fields in ``change`` replaced (switches are ignored here)."""
    fields = {k: v for k, v in change.items() if k not in ("blurry_init", "fusion")}
    return [replace(c, **fields) for c in conditions] if fields else conditions


def boundary_scores(
    clips: np.ndarray, truth: np.ndarray, index: np.ndarray, same_true: np.ndarray, embed
) -> dict[str, float]:
    """Smoothness across clip boundaries of consecutive TRs.

    For every boundary (last frame of TR g-1, first frame of TR g): the cosine similarity of
    the evaluation embeddings of the two frames (CLIP-pcc across the boundary) and the EPE of
    that frame pair against the ground truth's — separately on true same-scene boundaries and
    on true cuts (where a cut must stay a cut: similarity low, like the ground truth's).
    """
    pos = np.flatnonzero(np.diff(index) == 1) + 1  # i: clip i continues clip i-1
    if len(pos) == 0:
        return {}
    a = clips[pos - 1, -1].astype(np.float32) / 255
    b = clips[pos, 0].astype(np.float32) / 255
    ea, eb = embed(a), embed(b)
    sim = np.sum(ea * eb, 1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1) + 1e-9)
    pairs = np.stack([clips[pos - 1, -1], clips[pos, 0]], 1)
    true_pairs = np.stack([truth[pos - 1, -1], truth[pos, 0]], 1)
    err = epe(pairs, true_pairs)
    same = same_true[pos]
    out = {"boundaries": float(len(pos)), "cuts": float((~same).sum())}
    for name, sel in (("same", same), ("cut", ~same)):
        if sel.any():
            out[f"boundary_clip_pcc_{name}"] = float(sim[sel].mean())
            out[f"boundary_epe_{name}"] = float(np.mean(err[sel]))
    return out


def fusion_roc(similarity: np.ndarray, same: np.ndarray) -> dict:
    """ROC summary of consecutive-TR similarity against the true same-scene labels."""
    ok = np.isfinite(similarity)
    *_, auc = roc_curve(similarity[ok], same[ok])
    return {"auc": auc, "n": int(ok.sum()), "cuts": int((~same[ok]).sum())}


def consecutive_similarity(semantic: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Cosine similarity of each TR's decoded semantic embedding with the previous TR's
    (NaN where the previous TR is not the one before)."""
    e = semantic / (np.linalg.norm(semantic, axis=1, keepdims=True) + 1e-9)
    sim = np.full(len(index), np.nan)
    ok = np.flatnonzero(np.diff(index) == 1) + 1
    sim[ok] = np.sum(e[ok] * e[ok - 1], 1)
    return sim


def calibrate_fusion(semantic: np.ndarray, index: np.ndarray, same: np.ndarray) -> tuple[float, dict]:
    """The fusion threshold (Youden's J) from decoded embeddings of consecutive TRs."""
    sim = consecutive_similarity(semantic, index)
    ok = np.isfinite(sim)
    return calibrate_threshold(sim[ok], same[ok])


def calibrate_fusion_on_runs(run, data, runs, ds, tokenizer) -> dict:
    """Calibrate the fusion threshold on (a spread of) training runs, decoded single-trial as
    online; returns ``{"threshold", "train": ROC summary}``."""
    from rtdecode.train.decoders import run_outputs

    runs = runs[:: max(1, len(runs) // 24)]
    samples = data.samples(runs)
    out = run_outputs(run.model, data.windows(samples), tokenizer, run.motion_norm)
    index = data.target_index(samples)
    threshold, roc = calibrate_fusion(out["semantic"], index, same_scene_truth(ds, index))
    return {"threshold": threshold, "train": roc}


def score_rows(
    renderer,
    conditions: list[Conditions],
    truth: np.ndarray,
    index: np.ndarray,
    same_true: np.ndarray,
    scorers: tuple,
    threshold: float,
    changes: dict[str, dict],
    per_clip: dict[str, dict] | None = None,
) -> dict[str, dict[str, float]]:
    """One table row per entry of ``changes`` (``{}``: the full system); with ``per_clip``,
    each row's per-clip scores go to ``per_clip[name]`` (for the paired comparisons)."""
    frame_cls, video_cls, embed = scorers
    rows = {}
    for name, change in changes.items():
        init = renderer.blurry_init
        renderer.blurry_init = change.get("blurry_init", True)
        fusion = FusionConfig(enabled=change.get("fusion", True))
        try:
            clips, same, ms = render_clips(renderer, ablate(conditions, change), fusion, threshold)
        finally:
            renderer.blurry_init = init
        clip_scores = None if per_clip is None else per_clip.setdefault(name, {})
        row = evaluate_clips(
            clips.astype(np.float32) / 255, truth, frame_cls, video_cls, embed, rng=0, per_clip=clip_scores
        )
        row.update(boundary_scores(clips, (truth * 255).astype(np.uint8), index, same_true, embed))
        row["ms_per_clip"] = ms
        cut = ~same_true[1:] & (np.diff(index) == 1)
        if cut.any():
            row["cuts_kept"] = float(np.mean(~same[1:][cut]))
        rows[name] = row
    return rows


def render_gflop(renderer, cond: Conditions) -> float:
    """Compute of rendering one clip (GFLOP, torch's FLOP counter): sampler, token projection,
    caption embedding and frame decoding."""
    from rtdecode.models import count_gflop

    renderer.continue_from(None)
    return count_gflop(lambda: renderer.render(cond))


def steps_curve(
    renderers: dict[str, object],
    settings: dict[str, tuple[int, ...]],
    conditions: list[Conditions],
    truth: np.ndarray,
    scorers: tuple,
) -> dict[str, dict[str, float]]:
    """Quality, time and compute per clip for each renderer at each step count (fusion off)."""
    frame_cls, video_cls, embed = scorers
    out = {}
    for name, steps_list in settings.items():
        r = renderers[name]
        keep = r.steps
        for steps in steps_list:
            r.steps = steps
            clips, _, ms = render_clips(r, conditions, FusionConfig(enabled=False), 1.0)
            row = evaluate_clips(clips.astype(np.float32) / 255, truth, frame_cls, video_cls, embed, rng=0)
            out[f"{name} {steps} steps"] = {
                "model": name,
                "steps": steps,
                "ms_per_clip": ms,
                "gflop_per_clip": render_gflop(r, conditions[0]),
                "nfe": steps,
                "ssim": row["ssim_gray"],
                "video_2way": row["video_2way"],
                "frame_2way": row["frame_2way"],
                "clip_pcc": row["clip_pcc_adjacent"],
                "epe": row["epe"],
            }
        r.steps = keep
    return out
