"""``render/index.html``: the training played back in a browser.

:func:`write_viewer` writes ONE self-contained HTML file: no network, no external files, vanilla
JavaScript drawing on a ``<canvas>``. It has an epoch slider, a play/pause button, a speed select,
a checkbox that shows test samples, the epoch's title, a legend, and a tooltip on hover with the
sample's id, split, label, prediction at that epoch and thumbnail. Trails are off for every
sample but the hovered one and the selected ones (``track``, and those clicked; a second click,
the "clear trails" button or Escape drops them): each is drawn smoothed (a moving average over
the epochs, then a Catmull-Rom curve through it, ending on the sample's current position),
fading with age behind the current epoch, and faint and dashed ahead of it.
Points follow the PNG frames' convention (``render.py``): coloured by label, a misclassified
sample drawn as a ring in its label's colour around a dot in the predicted class's colour, test
samples as triangles.

All data sit in one ``<script type="application/json">`` block read with ``JSON.parse`` (``<``,
``>`` and ``&`` escaped as ``\\u003c``...), and every user string (class names, titles) reaches
the page through ``textContent``: nothing is ever injected as HTML.

Encoding and page size. Arrays travel as base64 of little-endian typed arrays:

- positions: uint16 per coordinate, quantised over the canvas bounds (widened to the data's
  range where a sample lies outside them), so the error is below 1/65534 of the span, far under a
  pixel; 65535 marks a missing (non-finite) position, which is not drawn;
- predictions: uint8 with at most 256 classes, uint16 otherwise;
- backgrounds: one PNG data URI per epoch (identical images stored once); thumbnails: one
  sprite-sheet PNG (grey or RGB), cells of ``h x w`` in ``ceil(sqrt(N))`` columns.

So each (epoch, sample) costs :data:`BYTES_PER_POINT_EPOCH` = 5 bytes raw (6 with more than 256
classes), 4/3 of that in base64: 200 epochs x 10 000 samples is 8 MB of positions + 2 MB of
predictions = 13.3 MB of base64, plus the backgrounds (a 200 x 200 landscape PNG is typically
5-30 KB; the whole page measured 16.1 MB with synthetic landscapes) and the sprite sheet.
:func:`payload_bytes` gives the estimate. More than ``max_points`` samples are subsampled (a
random subset with a fixed seed, tracked samples always kept) with a logged warning, never
silently.

Test hooks: the DOM ids ``epoch-slider``, ``play``, ``title``, ``tooltip``, ``canvas``, ``legend``,
``clear-trails``; ``window.timevis`` with ``setEpoch(i)``, ``epoch()`` (both an index into
``epochs``), ``epochNumber()``, ``pointAt(row)`` (``{x, y}`` in CSS pixels from the canvas's
top-left corner, plus ``clientX``/``clientY`` for a synthetic mouse event; ``null`` where the
position is missing), ``select(row)`` (toggles a row's trail), ``trailRows()`` (the rows whose
trails are drawn: selected, then hovered) and ``ready`` (a promise: images decoded). Opening the
page as ``index.html#selftest=epoch:3,click:5,hover:17[,test:1][,play:MS]`` sets the slider,
clicks page row 5, hovers row 17 (showing test samples first with ``test:1``), optionally
presses play and waits MS milliseconds, then writes a JSON report (title, tooltip text, trail
rows, ...) into ``<pre id="selftest">``, which ``chromium --headless --dump-dom`` prints.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from collections.abc import Sequence
from numbers import Integral
from pathlib import Path

import numpy as np
from PIL import Image

from timevis_cli.errors import InputError
from timevis_cli.render import landscape
from timevis_cli.render.landscape import Bounds

__all__ = ["BYTES_PER_POINT_EPOCH", "DEFAULT_MAX_POINTS", "payload_bytes", "write_viewer"]

logger = logging.getLogger(__name__)

#: More samples than this are subsampled (with a warning): at 200 epochs that is 13.3 MB of point
#: data (a 16 MB page with 200 x 200 backgrounds, measured).
DEFAULT_MAX_POINTS = 10_000
#: Raw bytes per (epoch, sample) with at most 256 classes: 2 x uint16 position + uint8 prediction.
BYTES_PER_POINT_EPOCH = 5

_MISSING = 65535  # uint16 code of a missing position
_QMAX = 65534  # largest uint16 code of a present position
_SUBSAMPLE_SEED = 0
_DATA_ID = "timevis-data"


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
    little = {"uint8": "u1", "uint16": "<u2", "int32": "<i4", "float64": "<f8"}[dtype]
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
) -> Path:
    """Write the interactive page to ``out_path`` (its folder is created); the path.

    epochs: E epoch numbers, in playing order. backgrounds: E uint8 (R, R, 3) landscapes, row 0
    at the top, covering ``bounds`` (the global canvas). positions: float [E, N, 2] embedding
    positions (NaN: absent at that epoch, not drawn). labels: int [N]; predictions: int [E, N];
    ids: int [N] sample ids shown on hover; splits: [N], 0 train, 1 test. class_names: C names
    (shown as text, never parsed as HTML); palette: uint8 [>=C, 3], ``landscape.palette(C)`` when
    omitted. thumbnails: uint8 [N, h, w] or [N, h, w, 3], or None. titles: E strings
    (``render.title_text``), ``"epoch n"`` when omitted. track: row indices selected when the
    page opens (their trails drawn; every other trail is off until its sample is hovered or
    clicked). max_points: more rows than this are subsampled, with a logged warning.
    """
    epochs = list(epochs)
    if not epochs or not all(_is_int(e) for e in epochs):
        raise InputError(f"epochs={epochs!r} must be a non-empty list of integers")
    n_epochs = len(epochs)
    if len(set(epochs)) != n_epochs:
        raise InputError(f"epochs {epochs} name an epoch twice")
    if not (bounds.xmax > bounds.xmin and bounds.ymax > bounds.ymin):
        raise InputError(f"{bounds} is empty: max must exceed min on both axes")
    if not all(math.isfinite(v) for v in (bounds.xmin, bounds.xmax, bounds.ymin, bounds.ymax)):
        raise InputError(f"{bounds} is not finite")
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
    thumbs = _check_thumbnails(thumbnails, n)
    track = [] if track is None else list(track)
    for row in track:
        if not (_is_int(row) and 0 <= row < n):
            raise InputError(f"track row {row!r} is not a row index in 0..{n - 1}")

    keep = _subsample(n, max_points, track)
    if keep is not None:
        new_row = {int(old): k for k, old in enumerate(keep)}
        positions, labels, predictions = positions[:, keep], labels[keep], predictions[:, keep]
        ids, splits = ids[keep], splits[keep]
        thumbs = None if thumbs is None else thumbs[keep]
        track = [new_row[int(row)] for row in track]
        n = len(keep)
    track = list(dict.fromkeys(int(row) for row in track))

    codes, qrange = _quantise(positions, bounds)
    unique: dict[str, int] = {}
    background_index = [
        unique.setdefault(_png_uri(np.asarray(image)), len(unique)) for image in backgrounds
    ]
    ids_fit = not ids.size or (ids.min() >= -(2**31) and ids.max() < 2**31)
    data = {
        "version": 1,
        "epochs": [int(e) for e in epochs],
        "titles": titles,
        "classNames": class_names,
        "palette": colours.tolist(),
        "bounds": [bounds.xmin, bounds.xmax, bounds.ymin, bounds.ymax],
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
    }
    payload = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    # Nothing in the block can close the <script> element or start markup.
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    page = _PAGE.replace("__DATA__", payload, 1)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    logger.info(
        "wrote %s: %d epochs x %d samples, %.1f MB",
        out_path, n_epochs, n, out_path.stat().st_size / 1e6,
    )  # fmt: skip
    return out_path


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>timevis: training playback</title>
<style>
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 12px 16px;
       color: #222; background: #fafafa; }
#title { font-size: 18px; font-weight: 600; margin: 4px 0 8px; min-height: 1.4em; }
#controls { display: flex; flex-wrap: wrap; align-items: center; gap: 10px; margin-bottom: 8px; }
#controls button { min-width: 64px; }
#epoch-slider { width: 360px; }
#stage { position: relative; display: inline-block; border: 1px solid #999; background: #fff; }
#stage canvas { display: block; }
#overlay { position: absolute; left: 0; top: 0; pointer-events: none; }
#tooltip { position: absolute; display: none; pointer-events: none; background: #fff;
           border: 1px solid #555; border-radius: 4px; padding: 6px 8px; font-size: 12px;
           box-shadow: 0 2px 6px rgba(0,0,0,.25); white-space: nowrap; z-index: 2; }
#tooltip canvas { display: block; margin-bottom: 4px; image-rendering: pixelated; }
#legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin-top: 8px; max-width: 900px; }
#legend .item { display: inline-flex; align-items: center; gap: 5px; }
#legend .swatch { width: 12px; height: 12px; border-radius: 50%; border: 1px solid #333; }
#key { margin-top: 6px; color: #555; font-size: 12px; }
#selftest { display: none; }
</style>
</head>
<body>
<div id="title"></div>
<div id="controls">
  <button id="play" type="button">play</button>
  <input id="epoch-slider" type="range" min="0" max="0" step="1" value="0">
  <span id="epoch-label"></span>
  <label>speed <select id="speed">
    <option value="1">1 epoch/s</option><option value="2">2 epochs/s</option>
    <option value="5">5 epochs/s</option><option value="10" selected>10 epochs/s</option>
    <option value="20">20 epochs/s</option><option value="50">50 epochs/s</option>
  </select></label>
  <label><input id="show-test" type="checkbox"> test samples</label>
  <button id="clear-trails" type="button">clear trails</button>
</div>
<div id="stage">
  <canvas id="canvas"></canvas>
  <canvas id="overlay"></canvas>
  <div id="tooltip"></div>
</div>
<div id="legend"></div>
<div id="key">&#9679; train &nbsp; &#9650; test &nbsp; ring: label colour, inner dot:
predicted colour (misclassified) &nbsp; trail: the hovered sample's path (click a sample to keep
its trail, click again to drop it; fading: past epochs, dashed: epochs to come)</div>
<pre id="selftest"></pre>
<script type="application/json" id="timevis-data">__DATA__</script>
<script>
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("timevis-data").textContent);
  const MAX_SIDE = 720, CELL = 8;

  function decode(t) {
    if (!t) return null;
    const bin = atob(t.b64), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const Ctor = {uint8: Uint8Array, uint16: Uint16Array, int32: Int32Array,
                  float64: Float64Array}[t.dtype];
    return new Ctor(bytes.buffer);
  }
  const E = D.epochs.length, N = D.n;
  const Q = decode(D.positions), PRED = decode(D.predictions), LAB = decode(D.labels);
  const IDS = decode(D.ids), SPLIT = decode(D.splits);
  const MISSING = 65535;
  const rgb = D.palette.map(c => "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")");
  const hasTest = SPLIT.some(s => s === 1), hasTrain = SPLIT.some(s => s === 0);

  // Canvas geometry: the bounds' aspect within MAX_SIDE CSS pixels.
  const [bx0, bx1, by0, by1] = D.bounds;
  const aspect = (bx1 - bx0) / (by1 - by0);
  const W = Math.round(aspect >= 1 ? MAX_SIDE : MAX_SIDE * aspect);
  const H = Math.round(aspect >= 1 ? MAX_SIDE / aspect : MAX_SIDE);
  const [qx0, qx1, qy0, qy1] = D.qrange;
  const sx = (qx1 - qx0) / D.qmax / (bx1 - bx0) * W, ox = (qx0 - bx0) / (bx1 - bx0) * W;
  const sy = (qy1 - qy0) / D.qmax / (by1 - by0) * H, oy = (by1 - qy0) / (by1 - by0) * H;
  function pixel(e, i) {  // CSS pixels of row i at epoch index e, or null when missing
    const k = 2 * (e * N + i), qx = Q[k], qy = Q[k + 1];
    if (qx === MISSING || qy === MISSING) return null;
    return [ox + qx * sx, oy - qy * sy];
  }
  const R = Math.max(1.5, Math.min(4.5, 90 / Math.sqrt(Math.max(N, 1))));
  const RING = R * Math.sqrt(3.2), HOVER = Math.max(6, RING + 2), EDGE = R > 2.5 ? 0.7 : 0.4;

  const $ = id => document.getElementById(id);
  const canvas = $("canvas"), overlay = $("overlay"), tooltip = $("tooltip");
  const slider = $("epoch-slider"), play = $("play"), title = $("title");
  const speed = $("speed"), showTestBox = $("show-test"), label = $("epoch-label");
  const clearTrails = $("clear-trails");
  const dpr = window.devicePixelRatio || 1;
  for (const c of [canvas, overlay]) {
    c.width = Math.round(W * dpr); c.height = Math.round(H * dpr);
    c.style.width = W + "px"; c.style.height = H + "px";
  }
  const ctx = canvas.getContext("2d"), octx = overlay.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0); octx.setTransform(dpr, 0, 0, dpr, 0, 0);
  slider.max = String(E - 1);
  showTestBox.checked = !hasTrain;
  showTestBox.disabled = !hasTest || !hasTrain;

  // Images: one per distinct background, the thumbnail sprite sheet.
  const loads = [];
  function image(uri) {
    const img = new Image();
    loads.push(new Promise(ok => { img.onload = ok; img.onerror = ok; }));
    img.src = uri;
    return img;
  }
  const bgs = D.backgrounds.map(image);
  bgs.forEach((img, k) => img.addEventListener("load", () => {
    if (D.backgroundIndex[cur] === k) draw();
  }));
  const TH = D.thumbnails, sprite = TH ? image(TH.uri) : null;

  // Legend: names through textContent only.
  const legend = $("legend");
  D.classNames.forEach((name, c) => {
    const item = document.createElement("span"), sw = document.createElement("span");
    const text = document.createElement("span");
    item.className = "item"; sw.className = "swatch"; sw.style.background = rgb[c];
    text.textContent = name;
    item.append(sw, text); legend.append(item);
  });

  let cur = 0, showTest = showTestBox.checked, px = null, py = null;
  let cellStart = null, cellItems = null;
  const NX = Math.ceil(W / CELL), NY = Math.ceil(H / CELL);
  // Trails: off but for the hovered sample and the selected ones. A path is the moving average
  // (triangular weights, SMOOTH epochs either side, within a run of present positions) of the
  // sample's positions, drawn as a Catmull-Rom curve that ends on its current position; behind
  // the current epoch it fades by half every HALF_LIFE epochs, ahead of it it is faint and dashed.
  const SMOOTH = Math.max(1, Math.round(E / 20)), HALF_LIFE = Math.max(3, E / 4);
  const selected = new Set(D.track);
  const smoothed = new Map();
  function path(i) {
    if (smoothed.has(i)) return smoothed.get(i);
    const raw = [];
    for (let e = 0; e < E; e++) raw.push(pixel(e, i));
    const out = raw.map((p, e) => {
      if (!p) return null;
      let x = (SMOOTH + 1) * p[0], y = (SMOOTH + 1) * p[1], w = SMOOTH + 1;
      for (const step of [-1, 1]) {
        for (let d = 1; d <= SMOOTH; d++) {
          const q = raw[e + step * d];
          if (!q) break;
          x += (SMOOTH + 1 - d) * q[0]; y += (SMOOTH + 1 - d) * q[1]; w += SMOOTH + 1 - d;
        }
      }
      return [x / w, y / w];
    });
    smoothed.set(i, out);
    return out;
  }
  function drawTrail(c, i) {
    const s = path(i).slice(), now = pixel(cur, i);
    if (now) s[cur] = now;
    c.save();
    c.lineCap = "butt"; c.lineJoin = "round";  // butt: translucent pieces meet without overlap
    for (const halo of [true, false]) {  // a white halo under the line keeps it readable
      for (let e = 0; e + 1 < E; e++) {
        const p1 = s[e], p2 = s[e + 1];
        if (!p1 || !p2) continue;
        const p0 = (e > 0 && s[e - 1]) || p1, p3 = s[e + 2] || p2;
        const ahead = e >= cur;
        const alpha = ahead ? 0.35 : Math.max(0.15, 0.95 * Math.pow(0.5, (cur - e - 1) / HALF_LIFE));
        const width = ahead ? 1 : 1 + 1.8 * alpha;
        if (halo && ahead) continue;
        c.setLineDash(ahead ? [3, 4] : []);
        c.lineWidth = halo ? width + 2 : width;
        c.strokeStyle = halo ? "rgba(255,255,255," + (0.6 * alpha).toFixed(3) + ")"
                             : "rgba(15,15,15," + alpha.toFixed(3) + ")";
        c.beginPath(); c.moveTo(p1[0], p1[1]);
        c.bezierCurveTo(p1[0] + (p2[0] - p0[0]) / 6, p1[1] + (p2[1] - p0[1]) / 6,
                        p2[0] - (p3[0] - p1[0]) / 6, p2[1] - (p3[1] - p1[1]) / 6, p2[0], p2[1]);
        c.stroke();
      }
    }
    c.restore();
  }

  function visible(i) { return SPLIT[i] === 0 || showTest; }
  function layout() {  // pixel positions and the grid bucket index of the current epoch
    px = new Float32Array(N); py = new Float32Array(N);
    const cell = new Int32Array(N).fill(-1), counts = new Int32Array(NX * NY + 1);
    for (let i = 0; i < N; i++) {
      const p = pixel(cur, i);
      if (!p) { px[i] = NaN; py[i] = NaN; continue; }
      px[i] = p[0]; py[i] = p[1];
      if (!visible(i)) continue;
      const cx = Math.floor(p[0] / CELL), cy = Math.floor(p[1] / CELL);
      if (cx < 0 || cy < 0 || cx >= NX || cy >= NY) continue;
      cell[i] = cy * NX + cx; counts[cell[i] + 1]++;
    }
    for (let k = 1; k <= NX * NY; k++) counts[k] += counts[k - 1];
    cellStart = counts.slice();
    cellItems = new Int32Array(counts[NX * NY]);
    const fill = counts.slice();
    for (let i = 0; i < N; i++) if (cell[i] >= 0) cellItems[fill[cell[i]]++] = i;
  }
  function nearest(x, y) {
    const cx = Math.floor(x / CELL), cy = Math.floor(y / CELL), reach = Math.ceil(HOVER / CELL);
    let best = -1, bestD = HOVER * HOVER;
    for (let gy = cy - reach; gy <= cy + reach; gy++) {
      if (gy < 0 || gy >= NY) continue;
      for (let gx = cx - reach; gx <= cx + reach; gx++) {
        if (gx < 0 || gx >= NX) continue;
        const c = gy * NX + gx;
        for (let k = cellStart[c]; k < cellStart[c + 1]; k++) {
          const i = cellItems[k], dx = px[i] - x, dy = py[i] - y, d = dx * dx + dy * dy;
          if (d <= bestD) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }

  function shape(c, split, x, y, r) {
    if (split === 0) { c.moveTo(x + r, y); c.arc(x, y, r, 0, 2 * Math.PI); return; }
    const t = r * 1.25;
    c.moveTo(x, y - t); c.lineTo(x + t * 0.87, y + t * 0.5); c.lineTo(x - t * 0.87, y + t * 0.5);
    c.closePath();
  }
  function drawPoints() {
    const base = cur * N, C = rgb.length;
    for (const split of [0, 1]) {
      if (split === 1 && !showTest) continue;
      const right = Array.from({length: C}, () => []), wrong = Array.from({length: C}, () => []);
      for (let i = 0; i < N; i++) {
        if (SPLIT[i] !== split || Number.isNaN(px[i])) continue;
        (PRED[base + i] === LAB[i] ? right : wrong)[LAB[i]].push(i);
      }
      ctx.lineWidth = EDGE; ctx.strokeStyle = "rgba(31,31,31,0.9)";
      for (let c = 0; c < C; c++) {
        if (!right[c].length) continue;
        ctx.beginPath();
        for (const i of right[c]) shape(ctx, split, px[i], py[i], R);
        ctx.fillStyle = rgb[c]; ctx.fill(); ctx.stroke();
      }
      ctx.lineWidth = 1.4;
      for (let c = 0; c < C; c++) {  // rings in the label colour
        if (!wrong[c].length) continue;
        ctx.beginPath();
        for (const i of wrong[c]) shape(ctx, split, px[i], py[i], RING);
        ctx.strokeStyle = rgb[c]; ctx.stroke();
      }
      ctx.lineWidth = EDGE; ctx.strokeStyle = "rgba(31,31,31,0.9)";
      for (let c = 0; c < C; c++) {  // dots in the predicted colour
        ctx.beginPath();
        let any = false;
        for (const list of wrong) for (const i of list) {
          if (PRED[base + i] !== c) continue;
          shape(ctx, split, px[i], py[i], R); any = true;
        }
        if (any) { ctx.fillStyle = rgb[c]; ctx.fill(); ctx.stroke(); }
      }
    }
  }
  function drawTrails() {
    for (const i of selected) if (visible(i)) drawTrail(ctx, i);
    ctx.save();
    for (const i of selected) {
      const p = pixel(cur, i);
      if (!p || !visible(i)) continue;
      ctx.beginPath(); ctx.arc(p[0], p[1], RING + 3, 0, 2 * Math.PI);
      ctx.lineWidth = 4; ctx.strokeStyle = "rgba(255,255,255,0.9)"; ctx.stroke();
      ctx.lineWidth = 2; ctx.strokeStyle = "#000"; ctx.stroke();
      ctx.font = "11px sans-serif"; ctx.fillStyle = "#000";
      ctx.fillText(String(IDS[i]), p[0] + RING + 5, p[1] - RING - 3);
    }
    ctx.restore();
  }
  function draw() {
    ctx.clearRect(0, 0, W, H);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    const bg = bgs[D.backgroundIndex[cur]];
    if (bg.complete && bg.naturalWidth) {
      ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = "high";
      ctx.drawImage(bg, 0, 0, W, H);
    }
    drawPoints();
    drawTrails();
  }

  let hovered = -1;
  function describe(i) {
    const p = PRED[cur * N + i], l = LAB[i];
    return [
      "id " + IDS[i] + " (" + (SPLIT[i] === 1 ? "test" : "train") + ")",
      "label: " + D.classNames[l],
      "prediction: " + D.classNames[p] + (p === l ? "" : "  \\u2717 wrong"),
    ];
  }
  function hideTip() {
    hovered = -1; tooltip.style.display = "none";
    octx.clearRect(0, 0, W, H);
  }
  function showTip(i) {
    hovered = i;
    tooltip.replaceChildren();
    if (TH && sprite.complete && sprite.naturalWidth) {
      const scale = Math.max(1, Math.floor(64 / Math.max(TH.w, TH.h)));
      const tc = document.createElement("canvas");
      tc.width = TH.w * scale; tc.height = TH.h * scale; tc.className = "thumb";
      const t = tc.getContext("2d");
      t.imageSmoothingEnabled = false;
      t.drawImage(sprite, (i % TH.cols) * TH.w, Math.floor(i / TH.cols) * TH.h, TH.w, TH.h,
                  0, 0, tc.width, tc.height);
      tooltip.append(tc);
    }
    for (const line of describe(i)) {
      const div = document.createElement("div");
      div.textContent = line; tooltip.append(div);
    }
    tooltip.style.display = "block";
    const tw = tooltip.offsetWidth, th = tooltip.offsetHeight;
    let left = px[i] + 14, top = py[i] + 14;
    if (left + tw > W) left = Math.max(0, px[i] - 14 - tw);
    if (top + th > H) top = Math.max(0, py[i] - 14 - th);
    tooltip.style.left = left + "px"; tooltip.style.top = top + "px";
    octx.clearRect(0, 0, W, H);
    if (!selected.has(i)) drawTrail(octx, i);
    octx.beginPath(); octx.arc(px[i], py[i], RING + 2, 0, 2 * Math.PI);
    octx.lineWidth = 2; octx.strokeStyle = "#000"; octx.stroke();
  }
  function hoverAt(x, y) {
    const i = nearest(x, y);
    if (i < 0) hideTip(); else showTip(i);
  }
  canvas.addEventListener("mousemove", ev => {
    const rect = canvas.getBoundingClientRect();
    hoverAt(ev.clientX - rect.left, ev.clientY - rect.top);
  });
  canvas.addEventListener("mouseleave", hideTip);
  function select(i) {  // toggle row i's trail
    if (selected.has(i)) selected.delete(i); else selected.add(i);
    clearTrails.disabled = selected.size === 0;
    draw();
    if (hovered >= 0) showTip(hovered);
  }
  canvas.addEventListener("click", ev => {
    const rect = canvas.getBoundingClientRect();
    const i = nearest(ev.clientX - rect.left, ev.clientY - rect.top);
    if (i >= 0) select(i);
  });
  function clearSelection() {
    selected.clear(); clearTrails.disabled = true;
    draw();
    if (hovered >= 0) showTip(hovered);
  }
  clearTrails.disabled = selected.size === 0;
  clearTrails.addEventListener("click", clearSelection);
  function trailRows() {
    const rows = Array.from(selected).filter(visible);
    if (hovered >= 0 && !selected.has(hovered)) rows.push(hovered);
    return rows;
  }

  function setEpoch(e) {
    e = Math.max(0, Math.min(E - 1, Math.round(Number(e)) || 0));
    cur = e;
    slider.value = String(e);
    title.textContent = D.titles[e];
    label.textContent = "epoch " + D.epochs[e] + " (" + (e + 1) + "/" + E + ")";
    layout(); draw();
    if (hovered >= 0) {
      if (visible(hovered) && !Number.isNaN(px[hovered])) showTip(hovered); else hideTip();
    }
  }
  slider.addEventListener("input", () => setEpoch(slider.value));
  showTestBox.addEventListener("change", () => { showTest = showTestBox.checked; setEpoch(cur); });

  let timer = null;
  function stop() {
    if (timer !== null) clearInterval(timer);
    timer = null; play.textContent = "play";
  }
  function start() {
    if (cur >= E - 1) setEpoch(0);
    play.textContent = "pause";
    timer = setInterval(() => {
      if (cur >= E - 1) { stop(); return; }
      setEpoch(cur + 1);
    }, 1000 / Number(speed.value));
  }
  play.addEventListener("click", () => { if (timer === null) start(); else stop(); });
  speed.addEventListener("change", () => { if (timer !== null) { stop(); start(); } });
  document.addEventListener("keydown", ev => {
    if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
    if (ev.key === " ") { ev.preventDefault(); play.click(); }
    else if (ev.key === "ArrowRight") setEpoch(cur + 1);
    else if (ev.key === "ArrowLeft") setEpoch(cur - 1);
    else if (ev.key === "Escape") clearSelection();
  });

  function pointAt(i) {
    const p = pixel(cur, i);
    if (!p) return null;
    const rect = canvas.getBoundingClientRect();
    return {x: p[0], y: p[1], clientX: rect.left + p[0], clientY: rect.top + p[1]};
  }
  const ready = Promise.all(loads).then(() => { draw(); });
  window.timevis = {
    setEpoch, epoch: () => cur, epochNumber: () => D.epochs[cur], pointAt, ready,
    epochs: D.epochs.slice(), rows: N, select, trailRows,
  };
  setEpoch(0);

  // Test hook: index.html#selftest=epoch:3,click:5,hover:17[,test:1] reports into <pre id="selftest">.
  const m = /^#selftest=(.*)$/.exec(location.hash);
  if (m) ready.then(() => {
    const opts = {};
    for (const kv of decodeURIComponent(m[1]).split(",")) {
      const [k, v] = kv.split(":"); opts[k] = v;
    }
    const out = {titleBefore: title.textContent, epochBefore: cur, rows: N, epochs: E};
    if ("test" in opts) {
      showTestBox.checked = opts.test === "1";
      showTestBox.dispatchEvent(new Event("change"));
    }
    if ("epoch" in opts) {
      slider.value = opts.epoch;
      slider.dispatchEvent(new Event("input", {bubbles: true}));
    }
    out.epoch = cur; out.epochNumber = D.epochs[cur]; out.title = title.textContent;
    const t0 = Date.now();
    setEpoch(cur); setEpoch(cur);
    out.setEpochMs = (Date.now() - t0) / 2;
    out.sliderValue = slider.value;
    out.trailsAtStart = trailRows();
    if ("click" in opts) {
      const p = pointAt(Number(opts.click));
      if (p) canvas.dispatchEvent(new MouseEvent("click",
          {clientX: p.clientX, clientY: p.clientY, bubbles: true}));
      out.trailsAfterClick = trailRows();
    }
    if ("hover" in opts) {
      const row = Number(opts.hover), p = pointAt(row);
      out.point = p;
      if (p) canvas.dispatchEvent(new MouseEvent("mousemove",
          {clientX: p.clientX, clientY: p.clientY, bubbles: true}));
      out.hovered = hovered;
      out.tooltipVisible = tooltip.style.display === "block";
      out.tooltip = tooltip.textContent;
      const tc = tooltip.querySelector("canvas");
      if (tc) {
        const px = tc.getContext("2d").getImageData(0, 0, tc.width, tc.height).data;
        let lo = 255, hi = 0;
        for (let k = 0; k < px.length; k += 4) {
          lo = Math.min(lo, px[k]); hi = Math.max(hi, px[k]);
        }
        out.thumbnail = {width: tc.width, height: tc.height, min: lo, max: hi};
      }
    }
    out.trails = trailRows();
    out.legend = Array.from(legend.querySelectorAll(".item")).map(el => el.textContent);
    const report = () => {
      $("selftest").textContent = JSON.stringify(out);
      document.body.setAttribute("data-selftest", "done");
    };
    if (!("play" in opts)) { report(); return; }
    play.click();  // play:MS presses play and reports the epoch MS milliseconds later
    out.playing = {epoch: cur, button: play.textContent};
    setTimeout(() => {
      out.played = {epoch: cur, button: play.textContent};
      report();
    }, Number(opts.play));
  });
})();
</script>
</body>
</html>
"""
