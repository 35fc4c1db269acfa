"""Evaluation models: they score reconstructions and are NEVER training targets.

As papers score with a different CLIP than the one they train with, these models differ from
the stimulus-side encoders (:mod:`rtdecode.models.autoencoder`, :mod:`rtdecode.models.worldclip`)
in architecture and in seed:

:class:`FrameClassifier`
    64-way key-concept classifier of one frame: a VGG-style CNN (stacks of 3×3 convolutions,
    BatchNorm, ReLU, 2×2 max pooling; channels double at each stage; the first convolution has
    stride 2), global average pool, dropout, linear.
:class:`VideoClassifier`
    64-way key-concept classifier of a clip ``(N, F, H, W, 3)`` — the label of a clip is the key
    concept of its middle frame (index ``F // 2``): a per-frame CNN (the frame classifier's VGG
    trunk; trained from it and frozen, as video classifiers start from image networks) followed
    by residual dilated temporal convolutions and a classifier on the middle frame's feature, so
    that a clip spanning a scene cut is labelled by its middle frame. Any clip length F ≥ 1.
:class:`EvalEmbedding`
    An image embedding trained contrastively against captions like WorldCLIP, but a small
    Vision Transformer (8×8 patches, class token, pre-norm blocks) for images and a
    bag-of-words MLP for text; used for CLIP-pcc.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rtdecode.models.text import WordTokenizer
from rtdecode.models.worldclip import TextTowerMixin, _merge, default_words, normalise_frames

__all__ = [
    "DEFAULT_EMBED_CONFIG",
    "DEFAULT_FRAME_CONFIG",
    "DEFAULT_VIDEO_CONFIG",
    "EvalEmbedding",
    "FrameClassifier",
    "VideoClassifier",
    "clip_to_tensor",
]

DEFAULT_FRAME_CONFIG: dict[str, Any] = {
    "frame_size": 64,
    "n_classes": 64,
    "stages": [[32], [64, 64], [128, 128], [256]],
    "dropout": 0.2,
}
DEFAULT_VIDEO_CONFIG: dict[str, Any] = {
    "frame_size": 64,
    "n_classes": 64,
    "frames": 16,
    "trunk": [[32], [64, 64], [128, 128], [256]],
    "freeze_trunk": False,
    "width": 128,
    "kernel": 3,
    "dilations": [1, 2, 4],
    "dropout": 0.1,
}
DEFAULT_EMBED_CONFIG: dict[str, Any] = {
    "frame_size": 64,
    "embed_dim": 128,
    "image": {"patch": 8, "width": 128, "depth": 4, "heads": 4, "mlp_ratio": 2},
    "text": {"words": None, "max_words": 24, "width": 256},
    "init_temperature": 0.07,
}


def clip_to_tensor(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Clips (uint8 ``(N, F, H, W, 3)`` or float ``(N, F, 3, H, W)`` in [0, 1]) → normalised float."""
    x = torch.as_tensor(np.ascontiguousarray(clips) if isinstance(clips, np.ndarray) else clips)
    if x.ndim != 5:
        raise ValueError(f"clips must be 5-D (N, F, H, W, 3) or (N, F, 3, H, W), got {tuple(x.shape)}")
    n, f = x.shape[:2]
    frames = normalise_frames(x.reshape(n * f, *x.shape[2:]))
    return frames.reshape(n, f, *frames.shape[1:])


def _batched(fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


class _Classifier(nn.Module):
    """Shared prediction API of the classifiers (eval mode is the caller's business)."""

    config: dict[str, Any]

    def _inputs(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, x: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Raw class scores ``(N, n_classes)``."""
        inp = self._inputs(x)
        if len(inp) == 0:
            return torch.zeros(0, self.config["n_classes"])
        return _batched(self, inp, batch_size)

    def predict_proba(self, x: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Softmax probabilities ``(N, n_classes)``."""
        return self.logits(x, batch_size).softmax(-1)


def vgg_trunk(stages: list[list[int]]) -> tuple[nn.Sequential, int]:
    """VGG-style feature extractor: 3×3 conv–BN–ReLU stacks (the first with stride 2), 2×2 max
    pools between stages, global average pool. Returns the module and its feature width."""
    layers: list[nn.Module] = []
    prev, stride = 3, 2
    for i, stage in enumerate(stages):
        for width in stage:
            layers += [nn.Conv2d(prev, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width)]
            layers.append(nn.ReLU())
            prev, stride = width, 1
        if i + 1 < len(stages):
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), prev


class FrameClassifier(_Classifier):
    """VGG-style 64-way key-concept classifier of single frames (see the module docstring).

    ``stages`` lists the widths of each stage's 3×3 convolutions (:func:`vgg_trunk`);
    ``features`` is the trunk, ``head`` dropout + linear.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = {**DEFAULT_FRAME_CONFIG, **(config or {})}
        self.features, width = vgg_trunk(self.config["stages"])
        self.head = nn.Sequential(
            nn.Dropout(self.config["dropout"]), nn.Linear(width, self.config["n_classes"])
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FrameClassifier:
        """An untrained model of this config."""
        return cls(config)

    def _inputs(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        return normalise_frames(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised frames ``(N, 3, H, W)`` → logits."""
        return self.head(self.features(x))


class TemporalBlock(nn.Module):
    """Pre-norm residual temporal convolution over ``(N, C, T)``: LayerNorm, GELU, k-tap conv."""

    def __init__(self, width: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, width)
        self.conv = nn.Conv1d(width, width, kernel, padding=dilation * (kernel // 2), dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + conv(gelu(norm(x)))."""
        return x + self.conv(F.gelu(self.norm(x)))


class VideoClassifier(_Classifier):
    """Key-concept classifier of clips: per-frame CNN + temporal convolutions (module docstring).

    The trunk has the architecture of :class:`FrameClassifier` (``trunk`` = its ``stages``);
    the encoder training initialises it from the trained frame classifier and keeps it frozen
    (``freeze_trunk``: its BatchNorm stays in eval mode and it gets no gradients). Per-frame
    features are projected to ``width``, mixed over time by residual temporal convolutions with
    dilations ``dilations``, and the feature of the middle frame (index ``F // 2``) is classified.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = {**DEFAULT_VIDEO_CONFIG, **(config or {})}
        c = self.config
        self.trunk, feat = vgg_trunk(c["trunk"])
        self.proj = nn.Linear(feat, c["width"])
        self.temporal = nn.Sequential(*[TemporalBlock(c["width"], c["kernel"], d) for d in c["dilations"]])
        self.head = nn.Sequential(
            nn.LayerNorm(c["width"]), nn.Dropout(c["dropout"]), nn.Linear(c["width"], c["n_classes"])
        )
        self.set_trunk_frozen(c["freeze_trunk"])

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VideoClassifier:
        """An untrained model of this config."""
        return cls(config)

    def set_trunk_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) the per-frame trunk."""
        self.config["freeze_trunk"] = bool(frozen)
        for p in self.trunk.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> VideoClassifier:
        """As :meth:`torch.nn.Module.train`, but a frozen trunk stays in eval mode."""
        super().train(mode)
        if self.config["freeze_trunk"]:
            self.trunk.eval()
        return self

    def _inputs(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        return clip_to_tensor(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised clips ``(N, F, 3, H, W)`` → logits of the middle frame's key concept."""
        n, f = x.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config["freeze_trunk"]):
            feats = self.trunk(x.reshape(n * f, *x.shape[2:]))
        h = self.proj(feats).reshape(n, f, -1).transpose(1, 2)
        return self.head(self.temporal(h)[:, :, f // 2])


class ViTImageEncoder(nn.Module):
    """Patch embedding, class token, learned positions, pre-norm transformer, class-token projection."""

    def __init__(
        self, size: int, patch: int, width: int, depth: int, heads: int, mlp_ratio: int, out_dim: int
    ):
        super().__init__()
        self.patch = nn.Conv2d(3, width, patch, stride=patch)
        n = (size // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, n + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, mlp_ratio * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised frames ``(N, 3, H, W)`` → unnormalised ``(N, out_dim)``."""
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], 1) + self.pos
        return self.proj(self.norm(self.blocks(h))[:, 0])


class BagOfWordsTextEncoder(nn.Module):
    """Mean of word embeddings (pad ignored) → two-layer MLP."""

    def __init__(self, vocab: int, width: int, out_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=WordTokenizer.PAD)
        self.mlp = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, out_dim)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``(N, L)`` → unnormalised ``(N, out_dim)``."""
        keep = (tokens != WordTokenizer.PAD).unsqueeze(-1).float()
        return self.mlp((self.embed(tokens) * keep).sum(1) / keep.sum(1).clamp_min(1.0))


class EvalEmbedding(TextTowerMixin, nn.Module):
    """ViT image / bag-of-words text contrastive embedding for CLIP-pcc (see the module docstring)."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = _merge(DEFAULT_EMBED_CONFIG, config)
        c, img, txt = self.config, self.config["image"], self.config["text"]
        if txt["words"] is None:
            txt["words"] = default_words()
        self.tokenizer = WordTokenizer(txt["words"])
        self.image = ViTImageEncoder(
            c["frame_size"],
            img["patch"],
            img["width"],
            img["depth"],
            img["heads"],
            img["mlp_ratio"],
            c["embed_dim"],
        )
        self.text = BagOfWordsTextEncoder(len(self.tokenizer), txt["width"], c["embed_dim"])
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c["init_temperature"])))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EvalEmbedding:
        """An untrained model of this config."""
        return cls(config)

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: normalised frames and token ids → (image emb, text emb, logit_scale)."""
        return F.normalize(self.image(images), dim=-1), self.encode_tokens(tokens), self.logit_scale

    def encode_image(self, frames: np.ndarray | torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Frames (uint8 ``(N, H, W, 3)`` or float ``(N, 3, H, W)`` in [0, 1]) → normalised ``(N, D)``."""
        x = normalise_frames(frames)
        if len(x) == 0:
            return torch.zeros(0, self.config["embed_dim"])
        return _batched(lambda b: F.normalize(self.image(b), dim=-1), x, batch_size)
