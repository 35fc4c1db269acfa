"""``rtdecode bench``: the latency run over the real path, scaling fits, headroom arithmetic."""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rtdecode.bench import (
    ScalingConfig,
    add_bench_parser,
    analyse_timings,
    fit_growth,
    headroom,
    max_voxels,
    min_tr,
    percentiles,
    run_scaling,
    time_voxel_point,
)

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rtdecode")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


def _is_png(path: str | Path) -> bool:
    data = Path(path).read_bytes()
    return data[:8] == PNG and len(data) > 2000


def test_fit_growth_recovers_known_slopes():
    x = np.geomspace(1e4, 3e5, 6)
    rng = np.random.default_rng(0)
    for slope, growth in ((1.5, "super-linear"), (1.0, "linear"), (0.5, "sub-linear"), (0.0, "flat")):
        y = 0.002 * x**slope * np.exp(rng.normal(0, 0.01, x.size))
        fit = fit_growth(x, y)
        assert fit["slope"] == pytest.approx(slope, abs=0.03)
        assert fit["growth"] == growth and fit["r2"] > 0.99 - (slope == 0.0)
        assert math.exp(fit["intercept"]) == pytest.approx(0.002, rel=0.1)
    with pytest.raises(ValueError):
        fit_growth([5, 5], [1, 2])


def test_headroom_arithmetic_on_a_hand_made_case():
    costs = {"record": 5.0, "preprocess": 200.0, "decode": 50.0, "render": 300.0}
    tr, worker, load = min_tr(costs, margin=0.9)
    assert worker == "model thread" and load["model thread"] == 350.0
    assert tr == pytest.approx(0.35 / 0.9)
    # preprocess costs 1 µs per voxel, decode 0.1 µs per voxel + a fixed 300 ms render:
    fits = {
        "preprocess": {"slope": 1.0, "intercept": math.log(1e-3)},
        "decode": {"slope": 1.0, "intercept": math.log(1e-4)},
        "record": {"slope": 1.0, "intercept": math.log(1e-5)},
    }
    v, lim = max_voxels(2.0, fits, {"render": 300.0}, margin=0.9)
    assert lim == "preprocess thread" and v == pytest.approx(1.8e6, rel=1e-3)  # 1800 ms / 1 µs
    # with a slow render the model thread limits first: (1800 - 1700) ms / 0.1 µs = 1e6
    v, lim = max_voxels(2.0, fits, {"render": 1700.0}, margin=0.9)
    assert lim == "model thread" and v == pytest.approx(1e6, rel=1e-3)
    # a render longer than the budget: no voxel count keeps up
    assert max_voxels(2.0, fits, {"render": 2000.0}, margin=0.9) == (None, "model thread")
    report, text = headroom(
        costs, "the test setting", fits, trs=(2.0,), margin=0.9, measured_voxels=(1e4, 1e6)
    )
    assert report["min_tr_s"] == pytest.approx(0.3889, abs=1e-4)
    assert report["voxels"]["2"]["max_voxels"] == pytest.approx(1.8e6, rel=1e-3)
    assert report["voxels"]["2"]["limited_by"] == "preprocess thread"
    assert "At the test setting, this machine keeps up down to TR = 0.39 s" in text and "model thread" in text
    assert "up to ≈ 1.80 M voxels" in text and "extrapolated beyond" in text
    _, text = headroom(costs, "x", fits, trs=(2.0,), measured_voxels=(1e4, 3e5))  # far beyond: say so
    assert "more than the largest grid measured (300,000 voxels)" in text


def test_analyse_timings_per_stage_and_rate():
    timings = []
    for k in range(6):
        t = 10.0 + k  # one volume a second
        stamps = {
            "tr": k,
            "acquired": t,
            "received": t + 0.010,
            "recorded": t + 0.012,
            "preprocessed": t + 0.030,
        }
        if k >= 2:  # the decoder's lag: the first two TRs are never decoded
            stamps.update(decoded=t + 0.040, rendered=t + 0.340, output=t + 0.341)
        timings.append(stamps)
    a = analyse_timings(timings, tr_s=1.0, lag=2)
    assert a["stages"]["transport"]["p50"] == pytest.approx(10.0)
    assert a["stages"]["render"]["max"] == pytest.approx(300.0)
    assert a["spans"]["received_to_decoded"]["p99"] == pytest.approx(30.0)
    assert a["spans"]["received_to_clip"]["n"] == 4
    assert a["counts"] == {"timed_volumes": 6, "decodable": 4, "decoded": 4, "rendered": 4}
    # TR 6 was dropped under load (no timing line) and TR 7 was a bad volume: 5 decodable, 4 rendered
    vols = [(k, "ok") for k in range(7)] + [(7, "bad")]
    assert analyse_timings(timings, 1.0, 2, vols)["counts"]["decodable"] == 5
    assert a["sustained"]["clips_per_s"] == pytest.approx(1.0)
    assert a["per_tr"]["tr"] == [2, 3, 4, 5]
    assert percentiles([]) == {} and percentiles([1.0, float("nan")])["n"] == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_latency_real_path(tmp_path):
    """10 TRs at TR 0.25 s: simulator → LSL → engine with the default bundle, JSON and plots."""
    out = tmp_path / "latency"
    args = _parse(
        "latency",
        "--tr",
        "0.25",
        "--n-tr",
        "10",
        "--renderer",
        "bundle",
        "--backend",
        "torch",  # no engine export inside a test (tests/rtdecode/test_backends.py covers that)
        "--bundle",
        str(ROOT / "engines/default"),
        "--out",
        str(out),
        "--log-every",
        "0",
    )
    assert args.func(args) == 0
    result = json.loads((out / "latency-tr0.25.json").read_text())
    assert result["command"].startswith("rtdecode bench latency --tr 0.25 --n-tr 10")
    assert result["stream"]["voxels"] == 64 * 64 * 32 and result["stream"]["speed"] == pytest.approx(8.0)
    for span in ("received_to_decoded", "received_to_clip", "acquired_to_output"):
        q = result["latency_ms"]["spans"][span]
        assert 0 < q["p50"] <= q["p95"] <= q["p99"] <= q["max"] < 10_000
        assert q["n"] == result["counts"]["rendered"] >= 3
    assert set(result["latency_ms"]["stages"]) == {
        "transport",
        "record",
        "preprocess",
        "decode",
        "render",
        "output",
    }
    assert set(result["service_ms"]) == {"preprocess", "decode", "render", "record"}
    assert set(result["drops"]) == {"preprocess", "decode", "render"}
    assert result["counts"]["decodable"] == 10 - 3  # lags 2, 3: TRs 3..9 are decoded
    assert result["sustained"]["volumes_per_s"] == pytest.approx(4.0, rel=0.3)
    # the record holds every volume the simulator sent, byte-identical
    rec = result["record"]
    assert rec["all_recorded"] and rec["sent"] == rec["recorded"] == 10 and rec["status"] == "closed"
    assert set(result["budgets"]) == {"received_to_decoded_p99_ms", "received_to_clip_p99_ms"}
    assert result["headroom"]["min_tr_s"] > 0 and "keeps up down to TR" in result["headroom"]["text"]
    m = result["machine"]
    assert m["cores_logical"] >= 1 and m["memory_gb"] > 0 and m["cpu"] and m["torch"]
    assert len(m["load_before"]) == len(m["load_after"]) == 3
    assert len(result["plots"]) == 3 and all(_is_png(p) for p in result["plots"])
    assert len(result["per_tr"]["tr"]) == result["counts"]["rendered"]


def test_voxel_point_times_the_ingest_preprocess_and_decode_path():
    p = time_voxel_point(8000, 3, select=500)
    assert 6000 < p["voxels"] < 10000 and 0.2 < p["mask_voxels"] / p["voxels"] < 0.45
    assert p["decoder_voxels"] == 500
    assert all(p["ms"][s]["n"] == 2 and p["ms"][s]["p50"] > 0 for s in ("record", "preprocess", "decode"))


@pytest.mark.timeout(120)
def test_bench_scaling_small(tmp_path):
    import torch

    threads_before = torch.get_num_threads()
    cfg = ScalingConfig(
        axes=("voxels", "resolution", "backends"),
        voxels=(8000, 20000),
        voxel_trs=3,
        resolution=(16, 32),
        backends=("torch", "no-such-backend"),
        base_frames=4,
        base_resolution=32,
        base_steps=1,
        repeats=1,
        warmup=1,
        threads=1,  # one torch thread: two spinning on a busy machine make tiny renders take seconds
        bundle=ROOT / "engines/default",
        out=tmp_path,
    )
    result = run_scaling(cfg)
    saved = json.loads((tmp_path / "scaling.json").read_text())
    assert saved["machine"]["torch_threads"] == 1 and torch.get_num_threads() == threads_before
    assert saved["command"].startswith("rtdecode bench scaling --axes voxels,resolution,backends")
    vox = saved["axes"]["voxels"]
    assert [p["voxels"] for p in vox["points"]] == sorted(p["voxels"] for p in vox["points"])
    assert {"record", "preprocess", "decode"} <= set(vox["fits"]) and "offline" in vox["what"]
    res = saved["axes"]["resolution"]
    assert len(res["points"]) == 2 and "p50" in res["fits"]["total"]
    assert res["points"][0]["ms"]["total"]["p50"] > 0 and "trained" in res["what"]
    backends = saved["axes"]["backends"]
    assert backends["points"][0]["backend"] == "torch" and "no-such-backend" in backends["skipped"]
    assert "keeps up down to TR" in saved["headroom"]["text"] and "2" in saved["headroom"]["voxels"]
    assert result["plots"] and all(_is_png(p) for p in result["plots"])


def test_condition_bridge_feeds_ridge_conditions_to_the_diffusion_renderer():
    import torch

    from rtdecode.bench import _ConditionBridge
    from rtdecode.conditions import Conditions
    from rtdecode.models.autoencoder import FrameAutoencoder
    from rtdecode.models.video_denoiser import DenoiserConfig, VideoDenoiser
    from rtdecode.render.diffusion import DiffusionRenderer

    torch.manual_seed(0)
    cfg = DenoiserConfig(channels=(16, 32), embed_dim=32, n_concepts=8, frames=6, head_dim=8, groups=8)
    ae = FrameAutoencoder({"frame_size": 32, "block_out_channels": [32], "norm_num_groups": 8}).eval()
    text = lambda texts: torch.zeros(len(texts), cfg.embed_dim)  # noqa: E731
    bridge = _ConditionBridge(DiffusionRenderer(VideoDenoiser(cfg), ae, text, steps=1))
    ridge = Conditions(tr=4, source_tr=7, blurry=np.random.default_rng(0).random((4, 16, 16, 3), np.float32))
    clip = bridge.render(ridge)
    assert clip.shape == (6, 32, 32, 3) and clip.dtype == np.uint8
    assert ridge.semantic is None  # the engine's conditions are left as decoded


def test_headroom_command_anchors_the_voxel_fits_at_the_real_path(tmp_path, capsys):
    scaling = {
        "axes": {
            "voxels": {
                "points": [{"voxels": 1e4}, {"voxels": 3e5}],
                "fits": {"preprocess": {"p95": {"slope": 1.0, "intercept": math.log(1e-4)}}},
            }
        },
        "headroom": {"setting": "64×64×32 with 16 frames", "costs_ms": {"preprocess": 13.1, "render": 300.0}},
    }
    # the real path measured preprocess 10× slower than the offline fit: 131 ms at 131,072 voxels
    latency = {
        "stream": {"voxels": 131072},
        "service_ms": {"preprocess": {"p95": 131.072}, "render": {"p95": 400.0}, "decode": {"p95": 50.0}},
        "headroom": {"setting": "64×64×32 (131,072 voxels) with 16 frames of 64×64"},
    }
    (tmp_path / "s.json").write_text(json.dumps(scaling))
    (tmp_path / "l.json").write_text(json.dumps(latency))
    args = _parse("headroom", "--scaling", str(tmp_path / "s.json"), "--latency", str(tmp_path / "l.json"))
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert (
        "At 64×64×32 (131,072 voxels) with 16 frames of 64×64, this machine keeps up down to TR = 0.50 s"
        in out
    )
    # preprocess is 1 µs per voxel now: 1800 ms at TR 2 → 1.8 M voxels (6× the largest measured: flagged)
    assert "the fit says ≈ 1.80 M (limited by the preprocess thread)" in out


def test_load_diffusion_renderer_beside_a_ridge_bundle():
    from rtdecode.bench import load_diffusion_renderer

    r = load_diffusion_renderer(ROOT / "engines/default", "student")
    spec = json.loads((ROOT / "engines/default/renderer.json").read_text())
    assert r.steps == spec["student_steps"] and r.frames_per_tr == spec["config"]["frames"]
    assert load_diffusion_renderer(ROOT / "engines/default", "teacher", steps=3).steps == 3
