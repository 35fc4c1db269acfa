import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from rtdecode.bundle import BundleError, load_bundle, refresh_manifest, save_bundle

MANIFEST = {
    "name": "t",
    "kind": "ridge",
    "geometry": {"dims": [4, 4, 4]},
    "lags": [2, 3],
    "tr": 2.0,
    "fps": 8.0,
    "frames_per_tr": 16,
    "frame_size": [64, 64],
}


def test_round_trip_and_digest(tmp_path):
    b = save_bundle(tmp_path / "b", MANIFEST, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    again = load_bundle(tmp_path / "b")
    assert np.array_equal(again.tensor("w"), b.tensor("w"))
    assert again.digest == b.digest and again.lags == (2, 3)


def test_a_file_rewritten_in_place_is_re_checksummed(tmp_path):
    path = tmp_path / "b"
    path.mkdir()
    save_file({"v": np.zeros(2, np.float32)}, str(path / "extra.safetensors"))
    save_bundle(path, MANIFEST, {"w": np.ones(3, np.float32)}, include=("extra.safetensors",))
    save_file({"v": np.ones(2, np.float32)}, str(path / "extra.safetensors"))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(path)
    b = refresh_manifest(path, {"renderer": {"steps": 1}})
    assert b.manifest["renderer"] == {"steps": 1}
    assert np.array_equal(b.tensor("v"), np.ones(2, np.float32))


def test_corrupt_or_foreign_bundles_are_refused(tmp_path):
    path = tmp_path / "b"
    save_bundle(path, MANIFEST, {"w": np.ones(3, np.float32)})
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(path)
    with pytest.raises(BundleError, match="no manifest"):
        load_bundle(tmp_path / "nothing")
    m = json.loads((path / "manifest.json").read_text())
    m["files"] = {"model.pkl": "0" * 64}
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="only safetensors"):
        load_bundle(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(path)
    (path / "manifest.json").write_text(json.dumps({**m, "format": 99}))
    with pytest.raises(BundleError, match="format 99"):
        load_bundle(path)
