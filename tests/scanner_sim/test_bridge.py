"""DICOM-folder bridge: series written with pydicom come out as ordered, intact volumes."""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pylsl
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from rtdecode.lsl import geometry_from_info
from scanner_sim.bridge import DicomBridge, unpack_mosaic

TILE = 16
N_SLICES = 10
GRID = 4


# --------------------------------------------------------------------------------------------
# Writing DICOM files


def _dataset(pixels: np.ndarray, series_uid: str, **attrs) -> FileDataset:
    """An MR Image Storage dataset (explicit VR little endian) around uint16 pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 5
    ds.RepetitionTime = 1500
    ds.PixelSpacing = [2.5, 2.0]
    ds.SliceThickness = 3.0
    ds.SpacingBetweenSlices = 3.5
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-2:]
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def _encode(ds: FileDataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _volumes(n: int, shape: tuple[int, int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4096, size=shape).astype(np.uint16) for _ in range(n)]


def _mosaic_image(volume: np.ndarray) -> np.ndarray:
    """Tile an (x, y, z) volume into a Siemens mosaic image (rows, cols)."""
    nx, ny, nz = volume.shape
    image = np.zeros((GRID * ny, GRID * nx), dtype=volume.dtype)
    for k in range(nz):
        r, c = divmod(k, GRID)
        image[r * ny : (r + 1) * ny, c * nx : (c + 1) * nx] = volume[:, :, k].T
    return image


def _mosaic_bytes(volume: np.ndarray, number: int, series_uid: str) -> bytes:
    ds = _dataset(
        _mosaic_image(volume),
        series_uid,
        AcquisitionNumber=number,
        InstanceNumber=number,
        ImageType=["ORIGINAL", "PRIMARY", "M", "MOSAIC"],
        ImagePositionPatient=[-80.0, -80.0, -20.0],
    )
    ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
    ds.add_new((0x0019, 0x100A), "US", volume.shape[2])
    return _encode(ds)


def _write_mosaic(folder: Path, volume: np.ndarray, number: int, series_uid: str) -> Path:
    path = folder / f"001_000005_{number:06d}.dcm"
    path.write_bytes(_mosaic_bytes(volume, number, series_uid))
    return path


def _slice_bytes(volume: np.ndarray, number: int, k: int, series_uid: str) -> bytes:
    """Slice ``k`` of an (x, y, z) volume as a single-slice file (z = 4 mm steps)."""
    ds = _dataset(
        volume[:, :, k].T,
        series_uid,
        AcquisitionNumber=number,
        InstanceNumber=(number - 1) * volume.shape[2] + k + 1,
        ImagePositionPatient=[-30.0, -20.0, -10.0 + 4.0 * k],
    )
    return _encode(ds)


def _bridge(folder: Path, **kwargs) -> tuple[DicomBridge, list]:
    received: list = []
    kwargs.setdefault("wait_for_consumer", 0.0)
    kwargs.setdefault("source_id", f"test-bridge-{uuid.uuid4()}")
    bridge = DicomBridge(folder, on_volume=lambda k, v, t: received.append((k, v.copy(), t)), **kwargs)
    return bridge, received


def _poll(bridge: DicomBridge, times: int = 2, pause: float = 0.01) -> list[int]:
    pushed: list[int] = []
    for _ in range(times):
        pushed += bridge.poll_once()
        time.sleep(pause)
    return pushed


# --------------------------------------------------------------------------------------------
# Tests


def test_unpack_mosaic_convention():
    volume = _volumes(1, (TILE, 12, 7))[0]
    # 7 slices → a 3×3 grid of 12-row × 16-column tiles; two tiles stay empty.
    image = np.zeros((36, 48), np.uint16)
    for k in range(7):
        r, c = divmod(k, 3)
        image[r * 12 : (r + 1) * 12, c * 16 : (c + 1) * 16] = volume[:, :, k].T
    np.testing.assert_array_equal(unpack_mosaic(image, 7), volume)


def test_mosaic_series_unpacks_to_the_source_volumes(tmp_path):
    volumes = _volumes(4, (TILE, TILE, N_SLICES))
    uid = generate_uid()
    for i, vol in enumerate(volumes):
        _write_mosaic(tmp_path, vol, i + 1, uid)
    bridge, received = _bridge(tmp_path)
    with bridge:
        assert bridge.poll_once() == []  # sizes seen once: not yet stable
        assert bridge.poll_once() == [0, 1, 2, 3]
        assert _poll(bridge, 2) == []  # each file is processed once

    assert [k for k, _, _ in received] == [0, 1, 2, 3]
    for (_, got, _), vol in zip(received, volumes, strict=True):
        assert got.dtype == np.int16
        np.testing.assert_array_equal(got, vol)
    geo = bridge.geometry
    assert geo.dims == (TILE, TILE, N_SLICES)
    assert geo.voxel_size == pytest.approx((2.0, 2.5, 3.5))  # x = column spacing
    assert geo.tr == pytest.approx(1.5)
    # Axial, LPS → RAS; the corner moved from the mosaic's to the first tile's.
    expected = np.array([[-2.0, 0, 0, 32.0], [0, -2.5, 0, 20.0], [0, 0, 3.5, -20.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(geo.affine_matrix, expected)
    assert bridge.volumes_sent == 4 and bridge.files_skipped == 0 and bridge.events == []


def test_single_slice_series_written_out_of_order(tmp_path):
    n_slices = 6
    volumes = _volumes(3, (TILE, 12, n_slices), seed=1)
    uid = generate_uid()
    rng = np.random.default_rng(2)

    def write(number: int) -> None:
        for k in rng.permutation(n_slices):
            name = f"{uuid.uuid4().hex}.dcm"  # names carry no order
            (tmp_path / name).write_bytes(_slice_bytes(volumes[number - 1], number, k, uid))

    bridge, received = _bridge(tmp_path, slices=n_slices, reorder_timeout_s=10.0)
    write(3)
    write(2)
    assert _poll(bridge, 3) == []  # complete, but held until volume 1 arrives
    write(1)
    assert _poll(bridge, 2) == [0, 1, 2]
    bridge.close()

    for (k, got, _), vol in zip(received, volumes, strict=True):
        np.testing.assert_array_equal(got, vol, err_msg=f"volume {k}")
    geo = bridge.geometry
    assert geo.dims == (TILE, 12, n_slices)
    assert geo.voxel_size == pytest.approx((2.0, 2.5, 4.0))  # measured slice distance
    np.testing.assert_allclose(geo.affine_matrix[:3, 3], [30.0, 20.0, -10.0])
    assert bridge.events == []


def test_single_slice_count_is_learned(tmp_path):
    n_slices = 5
    volumes = _volumes(3, (8, 8, n_slices), seed=3)
    uid = generate_uid()
    files = [(n, k) for n in (1, 2, 3) for k in range(n_slices)]
    for i in np.random.default_rng(4).permutation(len(files)):
        n, k = files[i]
        (tmp_path / f"img{i:03d}.dcm").write_bytes(_slice_bytes(volumes[n - 1], n, k, uid))
    bridge, received = _bridge(tmp_path)
    assert _poll(bridge, 4) == [0, 1, 2]
    for (_, got, _), vol in zip(received, volumes, strict=True):
        np.testing.assert_array_equal(got, vol)


def test_multiframe_file_is_one_volume(tmp_path):
    volume = _volumes(1, (8, 6, 4), seed=5)[0]
    order = [2, 0, 3, 1]  # frames stored out of slice order
    frames = np.stack([volume[:, :, k].T for k in order])
    per_frame = []
    for k in order:
        pos = Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, 3.0 * k]
        item = Dataset()
        item.PlanePositionSequence = Sequence([pos])
        per_frame.append(item)
    ds = _dataset(
        frames, generate_uid(), AcquisitionNumber=1, PerFrameFunctionalGroupsSequence=Sequence(per_frame)
    )
    (tmp_path / "mf.dcm").write_bytes(_encode(ds))
    bridge, received = _bridge(tmp_path)
    assert _poll(bridge, 2) == [0]
    np.testing.assert_array_equal(received[0][1], volume)
    assert bridge.geometry.voxel_size == pytest.approx((2.0, 2.5, 3.0))


def test_half_written_file_is_read_once_complete(tmp_path):
    volume = _volumes(1, (TILE, TILE, N_SLICES), seed=6)[0]
    data = _mosaic_bytes(volume, 1, generate_uid())
    path = tmp_path / "vol0001.dcm"
    path.write_bytes(data[: len(data) // 2])
    bridge, received = _bridge(tmp_path, give_up_s=5.0)
    assert _poll(bridge, 4) == []  # size stable, but the pixel data is cut short: retried
    with path.open("ab") as f:
        f.write(data[len(data) // 2 :])
    assert _poll(bridge, 2) == [0]
    np.testing.assert_array_equal(received[0][1], volume)
    assert bridge.events == [] and bridge.files_skipped == 0
    assert _poll(bridge, 2) == [] and len(received) == 1


def test_garbage_file_is_reported_and_skipped(tmp_path, caplog):
    volumes = _volumes(3, (TILE, TILE, N_SLICES), seed=7)
    uid = generate_uid()
    _write_mosaic(tmp_path, volumes[0], 1, uid)
    (tmp_path / "junk.dcm").write_bytes(np.random.default_rng(8).bytes(3000))
    bridge, received = _bridge(tmp_path, give_up_s=0.3)
    with caplog.at_level(logging.WARNING, logger="scanner_sim.bridge"):
        assert _poll(bridge, 2) == [0]
        _write_mosaic(tmp_path, volumes[1], 2, uid)
        time.sleep(0.35)
        assert _poll(bridge, 2) == [1]  # the bridge goes on
        _write_mosaic(tmp_path, volumes[2], 3, uid)
        assert _poll(bridge, 2) == [2]
    assert bridge.files_skipped == 1
    assert [kind for kind, _ in bridge.events] == ["unreadable"]
    assert bridge.events[0][1].startswith("junk.dcm: ")
    assert any("junk.dcm" in r.getMessage() for r in caplog.records)
    for (_, got, _), vol in zip(received, volumes, strict=True):
        np.testing.assert_array_equal(got, vol)


def test_gap_is_reported_after_reorder_timeout(tmp_path):
    volumes = _volumes(5, (TILE, TILE, N_SLICES), seed=9)
    uid = generate_uid()
    for number in (1, 2, 4, 5):
        _write_mosaic(tmp_path, volumes[number - 1], number, uid)
    bridge, _ = _bridge(tmp_path, reorder_timeout_s=0.3)
    assert _poll(bridge, 2) == [0, 1]  # 4 and 5 wait for 3
    time.sleep(0.35)
    assert bridge.poll_once() == [3, 4]  # indices skip the missing TR
    assert [kind for kind, _ in bridge.events] == ["gap"]
    _write_mosaic(tmp_path, volumes[2], 3, uid)  # too late now
    assert _poll(bridge, 2) == []
    assert [kind for kind, _ in bridge.events] == ["gap", "late"]
    assert bridge.files_skipped == 1


def test_mismatching_volume_is_skipped(tmp_path):
    uid = generate_uid()
    _write_mosaic(tmp_path, _volumes(1, (TILE, TILE, N_SLICES))[0], 1, uid)
    _write_mosaic(tmp_path, _volumes(1, (8, 8, N_SLICES))[0], 2, uid)  # 8×8 tiles
    _write_mosaic(tmp_path, _volumes(1, (TILE, TILE, N_SLICES))[0], 3, uid)
    bridge, _ = _bridge(tmp_path)
    assert _poll(bridge, 2) == [0, 2]
    assert [kind for kind, _ in bridge.events] == ["mismatch"]
    assert bridge.volumes_sent == 2 and bridge.files_skipped == 1


def test_missing_tr_and_slice_count_raise_clear_errors(tmp_path):
    vol = _volumes(1, (TILE, TILE, N_SLICES))[0]
    ds = _dataset(
        _mosaic_image(vol),
        generate_uid(),
        AcquisitionNumber=1,
        ImageType=["ORIGINAL", "PRIMARY", "M", "MOSAIC"],
    )
    del ds.RepetitionTime
    (tmp_path / "a.dcm").write_bytes(_encode(ds))
    bridge, _ = _bridge(tmp_path)
    bridge.poll_once()
    with pytest.raises(ValueError, match="slices="):
        bridge.poll_once()
    bridge, received = _bridge(tmp_path, slices=N_SLICES)
    bridge.poll_once()
    with pytest.raises(ValueError, match="tr="):
        bridge.poll_once()
    bridge, received = _bridge(tmp_path, slices=N_SLICES, tr=2.0)
    assert _poll(bridge, 2) == [0]
    np.testing.assert_array_equal(received[0][1], vol)
    assert bridge.geometry.tr == 2.0


def test_existing_files_can_be_ignored_and_run_stops_when_idle(tmp_path):
    volumes = _volumes(3, (TILE, TILE, N_SLICES), seed=11)
    uid = generate_uid()
    _write_mosaic(tmp_path, volumes[0], 1, uid)  # from before the bridge started
    bridge, received = _bridge(tmp_path, existing=False, poll_s=0.02, reorder_timeout_s=0.2)
    _write_mosaic(tmp_path, volumes[1], 2, uid)
    _write_mosaic(tmp_path, volumes[2], 3, uid)
    start = time.monotonic()
    assert bridge.run(idle_timeout=0.5) == 2
    assert time.monotonic() - start < 5.0
    assert [k for k, _, _ in received] == [0, 1]
    np.testing.assert_array_equal(received[0][1], volumes[1])
    assert bridge.events == []  # starting mid-series is not a gap


def test_lsl_inlet_receives_volumes_in_order(tmp_path):
    volumes = _volumes(5, (TILE, TILE, N_SLICES), seed=10)
    uid = generate_uid()
    sid = f"test-bridge-lsl-{uuid.uuid4()}"
    _write_mosaic(tmp_path, volumes[1], 2, uid)  # arrives before volume 1
    _write_mosaic(tmp_path, volumes[0], 1, uid)
    bridge = DicomBridge(tmp_path, source_id=sid, poll_s=0.02, wait_for_consumer=10.0)
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, kwargs={"stop_event": stop, "max_volumes": 5}, daemon=True)
    thread.start()
    try:
        found = pylsl.resolve_bypred(f"source_id='{sid}'", 1, 10.0)
        assert found
        inlet = pylsl.StreamInlet(found[0], max_buflen=60)
        info = inlet.info(5.0)
        inlet.open_stream(5.0)
        for number in (3, 4, 5):  # the rest arrives while the bridge runs
            _write_mosaic(tmp_path, volumes[number - 1], number, uid)
            time.sleep(0.05)
        buf = np.zeros((5, info.channel_count()), np.int16)
        stamps: list[float] = []
        deadline = time.monotonic() + 10.0
        while len(stamps) < 5 and time.monotonic() < deadline:
            _, ts = inlet.pull_chunk(
                timeout=0.5, max_samples=5 - len(stamps), dest_obj=buf[len(stamps) :], min_samples=1
            )
            stamps.extend(ts)
        thread.join(10.0)
        assert not thread.is_alive()
    finally:
        stop.set()
        bridge.close()

    assert info.channel_format() == pylsl.cf_int16
    assert len(stamps) == 5 and np.all(np.diff(stamps) > 0)
    for sample, vol in zip(buf, volumes, strict=True):
        np.testing.assert_array_equal(sample.reshape(TILE, TILE, N_SLICES), vol)
    geometry = geometry_from_info(info)
    assert geometry == bridge.geometry
    assert geometry.dims == (TILE, TILE, N_SLICES)
    assert geometry.voxel_size == pytest.approx((2.0, 2.5, 3.5))
    assert geometry.tr == pytest.approx(1.5)
    assert info.nominal_srate() == pytest.approx(1 / 1.5)
