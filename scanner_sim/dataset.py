"""Simulated datasets at cc2017's scale, written to HDF5.

Layout of a dataset directory (format version 1)::

    dataset.json      manifest: format, config, subjects, segments, runs, fingerprint
    stimuli.h5        /frames (N, H, W, 3) uint8 and per-frame labels over all segments:
                      /concepts (N, C) bool, /mask (N, H, W) bool, /key_concept, /colour,
                      /background, /scene, /caption_id (N,), /motion (N, 6), /captions (str);
                      /segment_start (S,) first frame of each segment
    sub-XX.h5         /volumes (R, T, nx, ny, nz) int16 — every run as acquired
                      /motion (R, T, 6), /fd (R, T), /spikes (R, T) — ground truth
                      /bold_clean (S, T, V) float32 — noiseless BOLD of the V visual voxels
                      /roi, /brain_mask, /baseline, /tissue (nx, ny, nz)
                      /visual_index, /visual_roi, /prf, /amplitude — encoding model truth
                      /run_done (R,) bool — finished runs (generation resumes after a stop)

A segment is ``segment_trs`` TRs of movie (cc2017: 8-min segments of 240 TRs); each run shows
one segment once. Training segments are shown ``train_repeats`` times, test segments
``test_repeats`` times, as in cc2017 (2 and 10). TR ``k`` of a segment shows frames
``k*F … (k+1)*F - 1`` with ``F = TR × fps``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing as mp
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
from tqdm import tqdm

from rtdecode.config import config_to_dict, update
from scanner_sim import stimuli
from scanner_sim.brain import BrainConfig, Subject, make_subject, stimulus_features
from scanner_sim.scanner import ScannerConfig, acquire

__all__ = ["PRESETS", "Dataset", "DatasetConfig", "RunInfo", "generate", "with_preset"]

FORMAT_VERSION = 1
# Bump when the simulation itself changes, so stale datasets are not resumed or mixed.
SIMULATOR_VERSION = 2
log = logging.getLogger("scanner_sim.dataset")


@dataclass(frozen=True)
class DatasetConfig:
    """What ``scanner-sim generate`` writes (defaults: cc2017's scale, 3 subjects)."""

    preset: str = field(default="cc2017", metadata={"help": "cc2017 (default), small or tiny"})
    seed: int = 0
    subjects: int = 3
    train_segments: int = 18
    test_segments: int = 5
    segment_trs: int = 240
    train_repeats: int = 2
    test_repeats: int = 10
    workers: int = field(default=2, metadata={"help": "worker processes (this machine: 2 cores)"})
    dtype: Literal["int16", "float32"] = "int16"
    stimulus: stimuli.StimulusConfig = field(default_factory=stimuli.StimulusConfig)
    brain: BrainConfig = field(default_factory=BrainConfig)
    scanner: ScannerConfig = field(default_factory=ScannerConfig)

    @property
    def frames_per_tr(self) -> int:
        """Stimulus frames per TR."""
        return round(self.scanner.tr * self.stimulus.fps)

    @property
    def n_segments(self) -> int:
        """Training plus test segments."""
        return self.train_segments + self.test_segments


PRESETS: dict[str, dict] = {
    "cc2017": {},
    "small": {"train_segments": 8, "test_segments": 2, "test_repeats": 4},
    "tiny": {"subjects": 2, "train_segments": 2, "test_segments": 1, "segment_trs": 40, "test_repeats": 3},
}


def with_preset(name: str) -> DatasetConfig:
    """The configuration of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return update(DatasetConfig(preset=name), PRESETS[name])


@dataclass(frozen=True)
class RunInfo:
    """One run of a subject: which segment it showed, which repeat, which split."""

    index: int
    segment: int
    repeat: int
    split: str


def plan_runs(cfg: DatasetConfig) -> list[RunInfo]:
    """All runs of one subject, training runs first."""
    runs = []
    for seg in range(cfg.n_segments):
        train = seg < cfg.train_segments
        for rep in range(cfg.train_repeats if train else cfg.test_repeats):
            runs.append(RunInfo(len(runs), seg, rep, "train" if train else "test"))
    return runs


def fingerprint(cfg: DatasetConfig) -> str:
    """Hash of everything that determines the data (not the worker count)."""
    d = config_to_dict(cfg)
    d.pop("workers", None)
    d["simulator_version"] = SIMULATOR_VERSION
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def estimate_bytes(cfg: DatasetConfig) -> int:
    """Approximate size of the dataset on disk."""
    h, w = cfg.stimulus.size
    n_frames = cfg.n_segments * cfg.segment_trs * cfg.frames_per_tr
    vox = int(np.prod(cfg.brain.dims)) * np.dtype(cfg.dtype).itemsize
    n_runs = len(plan_runs(cfg))
    per_subject = n_runs * cfg.segment_trs * vox
    return n_frames * h * w * 4 + cfg.subjects * per_subject


# ----------------------------------------------------------------------------- workers


def segment_movie(cfg: DatasetConfig, segment: int) -> stimuli.Movie:
    """The movie of one segment (deterministic; scene ids unique across segments)."""
    n = cfg.segment_trs * cfg.frames_per_tr
    seed = int(np.random.SeedSequence([cfg.seed, 77, segment]).generate_state(1)[0])
    return stimuli.generate_movie(n, seed=seed, config=cfg.stimulus, scene_offset=segment * 1000)


@functools.lru_cache(maxsize=4)
def _subject(cfg: DatasetConfig, index: int) -> Subject:
    return make_subject(index, cfg.seed, cfg.brain, cfg.stimulus.fps, cfg.stimulus.size)


@functools.lru_cache(maxsize=2)
def _segment_bold(cfg: DatasetConfig, subject: int, segment: int, root: str) -> np.ndarray:
    with h5py.File(Path(root) / "stimuli.h5", "r") as f:
        start = int(f["segment_start"][segment])
        n = cfg.segment_trs * cfg.frames_per_tr
        movie = _movie_from_h5(f, start, n)
    feats = stimulus_features(movie)
    return _subject(cfg, subject).bold(feats, cfg.stimulus.fps, cfg.scanner.tr, cfg.segment_trs)


def run_seed(cfg: DatasetConfig, subject: int, run: int) -> np.random.SeedSequence:
    """The seed of one run's noise and motion."""
    return np.random.SeedSequence([cfg.seed, 3000 + subject, run])


def _acquire_task(args) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    cfg, root, subject, run = args
    info = plan_runs(cfg)[run]
    bold = _segment_bold(cfg, subject, info.segment, root)
    acq = acquire(_subject(cfg, subject), bold, run_seed(cfg, subject, run), cfg.scanner, np.dtype(cfg.dtype))
    vols = np.stack(list(acq.volumes))
    return subject, run, vols, acq.motion, acq.fd, acq.spikes, bold


def _movie_task(args) -> tuple[int, stimuli.Movie]:
    cfg, segment = args
    return segment, segment_movie(cfg, segment)


def _movie_from_h5(f: h5py.File, start: int, n: int) -> stimuli.Movie:
    sl = slice(start, start + n)
    return stimuli.Movie(
        frames=f["frames"][sl],
        concepts=f["concepts"][sl],
        mask=f["mask"][sl],
        key_concept=f["key_concept"][sl],
        colour=f["colour"][sl],
        background=f["background"][sl],
        motion=f["motion"][sl],
        scene=f["scene"][sl],
        caption_id=f["caption_id"][sl],
        captions=[c.decode() if isinstance(c, bytes) else c for c in f["captions"][()]],
    )


# ----------------------------------------------------------------------------- writing


def _pool(workers: int):
    ctx = mp.get_context("fork") if hasattr(mp, "get_context") else mp
    return ctx.Pool(workers)


def _write_stimuli(cfg: DatasetConfig, root: Path) -> None:
    path = root / "stimuli.h5"
    if path.exists():
        with h5py.File(path, "r") as f:
            if f.attrs.get("complete", False):
                return
    tmp = root / "stimuli.h5.partial"
    h, w = cfg.stimulus.size
    n_seg_frames = cfg.segment_trs * cfg.frames_per_tr
    total = cfg.n_segments * n_seg_frames
    n_c = len(stimuli.VOCABULARY)
    chunk = cfg.frames_per_tr
    captions: dict[str, int] = {}
    with h5py.File(tmp, "w") as f:
        f.create_dataset("frames", (total, h, w, 3), np.uint8, chunks=(chunk, h, w, 3))
        f.create_dataset("mask", (total, h, w), bool, chunks=(chunk, h, w), compression="lzf")
        f.create_dataset("concepts", (total, n_c), bool, chunks=(chunk * 64, n_c))
        for name, dt in (
            ("key_concept", np.int16),
            ("colour", np.int16),
            ("background", np.int16),
            ("scene", np.int32),
            ("caption_id", np.int32),
        ):
            f.create_dataset(name, (total,), dt)
        f.create_dataset("motion", (total, 6), np.float32)
        f["segment_start"] = np.arange(cfg.n_segments) * n_seg_frames
        tasks = [(cfg, s) for s in range(cfg.n_segments)]
        with _pool(cfg.workers) as pool:
            bar = tqdm(pool.imap(_movie_task, tasks), total=len(tasks), desc="stimuli", unit="segment")
            for seg, movie in bar:
                sl = slice(seg * n_seg_frames, (seg + 1) * n_seg_frames)
                for name in (
                    "frames",
                    "mask",
                    "concepts",
                    "key_concept",
                    "colour",
                    "background",
                    "scene",
                    "motion",
                ):
                    f[name][sl] = getattr(movie, name)
                ids = np.array([captions.setdefault(c, len(captions)) for c in movie.captions])
                f["caption_id"][sl] = ids[movie.caption_id]
        f.create_dataset("captions", data=np.array(list(captions), dtype=h5py.string_dtype()))
        f.attrs["vocabulary"] = json.dumps(list(stimuli.VOCABULARY))
        f.attrs["colours"] = json.dumps([c[0] for c in stimuli.COLOURS])
        f.attrs["backgrounds"] = json.dumps(list(stimuli.BACKGROUNDS))
        f.attrs["fps"] = cfg.stimulus.fps
        f.attrs["complete"] = True
    tmp.replace(path)


def _open_subject_file(cfg: DatasetConfig, root: Path, index: int) -> h5py.File:
    path = root / f"sub-{index + 1:02d}.h5"
    runs = plan_runs(cfg)
    if path.exists():
        try:
            f = h5py.File(path, "a")
        except OSError as exc:  # interrupted before its metadata reached the disk
            log.warning("%s is unreadable (%s); starting this subject again", path, exc)
            path.unlink()
        else:
            if f.attrs.get("fingerprint") == fingerprint(cfg):
                return f
            f.close()
            path.unlink()
    subject = _subject(cfg, index)
    f = h5py.File(path, "w")
    dims = cfg.brain.dims
    f.create_dataset(
        "volumes", (len(runs), cfg.segment_trs, *dims), np.dtype(cfg.dtype), chunks=(1, 1, *dims)
    )
    f.create_dataset("motion", (len(runs), cfg.segment_trs, 6), np.float32)
    f.create_dataset("fd", (len(runs), cfg.segment_trs), np.float32)
    f.create_dataset("spikes", (len(runs), cfg.segment_trs), np.int16)
    f.create_dataset("bold_clean", (cfg.n_segments, cfg.segment_trs, subject.n_visual), np.float32)
    f.create_dataset("run_done", (len(runs),), bool)
    for name in (
        "roi",
        "brain_mask",
        "baseline",
        "tissue",
        "visual_index",
        "visual_roi",
        "prf",
        "motion_pref",
        "amplitude",
        "hrf_group",
    ):
        f[name] = getattr(subject, name)
    f.attrs["fingerprint"] = fingerprint(cfg)
    f.attrs["geometry"] = json.dumps(subject.geometry.to_dict())
    return f


def generate(cfg: DatasetConfig, out: Path, progress: bool = True) -> Path:
    """Write (or finish writing) a dataset; resumes runs that an earlier call completed.

    Parameters
    ----------
    cfg
        What to generate.
    out
        Output directory (created).
    progress
        Show progress bars.

    Raises
    ------
    OSError
        If the disk has clearly too little space for the dataset.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    need = estimate_bytes(cfg)
    free = shutil.disk_usage(out).free
    if need > free:
        raise OSError(f"the dataset needs about {need / 1e9:.1f} GB but {out} has {free / 1e9:.1f} GB free")
    manifest = out / "dataset.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("fingerprint") != fingerprint(cfg):
            raise FileExistsError(f"{out} holds a different dataset; choose another directory or delete it")
    runs = plan_runs(cfg)
    manifest.write_text(
        json.dumps(
            {
                "format": FORMAT_VERSION,
                "fingerprint": fingerprint(cfg),
                "config": config_to_dict(cfg),
                "subjects": [f"sub-{i + 1:02d}" for i in range(cfg.subjects)],
                "runs": [vars(r) for r in runs],
                "complete": False,
            },
            indent=1,
        )
    )
    _write_stimuli(cfg, out)
    # The worker pool is forked before any subject file is opened: forked workers would
    # otherwise inherit the files' HDF5 locks and keep finished subjects unreadable.
    with _pool(cfg.workers) as pool:
        files = {i: _open_subject_file(cfg, out, i) for i in range(cfg.subjects)}
        try:
            pending = {s: [r.index for r in runs if not f["run_done"][r.index]] for s, f in files.items()}
            for s in [s for s, todo in pending.items() if not todo]:
                files.pop(s).close()
            # Subject-major: each subject's file is closed as soon as its last run is written,
            # so training on finished subjects can start while later ones are generated.
            tasks = [(cfg, str(out), s, r) for s in sorted(pending) for r in pending[s]]
            it = pool.imap(_acquire_task, tasks)
            for s, r, vols, motion, fd, spikes, bold in tqdm(
                it, total=len(tasks), desc="runs", unit="run", disable=not progress
            ):
                f = files[s]
                f["volumes"][r] = vols
                f["motion"][r], f["fd"][r], f["spikes"][r] = motion, fd, spikes
                f["bold_clean"][runs[r].segment] = bold
                f["run_done"][r] = True
                f.flush()
                pending[s].remove(r)
                if not pending[s]:
                    files.pop(s).close()
        finally:
            for f in files.values():
                f.close()
    data = json.loads(manifest.read_text())
    data["complete"] = True
    manifest.write_text(json.dumps(data, indent=1))
    return out


# ----------------------------------------------------------------------------- reading


class Dataset:
    """Read a generated dataset.

    Parameters
    ----------
    root
        The dataset directory.

    Examples
    --------
    >>> ds = Dataset("data/tiny")                        # doctest: +SKIP
    >>> vols = ds.volumes("sub-01", run=0)               # (T, nx, ny, nz) int16
    >>> frames = ds.frames(segment=0)                    # (T*F, H, W, 3) uint8
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / "dataset.json"
        if not path.exists():
            raise FileNotFoundError(
                f"{self.root} is not a dataset (no dataset.json); make one with `scanner-sim generate`"
            )
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{self.root}: dataset format {self.manifest.get('format')} is not {FORMAT_VERSION}"
            )
        # An unfinished dataset opens; a subject whose runs are not all written is refused.
        self.complete = bool(self.manifest.get("complete"))
        if not self.complete and not {"config", "subjects", "runs"} <= self.manifest.keys():
            raise ValueError(
                f"{self.root}: generation stopped before the dataset's plan was written; "
                "run `scanner-sim generate` again to resume"
            )
        cfg = self.manifest["config"]
        self.config = update(DatasetConfig(), cfg)
        self.subjects: list[str] = self.manifest["subjects"]
        self.runs = [RunInfo(**r) for r in self.manifest["runs"]]
        self._stim = h5py.File(self.root / "stimuli.h5", "r")
        self._subs: dict[str, h5py.File] = {}

    def close(self) -> None:
        """Close the HDF5 files."""
        self._stim.close()
        for f in self._subs.values():
            f.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def subject(self, name: str) -> h5py.File:
        """The HDF5 file of a subject (see the module docstring for its datasets)."""
        if name not in self.subjects:
            raise KeyError(f"no subject {name!r}; this dataset has {', '.join(self.subjects)}")
        if name not in self._subs:
            try:
                f = h5py.File(self.root / f"{name}.h5", "r")
            except OSError as exc:  # still open for writing (HDF5 file lock), or missing
                raise ValueError(self._unfinished(name, str(exc))) from exc
            if not self.complete and not f["run_done"][()].all():
                f.close()
                raise ValueError(self._unfinished(name, "some runs are not written yet"))
            self._subs[name] = f
        return self._subs[name]

    def _unfinished(self, name: str, why: str) -> str:
        return (
            f"{self.root}: subject {name} cannot be read ({why}); generation did not finish: "
            "run `scanner-sim generate` again to resume"
        )

    def geometry(self, name: str):
        """The VolumeGeometry of a subject's volumes."""
        from rtdecode.geometry import VolumeGeometry

        g = VolumeGeometry.from_dict(json.loads(self.subject(name).attrs["geometry"]))
        return g

    def volumes(self, name: str, run: int) -> np.ndarray:
        """All volumes of one run, (T, nx, ny, nz)."""
        return self.subject(name)["volumes"][run]

    def split_runs(self, split: str) -> list[RunInfo]:
        """Runs of the ``train`` or ``test`` split."""
        return [r for r in self.runs if r.split == split]

    @property
    def stimuli(self) -> h5py.File:
        """The stimulus file (frames and labels of all segments)."""
        return self._stim

    def movie(self, segment: int) -> stimuli.Movie:
        """Frames and labels of one segment."""
        n = self.config.segment_trs * self.config.frames_per_tr
        return _movie_from_h5(self._stim, int(self._stim["segment_start"][segment]), n)

    def frames(self, segment: int) -> np.ndarray:
        """(T*F, H, W, 3) frames of one segment."""
        n = self.config.segment_trs * self.config.frames_per_tr
        start = int(self._stim["segment_start"][segment])
        return self._stim["frames"][start : start + n]
