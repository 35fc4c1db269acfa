"""Multi-fMRI fusion (NeuroClips): stitch per-TR clips into one continuous stream.

Consecutive TRs usually show the same scene. When the decoded semantic embeddings of two
consecutive TRs are closer than a threshold (calibrated on training data against the true
scene cuts), the new clip continues the scene: the renderer starts it from the previous clip's
tail and the boundary is cross-faded; otherwise it is a cut and the clip starts fresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Fuser", "FusionConfig", "calibrate_threshold", "render_fused", "roc_curve"]


@dataclass(frozen=True)
class FusionConfig:
    """Fusion settings."""

    enabled: bool = True
    threshold: float | None = field(
        default=None, metadata={"help": "cosine similarity of one scene (default: the bundle's calibration)"}
    )
    blend_frames: int = field(default=4, metadata={"help": "frames cross-faded at a same-scene boundary"})


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """ROC of ``scores`` predicting ``positive``; returns (fpr, tpr, thresholds, AUC)."""
    order = np.argsort(-scores)
    s, y = scores[order], positive[order].astype(bool)
    tps = np.cumsum(y)
    fps = np.cumsum(~y)
    keep = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tpr = np.r_[0.0, tps[keep] / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps[keep] / max((~y).sum(), 1)]
    thr = np.r_[np.inf, s[keep]]
    return fpr, tpr, thr, float(np.trapezoid(tpr, fpr))


def calibrate_threshold(similarity: np.ndarray, same_scene: np.ndarray) -> tuple[float, dict]:
    """Threshold maximising Youden's J (tpr − fpr) for "same scene", and the ROC summary."""
    fpr, tpr, thr, auc = roc_curve(similarity, same_scene)
    best = int(np.argmax(tpr - fpr))
    threshold = float(thr[best]) if np.isfinite(thr[best]) else float(similarity.max())
    return threshold, {
        "auc": auc,
        "tpr": float(tpr[best]),
        "fpr": float(fpr[best]),
        "threshold": threshold,
        "n": len(similarity),
        "cuts": int((~same_scene.astype(bool)).sum()),
    }


class Fuser:
    """Decides same-scene vs cut per TR and blends boundaries into a continuous stream.

    Parameters
    ----------
    config
        Threshold and blend length.
    """

    def __init__(self, config: FusionConfig = FusionConfig(), threshold: float = 0.8) -> None:
        self.cfg = config
        self.threshold = config.threshold if config.threshold is not None else threshold
        self.prev_embedding: np.ndarray | None = None
        self.prev_tr: int | None = None
        self.prev_tail: np.ndarray | None = None
        self.decisions: list[tuple[int, bool, float]] = []

    def same_scene(self, tr: int, embedding: np.ndarray | None) -> tuple[bool, float]:
        """Whether TR ``tr`` continues the previous clip's scene (and the similarity)."""
        if not self.cfg.enabled or embedding is None or self.prev_embedding is None or self.prev_tr != tr - 1:
            return False, float("nan")
        a = embedding / (np.linalg.norm(embedding) + 1e-9)
        b = self.prev_embedding / (np.linalg.norm(self.prev_embedding) + 1e-9)
        sim = float(a @ b)
        return sim >= self.threshold, sim

    def blend(self, clip: np.ndarray, same: bool) -> np.ndarray:
        """Cross-fade the head of ``clip`` from the previous clip's last frame on a same-scene
        boundary; a cut is left untouched."""
        n = min(self.cfg.blend_frames, len(clip))
        if not same or self.prev_tail is None or n == 0:
            return clip
        out = clip.astype(np.float32)
        w = (np.arange(1, n + 1) / (n + 1))[:, None, None, None]
        out[:n] = (1 - w) * self.prev_tail.astype(np.float32)[None] + w * out[:n]
        return np.clip(out + 0.5, 0, 255).astype(np.uint8) if clip.dtype == np.uint8 else out

    def push(
        self,
        tr: int,
        clip: np.ndarray,
        embedding: np.ndarray | None,
        same: bool | None = None,
        similarity: float = float("nan"),
    ) -> np.ndarray:
        """Fuse one TR's clip into the stream; returns the frames to emit."""
        if same is None:
            same, similarity = self.same_scene(tr, embedding)
        out = self.blend(clip, same)
        self.decisions.append((tr, same, similarity))
        self.prev_embedding = embedding
        self.prev_tr = tr
        self.prev_tail = out[-1]
        return out


def render_fused(renderer, fuser: Fuser, cond) -> tuple[np.ndarray, bool, float]:
    """Render one TR's conditions and fuse the clip into the stream.

    When the decoded keyframe embedding (``cond.semantic``) says the scene goes on from the
    previous TR, a renderer that can continue (``continue_from``) starts from the previous
    clip's last latent, and the boundary is cross-faded; on a cut the clip starts fresh.

    Returns
    -------
    clip, same, similarity
        The frames to emit, the decision and the similarity behind it.
    """
    same, similarity = fuser.same_scene(cond.tr, cond.semantic)
    if hasattr(renderer, "continue_from"):
        tail = getattr(renderer, "last_latents", None)
        renderer.continue_from(tail[-1] if same and tail is not None else None)
    clip = fuser.push(cond.tr, renderer.render(cond), cond.semantic, same, similarity)
    return clip, same, similarity
