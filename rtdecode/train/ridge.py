"""Train the ridge-regression decoder (fMRI → blurry frames) and write it as a bundle.

Voxels are chosen by split-half reliability over the training repeats; targets are a few
low-resolution frames per TR, compressed with PCA; the ridge penalty is chosen on a held-out
training segment, then the model is refitted on all training data and scored on the test
set (repeats averaged, as cc2017).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtdecode.bundle import Bundle, save_bundle
from rtdecode.preprocess import PreprocessConfig
from rtdecode.train.data import frame_targets, prepare_subject, reliability, stimulus_windows
from scanner_sim import stimuli
from scanner_sim.dataset import Dataset

__all__ = ["RidgeConfig", "fit_ridge", "train_ridge"]

log = logging.getLogger("rtdecode.train.ridge")


@dataclass(frozen=True)
class RidgeConfig:
    """Settings of ``rtdecode train ridge``."""

    dataset: Path = field(default=Path("data/small"), metadata={"help": "dataset directory"})
    subject: str = "sub-01"
    out: Path = field(default=Path("engines/default"), metadata={"help": "bundle directory to write"})
    lags: tuple[int, ...] = field(default=(2, 3), metadata={"help": "hemodynamic lags in TRs"})
    n_voxels: int = field(default=4000, metadata={"help": "most reliable voxels used"})
    n_frames: int = field(default=4, metadata={"help": "decoded frames per TR"})
    size: int = field(default=16, metadata={"help": "decoded frame size (pixels)"})
    n_components: int = field(default=256, metadata={"help": "PCA components of the targets"})
    alphas: tuple[float, ...] = (1e2, 1e3, 3e3, 1e4, 3e4, 1e5)
    warmup: int = field(default=10, metadata={"help": "TRs skipped at the start of every run"})
    workers: int = 2
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


def fit_ridge(
    x: np.ndarray,
    y: np.ndarray,
    alphas: tuple[float, ...],
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Ridge regression in the primal (one Gram matrix, one linear solve per penalty); picks
    the penalty on validation data if given.

    The Gram matrix costs one GEMM and each penalty one ``p × p`` solve, several times cheaper
    than an SVD of the ``n × p`` design when ``p`` is thousands of voxels × lags.

    Returns
    -------
    weights, bias, alpha, scores
        (n_features, n_targets) weights, (n_targets,) bias, the chosen penalty and the
        validation error of every penalty tried.
    """
    xm = x.mean(0)
    ym = y.mean(0)
    xc = np.asarray(x - xm, np.float64)
    gram = xc.T @ xc
    xty = xc.T @ np.asarray(y - ym, np.float64)
    del xc
    eye = np.eye(len(gram))

    def solve(a: float) -> np.ndarray:
        return np.linalg.solve(gram + a * eye, xty)

    scores: dict = {}
    if x_val is not None and len(alphas) > 1:
        for a in alphas:
            pred = (x_val - xm) @ solve(a) + ym
            scores[a] = float(np.mean((pred - y_val) ** 2))
        alpha = min(scores, key=scores.get)
    else:
        alpha = alphas[0]
    w = solve(alpha)
    return w.astype(np.float32), (ym - xm @ w).astype(np.float32), float(alpha), scores


def _pca(y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    mean = y.mean(0)
    _, _, vt = np.linalg.svd(y - mean, full_matrices=False)
    return mean.astype(np.float32), vt[:k].astype(np.float32)


def _split_xy(prep, ds: Dataset, runs, select, cfg: RidgeConfig):
    xs, ys = [], []
    fpt = ds.config.frames_per_tr
    for r in runs:
        x, trs = stimulus_windows(prep.values[r.index], cfg.lags, select, start=cfg.warmup)
        y = frame_targets(ds.frames(r.segment), fpt, cfg.n_frames, cfg.size)[trs]
        xs.append(x)
        ys.append(y.reshape(len(trs), -1))
    return np.concatenate(xs), np.concatenate(ys)


def _test_xy(prep, ds: Dataset, select, cfg: RidgeConfig):
    """Test inputs averaged over repeats of each test segment (cc2017's protocol)."""
    segs: dict[int, list[int]] = {}
    for r in ds.split_runs("test"):
        segs.setdefault(r.segment, []).append(r.index)
    xs, ys = [], []
    for seg, runs in sorted(segs.items()):
        avg = np.mean([np.asarray(prep.values[i], np.float32) for i in runs], axis=0)
        x, trs = stimulus_windows(avg, cfg.lags, select, start=cfg.warmup)
        y = frame_targets(ds.frames(seg), ds.config.frames_per_tr, cfg.n_frames, cfg.size)[trs]
        xs.append(x)
        ys.append(y.reshape(len(trs), -1))
    return np.concatenate(xs), np.concatenate(ys)


def _pixel_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    pc = [np.corrcoef(p, t)[0, 1] for p, t in zip(pred, true) if t.std() > 0]
    return {"pixel_r": float(np.nanmean(pc)), "mse": float(np.mean((pred - true) ** 2))}


def train_ridge(cfg: RidgeConfig, progress: bool = True) -> Bundle:
    """Train the ridge decoder on one subject of a dataset and save the bundle."""
    prep = prepare_subject(cfg.dataset, cfg.subject, cfg.preprocess, cfg.workers, progress)
    with Dataset(cfg.dataset) as ds:
        rel = reliability(prep, ds, cfg.warmup)
        select = np.sort(np.argsort(rel)[::-1][: cfg.n_voxels])
        train = ds.split_runs("train")
        val_seg = max(r.segment for r in train)
        fit_runs = [r for r in train if r.segment != val_seg]
        val_runs = [r for r in train if r.segment == val_seg]
        x_fit, y_fit = _split_xy(prep, ds, fit_runs, select, cfg)
        x_val, y_val = _split_xy(prep, ds, val_runs, select, cfg)
        mean, basis = _pca(np.concatenate([y_fit, y_val]), cfg.n_components)
        log.info("choosing the ridge penalty on %d validation TRs", len(x_val))
        _, _, alpha, scores = fit_ridge(
            x_fit, (y_fit - mean) @ basis.T, cfg.alphas, x_val, (y_val - mean) @ basis.T
        )
        x_all = np.concatenate([x_fit, x_val])
        y_all = np.concatenate([y_fit, y_val])
        w, b, _, _ = fit_ridge(x_all, (y_all - mean) @ basis.T, (alpha,))
        x_test, y_test = _test_xy(prep, ds, select, cfg)
        pred = np.clip((x_test @ w + b) @ basis + mean, 0, 1)
        metrics = {
            "test": _pixel_scores(pred, y_test),
            "alpha": alpha,
            "validation_mse": {str(k): v for k, v in scores.items()},
            "reliability_selected_median": float(np.median(rel[select])),
        }
        geo = ds.geometry(cfg.subject)
        manifest = {
            "name": Path(cfg.out).name,
            "kind": "ridge",
            "subject": cfg.subject,
            "geometry": geo.to_dict(),
            "lags": list(cfg.lags),
            "tr": ds.config.scanner.tr,
            "fps": ds.config.stimulus.fps,
            "frames_per_tr": ds.config.frames_per_tr,
            "frame_size": list(ds.config.stimulus.size),
            "blurry_shape": [cfg.n_frames, cfg.size, cfg.size, 3],
            "vocabulary": list(stimuli.VOCABULARY),
            "preprocess": {k: getattr(cfg.preprocess, k) for k in cfg.preprocess.__dataclass_fields__},
            "training": {
                "dataset": ds.manifest["fingerprint"],
                "dataset_preset": ds.config.preset,
                "n_train": len(x_all),
                "n_voxels": int(select.size),
            },
            "metrics": metrics,
        }
    log.info("test pixel r %.3f", metrics["test"]["pixel_r"])
    tensors = {
        "mask_index": prep.mask_index.astype(np.int32),
        "select": select.astype(np.int32),
        "weights": w,
        "bias": b,
        "basis": basis,
        "mean": mean,
    }
    return save_bundle(cfg.out, manifest, tensors)
