"""Shared fixtures: unique LSL source ids, a tiny dataset, subprocess helpers.

The suite runs in parallel (pytest-xdist, one process per core; many tests wait on real-time
streams rather than compute). Session fixtures that cost tens of seconds are built once per
run, not once per worker: the first worker builds into the run's shared temporary directory
under a file lock and the others reuse the result.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def source_id() -> str:
    """A unique LSL source id, so tests never see each other's streams."""
    return f"test-{uuid.uuid4().hex[:12]}"


def _shared(tmp_path_factory, name: str, build) -> Path:
    """``build(path)`` once per test run, shared by every xdist worker (or the one process)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, common to all workers
    out = root / f"shared-{name}"
    with FileLock(str(out) + ".lock"):
        if not (out / ".complete").exists():
            shutil.rmtree(out, ignore_errors=True)  # what a worker that failed half-way left
            build(out)
            (out / ".complete").touch()
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The `tiny` preset, generated once per test run."""
    from scanner_sim.dataset import generate, with_preset

    def build(out: Path) -> None:
        generate(with_preset("tiny"), out, progress=False)

    return _shared(tmp_path_factory, "tiny_dataset", build)


def cli(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run a console script of this project in a fresh interpreter."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env=env,
        cwd=ROOT,
    )


def spawn(*args: str, **kw) -> subprocess.Popen:
    """Start a module of this project in the background (stdout/stderr captured)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        **kw,
    )


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dataset, tmp_path_factory) -> Path:
    """A ridge bundle trained on the tiny dataset by the project's own training code."""
    from rtdecode.train.ridge import RidgeConfig, train_ridge

    def build(out: Path) -> None:
        cfg = RidgeConfig(dataset=tiny_dataset, out=out / "tiny", n_voxels=1500, warmup=5, n_components=64)
        train_ridge(cfg, progress=False)

    return _shared(tmp_path_factory, "bundle", build) / "tiny"
