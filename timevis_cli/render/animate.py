"""Animations assembled from the rendered epoch PNGs: a looping GIF (Pillow) and an MP4
(imageio + imageio-ffmpeg, the optional ``video`` extra, imported only when asked for)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from PIL import Image

from timevis_cli.errors import InputError

__all__ = ["MissingVideoDependencyError", "write_gif", "write_mp4"]

logger = logging.getLogger(__name__)

#: Default longest side of GIF frames, in pixels (GIFs are large; 800 px PNGs are scaled down).
GIF_MAX_SIDE = 600
#: Frames sampled to build the GIF's one shared palette (so colours do not flicker).
_PALETTE_SAMPLES = 8


class MissingVideoDependencyError(InputError, ImportError):
    """MP4 output was asked for without the optional ``video`` dependencies installed."""


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_paths(png_paths: Sequence[str | Path]) -> list[Path]:
    paths = [Path(p) for p in png_paths]
    if not paths:
        raise InputError("no frames were given: render at least one epoch first")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"frame files {missing[:3]} do not exist ({len(missing)} missing)")
    return paths


def _load(path: Path, max_side: int | None) -> Image.Image:
    with Image.open(path) as image:
        frame = image.convert("RGB")
    if max_side is not None and max(frame.size) > max_side:
        scale = max_side / max(frame.size)
        size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
        frame = frame.resize(size, Image.Resampling.LANCZOS)
    return frame


def _shared_palette(frames: list[Image.Image]) -> Image.Image:
    """A 256-colour palette image fitted to a few frames spread over the animation."""
    picks = np.unique(np.linspace(0, len(frames) - 1, _PALETTE_SAMPLES).round().astype(int))
    sample = np.concatenate([np.asarray(frames[i]) for i in picks], axis=0)
    return Image.fromarray(sample).quantize(colors=256, method=Image.Quantize.MEDIANCUT)


def write_gif(
    png_paths: Sequence[str | Path],
    out_path: str | Path,
    frame_ms: int = 200,
    loop: int = 0,
    max_side: int | None = GIF_MAX_SIDE,
    last_frame_ms: int | None = 1000,
) -> Path:
    """Write the frames as an animated GIF, one GIF frame per PNG, in the given order.

    frame_ms: display time of each frame; last_frame_ms: of the final frame (a pause before the
    loop restarts; None for ``frame_ms``). loop: 0 repeats forever. max_side: frames larger than
    this (pixels, longest side) are scaled down, keeping their aspect; None keeps them. All
    frames share one palette, fitted to frames sampled across the animation, without dithering.
    Pillow merges a frame identical to its predecessor into it (adding up their times).
    Returns ``out_path``.
    """
    for name, value in (("frame_ms", frame_ms), ("last_frame_ms", last_frame_ms)):
        if value is not None and not (_is_int(value) and value >= 10):
            raise InputError(f"{name}={value!r} must be an integer of at least 10 milliseconds")
    if not (_is_int(loop) and loop >= 0):
        raise InputError(f"loop={loop!r} must be an integer >= 0 (0 loops forever)")
    if max_side is not None and not (_is_int(max_side) and max_side >= 16):
        raise InputError(f"max_side={max_side!r} must be an integer >= 16 or None")
    paths = _check_paths(png_paths)
    frames = [_load(p, max_side) for p in paths]
    if len({f.size for f in frames}) > 1:
        raise InputError(f"frames differ in size: {sorted({f.size for f in frames})}")
    shared = _shared_palette(frames)
    indexed = [f.quantize(palette=shared, dither=Image.Dither.NONE) for f in frames]
    durations = [frame_ms] * len(indexed)
    if last_frame_ms is not None:
        durations[-1] = last_frame_ms
    out_path = Path(out_path)
    indexed[0].save(
        out_path,
        format="GIF",
        save_all=True,
        append_images=indexed[1:],
        duration=durations,
        loop=loop,
        disposal=1,
        optimize=False,
    )
    logger.info("wrote %s: %d frames of %dx%d", out_path, len(indexed), *indexed[0].size)
    return out_path


def _import_video_writer():
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary imageio's writer needs)
    except ImportError as error:
        raise MissingVideoDependencyError(
            f"MP4 output needs imageio and imageio-ffmpeg ({error.name or error} is missing); "
            'install them with: pip install "timevis[video]"'
        ) from error
    return imageio


def write_mp4(png_paths: Sequence[str | Path], out_path: str | Path, fps: float = 5.0) -> Path:
    """Write the frames as an H.264 MP4 (yuv420p, plays in browsers) at ``fps`` frames/second.

    Frames are padded with white to even width and height (H.264 needs them). Needs the
    ``video`` extra; raises :class:`MissingVideoDependencyError` naming the pip command when
    it is missing. Returns ``out_path``.
    """
    if not (isinstance(fps, Real) and not isinstance(fps, bool) and 0 < fps <= 120):
        raise InputError(f"fps={fps!r} must be a number in (0, 120]")
    imageio = _import_video_writer()
    paths = _check_paths(png_paths)
    out_path = Path(out_path)
    writer = imageio.get_writer(
        out_path,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    size = None
    try:
        for path in paths:
            with Image.open(path) as image:
                frame = np.asarray(image.convert("RGB"))
            if size is None:
                size = frame.shape[:2]
            elif frame.shape[:2] != size:
                raise InputError(f"{path} is {frame.shape[1]}x{frame.shape[0]}, not like frame 0")
            height, width = frame.shape[:2]
            pad = ((0, height % 2), (0, width % 2), (0, 0))
            writer.append_data(np.pad(frame, pad, constant_values=255))
    finally:
        writer.close()
    logger.info("wrote %s: %d frames at %g fps", out_path, len(paths), fps)
    return out_path
