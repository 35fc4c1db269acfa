"""Shared fixtures: unique LSL source ids, a tiny dataset, subprocess helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def source_id() -> str:
    """A unique LSL source id, so tests never see each other's streams."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The `tiny` preset, generated once per test session."""
    from scanner_sim.dataset import generate, with_preset

    out = tmp_path_factory.mktemp("tiny_dataset")
    generate(with_preset("tiny"), out, progress=False)
    return out


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

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    train_ridge(
        RidgeConfig(dataset=tiny_dataset, out=out, n_voxels=1500, warmup=5, n_components=64), progress=False
    )
    return out
