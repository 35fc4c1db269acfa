"""A small conditional latent *video* denoiser built from diffusers blocks.

Frames of a clip are processed together: every level has diffusers' spatial blocks
(:class:`ResnetBlock2D`, :class:`Transformer2DModel` with cross-attention to the condition
tokens) followed by a :class:`TransformerTemporalModel` that attends across the clip's frames,
so motion and appearance stay consistent within the clip (the AnimateDiff / ModelScope
pattern, scaled to 16×16×4 latents and a CPU budget).

Conditioning (NEURONS / NeuroClips):

* channel-concatenated per frame: the blurry video latents *weighted by the key-object mask*
  (NEURONS: the mask tells the renderer where the object is), the mask itself, and the
  keyframe latent;
* cross-attention tokens: the semantic embedding, the semantic embedding weighted by the mask's
  coverage, the caption's text embedding, and a projection of the concept probabilities.

The network predicts the flow-matching velocity ``v = noise - x0`` (rectified flow).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn
from torch.nn import functional as F

__all__ = ["DenoiserConfig", "VideoDenoiser", "condition_inputs"]


@dataclass
class DenoiserConfig:
    """Shapes of a :class:`VideoDenoiser`."""

    latent_channels: int = 4
    channels: tuple[int, int] = (64, 128)
    embed_dim: int = 128
    n_concepts: int = 64
    frames: int = 16
    mask_frames: int = 4
    head_dim: int = 16
    groups: int = 16
    unshuffle: int = 2  # work at (h/2, w/2) with 4× the channels: 4× fewer positions to attend over


def condition_inputs(
    blurry: torch.Tensor,
    mask: torch.Tensor,
    keyframe: torch.Tensor,
    semantic: torch.Tensor,
    text: torch.Tensor,
    concepts: torch.Tensor,
    frames: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-frame condition channels and the raw token inputs from decoded conditions.

    Parameters
    ----------
    blurry
        (B, F, C, h, w) blurry latents.
    mask
        (B, M, ms, ms) key-object mask probabilities for M frames of the TR.
    keyframe
        (B, C, h, w) keyframe latent.
    semantic, text
        (B, D) semantic and caption embeddings.
    concepts
        (B, n_concepts) concept probabilities.

    Returns
    -------
    channels, tokens
        (B, F, 2C + 1, h, w) channels; token inputs for :meth:`VideoDenoiser.tokens`.
    """
    b, f, c, h, w = blurry.shape
    m = F.interpolate(mask.unsqueeze(1), size=(frames, h, w), mode="trilinear", align_corners=False)
    m = m.squeeze(1).unsqueeze(2)  # (B, F, 1, h, w)
    weighted = blurry * (0.5 + 0.5 * m)  # NEURONS: the mask weights the blurry latents
    key = keyframe.unsqueeze(1).expand(b, f, c, h, w)
    coverage = mask.flatten(1).mean(1, keepdim=True)
    return torch.cat([weighted, m, key], dim=2), {
        "semantic": semantic,
        "text": text,
        "concepts": concepts,
        "coverage": coverage,
    }


class _Level(nn.Module):
    """Resnet + spatial transformer (cross-attention) + temporal transformer at one resolution."""

    def __init__(self, cin: int, cout: int, temb: int, cfg: DenoiserConfig, attend: bool) -> None:
        super().__init__()
        self.res = ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=temb, groups=cfg.groups)
        heads = cout // cfg.head_dim
        self.spatial = (
            Transformer2DModel(
                num_attention_heads=heads,
                attention_head_dim=cfg.head_dim,
                in_channels=cout,
                norm_num_groups=cfg.groups,
                cross_attention_dim=cfg.embed_dim,
            )
            if attend
            else None
        )
        self.temporal = TransformerTemporalModel(
            num_attention_heads=heads,
            attention_head_dim=cfg.head_dim,
            in_channels=cout,
            norm_num_groups=cfg.groups,
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        x = self.res(x, temb)
        if self.spatial is not None:
            x = self.spatial(x, encoder_hidden_states=tokens).sample
        return self.temporal(x, num_frames=frames).sample


class VideoDenoiser(nn.Module):
    """Velocity prediction for a clip of latents given its conditions.

    ``forward(x, t, channels, tokens)``: ``x`` (B, F, C, h, w) noisy latents, ``t`` (B,) flow
    time in [0, 1] (1 = pure noise), ``channels`` from :func:`condition_inputs`, ``tokens`` from
    :meth:`tokens`. Returns the velocity (B, F, C, h, w).
    """

    def __init__(self, config: DenoiserConfig | None = None) -> None:
        super().__init__()
        cfg = config or DenoiserConfig()
        self.cfg = cfg
        self.config = asdict(cfg)
        c0, c1 = cfg.channels
        lc = cfg.latent_channels
        temb = c0 * 4
        self.time_proj = Timesteps(c0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(c0, temb)
        r = cfg.unshuffle
        self.conv_in = nn.Conv2d((lc + 2 * lc + 1) * r * r, c0, 3, padding=1)
        self.down = _Level(c0, c0, temb, cfg, attend=False)
        self.downsample = Downsample2D(c0, use_conv=True)
        self.mid = _Level(c0, c1, temb, cfg, attend=True)
        self.upsample = Upsample2D(c1, use_conv=True)
        self.up = _Level(c1 + c0, c0, temb, cfg, attend=True)
        self.norm_out = nn.GroupNorm(cfg.groups, c0)
        self.conv_out = nn.Conv2d(c0, lc * r * r, 3, padding=1)
        d = cfg.embed_dim
        self.concept_proj = nn.Linear(cfg.n_concepts, d)
        self.token_type = nn.Parameter(torch.randn(4, d) * 0.02)

    @classmethod
    def from_config(cls, config: dict) -> VideoDenoiser:
        """Rebuild from :attr:`config`."""
        d = dict(config)
        d["channels"] = tuple(d["channels"])
        return cls(DenoiserConfig(**d))

    def tokens(
        self, semantic: torch.Tensor, text: torch.Tensor, concepts: torch.Tensor, coverage: torch.Tensor
    ) -> torch.Tensor:
        """(B, 4, D) cross-attention tokens."""
        toks = torch.stack([semantic, semantic * coverage, text, self.concept_proj(concepts)], dim=1)
        return toks + self.token_type

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, channels: torch.Tensor, tokens: torch.Tensor
    ) -> torch.Tensor:
        b, f, c, h, w = x.shape
        r = self.cfg.unshuffle
        inp = F.pixel_unshuffle(torch.cat([x, channels], dim=2).reshape(b * f, -1, h, w), r)
        temb = self.time_embed(self.time_proj(t * 1000).to(x.dtype)).repeat_interleave(f, dim=0)
        toks = tokens.repeat_interleave(f, dim=0)
        h0 = self.down(self.conv_in(inp), temb, toks, f)
        h1 = self.mid(self.downsample(h0), temb, toks, f)
        h2 = self.up(torch.cat([self.upsample(h1), h0], dim=1), temb, toks, f)
        out = F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(h2))), r)
        return out.reshape(b, f, c, h, w)
