"""Closed doors: bundles load only verified safetensors (nothing executable), MQTT with a
password over TLS together, no pickle anywhere on the load path.

(That nothing listens on the network during a run is checked in
test_faults.py::test_sigint_stops_cleanly_and_nothing_listens.)
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import os
import pickle
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rtdecode.bundle import BundleError, load_bundle, save_bundle
from rtdecode.decode import load_decoder
from rtdecode.pipeline import Engine, EngineConfig
from tests.conftest import ROOT
from tests.rtdecode.helpers import make_small_bundle

MARKER = Path("/tmp/rtdecode-test-pickle-was-executed")


class _Payload:
    """Unpickling this creates MARKER: proof that a file was (or was not) unpickled."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def _rehash(path: Path, files: dict[str, str] | None = None) -> None:
    """Rewrite the manifest's file list with the current SHA-256 of each file."""
    m = json.loads((path / "manifest.json").read_text())
    names = files if files is not None else m["files"]
    m["files"] = {n: hashlib.sha256((path / n).read_bytes()).hexdigest() for n in names}
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.fixture
def bundle(tmp_path) -> Path:
    MARKER.unlink(missing_ok=True)
    yield make_small_bundle(tmp_path / "b")
    assert not MARKER.exists(), "a pickle was executed while loading a bundle"


def test_a_pickle_is_never_loaded_even_with_a_valid_checksum(bundle):
    (bundle / "model.pkl").write_bytes(pickle.dumps(_Payload()))
    _rehash(bundle, ["weights.safetensors", "model.pkl"])
    with pytest.raises(BundleError, match=r"refusing file 'model.pkl' \(only safetensors"):
        load_bundle(bundle)
    # a pickle (or an .npy, or a torch zip) renamed to .safetensors: hashed, then refused as
    # not safetensors — never unpickled
    for foreign in (pickle.dumps(_Payload()), b"\x93NUMPY\x01\x00" + b"v" * 100, b"PK\x03\x04" + b"\0" * 64):
        (bundle / "weights.safetensors").write_bytes(foreign)
        _rehash(bundle, ["weights.safetensors"])
        with pytest.raises(BundleError, match="not a readable safetensors file"):
            load_bundle(bundle)


@pytest.mark.parametrize(
    "name",
    [
        "../outside.safetensors",
        "/etc/outside.safetensors",
        "sub/weights.safetensors",
        "..\\weights.safetensors",
        ".hidden.safetensors",
        "weights.safetensors\x00.pkl",
        "weights..safetensors",
        "weights.safetensors.pkl",
        "weights.pt",
        "C:weights.safetensors",
    ],
)
def test_paths_and_other_formats_in_the_manifest_are_refused(bundle, name):
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"] = {name: "0" * 64}
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="only safetensors inside the bundle"):
        load_bundle(bundle)


def test_tampered_truncated_or_special_files_are_refused(bundle):
    weights = bundle / "weights.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-10])
    with pytest.raises(BundleError, match="does not match the manifest's checksum"):
        load_bundle(bundle)
    weights.unlink()
    os.mkfifo(weights)  # would block the hashing forever if it were opened
    t = time.monotonic()
    with pytest.raises(BundleError, match="not a regular file"):
        load_bundle(bundle)
    assert time.monotonic() - t < 5
    weights.unlink()
    weights.write_bytes(good)
    m = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**m, "files": {"weights.safetensors": "abc"}}))
    with pytest.raises(BundleError, match="not a SHA-256"):
        load_bundle(bundle)
    # a manifest listing no weights loads, but no decoder can be built from it
    (bundle / "manifest.json").write_text(json.dumps({**m, "files": {}}))
    with pytest.raises(BundleError, match="no tensor"):
        load_decoder(load_bundle(bundle))


def test_malformed_or_foreign_manifests_are_refused(bundle, tmp_path):
    mpath = bundle / "manifest.json"
    m = json.loads(mpath.read_text())
    cases = [
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),  # nesting deeper than the parser
        ("\xff\xfe", "not valid JSON"),
        (json.dumps([m]), "not a JSON object"),
        (json.dumps({k: v for k, v in m.items() if k != "lags"}), "lacks 'lags'"),
        (json.dumps({**m, "format": 2}), "format 2 is not 1"),
        (json.dumps({**m, "geometry": {"dims": [16, -1, 8]}}), "three positive integers"),
    ]
    for text, why in cases:
        mpath.write_text(text, encoding="latin-1")
        with pytest.raises(BundleError, match=why):
            load_bundle(bundle)
    mpath.write_text(json.dumps({**m, "kind": "something-else"}))
    with pytest.raises(BundleError, match="unknown decoder kind 'something-else'"):
        load_decoder(load_bundle(bundle))
    # the engine refuses a bad bundle before it connects to anything
    with pytest.raises(BundleError, match="unknown decoder kind"):
        Engine(EngineConfig(bundle=bundle, sessions=tmp_path / "sessions"))
    assert not (tmp_path / "sessions").exists()


def test_a_tensor_in_two_files_is_refused(tmp_path):
    path = tmp_path / "b"
    save_bundle(
        path,
        {
            "name": "t",
            "kind": "ridge",
            "geometry": {"dims": [2, 2, 2]},
            "lags": [1],
            "tr": 2.0,
            "fps": 8.0,
            "frames_per_tr": 4,
            "frame_size": [8, 8],
        },
        {"w": np.ones(2, np.float32)},
    )
    shutil.copy(path / "weights.safetensors", path / "other.safetensors")
    _rehash(path, ["weights.safetensors", "other.safetensors"])
    with pytest.raises(BundleError, match="more than one file"):
        load_bundle(path)


# --------------------------------------------------------------------------- no pickle, statically

_PICKLERS = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _kw(call: ast.Call, name: str) -> object:
    for k in call.keywords:
        if k.arg == name and isinstance(k.value, ast.Constant):
            return k.value.value
    return None


def test_no_pickle_on_any_load_path():
    """No module of rtdecode imports a pickler; every torch.load is weights_only, no np.load
    allows pickles, and diffusers loads only safetensors."""
    problems = []
    for path in sorted((ROOT / "rtdecode").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + (
                    [node.module] if isinstance(node, ast.ImportFrom) else []
                )
                if any(n and n.split(".")[0] in _PICKLERS for n in names):
                    problems.append(f"{where}:{node.lineno} imports a pickler")
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            attr, owner = node.func.attr, ast.unparse(node.func.value)
            if attr == "load" and owner == "torch" and _kw(node, "weights_only") is not True:
                problems.append(f"{where}:{node.lineno} torch.load without weights_only=True")
            if attr == "load" and owner.endswith("jit"):
                problems.append(f"{where}:{node.lineno} torch.jit.load")
            if attr == "load" and owner in ("np", "numpy") and _kw(node, "allow_pickle") is not False:
                if _kw(node, "allow_pickle") is True:
                    problems.append(f"{where}:{node.lineno} np.load(allow_pickle=True)")
            if attr == "from_pretrained" and _kw(node, "use_safetensors") is not True:
                problems.append(f"{where}:{node.lineno} from_pretrained without use_safetensors=True")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- MQTT: password + TLS


@pytest.mark.timeout(60)
def test_mqtt_password_and_tls_together(tmp_path, monkeypatch):
    """Mosquitto with a password file AND a TLS listener (a throwaway self-signed certificate
    made here): the publisher and rtdecode's own subscriber both connect with credentials over
    TLS; a wrong password, a missing CA or plain TCP are refused."""
    pytest.importorskip("aiomqtt")
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    from tests.rtdecode.test_mqtt import MOSQUITTO, Broker, _fake_engine

    if not os.path.exists(MOSQUITTO):
        pytest.skip("mosquitto is not installed")
    import aiomqtt

    from rtdecode.listen import subscribe
    from rtdecode.outputs.mqtt import PASSWORD_ENV, MqttConfig, MqttPublisher, client_options

    broker = Broker(tmp_path, users={"rt": "s3cret"}, tls=True)
    broker.start()
    try:
        base = MqttConfig(
            host="127.0.0.1", port=broker.port, session="sec", username="rt", ca_file=broker.cert, timeout_s=3
        )

        async def connect(cfg: MqttConfig) -> str:
            try:
                async with aiomqtt.Client(**client_options(cfg)):
                    return "ok"
            except aiomqtt.MqttError as exc:
                return str(exc)

        monkeypatch.setenv(PASSWORD_ENV, "s3cret")  # the password from the environment
        assert asyncio.run(connect(base)) == "ok"
        assert "not authori" in asyncio.run(connect(replace(base, password="wrong"))).lower()
        untrusted = asyncio.run(connect(replace(base, ca_file=None, tls=True)))  # system CAs only
        assert "certificate verify failed" in untrusted
        assert asyncio.run(connect(replace(base, ca_file=None, tls=False))) != "ok"  # plain TCP

        got: list[tuple[str, dict]] = []
        holder: dict = {}

        async def listen() -> None:
            holder["loop"], holder["stop"] = asyncio.get_running_loop(), asyncio.Event()
            await subscribe(base, "sec", lambda s, k, b: got.append((k, b)), holder["stop"])

        thread = threading.Thread(target=asyncio.run, args=(listen(),), daemon=True)
        thread.start()
        pub = MqttPublisher(base)
        pub.start(_fake_engine(tmp_path))
        deadline = time.monotonic() + 20
        while (
            not any(k == "status" and b["state"] == "running" for k, b in got) and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        pub.close()
        while not any(b.get("state") == "stopped" for _, b in got) and time.monotonic() < deadline:
            time.sleep(0.05)
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(5)
    finally:
        broker.stop()
    states = [b["state"] for k, b in got if k == "status"]
    assert "running" in states and "stopped" in states
    assert pub.connects == 1 and pub.state == "stopped" and pub.error == ""
