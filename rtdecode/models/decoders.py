"""The brain decoder: a window of preprocessed TRs → the NEURONS sub-tasks and NeuroClips branches.

One shared backbone reads the selected voxels at each hemodynamic lag and feeds the heads.
How the lags enter is ``lag_features``: ``"mixed"`` sums them per voxel with learned weights
(each voxel's own timing; one value per voxel), ``"separate"`` weighs each voxel at each lag,
projects every lag with the same stem and joins the projections, so what differs between the
lags (what happened early and late in the TR) reaches the heads, as it reaches ridge
regression, which sees every lag of every voxel. The heads:

``semantic``
    NeuroClips' semantic reconstructor: an embedding in the world-CLIP space, trained
    contrastively against the keyframe's image embedding and the caption's text embedding.
``keyframe``
    The middle frame's autoencoder latent (NeuroClips' keyframe; Mind-Animator's structure).
``concepts``
    NEURONS' concept recognition: multi-label logits over the concept vocabulary.
``caption``
    NEURONS' scene description: a GRU language model conditioned on the backbone, generating
    the caption word by word.
``mask``
    NEURONS' key-object segmentation: low-resolution mask logits for a few frames of the TR.
``blurry``
    NeuroClips' perception reconstructor: latents of all F frames of the TR. One token per
    frame (a learned query plus the backbone state) passes through temporal self-attention,
    so the frames are predicted together and move smoothly (temporal upsampling of one TR).
    With ``pixel_size > 0`` the same frame tokens also give the blurry video itself,
    low-resolution RGB frames (``pixels``): the pixel-space mean an MSE decoder can reach,
    which the latents decoded through the autoencoder are not (the mean of latents decodes
    to textures, not to a blur). With ``pixel_rank > 0`` a linear path is added to them:
    the stem's lag projections, before any non-linearity, through a rank-``pixel_rank``
    bottleneck to a few key frames, interpolated in time (reduced-rank regression, the
    linear decoding ridge does, inside the network).
``motion``
    Mind-Animator's motion: object and camera motion of the TR (6 values, standardised).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["HEADS", "BrainDecoder", "DecoderConfig", "pixel_frames"]

HEADS = ("semantic", "keyframe", "concepts", "caption", "mask", "blurry", "motion")


@dataclass
class DecoderConfig:
    """Shapes of a :class:`BrainDecoder` (stored in the bundle manifest)."""

    n_voxels: int = 4000
    n_lags: int = 2
    hidden: int = 512
    depth: int = 2
    dropout: float = 0.3
    embed_dim: int = 128
    n_concepts: int = 64
    vocab_size: int = 128
    max_words: int = 24
    word_dim: int = 96
    mask_frames: int = 4
    mask_size: int = 16
    frames: int = 16
    latent_shape: tuple[int, int, int] = (4, 16, 16)
    token_dim: int = 192
    temporal_layers: int = 2
    motion_dim: int = 6
    pixel_size: int = 0  # blurry frames in pixels (side); 0: latents only (bundles before pixels)
    lag_features: str = "mixed"  # "mixed" (bundles before "separate") or "separate"
    pixel_rank: int = 0  # > 0: a reduced-rank linear path from the lag projections to the pixels
    heads: tuple[str, ...] = field(default=HEADS)


def pixel_frames(pixels: torch.Tensor) -> torch.Tensor:
    """The ``pixels`` head's output (B, F, 3, s, s) as frames (B, F, s, s, 3) in [0, 1]."""
    return pixels.clamp(0, 1).permute(0, 1, 3, 4, 2).contiguous()


class _Block(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class _CaptionHead(nn.Module):
    """A GRU language model whose initial state comes from the brain."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.init = nn.Linear(cfg.hidden, cfg.hidden // 2)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.word_dim)
        self.gru = nn.GRU(cfg.word_dim, cfg.hidden // 2, batch_first=True)
        self.out = nn.Linear(cfg.hidden // 2, cfg.vocab_size)
        self.max_words = cfg.max_words

    def forward(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for ``tokens`` (B, T) starting with BOS: (B, T, vocab)."""
        h0 = torch.tanh(self.init(h)).unsqueeze(0)
        out, _ = self.gru(self.embed(tokens), h0)
        return self.out(out)

    @torch.no_grad()
    def generate(self, h: torch.Tensor, bos: int, eos: int) -> torch.Tensor:
        """Greedy decoding: (B, ≤ max_words) token ids (EOS and after are not returned)."""
        state = torch.tanh(self.init(h)).unsqueeze(0)
        tok = torch.full((h.shape[0], 1), bos, dtype=torch.long, device=h.device)
        words = []
        for _ in range(self.max_words):
            out, state = self.gru(self.embed(tok), state)
            tok = self.out(out[:, -1]).argmax(-1, keepdim=True)
            words.append(tok)
        seq = torch.cat(words, dim=1)
        ended = (seq == eos).cumsum(1) > 0
        return seq.masked_fill(ended, eos)


class _BlurryHead(nn.Module):
    """Per-frame tokens with temporal self-attention → latents of every frame."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        d = cfg.token_dim
        self.frames = cfg.frames
        self.proj = nn.Linear(cfg.hidden, d)
        self.queries = nn.Parameter(torch.randn(cfg.frames, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, nhead=4, dim_feedforward=2 * d, dropout=0.1, batch_first=True, norm_first=True
        )
        self.temporal = nn.TransformerEncoder(layer, cfg.temporal_layers, enable_nested_tensor=False)
        c, hh, ww = cfg.latent_shape
        self.latent_shape = cfg.latent_shape
        self.out = nn.Linear(d, c * hh * ww)
        ps = cfg.pixel_size
        self.pixel_shape = (3, ps, ps)
        self.pixels = nn.Linear(d, 3 * ps * ps) if ps else None

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents (B, F, C, h, w) and, with a pixel head, frames (B, F, 3, s, s)."""
        tokens = self.proj(h).unsqueeze(1) + self.queries.unsqueeze(0)
        tokens = self.temporal(tokens)
        latents = self.out(tokens).view(h.shape[0], self.frames, *self.latent_shape)
        if self.pixels is None:
            return latents, None
        return latents, self.pixels(tokens).view(h.shape[0], self.frames, *self.pixel_shape)


class _LinearPixels(nn.Module):
    """Lag projections → rank-r bottleneck → ``KEY_FRAMES`` frames → linear in time to F frames."""

    KEY_FRAMES = 4

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        inputs = cfg.hidden * (cfg.n_lags if cfg.lag_features == "separate" else 1)
        ps = cfg.pixel_size
        self.shape = (3, ps, ps)
        self.frames = cfg.frames
        self.net = nn.Sequential(
            nn.Linear(inputs, cfg.pixel_rank), nn.Linear(cfg.pixel_rank, self.KEY_FRAMES * 3 * ps * ps)
        )
        nn.init.zeros_(self.net[1].weight)  # starts as no change to the token path's pixels
        nn.init.zeros_(self.net[1].bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        keys = self.net(z.flatten(1)).view(z.shape[0], self.KEY_FRAMES, -1).transpose(1, 2)
        frames = F.interpolate(keys, size=self.frames, mode="linear", align_corners=True)
        return frames.transpose(1, 2).reshape(z.shape[0], self.frames, *self.shape)


class BrainDecoder(nn.Module):
    """fMRI window (B, n_lags, n_voxels) → dict of head outputs.

    Parameters
    ----------
    config
        Shapes; ``config.heads`` selects which heads exist (ablations drop some).
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.cfg = config
        self.config = asdict(config)
        n = config.n_voxels
        if config.lag_features not in ("mixed", "separate"):
            raise ValueError(f"lag_features: 'mixed' or 'separate', got {config.lag_features!r}")
        self.separate = config.lag_features == "separate"
        # Each voxel weighs its lags (its own hemodynamic timing): mixed, from an even mix;
        # separate, from unit gains.
        gain = 1.0 if self.separate else 1.0 / config.n_lags
        self.lag_mix = nn.Parameter(torch.full((config.n_lags, n), gain))
        self.stem = nn.Sequential(
            nn.Dropout(0.1),
            nn.Linear(n, config.hidden),
            nn.LayerNorm(config.hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
        )
        self.join = nn.Linear(config.n_lags * config.hidden, config.hidden) if self.separate else None
        self.blocks = nn.Sequential(*[_Block(config.hidden, config.dropout) for _ in range(config.depth)])
        hd = config.hidden
        heads = set(config.heads)
        self.semantic = nn.Linear(hd, config.embed_dim) if "semantic" in heads else None
        c, h, w = config.latent_shape
        self.keyframe = nn.Linear(hd, c * h * w) if "keyframe" in heads else None
        self.concepts = nn.Linear(hd, config.n_concepts) if "concepts" in heads else None
        self.caption = _CaptionHead(config) if "caption" in heads else None
        self.mask = nn.Linear(hd, config.mask_frames * config.mask_size**2) if "mask" in heads else None
        self.blurry = _BlurryHead(config) if "blurry" in heads else None
        self.motion = nn.Linear(hd, config.motion_dim) if "motion" in heads else None
        linear = config.pixel_rank and config.pixel_size and "blurry" in heads
        self.pixel_linear = _LinearPixels(config) if linear else None
        self.logit_scale = nn.Parameter(torch.tensor(2.6593))  # log(1/0.07), as CLIP

    @classmethod
    def from_config(cls, config: dict) -> BrainDecoder:
        """Rebuild from :attr:`config` (as stored in a manifest)."""
        d = dict(config)
        d["latent_shape"] = tuple(d["latent_shape"])
        d["heads"] = tuple(d["heads"])
        return cls(DecoderConfig(**d))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """The stem's linear projection of the weighted lags: (B, n_lags, hidden) or, mixed, (B, hidden)."""
        weighted = x * self.lag_mix.unsqueeze(0)
        return self.stem[:2](weighted if self.separate else weighted.sum(1))

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        s = self.stem[2:](z)
        return self.blocks(s if self.join is None else self.join(s.flatten(1)))

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Shared features (B, hidden) of a window (B, n_lags, n_voxels)."""
        return self._features(self._project(x))

    def forward(self, x: torch.Tensor, caption_tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """All heads' outputs; ``caption`` logits only when teacher tokens are given."""
        z = self._project(x)
        h = self._features(z)
        out: dict[str, torch.Tensor] = {"hidden": h}
        c, hh, ww = self.cfg.latent_shape
        if self.semantic is not None:
            out["semantic"] = F.normalize(self.semantic(h), dim=-1)
        if self.keyframe is not None:
            out["keyframe"] = self.keyframe(h).view(-1, c, hh, ww)
        if self.concepts is not None:
            out["concepts"] = self.concepts(h)
        if self.mask is not None:
            ms = self.cfg.mask_size
            out["mask"] = self.mask(h).view(-1, self.cfg.mask_frames, ms, ms)
        if self.blurry is not None:
            out["blurry"], pixels = self.blurry(h)
            if pixels is not None:
                out["pixels"] = pixels if self.pixel_linear is None else pixels + self.pixel_linear(z)
        if self.motion is not None:
            out["motion"] = self.motion(h)
        if self.caption is not None and caption_tokens is not None:
            out["caption"] = self.caption(h, caption_tokens)
        return out
