"""Train the stimulus-side encoders and the evaluation models (no fMRI involved).

Models (prefix in ``encoders.safetensors``):

``ae.``          :class:`~rtdecode.models.autoencoder.FrameAutoencoder` (decoder target space)
``clip.``        :class:`~rtdecode.models.worldclip.WorldCLIP` (semantic target space)
``eval_frame.``  :class:`~rtdecode.models.evaluation.FrameClassifier` (scoring only)
``eval_video.``  :class:`~rtdecode.models.evaluation.VideoClassifier` (scoring only)
``eval_embed.``  :class:`~rtdecode.models.evaluation.EvalEmbedding` (scoring only; CLIP-pcc)

Data
    The world is procedural, so every model trains on *fresh* movies that no dataset uses:
    movie ``i`` of the training pool is ``generate_movie(movie_frames, train_seed + i)`` and
    of the held-out pool ``generate_movie(movie_frames, test_seed + i)`` (defaults 10 000 000
    and 20 000 000; datasets derive their seeds from small integers through SeedSequence).
    Movies are short (24 frames: one or two scenes) and many (5000), because the diversity
    that matters is the number of scenes (object, colour, background, motion), not of frames:
    with 96 long movies (~1500 scenes) the frame classifier memorised the training scenes
    (90 % train, 11 % held-out accuracy). Rendering runs in ``workers`` spawned processes (a
    script calling :func:`train_encoders` with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard). All five models draw from the same training pool
    with their own seeds (model initialisation and data order); the held-out pool is never
    trained on.
Batches
    Autoencoder and frame classifier: random frames (the classifiers' with a random RGB
    channel order, :func:`permute_colours`). Contrastive models: ``batch`` distinct
    captions, one random frame of each (no false negatives). Video classifier: random windows
    of ``clip_frames`` consecutive frames (across scene cuts, as TR windows are), labelled with
    the key concept of the middle frame; its per-frame trunk starts from the trained frame
    classifier and stays frozen (trained after it), only its temporal layers learn.
Outputs
    ``<out>/encoders.safetensors`` (float32 unless ``storage=float16``) and
    ``<out>/encoders.json``: per model its class, config and parameter count, the held-out
    metrics, the training settings and times. Checkpoints (resumable) go to
    ``<out>/checkpoints/<model>/``; they are not part of a bundle.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn
from tqdm import tqdm

from rtdecode.bundle import sha256_file
from rtdecode.config import config_to_dict
from rtdecode.models import count_parameters, load_module, module_tensors
from rtdecode.models.autoencoder import FrameAutoencoder, frames_to_tensor, psnr
from rtdecode.models.evaluation import EvalEmbedding, FrameClassifier, VideoClassifier
from rtdecode.models.worldclip import WorldCLIP, contrastive_loss, normalise_frames
from rtdecode.train.loop import TrainConfig, Trainer, dist_info, seed_everything

__all__ = [
    "MODEL_CLASSES",
    "EncodersConfig",
    "FramePool",
    "Schedule",
    "encoders_digest",
    "load_encoders",
    "make_pool",
    "read_encoders",
    "train_encoders",
]

log = logging.getLogger("rtdecode.train.encoders")

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "ae": FrameAutoencoder,
    "clip": WorldCLIP,
    "eval_frame": FrameClassifier,
    "eval_video": VideoClassifier,
    "eval_embed": EvalEmbedding,
}
ENCODERS_FORMAT = 1


@dataclass(frozen=True)
class Schedule:
    """Training settings of one model."""

    steps: int = 1000
    batch: int = 32
    lr: float = 1e-3
    seed: int = 0
    weight_decay: float = 0.0
    warmup: int = 50


@dataclass(frozen=True)
class EncodersConfig:
    """Settings of ``rtdecode train encoders`` (defaults fit a 2-core CPU in ~35 min)."""

    out: Path = field(default=Path("engines/default"), metadata={"help": "directory for encoders.*"})
    models: tuple[str, ...] = field(default=tuple(MODEL_CLASSES), metadata={"help": "models to train"})
    train_seed: int = field(default=10_000_000, metadata={"help": "seed of the first training movie"})
    test_seed: int = field(default=20_000_000, metadata={"help": "seed of the first held-out movie"})
    train_movies: int = field(
        default=5000, metadata={"help": "movies (1-2 scenes each) in the training pool"}
    )
    test_movies: int = field(default=400, metadata={"help": "movies in the held-out pool"})
    movie_frames: int = field(default=24, metadata={"help": "frames per movie (>= clip_frames)"})
    workers: int = field(default=2, metadata={"help": "processes rendering the movies"})
    eval_frames: int = 4096
    clip_frames: int = field(default=16, metadata={"help": "frames per clip of the video classifier"})
    augment: bool = field(default=True, metadata={"help": "random channel order for the classifiers"})
    ae: Schedule = field(default_factory=lambda: Schedule(steps=3000, batch=16, lr=2e-3, seed=1))
    ae_kl_weight: float = field(default=1e-6, metadata={"help": "weight of the summed KL per frame"})
    ae_sample: bool = field(default=False, metadata={"help": "train on posterior samples (else the mode)"})
    clip: Schedule = field(
        default_factory=lambda: Schedule(steps=1200, batch=128, lr=2e-3, seed=2, weight_decay=0.05)
    )
    eval_frame: Schedule = field(
        default_factory=lambda: Schedule(steps=3000, batch=64, lr=2e-3, seed=1001, weight_decay=0.01)
    )
    eval_video: Schedule = field(
        default_factory=lambda: Schedule(steps=600, batch=16, lr=1e-3, seed=1002, weight_decay=0.01)
    )
    eval_embed: Schedule = field(
        default_factory=lambda: Schedule(
            steps=800, batch=128, lr=1e-3, seed=1003, weight_decay=0.05, warmup=100
        )
    )
    model_configs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "per-model config overrides (JSON/TOML tables)"}
    )
    checkpoint_every: int = 200
    val_every: int = field(default=500, metadata={"help": "steps between validations (0: at the end)"})
    storage: Literal["float32", "float16"] = "float32"
    threads: int = 2
    progress: bool = True


# ----------------------------------------------------------------------------- data


@dataclass
class FramePool:
    """Frames and labels of a set of movies of equal length.

    Attributes
    ----------
    frames
        ``(M, L, H, W, 3)`` uint8.
    key_concept
        ``(M, L)`` int64.
    caption_id
        ``(M, L)`` int64 index into ``captions`` (deduplicated across movies).
    captions
        Distinct caption texts.
    seeds
        The movie seeds.
    """

    frames: np.ndarray
    key_concept: np.ndarray
    caption_id: np.ndarray
    captions: list[str]
    seeds: list[int]

    def __post_init__(self) -> None:
        flat = self.caption_id.reshape(-1)
        self._order = np.argsort(flat, kind="stable")
        self._count = np.bincount(flat, minlength=len(self.captions))
        self._start = np.concatenate([[0], np.cumsum(self._count)[:-1]])

    @property
    def n_frames(self) -> int:
        """Total number of frames."""
        return int(self.frames.shape[0] * self.frames.shape[1])

    def flat_frames(self) -> np.ndarray:
        """``(M·L, H, W, 3)`` view."""
        return self.frames.reshape(-1, *self.frames.shape[2:])

    def random_frames(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Flat indices of ``n`` random frames."""
        return rng.integers(0, self.n_frames, n)

    def distinct_caption_frames(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` distinct captions and one random frame of each: (flat frame indices, caption ids)."""
        present = np.flatnonzero(self._count)
        ids = rng.choice(present, size=min(n, len(present)), replace=False)
        pick = self._start[ids] + (rng.random(len(ids)) * self._count[ids]).astype(np.int64)
        return self._order[pick], ids

    def random_clips(self, rng: np.random.Generator, n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random windows of ``length`` frames: (movie, start) index arrays."""
        movies = rng.integers(0, self.frames.shape[0], n)
        starts = rng.integers(0, self.frames.shape[1] - length + 1, n)
        return movies, starts

    def clips(self, movies: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
        """``(n, length, H, W, 3)`` frames of the windows."""
        return np.stack([self.frames[m, s : s + length] for m, s in zip(movies, starts)])


def _render(
    seeds: list[int], movie_frames: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]]:
    from scanner_sim.stimuli import generate_movie

    out = []
    for seed in seeds:
        m = generate_movie(movie_frames, seed)
        out.append((m.frames, m.key_concept.astype(np.int64), m.caption_id.astype(np.int64), m.captions))
    return out


def _render_all(seeds: list[int], movie_frames: int, workers: int, progress: bool, desc: str):
    """Yield the rendered movies in seed order (in ``workers`` spawned processes if > 1)."""
    chunk = 32
    parts = [seeds[i : i + chunk] for i in range(0, len(seeds), chunk)]
    bar = tqdm(total=len(seeds), desc=desc, unit="movie", disable=not progress)
    try:
        if workers <= 1 or len(parts) <= 1:
            for part in parts:
                yield from _render(part, movie_frames)
                bar.update(len(part))
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            for part, rendered in zip(parts, ex.map(_render, parts, [movie_frames] * len(parts))):
                yield from rendered
                bar.update(len(part))
    finally:
        bar.close()


def make_pool(
    first_seed: int,
    n_movies: int,
    movie_frames: int,
    progress: bool = False,
    desc: str = "movies",
    workers: int = 1,
) -> FramePool:
    """Render ``n_movies`` movies with seeds ``first_seed + i`` into a :class:`FramePool`.

    ``workers > 1`` renders in that many spawned processes (same result).
    """
    seeds = [first_seed + i for i in range(n_movies)]
    frames = None
    keys = np.zeros((n_movies, movie_frames), np.int64)
    cids = np.zeros((n_movies, movie_frames), np.int64)
    index: dict[str, int] = {}
    for i, (f, key, cid, captions) in enumerate(_render_all(seeds, movie_frames, workers, progress, desc)):
        if frames is None:
            frames = np.empty((n_movies, *f.shape), np.uint8)
        frames[i] = f
        keys[i] = key
        remap = np.array([index.setdefault(c, len(index)) for c in captions], dtype=np.int64)
        cids[i] = remap[cid]
    assert frames is not None
    return FramePool(frames, keys, cids, list(index), seeds)


# ----------------------------------------------------------------------------- per-model recipes


@dataclass
class Recipe:
    """How one model is trained and scored."""

    make_batch: Callable[[int, np.random.Generator], Any]
    loss_fn: Callable[[nn.Module, Any], Any]
    evaluate: Callable[[nn.Module, FramePool, int], dict[str, float]]


def _ae_recipe(pool: FramePool, cfg: EncodersConfig) -> Recipe:
    frames = pool.flat_frames()

    def make_batch(step: int, rng: np.random.Generator) -> torch.Tensor:
        return frames_to_tensor(frames[np.sort(pool.random_frames(rng, cfg.ae.batch))])

    def loss_fn(model: nn.Module, x: torch.Tensor):
        recon, kl = model(x, sample=cfg.ae_sample)
        mse = torch.nn.functional.mse_loss(recon, x * 2 - 1)
        return mse + cfg.ae_kl_weight * kl.mean(), {"mse": mse.detach(), "kl": kl.detach().mean()}

    return Recipe(make_batch, loss_fn, evaluate_ae)


def _contrastive_recipe(pool: FramePool, schedule: Schedule) -> Recipe:
    frames = pool.flat_frames()

    def make_batch(step: int, rng: np.random.Generator) -> dict[str, Any]:
        idx, ids = pool.distinct_caption_frames(rng, schedule.batch)
        return {
            "images": normalise_frames(frames[idx]),
            "captions": [pool.captions[i] for i in ids],
            "labels": torch.from_numpy(ids),
        }

    def loss_fn(model: nn.Module, batch: dict[str, Any]):
        bare = getattr(model, "module", model)
        image, text, scale = model(batch["images"], bare.tokenize(batch["captions"]))
        return contrastive_loss(image, text, scale, batch["labels"])

    return Recipe(make_batch, loss_fn, evaluate_retrieval)


_PERMUTATIONS = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


def permute_colours(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Augmentation of the concept classifiers: a random RGB channel order per sample.

    ``frames`` is ``(N, ..., 3)``; all frames of one sample (a clip) share the permutation. The
    key concept does not depend on colour, so this keeps the classifiers from learning
    colour/background shortcuts of the training scenes.
    """
    perm = _PERMUTATIONS[rng.integers(0, len(_PERMUTATIONS), len(frames))]
    index = perm.reshape(len(frames), *([1] * (frames.ndim - 2)), 3)
    return np.take_along_axis(frames, np.broadcast_to(index, frames.shape), axis=-1)


def _frame_recipe(pool: FramePool, schedule: Schedule, augment: bool) -> Recipe:
    frames, labels = pool.flat_frames(), pool.key_concept.reshape(-1)

    def make_batch(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.sort(pool.random_frames(rng, schedule.batch))
        x = permute_colours(frames[idx], rng) if augment else frames[idx]
        return normalise_frames(x), torch.from_numpy(labels[idx])

    return Recipe(make_batch, _classification_loss, evaluate_frame_classifier)


def _video_recipe(pool: FramePool, schedule: Schedule, length: int, augment: bool) -> Recipe:
    from rtdecode.models.evaluation import clip_to_tensor

    def make_batch(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        movies, starts = pool.random_clips(rng, schedule.batch, length)
        label = pool.key_concept[movies, starts + length // 2]
        clips = pool.clips(movies, starts, length)
        clips = permute_colours(clips, rng) if augment else clips
        return clip_to_tensor(clips), torch.from_numpy(label)

    def evaluate(model: nn.Module, test: FramePool, limit: int) -> dict[str, float]:
        return evaluate_video_classifier(model, test, limit, length)

    return Recipe(make_batch, _classification_loss, evaluate)


def _classification_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    x, y = batch
    logits = model(x)
    acc = (logits.argmax(1) == y).float().mean()
    return torch.nn.functional.cross_entropy(logits, y), {"acc": acc}


# ----------------------------------------------------------------------------- held-out metrics


def _spread(n_total: int, limit: int) -> np.ndarray:
    """Up to ``limit`` evenly spaced indices of ``range(n_total)``."""
    return np.unique(np.linspace(0, n_total - 1, min(limit, n_total)).round().astype(np.int64))


@torch.no_grad()
def evaluate_ae(model: nn.Module, test: FramePool, limit: int) -> dict[str, float]:
    """PSNR (dB) of encode → decode on held-out frames (mean and 10th percentile) and latent stats."""
    frames = test.flat_frames()[_spread(test.n_frames, limit)]
    z = model.encode(frames)
    values = psnr(frames_to_tensor(frames), model.decode(z))
    return {
        "psnr": float(values.mean()),
        "psnr_p10": float(values.quantile(0.1)),
        "latent_mean": float(z.mean()),
        "latent_std": float(z.std()),
        "n_frames": float(len(frames)),
    }


@torch.no_grad()
def evaluate_retrieval(model: nn.Module, test: FramePool, limit: int) -> dict[str, float]:
    """Image→text retrieval among all distinct held-out captions: top-1, top-5 and chance."""
    idx = _spread(test.n_frames, limit)
    truth = torch.from_numpy(test.caption_id.reshape(-1)[idx])
    image = model.encode_image(test.flat_frames()[idx])
    text = model.encode_text(test.captions)
    rank = (image @ text.t()).argsort(1, descending=True)
    hit = rank == truth[:, None]
    return {
        "top1": float(hit[:, :1].any(1).float().mean()),
        "top5": float(hit[:, :5].any(1).float().mean()),
        "chance_top1": 1.0 / len(test.captions),
        "n_captions": float(len(test.captions)),
        "n_frames": float(len(idx)),
    }


@torch.no_grad()
def evaluate_frame_classifier(model: nn.Module, test: FramePool, limit: int) -> dict[str, float]:
    """Top-1 / top-5 key-concept accuracy on held-out frames (chance 1/64)."""
    idx = _spread(test.n_frames, limit)
    probs = model.predict_proba(test.flat_frames()[idx])
    return _accuracies(probs, torch.from_numpy(test.key_concept.reshape(-1)[idx]))


@torch.no_grad()
def evaluate_video_classifier(model: nn.Module, test: FramePool, limit: int, length: int) -> dict[str, float]:
    """Top-1 / top-5 key-concept accuracy (middle frame's concept) on non-overlapping held-out clips."""
    per_movie = test.frames.shape[1] // length
    movies = np.repeat(np.arange(test.frames.shape[0]), per_movie)
    starts = np.tile(np.arange(per_movie) * length, test.frames.shape[0])
    keep = _spread(len(movies), max(1, limit // length))
    movies, starts = movies[keep], starts[keep]
    probs = torch.cat(
        [
            model.predict_proba(test.clips(movies[i : i + 64], starts[i : i + 64], length))
            for i in range(0, len(movies), 64)
        ]
    )
    return _accuracies(probs, torch.from_numpy(test.key_concept[movies, starts + length // 2]))


def _accuracies(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    top = probs.topk(5, dim=1).indices
    return {
        "top1": float((top[:, 0] == labels).float().mean()),
        "top5": float((top == labels[:, None]).any(1).float().mean()),
        "chance_top1": 1.0 / probs.shape[1],
        "n": float(len(labels)),
    }


# ----------------------------------------------------------------------------- training


def _recipe(name: str, pool: FramePool, cfg: EncodersConfig) -> Recipe:
    schedule: Schedule = getattr(cfg, name)
    if name == "ae":
        return _ae_recipe(pool, cfg)
    if name in ("clip", "eval_embed"):
        return _contrastive_recipe(pool, schedule)
    if name == "eval_frame":
        return _frame_recipe(pool, schedule, cfg.augment)
    if name == "eval_video":
        return _video_recipe(pool, schedule, cfg.clip_frames, cfg.augment)
    raise ValueError(f"unknown model {name!r} (known: {', '.join(MODEL_CLASSES)})")


def _model_config(name: str, cfg: EncodersConfig) -> dict[str, Any]:
    configs = cfg.model_configs
    if isinstance(configs, str):  # from the command line: a JSON object
        configs = json.loads(configs)
    override = dict(configs.get(name, {}))
    if name == "eval_video":
        override.setdefault("frames", cfg.clip_frames)
    return override


def _build(name: str, cfg: EncodersConfig, trained: Mapping[str, nn.Module]) -> nn.Module:
    """A fresh model; the video classifier's trunk starts from a trained frame classifier if any."""
    config = _model_config(name, cfg)
    frame = trained.get("eval_frame")
    if name != "eval_video" or frame is None:
        return MODEL_CLASSES[name].from_config(config)  # type: ignore[attr-defined]
    config.update(trunk=frame.config["stages"], freeze_trunk=True)
    model = VideoClassifier.from_config(config)
    model.trunk.load_state_dict(frame.features.state_dict())
    return model


def train_model(
    name: str,
    pool: FramePool,
    test: FramePool,
    cfg: EncodersConfig,
    trained: Mapping[str, nn.Module] | None = None,
) -> tuple[nn.Module, dict]:
    """Train (or resume) one model; returns it (eval mode) and its report (metrics, times, size).

    ``trained`` holds models finished earlier (the video classifier builds on ``eval_frame``).
    """
    schedule: Schedule = getattr(cfg, name)
    seed_everything(schedule.seed)
    model = _build(name, cfg, trained or {})
    recipe = _recipe(name, pool, cfg)
    val_limit = min(512, cfg.eval_frames)
    tcfg = TrainConfig(
        steps=schedule.steps,
        lr=schedule.lr,
        weight_decay=schedule.weight_decay,
        warmup=schedule.warmup,
        seed=schedule.seed,
        checkpoint_dir=Path(cfg.out) / "checkpoints" / name,
        checkpoint_every=cfg.checkpoint_every,
        val_every=cfg.val_every,
        threads=max(1, cfg.threads // dist_info().local_world_size),
        progress=cfg.progress,
        desc=name,
    )
    trainer = Trainer(
        model,
        recipe.loss_fn,
        recipe.make_batch,
        tcfg,
        validate=lambda m, step: recipe.evaluate(m, test, val_limit),
    )
    result = trainer.fit()
    model.eval()
    t0 = time.perf_counter()
    extra = {}
    if name == "ae":
        fit_frames = pool.flat_frames()[_spread(pool.n_frames, cfg.eval_frames)]
        extra = model.fit_scale(fit_frames)
    metrics = recipe.evaluate(model, test, cfg.eval_frames)
    report = {
        "metrics": {**metrics, **extra},
        "train_seconds": round(result.train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - t0, 1),
        "steps": result.step,
        "final_loss": float(np.mean([h["loss"] for h in result.history[-50:]])) if result.history else None,
        "validation": result.validation,
        "parameters": count_parameters(model),
    }
    log.info("%s: %s", name, report["metrics"])
    return model, report


def _save(out: Path, models: Mapping[str, nn.Module], document: dict[str, Any], storage: str) -> None:
    dtype = np.float16 if storage == "float16" else None
    tensors: dict[str, np.ndarray] = {}
    for name, model in models.items():
        tensors.update(module_tensors(model, f"{name}.", dtype=dtype))
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "encoders.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": str(ENCODERS_FORMAT)})
    tmp.replace(out / "encoders.safetensors")
    document["weights"] = {
        "file": "encoders.safetensors",
        "sha256": sha256_file(out / "encoders.safetensors"),
        "storage": storage,
        "bytes": (out / "encoders.safetensors").stat().st_size,
    }
    tmpj = out / "encoders.json.tmp"
    tmpj.write_text(json.dumps(document, indent=1))
    tmpj.replace(out / "encoders.json")


def train_encoders(cfg: EncodersConfig) -> dict[str, Any]:
    """Train the configured models, evaluate them on held-out movies and write ``encoders.*``.

    Resumable: an interrupted run continues from ``<out>/checkpoints/<model>/`` (finished
    models are only re-evaluated). Models not in ``cfg.models`` but present in an existing
    ``encoders.safetensors`` are kept. Under ``torchrun`` every model trains data-parallel
    (the cores are split between the local processes) and only rank 0 writes files.

    Returns
    -------
    dict
        The content written to ``encoders.json``.
    """
    info = dist_info()
    threads = max(1, cfg.threads // info.local_world_size)
    torch.set_num_threads(threads)
    out = Path(cfg.out)
    t0 = time.perf_counter()
    pool = make_pool(
        cfg.train_seed, cfg.train_movies, cfg.movie_frames, cfg.progress, "training movies", cfg.workers
    )
    test = make_pool(
        cfg.test_seed, cfg.test_movies, cfg.movie_frames, cfg.progress, "held-out movies", cfg.workers
    )
    data_seconds = time.perf_counter() - t0
    models, document = _existing(out)
    for name in cfg.models:
        model, report = train_model(name, pool, test, cfg, models)
        models[name] = model
        document["models"][name] = {
            "class": type(model).__name__,
            "config": model.config,
            "parameters": report.pop("parameters"),
        }
        document["metrics"][name] = report.pop("metrics")
        document["training"]["models"][name] = report
    document["training"].update(
        {
            "config": config_to_dict(cfg),
            "data": {
                "train_seeds": [cfg.train_seed, cfg.train_seed + cfg.train_movies - 1],
                "test_seeds": [cfg.test_seed, cfg.test_seed + cfg.test_movies - 1],
                "movie_frames": cfg.movie_frames,
                "train_frames": pool.n_frames,
                "test_frames": test.n_frames,
                "train_captions": len(pool.captions),
                "test_captions": len(test.captions),
                "seconds": round(data_seconds, 1),
            },
            "threads": threads,
            "world_size": info.world_size,
            "torch": torch.__version__,
        }
    )
    document["total_parameters"] = sum(m["parameters"] for m in document["models"].values())
    if info.is_main:
        _save(out, models, document, cfg.storage)
    return document


def _existing(out: Path) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Models and document of an existing ``encoders.*`` (empty if there is none)."""
    empty = {"format": ENCODERS_FORMAT, "models": {}, "metrics": {}, "training": {"models": {}}}
    if not (out / "encoders.json").exists() or not (out / "encoders.safetensors").exists():
        return {}, empty
    document = json.loads((out / "encoders.json").read_text())
    models = load_encoders(load_file(str(out / "encoders.safetensors")), document)
    document.setdefault("training", {}).setdefault("models", {})
    return models, document


# ----------------------------------------------------------------------------- loading


def load_encoders(tensors: Mapping[str, np.ndarray], configs: Mapping[str, Any]) -> dict[str, nn.Module]:
    """Rebuild the models from a flat tensor dict and their configs (eval mode).

    Parameters
    ----------
    tensors
        Tensors with the ``<name>.`` prefixes (e.g. ``encoders.safetensors`` or a bundle's tensors).
    configs
        The ``encoders.json`` document, its ``models`` entry (``{name: {"class", "config"}}``),
        or ``{name: config}``.
    """
    entries = configs.get("models", configs)
    models: dict[str, nn.Module] = {}
    for name, entry in entries.items():
        config = entry["config"] if isinstance(entry, dict) and "config" in entry else entry
        cls = MODEL_CLASSES[name]
        model = cls.from_config(config)  # type: ignore[attr-defined]
        load_module(model, tensors, f"{name}.")
        models[name] = model.eval()
    return models


def read_encoders(directory: str | Path) -> dict[str, nn.Module]:
    """Load ``<directory>/encoders.safetensors`` + ``encoders.json`` (checksum verified)."""
    directory = Path(directory)
    document = json.loads((directory / "encoders.json").read_text())
    path = directory / "encoders.safetensors"
    expected = document.get("weights", {}).get("sha256")
    if expected is not None and sha256_file(path) != expected:
        raise ValueError(f"{path} does not match the checksum in encoders.json")
    return load_encoders(load_file(str(path)), document)


def encoders_digest(directory: str | Path) -> str:
    """Short hash of ``encoders.safetensors`` (for caches of encoder outputs)."""
    return sha256_file(Path(directory) / "encoders.safetensors")[:16]


def main(argv: list[str] | None = None) -> int:
    """``python -m rtdecode.train.encoders [--config FILE] [--out DIR] [--ae.steps N] ...``."""
    import argparse

    from rtdecode.config import add_config_arguments, load_config

    parser = argparse.ArgumentParser(
        prog="python -m rtdecode.train.encoders",
        description="Train the frame autoencoder, WorldCLIP and the evaluation models on fresh movies.",
    )
    add_config_arguments(parser, EncodersConfig)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    document = train_encoders(load_config(EncodersConfig, args))
    times = {k: v["train_seconds"] for k, v in document["training"]["models"].items()}
    print(json.dumps({"metrics": document["metrics"], "train_seconds": times}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
