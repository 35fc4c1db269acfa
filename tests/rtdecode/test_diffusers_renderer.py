"""``--renderer diffusers:PATH``: a tiny text-to-video pipeline built here, saved, loaded, rendered."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from rtdecode.conditions import Conditions
from rtdecode.render.diffusers_pipeline import (
    DiffusersPipelineRenderer,
    load_diffusers_renderer,
    parse_diffusers_spec,
)

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

FRAMES, SIZE = 16, (64, 64)
TEXT_DIM, MAX_TOKENS = 16, 32


def _byte_chars() -> list[str]:
    """GPT-2/CLIP byte-level BPE alphabet: one printable character per byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _write_tokenizer_files(folder: Path) -> int:
    """A minimal CLIP BPE vocabulary (bytes, word-final bytes, a few merges); its size."""
    chars = _byte_chars()
    merged = ["th", "the</w>", "ca", "cat</w>"]
    tokens = chars + [c + "</w>" for c in chars] + merged + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\nc a\nca t</w>\n")
    return len(tokens)


def _build_tiny_pipeline(out: Path) -> None:
    """A random-weight TextToVideoSDPipeline small enough for a CPU test, saved to ``out``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    n_vocab = _write_tokenizer_files(out.parent / "tok_src")
    tokenizer = CLIPTokenizer.from_pretrained(out.parent / "tok_src", model_max_length=MAX_TOKENS)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=n_vocab,
            hidden_size=TEXT_DIM,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=n_vocab - 2,
            eos_token_id=n_vocab - 1,
            pad_token_id=n_vocab - 1,
            projection_dim=TEXT_DIM,
        )
    )
    unet = UNet3DConditionModel(
        sample_size=16,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(  # three blocks: scale factor 4, 64×64 frames ↔ 16×16 latents
        block_out_channels=(4, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False)
    pipe = TextToVideoSDPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
    )
    pipe.save_pretrained(out)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: a tiny model gains nothing from more, and a busy CPU makes them thrash."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("diffusers") / "tiny_t2v"
    _build_tiny_pipeline(out)
    return out


def _conditions(tr: int, caption: str) -> Conditions:
    rng = np.random.default_rng(tr)
    return Conditions(
        tr=tr,
        source_tr=tr + 3,
        blurry=rng.random((4, 8, 8, 3), dtype=np.float32),
        keyframe=rng.standard_normal((4, 8, 8)).astype(np.float32),  # a latent keyframe
        caption=caption,
    )


def test_tiny_text_to_video_pipeline_renders(tiny_pipeline):
    assert (tiny_pipeline / "model_index.json").is_file()
    renderer = load_diffusers_renderer(f"diffusers:{tiny_pipeline}", FRAMES, SIZE, steps=2, device="cpu")
    assert isinstance(renderer, DiffusersPipelineRenderer)
    assert type(renderer.pipeline).__name__ == "TextToVideoSDPipeline"
    assert renderer.frames_per_tr == FRAMES and renderer.size == SIZE
    args = renderer.call_arguments(_conditions(0, "the cat"))
    assert args["prompt"] == "the cat" and args["num_frames"] == FRAMES and args["num_inference_steps"] == 2
    assert (args["height"], args["width"]) == SIZE and args["output_type"] == "np"
    assert "image" not in args  # text-to-video: no image argument

    t0 = time.perf_counter()
    clips = [renderer.render(_conditions(tr, cap)) for tr, cap in ((0, "the cat"), (1, "a dog runs"))]
    elapsed = time.perf_counter() - t0
    for clip in clips:
        assert clip.shape == (FRAMES, *SIZE, 3) and clip.dtype == np.uint8
        assert clip.std() > 0  # not one constant colour
        assert any(not np.array_equal(clip[0], f) for f in clip[1:])  # frames differ
    assert not np.array_equal(clips[0], clips[1])  # another TR, another seed and prompt
    again = renderer.render(_conditions(0, "the cat"))
    np.testing.assert_array_equal(again, clips[0])  # seeded by the TR: repeatable
    assert elapsed < 20, f"two tiny TRs took {elapsed:.1f} s"


def test_resamples_pipeline_output_in_time_and_space(tiny_pipeline):
    # Ask the pipeline for 5 frames of 32×32; the renderer still returns 16 frames of 64×64.
    renderer = load_diffusers_renderer(
        f"diffusers:{tiny_pipeline}",
        FRAMES,
        SIZE,
        steps=1,
        device="cpu",
        pipeline_frames=5,
        pipeline_size=(32, 32),
    )
    clip = renderer.render(_conditions(2, "the cat"))
    assert clip.shape == (FRAMES, *SIZE, 3) and clip.dtype == np.uint8


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_diffusers_renderer(f"diffusers:{tmp_path / 'nowhere'}", FRAMES, SIZE)
    (tmp_path / "not_a_pipeline").mkdir()
    (tmp_path / "not_a_pipeline" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no model_index\.json"):
        load_diffusers_renderer(f"diffusers:{tmp_path / 'not_a_pipeline'}", FRAMES, SIZE)
    with pytest.raises(ValueError, match="diffusers:"):
        parse_diffusers_spec("ridge")
    with pytest.raises(ValueError, match="names no pipeline"):
        parse_diffusers_spec("diffusers:")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "NoSuchPipeline"}))
    with pytest.raises(RuntimeError, match="could not load the pipeline"):
        load_diffusers_renderer(f"diffusers:{broken}", FRAMES, SIZE, device="cpu")


class _FakeOutput:
    def __init__(self, frames):
        self.frames = frames


class _ImageToVideo:
    """Stands in for an image-to-video pipeline: returns its (PIL) image as every frame."""

    vae_scale_factor = 8

    def __call__(self, image, prompt=None, num_frames=4, height=None, width=None, generator=None):
        self.image = image
        frame = np.asarray(image, dtype=np.float32) / 255
        return _FakeOutput(np.repeat(frame[None, None], num_frames, axis=1))  # (1, F, h, w, 3)


class _NoSignature:
    def __call__(self, latents, steps=1):
        return latents


def test_image_argument_for_image_to_video_pipelines():
    pipe = _ImageToVideo()
    renderer = DiffusersPipelineRenderer(pipe, 6, (24, 20), steps=1)
    assert renderer.pipeline_size == (24, 24)  # rounded up to the VAE scale factor
    c = _conditions(0, "x")
    c.blurry, c.keyframe = np.zeros((3, 4, 8, 8), np.float32), np.zeros((4, 8, 8), np.float32)
    clip = renderer.render(c)  # latents only and no previous clip: a grey image
    assert renderer.last_image_source == "gray" and clip.shape == (6, 24, 20, 3)
    assert abs(float(clip.mean()) - 128) < 1

    c.blurry = np.full((4, 8, 8, 3), 0.25, np.float32)  # pixel blurry frames: the middle one
    clip = renderer.render(c)
    assert renderer.last_image_source == "blurry" and abs(float(clip.mean()) - 64) < 2

    c.blurry = np.zeros((3, 4, 8, 8), np.float32)  # latents again: the previous clip's last frame
    renderer.render(c)
    assert renderer.last_image_source == "previous"

    c.keyframe = np.full((8, 8, 3), 255, np.uint8)  # a pixel keyframe wins
    clip = renderer.render(c)
    assert renderer.last_image_source == "keyframe" and clip.min() == 255
    assert pipe.image.size == (24, 24)  # PIL (W, H) at the pipeline size


def test_rejects_pipelines_without_a_usable_signature():
    with pytest.raises(ValueError, match="neither 'prompt' nor 'image'"):
        DiffusersPipelineRenderer(_NoSignature(), 4, (8, 8))
    with pytest.raises(ValueError, match="does not accept"):
        DiffusersPipelineRenderer(_ImageToVideo(), 4, (8, 8), call_kwargs={"guidance_scale": 3.0})
