import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from rtdecode.config import ConfigError, add_config_arguments, load_config


@dataclass(frozen=True)
class Inner:
    rate: float = 1.0
    name: str = "x"


@dataclass(frozen=True)
class Outer:
    speed: float = 1.0
    n: int = 3
    flag: bool = False
    lags: tuple[int, ...] = (2, 3)
    mode: Literal["a", "b"] = "a"
    path: Path | None = None
    inner: Inner = field(default_factory=Inner)


def _parse(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p, Outer)
    return p.parse_args(argv)


def test_defaults_toml_then_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('speed = 2.5\nlags = [1, 2, 4]\n[inner]\nrate = 7\nname = "toml"\n')
    cfg = load_config(Outer, _parse(["--config", str(toml), "--inner.name", "flag", "--flag", "--n", "5"]))
    assert cfg.speed == 2.5 and cfg.lags == (1, 2, 4) and cfg.inner.rate == 7.0
    assert cfg.inner.name == "flag" and cfg.flag is True and cfg.n == 5
    assert load_config(Outer, _parse([])) == Outer()


def test_typed_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting 'spede'"):
        bad = tmp_path / "b.toml"
        bad.write_text("spede = 1\n")
        load_config(Outer, _parse(["--config", str(bad)]))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(Outer, _parse(["--n", "many"]))
    with pytest.raises(SystemExit):
        _parse(["--mode", "c"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, _parse(["--config", str(tmp_path / "missing.toml")]))


def test_lists_and_paths_from_flags():
    cfg = load_config(Outer, _parse(["--lags", "1,5", "--path", "a/b"]))
    assert cfg.lags == (1, 5) and cfg.path == Path("a/b")
