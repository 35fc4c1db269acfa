"""Model bundles: ``engines/<name>/manifest.json`` plus safetensors weights. Never pickle.

A bundle is refused — with a message that says why, and before any weight is used — when the
manifest is missing, malformed or of another format, when it lists anything but plain
``*.safetensors`` file names inside the bundle directory (no pickle, no paths), when a listed
file is missing or not a regular file, when a file's SHA-256 differs from the manifest's (a
corrupt or foreign file), or when its bytes are not safetensors. Each file is read once: the
bytes that were hashed are the bytes parsed, so a file swapped in between cannot slip
through. Nothing on this path can execute code (no pickle, no ``torch.load``).

Manifest fields (format 1)
--------------------------
``format``, ``name``, ``kind`` (which decoder family), ``created``, ``subject``,
``geometry`` (the volume grid it was trained on), ``mask`` (name of the tensor with the flat
voxel indices it reads), ``lags`` (hemodynamic lags in TRs), ``tr``, ``fps``,
``frames_per_tr``, ``frame_size``, ``vocabulary``, ``training`` (data fingerprint and
settings), ``metrics`` (evaluation at training time), ``files`` ({file: sha256}).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load, save_file

__all__ = [
    "BUNDLE_FORMAT",
    "Bundle",
    "BundleError",
    "load_bundle",
    "refresh_manifest",
    "save_bundle",
    "sha256_file",
]

BUNDLE_FORMAT = 1
REQUIRED = {
    "format": int,
    "name": str,
    "kind": str,
    "geometry": dict,
    "lags": list,
    "tr": (int, float),
    "fps": (int, float),
    "frames_per_tr": int,
    "frame_size": list,
    "files": dict,
}


MAX_MANIFEST_BYTES = 16 << 20
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleError(ValueError):
    """A model bundle cannot be used."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """A loaded bundle: its manifest and its tensors (numpy arrays by name)."""

    path: Path
    manifest: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(repr=False)

    @property
    def kind(self) -> str:
        """Decoder family (``ridge``, ``neurons``, ...)."""
        return self.manifest["kind"]

    @property
    def lags(self) -> tuple[int, ...]:
        """Hemodynamic lags in TRs."""
        return tuple(int(x) for x in self.manifest["lags"])

    @property
    def digest(self) -> str:
        """A short hash identifying the bundle's content (for caches and records)."""
        files = json.dumps(self.manifest["files"], sort_keys=True).encode()
        return hashlib.sha256(files).hexdigest()[:16]

    def tensor(self, name: str) -> np.ndarray:
        """One tensor; BundleError if missing."""
        if name not in self.tensors:
            raise BundleError(f"bundle {self.path} has no tensor {name!r}")
        return self.tensors[name]


def _check_manifest(m: Any, path: Path) -> None:
    if not isinstance(m, dict):
        raise BundleError(f"{path}: manifest is not a JSON object")
    for key, tp in REQUIRED.items():
        if key not in m:
            raise BundleError(f"{path}: manifest lacks {key!r}")
        if not isinstance(m[key], tp):
            raise BundleError(f"{path}: manifest field {key!r} has the wrong type")
    if m["format"] != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {m['format']} is not {BUNDLE_FORMAT}")
    dims = m["geometry"].get("dims")
    if not (isinstance(dims, list) and len(dims) == 3 and all(type(d) is int and d > 0 for d in dims)):
        raise BundleError(f"{path}: manifest geometry.dims {dims!r} is not three positive integers")
    for name, digest in m["files"].items():
        # A plain file name: no directories, no '..', no other format (pickle, .pt, .npy...).
        if not _FILE_NAME.fullmatch(name) or ".." in name:
            raise BundleError(f"{path}: refusing file {name!r} (only safetensors inside the bundle)")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise BundleError(f"{path}: the manifest's checksum of {name} is not a SHA-256 hex digest")


def load_bundle(path: str | Path) -> Bundle:
    """Load and verify a bundle directory.

    Raises
    ------
    BundleError
        With the reason: missing, malformed, foreign or corrupt.
    """
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise BundleError(
            f"{path} is not a model bundle (no manifest.json); train one with "
            "`rtdecode train` or use engines/default"
        )
    if not mpath.is_file() or mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath}: not a regular file of at most {MAX_MANIFEST_BYTES >> 20} MB")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise BundleError(f"{mpath}: not valid JSON ({exc})") from exc
    _check_manifest(manifest, path)
    tensors: dict[str, np.ndarray] = {}
    for name, digest in manifest["files"].items():
        fpath = path / name
        if not fpath.exists():
            raise BundleError(f"{path}: file {name} listed in the manifest is missing")
        if not fpath.is_file():  # a FIFO or device would hang or flood the hashing
            raise BundleError(f"{path}: {name} is not a regular file")
        data = fpath.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise BundleError(
                f"{path}: {name} does not match the manifest's checksum (corrupt or foreign file)"
            )
        try:
            loaded = load(data)
        except Exception as exc:  # safetensors raises its own error types
            raise BundleError(f"{path}: {name} is not a readable safetensors file ({exc})") from exc
        if clash := sorted(set(loaded) & set(tensors)):
            raise BundleError(f"{path}: tensors {clash[:5]} appear in more than one file")
        tensors.update(loaded)
    return Bundle(path, manifest, tensors)


def save_bundle(
    path: str | Path,
    manifest: dict[str, Any],
    tensors: dict[str, np.ndarray],
    weights: str = "weights.safetensors",
    include: tuple[str, ...] = (),
) -> Bundle:
    """Write a bundle (tensors to safetensors, manifest with checksums) and reload it.

    ``include`` names safetensors files already in the bundle directory (e.g. the encoders'
    ``encoders.safetensors``) that belong to it too.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # np.require keeps 0-d tensors 0-d (np.ascontiguousarray would make them (1,))
    arrays = {k: np.require(v, requirements="C") for k, v in tensors.items()}
    save_file(arrays, str(path / weights))
    m = {"format": BUNDLE_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **manifest}
    return _write_manifest(path, m, (weights, *include))


def refresh_manifest(path: str | Path, updates: dict[str, Any]) -> Bundle:
    """Update entries of a bundle's manifest and re-checksum its files (after one of them was
    rewritten in place, e.g. ``renderer.safetensors``), then reload it."""
    path = Path(path)
    m = json.loads((path / "manifest.json").read_text())
    m.update(updates)
    return _write_manifest(path, m, tuple(m["files"]))


def _write_manifest(path: Path, m: dict[str, Any], files: tuple[str, ...]) -> Bundle:
    """Checksum ``files``, write the manifest atomically, reload the bundle."""
    m["files"] = {name: sha256_file(path / name) for name in files}
    tmp = path / "manifest.json.tmp"
    tmp.write_text(json.dumps(m, indent=1, default=_json_default))
    tmp.replace(path / "manifest.json")
    return load_bundle(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to a manifest")
