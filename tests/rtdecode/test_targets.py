"""The training targets' caches (``rtdecode.train.targets``) on the tiny dataset."""

import shutil
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from rtdecode.train.targets import pixel_targets


def test_pixel_targets_cache_survives_parallel_lanes(tiny_dataset, tmp_path):
    # One evaluate lane per subject may all find the cache missing at once: each writes its own
    # partial file and the last rename wins, instead of failing on the other's file lock.
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root, ignore=shutil.ignore_patterns("prepared"))
    with ProcessPoolExecutor(2) as pool:
        a, b = pool.map(pixel_targets, [root, root], [8, 8], [False, False])
    assert a.shape == b.shape and a.shape[-2:] == (8, 8) and np.array_equal(a, b)
    assert not list((root / "prepared").glob("*.partial"))
