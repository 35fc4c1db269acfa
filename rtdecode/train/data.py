"""Training data: a simulated (or user) dataset preprocessed by the engine's own code.

Every run goes through :func:`rtdecode.preprocess.preprocess_run` — the same
:class:`~rtdecode.preprocess.Preprocessor` the online engine uses — with one voxel mask per
subject (the brain mask of the first training run's first volume). Results are cached next to
the dataset (``prepared/<subject>-<key>.h5``, float16) because preprocessing tens of thousands
of volumes takes minutes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from rtdecode.config import config_to_dict
from rtdecode.preprocess import PreprocessConfig, brain_mask, preprocess_run
from scanner_sim.dataset import Dataset

__all__ = [
    "Prepared",
    "frame_targets",
    "noiseless_subject",
    "prepare_subject",
    "reliability",
    "stimulus_windows",
]

log = logging.getLogger("rtdecode.train.data")


@dataclass
class Prepared:
    """Preprocessed runs of one subject.

    Attributes
    ----------
    mask_index
        Flat voxel indices of the columns of ``values``.
    values
        (R, T, n_mask) float16 preprocessed series, one per run of the dataset.
    motion
        (R, T, 6) estimated motion.
    path
        The cache file.
    """

    mask_index: np.ndarray
    values: h5py.Dataset
    motion: np.ndarray
    path: Path


class _SegmentSeries:
    """``values[run]`` of a noiseless subject: every repeat of a segment is the same series."""

    def __init__(self, series: np.ndarray, segment_of_run: dict[int, int]) -> None:
        self.series = series
        self.segment_of_run = segment_of_run

    def __getitem__(self, run: int) -> np.ndarray:
        return self.series[self.segment_of_run[int(run)]]


def noiseless_subject(root: str | Path, subject: str) -> Prepared:
    """A subject's noiseless BOLD (``/bold_clean``: the encoding model before scanner noise,
    drift and head motion) as :class:`Prepared` runs of its visual voxels, z-scored per voxel.

    The decoders trained on it are the evaluation's ceiling: what the same model reaches when
    the only limit is the simulated brain's encoding, not the scanner.
    """
    with Dataset(root) as ds:
        f = ds.subject(subject)
        clean = np.asarray(f["bold_clean"][()], np.float32)  # (S, T, V)
        index = np.asarray(f["visual_index"][()], np.int64)
        runs = ds.runs
        train = clean[: ds.config.train_segments]  # normalised by training statistics only
    mean = train.mean(axis=(0, 1), keepdims=True)
    std = train.std(axis=(0, 1), keepdims=True) + 1e-6
    series = ((clean - mean) / std).astype(np.float16)
    values = _SegmentSeries(series, {r.index: r.segment for r in runs})
    motion = np.zeros((len(runs), series.shape[1], 6), np.float32)
    return Prepared(index, values, motion, Path(root) / "dataset.json")


def _cache_key(ds: Dataset, cfg: PreprocessConfig) -> str:
    blob = json.dumps(
        {"data": ds.manifest["fingerprint"], "pre": config_to_dict(cfg), "v": 1}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _worker(args: tuple) -> tuple[int, np.ndarray, np.ndarray]:
    root, subject, run, mask, cfg = args
    with Dataset(root) as ds:
        vols = ds.volumes(subject, run)
        geo = ds.geometry(subject)
    values, motion, _ = preprocess_run(vols, geo, cfg, mask=mask)
    return run, values.astype(np.float16), motion


def prepare_subject(
    root: str | Path,
    subject: str,
    cfg: PreprocessConfig = PreprocessConfig(),
    workers: int = 2,
    progress: bool = True,
) -> Prepared:
    """Preprocess every run of a subject (or load the cache).

    Parameters
    ----------
    root
        Dataset directory.
    subject
        ``sub-01`` style name.
    cfg
        Preprocessing settings (part of the cache key).
    workers
        Processes to use (each preprocesses whole runs).
    """
    with Dataset(root) as ds:
        key = _cache_key(ds, cfg)
        runs = ds.runs
        first = ds.volumes(subject, ds.split_runs("train")[0].index)[0]
        n_tr = ds.config.segment_trs
    mask = brain_mask(first.astype(np.float32), cfg.mask_threshold)
    index = np.flatnonzero(mask.ravel())
    path = Path(root) / "prepared" / f"{subject}-{key}.h5"
    path.parent.mkdir(exist_ok=True)
    if _complete(path):  # read-only: other processes may be reading the cache meanwhile
        return _open_prepared(path)
    f = h5py.File(path, "a")
    if "values" not in f:
        f.create_dataset("values", (len(runs), n_tr, index.size), np.float16, chunks=(1, n_tr, index.size))
        f.create_dataset("motion", (len(runs), n_tr, 6), np.float32)
        f.create_dataset("done", (len(runs),), bool)
        f["mask_index"] = index
    todo = [r.index for r in runs if not f["done"][r.index]]
    if todo:
        ctx = mp.get_context("fork")
        tasks = [(str(root), subject, r, mask, cfg) for r in todo]
        with ctx.Pool(workers) as pool:
            for run, values, motion in tqdm(
                pool.imap_unordered(_worker, tasks),
                total=len(tasks),
                desc=f"preprocess {subject}",
                unit="run",
                disable=not progress,
            ):
                f["values"][run] = values
                f["motion"][run] = motion
                f["done"][run] = True
                f.flush()
    f.close()
    return _open_prepared(path)


def _complete(path: Path) -> bool:
    """Whether a preprocessing cache file exists with every run done."""
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            return "done" in f and bool(f["done"][()].all())
    except OSError:  # being written by another process, or truncated: (re)build it
        return False


def _open_prepared(path: Path) -> Prepared:
    f = h5py.File(path, "r")
    return Prepared(f["mask_index"][()], f["values"], f["motion"][()], path)


def block_means(frames: np.ndarray, frames_per_tr: int, n_out: int, size: int) -> np.ndarray:
    """Per-TR block averages: (T·F, H, W, ...) → (T, n_out, size, size, ...) float64.

    ``n_out`` frames evenly spaced within each TR, each averaged over ``H/size × W/size`` blocks
    (any trailing axes, e.g. RGB, are kept).
    """
    t = frames.shape[0] // frames_per_tr
    step = frames_per_tr // n_out
    pick = np.arange(n_out) * step + step // 2
    sel = frames[: t * frames_per_tr].reshape(t, frames_per_tr, *frames.shape[1:])[:, pick]
    h, w = frames.shape[1:3]
    return sel.reshape(t, n_out, size, h // size, size, w // size, *frames.shape[3:]).mean(axis=(3, 5))


def frame_targets(frames: np.ndarray, frames_per_tr: int, n_out: int, size: int) -> np.ndarray:
    """Per-TR low-resolution targets: (T, n_out, size, size, 3) float32 in [0, 1].

    ``n_out`` frames evenly spaced within each TR, block-averaged to ``size``×``size``.
    """
    return (block_means(frames, frames_per_tr, n_out, size) / 255.0).astype(np.float32)


def stimulus_windows(
    values: np.ndarray, lags: tuple[int, ...], select: np.ndarray | None = None, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Decoder inputs of one run: for each stimulus TR ``s``, the volumes ``s + lag``.

    Returns
    -------
    x, trs
        (n, len(lags) * n_select) float32 features and the stimulus TR of each row
        (``start`` ≤ s < T - max(lags)).
    """
    v = values if select is None else values[:, select]
    n = v.shape[0] - max(lags)
    trs = np.arange(start, n)
    x = np.concatenate([np.asarray(v[trs + lag], np.float32) for lag in lags], axis=1)
    return x, trs


def reliability(prep: Prepared, ds: Dataset, skip: int = 10) -> np.ndarray:
    """Per-voxel split-half reliability over training segments (repeat 0 vs repeat 1).

    Uses only the fMRI (no stimulus), so selecting voxels by it cannot leak test labels.
    """
    by_segment: dict[int, list[int]] = {}
    for r in ds.split_runs("train"):
        by_segment.setdefault(r.segment, []).append(r.index)
    rs = []
    for runs in by_segment.values():
        if len(runs) < 2:
            continue
        a = np.asarray(prep.values[runs[0]][skip:], np.float32)
        b = np.asarray(prep.values[runs[1]][skip:], np.float32)
        a = (a - a.mean(0)) / (a.std(0) + 1e-6)
        b = (b - b.mean(0)) / (b.std(0) + 1e-6)
        rs.append((a * b).mean(0))
    if not rs:
        raise ValueError("reliability needs training segments shown at least twice")
    return np.mean(rs, axis=0)
