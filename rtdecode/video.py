"""Video files and frame layouts for reconstructions: write/read with PyAV, tile clips.

Frames are ``(H, W, 3)`` ``uint8`` RGB; clips are ``(F, H, W, 3)``. H.264 (``libx264``,
``yuv420p``) is used when the PyAV build has it, MPEG-4 Part 2 otherwise. ``yuv420p`` needs
even sizes, so odd frames are padded (edge pixels repeated) and the true size is stored in the
container's ``comment`` tag, from which :func:`read_video` crops them back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from fractions import Fraction

import av
import cv2
import numpy as np

__all__ = ["read_video", "side_by_side", "upscale", "write_video"]

_SIZE_TAG = re.compile(r"rtdecode:size=(\d+)x(\d+)")


def _codec() -> str:
    """The best available encoder: H.264 if this PyAV build has libx264, else MPEG-4."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _check_frame(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"frames must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    if size is not None and arr.shape[:2] != size:
        raise ValueError(f"frame size {arr.shape[:2]} differs from the first frame's {size}")
    return arr


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """Pad height and width to even numbers by repeating the last row/column."""
    ph, pw = frame.shape[0] % 2, frame.shape[1] % 2
    if ph or pw:
        frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return np.ascontiguousarray(frame)


def _open_stream(container, fps: float, size: tuple[int, int], crf: int):
    codec = _codec()
    h, w = size
    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height = w + w % 2, h + h % 2
    stream.pix_fmt = "yuv420p"
    if codec == "libx264":
        stream.options = {"crf": str(int(crf))}
    else:  # MPEG-4: fixed quantiser, 2 = near-transparent.
        stream.codec_context.qscale = 2
    return stream


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float, crf: int = 18) -> int:
    """Encode frames into a playable video file, streaming (frames are not held in memory).

    Parameters
    ----------
    path
        Output file; the container follows the suffix (``.mp4``, ``.mkv``, ...).
    frames
        ``(H, W, 3)`` ``uint8`` RGB frames, all the same size (a 4-D array works too).
    fps
        Frame rate.
    crf
        H.264 constant rate factor (lower = better; 18 is visually lossless).

    Returns
    -------
    int
        Number of frames written. With no frames no file is created and 0 is returned. If
        ``frames`` raises (or a frame is invalid), the frames before it are still written
        to a playable file and the error propagates.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    container = stream = size = None
    n = 0
    source_error: Exception | None = None
    it = iter(frames)
    try:
        while True:
            try:
                arr = _check_frame(next(it), size)
            except StopIteration:
                break
            except Exception as exc:  # a bad frame or a failing source: keep the frames before it
                source_error = exc
                break
            if container is None:
                size = arr.shape[:2]
                container = av.open(os.fspath(path), mode="w")
                container.metadata["comment"] = f"rtdecode:size={size[1]}x{size[0]}"
                stream = _open_stream(container, fps, size, crf)
            vf = av.VideoFrame.from_ndarray(_pad_even(arr), format="rgb24")
            container.mux(stream.encode(vf))
            n += 1
        if container is not None:
            # Flush the encoder: it holds the last frames (libx264 even the first ones: without
            # the flush no file is written at all). Not after a failed mux: PyAV would crash.
            container.mux(stream.encode(None))
    finally:
        if container is not None:
            container.close()
    if source_error is not None:
        raise source_error
    return n


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode a video file into a ``(T, H, W, 3)`` ``uint8`` RGB array.

    Frames padded to even sizes by :func:`write_video` are cropped back to their true size.
    """
    with av.open(os.fspath(path)) as container:
        tags = {k.lower(): v for k, v in container.metadata.items()}  # mkv upper-cases keys
        match = _SIZE_TAG.search(tags.get("comment", ""))
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8)
    out = np.stack(frames)
    if match:
        w, h = int(match.group(1)), int(match.group(2))
        out = out[:, :h, :w]
    return np.ascontiguousarray(out)


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of a frame ``(H, W, C)`` or clip ``(F, H, W, C)``."""
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    arr = np.asarray(frames)
    if factor == 1:
        return arr
    return np.repeat(np.repeat(arr, factor, axis=-3), factor, axis=-2)


def _fit_height(clip: np.ndarray, height: int) -> np.ndarray:
    """Resize every frame of a clip to ``height`` rows, keeping the aspect ratio."""
    h, w = clip.shape[1:3]
    if h == height:
        return clip
    width = max(1, round(w * height / h))
    exact = height % h == 0 and width % w == 0
    interp = cv2.INTER_NEAREST if exact else cv2.INTER_LINEAR
    return np.stack([cv2.resize(fr, (width, height), interpolation=interp) for fr in clip])


def _label_band(widths: Sequence[int], gap: int, labels: Sequence[str], height: int) -> np.ndarray:
    """A black band with one white label above each clip."""
    band_h = max(12, min(24, height // 6))
    band = np.zeros((band_h, sum(widths) + gap * (len(widths) - 1), 3), np.uint8)
    scale = band_h / 32
    x = 0
    for w, text in zip(widths, labels):
        cv2.putText(
            band,
            str(text),
            (x + 2, band_h - max(2, band_h // 5)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        x += w + gap
    return band


def side_by_side(*clips: np.ndarray, gap: int = 2, labels: Sequence[str] | None = None) -> np.ndarray:
    """Tile same-length clips horizontally, e.g. stimulus | reconstruction | blurry.

    Parameters
    ----------
    *clips
        ``(F, H, W, 3)`` ``uint8`` clips with the same F (single ``(H, W, 3)`` frames work
        too). Clips of another height are resized to the first clip's height.
    gap
        Black columns between clips.
    labels
        One short text per clip, drawn in a band above the clips.

    Returns
    -------
    np.ndarray
        ``(F, H', W', 3)`` (or ``(H', W', 3)`` for single frames).
    """
    if not clips:
        raise ValueError("side_by_side needs at least one clip")
    single = np.asarray(clips[0]).ndim == 3
    arrs = [np.asarray(c)[None] if np.asarray(c).ndim == 3 else np.asarray(c) for c in clips]
    n = arrs[0].shape[0]
    for a in arrs:
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"clips must be (F, H, W, 3), got {a.shape}")
        if a.shape[0] != n:
            raise ValueError(f"clips have different lengths: {[c.shape[0] for c in arrs]}")
    height = arrs[0].shape[1]
    arrs = [_fit_height(a.astype(np.uint8, copy=False), height) for a in arrs]
    spacer = np.zeros((n, height, gap, 3), np.uint8)
    parts = [arrs[0]]
    for a in arrs[1:]:
        parts += [spacer, a] if gap > 0 else [a]
    out = np.concatenate(parts, axis=2)
    if labels is not None:
        if len(labels) != len(arrs):
            raise ValueError(f"{len(labels)} labels for {len(arrs)} clips")
        band = _label_band([a.shape[2] for a in arrs], gap, labels, height)
        out = np.concatenate([np.broadcast_to(band, (n, *band.shape)), out], axis=1)
    return out[0] if single else out
