"""The training loop every model of the project uses.

The caller supplies a ``model``, ``make_batch(step, rng) -> batch`` and
``loss_fn(model, batch) -> loss | (loss, {name: value})``; :class:`Trainer` does the rest:

Determinism
    Before step ``s`` the torch RNG is seeded from ``(seed, s, rank)`` and ``make_batch``
    receives ``numpy.random.default_rng([seed, s])`` (``[seed, s, rank]`` when ``shard=False``),
    so the data order and every random draw depend only on the seed and the step — never on
    how many times the run was interrupted.
Checkpoints
    Every ``checkpoint_every`` steps (and at the end) rank 0 writes
    ``<checkpoint_dir>/step-<step>.pt`` holding the model, the optimizer, the RNG states, the
    step and the history, with :func:`torch.save` to a temporary file then :func:`os.replace`
    (a crash never leaves a truncated checkpoint). Checkpoints hold tensors and plain Python
    containers only and are read with ``torch.load(weights_only=True)``: nothing is unpickled.
Resume
    A new :class:`Trainer` with the same ``checkpoint_dir`` continues from the newest checkpoint;
    the result equals an uninterrupted run (bitwise on the same machine and thread count).
Validation
    ``validate(model, step) -> {name: value}`` runs on rank 0 every ``val_every`` steps and at
    the end, under ``torch.no_grad()`` with the model in eval mode.
Data parallel
    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised with the gloo
    backend, the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` and
    every rank trains on its own slice of each global batch (``shard=True``: ``make_batch``
    builds the same global batch on every rank and tensors, arrays and lists are cut along
    their first axis; ``shard=False``: ``make_batch`` builds the rank's own batch). Gradients
    are averaged across ranks, logged values too; only rank 0 shows progress, validates and
    writes checkpoints. ``loss_fn`` must call the model (its ``forward``) so that DDP
    synchronises gradients. A single process needs none of this.

Example
-------
>>> import torch
>>> model = torch.nn.Linear(3, 1)
>>> def make_batch(step, rng):
...     x = torch.from_numpy(rng.standard_normal((16, 3)).astype("float32"))
...     return x, x.sum(1, keepdim=True)
>>> def loss_fn(model, batch):
...     x, y = batch
...     return torch.nn.functional.mse_loss(model(x), y)
>>> result = Trainer(model, loss_fn, make_batch, TrainConfig(steps=50, lr=0.05, progress=False)).fit()
>>> result.history[-1]["loss"] < result.history[0]["loss"]
True
"""

from __future__ import annotations

import atexit
import datetime
import gc
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

__all__ = [
    "DistInfo",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "dist_info",
    "latest_checkpoint",
    "load_checkpoint",
    "seed_everything",
    "shard_batch",
]

log = logging.getLogger("rtdecode.train.loop")

Batch = Any
LossOutput = torch.Tensor | tuple[torch.Tensor, dict[str, float | torch.Tensor]]
_CKPT = re.compile(r"step-(\d+)\.pt$")
EXIT_BARRIER_S = 30.0  # how long a rank waits at exit for its peers before tearing gloo down
_EXIT_GROUP: Any = None  # the exit barrier's group (see dist_info)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (optimisation, schedule, checkpoints, logging).

    Attributes
    ----------
    steps
        Total optimisation steps.
    lr
        Peak learning rate (AdamW unless the caller supplies an optimizer factory).
    weight_decay, betas
        AdamW settings.
    warmup
        Steps of linear warm-up from 0 to ``lr``.
    schedule
        After warm-up: ``constant`` or ``cosine`` decay to ``min_lr_ratio * lr``.
    grad_clip
        Clip the global gradient norm to this value (``None``: no clipping).
    seed
        Seeds the initial state, the data order and all random draws.
    checkpoint_dir
        Where checkpoints go (``None``: no checkpoints, no resume).
    checkpoint_every
        Steps between checkpoints (a last one is always written at the end).
    keep_checkpoints
        How many of the newest checkpoints to keep.
    val_every
        Steps between validations (0: only at the end; only if a ``validate`` callback is given).
    shard
        Data-parallel batching (see the module docstring).
    find_unused_parameters
        Passed to DDP (needed when some parameters get no gradient in a step).
    threads
        ``torch.set_num_threads`` for this process (``None``: leave it, except under torchrun
        where the cores are split between the local processes).
    progress
        Show a tqdm bar (rank 0 only).
    desc
        Label of the progress bar and the log lines.
    """

    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 0
    schedule: Literal["constant", "cosine"] = "cosine"
    min_lr_ratio: float = 0.05
    grad_clip: float | None = 1.0
    seed: int = 0
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    val_every: int = 0
    shard: bool = True
    find_unused_parameters: bool = False
    threads: int | None = None
    progress: bool = True
    desc: str = "train"


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes
    ----------
    step
        Steps done (``config.steps`` unless stopped early with ``until``).
    history
        One dict per step: ``step`` (1-based count of steps done), ``loss``, ``lr`` and the
        values ``loss_fn`` logged (averaged across ranks).
    validation
        One dict per validation: ``step`` and the callback's values.
    seconds
        Wall time of this call (not of earlier, interrupted calls).
    train_seconds
        Wall time spent in training steps over all calls (including interrupted ones), as
        recorded in the checkpoints.
    resumed_from
        The step of the checkpoint this call started from (0 for a fresh run).
    """

    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    train_seconds: float = 0.0
    resumed_from: int = 0


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, validates and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank and world size from torchrun's environment, initialising gloo if needed.

    Returns ``DistInfo()`` (rank 0 of 1) for a plain single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
        # Tear gloo down before the interpreter exits: its threads still running at exit make
        # a rank abort ("terminate called without an active exception", SIGABRT). The ranks
        # meet first, on a group of their own whose short timeout bounds the wait.
        global _EXIT_GROUP
        _EXIT_GROUP = dist.new_group(timeout=datetime.timedelta(seconds=EXIT_BARRIER_S))
        atexit.register(_destroy_process_group)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def _destroy_process_group() -> None:
    """Tear gloo down while the interpreter is still whole (registered with ``atexit``).

    ``destroy_process_group`` only drops the registry's reference: a DDP wrapper left in a
    reference cycle would keep the backend alive into interpreter finalisation, so cycles are
    collected first. The ranks then meet (at most ``EXIT_BARRIER_S``: a peer that crashed, or
    is stuck in a collective this rank left, must not hang the exit), so that no rank closes
    its connections while another is still tearing down.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    gc.collect()
    if _EXIT_GROUP is not None:
        try:
            dist.barrier(group=_EXIT_GROUP)
        except RuntimeError as err:  # DistBackendError included
            log.info("ranks did not meet at exit within %.0f s (%s); tearing down", EXIT_BARRIER_S, err)
    dist.destroy_process_group()


def _slice(x: Any, rank: int, world: int) -> Any:
    n = len(x)
    return x[n * rank // world : n * (rank + 1) // world]


def shard_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """This rank's contiguous slice of a global batch.

    Tensors, arrays and lists are cut along their first axis; dicts and tuples are walked;
    anything else (scalars, strings, None) is passed through.
    """
    if world_size <= 1:
        return batch
    if isinstance(batch, dict):
        return {k: shard_batch(v, rank, world_size) for k, v in batch.items()}
    if isinstance(batch, tuple):
        parts = [shard_batch(v, rank, world_size) for v in batch]
        return type(batch)(*parts) if hasattr(batch, "_fields") else tuple(parts)
    if isinstance(batch, (torch.Tensor, np.ndarray, list)):
        return _slice(batch, rank, world_size)
    return batch


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's and Python's global generators (call before building a model)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global generator callers may use
    random.seed(seed)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
            "name": str(name),
        },
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )


def latest_checkpoint(directory: str | Path | None) -> Path | None:
    """The checkpoint with the highest step in ``directory`` (None if there is none)."""
    if directory is None or not Path(directory).is_dir():
        return None
    found = [(int(m.group(1)), p) for p in Path(directory).iterdir() if (m := _CKPT.search(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``: tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _to_float(v: float | torch.Tensor) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _split_loss(out: LossOutput) -> tuple[torch.Tensor, dict[str, float]]:
    if isinstance(out, tuple):
        loss, values = out
        return loss, {k: _to_float(v) for k, v in values.items()}
    return out, {}


class Trainer:
    """Runs ``steps`` optimisation steps of ``loss_fn(model, make_batch(step, rng))``.

    Parameters
    ----------
    model
        The module to train (in place). Under torchrun it is wrapped in DDP for training;
        ``loss_fn`` then receives the wrapper, callbacks the bare module.
    loss_fn
        ``loss_fn(model, batch)`` returns the scalar loss, or ``(loss, {name: value})`` with
        extra values to log.
    make_batch
        ``make_batch(step, rng)``: the batch of a step, drawn from ``rng`` only.
    config
        Optimisation, schedule, checkpoint and logging settings.
    validate
        Optional ``validate(model, step) -> {name: value}`` (rank 0).
    optimizer
        Optional factory ``optimizer(model) -> torch.optim.Optimizer``; default AdamW with the
        config's ``lr``, ``betas`` and ``weight_decay``. The schedule scales each parameter
        group's initial ``lr``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Batch], LossOutput],
        make_batch: Callable[[int, np.random.Generator], Batch],
        config: TrainConfig,
        validate: Callable[[nn.Module, int], dict[str, float]] | None = None,
        optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.loss_fn = loss_fn
        self.make_batch = make_batch
        self.validate = validate
        self.dist = dist_info()
        self._set_threads()
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.wrapped: nn.Module = DistributedDataParallel(
                model, find_unused_parameters=config.find_unused_parameters
            )
        else:
            self.wrapped = model
        if optimizer is None:
            self.optimizer = torch.optim.AdamW(
                model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
            )
        else:
            self.optimizer = optimizer(model)
        self._base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.step = 0
        self.elapsed = 0.0
        self.history: list[dict[str, float]] = []
        self.validation: list[dict[str, float]] = []

    def _set_threads(self) -> None:
        threads = self.config.threads
        if threads is None and self.dist.distributed:
            threads = max(1, (os.cpu_count() or 1) // self.dist.local_world_size)
        if threads is not None:
            torch.set_num_threads(threads)

    # ------------------------------------------------------------------ schedule

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak learning rate at (0-based) ``step``."""
        cfg = self.config
        if cfg.warmup > 0 and step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, cfg.steps - cfg.warmup)
        progress = min(1.0, (step - cfg.warmup) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _apply_lr(self, step: int) -> float:
        factor = self.lr_factor(step)
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            group["lr"] = base * factor
        return self.config.lr * factor

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_path(self, step: int) -> Path:
        assert self.config.checkpoint_dir is not None
        return Path(self.config.checkpoint_dir) / f"step-{step:08d}.pt"

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0; atomic). Returns its path."""
        if self.config.checkpoint_dir is None or not self.dist.is_main:
            return None
        path = self._checkpoint_path(self.step)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(),
            "history": self.history,
            "validation": self.validation,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()},
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        self._prune()
        return path

    def _prune(self) -> None:
        directory = Path(self.config.checkpoint_dir)  # type: ignore[arg-type]
        found = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _CKPT.search(p.name)))
        for _, p in found[: max(0, len(found) - self.config.keep_checkpoints)]:
            p.unlink(missing_ok=True)

    def _resume_path(self) -> Path | None:
        path = latest_checkpoint(self.config.checkpoint_dir)
        if self.dist.distributed:
            import torch.distributed as dist

            box = [str(path) if path is not None else None]
            dist.broadcast_object_list(box, src=0)
            path = Path(box[0]) if box[0] is not None else None
        return path

    def resume(self) -> int:
        """Load the newest checkpoint of ``checkpoint_dir`` if there is one; returns its step."""
        path = self._resume_path()
        if path is None:
            return 0
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.history = list(state["history"])
        self.validation = list(state["validation"])
        if self.dist.is_main:
            log.info("%s: resumed from %s (step %d)", self.config.desc, path, self.step)
        return self.step

    # ------------------------------------------------------------------ steps

    def _batch(self, step: int) -> Batch:
        d = self.dist
        if self.config.shard:
            rng = np.random.default_rng([self.config.seed, step])
            return shard_batch(self.make_batch(step, rng), d.rank, d.world_size)
        return self.make_batch(step, np.random.default_rng([self.config.seed, step, d.rank]))

    def _reduce(self, loss: torch.Tensor, values: dict[str, float]) -> dict[str, float]:
        names = sorted(values)
        vec = torch.tensor([float(loss.detach()), *(values[k] for k in names)], dtype=torch.float64)
        if self.dist.distributed:
            import torch.distributed as dist

            dist.all_reduce(vec)
            vec /= self.dist.world_size
        return {"loss": float(vec[0]), **{k: float(v) for k, v in zip(names, vec[1:])}}

    def train_step(self, step: int) -> dict[str, float]:
        """One optimisation step at (0-based) ``step``; returns the logged values."""
        torch.manual_seed(_step_seed(self.config.seed, step, self.dist.rank))
        lr = self._apply_lr(step)
        batch = self._batch(step)
        loss, values = _split_loss(self.loss_fn(self.wrapped, batch))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return {"step": float(step + 1), "lr": lr, **self._reduce(loss, values)}

    def _validate(self) -> dict[str, float] | None:
        if self.validate is None or not self.dist.is_main:
            return None
        self.model.eval()
        try:
            with torch.no_grad():
                values = {k: float(v) for k, v in self.validate(self.model, self.step).items()}
        finally:
            self.model.train()
        entry = {"step": float(self.step), **values}
        self.validation.append(entry)
        return entry

    def _due(self, every: int, end: int) -> bool:
        return self.step == end or (every > 0 and self.step % every == 0)

    def fit(self, until: int | None = None) -> TrainResult:
        """Train (resuming from the newest checkpoint) up to ``config.steps`` or ``until`` steps."""
        torch.manual_seed(self.config.seed)
        start = self.resume()
        end = self.config.steps if until is None else min(until, self.config.steps)
        t0 = time.perf_counter()
        bar = tqdm(
            total=self.config.steps,
            initial=start,
            desc=self.config.desc,
            unit="step",
            disable=not (self.config.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        running: float | None = None
        self.model.train()
        try:
            while self.step < end:
                tick = time.perf_counter()
                entry = self.train_step(self.step)
                self.elapsed += time.perf_counter() - tick
                self.step += 1
                self.history.append(entry)
                running = entry["loss"] if running is None else 0.95 * running + 0.05 * entry["loss"]
                post = {"loss": f"{running:.4g}"}
                if self._due(self.config.val_every, self.config.steps) and (val := self._validate()):
                    post.update({k: f"{v:.4g}" for k, v in val.items() if k != "step"})
                    log.info("%s step %d: %s", self.config.desc, self.step, val)
                if self._due(self.config.checkpoint_every, end):
                    self.save_checkpoint()
                bar.set_postfix(post, refresh=False)
                bar.update(1)
        finally:
            bar.close()
        return TrainResult(
            self.step,
            list(self.history),
            list(self.validation),
            time.perf_counter() - t0,
            self.elapsed,
            start,
        )
