"""``RUN_DIR/units/``: positions (units.npz, units.csv), units.png, units.gif, index.html and
summary.json.

The folder is written whole or not at all (:func:`timevis_cli.outputs.replaced_folder`): a
failure or Ctrl-C while writing keeps the previous ``units/`` as it was. The figures are drawn
with matplotlib's object API on an Agg canvas, never pyplot.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from timevis_callback.reader import format_epochs
from timevis_cli.outputs import replaced_folder
from timevis_cli.units.pipeline import NO_PREFERENCE, SELECTIVITY_FORMULA, Units

__all__ = [
    "CSV_FILE",
    "GIF_FILE",
    "NPZ_FILE",
    "PAGE_FILE",
    "PNG_FILE",
    "SUMMARY_FILE",
    "UNITS_DIR",
    "class_colours",
    "gif_epochs",
    "load_units",
    "plot_units",
    "summarize",
    "write_units",
]

UNITS_DIR = "units"
NPZ_FILE = "units.npz"
CSV_FILE = "units.csv"
PNG_FILE = "units.png"
GIF_FILE = "units.gif"
PAGE_FILE = "index.html"
SUMMARY_FILE = "summary.json"
JSON_FORMAT = "timevis-units"
JSON_VERSION = 1
MAX_GIF_FRAMES = 100  # more epochs: evenly spaced ones, the first and last always in
GIF_FRAME_MS = 250
NO_PREFERENCE_COLOUR = "#b0b0b0"


def write_units(
    run_dir: str | os.PathLike, result: Units, seconds: dict[str, float] | None = None,
    overwrite: bool = True,
) -> Path:  # fmt: skip
    """Write ``RUN_DIR/units/`` through a temporary folder renamed at the end, replacing a
    previous one (``overwrite``; otherwise :class:`~timevis_cli.outputs.OutputExists`).
    Returns the folder."""
    from timevis_cli.units.page import write_page

    run_dir = Path(run_dir)
    with replaced_folder(run_dir, UNITS_DIR, overwrite=overwrite) as tmp:
        write_npz(result, tmp / NPZ_FILE)
        write_csv(result, tmp / CSV_FILE)
        plot_units(result, tmp / PNG_FILE)
        write_gif(result, tmp / GIF_FILE)
        write_page(result, tmp / PAGE_FILE)
        text = json.dumps(summarize(result, seconds), indent=2, allow_nan=False)
        (tmp / SUMMARY_FILE).write_text(text + "\n", encoding="utf-8")
    return run_dir / UNITS_DIR


# --------------------------------------------------------------------------- data files


def write_npz(result: Units, path: str | os.PathLike) -> Path:
    """``units.npz``: ``positions`` [E, U, 2], ``epochs`` [E], ``preferred`` [E, U] (-1: no
    preference), ``selectivity`` [E, U], ``class_names``, the samples (``sample_rows``,
    ``sample_ids``, ``sample_splits``, ``sample_labels``), ``entropy`` [t_max] and ``t``."""
    target = Path(path)
    with open(target, "wb") as handle:
        np.savez_compressed(
            handle,
            positions=result.positions,
            epochs=np.asarray(result.epochs, np.int64),
            preferred=result.preferred,
            selectivity=result.selectivity,
            class_names=np.asarray(result.class_names),
            sample_rows=result.sample_rows,
            sample_ids=result.sample_ids,
            sample_splits=result.sample_splits,
            sample_labels=result.sample_labels,
            entropy=result.embedding.entropy,
            t=np.int64(result.embedding.t),
        )
    return target


def load_units(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a ``units.npz`` (or of ``RUN_DIR/units/``)."""
    path = Path(path)
    if path.is_dir():
        path = path / NPZ_FILE if (path / NPZ_FILE).exists() else path / UNITS_DIR / NPZ_FILE
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def write_csv(result: Units, path: str | os.PathLike) -> Path:
    """``units.csv``: one row per (epoch, unit): epoch, unit, x, y, preferred_class (empty for
    none), preferred_name, selectivity."""
    target = Path(path)
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "unit", "x", "y", "preferred_class", "preferred_name",
                         "selectivity"])  # fmt: skip
        units = np.arange(result.units)
        for index, epoch in enumerate(result.epochs):
            xy = result.positions[index]
            preferred = result.preferred[index]
            names = [result.class_names[c] if c != NO_PREFERENCE else "" for c in preferred]
            classes = ["" if c == NO_PREFERENCE else str(int(c)) for c in preferred]
            writer.writerows(
                zip(
                    [epoch] * result.units,
                    units.tolist(),
                    [f"{v:.6g}" for v in xy[:, 0]],
                    [f"{v:.6g}" for v in xy[:, 1]],
                    classes,
                    names,
                    [f"{v:.4f}" for v in result.selectivity[index]],
                    strict=True,
                )
            )
    return target


def _plain(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize(result: Units, seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """The contents of ``summary.json``."""
    embedding = result.embedding
    displacement = result.displacement()
    changes = result.preference_changes()
    counts = result.preference_counts()
    selective = result.selectivity.mean(axis=1)
    biggest = int(np.nanargmax(displacement)) if len(result.epochs) > 1 else None
    return {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "run_id": result.run_id,
        "feature_layer": result.feature_layer,
        "epochs": list(result.epochs),
        "units": result.units,
        "points": result.units * len(result.epochs),
        "samples": {
            "count": len(result.sample_rows),
            "split": result.split,
            "per_class": {
                name: int((result.sample_labels == c).sum())
                for c, name in enumerate(result.class_names)
            },
        },
        "settings": result.settings.to_dict(),
        "t": embedding.t,
        "entropy": [round(float(v), 6) for v in embedding.entropy],
        "landmarks": embedding.landmarks,
        "pca_dims": embedding.dims,
        "interslice_bandwidth": _plain(float(embedding.bandwidth)),
        "mds": {"stress": _plain(float(embedding.stress)), "iterations": embedding.mds_iterations},
        "selectivity_formula": SELECTIVITY_FORMULA,
        "per_epoch": {
            "epoch": list(result.epochs),
            "displacement": [_plain(round(float(v), 6)) for v in displacement],
            "preference_changes": changes.tolist(),
            "mean_selectivity": [round(float(v), 6) for v in selective],
            "units_preferring": {
                name: counts[:, c].tolist() for c, name in enumerate(result.class_names)
            },
        },
        "largest_move": None
        if biggest is None
        else {"from": result.epochs[biggest - 1], "to": result.epochs[biggest]},
        "seconds": dict(seconds or {}),
    }


# --------------------------------------------------------------------------- figures


def class_colours(count: int) -> list[str]:
    """One hex colour per class: tab10 up to 10 classes, tab20 up to 20, then evenly spaced
    hues."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if count <= 10:
        cmap = colormaps["tab10"]
        return [to_hex(cmap(i)) for i in range(count)]
    if count <= 20:
        cmap = colormaps["tab20"]
        return [to_hex(cmap(i)) for i in range(count)]
    cmap = colormaps["hsv"]
    return [to_hex(cmap(i / count)) for i in range(count)]


def _point_colours(result: Units, index: int) -> list[str]:
    palette = class_colours(len(result.class_names))
    return [
        NO_PREFERENCE_COLOUR if c == NO_PREFERENCE else palette[c] for c in result.preferred[index]
    ]


def _figure(width: float, height: float, layout: str | None = "constrained") -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _limits(positions: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    flat = positions.reshape(-1, 2).astype(np.float64)
    low, high = flat.min(axis=0), flat.max(axis=0)
    centre, half = (low + high) / 2, max(float((high - low).max()) / 2, 1e-9) * 1.06
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def _trajectories(result: Units) -> Any:
    """A LineCollection of every unit's path over the epochs, each step coloured by its
    epoch."""
    from matplotlib.collections import LineCollection

    p = result.positions
    segments = np.stack([p[:-1], p[1:]], axis=2).reshape(-1, 2, 2)  # [(E-1) U, 2, 2]
    epochs = np.repeat(np.asarray(result.epochs[1:], np.float64), result.units)
    lines = LineCollection(segments, cmap="viridis", linewidths=0.6, alpha=0.55)
    lines.set_array(epochs)
    return lines


def _legend(ax: Any, result: Units, shown: np.ndarray) -> None:
    from matplotlib.lines import Line2D

    palette = class_colours(len(result.class_names))
    present = sorted({int(c) for c in shown.ravel() if c != NO_PREFERENCE})
    handles = [
        Line2D([], [], marker="o", ls="", color=palette[c], label=result.class_names[c])
        for c in present
    ]
    if (shown == NO_PREFERENCE).any():
        handles.append(Line2D([], [], marker="o", ls="", color=NO_PREFERENCE_COLOUR, label="none"))
    if handles:
        ax.legend(handles=handles, title="preferred class", fontsize=7, title_fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # fmt: skip


def plot_units(result: Units, path: str | os.PathLike) -> Path:
    """``units.png``: the units' paths over the epochs coloured by epoch (left), the last
    epoch's units coloured by preferred class (middle) and by selectivity (right), each over
    every epoch's units in light grey."""
    from matplotlib.colors import Normalize

    figure = _figure(17.0, 5.6)
    left, middle, right = figure.subplots(1, 3)
    xlim, ylim = _limits(result.positions)
    last = len(result.epochs) - 1
    all_points = result.positions.reshape(-1, 2)
    size = max(2.0, min(18.0, 4000.0 / result.units))
    if len(result.epochs) > 1:
        lines = _trajectories(result)
        left.add_collection(lines)
        figure.colorbar(lines, ax=left, label="epoch", shrink=0.8)
    left.scatter(result.positions[last, :, 0], result.positions[last, :, 1], s=size * 0.6,
                 c="black", linewidths=0, zorder=3, label=f"epoch {result.epochs[last]}")  # fmt: skip
    left.legend(loc="upper right", fontsize=7, markerscale=2)
    left.set_title("paths over the epochs (colour: epoch)")
    for ax in (middle, right):
        ax.scatter(all_points[:, 0], all_points[:, 1], s=1.0, c="#dddddd", linewidths=0,
                   rasterized=True, zorder=1)  # fmt: skip
    middle.scatter(result.positions[last, :, 0], result.positions[last, :, 1], s=size,
                   c=_point_colours(result, last), linewidths=0, zorder=3)  # fmt: skip
    _legend(middle, result, result.preferred[last])
    middle.set_title(f"epoch {result.epochs[last]}: preferred class")
    drawn = right.scatter(
        result.positions[last, :, 0], result.positions[last, :, 1], s=size,
        c=result.selectivity[last], cmap="magma_r", norm=Normalize(0.0, 1.0), linewidths=0,
        zorder=3,
    )  # fmt: skip
    figure.colorbar(drawn, ax=right, label="selectivity", shrink=0.8)
    right.set_title(f"epoch {result.epochs[last]}: class selectivity")
    for ax in (left, middle, right):
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(_title(result))
    target = Path(path)
    figure.savefig(target)
    return target


def gif_epochs(count: int, limit: int = MAX_GIF_FRAMES) -> list[int]:
    """Indices of the epochs the GIF shows: all up to ``limit``, else ``limit`` evenly spaced
    ones (the first and the last included)."""
    if count <= limit:
        return list(range(count))
    return sorted({int(round(v)) for v in np.linspace(0, count - 1, limit)})


def write_gif(result: Units, path: str | os.PathLike) -> Path:
    """``units.gif``: one frame per epoch (at most :data:`MAX_GIF_FRAMES`), the units at that
    epoch coloured by their preferred class then, with their step from the frame before, over
    every epoch's units in light grey."""
    from matplotlib.collections import LineCollection
    from PIL import Image

    figure = _figure(6.4, 6.0, layout=None)
    ax = figure.add_axes((0.02, 0.02, 0.72, 0.96))
    xlim, ylim = _limits(result.positions)
    all_points = result.positions.reshape(-1, 2)
    ax.scatter(all_points[:, 0], all_points[:, 1], s=0.8, c="#e2e2e2", linewidths=0)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    legend_ax = figure.add_axes((0.75, 0.02, 0.24, 0.96))
    legend_ax.axis("off")
    shown = gif_epochs(len(result.epochs))
    _legend(legend_ax, result, result.preferred[shown])
    legend = legend_ax.get_legend()
    if legend is not None:
        legend.set_loc("upper left")
        legend.set_bbox_to_anchor((0.0, 1.0))
    figure.canvas.draw()
    background = figure.canvas.copy_from_bbox(figure.bbox)
    size = max(3.0, min(24.0, 5000.0 / result.units))
    points = ax.scatter([], [], s=size, linewidths=0, zorder=3, animated=True)
    steps = LineCollection([], colors="#888888", linewidths=0.5, alpha=0.35, animated=True)
    ax.add_collection(steps)
    label = ax.text(0.02, 0.98, "", transform=ax.transAxes, va="top", ha="left", fontsize=11,
                    animated=True)  # fmt: skip
    frames = []
    previous = None
    for index in shown:
        figure.canvas.restore_region(background)
        now = result.positions[index]
        if previous is not None:
            steps.set_segments(np.stack([result.positions[previous], now], axis=1))
            ax.draw_artist(steps)
        points.set_offsets(now)
        points.set_facecolors(_point_colours(result, index))
        ax.draw_artist(points)
        label.set_text(f"epoch {result.epochs[index]}")
        ax.draw_artist(label)
        figure.canvas.blit(figure.bbox)
        frames.append(Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()))
        previous = index
    palette_source = Image.fromarray(
        np.concatenate(
            [np.asarray(frames[i]) for i in sorted({0, len(frames) // 2, len(frames) - 1})]
        )
    ).quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    indexed = [frame.quantize(palette=palette_source, dither=Image.Dither.NONE) for frame in frames]
    target = Path(path)
    with open(target, "wb") as handle:
        indexed[0].save(handle, format="GIF", save_all=True, append_images=indexed[1:],
                        duration=GIF_FRAME_MS, loop=0, optimize=False)  # fmt: skip
    return target


def _title(result: Units) -> str:
    run = f" of run {result.run_id}" if result.run_id else ""
    return (
        f"timevis units{run}: {result.units} units of {result.feature_layer}, epochs "
        f"{format_epochs(list(result.epochs))} (M-PHATE, t = {result.embedding.t})"
    )
