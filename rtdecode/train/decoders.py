"""Train the brain decoder (all sub-tasks) on one subject and evaluate it on the test set.

Inputs are the engine's own preprocessing of every run (:mod:`rtdecode.train.data`), the
most reliable voxels (split-half reliability over the training repeats: fMRI only), at each
hemodynamic lag. Targets come from the stimulus-side encoders (:mod:`rtdecode.train.targets`).
Training runs are used repeat by repeat (the noise differs); the last training segment is held
out for validation; the test segments are averaged over their repeats, as cc2017.

Loss weighting across sub-tasks
-------------------------------
``uniform``      fixed weights from the start.
``progressive``  NEURONS' progressive learning: the perception-level tasks (concepts, mask)
                 first, semantics and captions next, then the video-level tasks (blurry video,
                 keyframe, motion), each ramped in linearly.
``uncertainty``  learned homoscedastic-uncertainty weights (Kendall et al., 2018).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

# The metric's own SSIM map and constants, applied to tensors.
from rtdecode.metrics.image import GRAY_WEIGHTS, _ssim_map
from rtdecode.models.decoders import HEADS, BrainDecoder, DecoderConfig, pixel_frames
from rtdecode.models.text import WordTokenizer
from rtdecode.preprocess import PreprocessConfig
from rtdecode.train.data import Prepared, prepare_subject, reliability
from rtdecode.train.targets import Targets, pixel_targets

__all__ = ["WEIGHTS", "DecoderData", "DecodersConfig", "decoder_loss", "head_weights"]

log = logging.getLogger("rtdecode.train.decoders")

WEIGHTS = {
    "semantic": 1.0,
    "keyframe": 1.0,
    "concepts": 1.0,
    "caption": 0.5,
    "mask": 1.0,
    "blurry": 2.0,
    "motion": 0.5,
}
# Pixels in [0, 1] have a small variance: this puts their error on the latents' scale.
PIXEL_WEIGHT = 20.0
# Progressive schedule: (start, end) of each head's linear ramp, as fractions of training.
STAGES = {
    "concepts": (0.0, 0.0),
    "mask": (0.0, 0.0),
    "semantic": (0.15, 0.3),
    "caption": (0.15, 0.3),
    "blurry": (0.3, 0.45),
    "keyframe": (0.3, 0.45),
    "motion": (0.3, 0.45),
}


@dataclass(frozen=True)
class DecodersConfig:
    """Settings of ``rtdecode train decoders``."""

    dataset: Path = field(default=Path("data/cc2017"), metadata={"help": "dataset directory"})
    subject: str = "sub-01"
    encoders: Path = field(default=Path("engines/default"), metadata={"help": "directory with encoders.*"})
    out: Path = field(default=Path("engines/default"), metadata={"help": "bundle directory to write"})
    lags: tuple[int, ...] = field(default=(2, 3), metadata={"help": "hemodynamic lags in TRs"})
    n_voxels: int = field(default=4000, metadata={"help": "most reliable voxels used"})
    hidden: int = 512
    # Separate lags and half the windows repeat-averaged: chosen on the held-out segment
    # (benchmarks/decoder_pixels.py) and confirmed on the test set (README, "Models").
    lag_features: Literal["mixed", "separate"] = field(
        default="separate", metadata={"help": "lags summed per voxel (mixed) or projected apart (separate)"}
    )
    pixel_size: int = field(
        default=16, metadata={"help": "blurry frames also in pixels (side; 0: latents only)"}
    )
    pixel_rank: int = field(
        default=0, metadata={"help": "rank of a linear path from the lag projections to the pixels (0: none)"}
    )
    steps: int = 4000
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    perceptual: float = field(
        default=0.0,
        metadata={"help": "weight of the blurry pixels' world-CLIP feature loss (0: pixels by MSE only)"},
    )
    perceptual_kind: Literal["cosine", "contrastive"] = "cosine"
    ssim: float = field(default=0.0, metadata={"help": "weight of the blurry pixels' SSIM loss"})
    weighting: Literal["uniform", "progressive", "uncertainty"] = "progressive"
    average_repeats: float = field(
        default=0.5,
        metadata={"help": "fraction of training windows averaged over their segment's repeats"},
    )
    heads: tuple[str, ...] = field(default=HEADS, metadata={"help": "sub-tasks (ablations drop some)"})
    warmup: int = field(default=10, metadata={"help": "TRs skipped at the start of every run"})
    seed: int = 0
    workers: int = 2
    checkpoint_every: int = 500
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


class DecoderData:
    """Windows of preprocessed TRs and their targets, held in memory as float16.

    Parameters
    ----------
    prep
        Preprocessed runs of the subject.
    runs
        The dataset's run list (``RunInfo``).
    segment_trs
        TRs per segment (targets are indexed ``segment * segment_trs + k``).
    select
        Columns (voxels) of the preprocessed vectors to use.
    lags
        Hemodynamic lags in TRs.
    warmup
        TRs skipped at the start of every run.
    """

    def __init__(
        self, prep: Prepared, runs, segment_trs: int, select: np.ndarray, lags: tuple[int, ...], warmup: int
    ) -> None:
        self.lags = np.asarray(lags)
        self.T = segment_trs
        self.select = select
        self.values = {r.index: np.asarray(prep.values[r.index][:, select], np.float16) for r in runs}
        self.runs = {r.index: r for r in runs}
        self.repeats: dict[int, list[int]] = {}
        for r in runs:
            self.repeats.setdefault(r.segment, []).append(r.index)
        s = np.arange(warmup, segment_trs - max(lags))
        self.stim_trs = s

    def samples(self, runs) -> np.ndarray:
        """(n, 2) array of (run index, stimulus TR) for these runs."""
        return np.array([(r.index, s) for r in runs for s in self.stim_trs], dtype=np.int64)

    def windows(self, samples: np.ndarray, average: np.ndarray | None = None) -> np.ndarray:
        """(n, n_lags, n_voxels) float32 inputs of the samples; where ``average`` is true, the
        window averaged over every repeat of its segment (as the test set is)."""
        rows = []
        for i, (r, s) in enumerate(samples):
            runs = self.repeats[self.runs[r].segment] if average is not None and average[i] else [r]
            rows.append(np.mean([self.values[q][s + self.lags] for q in runs], axis=0, dtype=np.float32))
        return np.stack(rows)

    def target_index(self, samples: np.ndarray) -> np.ndarray:
        """Global TR index of each sample's stimulus."""
        return np.array([self.runs[r].segment * self.T + s for r, s in samples])

    def averaged(self, runs) -> tuple[np.ndarray, np.ndarray]:
        """Inputs averaged over the repeats of each segment (the test protocol).

        Returns
        -------
        x, index
            (n, n_lags, n_voxels) float32 and the global TR index of each row.
        """
        by_seg: dict[int, list[int]] = {}
        for r in runs:
            by_seg.setdefault(r.segment, []).append(r.index)
        xs, idx = [], []
        for seg, members in sorted(by_seg.items()):
            avg = np.mean([self.values[i].astype(np.float32) for i in members], axis=0)
            xs.append(np.stack([avg[s + self.lags] for s in self.stim_trs]))
            idx.append(seg * self.T + self.stim_trs)
        return np.concatenate(xs), np.concatenate(idx)


def select_voxels(prep: Prepared, ds, n: int, warmup: int) -> np.ndarray:
    """The ``n`` most reliable voxels (columns of the preprocessed vectors), sorted."""
    rel = reliability(prep, ds, warmup)
    return np.sort(np.argsort(rel)[::-1][:n])


def head_weights(cfg: DecodersConfig, step: int) -> dict[str, float]:
    """Loss weight of each head at a training step under the chosen weighting."""
    if cfg.weighting != "progressive":
        return {h: WEIGHTS[h] for h in cfg.heads}
    frac = step / max(cfg.steps, 1)
    out = {}
    for h in cfg.heads:
        a, b = STAGES[h]
        ramp = 1.0 if frac >= b else 0.0 if frac < a else (frac - a) / max(b - a, 1e-9)
        out[h] = WEIGHTS[h] * ramp
    return out


def _soft_clip_loss(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Contrastive loss with soft targets: identical scenes in a batch are not negatives."""
    logits = scale.exp().clamp(max=100) * pred @ target.T
    soft = F.softmax(target @ target.T / 0.05, dim=-1)
    return -(soft * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return 1 - ((2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def _gaussian_smooth(x: torch.Tensor, sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W) with reflected borders (scikit-image's SSIM window)."""
    r = int(truncate * sigma + 0.5)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def ssim_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """1 − the grayscale Gaussian SSIM (σ 1.5, as :func:`rtdecode.metrics.ssim_gray`) of (N, 3, H, W)."""
    gray = torch.as_tensor(GRAY_WEIGHTS, dtype=pred.dtype).view(1, 3, 1, 1)
    x, y = (pred * gray).sum(1, keepdim=True), (true * gray).sum(1, keepdim=True)
    r = int(3.5 * 1.5 + 0.5)  # the window's border is cropped, as the metric does
    crop = (slice(None), slice(None), slice(r, -r), slice(r, -r))
    return 1 - _ssim_map(x, y, _gaussian_smooth, 1.0, crop).mean()


class PixelLoss(torch.nn.Module):
    """Terms on the blurry pixels beyond their MSE, compared at the stimulus' frame size.

    MSE alone pulls the blurry video to the mean of what fits the brain. ``perceptual``
    compares the pixels with the true blurry frames in the world-CLIP image space (as
    MindEye's low-level module), so that they keep what tells scenes apart; ``ssim`` asks for
    the true frames' local structure. The image tower is frozen and kept out of the module
    tree (neither trained nor checkpointed). A few frames of the first clips are compared:
    the tower costs more than the decoder itself.
    """

    def __init__(
        self,
        clip: torch.nn.Module | None,
        perceptual: float = 0.0,
        kind: str = "cosine",
        ssim: float = 0.0,
        frames: int = 2,
        clips: int = 32,
    ) -> None:
        super().__init__()
        if perceptual > 0 and clip is None:
            raise ValueError("the perceptual term needs the world-CLIP model")
        self._image = (clip.image.eval().requires_grad_(False),) if perceptual > 0 else ()
        self.size = int(clip.config["frame_size"]) if clip is not None else 64
        self.perceptual, self.kind, self.ssim = perceptual, kind, ssim
        self.frames, self.clips = frames, clips

    def _frames(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, s, s) → k inner frames of the first clips, (B'·k, 3, size, size)."""
        pick = torch.linspace(0, pixels.shape[1] - 1, self.frames + 2)[1:-1].round().long()
        x = pixels[: self.clips, pick].flatten(0, 1)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised world-CLIP embeddings of frames in [0, 1]."""
        return F.normalize(self._image[0]((frames - 0.5) / 0.25), dim=-1)

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        p, t = self._frames(pred), self._frames(true)
        total = torch.zeros(())
        if self.ssim > 0:
            total = total + self.ssim * ssim_loss(p, t)
        if self.perceptual > 0:
            ep = self.embed(p)
            with torch.no_grad():
                et = self.embed(t)
            feature = (
                (1 - (ep * et).sum(-1)).mean()
                if self.kind == "cosine"
                else _soft_clip_loss(ep, et, torch.tensor(math.log(20.0)))
            )
            total = total + self.perceptual * feature
        return total


def head_losses(
    model: BrainDecoder, out: dict, batch: dict, pixel_loss: PixelLoss | None = None
) -> dict[str, torch.Tensor]:
    """Loss of every head present in ``out`` (``pixel_loss``: terms on the pixels beyond MSE)."""
    losses = {}
    if "semantic" in out:
        s = model.logit_scale
        losses["semantic"] = 0.5 * (
            _soft_clip_loss(out["semantic"], batch["image_emb"], s)
            + _soft_clip_loss(out["semantic"], batch["text_emb"], s)
        )
    if "keyframe" in out:
        losses["keyframe"] = F.mse_loss(out["keyframe"], batch["latents"][:, batch["latents"].shape[1] // 2])
    if "concepts" in out:
        losses["concepts"] = F.binary_cross_entropy_with_logits(out["concepts"], batch["concepts"])
    if "caption" in out:
        tok = batch["tokens"]
        logits = out["caption"][:, :-1]
        losses["caption"] = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tok[:, 1:].reshape(-1), ignore_index=WordTokenizer.PAD
        )
    if "mask" in out:
        losses["mask"] = F.binary_cross_entropy_with_logits(out["mask"], batch["masks"]) + _dice(
            out["mask"], batch["masks"]
        )
    if "blurry" in out:
        pred, true = out["blurry"], batch["latents"]
        # Frame differences too: the video must move like the stimulus, not only look like it.
        losses["blurry"] = F.mse_loss(pred, true) + F.mse_loss(pred.diff(dim=1), true.diff(dim=1))
        if "pixels" in out and "pixels" in batch:
            pred, true = out["pixels"], batch["pixels"]
            pix = F.mse_loss(pred, true) + F.mse_loss(pred.diff(dim=1), true.diff(dim=1))
            losses["blurry"] = losses["blurry"] + PIXEL_WEIGHT * pix
            if pixel_loss is not None:
                losses["blurry"] = losses["blurry"] + pixel_loss(pred, true)
    if "motion" in out:
        losses["motion"] = F.mse_loss(out["motion"], batch["motion"])
    return losses


def decoder_loss(
    model: BrainDecoder,
    batch: dict,
    weights: dict[str, float],
    log_vars: torch.nn.ParameterDict | None = None,
    pixel_loss: PixelLoss | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the head losses (or uncertainty-weighted when ``log_vars`` is given)."""
    out = model(batch["x"], batch.get("tokens"))
    losses = head_losses(model, out, batch, pixel_loss if weights.get("blurry", 0) > 0 else None)
    total = torch.zeros(())
    for name, value in losses.items():
        if log_vars is not None:
            total = total + weights[name] * (torch.exp(-log_vars[name]) * value + log_vars[name])
        else:
            total = total + weights[name] * value
    return total, {k: float(v.detach()) for k, v in losses.items()}


def batch_tensors(
    data: DecoderData,
    targets: Targets,
    samples: np.ndarray,
    motion_norm: tuple,
    x: np.ndarray | None = None,
    average: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors of one batch: inputs and every head's targets (``x`` given: ``samples`` are
    global TR indices; else (run, TR) pairs, ``average`` as :meth:`DecoderData.windows`)."""
    idx = data.target_index(samples) if x is None else samples
    mean, std = motion_norm
    batch = {
        "x": torch.from_numpy(data.windows(samples, average) if x is None else x),
        "latents": torch.from_numpy(targets.latents[idx].astype(np.float32)),
        "image_emb": torch.from_numpy(targets.image_emb[idx]),
        "text_emb": torch.from_numpy(targets.text_emb[idx]),
        "tokens": torch.from_numpy(targets.tokens[idx].astype(np.int64)),
        "concepts": torch.from_numpy(targets.concepts[idx].astype(np.float32)),
        "masks": torch.from_numpy(targets.masks[idx].astype(np.float32)),
        "motion": torch.from_numpy(((targets.motion[idx] - mean) / std).astype(np.float32)),
    }
    if targets.pixels is not None:
        batch["pixels"] = torch.from_numpy(targets.pixels[idx].astype(np.float32))
    return batch


def make_model(cfg: DecodersConfig, n_voxels: int, tokenizer: WordTokenizer, embed_dim: int) -> BrainDecoder:
    """A fresh decoder of the configured shape."""
    dc = DecoderConfig(
        n_voxels=n_voxels,
        n_lags=len(cfg.lags),
        hidden=cfg.hidden,
        lag_features=cfg.lag_features,
        embed_dim=embed_dim,
        vocab_size=len(tokenizer),
        heads=tuple(cfg.heads),
        pixel_size=cfg.pixel_size if "blurry" in cfg.heads else 0,
        pixel_rank=cfg.pixel_rank,
    )
    return BrainDecoder(dc)


def prepare(cfg: DecodersConfig, progress: bool = True) -> tuple[Prepared, np.ndarray]:
    """Preprocessed runs of the subject and the selected voxels."""
    from scanner_sim.dataset import Dataset

    prep = prepare_subject(cfg.dataset, cfg.subject, cfg.preprocess, cfg.workers, progress)
    with Dataset(cfg.dataset) as ds:
        select = select_voxels(prep, ds, cfg.n_voxels, cfg.warmup)
    return prep, select


def caption_scores(pred: list[str], true: list[str]) -> dict[str, float]:
    """Word accuracy (position by position over the true words), exact-sentence rate and the
    fraction of key words (colour, texture, shape) recovered."""
    correct = total = exact = 0
    for p, t in zip(pred, true):
        pw, tw = p.split(), t.split()
        correct += sum(a == b for a, b in zip(pw, tw))
        total += len(tw)
        exact += p == t
    return {"word_accuracy": correct / max(total, 1), "exact": exact / max(len(true), 1)}


def mask_iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean IoU of thresholded masks (per sample and frame)."""
    p = pred > 0.5
    t = true > 0.5
    inter = (p & t).reshape(len(p), -1).sum(1)
    union = (p | t).reshape(len(p), -1).sum(1)
    return float(np.mean(inter / np.maximum(union, 1)))


def _mse_vs_mean(pred: np.ndarray, target: np.ndarray, index: np.ndarray, train_index: np.ndarray) -> dict:
    """Mean squared error, and that of the training mean (chance)."""
    true = target[index].astype(np.float32)
    mean = target[train_index[:: max(1, len(train_index) // 2000)]].astype(np.float32).mean(0)
    return {"value": float(np.mean((pred - true) ** 2)), "chance": float(np.mean((mean[None] - true) ** 2))}


def evaluate_outputs(
    res: dict, targets: Targets, index: np.ndarray, train_index: np.ndarray, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Sub-task scores on the test set, each beside its chance level."""
    from rtdecode.metrics import shuffle_test

    out: dict[str, dict[str, float]] = {}
    key = targets.key_concept[index]
    n_c = targets.concepts.shape[1]
    if "concepts" in res:
        top1 = float(np.mean(res["concepts"].argmax(1) == key))
        prior = np.bincount(targets.key_concept[train_index], minlength=n_c)
        out["concept_top1"] = {
            "value": top1,
            "chance": float(np.mean(key == prior.argmax())),
            "uniform_chance": 1.0 / n_c,
        }
    if "caption" in res:
        true = [targets.captions[i] for i in index]
        scores = caption_scores(res["caption"], true)
        rng = np.random.default_rng(seed)
        shuffled = caption_scores([targets.captions[i] for i in rng.choice(train_index, len(index))], true)
        out["caption"] = {
            **scores,
            "chance_word_accuracy": shuffled["word_accuracy"],
            "chance_exact": shuffled["exact"],
        }
    if "mask" in res:
        true_m = targets.masks[index].astype(np.float32)
        mean_mask = targets.masks[train_index].astype(np.float32).mean(0, keepdims=True)
        out["mask_iou"] = {
            "value": mask_iou(res["mask"], true_m),
            "chance": mask_iou(np.repeat(mean_mask, len(index), 0), true_m),
        }
    if "semantic" in res:
        sim = res["semantic"] @ targets.image_emb[index].T
        out["semantic_top1"] = {
            "value": float(np.mean(sim.argmax(1) == np.arange(len(index)))),
            "chance": 1.0 / len(index),
        }
    frames = None if targets.pixels is None else targets.pixels.transpose(0, 1, 3, 4, 2)  # as pixel_frames
    for name, target in (("blurry", targets.latents), ("pixels", frames)):
        if name in res and target is not None:
            out[f"{name}_mse"] = _mse_vs_mean(res[name], target, index, train_index)
    if "motion" in res:
        # Dimensions differ in unit (pixels, degrees): compare them standardised.
        mean, std = targets.motion[train_index].mean(0), targets.motion[train_index].std(0) + 1e-6
        stat, null, p = shuffle_test(
            (res["motion"] - mean) / std,
            (targets.motion[index] - mean) / std,
            rng=np.random.default_rng(seed),
        )
        out["motion_shuffle"] = {"value": stat, "chance": null, "p_value": p}
    return out


class TrainModule(torch.nn.Module):
    """The decoder plus, for ``uncertainty`` weighting, one learned log-variance per head; its
    forward returns the weighted loss of a batch (so DDP sees one module call)."""

    def __init__(
        self, decoder: BrainDecoder, cfg: DecodersConfig, clip: torch.nn.Module | None = None
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.cfg = cfg
        extra = cfg.perceptual > 0 or cfg.ssim > 0
        self.pixel_loss = PixelLoss(clip, cfg.perceptual, cfg.perceptual_kind, cfg.ssim) if extra else None
        self.log_vars = (
            torch.nn.ParameterDict({h: torch.nn.Parameter(torch.zeros(())) for h in cfg.heads})
            if cfg.weighting == "uncertainty"
            else None
        )

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        weights = head_weights(self.cfg, int(batch["step"]))
        return decoder_loss(self.decoder, batch, weights, self.log_vars, self.pixel_loss)


@dataclass
class DecoderRun:
    """Everything one training run of the decoder produced."""

    model: BrainDecoder
    select: np.ndarray
    mask_index: np.ndarray
    motion_norm: tuple[np.ndarray, np.ndarray]
    metrics: dict
    history: list
    test_index: np.ndarray
    test_outputs: dict


def _splits(runs):
    train = [r for r in runs if r.split == "train"]
    val_seg = max(r.segment for r in train)
    return (
        [r for r in train if r.segment != val_seg],
        [r for r in train if r.segment == val_seg],
        [r for r in runs if r.split == "test"],
    )


@torch.no_grad()
def run_outputs(
    model: BrainDecoder, x: np.ndarray, tokenizer: WordTokenizer, motion_norm, batch: int = 256
) -> dict:
    """Every head's output for inputs ``x`` (eval mode, in batches), as numpy / text."""
    model.eval()
    parts: dict[str, list] = {}
    for i in range(0, len(x), batch):
        out = model(torch.from_numpy(x[i : i + batch]))
        for name in ("semantic", "keyframe", "blurry", "pixels", "concepts", "mask", "motion"):
            if name in out:
                v = out[name]
                v = torch.sigmoid(v) if name in ("concepts", "mask") else v
                v = pixel_frames(v) if name == "pixels" else v
                parts.setdefault(name, []).append(v.numpy())
        if model.caption is not None:
            ids = model.caption.generate(out["hidden"], WordTokenizer.BOS, WordTokenizer.EOS)
            parts.setdefault("caption", []).extend(tokenizer.decode(r) for r in ids.tolist())
    res = {k: (v if k == "caption" else np.concatenate(v)) for k, v in parts.items()}
    if "motion" in res:
        res["motion"] = res["motion"] * motion_norm[1] + motion_norm[0]
    return res


def train_decoder(
    cfg: DecodersConfig,
    targets: Targets,
    tokenizer: WordTokenizer,
    embed_dim: int,
    prep: Prepared | None = None,
    select: np.ndarray | None = None,
    progress: bool = True,
    validation: bool = False,
    tag: str = "",
) -> DecoderRun:
    """Train the decoder of one subject (resumable) and score it on the test set.

    With ``validation=True`` the last training segment is held out and the scores are on it
    (for design choices such as the loss weighting; the test set stays untouched). ``tag``
    names a variant's checkpoints apart from the subject's own (e.g. ``-noiseless``).
    """
    from rtdecode.train.loop import TrainConfig, Trainer
    from scanner_sim.dataset import Dataset

    if prep is None or select is None:
        prep, select = prepare(cfg, progress)
    with Dataset(cfg.dataset) as ds:
        runs = ds.runs
        seg_trs = ds.config.segment_trs
    data = DecoderData(prep, runs, seg_trs, select, cfg.lags, cfg.warmup)
    fit_runs, val_runs, test_runs = _splits(runs)
    train_samples = data.samples(fit_runs if validation else fit_runs + val_runs)
    train_index = data.target_index(train_samples)
    motion_norm = (targets.motion[train_index].mean(0), targets.motion[train_index].std(0) + 1e-6)
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, len(select), tokenizer, embed_dim)
    if model.cfg.pixel_size:  # the pixel head's targets, at its size
        targets = replace(targets, pixels=pixel_targets(cfg.dataset, model.cfg.pixel_size, progress))
    clip = None
    if cfg.perceptual > 0:
        from rtdecode.train.encoders import read_encoders

        clip = read_encoders(cfg.encoders)["clip"]
    module = TrainModule(model, cfg, clip)

    def make_batch(step: int, rng: np.random.Generator) -> dict:
        pick = train_samples[rng.integers(0, len(train_samples), cfg.batch)]
        average = rng.random(cfg.batch) < cfg.average_repeats if cfg.average_repeats > 0 else None
        batch = batch_tensors(data, targets, pick, motion_norm, average=average)
        batch["step"] = step
        return batch

    tc = TrainConfig(
        steps=cfg.steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup=min(200, cfg.steps // 10),
        seed=cfg.seed,
        checkpoint_dir=Path(cfg.out) / "checkpoints" / f"decoder-{cfg.subject}{tag}",
        checkpoint_every=cfg.checkpoint_every,
        progress=progress,
        desc=f"decoder {cfg.subject}{tag}",
    )
    result = Trainer(module, lambda m, b: m(b), make_batch, tc).fit()
    x_test, test_index = data.averaged(val_runs if validation else test_runs)
    outputs = run_outputs(model, x_test, tokenizer, motion_norm)
    metrics = evaluate_outputs(outputs, targets, test_index, train_index, cfg.seed)
    return DecoderRun(
        model, select, prep.mask_index, motion_norm, metrics, result.history, test_index, outputs
    )


def save_decoder_bundle(
    cfg: DecodersConfig,
    run: DecoderRun,
    tokenizer: WordTokenizer,
    encoders_dir: Path,
    extra_metrics: dict | None = None,
    fusion: dict | None = None,
):
    """Write the ``neurons`` bundle: decoder + encoders (+ the diffusion renderer when trained),
    one directory, safetensors only. ``fusion``: the calibrated same-scene threshold."""
    import json
    import shutil

    from rtdecode.bundle import save_bundle
    from rtdecode.models import module_tensors
    from scanner_sim.dataset import Dataset

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # The stimulus-side models travel with the decoder: the encoders always, the diffusion
    # renderer (``rtdecode train renderer``) when it was trained with these encoders.
    shipped = ["encoders.safetensors", "encoders.json"]
    if (Path(encoders_dir) / "renderer.safetensors").exists():
        shipped += ["renderer.safetensors", "renderer.json"]
    for name in shipped:
        if (Path(encoders_dir) / name).resolve() != (out / name).resolve():
            shutil.copy(Path(encoders_dir) / name, out / name)
    encoders = json.loads((out / "encoders.json").read_text())
    renderer = json.loads((out / "renderer.json").read_text()) if "renderer.json" in shipped else None
    with Dataset(cfg.dataset) as ds:
        geo = ds.geometry(cfg.subject).to_dict()
        dcfg = ds.config
        fingerprint = ds.manifest["fingerprint"]
    manifest = {
        "name": out.name,
        "kind": "neurons",
        "subject": cfg.subject,
        "geometry": geo,
        "lags": list(cfg.lags),
        "tr": dcfg.scanner.tr,
        "fps": dcfg.stimulus.fps,
        "frames_per_tr": dcfg.frames_per_tr,
        "frame_size": list(dcfg.stimulus.size),
        "vocabulary": list(stimuli_vocabulary()),
        "decoder": {
            "config": run.model.config,
            "words": tokenizer.to_list(),
            "motion_mean": run.motion_norm[0].tolist(),
            "motion_std": run.motion_norm[1].tolist(),
        },
        "encoders": encoders,
        **({"renderer": renderer} if renderer else {}),
        **({"fusion": fusion} if fusion else {}),
        "preprocess": {k: getattr(cfg.preprocess, k) for k in cfg.preprocess.__dataclass_fields__},
        "training": {
            "dataset": fingerprint,
            "dataset_preset": dcfg.preset,
            "steps": cfg.steps,
            "weighting": cfg.weighting,
            "pixel_terms": {"perceptual": [cfg.perceptual, cfg.perceptual_kind], "ssim": cfg.ssim},
            "average_repeats": cfg.average_repeats,
            "n_voxels": len(run.select),
            "seed": cfg.seed,
        },
        "metrics": {"test": run.metrics, **(extra_metrics or {})},
    }
    tensors = {
        "mask_index": run.mask_index.astype(np.int32),
        "select": run.select.astype(np.int32),
        **module_tensors(run.model, "decoder.", dtype=np.float16),
    }
    include = tuple(n for n in shipped if n.endswith(".safetensors"))
    return save_bundle(out, manifest, tensors, include=include)


def stimuli_vocabulary() -> tuple[str, ...]:
    """The world's concept vocabulary."""
    from scanner_sim import stimuli

    return stimuli.VOCABULARY


def train_decoders_cli(cfg: DecodersConfig, progress: bool = True):
    """``rtdecode train decoders``: train one subject's decoder and write its bundle."""
    from rtdecode.train.evaluate import load_stimulus_models
    from rtdecode.train.evaluate_render import calibrate_fusion_on_runs
    from rtdecode.train.targets import compute_targets
    from scanner_sim import stimuli
    from scanner_sim.dataset import Dataset

    models, digest = load_stimulus_models(cfg.encoders)
    tokenizer = WordTokenizer(stimuli.caption_vocabulary())
    targets = compute_targets(cfg.dataset, models, digest, tokenizer, 24, progress)
    prep, select = prepare(cfg, progress)
    run = train_decoder(cfg, targets, tokenizer, targets.image_emb.shape[1], prep, select, progress)
    with Dataset(cfg.dataset) as ds:
        data = DecoderData(prep, ds.runs, ds.config.segment_trs, select, cfg.lags, cfg.warmup)
        fit_runs, val_runs, _ = _splits(ds.runs)
        fusion = calibrate_fusion_on_runs(run, data, fit_runs + val_runs, ds, tokenizer)
    log.info("fusion threshold %.3f (training ROC AUC %.3f)", fusion["threshold"], fusion["train"]["auc"])
    return save_decoder_bundle(cfg, run, tokenizer, cfg.encoders, fusion=fusion)
