"""NIfTI / CIFTI-2 replay: files written with nibabel come back intact over LSL."""

from __future__ import annotations

import threading
import uuid

import nibabel as nib
import numpy as np
import pylsl
import pytest
from nibabel import cifti2

from rtdecode.geometry import rotation_matrix
from rtdecode.lsl import geometry_from_info
from scanner_sim.replay import load_nifti, replay_nifti

SHAPE = (16, 16, 8, 6)
VOXEL = (2.5, 2.5, 3.0)


def _affine() -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = rotation_matrix(5.0, -3.0, 10.0) @ np.diag(VOXEL)
    aff[:3, 3] = (-20.0, -25.5, -12.0)
    return aff


def _write_nifti(path, data, tr: float, t_unit: str = "sec", slope: float | None = None):
    img = nib.Nifti1Image(data, _affine())
    img.header.set_xyzt_units("mm", t_unit)
    img.header.set_zooms((*VOXEL, tr))
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    img.to_filename(str(path))
    return path


def _int16_series(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-2000, 30000, size=SHAPE).astype(np.int16)


def _replay_in_thread(path, **kwargs) -> tuple[threading.Thread, dict]:
    result: dict = {"stamps": []}

    def target() -> None:
        result["sent"] = replay_nifti(path, on_volume=lambda k, t: result["stamps"].append((k, t)), **kwargs)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def _receive(source_id: str, n: int, timeout: float = 15.0):
    """Resolve the stream, then pull ``n`` samples into a preallocated buffer."""
    found = pylsl.resolve_bypred(f"source_id='{source_id}'", 1, 10.0)
    assert found, f"stream {source_id} not found"
    inlet = pylsl.StreamInlet(found[0], max_buflen=60)
    info = inlet.info(5.0)
    inlet.open_stream(5.0)
    dtype = {pylsl.cf_int16: np.int16, pylsl.cf_float32: np.float32}[info.channel_format()]
    buf = np.zeros((n, info.channel_count()), dtype=dtype)
    stamps: list[float] = []
    deadline = pylsl.local_clock() + timeout
    while len(stamps) < n and pylsl.local_clock() < deadline:
        _, ts = inlet.pull_chunk(
            timeout=0.5, max_samples=n - len(stamps), dest_obj=buf[len(stamps) :], min_samples=1
        )
        stamps.extend(ts)
    inlet.close_stream()
    return info, buf[: len(stamps)], np.asarray(stamps)


def test_nifti_int16_replays_volume_for_volume(tmp_path):
    data = _int16_series()
    path = _write_nifti(tmp_path / "run.nii.gz", data, tr=2.0)
    sid = f"test-replay-{uuid.uuid4()}"
    thread, result = _replay_in_thread(path, speed=20, source_id=sid, wait_for_consumer=10.0)
    info, samples, stamps = _receive(sid, SHAPE[3])
    thread.join(10.0)
    assert not thread.is_alive()

    assert result["sent"] == SHAPE[3]
    assert [k for k, _ in result["stamps"]] == list(range(SHAPE[3]))
    assert info.channel_format() == pylsl.cf_int16
    assert info.nominal_srate() == pytest.approx(0.5)
    assert samples.shape == (SHAPE[3], int(np.prod(SHAPE[:3])))
    for t in range(SHAPE[3]):
        np.testing.assert_array_equal(samples[t].reshape(SHAPE[:3]), data[..., t])
    # Paced at TR / speed = 0.1 s: never early (late only by scheduling delays).
    assert np.all(stamps - stamps[0] >= np.arange(SHAPE[3]) * 0.1 - 0.01)
    assert stamps[-1] - stamps[0] < 1.5

    geometry = geometry_from_info(info)
    _, expected = load_nifti(path)
    assert geometry == expected
    assert geometry.dims == SHAPE[:3]
    assert geometry.voxel_size == pytest.approx(VOXEL)
    assert geometry.tr == pytest.approx(2.0)
    np.testing.assert_allclose(geometry.affine_matrix, _affine(), atol=1e-5)


def test_load_nifti_layout_and_dtype(tmp_path):
    data = _int16_series(1)
    vols, geometry = load_nifti(_write_nifti(tmp_path / "run.nii", data, tr=1.5))
    assert vols.dtype == np.int16
    assert vols.shape == (SHAPE[3], *SHAPE[:3])
    assert vols.flags.c_contiguous
    np.testing.assert_array_equal(vols[3], data[..., 3])
    assert geometry.tr == pytest.approx(1.5)


def test_nifti_tr_in_msec(tmp_path):
    path = _write_nifti(tmp_path / "ms.nii.gz", _int16_series(2), tr=800.0, t_unit="msec")
    _, geometry = load_nifti(path)
    assert geometry.tr == pytest.approx(0.8)


def test_nifti_without_tr_needs_tr_argument(tmp_path):
    path = _write_nifti(tmp_path / "notr.nii.gz", _int16_series(3), tr=0.0)
    with pytest.raises(ValueError, match=r"no repetition time.*tr="):
        load_nifti(path)
    with pytest.raises(ValueError, match="tr="):
        replay_nifti(path, wait_for_consumer=0.0)
    _, geometry = load_nifti(path, tr=1.25)
    assert geometry.tr == pytest.approx(1.25)


def test_scaled_or_non_int16_data_becomes_float32(tmp_path):
    data = _int16_series(4)
    vols, _ = load_nifti(_write_nifti(tmp_path / "scaled.nii.gz", data, tr=2.0, slope=0.5))
    assert vols.dtype == np.float32
    np.testing.assert_allclose(vols[2], data[..., 2] * 0.5)

    u8 = np.arange(np.prod(SHAPE), dtype=np.uint32).reshape(SHAPE).astype(np.uint8)
    vols, _ = load_nifti(_write_nifti(tmp_path / "u8.nii", u8, tr=2.0))
    assert vols.dtype == np.float32
    np.testing.assert_array_equal(vols[1], u8[..., 1].astype(np.float32))


def test_cifti_dtseries_replays_as_flat_vectors(tmp_path):
    voxels = cifti2.BrainModelAxis.from_mask(np.ones((2, 3, 2), bool), affine=np.eye(4))
    cortex = cifti2.BrainModelAxis.from_mask(np.ones(20, bool), name="CortexLeft")
    brain = voxels + cortex
    series = cifti2.SeriesAxis(start=0.0, step=0.72, size=5)
    data = np.random.default_rng(5).standard_normal((5, len(brain))).astype(np.float32)
    path = tmp_path / "run.dtseries.nii"
    cifti2.Cifti2Image(data, cifti2.Cifti2Header.from_axes((series, brain))).to_filename(path)

    vols, geometry = load_nifti(path)
    assert vols.shape == (5, len(brain), 1, 1)
    assert geometry.dims == (len(brain), 1, 1)
    assert geometry.voxel_size == (1.0, 1.0, 1.0)
    assert geometry.tr == pytest.approx(0.72)

    sid = f"test-replay-cifti-{uuid.uuid4()}"
    thread, result = _replay_in_thread(path, speed=20, source_id=sid)
    info, samples, _ = _receive(sid, 5)
    thread.join(10.0)
    assert result["sent"] == 5
    assert info.channel_format() == pylsl.cf_float32
    np.testing.assert_array_equal(samples, data)
    assert geometry_from_info(info) == geometry


def test_stop_event_and_loop(tmp_path):
    path = _write_nifti(tmp_path / "loop.nii.gz", _int16_series(6), tr=2.0)
    stop = threading.Event()
    seen: list[int] = []

    def on_volume(k: int, _t: float) -> None:
        seen.append(k)
        if k == 8:
            stop.set()

    sent = replay_nifti(
        path,
        speed=100,
        source_id=f"test-replay-loop-{uuid.uuid4()}",
        loop=True,
        wait_for_consumer=0.0,
        stop_event=stop,
        on_volume=on_volume,
    )
    assert sent == 9
    assert seen == list(range(9))
