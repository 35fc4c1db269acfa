"""Stimulus-side encoders and evaluation models: shapes, tokenizer, training, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rtdecode.models import load_module, module_tensors
from rtdecode.models.autoencoder import FrameAutoencoder, to_uint8
from rtdecode.models.evaluation import EvalEmbedding, FrameClassifier, VideoClassifier
from rtdecode.models.worldclip import WorldCLIP, contrastive_loss
from rtdecode.train.encoders import (
    EncodersConfig,
    Schedule,
    _recipe,
    load_encoders,
    make_pool,
    permute_colours,
    read_encoders,
    train_encoders,
)
from rtdecode.train.loop import TrainConfig, Trainer, seed_everything

TINY = {
    "ae": {"unshuffle": 4, "block_out_channels": [32], "norm_num_groups": 8},
    "clip": {
        "embed_dim": 32,
        "image": {"channels": [16, 32], "blocks": [1, 1]},
        "text": {"width": 32, "layers": 1, "heads": 2},
    },
    "eval_frame": {"stages": [[8], [16], [32]]},
    "eval_video": {"trunk": [[8], [16], [32]], "width": 16, "dilations": [1, 2], "frames": 8},
    "eval_embed": {"embed_dim": 32, "image": {"width": 32, "depth": 1, "heads": 2}, "text": {"width": 32}},
}
CLASSES = {
    "ae": FrameAutoencoder,
    "clip": WorldCLIP,
    "eval_frame": FrameClassifier,
    "eval_video": VideoClassifier,
    "eval_embed": EvalEmbedding,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest (and steadiest on a busy machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pool():
    return make_pool(10_000_000, 3, 128)


@pytest.fixture(scope="module")
def held_out():
    return make_pool(20_000_000, 1, 64)


def _tiny(name: str, seed: int = 0):
    seed_everything(seed)
    return CLASSES[name].from_config(json.loads(json.dumps(TINY[name])))


def _cfg(**kw) -> EncodersConfig:
    sched = Schedule(steps=3, batch=8, lr=3e-3, warmup=0, seed=1)
    base = {name: sched for name in TINY}
    return EncodersConfig(
        **{**base, "clip_frames": 8, "model_configs": TINY, "progress": False, "threads": 1, **kw}
    )


def _train(name: str, pool, steps: int, batch: int, lr: float = 3e-3) -> list[float]:
    cfg = _cfg(**{name: Schedule(steps=steps, batch=batch, lr=lr, warmup=0, seed=1)})
    recipe = _recipe(name, pool, cfg)
    model = _tiny(name)
    tcfg = TrainConfig(steps=steps, lr=lr, warmup=0, schedule="constant", progress=False, seed=5)
    return [h["loss"] for h in Trainer(model, recipe.loss_fn, recipe.make_batch, tcfg).fit().history]


def _falls(losses: list[float], k: int = 3) -> bool:
    return float(np.mean(losses[-k:])) < float(np.mean(losses[:k]))


def test_autoencoder_shapes_scale_and_layouts(pool):
    ae = _tiny("ae").eval()
    frames = pool.flat_frames()[:6]
    with torch.no_grad():
        z = ae.encode(frames)
        assert z.shape == (6, 4, 16, 16) and ae.latent_shape == (4, 16, 16)
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
        assert torch.allclose(ae.encode(x), z, atol=1e-5)  # float (N,3,H,W) in [0,1] == uint8 (N,H,W,3)
        out = ae.decode(z)
        assert out.shape == (6, 3, 64, 64) and 0 <= float(out.min()) and float(out.max()) <= 1
        assert to_uint8(out).shape == (6, 64, 64, 3)
        scale = ae.fit_scale(pool.flat_frames()[::4])
        z = ae.encode(pool.flat_frames()[::4])
    assert abs(float(z.mean())) < 1e-3 and float(z.std()) == pytest.approx(1.0, abs=1e-3)
    assert ae.config["scaling_factor"] == scale["scaling_factor"]
    with pytest.raises(ValueError):
        ae.encode(np.zeros((2, 3, 64, 64), np.uint8))


def test_autoencoder_trains(pool):
    assert _falls(_train("ae", pool, steps=12, batch=8))


def test_tokenizer_round_trip_and_unknown_words(pool):
    clip = _tiny("clip")
    tokens = clip.tokenize(pool.captions)
    assert tokens.shape == (len(pool.captions), 26) and tokens.dtype == torch.int64
    assert clip.detokenize(tokens) == pool.captions
    assert (tokens[:, 0] == 1).all()  # <bos>
    odd = clip.tokenize(["a zebra circle"])[0].tolist()
    assert odd[:5] == [1, clip.tokenizer.index["a"], 3, clip.tokenizer.index["circle"], 2]


def test_worldclip_embeddings_and_training(pool):
    clip = _tiny("clip").eval()
    with torch.no_grad():
        img = clip.encode_image(pool.flat_frames()[:5])
        txt = clip.encode_text(pool.captions[:3])
    assert img.shape == (5, 32) and txt.shape == (3, 32)
    assert torch.allclose(img.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(3), atol=1e-5)
    assert _falls(_train("clip", pool, steps=15, batch=12))


def test_contrastive_batches_have_no_false_negatives(pool):
    rng = np.random.default_rng(0)
    idx, ids = pool.distinct_caption_frames(rng, 10)
    assert len(set(ids.tolist())) == len(ids) == 10
    assert (pool.caption_id.reshape(-1)[idx] == ids).all()
    # equal labels count as positives: frames 0 and 1 share a caption, so swapped matches are hits
    image = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    text = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
    scale = torch.tensor(np.log(10.0))
    with_labels, logged = contrastive_loss(image, text, scale, torch.tensor([4, 4, 7]))
    without, plain = contrastive_loss(image, text, scale)
    assert logged["acc"] == 1.0 and plain["acc"] < 1.0
    assert float(with_labels) < float(without)


def test_permute_colours_keeps_content_and_shares_the_order_within_a_clip(pool):
    clips = pool.frames[:3, :4]
    out = permute_colours(clips, np.random.default_rng(1))
    assert out.shape == clips.shape and out.dtype == np.uint8
    for c in range(3):
        order = [
            int(np.argmax([np.array_equal(out[c, ..., k], clips[c, ..., j]) for j in range(3)]))
            for k in range(3)
        ]
        assert sorted(order) == [0, 1, 2]
        assert all(np.array_equal(out[c, ..., k], clips[c, ..., order[k]]) for k in range(3))


def test_pool_rendering_in_worker_processes_is_identical():
    a = make_pool(10_000_100, 40, 16)
    b = make_pool(10_000_100, 40, 16, workers=2)
    assert np.array_equal(a.frames, b.frames) and a.captions == b.captions
    assert np.array_equal(a.caption_id, b.caption_id) and np.array_equal(a.key_concept, b.key_concept)


def test_evaluation_models_shapes_and_training(pool):
    frames = pool.flat_frames()[:4]
    fc, vc, emb = _tiny("eval_frame").eval(), _tiny("eval_video").eval(), _tiny("eval_embed").eval()
    with torch.no_grad():
        p = fc.predict_proba(frames)
        assert p.shape == (4, 64) and torch.allclose(p.sum(1), torch.ones(4))
        q = vc.predict_proba(pool.frames[:2, :8])
        assert q.shape == (2, 64) and torch.allclose(q.sum(1), torch.ones(2))
        assert vc.predict_proba(pool.frames[:1, :3]).shape == (1, 64)  # any clip length
        assert emb.encode_image(frames).shape == (4, 32) and emb.encode_text(pool.captions[:2]).shape == (
            2,
            32,
        )
    assert _falls(_train("eval_frame", pool, steps=15, batch=16))
    assert _falls(_train("eval_video", pool, steps=10, batch=4))
    assert _falls(_train("eval_embed", pool, steps=15, batch=12))


@pytest.mark.parametrize("name", list(TINY))
def test_save_load_gives_identical_outputs(name, pool):
    model = _tiny(name, seed=3).eval()
    if name == "eval_frame" or name == "eval_video":  # make BatchNorm statistics non-trivial
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    tensors = module_tensors(model, f"{name}.")
    assert all(k.startswith(f"{name}.") and isinstance(v, np.ndarray) for k, v in tensors.items())
    config = json.loads(json.dumps(model.config))  # the config is JSON-able
    other = CLASSES[name].from_config(config).eval()
    load_module(other, tensors, f"{name}.")
    frames = pool.flat_frames()[:3]
    with torch.no_grad():
        if name == "ae":
            a, b = model.decode(model.encode(frames)), other.decode(other.encode(frames))
        elif name == "eval_video":
            a, b = model.predict_proba(pool.frames[:2, :8]), other.predict_proba(pool.frames[:2, :8])
        elif name == "eval_frame":
            a, b = model.predict_proba(frames), other.predict_proba(frames)
        else:
            a = torch.cat([model.encode_image(frames), model.encode_text(pool.captions[:2])])
            b = torch.cat([other.encode_image(frames), other.encode_text(pool.captions[:2])])
    assert torch.equal(a, b)


def test_load_module_is_strict():
    clip = _tiny("eval_frame")
    tensors = module_tensors(clip, "x.")
    missing = dict(tensors)
    missing.pop(next(iter(missing)))
    with pytest.raises(KeyError):
        load_module(_tiny("eval_frame"), missing, "x.")
    with pytest.raises(KeyError):
        load_module(_tiny("eval_frame"), {**tensors, "x.extra": np.zeros(1)}, "x.")
    key = next(k for k, v in tensors.items() if v.ndim == 4)
    with pytest.raises(ValueError):
        load_module(_tiny("eval_frame"), {**tensors, key: np.zeros((1, 1, 1, 1), np.float32)}, "x.")


def test_train_encoders_writes_files_and_resumes(tmp_path):
    cfg = _cfg(
        out=tmp_path, train_movies=2, test_movies=1, movie_frames=64, eval_frames=32, checkpoint_every=2
    )
    doc = train_encoders(cfg)
    assert set(doc["models"]) == set(TINY)
    assert {"psnr", "scaling_factor"} <= set(doc["metrics"]["ae"])
    assert {"top1", "chance_top1", "n_captions"} <= set(doc["metrics"]["clip"])
    assert {"top1", "chance_top1"} <= set(doc["metrics"]["eval_video"])
    assert doc["training"]["data"]["train_seeds"] == [10_000_000, 10_000_001]
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "ae").iterdir()) == [
        "step-00000002.pt",
        "step-00000003.pt",
    ]
    first = (tmp_path / "encoders.safetensors").read_bytes()
    models = read_encoders(tmp_path)
    assert (
        set(models) == set(TINY)
        and models["ae"].config["scaling_factor"] == doc["metrics"]["ae"]["scaling_factor"]
    )
    video, frame = models["eval_video"], models["eval_frame"]  # the video trunk is the frame classifier's
    assert video.config["freeze_trunk"]
    for a, b in zip(video.trunk.state_dict().values(), frame.features.state_dict().values()):
        assert torch.equal(a, b)
    again = train_encoders(cfg)  # everything resumes at its last step: same weights
    assert (tmp_path / "encoders.safetensors").read_bytes() == first
    assert again["metrics"] == doc["metrics"]
    from safetensors.numpy import load_file

    rebuilt = load_encoders(load_file(str(tmp_path / "encoders.safetensors")), again["models"])
    assert type(rebuilt["eval_video"]).__name__ == "VideoClassifier"
