"""The brain decoder network, its losses and the sub-task scores (no dataset needed)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rtdecode.metrics import ssim_gray
from rtdecode.models.decoders import HEADS, BrainDecoder, DecoderConfig
from rtdecode.models.text import WordTokenizer
from rtdecode.models.worldclip import WorldCLIP
from rtdecode.train.decoders import (
    DecoderData,
    DecodersConfig,
    PixelLoss,
    TrainModule,
    caption_scores,
    decoder_loss,
    head_weights,
    mask_iou,
    ssim_loss,
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


def _tiny_clip() -> WorldCLIP:
    torch.manual_seed(0)
    image = {"patch": 2, "channels": [8, 16], "blocks": [1, 1], "groups": 4}
    text = {"words": ["a"], "max_words": 4, "width": 16}
    return WorldCLIP({"frame_size": 16, "embed_dim": 16, "image": image, "text": text})


def test_pixel_loss_terms_tell_clips_apart_and_train_only_the_decoder():
    clip = _tiny_clip()
    true = torch.rand(16, 4, 3, 2, 2)
    feature = {"perceptual": 1.0}
    variants = ({**feature, "kind": "contrastive"}, {**feature, "kind": "cosine"}, {"ssim": 1.0})
    for terms in variants:
        loss = PixelLoss(clip, **terms, frames=2, clips=16)
        pred = true.clone().requires_grad_(True)
        matched, shuffled = loss(pred, true), loss(true[torch.randperm(16)], true)
        assert matched < shuffled, terms
        matched.backward()
        assert pred.grad is not None and all(p.grad is None for p in clip.image.parameters())
    cfg = DecodersConfig(perceptual=0.1, ssim=1.0, heads=("blurry",))
    module = TrainModule(BrainDecoder(DecoderConfig(**{**SMALL.__dict__, "heads": ("blurry",)})), cfg, clip)
    assert all(k.startswith("decoder.") for k in module.state_dict())  # the frozen tower is not saved
    b = _batch(8, np.random.default_rng(0))
    module.decoder.eval()  # no dropout: the two losses see the same outputs
    without, _ = decoder_loss(module.decoder, b, {"blurry": 1.0})
    with_terms, _ = decoder_loss(module.decoder, b, {"blurry": 1.0}, pixel_loss=module.pixel_loss)
    assert with_terms > without


def test_ssim_loss_is_the_metric():
    rng = np.random.default_rng(0)
    a = rng.random((4, 32, 32, 3)).astype(np.float32)
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    as_torch = [torch.from_numpy(x).permute(0, 3, 1, 2) for x in (a, b)]
    assert abs((1 - float(ssim_loss(*as_torch))) - ssim_gray(a, b).mean()) < 1e-5
    assert float(ssim_loss(as_torch[0], as_torch[0])) < 1e-6


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


def test_windows_average_over_repeats_as_the_test_set():
    """A window marked for averaging is the mean over its segment's repeats, the same input
    the test protocol (:meth:`DecoderData.averaged`) gives; unmarked windows stay one repeat."""
    from scanner_sim.dataset import RunInfo

    rng = np.random.default_rng(0)
    runs = [RunInfo(i, seg, rep, "train") for i, (seg, rep) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)])]
    prep = SimpleNamespace(values={r.index: rng.normal(size=(12, 5)).astype(np.float16) for r in runs})
    data = DecoderData(prep, runs, 12, np.arange(5), (1, 2), warmup=2)
    samples = np.array([(1, 3), (2, 5)])
    single = data.windows(samples)
    mixed = data.windows(samples, np.array([True, False]))
    np.testing.assert_array_equal(mixed[1], single[1])
    v0, v1 = (prep.values[i].astype(np.float32) for i in (0, 1))
    np.testing.assert_allclose(mixed[0], (v0[[4, 5]] + v1[[4, 5]]) / 2, rtol=1e-6)
    assert not np.allclose(mixed[0], single[0])
    x_avg, index = data.averaged(runs)
    row = int(np.flatnonzero(index == 3)[0])
    np.testing.assert_allclose(mixed[0], x_avg[row], rtol=1e-6)


def test_separate_lags_reach_the_heads():
    """Mixed lags are summed per voxel (an even mix at the start cannot tell the lags apart);
    separate lags are projected apart, so swapping them changes the output."""
    from dataclasses import replace

    x = torch.randn(3, 2, SMALL.n_voxels)
    swapped = x.flip(1)
    for mode, differs in (("mixed", False), ("separate", True)):
        torch.manual_seed(0)
        model = BrainDecoder(replace(SMALL, lag_features=mode)).eval()
        with torch.no_grad():
            a, b = model.backbone(x), model.backbone(swapped)
        assert (not torch.allclose(a, b, atol=1e-5)) == differs, mode
        rebuilt = BrainDecoder.from_config(model.config)
        assert rebuilt.separate == (mode == "separate")
    with pytest.raises(ValueError, match="lag_features"):
        BrainDecoder(replace(SMALL, lag_features="summed"))


def test_linear_pixel_path_starts_neutral_and_learns():
    """``pixel_rank``: a reduced-rank linear path from the lag projections to the pixels. It
    starts as no change to the token path's pixels, learns (only its gradient moves it here),
    and a config without the field (bundles before it) builds the model without it."""
    from dataclasses import replace

    torch.manual_seed(0)
    plain = BrainDecoder(replace(SMALL, lag_features="separate")).eval()
    torch.manual_seed(0)
    model = BrainDecoder(replace(SMALL, lag_features="separate", pixel_rank=8)).eval()
    x = torch.randn(4, 2, SMALL.n_voxels)
    with torch.no_grad():
        assert torch.equal(model(x)["pixels"], plain(x)["pixels"])
    target = torch.rand(4, SMALL.frames, 3, SMALL.pixel_size, SMALL.pixel_size)
    opt = torch.optim.Adam(model.pixel_linear.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(x)["pixels"], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    old = {k: v for k, v in model.config.items() if k != "pixel_rank"}
    assert BrainDecoder.from_config(old).pixel_linear is None
    assert BrainDecoder.from_config(model.config).pixel_linear is not None
