import numpy as np
import pytest

from rtdecode.conditions import SCHEMA_VERSION, Conditions, pack, unpack


def test_round_trip_with_arrays():
    c = Conditions(
        tr=5,
        source_tr=8,
        blurry=np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32),
        concepts=np.linspace(0, 1, 64, dtype=np.float32),
        caption="a red star",
        stamps={"received": 1.5},
    )
    back = Conditions.from_msgpack(c.to_msgpack())
    assert back.tr == 5 and back.caption == "a red star" and back.stamps == {"received": 1.5}
    assert np.array_equal(back.blurry, c.blurry) and back.blurry.dtype == np.float32
    assert c.to_dict()["schema"] == SCHEMA_VERSION


def test_malformed_and_oversized_messages_are_rejected():
    with pytest.raises(ValueError, match="malformed"):
        unpack(b"\xc1\xc1\xc1")
    with pytest.raises(ValueError, match="exceeds"):
        unpack(b"0" * 100, max_bytes=10)
    with pytest.raises(ValueError, match="schema"):
        Conditions.from_msgpack(pack({"schema": 99, "tr": 1, "source_tr": 1}))
