"""Compiled engines: ONNX export + checker, onnxruntime parity, the build cache, the backend choice.

Small model configs keep every export to a few seconds; one module-scoped fixture builds the
decode and render stages' engines once and the tests share them. GPU tests need CUDA and
TensorRT and are skipped (with that reason) elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from rtdecode.backends import (  # noqa: E402
    BackendUnavailableError,
    compile_module,
    list_entries,
    resolve_backend,
)
from rtdecode.backends import choice as choice_mod  # noqa: E402
from rtdecode.backends.choice import cuda_available, module_available  # noqa: E402
from rtdecode.backends.export import TOLERANCE, check_onnx, export_onnx, max_difference, within_tolerance  # noqa: E402
from rtdecode.backends.models import (  # noqa: E402
    AutoencoderDecodeGraph,
    DecoderGraph,
    DenoiserGraph,
    TokensGraph,
    ae_inputs,
    compile_decoder_stage,
    compile_render_stage,
    decoder_inputs,
    denoiser_inputs,
    tokens_inputs,
)

HAS_TRT = cuda_available() and module_available("tensorrt")
needs_gpu = pytest.mark.skipif(not HAS_TRT, reason="needs a CUDA GPU and TensorRT")

WORDS = ["a", "red", "blue", "circle", "square", "moving", "left", "right", "up", "down", "star", "ring"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Other jobs share the machine: keep torch to one thread in these tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_decoder_config():
    from rtdecode.models.decoders import DecoderConfig

    return DecoderConfig(
        n_voxels=48,
        hidden=32,
        depth=1,
        embed_dim=16,
        n_concepts=8,
        vocab_size=16,
        max_words=4,
        word_dim=8,
        mask_frames=2,
        mask_size=4,
        frames=4,
        latent_shape=(4, 8, 8),
        token_dim=16,
        temporal_layers=1,
        pixel_size=4,
    )


def small_neurons_decoder(seed: int = 0):
    """A NeuronsDecoder over an in-memory bundle with a small random BrainDecoder."""
    from rtdecode.bundle import Bundle
    from rtdecode.decode.neurons import NeuronsDecoder
    from rtdecode.models import module_tensors
    from rtdecode.models.decoders import BrainDecoder

    torch.manual_seed(seed)
    cfg = small_decoder_config()
    net = BrainDecoder(cfg).eval()
    tensors = {
        **module_tensors(net, "decoder."),
        "mask_index": np.arange(cfg.n_voxels, dtype=np.int64),
        "select": np.arange(cfg.n_voxels, dtype=np.int64),
    }
    spec = {"config": net.config, "words": WORDS, "motion_mean": [0.0] * 6, "motion_std": [1.0] * 6}
    return NeuronsDecoder(Bundle(Path("<memory>"), {"lags": [2, 3], "decoder": spec}, tensors))


def small_renderer(seed: int = 0):
    """A DiffusionRenderer with a small random denoiser and autoencoder (4 frames, 8×8×4 latents)."""
    from rtdecode.models.autoencoder import FrameAutoencoder
    from rtdecode.models.video_denoiser import DenoiserConfig, VideoDenoiser
    from rtdecode.render.diffusion import DiffusionRenderer

    torch.manual_seed(seed)
    den = VideoDenoiser(
        DenoiserConfig(
            channels=(16, 32), embed_dim=16, n_concepts=8, frames=4, mask_frames=2, head_dim=8, groups=8
        )
    ).eval()
    ae = FrameAutoencoder({"frame_size": 32, "block_out_channels": [32], "norm_num_groups": 8}).eval()

    def text(texts):
        return np.ones((len(texts), 16), np.float32) / 4.0

    return DiffusionRenderer(den, ae, text, steps=2, strength=0.7)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Torch and onnxruntime versions of the (small) decode and render stages, built once."""
    cache = tmp_path_factory.mktemp("engines")
    dec_t, dec_o = small_neurons_decoder(), small_neurons_decoder()
    ren_t, ren_o = small_renderer(), small_renderer()
    torch.set_num_threads(1)
    compile_decoder_stage(dec_o, "onnxruntime", cache, {"bundle": "test"}, threads=1)
    compile_render_stage(ren_o, "onnxruntime", cache, {"bundle": "test"}, threads=1)
    return {"cache": cache, "dec_t": dec_t, "dec_o": dec_o, "ren_t": ren_t, "ren_o": ren_o}


def _runners(stages):
    return {
        "decoder": stages["dec_o"].model.runner,
        "denoiser": stages["ren_o"].model.forward_runner,
        "tokens": stages["ren_o"].model.tokens_runner,
        "ae-decode": stages["ren_o"].ae.runner,
    }


# ------------------------------------------------------------------------------------ export


def test_each_model_exports_to_a_checked_onnx_graph(stages):
    runners = _runners(stages)
    assert {r.backend for r in runners.values()} == {"onnxruntime"}
    for name, runner in runners.items():
        path = runner.entry.artifact
        check_onnx(path)  # onnx.checker, full check
        model = onnx.load(str(path))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        dims = {
            i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input
        }
        if name == "decoder":  # evaluation decodes many windows: only the batch axis is dynamic
            assert dims == {"x": ["batch", 2, 48]}
        else:  # one clip per call: every shape static
            assert all(isinstance(d, int) for shape in dims.values() for d in shape), dims


def test_fp16_graph_for_tensorrt(tmp_path):
    # TensorRT 11 networks are strongly typed: the fp16 engine comes from an fp16 graph.
    den = small_renderer().model
    path = tmp_path / "tokens16.onnx"
    export_onnx(TokensGraph(den), tokens_inputs(den.config), path, precision="fp16")
    check_onnx(path)
    model = onnx.load(str(path))
    weights = [t for t in model.graph.initializer if np.prod(t.dims) > 16]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    # The interface stays float32 (casts inside), so every backend takes the same inputs.
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.FLOAT}
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {onnx.TensorProto.FLOAT}


def _contrib_nodes(model) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(n.op_type for n in model.graph.node if n.domain == "com.microsoft"))


def test_onnxruntime_graphs_use_fused_attention_and_gelu_and_tensorrt_graphs_do_not(stages, tmp_path):
    # onnxruntime's denoiser engine: every diffusers attention is one MultiHeadAttention, every
    # GELU one Gelu (no Erf left), no 5-D transposes; the plain export (TensorRT's input) has no
    # contrib operators.
    den = stages["ren_t"].model
    engine = onnx.load(str(_runners(stages)["denoiser"].entry.artifact))
    count = {name: sum(type(m).__name__ == name for m in den.modules()) for name in ("Attention", "GEGLU")}
    assert _contrib_nodes(engine) == {"MultiHeadAttention": count["Attention"], "Gelu": count["GEGLU"]}
    assert not any(n.op_type == "Erf" for n in engine.graph.node)
    weights = {t.name for t in engine.graph.initializer}  # GEGLU: Split only weights (folded at load)
    assert all(n.input[0] in weights for n in engine.graph.node if n.op_type == "Split")
    perms = [list(a.ints) for n in engine.graph.node if n.op_type == "Transpose" for a in n.attribute]
    assert perms and all(len(p) <= 4 for p in perms), perms
    plain = tmp_path / "plain.onnx"
    export_onnx(DenoiserGraph(den), denoiser_inputs(den.config, (8, 8)), plain)
    assert _contrib_nodes(onnx.load(str(plain))) == {}


def test_ort_fusions_compute_what_diffusers_computes_and_are_undone():
    from rtdecode.backends.fusions import FusedAttnProcessor, ort_fusions

    den = small_renderer(seed=4).model
    inputs = denoiser_inputs(den.config, (8, 8))
    inputs["x"] = inputs["x"] * 3 + 1  # a group norm with a mean and scale to remove

    def forms() -> list:
        return [(type(m.processor) if hasattr(m, "processor") else m.forward) for m in den.modules()]

    before = forms()
    with torch.no_grad():
        ref = den(**inputs)
        with ort_fusions(den) as counts:
            assert counts == {"Attention": 10, "GEGLU": 5, "TransformerTemporalModel": 3}
            assert FusedAttnProcessor in forms()
            fused = den(**inputs)
        assert forms() == before
        torch.testing.assert_close(den(**inputs), ref, atol=0, rtol=0)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)


def test_ort_fusions_leave_attention_they_cannot_fuse_alone():
    from diffusers.models.attention_processor import Attention

    from rtdecode.backends.fusions import ort_fusions

    plain = Attention(16, heads=2, dim_head=8)
    residual = Attention(16, heads=2, dim_head=8, residual_connection=True)
    with ort_fusions(nn.ModuleList([plain, residual])) as counts:
        assert counts == {"Attention": 1}
        assert type(residual.processor).__name__ != "FusedAttnProcessor"


# ------------------------------------------------------------------------------------ parity


def test_onnxruntime_parity_with_torch(stages):
    dec = stages["dec_t"].model
    den, ae = stages["ren_t"].model, stages["ren_t"].ae
    cases = {
        "decoder": (DecoderGraph(dec), decoder_inputs(dec.config, batch=3)),  # dynamic batch: 3 ≠ traced
        "denoiser": (DenoiserGraph(den), denoiser_inputs(den.config, (8, 8))),
        "tokens": (TokensGraph(den), tokens_inputs(den.config)),
        "ae-decode": (AutoencoderDecodeGraph(ae), ae_inputs(ae, 4)),
    }
    runners = _runners(stages)
    for name, (graph, inputs) in cases.items():
        with torch.no_grad():
            ref = graph(**inputs)
        out = runners[name](**inputs)
        assert list(out) == list(ref), name
        assert within_tolerance(out, ref, "fp32"), (name, max_difference(out, ref), TOLERANCE["fp32"])
    assert torch.equal(out["frames"], runners["ae-decode"](**cases["ae-decode"][1])["frames"])


def test_caption_text_tower_runs_on_the_engine(tmp_path):
    from rtdecode.backends.models import CompiledCaptionEncoder
    from rtdecode.models.worldclip import WorldCLIP
    from rtdecode.render.diffusion import CaptionEncoder

    torch.manual_seed(0)
    clip = WorldCLIP({"embed_dim": 16, "text": {"words": WORDS, "max_words": 6, "width": 16, "heads": 2}})
    ren = small_renderer()
    ren.text_encoder = CaptionEncoder(clip.eval())
    captions = ["a red circle moving left", "a blue star", "a ring up"]
    ref = ren.text_encoder(captions)
    torch_emb = ren.caption_embedding(captions[0])
    compile_render_stage(ren, "onnxruntime", tmp_path, {"bundle": "test"}, threads=1)
    assert isinstance(ren.text_encoder, CompiledCaptionEncoder)
    assert ren.text_encoder.runner.name == "text-encoder" and ren.text_encoder.runner.built
    out = ren.text_encoder(captions)  # three captions: the batch axis is dynamic
    assert out.shape == ref.shape and np.abs(out - ref).max() <= TOLERANCE["fp32"][0]
    emb = ren.caption_embedding(captions[0])  # a new text encoder empties the caption cache
    assert emb is not torch_emb and torch.allclose(emb, torch_emb, atol=1e-5)
    nodes = {n.op_type for n in onnx.load(str(ren.text_encoder.runner.entry.artifact)).graph.node}
    assert "Gelu" in nodes and "Erf" not in nodes  # onnxruntime's fused GELU in the text tower too


def test_stages_swap_backend_with_one_call(stages):
    rng = np.random.default_rng(3)
    for tr in range(2):
        window = rng.standard_normal((2, 48)).astype(np.float32)
        ct, co = stages["dec_t"].decode(window, tr), stages["dec_o"].decode(window, tr)
        assert co.caption == ct.caption  # greedy ids from the unrolled graph = torch generate
        for name in ("blurry", "semantic", "concepts", "mask", "motion", "keyframe", "pixels"):
            np.testing.assert_allclose(
                getattr(co, name), getattr(ct, name), atol=1e-4, rtol=1e-4, err_msg=name
            )
        ft, fo = stages["ren_t"].render(ct), stages["ren_o"].render(ct)
        assert ft.shape == fo.shape == (4, 32, 32, 3) and fo.dtype == np.uint8
        assert np.abs(ft.astype(int) - fo.astype(int)).max() <= 1  # uint8 rounding
        torch.testing.assert_close(
            stages["ren_o"].last_latents, stages["ren_t"].last_latents, atol=1e-4, rtol=1e-4
        )


def test_latent_renderer_reuses_the_cached_engine_and_torch_changes_nothing(stages):
    from rtdecode.render import LatentRenderer

    window = np.random.default_rng(5).standard_normal((2, 48)).astype(np.float32)
    with_pixels = stages["dec_t"].decode(window, 0)
    assert with_pixels.pixels.shape == (4, 4, 4, 3) and 0 <= with_pixels.pixels.min() <= 1
    cond = replace(with_pixels, pixels=None)  # a decoder without the pixel head: latents only
    plain, compiled = LatentRenderer(small_renderer().ae), LatentRenderer(small_renderer().ae)
    blurry = plain.render(with_pixels)  # the pixels, resampled; the autoencoder is not needed
    assert blurry.shape == (4, 32, 32, 3) and blurry.dtype == np.uint8
    assert abs(float(blurry.mean()) / 255 - float(with_pixels.pixels.mean())) < 0.05
    compile_render_stage(compiled, "onnxruntime", stages["cache"], {"bundle": "test"}, frames=4)
    assert not compiled.ae.runner.built  # same weights, shapes and key: the fixture's engine
    assert np.abs(plain.render(cond).astype(int) - compiled.render(cond).astype(int)).max() <= 1
    eager = small_renderer()
    model, ae = eager.model, eager.ae
    compile_render_stage(eager, "torch")
    compile_decoder_stage(stages["dec_t"], "torch")
    assert eager.model is model and eager.ae is ae
    assert not hasattr(stages["dec_t"].model, "runner")


# ------------------------------------------------------------------------------------ int8


def test_int8_calibration_records_the_renderers_own_inputs():
    from rtdecode.backends.quantize import render_calibration

    ren = small_renderer()
    den_feeds, ae_feeds = render_calibration(ren, clips=3, seed=1)
    assert len(den_feeds) == 3 * ren.steps and len(ae_feeds) == 3
    example = denoiser_inputs(ren.model.config, (8, 8))
    for feed in den_feeds:
        assert {k: v.shape for k, v in feed.items()} == {k: tuple(v.shape) for k, v in example.items()}
        assert np.isfinite(feed["x"]).all() and feed["x"].std() > 0.1  # real clips, not zeros
    times = sorted({round(float(f["t"][0]), 4) for f in den_feeds})
    assert times == [0.35, 0.7]  # the 2-step schedule from strength 0.7
    assert ae_feeds[0]["latents"].shape == (4, 4, 8, 8)
    again, _ = render_calibration(small_renderer(), clips=3, seed=1)
    np.testing.assert_array_equal(again[0]["x"], den_feeds[0]["x"])  # deterministic by seed


def test_int8_render_engines_quantize_convolutions_and_stay_close(stages, tmp_path):
    ren_t, ren_q = small_renderer(), small_renderer()
    compile_render_stage(ren_q, "onnxruntime", tmp_path, {"bundle": "test"}, threads=1, precision="int8")
    for runner in (ren_q.model.forward_runner, ren_q.ae.runner):
        key = json.loads(runner.entry.key_file.read_text())["key"]
        assert key["precision"] == "int8" and key["calibration"]["ops"] == ["Conv"]
        ops = {n.op_type for n in onnx.load(str(runner.entry.artifact)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert json.loads(ren_q.model.tokens_runner.entry.key_file.read_text())["key"]["precision"] == "fp32"
    window = np.random.default_rng(7).standard_normal((2, 48)).astype(np.float32)
    cond = stages["dec_t"].decode(window, 3)
    ft, fq = ren_t.render(cond), ren_q.render(cond)
    diff = np.abs(ft.astype(int) - fq.astype(int))
    assert diff.mean() < 4 and diff.max() < 64, (diff.mean(), diff.max())
    fp32 = stages["ren_o"].render(cond)
    assert np.abs(fp32.astype(int) - ft.astype(int)).max() <= 1 < diff.max()  # int8 is not fp32


def test_engines_build_asks_for_the_int8_engines_a_session_uses():
    from rtdecode.backends.models import bundle_engines
    from rtdecode.backends.quantize import CALIBRATION

    root = Path(__file__).resolve().parents[2]
    specs = {s.name: s for s in bundle_engines(root / "engines/default", "student", "int8")[0]}
    for name in ("denoiser-student", "ae-decode"):  # as compile_render_stage keys them
        assert specs[name].precision == "int8" and specs[name].key_parts == {"calibration": CALIBRATION}
        assert callable(specs[name].calibration)
    assert specs["tokens-student"].precision is None and specs["decoder"].precision is None
    assert specs["text-encoder"].precision is None and specs["text-encoder"].dynamic_batch
    feeds = specs["ae-decode"].calibration()  # the denoiser's renders, F frames each
    assert len(feeds) == CALIBRATION["clips"] and feeds[0]["latents"].shape == (16, 4, 16, 16)


def test_int8_needs_onnxruntime_and_calibration(tmp_path):
    den = small_renderer().model
    inputs = tokens_inputs(den.config)
    with pytest.raises(ValueError, match="calibration missing"):
        compile_module(TokensGraph(den), inputs, "tokens", "onnxruntime", tmp_path, precision="int8")
    with pytest.raises(ValueError, match="int8 engines are built for onnxruntime"):
        compile_module(
            TokensGraph(den), inputs, "tokens", "torch", tmp_path, precision="int8", calibration=list
        )


def test_precision_choice_per_stage():
    from rtdecode.backends.choice import stage_precisions

    assert stage_precisions("onnxruntime") == (None, "int8")  # auto: int8 render on the CPU
    assert stage_precisions("tensorrt") == (None, None)  # auto: the GPU default (fp16)
    assert stage_precisions("onnxruntime", "fp32") == ("fp32", "fp32")
    assert stage_precisions("onnxruntime", "int8") == (None, "int8")  # the decoder stays float
    with pytest.raises(ValueError, match="unknown precision"):
        stage_precisions("onnxruntime", "int4")


def test_outputs_are_safe_to_keep_with_and_without_io_binding(stages):
    from rtdecode.backends.ort import OrtRunner

    runner = _runners(stages)["tokens"]
    den = stages["ren_t"].model
    bound = OrtRunner(runner.entry.artifact, threads=1, io_binding=True)
    for r in (runner, bound):
        a = r(**tokens_inputs(den.config))["tokens"]
        kept = a.clone()
        r(**{k: v + 1 for k, v in tokens_inputs(den.config).items()})
        assert torch.equal(a, kept)  # not overwritten by the next call
    torch.testing.assert_close(bound(**tokens_inputs(den.config)), runner(**tokens_inputs(den.config)))


# ------------------------------------------------------------------------------------- cache


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": torch.tanh(self.lin(x))}


def test_cache_reuses_valid_entries_and_rebuilds_changed_or_corrupt_ones(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(2, 6)
    # One real export; later builds copy its bytes (the cache logic is what is under test here).
    exports: list[tuple[int, ...]] = []
    template: list[bytes] = []

    def fake_export(module, inputs, path, **kw):
        exports.append(tuple(inputs["x"].shape))
        if not template:
            names = export_onnx(module, inputs, path, **kw)
            template.append(Path(path).read_bytes())
            return names
        Path(path).write_bytes(template[0])
        return ["y"]

    monkeypatch.setattr("rtdecode.backends.compile.export_onnx", fake_export)

    def build(**kw):
        inputs = {"x": kw.pop("x", x)}
        return compile_module(
            model, inputs, "tiny", "onnxruntime", tmp_path, kw.pop("key", {"bundle": "aaaa"})
        )

    first = build()
    assert first.built and first.reason == "missing" and len(exports) == 1
    key = json.loads(first.entry.key_file.read_text())["key"]
    assert {"bundle", "weights", "backend_version", "device", "inputs", "torch", "precision"} <= set(key)
    assert key["device"] == "cpu" and key["inputs"] == [["x", [2, 6], "float32"]]

    again = build()
    assert not again.built and again.entry.artifact == first.entry.artifact and len(exports) == 1  # loaded

    assert build(key={"bundle": "bbbb"}).built  # another bundle
    assert build(x=torch.randn(5, 6)).built and exports[-1] == (5, 6)  # another shape
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.lin.bias += 1
    assert build().built  # other weights (the module digest is part of the key)
    model.load_state_dict(state)
    assert not build().built

    # A corrupt artifact (same size, other bytes) is rebuilt, never loaded.
    data = bytearray(first.entry.artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.entry.artifact.write_bytes(bytes(data))
    fixed = build()
    assert fixed.built and fixed.reason == "checksum mismatch"
    with torch.no_grad():
        torch.testing.assert_close(fixed(x=x)["y"], model(x)["y"], atol=1e-5, rtol=1e-5)
    first.entry.artifact.write_bytes(first.entry.artifact.read_bytes()[:100])  # truncated
    assert build().reason == "size mismatch"

    # A foreign key file under the right name is rebuilt too.
    doc = json.loads(first.entry.key_file.read_text())
    doc["key"]["device"] = "NVIDIA H100"
    first.entry.key_file.write_text(json.dumps(doc))
    foreign = build()
    assert foreign.built and foreign.reason == "foreign key (differs in device)"
    assert not build().built

    # A new onnxruntime version is another key: the old entry stays, and shows as stale.
    monkeypatch.setattr("rtdecode.backends.compile.backend_version", lambda b: "onnxruntime 99.0")
    assert build().built
    monkeypatch.undo()
    statuses = {r["key"]["backend_version"]: r["status"] for r in list_entries(tmp_path)}
    assert statuses["onnxruntime 99.0"] == "stale"
    assert "valid" in statuses.values()
    (tmp_path / "broken.json").write_text("{not json")
    assert any(r["status"] == "corrupt" for r in list_entries(tmp_path))


def test_cli_lists_the_cache(stages, capsys):
    import argparse

    from rtdecode.backends.cli import add_engines_parser

    parser = argparse.ArgumentParser(prog="rtdecode")
    add_engines_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["engines", "list", "--cache-dir", str(stages["cache"])])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for name in ("decoder", "denoiser-student", "tokens-student", "ae-decode"):
        assert name in out
    assert "x=Bx2x48" in out and "valid" in out


# ------------------------------------------------------------------------------------ choice


def test_auto_falls_back_to_onnxruntime_without_cuda(monkeypatch):
    monkeypatch.setattr(choice_mod, "cuda_available", lambda: False)
    assert resolve_backend("auto") == "onnxruntime"
    assert resolve_backend("onnxruntime") == "onnxruntime"
    assert resolve_backend("torch") == "torch"
    if not HAS_TRT:
        assert resolve_backend("auto") == "onnxruntime"  # on this machine, unpatched too
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("tvm")


@pytest.mark.parametrize("backend", ["tensorrt", "torch-tensorrt"])
def test_gpu_backends_without_cuda_raise_one_clear_error(backend, monkeypatch):
    monkeypatch.setattr(choice_mod, "cuda_available", lambda: False)
    with pytest.raises(BackendUnavailableError) as exc:
        resolve_backend(backend)
    msg = str(exc.value)
    assert f"backend {backend!r} cannot run on this machine" in msg and "a CUDA GPU" in msg
    package = "tensorrt" if backend == "tensorrt" else "torch_tensorrt"
    if not module_available(package):
        assert f"the Python package {package!r}" in msg and "rtdecode[gpu]" in msg
    with pytest.raises(BackendUnavailableError):  # compile_module refuses before any work
        compile_module(Tiny(), {"x": torch.zeros(1, 6)}, "tiny", backend, "/nonexistent")


def test_tensorrt_module_imports_without_tensorrt():
    import rtdecode.backends.tensorrt as trt_mod

    assert callable(trt_mod.build_plan) and trt_mod.TensorRTRunner.backend == "tensorrt"


# --------------------------------------------------------------------------------------- GPU


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_matches_onnxruntime(stages, tmp_path, precision):
    den = stages["ren_t"].model
    graph, inputs = DenoiserGraph(den), denoiser_inputs(den.config, (8, 8))
    trt = compile_module(graph, inputs, "denoiser", "tensorrt", tmp_path, precision=precision)
    assert trt.built and trt.entry.artifact.suffix == ".plan"
    ref = _runners(stages)["denoiser"](**inputs)
    assert within_tolerance(trt(**inputs), ref, precision), max_difference(trt(**inputs), ref)
    assert not compile_module(graph, inputs, "denoiser", "tensorrt", tmp_path, precision=precision).built


@needs_gpu
@pytest.mark.gpu
def test_tensorrt_dynamic_batch_decoder(stages, tmp_path):
    dec = stages["dec_t"].model
    graph = DecoderGraph(dec)
    trt = compile_module(
        graph,
        decoder_inputs(dec.config),
        "decoder",
        "tensorrt",
        tmp_path,
        precision="fp32",
        dynamic_batch=True,
    )
    inputs = decoder_inputs(dec.config, batch=3)
    ref = _runners(stages)["decoder"](**inputs)
    assert within_tolerance(trt(**inputs), ref, "fp32"), max_difference(trt(**inputs), ref)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.skipif(not module_available("torch_tensorrt"), reason="needs a CUDA GPU and torch-tensorrt")
def test_torch_tensorrt_matches_onnxruntime(stages, tmp_path):
    den = stages["ren_t"].model
    graph, inputs = DenoiserGraph(den), denoiser_inputs(den.config, (8, 8))
    tt = compile_module(graph, inputs, "denoiser", "torch-tensorrt", tmp_path, precision="fp16")
    ref = _runners(stages)["denoiser"](**inputs)
    assert within_tolerance(tt(**inputs), ref, "fp16"), max_difference(tt(**inputs), ref)


@needs_gpu
@pytest.mark.gpu
def test_auto_picks_tensorrt_with_cuda():
    assert resolve_backend("auto") == "tensorrt"
