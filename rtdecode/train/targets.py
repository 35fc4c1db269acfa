"""Decoder targets per TR, computed once from a dataset's stimuli by the stimulus-side encoders.

For every TR of every segment (index ``segment * segment_trs + k``): the autoencoder latents
of all its frames (the perception target; the middle one is the keyframe), the world-CLIP
embeddings of the middle frame and of its caption (semantic targets), the caption's word ids,
the concepts present, low-resolution key-object masks, the mean motion, and the key concept.
Cached beside the dataset (``prepared/targets-<key>.h5``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from rtdecode.train.data import block_means, frame_targets
from scanner_sim.dataset import Dataset

__all__ = ["MASK_FRAMES", "Targets", "compute_targets", "pixel_targets"]

MASK_FRAMES = (2, 6, 10, 14)  # frames of a TR whose key-object masks are decoded
MASK_SIZE = 16


@dataclass
class Targets:
    """Per-TR targets of a dataset (arrays indexed by global TR ``segment * T + k``)."""

    latents: np.ndarray  # (N, F, 4, 16, 16) float16
    image_emb: np.ndarray  # (N, D) float32
    text_emb: np.ndarray  # (N, D) float32
    tokens: np.ndarray  # (N, max_words + 2) int16: BOS words EOS PAD...
    concepts: np.ndarray  # (N, C) bool — present in any frame of the TR
    masks: np.ndarray  # (N, 4, 16, 16) float16
    motion: np.ndarray  # (N, 6) float32
    key_concept: np.ndarray  # (N,) int16 — of the middle frame
    captions: list[str]  # caption of the middle frame
    pixels: np.ndarray | None = None  # (N, F, 3, s, s) float16 in [0, 1]: see pixel_targets

    def __len__(self) -> int:
        return len(self.key_concept)


def _key(ds: Dataset, encoders_digest: str) -> str:
    blob = json.dumps({"data": ds.manifest["fingerprint"], "enc": encoders_digest, "v": 1})
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _per_tr(ds: Dataset, segment: int):
    movie = ds.movie(segment)
    f = ds.config.frames_per_tr
    t = ds.config.segment_trs
    return movie, f, t


@torch.no_grad()
def _segment_targets(ds: Dataset, segment: int, encoders: dict, tokenizer, max_words: int) -> dict:
    movie, f, t = _per_tr(ds, segment)
    frames = movie.frames.reshape(t, f, *movie.frames.shape[1:])
    mid = f // 2
    latents = encoders["ae"].encode(movie.frames).reshape(t, f, 4, 16, 16)
    captions = [movie.caption(k * f + mid) for k in range(t)]
    image_emb = encoders["clip"].encode_image(frames[:, mid])
    text_emb = encoders["clip"].encode_text(captions)
    small = block_means(movie.mask, f, f, MASK_SIZE)  # every frame's mask, then the decoded ones
    return {
        "latents": np.asarray(latents, np.float16),
        "image_emb": np.asarray(image_emb, np.float32),
        "text_emb": np.asarray(text_emb, np.float32),
        "tokens": tokenizer.encode_batch(captions, max_words).astype(np.int16),
        "concepts": movie.concepts.reshape(t, f, -1).any(axis=1),
        "masks": small[:, list(MASK_FRAMES)].astype(np.float16),
        "motion": movie.motion.reshape(t, f, 6).mean(axis=1).astype(np.float32),
        "key_concept": movie.key_concept.reshape(t, f)[:, mid].astype(np.int16),
        "captions": captions,
    }


def _partial(path: Path) -> Path:
    """Where one process writes a cache file before renaming it into place: per process,
    because parallel lanes (one per subject) may all find the cache missing at once."""
    return path.with_suffix(f".{os.getpid()}.partial")


def pixel_targets(root: str | Path, size: int, progress: bool = True) -> np.ndarray:
    """Every frame of every TR block-averaged to ``size``×``size``: (N, F, 3, size, size) float16.

    Only the decoder's pixel head needs them, at its own size, so they are not part of
    :func:`compute_targets`; they need no encoder and have their own cache file
    (``prepared/pixels-<data>-<size>.h5``).
    """
    with Dataset(root) as ds:
        key = f"{ds.manifest['fingerprint'][:12]}-{size}"
        path = Path(root) / "prepared" / f"pixels-{key}.h5"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            f, t = ds.config.frames_per_tr, ds.config.segment_trs
            tmp = _partial(path)
            with h5py.File(tmp, "w") as out:
                dset = out.create_dataset("pixels", (ds.config.n_segments * t, f, 3, size, size), np.float16)
                segments = range(ds.config.n_segments)
                for s in tqdm(segments, desc="pixels", unit="segment", disable=not progress):
                    small = frame_targets(ds.frames(s), f, f, size)  # all F frames, channels last
                    dset[s * t : (s + 1) * t] = small.transpose(0, 1, 4, 2, 3).astype(np.float16)
            tmp.replace(path)
    with h5py.File(path, "r") as f:
        return f["pixels"][()]


def compute_targets(
    root: str | Path, encoders: dict, encoders_digest: str, tokenizer, max_words: int, progress: bool = True
) -> Targets:
    """Targets for every TR of a dataset (computed once, then read from the cache).

    Parameters
    ----------
    root
        Dataset directory.
    encoders
        The stimulus-side models (``ae``, ``clip``) from :func:`rtdecode.train.encoders.load_encoders`.
    encoders_digest
        Identifies the encoders (part of the cache key).
    tokenizer
        Caption tokenizer with ``encode_batch(texts, max_words)``.
    """
    with Dataset(root) as ds:
        path = Path(root) / "prepared" / f"targets-{_key(ds, encoders_digest)}.h5"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            parts = [
                _segment_targets(ds, s, encoders, tokenizer, max_words)
                for s in tqdm(
                    range(ds.config.n_segments), desc="targets", unit="segment", disable=not progress
                )
            ]
            tmp = _partial(path)
            with h5py.File(tmp, "w") as f:
                for name in parts[0]:
                    if name == "captions":
                        data = [c for p in parts for c in p[name]]
                        f.create_dataset(name, data=np.array(data, dtype=h5py.string_dtype()))
                    else:
                        f.create_dataset(name, data=np.concatenate([p[name] for p in parts]))
            tmp.replace(path)
    with h5py.File(path, "r") as f:
        arrays = {k: f[k][()] for k in f}
    arrays["captions"] = [c.decode() if isinstance(c, bytes) else c for c in arrays["captions"]]
    return Targets(**arrays)
