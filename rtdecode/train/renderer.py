"""Train the renderer: a flow-matching video teacher, then a few-step student by reflow.

Teacher
    :class:`~rtdecode.models.video_denoiser.VideoDenoiser` trained with the rectified-flow
    objective (``x_t = (1-t)·x0 + t·ε``, target ``ε - x0``) on the training clips' autoencoder
    latents, conditioned on ground-truth conditions *degraded like decoded ones* (blurred and
    noisy blurry latents, noisy embeddings and masks, softened concepts, random condition
    drop-out), so it tolerates what the decoders will give it.
Frame decoder
    A light decoder for the renderer's latents (:func:`train_frame_decoder`): the autoencoder's
    decoder side at a quarter of its width and without the mid-block attention, distilled on the
    frozen encoder's latents of fresh stimulus movies. Decoding 16 frames is then 0.73 instead of
    2.8 GFLOP, so the decoding no longer dominates a one-step student's compute.
Student
    Reflow distillation (Liu et al., 2023, "Flow straight and fast"): the teacher, run with
    many steps from the renderer's own SDEdit start, produces (start, end) pairs; the student —
    initialised from the teacher — learns the straight path between them, so one or two Euler
    steps land where the teacher's many steps do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from rtdecode.models.autoencoder import DECODER_PARTS
from rtdecode.models.video_denoiser import DenoiserConfig, VideoDenoiser, condition_inputs
from rtdecode.render.diffusion import sample_flow
from rtdecode.train.targets import Targets

__all__ = [
    "RendererConfig",
    "degrade_conditions",
    "distill_student",
    "reflow_pairs",
    "train_frame_decoder",
    "train_teacher",
]

log = logging.getLogger("rtdecode.train.renderer")


@dataclass(frozen=True)
class RendererConfig:
    """Settings of ``rtdecode train renderer``."""

    channels: tuple[int, int] = (64, 128)
    teacher_steps: int = 3000
    student_steps: int = 1500
    batch: int = 8
    lr: float = 5e-4
    strength: float = field(default=0.7, metadata={"help": "SDEdit start (flow time) of the renderer"})
    teacher_sample_steps: int = field(default=16, metadata={"help": "teacher steps for reflow pairs"})
    reflow_pairs: int = 768
    student_sample_steps: int = field(default=2, metadata={"help": "steps the student renders with"})
    frame_decoder_channels: int = field(
        default=32, metadata={"help": "the renderer's light frame decoder width (0: the autoencoder's)"}
    )
    frame_decoder_steps: int = 8000
    frame_decoder_batch: int = 16
    frame_decoder_lr: float = 2e-3
    frame_decoder_movies: int = field(default=800, metadata={"help": "fresh training movies (24 frames)"})
    seed: int = 0
    checkpoint_every: int = 250


def _blur_latents(x: torch.Tensor, factor: int) -> torch.Tensor:
    b, f, c, h, w = x.shape
    y = F.avg_pool2d(x.reshape(b * f, c, h, w), factor)
    return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False).reshape(b, f, c, h, w)


def degrade_conditions(batch: dict, gen: torch.Generator) -> dict:
    """Ground-truth conditions made to look decoded: blurred, noisy, sometimes missing."""
    lat = batch["latents"]
    b = lat.shape[0]

    def noise(shape, scale):
        return torch.randn(shape, generator=gen) * scale

    blurry = _blur_latents(lat, 4)
    blurry = blurry.mean(1, keepdim=True) * 0.3 + blurry * 0.7  # decoded videos move less
    blurry = blurry * (0.6 + 0.4 * torch.rand(b, 1, 1, 1, 1, generator=gen)) + noise(lat.shape, 0.4)
    mask = (batch["masks"] + noise(batch["masks"].shape, 0.2)).clamp(0, 1)
    key = _blur_latents(lat[:, lat.shape[1] // 2 : lat.shape[1] // 2 + 1], 2)[:, 0] + noise(
        lat[:, 0].shape, 0.3
    )
    sem = F.normalize(batch["image_emb"] + noise(batch["image_emb"].shape, 0.06), dim=-1)
    txt = F.normalize(batch["text_emb"] + noise(batch["text_emb"].shape, 0.06), dim=-1)
    concepts = (0.7 * batch["concepts"] + 0.3 * torch.rand(batch["concepts"].shape, generator=gen)).clamp(
        0, 1
    )
    drop = torch.rand(b, 3, generator=gen) < 0.1  # sometimes a condition is missing entirely
    sem = sem * (~drop[:, :1])
    txt = txt * (~drop[:, 1:2])
    blurry = blurry * (~drop[:, 2:3]).view(b, 1, 1, 1, 1)
    return {
        "blurry": blurry,
        "mask": mask,
        "keyframe": key,
        "semantic": sem,
        "text": txt,
        "concepts": concepts,
    }


def _cond_tensors(model: VideoDenoiser, c: dict) -> tuple[torch.Tensor, torch.Tensor]:
    channels, tok = condition_inputs(
        c["blurry"], c["mask"], c["keyframe"], c["semantic"], c["text"], c["concepts"], model.cfg.frames
    )
    return channels, model.tokens(**tok)


def _batch(targets: Targets, index: np.ndarray) -> dict:
    return {
        "latents": torch.from_numpy(targets.latents[index].astype(np.float32)),
        "masks": torch.from_numpy(targets.masks[index].astype(np.float32)),
        "image_emb": torch.from_numpy(targets.image_emb[index]),
        "text_emb": torch.from_numpy(targets.text_emb[index]),
        "concepts": torch.from_numpy(targets.concepts[index].astype(np.float32)),
    }


def _flow_loss(model: VideoDenoiser, x0: torch.Tensor, cond: dict, gen: torch.Generator) -> torch.Tensor:
    b = x0.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=gen))  # logit-normal times, as SD3
    eps = torch.randn(x0.shape, generator=gen)
    tt = t.view(b, 1, 1, 1, 1)
    xt = (1 - tt) * x0 + tt * eps
    channels, tokens = _cond_tensors(model, cond)
    return F.mse_loss(model(xt, t, channels, tokens), eps - x0)


def _trainer(
    model, loss_fn, make_batch, cfg: RendererConfig, steps: int, ckpt: Path | None, desc: str, progress: bool
):
    from rtdecode.train.loop import TrainConfig, Trainer

    tc = TrainConfig(
        steps=steps,
        lr=cfg.lr,
        warmup=min(100, steps // 10),
        seed=cfg.seed,
        checkpoint_dir=ckpt,
        checkpoint_every=cfg.checkpoint_every,
        progress=progress,
        desc=desc,
    )
    return Trainer(model, loss_fn, make_batch, tc).fit()


def train_teacher(
    targets: Targets,
    train_index: np.ndarray,
    cfg: RendererConfig,
    checkpoints: Path | None,
    progress: bool = True,
) -> tuple[VideoDenoiser, list]:
    """Train the teacher on training clips with degraded ground-truth conditions."""
    torch.manual_seed(cfg.seed)
    model = VideoDenoiser(
        DenoiserConfig(
            channels=tuple(cfg.channels),
            embed_dim=targets.image_emb.shape[1],
            n_concepts=targets.concepts.shape[1],
            frames=targets.latents.shape[1],
        )
    )

    def make_batch(step: int, rng: np.random.Generator) -> dict:
        batch = _batch(targets, rng.choice(train_index, cfg.batch))
        batch["seed"] = int(rng.integers(1 << 31))
        return batch

    def loss_fn(m, batch):
        gen = torch.Generator().manual_seed(batch["seed"])
        return _flow_loss(m, batch["latents"], degrade_conditions(batch, gen), gen)

    result = _trainer(
        model,
        loss_fn,
        make_batch,
        cfg,
        cfg.teacher_steps,
        checkpoints and checkpoints / "teacher",
        "renderer teacher",
        progress,
    )
    return model, result.history


@torch.no_grad()
def reflow_pairs(
    teacher: VideoDenoiser, targets: Targets, index: np.ndarray, cfg: RendererConfig, progress: bool = True
) -> dict:
    """(start, teacher end) latents and conditions for the student, from the SDEdit start."""
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(cfg.seed + 7)
    rng = np.random.default_rng(cfg.seed + 7)
    pick = rng.choice(index, cfg.reflow_pairs, replace=len(index) < cfg.reflow_pairs)
    out: dict[str, list] = {"start": [], "end": [], "cond": []}
    teacher.eval()
    for i in tqdm(range(0, len(pick), 16), desc="reflow pairs", disable=not progress):
        batch = _batch(targets, pick[i : i + 16])
        cond = degrade_conditions(batch, gen)
        channels, tokens = _cond_tensors(teacher, cond)
        eps = torch.randn(batch["latents"].shape, generator=gen)
        start = (1 - cfg.strength) * cond["blurry"] + cfg.strength * eps
        end = sample_flow(teacher, start, channels, tokens, cfg.teacher_sample_steps, cfg.strength)
        out["start"].append(start)
        out["end"].append(end)
        out["cond"].append(cond)
    cond = {k: torch.cat([c[k] for c in out["cond"]]) for k in out["cond"][0]}
    return {"start": torch.cat(out["start"]), "end": torch.cat(out["end"]), "cond": cond}


def distill_student(
    teacher: VideoDenoiser, pairs: dict, cfg: RendererConfig, checkpoints: Path | None, progress: bool = True
) -> tuple[VideoDenoiser, list]:
    """Reflow: the student learns the straight path from each start to the teacher's end."""
    student = VideoDenoiser.from_config(teacher.config)
    student.load_state_dict(teacher.state_dict())
    n = len(pairs["start"])
    s = cfg.strength

    def make_batch(step: int, rng: np.random.Generator) -> dict:
        idx = torch.from_numpy(rng.integers(0, n, cfg.batch))
        return {"idx": idx, "t": torch.from_numpy(rng.random(cfg.batch).astype(np.float32)) * s}

    def loss_fn(m, batch):
        idx, t = batch["idx"], batch["t"]
        x_s, x0 = pairs["start"][idx], pairs["end"][idx]
        tt = t.view(-1, 1, 1, 1, 1)
        xt = x0 + (tt / s) * (x_s - x0)
        cond = {k: v[idx] for k, v in pairs["cond"].items()}
        channels, tokens = _cond_tensors(m, cond)
        return F.mse_loss(m(xt, t, channels, tokens), (x_s - x0) / s)

    result = _trainer(
        student,
        loss_fn,
        make_batch,
        cfg,
        cfg.student_steps,
        checkpoints and checkpoints / "student",
        "renderer student",
        progress,
    )
    return student, result.history


def train_frame_decoder(
    ae, cfg: RendererConfig, checkpoints: Path | None, progress: bool = True
) -> tuple[Any, dict, list]:
    """Distil a light frame decoder (``cfg.frame_decoder_channels`` wide) from ``ae``.

    Trained on the frozen encoder's latents (posterior mode) of fresh stimulus movies, MSE to
    the frames; scored on held-out movies against ``ae``'s own decoder.

    Returns
    -------
    autoencoder, spec, history
        ``ae`` with the light decoder (:func:`~rtdecode.models.autoencoder.with_decoder`), the
        ``frame_decoder`` entry of ``renderer.json`` (config and measurements) and the losses.
    """
    from rtdecode.models import count_gflop
    from rtdecode.models.autoencoder import frames_to_tensor, psnr, with_decoder
    from rtdecode.train.encoders import EncodersConfig, _spread, make_pool

    seeds = EncodersConfig()
    pool = make_pool(seeds.train_seed, cfg.frame_decoder_movies, 24, progress, "frame-decoder movies", 2)
    frames = pool.flat_frames()
    config = {"decoder_channels": [cfg.frame_decoder_channels], "decoder_mid_attention": False}
    light = with_decoder(ae.eval(), config)
    for name, p in light.named_parameters():
        p.requires_grad_(name.startswith(DECODER_PARTS))

    def make_batch(step: int, rng: np.random.Generator) -> torch.Tensor:
        pick = rng.choice(len(frames), cfg.frame_decoder_batch, replace=False)
        return frames_to_tensor(frames[np.sort(pick)])

    def loss_fn(m, x):
        with torch.no_grad():
            z = m.posterior(x).mode()
        return F.mse_loss(m.decode_raw(z), x * 2 - 1)

    result = _trainer(
        light,
        loss_fn,
        make_batch,
        replace(cfg, lr=cfg.frame_decoder_lr),
        cfg.frame_decoder_steps,
        checkpoints and checkpoints / "frame-decoder",
        "renderer frame decoder",
        progress,
    )
    light.eval()
    held_out = max(1, cfg.frame_decoder_movies // 8)
    test = make_pool(seeds.test_seed, held_out, 24, progress, "held-out movies", 2).flat_frames()
    test = test[_spread(len(test), 1024)]
    with torch.no_grad():
        z = ae.encode(test)
        clip = torch.zeros(16, *ae.latent_shape)  # one 16-frame clip's latents
        truth = frames_to_tensor(test)
        metrics = {
            "psnr": float(psnr(truth, light.decode(z)).mean()),
            "psnr_autoencoder": float(psnr(truth, ae.decode(z)).mean()),
            "gflop_per_clip": count_gflop(lambda: light.decode(clip)),
            "gflop_per_clip_autoencoder": count_gflop(lambda: ae.decode(clip)),
            "steps": cfg.frame_decoder_steps,
        }
    log.info("frame decoder: %.2f dB (autoencoder %.2f dB)", metrics["psnr"], metrics["psnr_autoencoder"])
    return light, {"config": config, "metrics": metrics}, result.history


def frame_decoder_tensors(light) -> dict[str, np.ndarray]:
    """The decoder side of a light autoencoder, as stored in ``renderer.safetensors``."""
    from rtdecode.models import module_tensors

    own = module_tensors(light)
    return {f"frame_decoder.{k}": v for k, v in own.items() if k.startswith(DECODER_PARTS)}


@dataclass(frozen=True)
class RendererTrainConfig:
    """Settings of ``rtdecode train renderer`` (trains on the stimuli of a dataset's training split)."""

    dataset: Path = field(default=Path("data/cc2017"), metadata={"help": "dataset (its training stimuli)"})
    encoders: Path = field(default=Path("engines/default"), metadata={"help": "directory with encoders.*"})
    out: Path = field(
        default=Path("engines/default"), metadata={"help": "writes renderer.safetensors/json here"}
    )
    threads: int = 2
    renderer: RendererConfig = field(default_factory=RendererConfig)


def train_renderer_cli(cfg: RendererTrainConfig, progress: bool = True) -> dict:
    """Teacher, reflow pairs, student and frame decoder; writes ``renderer.safetensors`` +
    ``renderer.json``."""
    from rtdecode.models import module_tensors
    from rtdecode.models.text import WordTokenizer
    from rtdecode.train.encoders import encoders_digest, read_encoders
    from rtdecode.train.targets import compute_targets
    from scanner_sim import stimuli
    from scanner_sim.dataset import Dataset

    torch.set_num_threads(cfg.threads)
    models = read_encoders(cfg.encoders)
    targets = compute_targets(
        cfg.dataset,
        models,
        encoders_digest(cfg.encoders),
        WordTokenizer(stimuli.caption_vocabulary()),
        24,
        progress,
    )
    with Dataset(cfg.dataset) as ds:
        t = ds.config.segment_trs
        train_index = np.concatenate([seg * t + np.arange(t) for seg in range(ds.config.train_segments)])
    ckpt = Path(cfg.out) / "checkpoints" / "renderer"
    rc = cfg.renderer
    teacher, t_hist = train_teacher(targets, train_index, rc, ckpt, progress)
    pairs = reflow_pairs(teacher, targets, train_index, rc, progress)
    student, s_hist = distill_student(teacher, pairs, rc, ckpt, progress)
    tensors = {
        **module_tensors(teacher, "teacher.", dtype=np.float16),
        **module_tensors(student, "student.", dtype=np.float16),
    }
    doc = {
        "config": teacher.config,
        "strength": rc.strength,
        "student_steps": rc.student_sample_steps,
        "teacher_steps": rc.teacher_sample_steps,
        "training": {
            "teacher_final_loss": float(np.mean([h["loss"] for h in t_hist[-50:]])),
            "student_final_loss": float(np.mean([h["loss"] for h in s_hist[-50:]])),
            "teacher_steps": rc.teacher_steps,
            "student_steps": rc.student_steps,
            "reflow_pairs": rc.reflow_pairs,
            "train_trs": len(train_index),
        },
    }
    if rc.frame_decoder_channels:
        light, doc["frame_decoder"], _ = train_frame_decoder(models["ae"], rc, ckpt, progress)
        tensors.update(frame_decoder_tensors(light))
    write_renderer(Path(cfg.out), tensors, doc)
    return doc


def write_renderer(out: Path, tensors: dict[str, np.ndarray], doc: dict) -> None:
    """Write ``renderer.safetensors`` + ``renderer.json``; in a bundle directory also its manifest's
    ``renderer`` entry and checksums (the bundle stays loadable)."""
    import json

    from safetensors.numpy import save_file

    from rtdecode.bundle import refresh_manifest

    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "renderer.safetensors"))
    (out / "renderer.json").write_text(json.dumps(doc, indent=1))
    if (out / "manifest.json").exists():
        refresh_manifest(out, {"renderer": doc})


@dataclass(frozen=True)
class FrameDecoderTrainConfig:
    """Settings of ``rtdecode train frame-decoder`` (adds the light frame decoder to a trained
    renderer, keeping its teacher and student)."""

    out: Path = field(
        default=Path("engines/default"), metadata={"help": "directory with renderer.* and encoders.*"}
    )
    threads: int = 2
    renderer: RendererConfig = field(default_factory=RendererConfig)


def train_frame_decoder_cli(cfg: FrameDecoderTrainConfig, progress: bool = True) -> dict:
    """``rtdecode train frame-decoder``: train the light frame decoder into ``cfg.out``'s renderer."""
    import json

    from safetensors.numpy import load_file

    from rtdecode.train.encoders import read_encoders

    out = Path(cfg.out)
    if not (out / "renderer.json").exists():
        raise FileNotFoundError(f"{out} has no renderer.json: run `rtdecode train renderer` first")
    torch.set_num_threads(cfg.threads)
    doc = json.loads((out / "renderer.json").read_text())
    old = load_file(str(out / "renderer.safetensors"))
    tensors = {k: v for k, v in old.items() if not k.startswith("frame_decoder.")}
    ae = read_encoders(out)["ae"]
    light, doc["frame_decoder"], _ = train_frame_decoder(
        ae, cfg.renderer, out / "checkpoints" / "renderer", progress
    )
    tensors.update(frame_decoder_tensors(light))
    write_renderer(out, tensors, doc)
    return doc["frame_decoder"]
