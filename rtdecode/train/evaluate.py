"""The paper's evaluation table on the simulated test set: ``rtdecode evaluate``.

For every subject: the decoder (all sub-tasks) is trained — or resumed from its checkpoints —
on the training runs, and two baselines are fitted on the same inputs: ridge regression to
pixels and Nishimoto-style retrieval from a library of training clips. Every method
reconstructs the held-out test clips (fMRI averaged over the repeats, as cc2017) and is scored
with the evaluation models (never training targets) by :func:`rtdecode.metrics.evaluate_clips`;
the decoder's sub-tasks are scored beside their chance levels. The constant row shows the mean
training clip for every test clip: it knows nothing of the brain, so a method's margin over it
is what the brain gave that method (its n-way scores are far above 1/n, and on the simulated
test set above the baselines'). The ceiling row is the same
decoder trained and tested on the simulator's noiseless BOLD (``/bold_clean``, all visual
voxels): what the model reaches when only the simulated brain limits it. Results: a markdown
table and JSON under ``out``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from rtdecode.config import config_to_dict
from rtdecode.metrics import COLUMNS, column_info, evaluate_clips, paired_bootstrap, write_table
from rtdecode.models.text import WordTokenizer
from rtdecode.render import resize_clip
from rtdecode.train.data import frame_targets, noiseless_subject
from rtdecode.train.decoders import (
    DecoderData,
    DecodersConfig,
    _splits,
    prepare,
    train_decoder,
)
from rtdecode.train.evaluate_render import (
    ABLATIONS,
    blocks,
    calibrate_fusion_on_runs,
    consecutive_similarity,
    decoded_conditions,
    fusion_roc,
    oracle_conditions,
    same_scene_truth,
    score_rows,
    steps_curve,
)
from rtdecode.train.interpret import roi_saliency
from rtdecode.train.retrieval import RetrievalBaseline, clip_features
from rtdecode.train.ridge import _pca, fit_ridge
from rtdecode.train.targets import Targets, compute_targets
from scanner_sim import stimuli
from scanner_sim.dataset import Dataset

__all__ = ["EvaluateConfig", "evaluate", "load_stimulus_models", "scorers"]

log = logging.getLogger("rtdecode.train.evaluate")


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of ``rtdecode evaluate``."""

    subjects: tuple[str, ...] = ("sub-01", "sub-02", "sub-03")
    out: Path = field(default=Path("benchmarks/results/decoding"), metadata={"help": "table directory"})
    clips: int = field(default=240, metadata={"help": "test TRs scored per subject (0: all)"})
    block: int = field(default=24, metadata={"help": "scored test TRs come in contiguous blocks of this"})
    methods: tuple[str, ...] = field(
        default=("ridge", "retrieval", "decoders", "ceiling", "rtdecode"),
        metadata={
            "help": "ridge,retrieval,decoders,ceiling (decoders on noiseless fMRI),rtdecode,"
            "constant (the mean training clip: no brain information)"
        },
    )
    ceiling_subjects: int = field(
        default=1, metadata={"help": "the ceiling row for the first N subjects (a decoder each)"}
    )
    ablations: bool = field(default=True, metadata={"help": "renderer ablation and oracle rows"})
    curve_clips: int = field(default=96, metadata={"help": "test TRs of the steps curve (first subject)"})
    engines: tuple[str, ...] = field(
        default=(),
        metadata={"help": "also render rtdecode (full) through these engines: onnxruntime, onnxruntime-int8"},
    )
    merge: tuple[Path, ...] = field(
        default=(), metadata={"help": "combine earlier runs' output directories (e.g. one per subject)"}
    )
    decoder: DecodersConfig = field(default_factory=DecodersConfig)


BASELINES = ("ridge", "retrieval")
FULL = "rtdecode (full)"
LINEAR_PATH = "decoders + ridge (blurry video, mean of the two)"
CONSTANT = "constant: the mean training clip"
# Methods that need the subject's decoder trained.
NEEDS_DECODER = ("decoders", "rtdecode")


def load_stimulus_models(directory: Path) -> tuple[dict, str]:
    """The encoders and evaluation models saved by ``rtdecode train encoders``, and their digest."""
    from rtdecode.train.encoders import encoders_digest, read_encoders

    return read_encoders(directory), encoders_digest(directory)


def scorers(models: dict):
    """The evaluation models as the callables :func:`evaluate_clips` takes (float [0, 1] input)."""

    def frames(f: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(f.transpose(0, 3, 1, 2), np.float32))

    @torch.no_grad()
    def frame_cls(f):
        return models["eval_frame"].predict_proba(frames(f)).numpy()

    @torch.no_grad()
    def video_cls(c):
        x = torch.from_numpy(np.ascontiguousarray(c.transpose(0, 1, 4, 2, 3), np.float32))
        return models["eval_video"].predict_proba(x).numpy()

    @torch.no_grad()
    def embed(f):
        return models["eval_embed"].encode_image(frames(f)).numpy()

    return frame_cls, video_cls, embed


def _ground_truth(ds: Dataset, index: np.ndarray) -> np.ndarray:
    """(n, F, H, W, 3) uint8 stimulus clips of global TR indices."""
    f, t = ds.config.frames_per_tr, ds.config.segment_trs
    out = []
    for seg in np.unique(index // t):
        frames = ds.frames(int(seg))
        for k in index[index // t == seg] % t:
            out.append(frames[k * f : (k + 1) * f])
    return np.stack(out)


def _ridge_recon(data: DecoderData, ds: Dataset, fit_samples: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Classic linear reconstruction: ridge from the window to 4 frames of 16×16 pixels."""
    f = ds.config.frames_per_tr
    cache: dict[int, np.ndarray] = {}

    def pix(samples):
        rows = []
        for r, s in samples:
            seg = data.runs[r].segment
            if seg not in cache:
                cache[seg] = frame_targets(ds.frames(seg), f, 4, 16)
            rows.append(cache[seg][s].reshape(-1))
        return np.stack(rows)

    y = pix(fit_samples)
    mean, basis = _pca(y, 256)
    x = data.windows(fit_samples).reshape(len(fit_samples), -1)
    n_val = len(x) // 10
    w, b, alpha, _ = fit_ridge(
        x[n_val:], (y[n_val:] - mean) @ basis.T, (1e3, 1e4, 3e4, 1e5), x[:n_val], (y[:n_val] - mean) @ basis.T
    )
    w, b, _, _ = fit_ridge(x, (y - mean) @ basis.T, (alpha,))
    pred = np.clip((x_test.reshape(len(x_test), -1) @ w + b) @ basis + mean, 0, 1).reshape(-1, 4, 16, 16, 3)
    return pixel_clips(pred, ds.config.stimulus.size, f)


def _constant_recon(data: DecoderData, ds: Dataset, fit_samples: np.ndarray, n: int) -> np.ndarray:
    """The mean training clip, for each of ``n`` test clips: what a method that knows only the
    stimulus statistics, and nothing of the brain, would show."""
    index = np.unique(data.target_index(fit_samples))  # every training TR once (not per repeat)
    t = ds.config.segment_trs
    # a segment at a time: all training clips at once would take about a gigabyte
    total = sum(
        _ground_truth(ds, index[index // t == seg]).sum(0, dtype=np.float64) for seg in np.unique(index // t)
    )
    return np.broadcast_to((total / len(index) / 255).astype(np.float32), (n, *total.shape))


def _retrieval_recon(
    data: DecoderData, ds: Dataset, targets: Targets, fit_samples: np.ndarray, x_test: np.ndarray
) -> np.ndarray:
    """Nishimoto-style: predicted features → mean of the 10 best-matching training clips."""
    f, t = ds.config.frames_per_tr, ds.config.segment_trs
    train_segments = sorted({data.runs[r].segment for r, _ in fit_samples})
    lib_index = np.concatenate([seg * t + data.stim_trs for seg in train_segments])
    coarse = np.stack([frame_targets(ds.frames(seg), f, 4, 8) for seg in train_segments])
    coarse = coarse[:, data.stim_trs].reshape(len(lib_index), -1)
    library, _ = clip_features(targets.image_emb[lib_index], coarse)
    pos = {g: i for i, g in enumerate(lib_index)}
    fit_index = data.target_index(fit_samples)
    feats = library[[pos[g] for g in fit_index]]
    x = data.windows(fit_samples).reshape(len(fit_samples), -1)
    model = RetrievalBaseline.fit(x, feats, library, lib_index)
    frames_cache: dict[int, np.ndarray] = {}

    def clip(g: int) -> np.ndarray:
        seg, k = divmod(int(g), t)
        if seg not in frames_cache:
            frames_cache[seg] = ds.frames(seg)
        return frames_cache[seg][k * f : (k + 1) * f]

    return model.reconstruct(x_test.reshape(len(x_test), -1), clip)


def pixel_clips(clips: np.ndarray, size: tuple[int, int], frames: int | None = None) -> np.ndarray:
    """Small decoded pixel clips ``(N, F', h, w, 3)`` resampled to ``frames`` (default: as many
    as they have) frames of the stimulus ``size``, clipped to [0, 1]."""
    return np.stack([np.clip(resize_clip(c, frames or len(c), size), 0, 1) for c in clips])


def _decoder_recon(run, models: dict, keep: np.ndarray, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The decoder's blurry video of the scored test TRs: in pixels (when it has the pixel
    head) and its latents decoded through the autoencoder."""
    out = {}
    if "pixels" in run.test_outputs:
        pix = run.test_outputs["pixels"][keep]
        out["blurry video"] = pixel_clips(pix, size)
    with torch.no_grad():
        lat = run.test_outputs["blurry"][keep]
        n, fr = lat.shape[:2]
        frames = models["ae"].decode(lat.reshape(n * fr, *lat.shape[2:])).numpy()
    out["through the autoencoder"] = frames.transpose(0, 2, 3, 1).reshape(n, fr, *frames.shape[2:], 3)
    return out


def _with_linear_path(recon: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The decoders' blurry pixels averaged with ridge's (equal weights, fixed beforehand, not
    tuned on the test set): does a linear path beside the network add to either alone?"""
    pix, lin = recon.get("decoders (blurry video)"), recon.get("ridge")
    if pix is None or lin is None:
        return {}
    return {LINEAR_PATH: (pix + lin) / 2}


def _ceiling_run(dcfg: DecodersConfig, targets: Targets, tokenizer, progress: bool):
    """The decoder trained and tested on the subject's noiseless BOLD (all visual voxels)."""
    clean = noiseless_subject(dcfg.dataset, dcfg.subject)
    select = np.arange(len(clean.mask_index))
    dim = targets.image_emb.shape[1]
    return train_decoder(dcfg, targets, tokenizer, dim, clean, select, progress, tag="-noiseless")


def _fusion(run, data, fit_runs, ds, tokenizer, test_index, same_true, keep) -> dict:
    """The calibrated same-scene threshold, with its ROC on the scored test TRs."""
    fusion = calibrate_fusion_on_runs(run, data, fit_runs, ds, tokenizer)
    sim = consecutive_similarity(run.test_outputs["semantic"][keep], test_index[keep])
    return {**fusion, "test": fusion_roc(sim, same_true)}


def _render_rows(
    cfg, run, models, targets, index, keep, truth, same_true, threshold, scorers, first, per_clip
):
    """rtdecode (full) through the bundle's diffusion student, ablations, oracle, steps curve;
    every row's per-clip scores go to ``per_clip``."""
    from safetensors.numpy import load_file

    from rtdecode.render.diffusion import diffusion_renderer

    spec = json.loads((Path(cfg.decoder.encoders) / "renderer.json").read_text())
    tensors = load_file(str(Path(cfg.decoder.encoders) / "renderer.safetensors"))
    student = diffusion_renderer(tensors, spec, models, "student")
    conds = decoded_conditions(run.test_outputs, run.test_index, keep)
    changes = {"rtdecode (full)": {}}
    if cfg.ablations:
        changes.update({f"rtdecode {k}": v for k, v in ABLATIONS.items()})
    rows = score_rows(student, conds, truth, index, same_true, scorers, threshold, changes, per_clip)
    for engine in cfg.engines:
        compiled = _compiled_student(engine, tensors, spec, models, cfg.decoder.encoders)
        row = {f"rtdecode (full; {engine.replace('-', ' ')})": {}}
        rows.update(score_rows(compiled, conds, truth, index, same_true, scorers, threshold, row, per_clip))
    if cfg.ablations:
        oracle = oracle_conditions(targets, index)
        oracle_row = {"oracle": {}}
        rows.update(
            score_rows(student, oracle, truth, index, same_true, scorers, threshold, oracle_row, per_clip)
        )
    curve = {}
    if first and cfg.curve_clips:
        sel = slice(0, cfg.curve_clips)
        teacher = diffusion_renderer(tensors, spec, models, "teacher")
        curve = steps_curve(
            {"teacher": teacher, "student": student},
            {"teacher": (1, 2, 4, 8, 16), "student": (1, 2, 4)},
            conds[sel],
            truth[sel],
            scorers,
        )
    return rows, curve


def _compiled_student(engine: str, tensors: dict, spec: dict, models: dict, bundle: Path):
    """The bundle's student with its networks on ``onnxruntime`` or ``onnxruntime-int8`` engines."""
    from rtdecode.backends.models import bundle_digest, compile_render_stage
    from rtdecode.render.diffusion import diffusion_renderer

    if engine not in ("onnxruntime", "onnxruntime-int8"):
        raise ValueError(f"engines: onnxruntime or onnxruntime-int8, got {engine!r}")
    student = diffusion_renderer(tensors, spec, models, "student")
    precision = "int8" if engine.endswith("int8") else "fp32"
    key = {"bundle": bundle_digest(bundle)}
    return compile_render_stage(student, "onnxruntime", key_parts=key, precision=precision)


def references(method: str, methods: list[str]) -> list[str]:
    """What a row is compared with: an ablation (``rtdecode − …``) with the full system (does
    removing the part cost something?), every other non-baseline row with each baseline."""
    if method in BASELINES:
        return []
    if method.startswith("rtdecode − "):
        return [FULL] if FULL in methods else []
    return [b for b in BASELINES if b in methods]


def paired_comparisons(per_clip: dict[str, dict], groups: np.ndarray) -> dict:
    """Each row minus its references (:func:`references`), column by column, on the same
    clips: the mean difference, its block-bootstrap 95 % interval and p-value
    (:func:`~rtdecode.metrics.paired_bootstrap`; ``groups``: each clip's block of TRs)."""
    out: dict = {}
    for method, scores in per_clip.items():
        for base in references(method, list(per_clip)):
            ref = per_clip[base]
            out.setdefault(method, {})[base] = {
                k: paired_bootstrap(v, ref[k], groups) for k, v in scores.items() if k in ref
            }
    return out


def format_comparisons(subtasks: dict) -> str:
    """Markdown of every subject's comparisons: difference [95 % interval] per column, with
    the columns where the row is significantly better than its reference (interval beyond 0
    in the column's good direction) in bold; for an ablation minus the full system, a bold
    cell means removing the part helped."""
    cols = [c for c in COLUMNS if not c.startswith("clip_pcc")]
    lines = [
        "Row minus reference on the same test clips: mean difference [95 % block-bootstrap interval];",
        "**bold**: better at p < 0.05, plain: no significant difference or worse. References: the",
        "baselines, and for an ablation the full system (bold there: removing the part helped).",
        "",
        "| subject | row − reference | " + " | ".join(column_info(c)[0] for c in cols) + " |",
        "| :--- | :--- |" + " ---: |" * len(cols),
    ]
    for subject, info in subtasks.items():
        for method, bases in info.get("comparisons", {}).items():
            for base, cmp in bases.items():
                cells = []
                for c in cols:
                    if c not in cmp:
                        cells.append("–")
                        continue
                    d = cmp[c]
                    better = (d["lo"] > 0) if column_info(c)[1] else (d["hi"] < 0)
                    cell = f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                    cells.append(f"**{cell}**" if better else cell)
                lines.append(f"| {subject} | {method} − {base} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _method(row: str) -> str:
    return row.rsplit(" (", 1)[0]


def merge_results(dirs: tuple[Path, ...], out: Path) -> dict:
    """Combine the tables of several ``rtdecode evaluate`` runs (e.g. one per subject, run in
    parallel) into one, with a per-method mean over subjects (``… (mean)``) first. Later runs
    override earlier rows of the same name, a subject's sub-task entries of the same key and
    the paired comparisons of the same row (other rows' comparisons are kept)."""
    rows: dict[str, dict[str, float]] = {}
    subtasks: dict[str, dict] = {}
    for d in dirs:
        rows.update(json.loads((Path(d) / "table.json").read_text())["rows"])
        for key, info in json.loads((Path(d) / "subtasks.json").read_text()).items():
            entry = subtasks.setdefault(key, {})  # a later run adds to a subject's entries
            for name, value in info.items():
                if name == "comparisons":  # per compared row: a run with other rows keeps these
                    # (runs made before the baselines became references only compared them too)
                    kept = {m: v for m, v in value.items() if m not in BASELINES}
                    entry.setdefault(name, {}).update(kept)
                else:
                    entry[name] = value
    means: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(_method(r) for r in rows):
        group = [v for r, v in rows.items() if _method(r) == method]
        keys = [k for k in group[0] if all(g.get(k) is not None for g in group)]
        means[f"{method} (mean of {len(group)})"] = {k: float(np.mean([g[k] for g in group])) for k in keys}
    merged = {**means, **rows}
    meta = {"command": "rtdecode evaluate (per subject) + --merge", "merged": [str(d) for d in dirs]}
    write_table(Path(out) / "table.md", merged, meta)
    (Path(out) / "subtasks.json").write_text(json.dumps(subtasks, indent=1, default=float))
    (Path(out) / "comparisons.md").write_text(format_comparisons(subtasks))
    return {"rows": merged, "subtasks": subtasks}


def evaluate(cfg: EvaluateConfig, progress: bool = True) -> dict:
    """Train/fit every method on every subject, score them, write the table (or, with
    ``cfg.merge``, combine earlier runs' tables)."""
    if cfg.merge:
        return merge_results(cfg.merge, cfg.out)
    models, digest = load_stimulus_models(cfg.decoder.encoders)
    tokenizer = WordTokenizer(stimuli.caption_vocabulary())
    targets = compute_targets(cfg.decoder.dataset, models, digest, tokenizer, 24, progress)
    frame_cls, video_cls, embed = scorers(models)
    rows: dict[str, dict[str, float]] = {}
    subtasks: dict[str, dict] = {}
    for subject in cfg.subjects:
        t0 = time.time()
        dcfg = replace(cfg.decoder, subject=subject)
        prep, select = prepare(dcfg, progress)
        run = None
        if set(NEEDS_DECODER) & set(cfg.methods):
            run = train_decoder(dcfg, targets, tokenizer, targets.image_emb.shape[1], prep, select, progress)
        subtasks[subject] = dict(run.metrics) if run is not None else {}
        with Dataset(dcfg.dataset) as ds:
            data = DecoderData(prep, ds.runs, ds.config.segment_trs, select, dcfg.lags, dcfg.warmup)
            fit_runs, val_runs, test_runs = _splits(ds.runs)
            fit_samples = data.samples(fit_runs + val_runs)
            x_test, test_index = data.averaged(test_runs)
            n = len(test_index)
            keep = blocks(n, cfg.block, cfg.clips // cfg.block) if cfg.clips else np.arange(n)
            truth = _ground_truth(ds, test_index[keep]).astype(np.float32) / 255
            if run is not None:
                voxel_roi = ds.subject(subject)["roi"][()].ravel()[run.mask_index[select]]
                subtasks[subject]["roi_saliency"] = roi_saliency(
                    run.model, x_test[:: max(1, len(x_test) // 200)], voxel_roi
                )
            recon = {}
            size = ds.config.stimulus.size
            if "decoders" in cfg.methods:
                for kind, clips in _decoder_recon(run, models, keep, size).items():
                    recon[f"decoders ({kind})"] = clips
            if "ceiling" in cfg.methods and subject in cfg.subjects[: cfg.ceiling_subjects]:
                ceiling = _ceiling_run(dcfg, targets, tokenizer, progress)
                subtasks[subject]["noiseless"] = dict(ceiling.metrics)
                for kind, clips in _decoder_recon(ceiling, models, keep, size).items():
                    recon[f"decoders, noiseless fMRI ({kind}; ceiling)"] = clips
            if "ridge" in cfg.methods:
                recon["ridge"] = _ridge_recon(data, ds, fit_samples, x_test[keep])
            if "retrieval" in cfg.methods:
                recon["retrieval"] = _retrieval_recon(data, ds, targets, fit_samples, x_test[keep])
            if "constant" in cfg.methods:
                recon[CONSTANT] = _constant_recon(data, ds, fit_samples, len(keep))
            recon.update(_with_linear_path(recon))
            same_true = same_scene_truth(ds, test_index[keep])
            if "rtdecode" in cfg.methods:
                fusion = _fusion(run, data, fit_runs + val_runs, ds, tokenizer, test_index, same_true, keep)
                subtasks[subject]["fusion"] = fusion
        per_clip: dict[str, dict] = {}
        for method, pred in recon.items():
            per_clip[method] = {}
            rows[f"{method} ({subject})"] = evaluate_clips(
                pred.astype(np.float32), truth, frame_cls, video_cls, embed, rng=0, per_clip=per_clip[method]
            )
            log.info("%s %s: %s", subject, method, rows[f"{method} ({subject})"])
        if "rtdecode" in cfg.methods:
            render_rows, curve = _render_rows(
                cfg,
                run,
                models,
                targets,
                test_index[keep],
                keep,
                truth,
                same_true,
                fusion["threshold"],
                (frame_cls, video_cls, embed),
                first=subject == cfg.subjects[0],
                per_clip=per_clip,
            )
            rows.update({f"{k} ({subject})": v for k, v in render_rows.items()})
            if curve:
                subtasks["steps_curve"] = curve
        groups = np.arange(len(keep)) // cfg.block
        if comparisons := paired_comparisons(per_clip, groups):
            subtasks[subject]["comparisons"] = comparisons
        log.info("%s done in %.0f s", subject, time.time() - t0)
    meta = {"config": config_to_dict(cfg), "subtasks": subtasks, "command": "rtdecode evaluate"}
    write_table(Path(cfg.out) / "table.md", rows, meta)
    (Path(cfg.out) / "subtasks.json").write_text(json.dumps(subtasks, indent=1, default=float))
    (Path(cfg.out) / "comparisons.md").write_text(format_comparisons(subtasks))
    return {"rows": rows, "subtasks": subtasks}
