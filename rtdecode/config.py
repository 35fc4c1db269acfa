"""Typed configuration: dataclasses loaded from TOML and overridden on the command line.

Every configurable command owns one dataclass (nested dataclasses become TOML tables).
Precedence, lowest first: the dataclass defaults, a TOML file (``--config FILE``), then flags.
Flags are derived from the fields: ``--speed 10`` or, for a nested field, ``--noise.tsnr 80``.

Example
-------
>>> @dataclass
... class Cfg:
...     speed: float = 1.0
>>> parser = argparse.ArgumentParser()
>>> add_config_arguments(parser, Cfg)
>>> load_config(Cfg, parser.parse_args(["--speed", "4"])).speed
4.0
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")

__all__ = ["ConfigError", "add_config_arguments", "config_to_dict", "load_config", "update"]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """Return the inner type of ``X | None`` and whether None was allowed."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a TOML or command-line value to the field's declared type."""
    inner, optional = _strip_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() == "none"):
        if optional:
            return None
        raise ConfigError(f"{name}: a value is required")
    origin = typing.get_origin(inner)
    try:
        if inner is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if inner in (int, float, str):
            if inner is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return inner(value)
        if inner is Path:
            return Path(value)
        if origin is typing.Literal:
            choices = typing.get_args(inner)
            if value not in choices:
                raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")
            return value
        if origin in (tuple, list):
            args = typing.get_args(inner)
            item_tp = args[0] if args else str
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
            items = [_coerce(v, item_tp, name) for v in value]
            return tuple(items) if origin is tuple else items
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot read {value!r} as {getattr(inner, '__name__', inner)}") from exc
    return value


def update(obj: T, values: dict[str, Any], where: str = "") -> T:
    """Return a copy of dataclass ``obj`` with ``values`` (possibly nested dicts) applied.

    Raises
    ------
    ConfigError
        If a key is not a field of the dataclass or a value has the wrong type.
    """
    hints = _hints(type(obj))
    fields = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in values.items():
        attr = key.replace("-", "_")
        name = f"{where}{key}"
        if attr not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown setting {name!r} (known here: {known})")
        current = getattr(obj, attr)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a table of settings")
            changes[attr] = update(current, value, f"{name}.")
        else:
            changes[attr] = _coerce(value, hints[attr], name)
    return dataclasses.replace(obj, **changes)


def _walk(cls: type, prefix: str = ""):
    """Yield (dotted name, type, default) for every leaf field of a dataclass type."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _walk(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp, f


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config FILE`` and one flag per (nested) field of ``cls`` to ``parser``."""
    parser.add_argument("--config", type=Path, default=None, help="TOML file with settings")
    group = parser.add_argument_group("settings (override the TOML file)")
    for dotted, tp, f in _walk(cls):
        flag = "--" + dotted.replace("_", "-")
        helptext = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        inner, _ = _strip_optional(tp)
        kwargs: dict[str, Any] = {"dest": f"cfg:{dotted}", "default": argparse.SUPPRESS}
        if inner is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = getattr(inner, "__name__", "VALUE").upper()
            if typing.get_origin(inner) is typing.Literal:
                kwargs["choices"] = typing.get_args(inner)
                kwargs.pop("metavar")
        group.add_argument(flag, help=helptext, **kwargs)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_config(
    cls: type[T], args: argparse.Namespace | None = None, path: Path | None = None, base: T | None = None
) -> T:
    """Build a ``cls`` from its defaults, a TOML file and parsed command-line flags.

    Parameters
    ----------
    cls
        The configuration dataclass.
    args
        Parsed arguments from a parser prepared with :func:`add_config_arguments`.
    path
        A TOML file; defaults to ``args.config``.
    base
        Start from this instance instead of the defaults (e.g. a preset).
    """
    cfg = base if base is not None else cls()
    path = path or (getattr(args, "config", None) if args is not None else None)
    if path is not None:
        try:
            with open(path, "rb") as fh:
                cfg = update(cfg, tomllib.load(fh))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    if args is not None:
        flat = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}
        cfg = update(cfg, _nest(flat))
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A TOML/JSON-friendly dict of a configuration dataclass (paths as strings)."""

    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))
