"""Semantic metrics: N-way top-k classification accuracy, CLIP-pcc and CLIP similarity."""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
from scipy.stats import hypergeom

__all__ = ["NWayResult", "clip_pcc", "clip_similarity", "identification", "n_way_accuracy"]


class NWayResult(NamedTuple):
    """Result of :func:`n_way_accuracy`."""

    mean: float
    """Accuracy averaged over samples (and trials)."""
    per_sample: np.ndarray
    """Accuracy of each sample, averaged over trials (or exact), shape (N,)."""


def n_way_accuracy(
    probs_pred: np.ndarray,
    probs_true: np.ndarray,
    n: int,
    trials: int = 100,
    top: int = 3,
    rng: np.random.Generator | int | None = 0,
    *,
    top_k: int = 1,
    exact: bool = False,
    combine: Literal["any", "mean"] = "any",
    batch: int = 256,
) -> NWayResult:
    """N-way top-k classification accuracy — the MinD-Video protocol.

    Definition followed: MinD-Video / NeuroClips ``eval_metrics.py`` (``img_classify_metric`` /
    ``video_classify_metric`` with ``n_way_top_k_acc``). For every sample:

    1. the classifier's scores of the *ground truth* give the "correct" classes: its ``top`` highest
       classes (``logits.argsort()[-3:]`` in the published code, so ``top=3``);
    2. a trial draws ``n - 1`` distinct distractor classes uniformly from the classes that are *not*
       among these ground-truth classes;
    3. for each ground-truth class ``g`` the reconstruction's scores of ``g`` and of the distractors are
       ranked; ``g`` succeeds if it is among the ``top_k`` highest (``top_k = 1``: the reconstruction's
       score of ``g`` beats every distractor). A distractor tied with ``g`` ranks above it (the
       published ascending ``argsort`` puts the ground truth, at index 0, first among ties);
    4. ``combine="any"`` (the published code: it counts the trial and ``break``s at the first success)
       — the trial succeeds if *any* ground-truth class succeeds against the shared distractors;
       ``combine="mean"`` — the trial scores the fraction of ground-truth classes that succeed;
    5. the sample's accuracy is the mean over ``trials`` trials, the reported value the mean over
       samples.

    With ``top=1`` this is the single-label version (DreamDiffusion / MinD-Vis ``n_way_top_k_acc``, the
    ground truth's argmax as the class). Chance level is ``top_k / n`` for ``top=1`` (higher for
    ``top > 1`` with ``combine="any"``).

    Parameters
    ----------
    probs_pred : ndarray, shape (N, C)
        Classifier output on the reconstructions. Only the ranking matters: probabilities or logits.
    probs_true : ndarray, shape (N, C)
        Classifier output on the ground-truth stimuli (probabilities or logits).
    n : int
        Number of ways (2, 50, ...); requires ``n - 1 <= C - top``.
    trials : int
        Random trials per sample (100 in MinD-Video's evaluation). Ignored if ``exact``.
    top : int
        Number of the ground truth's top classes used as correct classes (3 in MinD-Video's code and in
        this project's design; 1 for the single-label variant).
    rng : numpy Generator, int or None
        Random source (a seed is turned into ``np.random.default_rng(seed)``); default seed 0, so the
        result is deterministic.
    top_k : int
        The reconstruction's top-k (1 in every published table).
    exact : bool
        Replace the random trials by their expectation over all ``C(C - top, n - 1)`` distractor sets
        (hypergeometric probabilities): the value the Monte-Carlo estimate converges to, with no
        sampling noise.
    combine : {"any", "mean"}
        How the ``top`` ground-truth classes of one trial are combined (see above).
    batch : int
        Samples processed at once (memory ``batch * trials * C`` floats).

    Returns
    -------
    NWayResult
        ``mean`` (float) and ``per_sample`` (shape (N,)).
    """
    pred = np.asarray(probs_pred, dtype=np.float64)
    true = np.asarray(probs_true, dtype=np.float64)
    if pred.ndim != 2 or pred.shape != true.shape:
        raise ValueError(f"expected two (N, C) arrays of the same shape, got {pred.shape} and {true.shape}")
    n_samples, n_classes = pred.shape
    if n < 2:
        raise ValueError("n must be >= 2")
    if not 1 <= top < n_classes:
        raise ValueError(f"top must be in [1, C - 1], got {top} with C = {n_classes}")
    if not 1 <= top_k < n:
        raise ValueError(f"top_k must be in [1, n - 1], got {top_k} with n = {n}")
    pool = n_classes - top
    if n - 1 > pool:
        raise ValueError(
            f"{n}-way needs {n - 1} distractors but only {pool} classes remain besides the "
            f"ground truth's top {top} (C = {n_classes})"
        )
    if combine not in ("any", "mean"):
        raise ValueError(f"combine must be 'any' or 'mean', got {combine!r}")
    if n_samples == 0:
        return NWayResult(float("nan"), np.zeros(0))

    # ground-truth classes: the ``top`` highest scores of the ground truth (descending)
    gt = np.argsort(-true, axis=1, kind="stable")[:, :top]  # (N, top)
    gt_scores = np.take_along_axis(pred, gt, axis=1)  # reconstruction's score of each GT class
    is_gt = np.zeros_like(pred, dtype=bool)
    np.put_along_axis(is_gt, gt, True, axis=1)

    if exact:
        # B_g = {distractor candidates j : pred_j >= pred_g}; g succeeds iff fewer than top_k of the
        # n - 1 drawn distractors fall in B_g, a hypergeometric event.
        cand = np.where(is_gt, -np.inf, pred)  # (N, C), GT classes never counted
        b = (cand[:, None, :] >= gt_scores[:, :, None]).sum(-1)  # (N, top)
        p_g = hypergeom.cdf(top_k - 1, pool, b, n - 1)  # (N, top)
        # B_g shrinks as pred_g grows, so "any g succeeds" <=> the best-scored g succeeds
        per_sample = p_g.max(axis=1) if combine == "any" else p_g.mean(axis=1)
        return NWayResult(float(per_sample.mean()), per_sample)

    if trials < 1:
        raise ValueError("trials must be >= 1")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    per_sample = np.empty(n_samples)
    for start in range(0, n_samples, batch):
        sl = slice(start, min(start + batch, n_samples))
        m = sl.stop - sl.start
        # a uniformly random (n-1)-subset of the non-GT classes per trial: the n-1 smallest random
        # keys, GT classes excluded by an infinite key
        keys = gen.random((m, trials, n_classes))
        keys[np.broadcast_to(is_gt[sl, None, :], keys.shape)] = np.inf
        idx = np.argpartition(keys, n - 2, axis=-1)[..., : n - 1]  # (m, trials, n-1)
        d_scores = np.take_along_axis(pred[sl, None, :], idx, axis=-1)  # (m, trials, n-1)
        beaten_by = (d_scores[:, :, None, :] >= gt_scores[sl, None, :, None]).sum(-1)  # (m, trials, top)
        ok = beaten_by < top_k
        trial = ok.any(-1) if combine == "any" else ok.mean(-1)
        per_sample[sl] = trial.mean(axis=1)
    return NWayResult(float(per_sample.mean()), per_sample)


def _unit(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def clip_pcc(embeddings: np.ndarray) -> dict[str, float]:
    """CLIP-pcc of videos: cosine similarity between the embeddings of their own frames.

    A temporal-smoothness measure of the *reconstruction* (no ground truth involved). Definitions
    followed: NeuroClips ``eval_metrics.py`` —

    * ``"adjacent"`` (``compute_clip_pcc``, the CLIP-pcc of NeuroClips' and Mind-Animator's tables): the
      mean cosine similarity of consecutive frames ``(t, t + 1)``, pooled over all pairs of all videos;
    * ``"all_pairs"`` (``clip_score_frame``): per video, the mean cosine similarity over all ordered
      pairs of distinct frames (off-diagonal mean of the similarity matrix), then the mean over videos.

    Parameters
    ----------
    embeddings : ndarray, shape (N, F, D)
        Frame embeddings (any scale; they are L2-normalised here), ``F >= 2``.

    Returns
    -------
    dict
        ``{"adjacent": float, "all_pairs": float}``; 1 for constant videos.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 3 or e.shape[1] < 2:
        raise ValueError(f"expected (N, F, D) embeddings with F >= 2, got shape {e.shape}")
    u = _unit(e)
    f = u.shape[1]
    adjacent = np.einsum("nfd,nfd->nf", u[:, :-1], u[:, 1:])
    gram = np.einsum("nfd,ngd->nfg", u, u)
    off_diag = (gram.sum(axis=(1, 2)) - np.trace(gram, axis1=1, axis2=2)) / (f * (f - 1))
    return {"adjacent": float(adjacent.mean()), "all_pairs": float(off_diag.mean())}


def clip_similarity(pred_emb: np.ndarray, true_emb: np.ndarray) -> np.ndarray:
    """Cosine similarity between reconstruction and ground-truth embeddings (the "CLIP score").

    Definition followed: MinD-Video ``clip_score_only`` — the cosine similarity of the CLIP image
    embeddings of each reconstructed frame and its ground-truth frame; the table reports the mean.

    Parameters
    ----------
    pred_emb, true_emb : ndarray, shape (..., D)
        Embeddings of matching items (frames or clips).

    Returns
    -------
    ndarray, shape (...)
        Cosine similarity of each pair.
    """
    p, t = np.asarray(pred_emb), np.asarray(true_emb)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs {t.shape}")
    return np.einsum("...d,...d->...", _unit(p), _unit(t))


def identification(
    pred_emb: np.ndarray,
    true_emb: np.ndarray,
    n: int = 2,
    trials: int = 100,
    rng: np.random.Generator | int | None = 0,
) -> np.ndarray:
    """n-way identification of each clip among the other clips of the set, by embedding.

    Definition followed: MindEye's two-way identification in CLIP space, extended to ``n``
    (NeuroClips / Mind-Animator report the classifier-based MinD-Video n-way instead). A clip's
    reconstruction is correct when it is more similar to its own ground truth than to the ground
    truths of ``n - 1`` other clips. Unlike the classifier-based n-way, a method that shows the
    same picture for every clip scores chance (exactly 0.5 for 2-way, about ``1/n`` otherwise),
    whatever the picture: the score counts only what differs between clips.

    Parameters
    ----------
    pred_emb, true_emb : ndarray, shape (N, D) or (N, F, D)
        Embeddings of the reconstructions and the ground truths (with a frame axis, each clip
        is the mean of its unit-norm frame embeddings).
    n : int
        Candidates per trial (the true clip and ``n - 1`` others); ``n <= N``.
    trials : int
        Random trials per clip for ``n > 2``; 2-way compares with every other clip (exact).
    rng : numpy Generator, int or None
        Random source of the trials.

    Returns
    -------
    ndarray, shape (N,)
        Each clip's success rate (ties count half in 2-way, as failures otherwise).
    """
    p, t = np.asarray(pred_emb, np.float64), np.asarray(true_emb, np.float64)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs {t.shape}")
    if p.ndim == 3:
        p, t = _unit(p).mean(1), _unit(t).mean(1)
    count = len(p)
    if not 2 <= n <= count:
        raise ValueError(f"n-way identification needs 2 <= n <= {count} clips, got n={n}")
    sim = _unit(p) @ _unit(t).T  # reconstruction i against ground truth j
    own = np.diag(sim)
    others = ~np.eye(count, dtype=bool)
    if n == 2:
        wins = (own[:, None] > sim) + 0.5 * (own[:, None] == sim)
        return (wins * others).sum(1) / (count - 1)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out = np.empty(count)
    for i in range(count):
        pool = np.flatnonzero(others[i])
        picks = np.stack([gen.choice(pool, n - 1, replace=False) for _ in range(trials)])
        out[i] = np.mean(own[i] > sim[i, picks].max(1))
    return out
