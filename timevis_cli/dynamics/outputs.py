"""``RUN_DIR/dynamics/``: samples.csv, datamap.png, events.png and summary.json.

The folder is written whole or not at all (:func:`timevis_cli.outputs.replaced_folder`): a
failure or Ctrl-C while writing keeps the previous ``dynamics/`` as it was. The figures are drawn
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
from timevis_cli.dynamics.measures import SUSPECT_FORMULA, Dynamics
from timevis_cli.errors import InputError
from timevis_cli.outputs import replaced_folder

__all__ = [
    "DATAMAP_FILE",
    "DYNAMICS_DIR",
    "EVENTS_FILE",
    "SAMPLES_FILE",
    "SUMMARY_FILE",
    "plot_datamap",
    "plot_events",
    "summarize",
    "write_dynamics",
    "write_samples_csv",
]

DYNAMICS_DIR = "dynamics"
SAMPLES_FILE = "samples.csv"
DATAMAP_FILE = "datamap.png"
EVENTS_FILE = "events.png"
SUMMARY_FILE = "summary.json"
JSON_FORMAT = "timevis-dynamics"
JSON_VERSION = 1
HEXBIN_FROM = 2000  # samples of a split from which the data map shades their density
TOP_SUSPECTS = 10  # in summary.json, and circled on the data map
REGION_COLOURS = {"easy": "tab:green", "ambiguous": "tab:orange", "hard": "tab:red"}


def write_dynamics(
    run_dir: str | os.PathLike, result: Dynamics, seconds: dict[str, float] | None = None
) -> Path:
    """Write ``RUN_DIR/dynamics/`` (samples.csv, datamap.png, events.png, summary.json) through
    a temporary folder renamed at the end; a previous one is replaced. Returns the folder.

    Raises InputError when ``RUN_DIR/dynamics`` is a file or RUN_DIR is not writable (checked
    before anything is written).
    """
    run_dir = Path(run_dir)
    final = run_dir / DYNAMICS_DIR
    if final.exists() and not final.is_dir():
        raise InputError(
            f"{final} is a file, not a folder; move it away so timevis can write {DYNAMICS_DIR}/"
        )
    if not os.access(run_dir, os.W_OK):
        raise InputError(f"{run_dir} is not writable; fix its permissions or copy the run store")
    with replaced_folder(run_dir, DYNAMICS_DIR) as tmp:
        write_samples_csv(result, tmp / SAMPLES_FILE)
        plot_datamap(result, tmp / DATAMAP_FILE)
        plot_events(result, tmp / EVENTS_FILE)
        text = json.dumps(summarize(result, seconds), indent=2, allow_nan=False)
        (tmp / SUMMARY_FILE).write_text(text + "\n", encoding="utf-8")
    return final


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_samples_csv(result: Dynamics, path: str | os.PathLike) -> Path:
    """One row per sample, ranked by suspect score (most suspect first), the columns of
    :meth:`Dynamics.columns`; ``first_learned`` and ``suggested_label`` are empty for none."""
    columns = result.columns()
    names = list(columns)
    empty_if_negative = {"first_learned", "suggested_label"}
    target = Path(path)
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        values = [columns[name].tolist() for name in names]
        for row in zip(*values, strict=True):
            writer.writerow(
                "" if name in empty_if_negative and value < 0 else _cell(value)
                for name, value in zip(names, row, strict=True)
            )
    return target


# --------------------------------------------------------------------------- summary


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def summarize(result: Dynamics, seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """The contents of ``summary.json``: per split the counts per region, learning and
    forgetting totals, mean measures and the per-epoch events; the top suspects overall."""
    splits: dict[str, Any] = {}
    for split in result.splits:
        rows = result.split == split
        events = result.events(split)
        splits[split] = {
            "samples": int(rows.sum()),
            "regions": result.region_counts(split),
            "not_learned": int((result.first_learned[rows] < 0).sum()),
            "forgotten_samples": int((result.forgetting[rows] > 0).sum()),
            "forgetting_events": int(result.forgetting[rows].sum()),
            "prediction_flips": int(result.flips[rows].sum()),
            "mean": {
                name: _mean(getattr(result, name)[rows])
                for name in ("confidence", "variability", "correctness", "suspect")
            },
            "per_epoch": {
                "epoch": list(result.epochs),
                **{name: [_plain(v) for v in values] for name, values in events.items()},
            },
        }
    return {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "run_id": result.run_id,
        "epochs": list(result.epochs),
        "samples": len(result),
        "settings": result.settings.to_dict(),
        "regions": {
            "ambiguous": "variability >= ambiguous_variability, or confidence between "
            "hard_confidence and easy_confidence",
            "easy": "variability < ambiguous_variability and confidence >= easy_confidence",
            "hard": "variability < ambiguous_variability and confidence <= hard_confidence",
        },
        "suspect_formula": SUSPECT_FORMULA,
        "splits": splits,
        "top_suspects": result.top_suspects(TOP_SUSPECTS),
        "seconds": dict(seconds or {}),
    }


def _plain(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --------------------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_datamap(result: Dynamics, path: str | os.PathLike) -> Path:
    """``datamap.png``: variability (x) against confidence (y), one panel per split, each sample
    coloured by its correctness; from :data:`HEXBIN_FROM` samples a grey hexbin shades their
    density underneath. The region thresholds are drawn and the top suspects circled."""
    from matplotlib.colors import Normalize

    splits = result.splits
    figure = _figure(6.4 * len(splits) + 1.0, 5.6)
    axes = np.atleast_1d(figure.subplots(1, len(splits), squeeze=False)[0])
    settings = result.settings
    x_max = max(0.5, float(result.variability.max()) * 1.05)
    norm = Normalize(0.0, 1.0)
    drawn = None
    suspects = result.ranking()[:TOP_SUSPECTS]
    for ax, split in zip(axes, splits, strict=True):
        rows = np.flatnonzero(result.split == split)
        x, y, c = result.variability[rows], result.confidence[rows], result.correctness[rows]
        large = len(rows) >= HEXBIN_FROM
        if large:
            ax.hexbin(x, y, gridsize=45, extent=(0.0, x_max, 0.0, 1.0), bins="log",
                      cmap="Greys", mincnt=1, linewidths=0.0, zorder=0)  # fmt: skip
        drawn = ax.scatter(
            x, y, c=c, cmap="RdYlGn", norm=norm, s=3 if large else 14,
            alpha=0.45 if large else 0.85, linewidths=0.0, zorder=1,
        )  # fmt: skip
        mine = suspects[result.split[suspects] == split]
        if len(mine):
            ax.scatter(result.variability[mine], result.confidence[mine], s=70,
                       facecolors="none", edgecolors="black", linewidths=1.0, zorder=2,
                       label=f"top {TOP_SUSPECTS} suspects")  # fmt: skip
            ax.legend(loc="lower right", fontsize=8)
        v = settings.ambiguous_variability
        ax.axvline(v, color="black", lw=0.8, ls="--")
        ax.hlines([settings.easy_confidence, settings.hard_confidence], 0.0, v, color="black",
                  lw=0.8, ls="--")  # fmt: skip
        counts = result.region_counts(split)
        places = {  # data coordinates: inside each region, by its threshold line
            "easy": (0.005, settings.easy_confidence + 0.01, "left", "bottom"),
            "hard": (0.005, settings.hard_confidence - 0.01, "left", "top"),
            "ambiguous": (x_max * 0.995, 1.0, "right", "top"),
        }
        for name, (tx, ty, ha, va) in places.items():
            ax.text(tx, ty, f"{name} ({counts[name]})", ha=ha, va=va, fontsize=9,
                    color=REGION_COLOURS[name], fontweight="bold", zorder=3)  # fmt: skip
        ax.set_xlim(0.0, x_max)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("variability (std of p(label))")
        ax.set_ylabel("confidence (mean p(label))")
        ax.set_title(f"{split}: {len(rows)} samples")
        ax.grid(alpha=0.25)
    figure.colorbar(drawn, ax=list(axes), label="correctness (fraction of epochs)")
    figure.suptitle(_title(result, "data map"))
    target = Path(path)
    figure.savefig(target)
    return target


def plot_events(result: Dynamics, path: str | os.PathLike) -> Path:
    """``events.png``: per epoch, prediction flips, forgetting events and learning events since
    the epoch before (top), and the accuracy on the measured samples (bottom); train solid, test
    dashed."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(9.0, 6.0)
    top, bottom = figure.subplots(2, 1, sharex=True)
    styles = {"train": "-", "test": "--"}
    colours = {"flips": "tab:blue", "forgetting": "tab:red", "learning": "tab:green"}
    epochs = np.asarray(result.epochs)
    for split in result.splits:
        events = result.events(split)
        if len(epochs) > 1:
            for name, colour in colours.items():
                top.plot(epochs[1:], events[name][1:], styles[split], color=colour, marker="o",
                         ms=3, label=f"{name} ({split})")  # fmt: skip
        bottom.plot(epochs, events["accuracy"], styles[split], color="black", marker="o", ms=3,
                    label=split)  # fmt: skip
    if len(epochs) > 1:
        top.legend(fontsize=8, ncol=len(result.splits))
    else:
        top.text(0.5, 0.5, "one epoch: no transitions between epochs", ha="center",
                 va="center", transform=top.transAxes)  # fmt: skip
    top.set_ylim(bottom=0)
    top.set_ylabel("samples (since the epoch before)")
    top.set_title("prediction flips, forgetting (correct -> wrong), learning (wrong -> correct)")
    bottom.set_ylabel("accuracy")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_xlabel("epoch")
    bottom.legend(fontsize=8)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    figure.suptitle(_title(result, "events per epoch"))
    target = Path(path)
    figure.savefig(target)
    return target


def _title(result: Dynamics, what: str) -> str:
    run = f" of run {result.run_id}" if result.run_id else ""
    return f"timevis dynamics: {what}{run}, epochs {format_epochs(list(result.epochs))}"

