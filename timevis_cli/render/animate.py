"""Animations assembled from the rendered epoch PNGs: a looping GIF (Pillow) and an MP4
(imageio + imageio-ffmpeg, the optional ``video`` extra, imported only when asked for).

The GIF's one palette (:func:`gif_palette`) keeps every class colour of the fixed palette
(``landscape.palette``) that the frames show as an entry of its own, then the colours that cover
much of the frames (the white background, text) exactly, and fills the rest of its 256 entries
with a median cut of the other pixels (landscape tints, blended edges). Each frame is mapped onto
it pixel by pixel (:func:`quantise_frame`, no dithering): a pixel near a class colour takes that
colour, every other pixel the nearest entry. So a class keeps its own colour in the GIF, the one
it has in the PNG frames, and two classes never share an entry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from PIL import Image

from timevis_cli.errors import InputError
from timevis_cli.render import landscape

__all__ = [
    "MissingVideoDependencyError",
    "gif_palette",
    "quantise_frame",
    "write_gif",
    "write_mp4",
]

logger = logging.getLogger(__name__)

#: Default longest side of GIF frames, in pixels (GIFs are large; 800 px PNGs are scaled down).
GIF_MAX_SIDE = 600
#: Entries of a GIF palette.
GIF_COLOURS = 256
#: Frames sampled to fit the adaptive part of the GIF's one shared palette (so colours do not
#: flicker).
_PALETTE_SAMPLES = 8
#: Class colours kept exactly when write_gif is given none: the first 20 of ``landscape.palette``
#: (tab10 and the light tab20), those the frames show.
DEFAULT_CLASS_COLOURS = 20
#: The most class colours a GIF palette keeps exactly (the rest of the frame needs the others).
MAX_CLASS_ENTRIES = GIF_COLOURS // 2
#: A pixel within this RGB distance of a class colour is drawn in that colour (the scaled-down
#: inside of a marker, a landscape tint at full confidence); the adaptive entries are fitted to
#: the pixels farther than this from every class colour.
SNAP_DISTANCE = 12.0
#: A colour covering at least this share of the sampled pixels keeps an exact entry ...
_FREQUENT_SHARE = 0.002
#: ... for at most this many such colours (white, black text, the boundary's white, ...).
_MAX_FREQUENT = 32
#: Colours compared with the palette per numpy step (bounds the [n, K] distance array).
_DISTANCE_CHUNK = 8192


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


def _pack(rgb: np.ndarray) -> np.ndarray:
    """uint32 codes ``r << 16 | g << 8 | b`` of uint8 RGB [..., 3]."""
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _unpack(codes: np.ndarray) -> np.ndarray:
    """uint8 RGB [n, 3] of :func:`_pack`'s codes [n]."""
    return np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=1).astype(np.uint8)


def _nearest(colours: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest palette entry of each colour, and the squared distance to it.

    colours: uint8 [n, 3]; palette: uint8 [K, 3] (K >= 1). Ties go to the lower index. The
    squared distances ``|c|² + |p|² - 2 c·p`` are computed as float32 products of integers below
    2**24, so they are exact.
    """
    index = np.zeros(len(colours), np.int64)
    distance = np.zeros(len(colours), np.int64)
    entries = palette.astype(np.float32)
    entries_sq = (entries**2).sum(axis=1)
    for start in range(0, len(colours), _DISTANCE_CHUNK):
        chunk = colours[start : start + _DISTANCE_CHUNK].astype(np.float32)
        squared = (chunk**2).sum(axis=1)[:, None] + entries_sq[None, :] - 2.0 * (chunk @ entries.T)
        nearest = squared.argmin(axis=1)
        index[start : start + len(chunk)] = nearest
        distance[start : start + len(chunk)] = squared[np.arange(len(chunk)), nearest].round()
    return index, distance


def _check_class_colours(class_colours: object) -> np.ndarray:
    colours = np.asarray(class_colours)
    if colours.ndim != 2 or colours.shape[1] != 3 or not np.issubdtype(colours.dtype, np.integer):
        raise InputError(
            f"class_colours of shape {colours.shape} and dtype {colours.dtype} must be integer "
            "RGB (C, 3), e.g. landscape.palette(C)"
        )
    if colours.size and (colours.min() < 0 or colours.max() > 255):
        raise InputError("class_colours must lie in 0..255")
    return colours.astype(np.uint8)


def gif_palette(
    frames: Sequence[np.ndarray], class_colours: np.ndarray, shown: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """One palette for all frames: ``(palette, n)``, uint8 [K <= 256, 3] whose first ``n``
    entries are the class colours kept.

    frames: uint8 RGB (H, W, 3) images (a few spread over the animation are enough: the
    adaptive part is fitted to them). class_colours: uint8 [C, 3]; each one that ``shown``
    (sorted uint32 codes of every colour the whole animation shows, :func:`_pack`; default: the
    colours of ``frames``) has within :data:`SNAP_DISTANCE` gets an entry, exactly (the first
    :data:`MAX_CLASS_ENTRIES` of them, with a warning when there are more). Then come
    the colours covering at least :data:`_FREQUENT_SHARE` of the frames' pixels (up to
    :data:`_MAX_FREQUENT`) and a median cut of the pixels farther than :data:`SNAP_DISTANCE`
    from every kept class colour, up to :data:`GIF_COLOURS` entries in all. The same frames
    give the same palette.
    """
    if not frames:
        raise InputError("no frames were given to fit the GIF palette to")
    class_colours = _check_class_colours(class_colours)
    pixels = np.concatenate([np.asarray(f, dtype=np.uint8).reshape(-1, 3) for f in frames])
    codes, counts = np.unique(_pack(pixels), return_counts=True)
    shown = codes if shown is None else np.asarray(shown)
    _, first = np.unique(_pack(class_colours), return_index=True)  # one entry per colour
    candidates = class_colours[np.sort(first)]
    near = np.zeros(len(candidates), bool)
    if len(shown):
        owner, distance = _nearest(_unpack(shown), candidates)
        near[owner[distance <= SNAP_DISTANCE**2]] = True
    reserved = candidates[near]
    if len(reserved) > MAX_CLASS_ENTRIES:
        logger.warning(
            "the frames show %d class colours: the GIF keeps the first %d exactly and draws the "
            "others in its nearest colours (the PNG frames and --mp4 keep every one)",
            len(reserved), MAX_CLASS_ENTRIES,
        )  # fmt: skip
        reserved = reserved[:MAX_CLASS_ENTRIES]
    near_class = np.zeros(len(codes), bool)
    if len(reserved):
        near_class = _nearest(_unpack(codes), reserved)[1] <= SNAP_DISTANCE**2
    frequent_rows = np.flatnonzero(~near_class & (counts >= _FREQUENT_SHARE * len(pixels)))
    frequent_rows = frequent_rows[np.argsort(-counts[frequent_rows], kind="stable")][:_MAX_FREQUENT]
    palette = np.concatenate([reserved, _unpack(codes[frequent_rows])]).reshape(-1, 3)
    free = GIF_COLOURS - len(palette)
    rest = ~near_class
    rest[frequent_rows] = False
    if free > 0 and rest.any():
        remainder = _unpack(np.repeat(codes[rest], counts[rest]))
        fitted = Image.fromarray(remainder[None]).quantize(
            colors=min(free, int(rest.sum())), method=Image.Quantize.MEDIANCUT
        )
        adaptive = np.asarray(fitted.getpalette(), dtype=np.uint8).reshape(-1, 3)
        adaptive = adaptive[np.unique(np.asarray(fitted))]
        new = ~np.isin(_pack(adaptive), _pack(palette))
        palette = np.concatenate([palette, adaptive[new]])
    return palette, len(reserved)


def _palette_index(codes: np.ndarray, palette: np.ndarray, n_class_colours: int) -> np.ndarray:
    """The palette entry of each colour code [n] (:func:`quantise_frame`'s rule), int64 [n]."""
    colours = _unpack(codes)
    index, _ = _nearest(colours, palette)
    if n_class_colours:
        to_class, distance = _nearest(colours, palette[:n_class_colours])
        snap = distance <= SNAP_DISTANCE**2
        index[snap] = to_class[snap]
    return index


def _indexed_image(index: np.ndarray, palette: np.ndarray) -> Image.Image:
    image = Image.fromarray(index.astype(np.uint8), mode="P")
    flat = palette.astype(np.uint8).ravel().tolist()
    image.putpalette(flat + [0] * (3 * GIF_COLOURS - len(flat)))
    return image


def quantise_frame(frame: np.ndarray, palette: np.ndarray, n_class_colours: int) -> Image.Image:
    """A "P" image of ``frame`` (uint8 RGB (H, W, 3)) in ``palette`` (uint8 [K, 3], its first
    ``n_class_colours`` entries the class colours), without dithering: a pixel within
    :data:`SNAP_DISTANCE` of a class colour takes the nearest class colour, any other the
    nearest entry. A pixel equal to an entry keeps it exactly."""
    frame = np.asarray(frame, dtype=np.uint8)
    codes, inverse = np.unique(_pack(frame).ravel(), return_inverse=True)
    index = _palette_index(codes, palette, n_class_colours)
    return _indexed_image(index[inverse].reshape(frame.shape[:2]), palette)


def write_gif(
    png_paths: Sequence[str | Path],
    out_path: str | Path,
    frame_ms: int = 200,
    loop: int = 0,
    max_side: int | None = GIF_MAX_SIDE,
    last_frame_ms: int | None = 1000,
    class_colours: np.ndarray | None = None,
) -> Path:
    """Write the frames as an animated GIF, one GIF frame per PNG, in the given order.

    frame_ms: display time of each frame; last_frame_ms: of the final frame (a pause before the
    loop restarts; None for ``frame_ms``). loop: 0 repeats forever. max_side: frames larger than
    this (pixels, longest side) are scaled down, keeping their aspect; None keeps them.
    class_colours: uint8 [C, 3], the run's ``landscape.palette(C)`` (default: its first
    :data:`DEFAULT_CLASS_COLOURS` colours); each one the frames show keeps an exact entry of the
    palette all frames share (:func:`gif_palette`), the rest of which is fitted to frames
    sampled across the animation; no dithering. Pillow merges a frame identical to its
    predecessor into it (adding up their times). Returns ``out_path``.
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
    if class_colours is None:
        class_colours = landscape.palette(DEFAULT_CLASS_COLOURS)
    class_colours = _check_class_colours(class_colours)
    shown = np.unique(np.concatenate([np.unique(_pack(np.asarray(f))) for f in frames]))
    picks = np.unique(np.linspace(0, len(frames) - 1, _PALETTE_SAMPLES).round().astype(int))
    palette, n_class = gif_palette([np.asarray(frames[i]) for i in picks], class_colours, shown)
    lookup = _palette_index(shown, palette, n_class)  # every colour shown, mapped once
    indexed = [
        _indexed_image(lookup[np.searchsorted(shown, _pack(np.asarray(f)))], palette) for f in frames
    ]
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
