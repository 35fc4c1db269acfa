"""``rtdecode evaluate`` end to end on the tiny dataset: every row of the table is produced."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rtdecode.train.decoders import DecodersConfig
from rtdecode.train.evaluate import (
    CONSTANT,
    LINEAR_PATH,
    EvaluateConfig,
    _with_linear_path,
    evaluate,
    merge_results,
    references,
)
from rtdecode.train.evaluate_render import blocks, same_scene_truth
from scanner_sim.dataset import Dataset

DEFAULT = Path(__file__).resolve().parents[2] / "engines" / "default"


def test_blocks_are_contiguous_and_spread():
    idx = blocks(100, 10, 3)
    assert len(idx) == 30 and idx[0] == 0 and idx[-1] == 99
    assert np.all(np.diff(idx[:10]) == 1)


def test_scene_truth_follows_the_movie(tiny_dataset):
    with Dataset(tiny_dataset) as ds:
        t = ds.config.segment_trs
        index = np.arange(2 * t)
        same = same_scene_truth(ds, index)
        scene = ds.stimuli["scene"][()]
        f = ds.config.frames_per_tr
    assert not same[0] and not same[t]  # a segment's first TR continues nothing
    cuts = [k for k in range(1, t) if not same[k]]
    assert cuts and all(scene[k * f + f // 2] != scene[k * f - f // 2] for k in cuts)
    assert all(scene[k * f + f // 2] == scene[k * f - f // 2] for k in range(1, t) if same[k])


def test_evaluate_writes_every_row(tiny_dataset, tmp_path):
    torch.set_num_threads(1)
    cfg = EvaluateConfig(
        subjects=("sub-01",),
        out=tmp_path / "table",
        clips=4,
        block=2,
        curve_clips=1,
        decoder=DecodersConfig(
            dataset=tiny_dataset, encoders=DEFAULT, out=tmp_path / "bundle", steps=40, n_voxels=400, warmup=5
        ),
    )
    res = evaluate(cfg, progress=False)
    rows = res["rows"]
    names = (
        "ridge",
        "retrieval",
        "decoders (blurry video)",
        "decoders (through the autoencoder)",
        "decoders, noiseless fMRI (blurry video; ceiling)",
        LINEAR_PATH,
    )
    for name in (*names, "rtdecode (full)", "rtdecode − fusion", "oracle"):
        row = rows[f"{name} (sub-01)"]
        assert np.isfinite(row["ssim_gray"]) and 0 <= row["video_2way"] <= 1
    full = rows["rtdecode (full) (sub-01)"]
    assert full["ms_per_clip"] > 0 and "boundary_clip_pcc_same" in full
    assert "concept_top1" in res["subtasks"]["sub-01"]["noiseless"]
    fusion = res["subtasks"]["sub-01"]["fusion"]
    assert 0 < fusion["threshold"] <= 1 and 0 <= fusion["test"]["auc"] <= 1
    curve = res["subtasks"]["steps_curve"]
    assert {"teacher 16 steps", "student 2 steps"} <= set(curve)
    # Measured compute: 16 denoiser calls cost more than 2, and a clip costs something.
    assert curve["teacher 16 steps"]["gflop_per_clip"] > curve["student 2 steps"]["gflop_per_clip"] > 0
    assert (tmp_path / "table" / "table.md").exists()
    # Paired comparisons with the baselines on the same clips (blocks of 2 TRs: 2 groups).
    cmp = res["subtasks"]["sub-01"]["comparisons"]["decoders (blurry video)"]["ridge"]["frame_2way"]
    assert cmp["groups"] == 2 and cmp["lo"] <= cmp["diff"] <= cmp["hi"]
    assert "decoders (blurry video) − retrieval" in (tmp_path / "table" / "comparisons.md").read_text()
    # The rendered rows too: the full system against the baselines, an ablation against the full system.
    comparisons = res["subtasks"]["sub-01"]["comparisons"]
    assert set(comparisons["rtdecode (full)"]) == {"ridge", "retrieval"}
    assert set(comparisons["rtdecode − fusion"]) == {"rtdecode (full)"}
    assert "ssim_gray" in comparisons["rtdecode − fusion"]["rtdecode (full)"]
    assert "ridge" not in comparisons  # the baselines are references, not compared rows


def test_references_pair_ablations_with_the_full_system():
    methods = ["ridge", "retrieval", "decoders (blurry video)", "rtdecode (full)", "rtdecode − mask"]
    methods.append("oracle")
    assert references("decoders (blurry video)", methods) == ["ridge", "retrieval"]
    assert references("rtdecode − mask", methods) == ["rtdecode (full)"]
    assert references("rtdecode − mask", ["ridge", "rtdecode − mask"]) == []
    assert references("oracle", methods) == ["ridge", "retrieval"]
    assert references("retrieval", methods) == []


def test_linear_path_is_the_mean_of_decoders_and_ridge():
    pix, lin = np.zeros((2, 3, 4, 4, 3)), np.ones((2, 3, 4, 4, 3))
    both = _with_linear_path({"decoders (blurry video)": pix, "ridge": lin})
    assert set(both) == {LINEAR_PATH} and np.allclose(both[LINEAR_PATH], 0.5)
    assert _with_linear_path({"ridge": lin}) == {}  # without the pixel head there is nothing to add


def test_constant_row_is_the_mean_training_clip_and_trains_no_decoder(tiny_dataset, tmp_path):
    """The floor of every column: the same clip (the training clips' mean) for every test TR,
    compared with the baselines; without decoder rows no decoder is trained."""
    from rtdecode.train.decoders import DecoderData, _splits, prepare
    from rtdecode.train.evaluate import _constant_recon

    dcfg = DecodersConfig(dataset=tiny_dataset, out=tmp_path / "bundle", n_voxels=400, warmup=5)
    cfg = EvaluateConfig(subjects=("sub-01",), out=tmp_path / "table", clips=4, block=2, decoder=dcfg)
    res = evaluate(replace(cfg, methods=("ridge", "constant")), progress=False)
    assert not (tmp_path / "bundle" / "checkpoints").exists()
    row = res["rows"][f"{CONSTANT} (sub-01)"]
    assert 0 <= row["frame_2way"] <= 1 and np.isfinite(row["ssim_gray"])
    assert set(res["subtasks"]["sub-01"]["comparisons"][CONSTANT]) == {"ridge"}
    prep, select = prepare(dcfg, False)
    with Dataset(tiny_dataset) as ds:
        data = DecoderData(prep, ds.runs, ds.config.segment_trs, select, dcfg.lags, dcfg.warmup)
        fit, val, _ = _splits(ds.runs)
        samples = data.samples(fit + val)
        const = _constant_recon(data, ds, samples, 3)
        f, t = ds.config.frames_per_tr, ds.config.segment_trs
        first = ds.frames(0)[: t * f].reshape(t, f, *const.shape[2:])[data.stim_trs[0]]
        n_segments = len({data.runs[r].segment for r, _ in samples})
    assert const.shape[0] == 3 and np.array_equal(const[0], const[2])
    expected_share = first.astype(np.float64) / 255 / (n_segments * len(data.stim_trs))
    assert np.all(const[0] + 1e-6 >= expected_share)  # every training clip is in the mean


def test_merge_keeps_every_runs_comparisons(tmp_path):
    """A later run with other rows adds its comparisons; it replaces only those of its own rows."""
    import json

    def run(name: str, rows: dict, comparisons: dict, extra: dict) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "table.json").write_text(json.dumps({"rows": rows}))
        (d / "subtasks.json").write_text(json.dumps({"sub-01": {"comparisons": comparisons, **extra}}))
        return d

    cell = {"diff": 0.1, "lo": 0.05, "hi": 0.2, "p": 0.01, "groups": 8}
    first = run(
        "a",
        {"ridge (sub-01)": {"ssim_gray": 0.5}, "decoders (sub-01)": {"ssim_gray": 0.6}},
        {"decoders": {"ridge": {"ssim_gray": cell}}},
        {"concept_top1": {"value": 0.6}},
    )
    second = run(
        "b",
        {"ridge (sub-01)": {"ssim_gray": 0.5}, f"{CONSTANT} (sub-01)": {"ssim_gray": 0.4}},
        {CONSTANT: {"ridge": {"ssim_gray": {**cell, "diff": -0.1}}}},
        {},
    )
    merged = merge_results((first, second), tmp_path / "out")
    cmp = merged["subtasks"]["sub-01"]["comparisons"]
    assert set(cmp) == {"decoders", CONSTANT}
    assert merged["subtasks"]["sub-01"]["concept_top1"]["value"] == 0.6
    assert merged["rows"][f"{CONSTANT} (mean of 1)"]["ssim_gray"] == 0.4
    text = (tmp_path / "out" / "comparisons.md").read_text()
    assert "decoders − ridge" in text and f"{CONSTANT} − ridge" in text
