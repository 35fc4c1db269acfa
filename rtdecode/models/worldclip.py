"""WorldCLIP: the simulated world's joint image–text embedding (the semantic decoders' target).

Architecture
    Image tower: a ResNet-style CNN — a 4×4/4 patchify stem (64×64 → 16×16), then stages of
    pre-activation residual blocks (GroupNorm, SiLU, 3×3 convolutions) joined by 3×3 stride-2
    convolutions, global average pooling and a linear projection. Text tower: word embeddings
    (closed vocabulary of the world's captions, :func:`scanner_sim.stimuli.caption_vocabulary`,
    plus ``<pad> <bos> <eos> <unk>``) with learned positions, a pre-norm transformer encoder,
    mean pooling over the non-pad tokens and a linear projection. Both land in an
    L2-normalised space of ``embed_dim`` (128) dimensions; a learned temperature (CLIP's
    ``logit_scale``, capped at 100) scales the cosine similarities.
Training
    Symmetric InfoNCE (:func:`contrastive_loss`). Many frames share a caption, so the targets
    are built from caption identity: every pair with the same caption text is a positive
    (uniform target over the positives); the batch sampler also draws at most one frame per
    caption, so in practice the targets are the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rtdecode.models.autoencoder import frames_to_tensor
from rtdecode.models.text import WordTokenizer

__all__ = [
    "DEFAULT_CLIP_CONFIG",
    "ResNetImageEncoder",
    "TransformerTextEncoder",
    "WorldCLIP",
    "contrastive_loss",
    "default_words",
    "normalise_frames",
]

MAX_LOGIT_SCALE = math.log(100.0)


def default_words() -> list[str]:
    """The caption vocabulary of the simulated world."""
    from scanner_sim.stimuli import caption_vocabulary

    return caption_vocabulary()


DEFAULT_CLIP_CONFIG: dict[str, Any] = {
    "frame_size": 64,
    "embed_dim": 128,
    "image": {"patch": 4, "channels": [48, 96, 192], "blocks": [1, 1, 1], "groups": 8},
    "text": {"words": None, "max_words": 24, "width": 128, "layers": 2, "heads": 4},
    "init_temperature": 0.07,
}


def normalise_frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Frames (uint8 ``(N, H, W, 3)`` or float ``(N, 3, H, W)`` in [0, 1]) → centred float input."""
    return (frames_to_tensor(frames) - 0.5) / 0.25


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE between L2-normalised embeddings, positives by label identity.

    Parameters
    ----------
    image, text
        ``(B, D)`` normalised embeddings of matching pairs (row ``i`` of both is one pair).
    logit_scale
        Log of the inverse temperature (clamped to log 100).
    labels
        ``(B,)`` caption ids; pairs with equal ids are all positives (``None``: identity).

    Returns
    -------
    loss, logged
        The mean of both directions' cross-entropies, and ``acc`` (image→text top-1 within
        the batch, counting any positive) and ``temperature``.
    """
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * image @ text.t()
    n = len(image)
    if labels is None:
        target = torch.eye(n, device=image.device)
    else:
        target = (labels[:, None] == labels[None, :]).float()
    target = target / target.sum(1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    loss_t = -(target.t() * F.log_softmax(logits.t(), 1)).sum(1).mean()
    with torch.no_grad():
        hit = target.gather(1, logits.argmax(1, keepdim=True)).squeeze(1) > 0
    return (loss_i + loss_t) / 2, {"acc": float(hit.float().mean()), "temperature": float(1 / scale.detach())}


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, 3×3 conv) × 2 + identity."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + body(x)."""
        return x + self.body(x)


class ResNetImageEncoder(nn.Module):
    """Patchify stem, residual stages with stride-2 transitions, average pool, projection."""

    def __init__(self, patch: int, channels: Sequence[int], blocks: Sequence[int], groups: int, out_dim: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels[0], patch, stride=patch)]
        for i, (c, n) in enumerate(zip(channels, blocks)):
            layers += [ResBlock(c, groups) for _ in range(n)]
            if i + 1 < len(channels):
                layers.append(nn.Conv2d(c, channels[i + 1], 3, stride=2, padding=1))
        layers += [nn.GroupNorm(groups, channels[-1]), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.proj = nn.Linear(channels[-1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised frames ``(N, 3, H, W)`` → unnormalised features ``(N, out_dim)``."""
        return self.proj(self.net(x))


class TransformerTextEncoder(nn.Module):
    """Word embeddings + positions, pre-norm transformer encoder, masked mean pool, projection."""

    def __init__(self, vocab: int, length: int, width: int, layers: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=WordTokenizer.PAD)
        self.pos = nn.Parameter(torch.randn(length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``(N, L)`` → unnormalised features ``(N, out_dim)``."""
        pad = tokens == WordTokenizer.PAD
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        h = self.norm(self.encoder(h, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).float()
        return self.proj((h * keep).sum(1) / keep.sum(1).clamp_min(1.0))


def _merge(defaults: dict[str, Any], config: dict[str, Any] | None) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in defaults.items()}
    for k, v in (config or {}).items():
        out[k] = {**out[k], **v} if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


class TextTowerMixin:
    """Tokenisation and text encoding shared by the contrastive models of the project."""

    config: dict[str, Any]
    tokenizer: WordTokenizer
    text: nn.Module

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions → ``(N, max_words + 2)`` int64 ids ``<bos> words <eos> <pad>…``."""
        return torch.from_numpy(self.tokenizer.encode_batch(list(texts), self.config["text"]["max_words"]))

    def detokenize(self, ids: torch.Tensor | np.ndarray) -> list[str]:
        """Inverse of :meth:`tokenize` (for captions of known words)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return [self.tokenizer.decode(row) for row in ids]

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids → L2-normalised ``(N, D)``."""
        return F.normalize(self.text(tokens), dim=-1)

    def encode_text(self, texts: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
        """Captions → L2-normalised ``(N, D)`` float32 tensor."""
        tokens = self.tokenize(texts)
        parts = [self.encode_tokens(tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, self.config["embed_dim"])


class WorldCLIP(TextTowerMixin, nn.Module):
    """The world's CLIP (see the module docstring).

    Parameters
    ----------
    config
        Keys of :data:`DEFAULT_CLIP_CONFIG` (nested dicts are merged with the defaults; ``text.words``
        defaults to the world's caption vocabulary and is stored in the config).
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = _merge(DEFAULT_CLIP_CONFIG, config)
        c, img, txt = self.config, self.config["image"], self.config["text"]
        if txt["words"] is None:
            txt["words"] = default_words()
        self.tokenizer = WordTokenizer(txt["words"])
        self.image = ResNetImageEncoder(
            img["patch"], img["channels"], img["blocks"], img["groups"], c["embed_dim"]
        )
        self.text = TransformerTextEncoder(
            len(self.tokenizer),
            txt["max_words"] + 2,
            txt["width"],
            txt["layers"],
            txt["heads"],
            c["embed_dim"],
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c["init_temperature"])))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> WorldCLIP:
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
        parts = [F.normalize(self.image(x[i : i + batch_size]), dim=-1) for i in range(0, len(x), batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, self.config["embed_dim"])
