"""The diffusion renderer: schedule guard, sampler, blurry init, teacher/student training loops."""

import numpy as np
import torch

from rtdecode.models.autoencoder import FrameAutoencoder
from rtdecode.models.video_denoiser import DenoiserConfig, VideoDenoiser, condition_inputs
from rtdecode.render.diffusion import flow_schedule, renderer_autoencoder, sample_flow
from rtdecode.train.renderer import (
    RendererConfig,
    degrade_conditions,
    distill_student,
    frame_decoder_tensors,
    reflow_pairs,
    train_frame_decoder,
    train_teacher,
)
from rtdecode.train.targets import Targets

TINY = DenoiserConfig(
    latent_channels=2,
    channels=(16, 32),
    embed_dim=8,
    n_concepts=6,
    frames=4,
    mask_frames=2,
    head_dim=8,
    groups=8,
)


def test_few_steps_always_denoise():
    # diffusers' img2img keeps int(steps * strength) steps: 2 × 0.4 → none. Ours runs 2.
    for steps, strength in ((2, 0.4), (1, 0.3), (4, 1.0)):
        sched = flow_schedule(steps, strength)
        assert len(sched.timesteps) == steps
        assert abs(float(sched.sigmas[0]) - strength) < 1e-6 and float(sched.sigmas[-1]) == 0.0


class Oracle(torch.nn.Module):
    """Knows x0: returns the exact rectified-flow velocity (x_t - x0) / t."""

    cfg = TINY

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, channels, tokens):
        return (x - self.x0) / t.view(-1, 1, 1, 1, 1)


def test_sampler_integrates_to_the_clean_latents_in_one_step():
    x0 = torch.randn(1, 4, 2, 4, 4)
    eps = torch.randn_like(x0)
    s = 0.6
    start = (1 - s) * x0 + s * eps
    out = sample_flow(Oracle(x0), start, None, None, steps=1, strength=s)
    assert torch.allclose(out, x0, atol=1e-5)


def test_sampler_reuses_one_scheduler_and_resets_it_per_clip():
    x0 = torch.randn(1, 4, 2, 4, 4)
    start = 0.5 * x0 + 0.5 * torch.randn_like(x0)
    first = sample_flow(Oracle(x0), start, None, None, steps=3, strength=0.5)
    assert flow_schedule(2, 0.9) is flow_schedule(3, 0.5)  # one per thread, re-set each call
    again = sample_flow(Oracle(x0), start, None, None, steps=3, strength=0.5)
    assert torch.equal(first, again)


def test_caption_embeddings_are_cached_per_caption():
    from rtdecode.render.diffusion import DiffusionRenderer

    calls = []

    def text(texts):
        calls.append(list(texts))
        return np.full((len(texts), 8), len(texts[0]), np.float32)

    ae = FrameAutoencoder({"frame_size": 16, "block_out_channels": [16], "norm_num_groups": 8})
    ren = DiffusionRenderer(VideoDenoiser(TINY), ae, text)
    a, b = ren.caption_embedding("a red circle"), ren.caption_embedding("a red circle")
    assert calls == [["a red circle"]] and torch.equal(a, b) and a.shape == (1, 8)
    for i in range(100):  # bounded: old captions leave
        ren.caption_embedding(f"caption {i}")
    ren.caption_embedding("a red circle")
    assert len(calls) == 102 and len(ren._captions) <= 64


def _targets(n=24, seed=0):
    rng = np.random.default_rng(seed)
    lat = rng.standard_normal((n, 4, 2, 4, 4)).astype(np.float16)
    return Targets(
        latents=lat,
        image_emb=rng.standard_normal((n, 8)).astype(np.float32),
        text_emb=rng.standard_normal((n, 8)).astype(np.float32),
        tokens=np.zeros((n, 4), np.int16),
        concepts=rng.random((n, 6)) > 0.5,
        masks=rng.random((n, 2, 4, 4)).astype(np.float16),
        motion=np.zeros((n, 6), np.float32),
        key_concept=np.zeros(n, np.int16),
        captions=[""] * n,
    )


def test_conditions_are_weighted_by_the_mask():
    blurry = torch.ones(1, 4, 2, 4, 4)
    mask = torch.zeros(1, 2, 4, 4)
    mask[..., :2] = 1
    ch, tok = condition_inputs(
        blurry, mask, torch.zeros(1, 2, 4, 4), torch.ones(1, 8), torch.ones(1, 8), torch.zeros(1, 6), frames=4
    )
    assert ch.shape == (1, 4, 5, 4, 4)
    assert ch[0, 0, 0, 0, 0] == 1.0 and ch[0, 0, 0, 0, 3] == 0.5  # inside vs outside the object
    assert tok["coverage"].item() == 0.5


def test_teacher_and_student_train(tmp_path, monkeypatch):
    import rtdecode.train.renderer as R

    monkeypatch.setattr(R, "DenoiserConfig", lambda **kw: TINY)
    targets = _targets()
    cfg = RendererConfig(
        teacher_steps=40,
        student_steps=30,
        batch=4,
        lr=2e-3,
        reflow_pairs=8,
        teacher_sample_steps=4,
        checkpoint_every=1000,
    )
    teacher, hist = train_teacher(targets, np.arange(24), cfg, tmp_path, progress=False)
    first = np.mean([h["loss"] for h in hist[:8]])
    last = np.mean([h["loss"] for h in hist[-8:]])
    assert last < first
    pairs = reflow_pairs(teacher, targets, np.arange(24), cfg, progress=False)
    assert pairs["start"].shape == pairs["end"].shape == (8, 4, 2, 4, 4)
    student, shist = distill_student(teacher, pairs, cfg, tmp_path, progress=False)
    assert np.mean([h["loss"] for h in shist[-8:]]) < np.mean([h["loss"] for h in shist[:8]])
    gen = torch.Generator().manual_seed(0)
    batch = {
        k: torch.from_numpy(np.asarray(v[:2], np.float32))
        for k, v in {
            "latents": targets.latents,
            "masks": targets.masks,
            "image_emb": targets.image_emb,
            "text_emb": targets.text_emb,
            "concepts": targets.concepts,
        }.items()
    }
    cond = degrade_conditions(batch, gen)
    assert cond["blurry"].shape == batch["latents"].shape and not torch.equal(
        cond["blurry"], batch["latents"]
    )
    assert isinstance(student, VideoDenoiser)


def test_light_frame_decoder_trains_and_loads_back(tmp_path):
    ae = FrameAutoencoder({"block_out_channels": [16], "norm_num_groups": 8}).eval()
    cfg = RendererConfig(
        frame_decoder_channels=8, frame_decoder_steps=60, frame_decoder_movies=4, checkpoint_every=1000
    )
    light, spec, hist = train_frame_decoder(ae, cfg, tmp_path, progress=False)
    assert np.mean([h["loss"] for h in hist[-10:]]) < np.mean([h["loss"] for h in hist[:10]])
    m = spec["metrics"]
    assert m["gflop_per_clip"] < m["gflop_per_clip_autoencoder"] and np.isfinite(m["psnr"])
    # The encoder is the autoencoder's, untouched: the latent space stays the one decoders predict.
    for name, p in ae.vae.encoder.named_parameters():
        assert torch.equal(p, light.vae.encoder.get_parameter(name))
    tensors = frame_decoder_tensors(light)
    assert tensors and all(
        k.startswith(("frame_decoder.vae.decoder.", "frame_decoder.vae.post_quant_conv.")) for k in tensors
    )
    loaded = renderer_autoencoder(tensors, {"frame_decoder": spec}, ae)
    z = torch.randn(3, *ae.latent_shape)
    assert torch.equal(loaded.decode(z), light.decode(z))
    assert renderer_autoencoder(tensors, {}, ae) is ae  # renderers without one decode with the autoencoder
