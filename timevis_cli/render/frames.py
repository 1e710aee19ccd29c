"""Frames of the training animation (docs/method.md §7): the only module that imports
matplotlib.

A :class:`FrameRenderer` owns ONE figure, drawn by the Agg canvas and never registered with
pyplot, and updates its artists in place for each :class:`EpochFrame` (``imshow.set_data``, the
points' per-class marker artists ``Line2D.set_data``): the figure, axes, legend and fonts are laid
out once, and each frame redraws only those artists over a cached picture of the rest.

Colours: the landscape image is computed beforehand (``landscape.landscape_image``); points are
coloured by label from the same fixed palette, indexed by class id. A misclassified point is a
ring in its label's colour around a dot in the predicted class's colour. Test points are
triangles, training points circles. The epoch's landscape agreement, when given, is written in
the canvas's top-left corner ("agreement 0.97"), in red below :data:`AGREEMENT_WARN`.

:func:`render_epochs` renders many epochs, optionally in a process pool: each worker receives the
frame-building function once (pickled in the pool initializer) and builds its frames itself from
the epoch numbers and, when given, one small per-epoch input computed in the parent (the
landscape's grid classes and margins, computed on the GPU there), streamed with a bounded number
in flight.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from timevis_cli.errors import InputError
from timevis_cli.render import landscape
from timevis_cli.render.landscape import Bounds

__all__ = [
    "AGREEMENT_WARN",
    "DEFAULT_SIZE_PX",
    "EpochFrame",
    "FrameRenderer",
    "FRAME_FILENAME",
    "render_epochs",
    "render_frames",
    "title_text",
]

logger = logging.getLogger(__name__)

#: Default frame size, (width, height) in pixels.
DEFAULT_SIZE_PX = (800, 800)
#: File name of one epoch's PNG inside the output folder.
FRAME_FILENAME = "epoch_{epoch:04d}.png"
#: zlib level of the PNG frames: 3 is within a few percent of the size of 6 at half the time.
PNG_COMPRESS_LEVEL = 3
#: More classes than this: the legend lists no class names (it would cover the frame).
MAX_LEGEND_CLASSES = 40
#: A landscape agreement below this is drawn in red (and ``timevis render`` warns of it).
AGREEMENT_WARN = 0.9

_TITLE_PX = 44  # height of the title band at the top
_TITLE_FONTSIZE = 14.0  # points; shrunk (or the title wrapped) when it does not fit the band
_TITLE_ONE_LINE_MIN = 10.5  # below this a one-line title is wrapped onto two lines if larger then
_TITLE_SEPARATOR = " · "
_PAD_PX = 8  # free space around the canvas
_MIN_CANVAS_PX = 32  # smallest canvas height left under the title and above the legend
_RING_SCALE = 3.2  # ring marker area / dot marker area
_EDGE_COLOUR = (0.12, 0.12, 0.12, 1.0)  # thin outline that keeps a dot visible on its own colour
_NEUTRAL = (0.45, 0.45, 0.45, 1.0)  # marker legend entries
_EXACT_TINT = 0.55  # exact regions: this share of the class colour over white
_EXACT_BOUNDARY = (0.12, 0.12, 0.12, 0.9)  # exact boundary lines
_AGREEMENT_COLOURS = {True: (0.12, 0.12, 0.12), False: (0.8, 0.1, 0.1)}  # ok / below the warning


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def title_text(epoch: int, metrics: Mapping[str, float | str] | None = None) -> str:
    """``"epoch 12 · val_acc 0.93 · val_loss 0.21"``: the epoch, then each metric (3 digits)."""
    parts = [f"epoch {epoch}"]
    for name, value in (metrics or {}).items():
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{name} {shown}")
    return " · ".join(parts)


def _points(
    name: str, points: np.ndarray | None, labels: np.ndarray | None, preds: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    if points is None and labels is None and preds is None:
        return None, None, None
    if points is None or labels is None or preds is None:
        raise InputError(f"{name}: points, labels and preds must be given together")
    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    if points.ndim != 2 or points.shape[1] != 2:
        raise InputError(f"{name}_points of shape {points.shape} must be (n, 2)")
    if labels.shape != (len(points),) or preds.shape != (len(points),):
        raise InputError(
            f"{name}: labels {labels.shape} and preds {preds.shape} must be ({len(points)},)"
        )
    if not (np.issubdtype(labels.dtype, np.integer) and np.issubdtype(preds.dtype, np.integer)):
        raise InputError(f"{name}: labels and preds must be integer class ids")
    return points, labels.astype(np.int64), preds.astype(np.int64)


@dataclass(frozen=True, eq=False)
class EpochFrame:
    """Everything one frame shows.

    background: uint8 (R, R, 3), row 0 at the top (``landscape.landscape_image``); bounds: the
    canvas it covers; *_points: float (n, 2) embedding positions; *_labels, *_preds: int (n,)
    class ids. Test arrays are optional (all three or none). metrics: shown after the epoch in
    the title, in order. agreement: the epoch's landscape agreement in [0, 1], drawn in the
    canvas's corner (None: not drawn). regions: the exact class regions drawn over the
    background instead of it (``render --exact``): a list of float (n_i, 2) convex polygons and
    their int (Q,) classes, filled in flat class colours; boundary: float (S, 4) segments
    ``x0, y0, x1, y1`` drawn as lines over them (None: neither).
    """

    epoch: int
    background: np.ndarray
    bounds: Bounds
    train_points: np.ndarray
    train_labels: np.ndarray
    train_preds: np.ndarray
    test_points: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    test_preds: np.ndarray | None = None
    metrics: Mapping[str, float | str] = field(default_factory=dict)
    agreement: float | None = None
    regions: tuple[Sequence[np.ndarray], np.ndarray] | None = None
    boundary: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.epoch):
            raise InputError(f"epoch={self.epoch!r} must be an integer")
        if self.agreement is not None and not (0.0 <= float(self.agreement) <= 1.0):
            raise InputError(f"agreement={self.agreement!r} must be in [0, 1] or None")
        background = np.asarray(self.background)
        if background.ndim != 3 or background.shape[2] != 3 or background.dtype != np.uint8:
            raise InputError(
                f"background of shape {background.shape} and dtype {background.dtype} "
                "must be uint8 (R, R, 3)"
            )
        train = _points("train", self.train_points, self.train_labels, self.train_preds)
        test = _points("test", self.test_points, self.test_labels, self.test_preds)
        object.__setattr__(self, "background", background)
        for name, value in zip(("points", "labels", "preds"), train, strict=True):
            object.__setattr__(self, f"train_{name}", value)
        for name, value in zip(("points", "labels", "preds"), test, strict=True):
            object.__setattr__(self, f"test_{name}", value)

    @property
    def title(self) -> str:
        """The frame's title: the epoch and its metrics (:func:`title_text`)."""
        return title_text(self.epoch, self.metrics)


def _edge_width(size: float) -> float:
    """Outline width (points) of a dot of area ``size`` (points²): thinner on small dots."""
    return 0.2 if size < 10 else 0.35


class _MarkerGroup:
    """Points of one role in one split, one marker artist (``Line2D``) per class colour.

    Agg draws a ``Line2D``'s markers by rasterising the marker once and stamping it at every
    point (``draw_markers``): about ten times faster than a scatter collection, which rasterises
    every point's path on its own. The price: within a role, points are layered by class id.
    Artists are created on a class's first use and reused (``set_data``) in later frames.
    """

    def __init__(self, ax: Any, marker: str, zorder: float, ring: bool):
        self.ax = ax
        self.marker = marker
        self.zorder = zorder
        self.ring = ring
        self.lines: dict[int, Line2D] = {}

    def _line(self, class_id: int, rgba: np.ndarray) -> Line2D:
        line = self.lines.get(class_id)
        if line is None:
            colour = tuple(rgba[class_id])
            line = Line2D(
                [], [], linestyle="none", marker=self.marker, zorder=self.zorder, animated=True,
                markerfacecolor="none" if self.ring else colour,
                markeredgecolor=colour if self.ring else _EDGE_COLOUR,
            )  # fmt: skip
            self.ax.add_line(line)
            self.lines[class_id] = line
        return line

    def update(
        self, points: np.ndarray, classes: np.ndarray, rgba: np.ndarray, size: float
    ) -> None:
        """Show ``points`` (n, 2) coloured by ``classes`` (n,), markers of area ``size`` (pt²)."""
        for line in self.lines.values():
            line.set_data([], [])
        if len(points) == 0:
            return
        order = np.argsort(classes, kind="stable")
        present, starts = np.unique(classes[order], return_index=True)
        area = size * _RING_SCALE if self.ring else size
        for class_id, rows in zip(present, np.split(order, starts[1:]), strict=True):
            line = self._line(int(class_id), rgba)
            line.set_data(points[rows, 0], points[rows, 1])
            line.set_markersize(math.sqrt(area))
            line.set_markeredgewidth(1.4 if self.ring else _edge_width(size))

    def draw(self) -> None:
        for _, line in sorted(self.lines.items()):
            if len(line.get_xdata(orig=True)):
                self.ax.draw_artist(line)


class _PointLayer:
    """One split's points: correct dots, then rings (label colour) and dots (predicted colour)
    of the misclassified ones on top."""

    def __init__(self, ax: Any, marker: str, zorder: float):
        self.correct = _MarkerGroup(ax, marker, zorder, ring=False)
        self.ring = _MarkerGroup(ax, marker, zorder + 1, ring=True)
        self.dot = _MarkerGroup(ax, marker, zorder + 2, ring=False)

    def update(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        preds: np.ndarray | None,
        rgba: np.ndarray,
        size: float,
    ) -> None:
        if points is None:
            points = np.empty((0, 2))
            labels = preds = np.empty(0, dtype=np.int64)
        wrong = labels != preds
        self.correct.update(points[~wrong], labels[~wrong], rgba, size)
        self.ring.update(points[wrong], labels[wrong], rgba, size)
        self.dot.update(points[wrong], preds[wrong], rgba, size)

    def draw(self) -> None:
        for group in (self.correct, self.ring, self.dot):
            group.draw()


class FrameRenderer:
    """Draws :class:`EpochFrame` s into one reused figure of ``size_px`` (width, height) pixels.

    class_names: one per class id (the legend). palette: uint8 (C, 3), ``landscape.palette(C)``
    when omitted. point_size: marker area in points², chosen from the number of points when
    omitted. show_test: add the test-marker entry to the legend.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        palette: np.ndarray | None = None,
        size_px: tuple[int, int] = DEFAULT_SIZE_PX,
        dpi: int = 100,
        point_size: float | None = None,
        show_test: bool = False,
    ):
        self.class_names = [str(name) for name in class_names]
        if not self.class_names:
            raise InputError("class_names is empty: the renderer needs one name per class")
        num_classes = len(self.class_names)
        colours = landscape.palette(num_classes) if palette is None else np.asarray(palette)
        if colours.ndim != 2 or colours.shape[1] != 3 or len(colours) < num_classes:
            raise InputError(
                f"palette of shape {colours.shape} must be (C, 3) with C >= {num_classes} classes"
            )
        width, height = (int(v) for v in size_px)
        if min(width, height) < 64:
            raise InputError(f"size_px={size_px!r} must be at least 64 pixels on each side")
        if not (_is_int(dpi) and dpi > 0):
            raise InputError(f"dpi={dpi!r} must be a positive integer")
        if point_size is not None and not (math.isfinite(point_size) and point_size > 0):
            raise InputError(f"point_size={point_size!r} must be a positive number")
        self.palette = colours.astype(np.uint8)
        self.size_px = (width, height)
        self.point_size = point_size
        self._rgba = np.concatenate([self.palette / 255.0, np.ones((len(self.palette), 1))], axis=1)
        self.figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
        self._canvas = FigureCanvasAgg(self.figure)
        legend_px = self._build_legend(show_test)
        canvas_px = height - (legend_px + _TITLE_PX + 2 * _PAD_PX)
        if canvas_px < _MIN_CANVAS_PX:
            larger = int(math.ceil((height + _MIN_CANVAS_PX - canvas_px) / 40.0) * 40)
            raise InputError(
                f"size_px={size_px!r} leaves {canvas_px:.0f} px of height for the canvas under "
                f"the title and the legend of {num_classes} classes; use a larger frame (e.g. "
                f"render.size_px={larger})"
            )
        self.axes = self.figure.add_axes(
            (
                _PAD_PX / width,
                (legend_px + _PAD_PX) / height,
                1.0 - 2 * _PAD_PX / width,
                1.0 - (legend_px + _TITLE_PX + 2 * _PAD_PX) / height,
            )
        )
        ax = self.axes
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="box", anchor="C")
        ax.set_autoscale_on(False)
        for spine in ax.spines.values():
            spine.set_edgecolor("0.6")
        self._image = ax.imshow(
            np.full((2, 2, 3), 255, dtype=np.uint8), origin="upper", extent=(0, 1, 0, 1),
            interpolation="bilinear", zorder=0,
        )  # fmt: skip
        # exact regions and boundaries (``render --exact``): added on first use
        self._regions: PolyCollection | None = None
        self._boundary: LineCollection | None = None
        self._train = _PointLayer(ax, "o", zorder=2)
        self._test = _PointLayer(ax, "^", zorder=5)
        self._title = self.figure.text(
            0.5, 1.0 - (_TITLE_PX / 2) / height, "", ha="center", va="center",
            fontsize=_TITLE_FONTSIZE, multialignment="center",
        )  # fmt: skip
        self._title_shown: str | None = None
        self._agreement = ax.text(
            0.012, 0.988, "", transform=ax.transAxes, ha="left", va="top", fontsize=10,
            zorder=10, bbox={"boxstyle": "round,pad=0.25", "facecolor": "white",
                             "edgecolor": "0.6", "alpha": 0.85},
        )  # fmt: skip
        # Drawn per frame over a cached picture of the rest (legend, frame of the axes); the
        # point layers' markers are created animated.
        for artist in (self._image, self._title, self._agreement):
            artist.set_animated(True)
        self._static: Any = None
        self._static_aspect: float | None = None

    def _build_legend(self, show_test: bool) -> float:
        """Add the legends below the canvas once (class names above the marker key); their
        height in pixels. Each uses as many columns as fit the figure's width."""
        classes: list[tuple[Any, str]] = []
        if len(self.class_names) <= MAX_LEGEND_CLASSES:
            for c, name in enumerate(self.class_names):
                classes.append((_marker("o", self._rgba[c], _EDGE_COLOUR, 8), name))
        else:
            logger.info(
                "%d classes: the legend lists no class names (at most %d)",
                len(self.class_names),
                MAX_LEGEND_CLASSES,
            )
        key = [(_marker("o", _NEUTRAL, _EDGE_COLOUR, 6), "train")]
        if show_test:
            key.append((_marker("^", _NEUTRAL, _EDGE_COLOUR, 6), "test"))
        ring = _marker("o", "none", _NEUTRAL, 12, edge_width=1.4)
        dot = _marker("o", _NEUTRAL, _EDGE_COLOUR, 5)
        key.append(((ring, dot), "misclassified (ring: label, dot: prediction)"))
        fontsize = 9 if len(self.class_names) <= 20 else 7
        bottom = 0.0
        for entries in (key, classes):
            if entries:
                bottom += self._add_legend(entries, bottom, fontsize)
        return bottom

    def _add_legend(
        self, entries: list[tuple[Any, str]], bottom_px: float, fontsize: float
    ) -> float:
        """One legend centred at ``bottom_px`` from the figure's foot; its height in pixels."""
        renderer = self._canvas.get_renderer()
        room = self.size_px[0] - 2 * _PAD_PX
        handles, names = zip(*entries, strict=True)
        ncol = min(len(entries), 10)
        while True:
            legend = self.figure.legend(
                handles, names, loc="lower center", ncol=ncol, frameon=False, fontsize=fontsize,
                bbox_to_anchor=(0.5, bottom_px / self.size_px[1]), handletextpad=0.3,
                columnspacing=1.0, borderaxespad=0.2,
            )  # fmt: skip
            extent = legend.get_window_extent(renderer)
            if extent.width <= room or ncol == 1:
                return extent.height + _PAD_PX / 2
            legend.remove()
            ncol -= 1

    def _size_for(self, n_points: int) -> float:
        if self.point_size is not None:
            return float(self.point_size)
        return float(np.clip(40000.0 / max(n_points, 1), 4.0, 36.0))

    def _check_classes(self, frame: EpochFrame) -> None:
        for name in ("train", "test"):
            labels = getattr(frame, f"{name}_labels")
            preds = getattr(frame, f"{name}_preds")
            if labels is None or len(labels) == 0:
                continue
            low = min(labels.min(), preds.min())
            high = max(labels.max(), preds.max())
            if low < 0 or high >= len(self.palette):
                raise InputError(
                    f"epoch {frame.epoch}: {name} class ids {low}..{high} fall outside the "
                    f"{len(self.palette)} classes of the renderer"
                )

    def render(self, frame: EpochFrame) -> np.ndarray:
        """Draw ``frame``; RGB uint8 (height, width, 3)."""
        self._check_classes(frame)
        b = frame.bounds
        self._image.set_data(frame.background)
        self._image.set_extent(b.extent)
        self._set_regions(frame)
        self.axes.set_xlim(b.xmin, b.xmax)
        self.axes.set_ylim(b.ymin, b.ymax)
        n_points = len(frame.train_points) + (
            0 if frame.test_points is None else len(frame.test_points)
        )
        size = self._size_for(n_points)
        self._train.update(
            frame.train_points, frame.train_labels, frame.train_preds, self._rgba, size
        )
        self._test.update(frame.test_points, frame.test_labels, frame.test_preds, self._rgba, size)
        self._set_title(frame.title)
        if frame.agreement is not None:
            # rounded down, so a value below AGREEMENT_WARN never reads as at or above it
            shown = math.floor(float(frame.agreement) * 100 + 1e-9) / 100
            self._agreement.set_text(f"agreement {shown:.2f}")
            self._agreement.set_color(_AGREEMENT_COLOURS[frame.agreement >= AGREEMENT_WARN])
        self._agreement.set_visible(frame.agreement is not None)
        self._draw((b.xmax - b.xmin) / (b.ymax - b.ymin))
        return np.asarray(self._canvas.buffer_rgba())[..., :3].copy()

    def _set_regions(self, frame: EpochFrame) -> None:
        """Show the frame's exact class regions (flat class colours, a light tint so the points
        stay readable) and boundary lines, or hide both."""
        shown = frame.regions is not None
        if self._regions is None:
            if not shown:
                return
            self._regions = PolyCollection([], zorder=0.5, antialiased=True, linewidths=0.6)
            self._boundary = LineCollection([], zorder=1, colors=[_EXACT_BOUNDARY], linewidths=1.0)
            for artist in (self._regions, self._boundary):
                artist.set_animated(True)
                self.axes.add_collection(artist)
        self._regions.set_visible(shown)
        self._boundary.set_visible(shown)
        if not shown:
            return
        polygons, classes = frame.regions
        classes = np.asarray(classes, np.int64)
        if classes.size and (classes.min() < 0 or classes.max() >= len(self.palette)):
            raise InputError(
                f"epoch {frame.epoch}: region classes {classes.min()}..{classes.max()} fall "
                f"outside the {len(self.palette)} classes of the renderer"
            )
        tint = 1.0 - _EXACT_TINT * (1.0 - self._rgba[classes, :3])
        colours = np.concatenate([tint, np.ones((len(classes), 1))], axis=1)
        self._regions.set_verts(list(polygons))
        self._regions.set_facecolor(colours)
        self._regions.set_edgecolor(colours)  # hides the seams between pieces of one class
        segments = np.zeros((0, 2, 2)) if frame.boundary is None else frame.boundary
        self._boundary.set_segments(np.asarray(segments, np.float64).reshape(-1, 2, 2))

    def _set_title(self, text: str) -> None:
        """Show ``text`` as the title, fitted to the figure's width and the title band.

        At the full font size when it fits; otherwise on one line at a smaller size, or, when
        that would go below ``_TITLE_ONE_LINE_MIN`` points, on two lines (split at the
        `` · `` nearest the middle) if that allows a larger size. Measured with the canvas's
        renderer (so any ``size_px`` and ``dpi``)."""
        if text == self._title_shown:
            return
        self._title_shown = text
        renderer = self._canvas.get_renderer()
        room = (self.size_px[0] - 2 * _PAD_PX, _TITLE_PX - _PAD_PX / 2)

        def fitted(candidate: str) -> float:
            self._title.set_text(candidate)
            self._title.set_fontsize(_TITLE_FONTSIZE)
            extent = self._title.get_window_extent(renderer)
            scale = min(1.0, room[0] / max(extent.width, 1.0), room[1] / max(extent.height, 1.0))
            return _TITLE_FONTSIZE * scale

        chosen, size = text, fitted(text)
        if size < _TITLE_ONE_LINE_MIN and _TITLE_SEPARATOR in text:
            wrapped = _two_lines(text)
            wrapped_size = fitted(wrapped)
            if wrapped_size > size:
                chosen, size = wrapped, wrapped_size
        self._title.set_text(chosen)
        # text extents are not exactly proportional to the font size (hinting): check and shrink
        for _ in range(20):
            self._title.set_fontsize(size)
            extent = self._title.get_window_extent(renderer)
            if (extent.width <= room[0] and extent.height <= room[1]) or size <= 1.0:
                break
            size *= 0.95

    def _draw(self, aspect: float) -> None:
        """Restore the cached static picture (redrawn when the canvas shape changes), then draw
        the per-frame artists over it: the axes frame over the image, points by z-order."""
        if self._static is None or not math.isclose(aspect, self._static_aspect, rel_tol=1e-9):
            self._canvas.draw()  # animated artists are skipped
            self._static = self._canvas.copy_from_bbox(self.figure.bbox)
            self._static_aspect = aspect
        else:
            self._canvas.restore_region(self._static)
        ax = self.axes
        ax.draw_artist(self._image)
        if self._regions is not None and self._regions.get_visible():
            ax.draw_artist(self._regions)
            ax.draw_artist(self._boundary)
        for spine in ax.spines.values():
            ax.draw_artist(spine)
        for layer in (self._train, self._test):  # test points above train points
            layer.draw()
        if self._agreement.get_visible():
            ax.draw_artist(self._agreement)
        self.figure.draw_artist(self._title)

    def save_png(self, frame: EpochFrame, path: str | Path) -> Path:
        """Render ``frame`` into the PNG file ``path`` (its folder must exist); the path."""
        path = Path(path)
        Image.fromarray(self.render(frame)).save(
            path, format="PNG", compress_level=PNG_COMPRESS_LEVEL
        )
        return path

    def close(self) -> None:
        """Release the figure's artists (the renderer cannot draw afterwards)."""
        self.figure.clear()


def _two_lines(text: str) -> str:
    """``text`` broken at the `` · `` separator nearest its middle."""
    parts = text.split(_TITLE_SEPARATOR)
    best = min(
        range(1, len(parts)),
        key=lambda i: abs(
            len(_TITLE_SEPARATOR.join(parts[:i])) - len(_TITLE_SEPARATOR.join(parts[i:]))
        ),
    )
    return _TITLE_SEPARATOR.join(parts[:best]) + "\n" + _TITLE_SEPARATOR.join(parts[best:])


def _marker(marker: str, face: Any, edge: Any, size: float, edge_width: float = 0.5) -> Line2D:
    return Line2D(
        [], [], linestyle="none", marker=marker, markersize=size, markerfacecolor=face,
        markeredgecolor=edge, markeredgewidth=edge_width,
    )  # fmt: skip


def _frame_paths(epochs: Sequence[int], out_dir: Path, filename: str) -> list[Path]:
    for epoch in epochs:
        if not _is_int(epoch):
            raise InputError(f"epoch {epoch!r} must be an integer")
    paths = [out_dir / filename.format(epoch=int(epoch)) for epoch in epochs]
    if len(set(paths)) != len(paths):
        raise InputError(f"epochs {list(epochs)} name the same frame file twice")
    return paths


def render_frames(
    frames: Iterable[EpochFrame],
    out_dir: str | Path,
    renderer: FrameRenderer,
    filename: str = FRAME_FILENAME,
) -> list[Path]:
    """Render frames one after the other in this process; the PNG paths, in the given order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for frame in frames:
        path = out_dir / filename.format(epoch=frame.epoch)
        paths.append(renderer.save_png(frame, path))
        logger.debug("rendered epoch %d to %s", frame.epoch, path)
    return paths


# The state of a pool worker: the frame builder and the worker's own renderer.
_WORKER: tuple[Callable[..., EpochFrame], FrameRenderer] | None = None
#: Per-epoch inputs in flight (sent to workers, not yet rendered) per worker.
INPUTS_IN_FLIGHT_PER_WORKER = 2
_END = object()  # marks an exhausted iterator


def _init_worker(
    build_frame: Callable[..., EpochFrame], renderer_options: Mapping[str, Any]
) -> None:
    global _WORKER
    matplotlib.use("Agg")  # the worker draws off-screen only
    _WORKER = (build_frame, FrameRenderer(**renderer_options))


def _render_in_worker(epoch: int, path: Path, inputs: tuple[Any, ...]) -> Path:
    if _WORKER is None:
        raise RuntimeError("render worker used before its initializer ran")
    build_frame, renderer = _WORKER
    return renderer.save_png(build_frame(epoch, *inputs), path)


def _worker_ready() -> bool:
    return _WORKER is not None


def _per_epoch_inputs(epochs: Sequence[int], inputs: Iterable[Any] | None) -> Iterator[tuple]:
    """``(input,)`` per epoch (``()`` without inputs); InputError when the counts differ."""
    if inputs is None:
        yield from (() for _ in epochs)
        return
    values = iter(inputs)
    for count, _ in enumerate(epochs):
        try:
            yield (next(values),)
        except StopIteration:
            raise InputError(f"inputs gave {count} values for {len(epochs)} epochs") from None
    if next(values, _END) is not _END:
        raise InputError(f"inputs gave more values than the {len(epochs)} epochs")


def render_epochs(
    build_frame: Callable[..., EpochFrame],
    epochs: Sequence[int],
    out_dir: str | Path,
    renderer_options: Mapping[str, Any],
    jobs: int = 1,
    filename: str = FRAME_FILENAME,
    start_method: str = "spawn",
    inputs: Iterable[Any] | None = None,
) -> list[Path]:
    """Render ``build_frame(epoch)`` for every epoch to ``out_dir/epoch_EEEE.png``.

    build_frame: epoch -> :class:`EpochFrame`, or ``(epoch, input) -> EpochFrame`` when
    ``inputs`` is given. With ``jobs > 1`` it must be picklable (a module-level function, a
    ``functools.partial`` of one, or an instance of a module-level class); it is pickled ONCE per
    worker, in the pool initializer, and each task sends only an epoch number, a path and the
    epoch's input. So hold paths or small state in it and load big arrays lazily (cached on first
    use in each worker) rather than capturing them. inputs: one value per epoch, in the order of
    ``epochs``, computed in THIS process (e.g. a generator that evaluates each epoch's landscape
    on the GPU): it is consumed while the workers draw, with at most
    ``INPUTS_IN_FLIGHT_PER_WORKER`` values per worker in flight, so memory stays bounded.
    renderer_options: the keyword arguments of :class:`FrameRenderer` (each worker builds its
    own). Workers are started with ``start_method`` ("spawn" by default: safe after torch has
    started threads or CUDA). Returns the PNG paths in the order of ``epochs``; a failure in any
    frame is raised here.
    """
    if not (_is_int(jobs) and jobs >= 1):
        raise InputError(f"jobs={jobs!r} must be a positive integer")
    epochs = list(epochs)
    out_dir = Path(out_dir)
    paths = _frame_paths(epochs, out_dir, filename)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = zip(epochs, paths, _per_epoch_inputs(epochs, inputs), strict=True)
    workers = min(jobs, len(epochs))
    if workers <= 1:
        renderer = FrameRenderer(**renderer_options)
        try:
            for epoch, path, args in tasks:
                renderer.save_png(build_frame(epoch, *args), path)
        finally:
            renderer.close()
        return paths
    try:
        pickle.dumps(build_frame)
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise InputError(
            f"build_frame={build_frame!r} cannot be sent to worker processes ({error}); use a "
            "module-level function or class instance, or jobs=1"
        ) from error
    logger.info("rendering %d epochs with %d worker processes", len(epochs), workers)
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(start_method),
        initializer=_init_worker,
        initargs=(build_frame, dict(renderer_options)),
    ) as pool:
        # start every worker now (imports, figure layout) while the first input is computed
        pending: set[Future] = {pool.submit(_worker_ready) for _ in range(workers)}
        try:
            for epoch, path, args in tasks:  # the next input is computed while workers draw
                while len(pending) >= INPUTS_IN_FLIGHT_PER_WORKER * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()  # raise a worker's failure now
                pending.add(pool.submit(_render_in_worker, epoch, path, args))
            for future in wait(pending).done:
                future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return paths
