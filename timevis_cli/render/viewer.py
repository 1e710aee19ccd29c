"""``render/index.html``: the training played back, and analysed, in a browser.

:func:`write_viewer` writes ONE self-contained HTML file: no network, no external files, no
storage or cookies (it works in a sandboxed frame). The page is three files shipped with the
package (``viewer_assets/viewer.html``, ``viewer.css``, ``viewer.js``), inlined at write time
with the data. What the page does (docs/viewer.md is the user's guide):

- playback: epoch slider, play/pause, speed, keys (left/right step, space plays); each epoch's
  landscape is drawn on its own canvas (``epoch_bounds``: the render's follow framing) and the
  camera glides between epochs' canvases, points interpolated, with an overview inset of the
  whole extent and the current view; without ``epoch_bounds`` the camera is fixed;
- the landscape's agreement per epoch: a strip under the slider (cells below
  :data:`~timevis_cli.render.frames.AGREEMENT_WARN` marked), a badge, a tip on hover;
- colour by label (the PNG frames' convention: a misclassified sample is a ring in its label's
  colour around a dot in the predicted class's colour; test samples are triangles), prediction,
  correct/incorrect at the epoch, the per-sample ``measures`` and the per-epoch kNN
  preservation; a legend whose entries hide (click) or solo (shift+click) a class;
- the data map (confidence against variability, coloured by correctness), linked both ways with
  the landscape's selection;
- selection by click, lasso or box, kept through the epochs (trails for the selection), export
  as CSV/JSON, ids to the clipboard (a download where the clipboard is not allowed), search by
  id, label or "flipped at this epoch";
- the hovered sample's tooltip (id, split, label, prediction at the epoch, measures, thumbnail)
  and lines to its k nearest samples in feature space (``neighbors``) and on the map.

Points are drawn with WebGL2; where WebGL2 is missing or is a software GL (no GPU), the page
rasterises them itself on a 2-D canvas, which is faster there.

All data sit in one ``<script type="application/json">`` block read with ``JSON.parse`` (``<``,
``>`` and ``&`` escaped as ``\\u003c``...), and every user string (class names, titles) reaches
the page through ``textContent``: nothing is ever injected as HTML.

Encoding and page size. Arrays travel as base64 of little-endian typed arrays:

- positions: uint16 per coordinate, quantised over every epoch's canvas (widened to the data's
  range where a sample lies outside them), so the error is below 1/65534 of the span, far under a
  pixel; 65535 marks a missing (non-finite) position, which is not drawn;
- predictions: uint8 with at most 256 classes, uint16 otherwise;
- measures: float32 per sample (the data-map region: uint8); kNN preservation: uint8 per
  (epoch, sample); neighbours: uint16 (int32 beyond 65 535 samples) per (epoch, sample, k);
- backgrounds: one PNG data URI per epoch (identical images stored once); thumbnails: one
  sprite-sheet PNG (grey or RGB), cells of ``h x w`` in ``ceil(sqrt(N))`` columns.

So each (epoch, sample) costs :data:`BYTES_PER_POINT_EPOCH` = 5 bytes raw (6 with more than 256
classes), 4/3 of that in base64: 200 epochs x 10 000 samples is 8 MB of positions + 2 MB of
predictions = 13.3 MB of base64, plus the backgrounds (a 200 x 200 landscape PNG is typically
5-30 KB; the whole page measured 16.1 MB with synthetic landscapes) and the sprite sheet;
neighbours add ``2 k + 1`` bytes per (epoch, sample). :func:`payload_bytes` gives the estimate
of positions and predictions. More than ``max_points`` samples are subsampled (a random subset
with a fixed seed, tracked samples always kept) with a logged warning, never silently.

Test hooks: ``window.timevis`` (``setEpoch(i)``, ``epoch()``, ``time()``, ``pointAt(row)``,
``worldToClient(x, y)``, ``selection()``, ``setSelection(rows)``, ``colorBy(key)``,
``search(text)``, ``exportText(format)``, ``neighbors(row)``, ``camera()``, ``renderer()``,
``ready``, ``readyMs()``, ``frames()``, ...; tests/cli/render/test_viewer_browser.py drives the
page with Playwright). Opening the page as
``index.html#selftest=epoch:3,click:5,hover:17[,test:1][,play:MS]`` sets the epoch, clicks page
row 5, hovers row 17 (showing test samples first with ``test:1``), optionally presses play and
waits MS milliseconds, then writes a JSON report (title, tooltip text, trail rows, ...) into
``<pre id="selftest">``, which ``chromium --headless --dump-dom`` prints; ``#renderer=webgl2``
or ``#renderer=2d`` forces the points' renderer.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from numbers import Integral
from pathlib import Path

import numpy as np
from PIL import Image

from timevis_cli.errors import InputError, TimeVisError
from timevis_cli.render import landscape
from timevis_cli.render.frames import AGREEMENT_WARN
from timevis_cli.render.landscape import Bounds

__all__ = [
    "BYTES_PER_POINT_EPOCH",
    "DEFAULT_MAX_POINTS",
    "MEASURES",
    "REGIONS",
    "ViewerAssetError",
    "payload_bytes",
    "write_viewer",
]

logger = logging.getLogger(__name__)

#: More samples than this are subsampled (with a warning): at 200 epochs that is 13.3 MB of point
#: data (a 16 MB page with 200 x 200 backgrounds, measured).
DEFAULT_MAX_POINTS = 10_000
#: Raw bytes per (epoch, sample) with at most 256 classes: 2 x uint16 position + uint8 prediction.
BYTES_PER_POINT_EPOCH = 5

_MISSING = 65535  # uint16 code of a missing position
_QMAX = 65534  # largest uint16 code of a present position
_SUBSAMPLE_SEED = 0
#: The per-sample measures the page can colour by (besides the per-epoch ones it derives).
MEASURES = ("confidence", "variability", "correctness", "forgetting", "suspect", "region")
#: Data-map regions, in the order of their codes.
REGIONS = ("easy", "ambiguous", "hard")
#: Most neighbours per sample the page draws on hover.
MAX_NEIGHBORS = 32
_DATA_ID = "timevis-data"
_ASSETS = "viewer_assets"  # the page's viewer.html, viewer.css and viewer.js (package data)


class ViewerAssetError(TimeVisError):
    """A file of the page shipped with timevis is missing or unreadable (a broken install)."""


def payload_bytes(n_epochs: int, n_points: int, n_classes: int) -> int:
    """Bytes of base64 the positions and predictions take in the page (backgrounds, thumbnails
    and the fixed page not included)."""
    pred_bytes = 1 if n_classes <= 256 else 2
    return _b64_len(n_epochs * n_points * 4) + _b64_len(n_epochs * n_points * pred_bytes)


def _b64_len(n_bytes: int) -> int:
    return 4 * math.ceil(n_bytes / 3)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _int_array(name: str, values: object, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != shape:
        raise InputError(f"{name} of shape {array.shape} must be {shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name} of dtype {array.dtype} must hold integers")
    return array.astype(np.int64)


def _typed(array: np.ndarray, dtype: str) -> dict[str, object]:
    """A typed array for the page: ``{"dtype", "shape", "b64"}`` (little-endian)."""
    little = {"uint8": "u1", "uint16": "<u2", "int32": "<i4", "float32": "<f4", "float64": "<f8"}[
        dtype
    ]
    raw = np.ascontiguousarray(array, dtype=little).tobytes()
    return {"dtype": dtype, "shape": list(array.shape), "b64": base64.b64encode(raw).decode()}


def _png_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _quantise(positions: np.ndarray, bounds: Bounds) -> tuple[np.ndarray, list[float]]:
    """uint16 codes of ``positions`` [E, N, 2] over the bounds widened to the finite data; the
    range ``[xlo, xhi, ylo, yhi]`` they decode with."""
    finite = np.isfinite(positions).all(axis=-1)
    lows = [bounds.xmin, bounds.ymin]
    highs = [bounds.xmax, bounds.ymax]
    if finite.any():
        present = positions[finite]
        lows = np.minimum(lows, present.min(axis=0)).tolist()
        highs = np.maximum(highs, present.max(axis=0)).tolist()
    spans = [hi - lo if hi > lo else 1.0 for lo, hi in zip(lows, highs, strict=True)]
    codes = np.full(positions.shape, _MISSING, dtype=np.uint16)
    for axis in range(2):
        scaled = (positions[..., axis][finite] - lows[axis]) / spans[axis] * _QMAX
        codes[..., axis][finite] = np.clip(np.rint(scaled), 0, _QMAX).astype(np.uint16)
    return codes, [lows[0], lows[0] + spans[0], lows[1], lows[1] + spans[1]]


def _sprite(thumbnails: np.ndarray) -> dict[str, object]:
    """All thumbnails in one PNG sprite sheet, row ``k`` in cell ``(k // cols, k % cols)``."""
    n, h, w = thumbnails.shape[:3]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    sheet = np.zeros((rows * h, cols * w, *thumbnails.shape[3:]), dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = thumbnails[k]
    return {"uri": _png_uri(sheet), "w": int(w), "h": int(h), "cols": int(cols)}


def _check_thumbnails(thumbnails: object, n: int) -> np.ndarray | None:
    if thumbnails is None:
        return None
    thumbs = np.asarray(thumbnails)
    ok_shape = thumbs.ndim == 3 or (thumbs.ndim == 4 and thumbs.shape[3] == 3)
    if not ok_shape or len(thumbs) != n or thumbs.dtype != np.uint8:
        raise InputError(
            f"thumbnails of shape {thumbs.shape} and dtype {thumbs.dtype} must be uint8 "
            f"({n}, h, w) or ({n}, h, w, 3)"
        )
    if min(thumbs.shape[1:3]) < 1:
        raise InputError(f"thumbnails of shape {thumbs.shape} are empty")
    return thumbs


def _subsample(n: int, max_points: int, track: list[int]) -> np.ndarray | None:
    """Rows to keep (sorted) when ``n > max_points``, tracked rows always among them."""
    if n <= max_points:
        return None
    rng = np.random.default_rng(_SUBSAMPLE_SEED)
    tracked = np.unique(np.asarray(track, dtype=np.int64))
    rest = np.setdiff1d(np.arange(n), tracked)
    extra = max(0, max_points - len(tracked))
    keep = np.union1d(tracked, rng.choice(rest, size=min(extra, len(rest)), replace=False))
    logger.warning(
        "%d samples exceed max_points=%d: index.html shows a random %d of them (seed %d, the "
        "%d tracked samples included); raise max_points to show more (each sample costs about "
        "%.1f KB per 100 epochs)",
        n, max_points, len(keep), _SUBSAMPLE_SEED, len(tracked),
        BYTES_PER_POINT_EPOCH * 4 / 3 * 100 / 1000,
    )  # fmt: skip
    return keep


def _asset(name: str) -> str:
    """The text of one of the page's files shipped in ``viewer_assets/``."""
    try:
        return resources.files(__package__).joinpath(_ASSETS, name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ViewerAssetError(
            f"the page's file {_ASSETS}/{name} cannot be read ({exc}); reinstall timevis"
        ) from exc


def _page(payload: str) -> str:
    """index.html: ``viewer.html`` with the stylesheet, the data block and the code inlined (each
    placeholder filled once; nothing inserted is scanned again)."""
    template, css, js = (_asset(name) for name in ("viewer.html", "viewer.css", "viewer.js"))
    for name, text in (("viewer.css", css), ("viewer.js", js)):
        if re.search(r"</(script|style)|<!--", text, re.IGNORECASE):
            raise ViewerAssetError(f"{_ASSETS}/{name} holds a closing tag or '<!--'")
    parts = {"__TIMEVIS_CSS__": css, "__TIMEVIS_DATA__": payload, "__TIMEVIS_JS__": js}
    out, rest = [], template
    for marker, text in parts.items():
        before, found, rest = rest.partition(marker)
        if not found:
            raise ViewerAssetError(f"{_ASSETS}/viewer.html lacks its {marker} placeholder")
        out += [before, text]
    return "".join([*out, rest])


def _bounds_list(b: Bounds) -> list[float]:
    return [float(b.xmin), float(b.xmax), float(b.ymin), float(b.ymax)]


def _check_bounds(b: Bounds, what: str) -> None:
    values = (b.xmin, b.xmax, b.ymin, b.ymax)
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{what} {b} is not finite")
    if not (b.xmax > b.xmin and b.ymax > b.ymin):
        raise InputError(f"{what} {b} is empty: max must exceed min on both axes")


def _union(boxes: Sequence[Bounds]) -> Bounds:
    return Bounds(
        min(b.xmin for b in boxes), max(b.xmax for b in boxes),
        min(b.ymin for b in boxes), max(b.ymax for b in boxes),
    )  # fmt: skip


def _measures(
    measures: Mapping[str, object] | None, n: int, correct: np.ndarray
) -> dict[str, np.ndarray]:
    """The per-sample measures the page colours by, checked: float64 [N] each (``region``: uint8
    codes into :data:`REGIONS`); ``correctness`` and ``forgetting`` computed from the page's
    predictions (bool ``correct`` [E, N]) where not given."""
    given = dict(measures or {})
    unknown = sorted(set(given) - set(MEASURES))
    if unknown:
        raise InputError(f"measures {unknown} are not known; use some of {', '.join(MEASURES)}")
    out: dict[str, np.ndarray] = {}
    for name, values in given.items():
        array = np.asarray(values)
        if array.shape != (n,):
            raise InputError(f"measure {name!r} of shape {array.shape} must be ({n},)")
        if name == "region":
            if array.dtype.kind in "US":
                bad = sorted(set(array.tolist()) - set(REGIONS))
                if bad:
                    raise InputError(f"measure 'region' holds {bad}; use {', '.join(REGIONS)}")
                code = {region: k for k, region in enumerate(REGIONS)}
                array = np.asarray([code[value] for value in array.tolist()], dtype=np.int64)
            elif not (
                np.issubdtype(array.dtype, np.integer)
                and (array.size == 0 or (array.min() >= 0 and array.max() < len(REGIONS)))
            ):
                raise InputError(f"measure 'region' must hold {', '.join(REGIONS)} or 0..2")
            out[name] = array.astype(np.uint8)
            continue
        if not np.issubdtype(array.dtype, np.number):
            raise InputError(f"measure {name!r} of dtype {array.dtype} must be numeric")
        out[name] = array.astype(np.float64)
    if "correctness" not in out:
        out["correctness"] = correct.mean(axis=0, dtype=np.float64)
    if "forgetting" not in out:
        out["forgetting"] = (correct[:-1] & ~correct[1:]).sum(axis=0).astype(np.float64)
    return out


def _check_neighbors(neighbors: object, shape: tuple[int, int]) -> np.ndarray | None:
    if neighbors is None:
        return None
    array = np.asarray(neighbors)
    if array.ndim != 3 or array.shape[:2] != shape or array.shape[2] < 1:
        raise InputError(f"neighbors of shape {array.shape} must be ({shape[0]}, {shape[1]}, k)")
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"neighbors of dtype {array.dtype} must hold row indices")
    if array.size and (array.min() < -1 or array.max() >= shape[1]):
        raise InputError(f"neighbors must be row indices in 0..{shape[1] - 1} (-1: none)")
    if array.shape[2] > MAX_NEIGHBORS:
        raise InputError(f"neighbors has k={array.shape[2]}; at most {MAX_NEIGHBORS} are shown")
    return array.astype(np.int64)


def _check_faithfulness(values: object, shape: tuple[int, int]) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape:
        raise InputError(f"faithfulness of shape {array.shape} must be {shape}")
    finite = array[np.isfinite(array)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise InputError("faithfulness must lie in [0, 1] (NaN: unknown)")
    return array


def _check_exact(
    boundaries: Sequence[np.ndarray | None] | None, epochs: list[int]
) -> list[dict[str, object] | None] | None:
    """The exact boundaries as the page reads them: per epoch float32 segments (S, 4)."""
    if boundaries is None:
        return None
    boundaries = list(boundaries)
    if len(boundaries) != len(epochs):
        raise InputError(f"{len(boundaries)} exact_boundaries given for {len(epochs)} epochs")
    out: list[dict[str, object] | None] = []
    for epoch, segments in zip(epochs, boundaries, strict=True):
        if segments is None:
            out.append(None)
            continue
        array = np.asarray(segments, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 4 or not np.isfinite(array).all():
            raise InputError(
                f"exact boundary of epoch {epoch}: shape {array.shape} must be finite (S, 4)"
            )
        out.append(_typed(array, "float32"))
    return out


def write_viewer(
    out_path: str | Path,
    *,
    epochs: Sequence[int],
    backgrounds: Sequence[np.ndarray],
    bounds: Bounds,
    positions: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    ids: np.ndarray,
    splits: np.ndarray,
    class_names: Sequence[str],
    palette: np.ndarray | None = None,
    thumbnails: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    track: Sequence[int] | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    epoch_bounds: Sequence[Bounds] | None = None,
    agreements: Sequence[float | None] | None = None,
    measures: Mapping[str, object] | None = None,
    neighbors: np.ndarray | None = None,
    faithfulness: np.ndarray | None = None,
    exact_boundaries: Sequence[np.ndarray | None] | None = None,
) -> Path:
    """Write the interactive page to ``out_path`` (its folder is created); the path.

    epochs: E epoch numbers, in playing order. backgrounds: E uint8 (R, R, 3) landscapes, row 0
    at the top, each covering its epoch's canvas: ``epoch_bounds[t]`` (the camera follows them,
    gliding between epochs), or ``bounds`` for every epoch when ``epoch_bounds`` is None (a fixed
    camera). positions: float [E, N, 2] embedding positions (NaN: absent at that epoch, not
    drawn). labels: int [N]; predictions: int [E, N]; ids: int [N] sample ids shown on hover;
    splits: [N], 0 train, 1 test. class_names: C names (shown as text, never parsed as HTML);
    palette: uint8 [>=C, 3], ``landscape.palette(C)`` when omitted. thumbnails: uint8 [N, h, w]
    or [N, h, w, 3], or None. titles: E strings (``render.title_text``), ``"epoch n"`` when
    omitted. track: row indices selected when the page opens. max_points: more rows than this
    are subsampled, with a logged warning. agreements: E landscape agreements (None/NaN:
    unknown). measures: per-sample values [N] the page can colour by (:data:`MEASURES`; the data
    map needs ``confidence`` and ``variability``; ``region`` as names or codes into
    :data:`REGIONS`). neighbors: int [E, N, k] each sample's k nearest rows in feature space at
    each epoch (-1: none), drawn on hover; faithfulness: float [E, N] each sample's kNN
    preservation at each epoch (NaN: unknown). exact_boundaries: E float arrays (S, 4) of
    the exact class boundaries' segments ``x0, y0, x1, y1`` (``render --exact``; None for an
    epoch without), drawn over the backgrounds as vector paths that stay sharp at any scale.
    """
    epochs = list(epochs)
    if not epochs or not all(_is_int(e) for e in epochs):
        raise InputError(f"epochs={epochs!r} must be a non-empty list of integers")
    n_epochs = len(epochs)
    if len(set(epochs)) != n_epochs:
        raise InputError(f"epochs {epochs} name an epoch twice")
    _check_bounds(bounds, "bounds")
    if epoch_bounds is not None:
        epoch_bounds = list(epoch_bounds)
        if len(epoch_bounds) != n_epochs:
            raise InputError(f"{len(epoch_bounds)} epoch_bounds given for {n_epochs} epochs")
        for epoch, box in zip(epochs, epoch_bounds, strict=True):
            _check_bounds(box, f"epoch_bounds of epoch {epoch}:")
    if not (_is_int(max_points) and max_points >= 1):
        raise InputError(f"max_points={max_points!r} must be a positive integer")

    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[0] != n_epochs or positions.shape[2] != 2:
        raise InputError(f"positions of shape {positions.shape} must be ({n_epochs}, N, 2)")
    n = positions.shape[1]
    labels = _int_array("labels", labels, (n,))
    predictions = _int_array("predictions", predictions, (n_epochs, n))
    ids = _int_array("ids", ids, (n,))
    splits = _int_array("splits", splits, (n,))
    if splits.size and not np.isin(splits, (0, 1)).all():
        raise InputError("splits must hold 0 (train) or 1 (test) only")

    class_names = [str(name) for name in class_names]
    n_classes = len(class_names)
    if n_classes == 0:
        raise InputError("class_names is empty: the page needs one name per class")
    colours = landscape.palette(n_classes) if palette is None else np.asarray(palette)
    if colours.ndim != 2 or colours.shape[1] != 3 or len(colours) < n_classes:
        raise InputError(
            f"palette of shape {colours.shape} must be (C, 3) with C >= {n_classes} classes"
        )
    colours = np.clip(colours, 0, 255).astype(np.uint8)[:n_classes]
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise InputError(
                f"{name} {values.min()}..{values.max()} fall outside the {n_classes} classes"
            )

    backgrounds = list(backgrounds)
    if len(backgrounds) != n_epochs:
        raise InputError(f"{len(backgrounds)} backgrounds given for {n_epochs} epochs")
    for t, image in enumerate(backgrounds):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise InputError(
                f"background of epoch {epochs[t]}: shape {image.shape} and dtype {image.dtype} "
                "must be uint8 (R, R, 3)"
            )
    if titles is None:
        titles = [f"epoch {e}" for e in epochs]
    titles = [str(title) for title in titles]
    if len(titles) != n_epochs:
        raise InputError(f"{len(titles)} titles given for {n_epochs} epochs")
    if agreements is not None:
        agreements = [None if a is None else float(a) for a in agreements]
        if len(agreements) != n_epochs:
            raise InputError(f"{len(agreements)} agreements given for {n_epochs} epochs")
        agreements = [None if a is None or math.isnan(a) else a for a in agreements]
    thumbs = _check_thumbnails(thumbnails, n)
    track = [] if track is None else list(track)
    for row in track:
        if not (_is_int(row) and 0 <= row < n):
            raise InputError(f"track row {row!r} is not a row index in 0..{n - 1}")
    values = _measures(measures, n, predictions == labels[None, :])
    neighbors = _check_neighbors(neighbors, (n_epochs, n))
    faithfulness = _check_faithfulness(faithfulness, (n_epochs, n))
    exact = _check_exact(exact_boundaries, epochs)

    keep = _subsample(n, max_points, track)
    if keep is not None:
        new_row = {int(old): k for k, old in enumerate(keep)}
        positions, labels, predictions = positions[:, keep], labels[keep], predictions[:, keep]
        ids, splits = ids[keep], splits[keep]
        thumbs = None if thumbs is None else thumbs[keep]
        track = [new_row[int(row)] for row in track]
        values = {name: array[keep] for name, array in values.items()}
        if neighbors is not None:
            remap = np.full(n + 1, -1, dtype=np.int64)  # index n: the "none" of -1
            remap[keep] = np.arange(len(keep))
            neighbors = remap[neighbors[:, keep]]
        if faithfulness is not None:
            faithfulness = faithfulness[:, keep]
        n = len(keep)
    track = list(dict.fromkeys(int(row) for row in track))

    boxes = [bounds] if epoch_bounds is None else epoch_bounds
    overall = _union([bounds, *boxes])
    codes, qrange = _quantise(positions, overall)
    unique: dict[str, int] = {}
    background_index = [
        unique.setdefault(_png_uri(np.asarray(image)), len(unique)) for image in backgrounds
    ]
    ids_fit = not ids.size or (ids.min() >= -(2**31) and ids.max() < 2**31)
    fields = {}
    for name, array in values.items():
        fields[name] = _typed(array, "uint8") if name == "region" else _typed(array, "float32")
    knn = None
    if neighbors is not None:
        k = neighbors.shape[2]
        wide = n >= 65535
        stored = np.where(neighbors < 0, 2**31 - 1 if wide else 65535, neighbors)
        knn = {"k": int(k), "rows": _typed(stored, "int32" if wide else "uint16")}
    faith = None
    if faithfulness is not None:
        code = np.where(np.isfinite(faithfulness), np.rint(np.nan_to_num(faithfulness) * 250), 255)
        faith = _typed(code.astype(np.uint8), "uint8")
    camera = [_bounds_list(box) for box in (epoch_bounds or [bounds] * n_epochs)]
    data = {
        "version": 2,
        "epochs": [int(e) for e in epochs],
        "titles": titles,
        "classNames": class_names,
        "palette": colours.tolist(),
        "bounds": _bounds_list(_union([overall, Bounds(*qrange)])),
        "epochBounds": camera,
        "fixedCamera": epoch_bounds is None or all(c == camera[0] for c in camera),
        "qrange": qrange,
        "qmax": _QMAX,
        "n": int(n),
        "positions": _typed(codes, "uint16"),
        "predictions": _typed(predictions, "uint8" if n_classes <= 256 else "uint16"),
        "labels": _typed(labels, "uint8" if n_classes <= 256 else "uint16"),
        "ids": _typed(ids, "int32" if ids_fit else "float64"),
        "splits": _typed(splits, "uint8"),
        "backgrounds": list(unique),
        "backgroundIndex": background_index,
        "thumbnails": None if thumbs is None else _sprite(thumbs),
        "track": track,
        "sourceRows": None if keep is None else keep.tolist(),
        "agreements": agreements,
        "agreementWarn": AGREEMENT_WARN,
        "regions": list(REGIONS),
        "fields": fields,
        "neighbors": knn,
        "faithfulness": faith,
        "exactBoundaries": exact,
    }
    payload = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    # Nothing in the block can close the <script> element or start markup.
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    page = _page(payload)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    logger.info(
        "wrote %s: %d epochs x %d samples, %.1f MB",
        out_path, n_epochs, n, out_path.stat().st_size / 1e6,
    )  # fmt: skip
    return out_path
