"""The build cache: compiled artifacts (ONNX graphs, TensorRT plans, torch-tensorrt programs).

Layout
    ``<cache_dir>/<model>.<backend>.<key hash>.<ext>`` is the artifact and the same stem with
    ``.json`` its *key file*: the full key (bundle hash, model weights digest, input shapes,
    backend and its version, torch version, GPU model or ``"cpu"``, precision, ...) plus the
    artifact's SHA-256 and size.
Lookup
    The key's hash names the file, so a different bundle, shape, version or GPU looks for a
    different file and builds it. A file found under the right name is still verified before it
    is used: the key file must parse and hold exactly the expected key, and the artifact must
    have the recorded size and SHA-256. Anything else (a foreign, stale, truncated or corrupt
    entry) is rebuilt and overwritten, never loaded.
Writes
    Artifact first, key file last, each through a temporary file and :func:`os.replace`, so a
    crash mid-build leaves no entry that verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtdecode.bundle import sha256_file

__all__ = ["CACHE_FORMAT", "DEFAULT_CACHE_DIR", "CacheEntry", "entry_for", "key_hash", "list_entries"]

#: Bump when the key's meaning or the artifacts' layout changes (old entries then never match).
CACHE_FORMAT = 1
DEFAULT_CACHE_DIR = Path("cache/engines")


def _canonical(key: Mapping[str, Any]) -> dict[str, Any]:
    """The key as it round-trips through JSON (tuples become lists), so comparisons are exact."""
    return json.loads(json.dumps(dict(key), sort_keys=True))


def key_hash(key: Mapping[str, Any]) -> str:
    """16 hex digits identifying a key."""
    return hashlib.sha256(json.dumps(_canonical(key), sort_keys=True).encode()).hexdigest()[:16]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class CacheEntry:
    """One artifact of the cache and its key file.

    Attributes
    ----------
    artifact
        The compiled file.
    key_file
        The JSON beside it.
    key
        The key this entry must have.
    """

    artifact: Path
    key_file: Path
    key: dict[str, Any]

    def check(self) -> str | None:
        """Why this entry cannot be used (``None``: it is valid).

        Returns
        -------
        str or None
            ``"missing"``, ``"key file unreadable"``, ``"foreign key (...)"``, ``"size mismatch"``,
            ``"checksum mismatch"`` or ``None``.
        """
        if not self.artifact.exists() or not self.key_file.exists():
            return "missing"
        try:
            doc = json.loads(self.key_file.read_text())
        except (OSError, ValueError):
            return "key file unreadable"
        if not isinstance(doc, dict) or doc.get("key") != _canonical(self.key):
            stored = doc.get("key") if isinstance(doc, dict) else None
            diff = (
                sorted(k for k in set(stored) | set(self.key) if stored.get(k) != _canonical(self.key).get(k))
                if isinstance(stored, dict)
                else ["key"]
            )
            return f"foreign key (differs in {', '.join(diff)})"
        if self.artifact.stat().st_size != doc.get("bytes"):
            return "size mismatch"
        if sha256_file(self.artifact) != doc.get("sha256"):
            return "checksum mismatch"
        return None

    def valid(self) -> bool:
        """Whether the entry exists and verifies (see :meth:`check`)."""
        return self.check() is None

    def commit(self, info: Mapping[str, Any] | None = None) -> None:
        """Record the (already written) artifact: write the key file with its checksum last.

        Parameters
        ----------
        info
            Extra fields stored beside the key (build time, output names, ...); not verified.
        """
        doc = {
            "key": _canonical(self.key),
            "artifact": self.artifact.name,
            "bytes": self.artifact.stat().st_size,
            "sha256": sha256_file(self.artifact),
            "created": time.time(),
            **dict(info or {}),
        }
        _atomic_write(self.key_file, json.dumps(doc, indent=1).encode())

    def write_artifact(self, data: bytes) -> None:
        """Write the artifact atomically (and drop a stale key file first, so no half-entry verifies)."""
        self.artifact.parent.mkdir(parents=True, exist_ok=True)
        self.key_file.unlink(missing_ok=True)
        _atomic_write(self.artifact, data)

    def info(self) -> dict[str, Any]:
        """The key file's extra fields (empty if unreadable)."""
        try:
            doc = json.loads(self.key_file.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in doc.items() if k != "key"} if isinstance(doc, dict) else {}


def entry_for(cache_dir: str | Path, key: Mapping[str, Any], ext: str) -> CacheEntry:
    """The cache entry a key maps to (it may not exist yet).

    Parameters
    ----------
    cache_dir
        The cache directory (created on write).
    key
        JSON-able key; must hold ``model`` and ``backend``.
    ext
        Artifact extension without the dot (``onnx``, ``plan``, ``pt2``).
    """
    key = {"format": CACHE_FORMAT, **dict(key)}
    stem = f"{key['model']}.{key['backend']}.{key_hash(key)}"
    cache_dir = Path(cache_dir)
    return CacheEntry(cache_dir / f"{stem}.{ext}", cache_dir / f"{stem}.json", _canonical(key))


def list_entries(cache_dir: str | Path) -> list[dict[str, Any]]:
    """Every entry of a cache directory with its key and status, for ``rtdecode engines list``.

    An entry is ``valid`` when its artifact verifies against its own key file *and* it was built
    for this machine's backend version and device; ``stale`` when it verifies but was built for
    another version or device; ``corrupt`` when it does not verify.

    Returns
    -------
    list of dict
        ``{"file", "key", "bytes", "age_s", "status", "reason"}`` sorted by file name.
    """
    import torch

    from rtdecode.backends.choice import backend_version, device_name

    cache_dir = Path(cache_dir)
    rows: list[dict[str, Any]] = []
    if not cache_dir.is_dir():
        return rows
    here_device = device_name()
    for key_file in sorted(cache_dir.glob("*.json")):
        try:
            doc = json.loads(key_file.read_text())
            key = doc["key"]
            artifact = cache_dir / doc["artifact"]
        except (OSError, ValueError, KeyError, TypeError):
            rows.append(
                {
                    "file": key_file.name,
                    "key": {},
                    "bytes": 0,
                    "age_s": None,
                    "status": "corrupt",
                    "reason": "key file unreadable",
                }
            )
            continue
        entry = CacheEntry(artifact, key_file, key)
        reason = entry.check()
        status = "corrupt" if reason else "valid"
        if reason is None and key.get("format") != CACHE_FORMAT:
            status, reason = "stale", f"cache format {key.get('format')} (now {CACHE_FORMAT})"
        if reason is None:
            try:
                version = backend_version(key["backend"])
            except Exception:
                version = None
            if key.get("backend_version") != version:
                status, reason = (
                    "stale",
                    f"built with {key.get('backend_version')}, here {version or 'absent'}",
                )
            elif key.get("torch") != torch.__version__:
                status, reason = "stale", f"exported with torch {key.get('torch')}, here {torch.__version__}"
            elif key.get("device") != here_device and key["backend"] in ("tensorrt", "torch-tensorrt"):
                status, reason = "stale", f"built for {key.get('device')}, here {here_device}"
        created = doc.get("created")
        rows.append(
            {
                "file": artifact.name,
                "key": key,
                "bytes": artifact.stat().st_size if artifact.exists() else 0,
                "age_s": time.time() - created if isinstance(created, (int, float)) else None,
                "status": status,
                "reason": reason or "",
            }
        )
    return rows
