"""The brain decoder network, its losses and the sub-task scores (no dataset needed)."""

import numpy as np
import torch

from rtdecode.models.decoders import HEADS, BrainDecoder, DecoderConfig
from rtdecode.models.text import WordTokenizer
from rtdecode.train.decoders import (
    DecodersConfig,
    caption_scores,
    decoder_loss,
    head_weights,
    mask_iou,
)

SMALL = DecoderConfig(
    n_voxels=50,
    n_lags=2,
    hidden=64,
    depth=1,
    embed_dim=16,
    n_concepts=8,
    vocab_size=12,
    max_words=5,
    word_dim=16,
    mask_frames=2,
    mask_size=4,
    frames=4,
    latent_shape=(2, 4, 4),
    token_dim=32,
    temporal_layers=1,
    pixel_size=2,
)


W = torch.from_numpy(np.random.default_rng(42).standard_normal((50, 8)).astype(np.float32) / 5)


def _batch(n, rng):
    x = torch.from_numpy(rng.standard_normal((n, 2, 50)).astype(np.float32))
    z = x.mean(1) @ W  # targets that depend on the input (always the same way), so the loss can fall
    emb = torch.nn.functional.normalize(z @ torch.ones(8, 16) + torch.randn(n, 16) * 0.1, dim=-1)
    tokens = torch.randint(4, 12, (n, 7))
    tokens[:, 0], tokens[:, -1] = WordTokenizer.BOS, WordTokenizer.EOS
    return {
        "x": x,
        "image_emb": emb,
        "text_emb": emb,
        "tokens": tokens,
        "latents": z[:, :2, None, None, None].expand(n, 2, 4, 4, 4).transpose(1, 2).contiguous(),
        "concepts": (z > 0).float(),
        "masks": (z[:, :2, None, None] > 0).float().expand(n, 2, 4, 4),
        "motion": z[:, :6],
        "pixels": torch.sigmoid(z[:, :3, None, None, None]).expand(n, 3, 4, 2, 2).transpose(1, 2) + 0,
    }


def test_shapes_and_ablation():
    model = BrainDecoder(SMALL)
    rng = np.random.default_rng(0)
    b = _batch(3, rng)
    out = model(b["x"], b["tokens"])
    assert out["semantic"].shape == (3, 16) and torch.allclose(out["semantic"].norm(dim=-1), torch.ones(3))
    assert out["blurry"].shape == (3, 4, 2, 4, 4) and out["keyframe"].shape == (3, 2, 4, 4)
    assert out["pixels"].shape == (3, 4, 3, 2, 2)
    assert out["mask"].shape == (3, 2, 4, 4) and out["caption"].shape == (3, 7, 12)
    ids = model.caption.generate(out["hidden"], WordTokenizer.BOS, WordTokenizer.EOS)
    assert ids.shape == (3, 5)
    no_caption = BrainDecoder(DecoderConfig(**{**SMALL.__dict__, "heads": ("concepts", "blurry")}))
    out = no_caption(b["x"])
    assert set(out) == {"hidden", "concepts", "blurry", "pixels"}
    latents_only = BrainDecoder(DecoderConfig(**{**SMALL.__dict__, "pixel_size": 0}))
    assert "pixels" not in latents_only(b["x"])  # bundles trained before the pixel head
    again = BrainDecoder.from_config(model.config)
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in model.parameters())


def test_every_head_learns():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = BrainDecoder(SMALL)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    weights = dict.fromkeys(HEADS, 1.0)
    first = None
    torch.set_num_threads(1)
    for _ in range(150):
        loss, parts = decoder_loss(model, _batch(32, rng), weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first or parts
    _, last = decoder_loss(model.eval(), _batch(256, rng), weights)
    for head in ("keyframe", "concepts", "mask", "blurry", "motion", "semantic"):
        assert last[head] < first[head], head


def test_blurry_loss_counts_the_pixels():
    torch.manual_seed(0)
    model = BrainDecoder(SMALL).eval()
    b = _batch(8, np.random.default_rng(0))
    weights = dict.fromkeys(HEADS, 1.0)
    _, parts = decoder_loss(model, b, weights)
    b["pixels"] = model(b["x"])["pixels"].detach()  # perfect pixels: only the latents' error is left
    _, perfect = decoder_loss(model, b, weights)
    assert perfect["blurry"] < parts["blurry"]


def test_progressive_weighting_ramps_heads_in():
    cfg = DecodersConfig(steps=1000, weighting="progressive")
    early, late = head_weights(cfg, 0), head_weights(cfg, 900)
    assert early["concepts"] > 0 and early["mask"] > 0 and early["blurry"] == 0 and early["caption"] == 0
    assert all(v > 0 for v in late.values())
    assert head_weights(DecodersConfig(weighting="uniform"), 0)["blurry"] > 0


def test_scores():
    assert caption_scores(["a red star", "a blue dot"], ["a red star", "a red dot"]) == {
        "word_accuracy": 5 / 6,
        "exact": 0.5,
    }
    m = np.zeros((2, 1, 4, 4))
    m[:, :, :2] = 1
    assert mask_iou(m, m) == 1.0 and mask_iou(m, 1 - m) == 0.0


def test_tokenizer_round_trip():
    tok = WordTokenizer(["a", "red", "star"])
    ids = tok.encode("a red star", max_words=5)
    assert ids[0] == tok.BOS and len(ids) == 7 and tok.decode(ids[1:]) == "a red star"
    assert tok.decode(tok.encode("a green star", 5)[1:]) == "a star"  # unknown word dropped
    assert WordTokenizer.from_list(tok.to_list()).words == tok.words
