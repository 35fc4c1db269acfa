"""Golden-output regression: the default bundle's decoded values on a fixed simulated run.

See benchmarks/golden.py and docs/reliability.md. When the bundle changes (its digest), or a
change is meant to alter results, review the differences and regenerate the expected values:
``python benchmarks/golden.py --update``.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.golden import DEFAULT_BUNDLE, EXPECTED, REGENERATE, compare, golden_values
from rtdecode.bundle import load_bundle


@pytest.mark.timeout(180)
def test_default_bundle_reproduces_the_golden_values():
    if not EXPECTED.exists():
        pytest.fail(f"{EXPECTED} is missing: create it with `{REGENERATE}`")
    expected = json.loads(EXPECTED.read_text())
    digest = load_bundle(DEFAULT_BUNDLE).digest
    if digest != expected["bundle"]["digest"]:
        pytest.fail(
            f"the default bundle changed: digest {digest}, but {EXPECTED.name} was made with "
            f"{expected['bundle']['digest']} ({expected['bundle']['kind']}). If the new bundle is "
            f"intended, regenerate the expected values with `{REGENERATE}` and commit them."
        )
    actual = golden_values(DEFAULT_BUNDLE, expected["run"])
    diffs = compare(expected, actual)
    note = ""
    if actual["input_sha1"] != expected["input_sha1"]:
        note = " (the simulated input differs too: scanner_sim changed, or this machine's arithmetic)"
    assert not diffs, (
        f"decoded values differ from {EXPECTED.name}{note}:\n"
        + "\n".join(diffs)
        + f"\nIf the change is intended, regenerate with `{REGENERATE}`."
    )
    assert len(actual["decoded"]) == expected["run"]["n_tr"] - max(load_bundle(DEFAULT_BUNDLE).lags)


def test_a_changed_value_is_caught():
    """The comparison itself: a value off by more than the tolerance is reported."""
    expected = {
        "tolerance": {"default": {"rtol": 1e-3, "atol": 1e-4}, "motion": {"rtol": 1e-3, "atol": 1e-3}},
        "run": {"n_tr": 2},
        "volumes": [{"tr": 0, "motion": [0.1, 0.2], "fd": 0.0}],
        "decoded": [{"tr": 0, "concepts": [0.5, 0.25], "caption": "a"}],
    }
    same = json.loads(json.dumps(expected))
    same["volumes"][0]["motion"][0] += 5e-4  # within the motion tolerance
    assert compare(expected, same) == []
    off = json.loads(json.dumps(expected))
    off["decoded"][0]["concepts"][1] = 0.2510  # 0.4 % off
    off["decoded"][0]["caption"] = "b"
    diffs = compare(expected, off)
    assert len(diffs) == 2 and "caption" in diffs[0] and "concepts[1]" in diffs[1]
