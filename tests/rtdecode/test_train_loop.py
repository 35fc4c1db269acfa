"""The shared training loop: determinism, checkpoints, resume, validation, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rtdecode.train.loop import (
    TrainConfig,
    Trainer,
    latest_checkpoint,
    load_checkpoint,
    seed_everything,
    shard_batch,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest (and steadiest on a busy machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))


def _make_batch(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(rng.standard_normal((32, 4)).astype(np.float32))
    return x, (x * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(1, keepdim=True)


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    x, y = batch
    loss = nn.functional.mse_loss(model(x), y)
    return loss, {"rmse": loss.detach().sqrt()}


def _config(tmp: Path | None, **kw) -> TrainConfig:
    base = {
        "steps": 20,
        "lr": 1e-2,
        "warmup": 3,
        "checkpoint_dir": tmp,
        "checkpoint_every": 5,
        "progress": False,
        "seed": 7,
        "weight_decay": 0.01,
    }
    return TrainConfig(**{**base, **kw})


def test_loss_falls_and_values_are_logged():
    result = Trainer(_model(), _loss, _make_batch, _config(None, steps=60, lr=3e-2)).fit()
    first = np.mean([h["loss"] for h in result.history[:5]])
    last = np.mean([h["loss"] for h in result.history[-5:]])
    assert last < 0.3 * first
    assert result.step == 60 and len(result.history) == 60
    assert {"step", "loss", "lr", "rmse"} <= set(result.history[0])


def test_same_seed_same_run_other_seed_other_run():
    a = Trainer(_model(), _loss, _make_batch, _config(None)).fit().history
    b = Trainer(_model(), _loss, _make_batch, _config(None)).fit().history
    c = Trainer(_model(), _loss, _make_batch, _config(None, seed=8)).fit().history
    assert [h["loss"] for h in a] == [h["loss"] for h in b]
    assert [h["loss"] for h in a] != [h["loss"] for h in c]


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    full_model = _model()
    full = Trainer(full_model, _loss, _make_batch, _config(tmp_path / "full")).fit()

    def failing(step: int, rng: np.random.Generator):
        if step == 12:
            raise _Interrupt
        return _make_batch(step, rng)

    with pytest.raises(_Interrupt):
        Trainer(_model(), _loss, failing, _config(tmp_path / "cut")).fit()
    assert latest_checkpoint(tmp_path / "cut").name == "step-00000010.pt"
    resumed_model = _model(seed=123)  # a different init: everything must come from the checkpoint
    resumed = Trainer(resumed_model, _loss, _make_batch, _config(tmp_path / "cut")).fit()
    assert resumed.resumed_from == 10
    for p, q in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(p, q)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_checkpoints_are_atomic_pruned_and_weights_only(tmp_path):
    trainer = Trainer(_model(), _loss, _make_batch, _config(tmp_path, keep_checkpoints=2))
    trainer.fit(until=15)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step-00000010.pt", "step-00000015.pt"]
    state = load_checkpoint(tmp_path / names[-1])  # weights_only=True
    assert state["step"] == 15 and set(state) >= {"model", "optimizer", "rng", "history"}
    again = Trainer(_model(), _loss, _make_batch, _config(tmp_path)).fit()
    assert again.resumed_from == 15 and again.step == 20
    assert latest_checkpoint(tmp_path).name == "step-00000020.pt"
    # a finished run resumes at its end and does nothing
    done = Trainer(_model(), _loss, _make_batch, _config(tmp_path)).fit()
    assert done.resumed_from == 20 and len(done.history) == 20


def test_validation_runs_in_eval_mode_every_n_steps():
    calls = []

    def validate(model: nn.Module, step: int) -> dict[str, float]:
        calls.append((step, model.training, torch.is_grad_enabled()))
        return {"score": float(step)}

    result = Trainer(
        _model(), _loss, _make_batch, _config(None, steps=10, val_every=4), validate=validate
    ).fit()
    assert calls == [(4, False, False), (8, False, False), (10, False, False)]
    assert [v["score"] for v in result.validation] == [4.0, 8.0, 10.0]


def test_learning_rate_schedule():
    trainer = Trainer(_model(), _loss, _make_batch, _config(None, steps=100, warmup=10, min_lr_ratio=0.1))
    assert trainer.lr_factor(0) == pytest.approx(0.1)
    assert trainer.lr_factor(9) == pytest.approx(1.0)
    assert trainer.lr_factor(10) == pytest.approx(1.0)
    assert trainer.lr_factor(99) == pytest.approx(0.1, abs=1e-3)
    const = Trainer(_model(), _loss, _make_batch, _config(None, warmup=0, schedule="constant"))
    assert const.lr_factor(0) == const.lr_factor(19) == 1.0


def test_shard_batch_cuts_first_axis():
    batch = {"x": torch.arange(10), "y": (np.arange(10), ["a"] * 10), "n": 3}
    parts = [shard_batch(batch, r, 3) for r in range(3)]
    assert [len(p["x"]) for p in parts] == [3, 3, 4]
    assert torch.equal(torch.cat([p["x"] for p in parts]), batch["x"])
    assert [len(p["y"][1]) for p in parts] == [3, 3, 4] and parts[2]["n"] == 3
    assert shard_batch(batch, 0, 1) is batch


SCRIPT = """
import json, sys
import numpy as np, torch
from torch import nn
from rtdecode.train.loop import TrainConfig, Trainer, dist_info, seed_everything

def make_batch(step, rng):
    x = torch.from_numpy(rng.standard_normal((32, 4)).astype(np.float32))
    return x, (x * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(1, keepdim=True)

def loss_fn(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)

seed_everything(0)
model = nn.Linear(4, 1)
cfg = TrainConfig(steps=25, lr=0.2, warmup=0, schedule="constant", grad_clip=None, progress=False,
                  checkpoint_dir=sys.argv[2], checkpoint_every=10, seed=3)
result = Trainer(model, loss_fn, make_batch, cfg).fit()
info = dist_info()
with open(f"{sys.argv[1]}/rank{info.rank}.json", "w") as fh:
    json.dump({"world": info.world_size, "loss": [h["loss"] for h in result.history],
               "weight": model.weight.detach().tolist()}, fh)
"""


FAILING_RANK = """
import os, sys
import torch
from torch import nn
from rtdecode.train import loop
from rtdecode.train.loop import TrainConfig, Trainer

loop.EXIT_BARRIER_S = 5.0  # before the Trainer creates the exit group
rank = int(os.environ["RANK"])

def make_batch(step, rng):
    if rank == 1 and step == 3:
        raise ValueError("rank 1 fails at step 3")
    x = torch.randn(8, 4)
    return x, x.sum(1, keepdim=True)

Trainer(nn.Linear(4, 1), lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), make_batch,
        TrainConfig(steps=10, progress=False)).fit()
"""


def _torchrun(script: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    return subprocess.run([*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _single_process_losses() -> list[float]:
    seed_everything(0)
    model = nn.Linear(4, 1)
    cfg = TrainConfig(steps=25, lr=0.2, warmup=0, schedule="constant", grad_clip=None, progress=False, seed=3)
    return [
        h["loss"]
        for h in Trainer(model, lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), _make_batch, cfg)
        .fit()
        .history
    ]


@pytest.mark.timeout(180)
def test_torchrun_two_processes_data_parallel(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = _torchrun(script, str(tmp_path), str(tmp_path / "ckpt"), timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    loss = ranks[0]["loss"]
    assert loss[-1] < 0.1 * loss[0]
    assert ranks[0]["loss"] == ranks[1]["loss"]  # logged losses are averaged across ranks
    assert np.allclose(ranks[0]["weight"], ranks[1]["weight"], atol=1e-6)  # DDP keeps replicas equal
    # each rank takes half of the same global batch: the curve matches one process within rounding
    assert np.allclose(loss, _single_process_losses(), rtol=1e-4, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-00000020.pt", "step-00000025.pt"]


@pytest.mark.timeout(120)
def test_torchrun_failing_rank_ends_the_job(tmp_path):
    """One rank raises mid-training while its peer waits in an all-reduce: the failing rank's
    exit barrier gives up after ``EXIT_BARRIER_S`` (it must not wait for a peer stuck in a
    collective it left), the job ends, and its error names the failing rank's exception."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")
    script = tmp_path / "fail.py"
    script.write_text(textwrap.dedent(FAILING_RANK))
    t0 = time.monotonic()
    proc = _torchrun(script, timeout=110)
    assert proc.returncode != 0
    assert "rank 1 fails at step 3" in proc.stderr
    assert time.monotonic() - t0 < 90  # without the bounded barrier: the 30-min gloo timeout
