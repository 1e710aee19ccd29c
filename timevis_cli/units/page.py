"""``units/index.html``: one self-contained page (no network) of the units over the epochs.

A slider (and play button) over the epochs, colour by preferred class, selectivity or epoch,
each unit's path so far, hover for a unit's class and selectivity, click to follow one unit's
whole path. The arrays are inlined as base64 (float32 positions, int16 preferred classes, uint8
selectivity in 1/255 steps); the page draws on a 2-D canvas with plain JavaScript.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import numpy as np

from timevis_cli.units.pipeline import Units

__all__ = ["page_data", "write_page"]


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def page_data(result: Units) -> dict:
    """What the page needs, JSON-ready (arrays little-endian base64)."""
    from timevis_cli.units.outputs import NO_PREFERENCE_COLOUR, class_colours

    selectivity = np.clip(np.rint(result.selectivity * 255.0), 0, 255).astype(np.uint8)
    return {
        "run_id": result.run_id,
        "feature_layer": result.feature_layer,
        "epochs": list(result.epochs),
        "units": result.units,
        "classes": list(result.class_names),
        "colours": class_colours(len(result.class_names)),
        "none_colour": NO_PREFERENCE_COLOUR,
        "t": result.embedding.t,
        "samples": len(result.sample_rows),
        "positions": _b64(result.positions.astype("<f4")),
        "preferred": _b64(result.preferred.astype("<i2")),
        "selectivity": _b64(selectivity),
    }


def write_page(result: Units, path: str | os.PathLike) -> Path:
    """Write the self-contained ``index.html``."""
    data = json.dumps(page_data(result), separators=(",", ":")).replace("</", "<\\/")
    title = html.escape(f"timevis units: {result.run_id}" if result.run_id else "timevis units")
    text = _PAGE.replace("__TITLE__", title).replace("__DATA__", data)
    target = Path(path)
    target.write_text(text, encoding="utf-8")
    return target


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
  header { padding: 10px 16px; background: #fff; border-bottom: 1px solid #ddd; }
  header h1 { font-size: 16px; margin: 0 0 4px; }
  header p { margin: 0; color: #666; font-size: 12px; }
  main { display: flex; gap: 16px; padding: 12px 16px; flex-wrap: wrap; }
  #stage { position: relative; }
  canvas { background: #fff; border: 1px solid #ddd; display: block; cursor: crosshair; }
  #tip { position: absolute; pointer-events: none; background: rgba(30,30,30,.9); color: #fff;
         padding: 4px 8px; border-radius: 4px; font-size: 12px; display: none; white-space: nowrap; }
  aside { min-width: 230px; max-width: 300px; }
  aside label { display: block; margin: 10px 0 4px; font-weight: 600; }
  #legend div { display: flex; align-items: center; gap: 6px; font-size: 12px; margin: 2px 0; }
  #legend span.sw { width: 12px; height: 12px; border-radius: 6px; display: inline-block; }
  #bar { width: 100%; height: 14px; }
  .row { display: flex; align-items: center; gap: 8px; }
  #epoch { flex: 1; }
  button { padding: 3px 10px; }
  #info { font-size: 12px; color: #444; margin-top: 10px; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <p>Each point is one unit of the feature layer at one epoch, placed by M-PHATE from its
  activations over a fixed set of samples: units that respond alike sit together, and a unit's
  path shows how its response changed over training. Hover a unit for its class preference;
  click it to follow its whole path (click the background to let go).</p>
</header>
<main>
  <div id="stage"><canvas id="view" width="720" height="720"></canvas><div id="tip"></div></div>
  <aside>
    <label for="epoch">Epoch <span id="epochLabel"></span></label>
    <div class="row"><button id="play">Play</button><input id="epoch" type="range" min="0" value="0"></div>
    <label for="colour">Colour by</label>
    <select id="colour">
      <option value="preferred">preferred class</option>
      <option value="selectivity">selectivity</option>
      <option value="epoch">epoch</option>
    </select>
    <label><input id="trails" type="checkbox" checked> paths up to this epoch</label>
    <label><input id="ghosts" type="checkbox" checked> every epoch's units in grey</label>
    <div id="legend"></div>
    <div id="info"></div>
  </aside>
</main>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
function bytes(b64) {
  const s = atob(b64), out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out.buffer;
}
const E = D.epochs.length, U = D.units;
const P = new Float32Array(bytes(D.positions));
const PREF = new Int16Array(bytes(D.preferred));
const SEL = new Uint8Array(bytes(D.selectivity));
const canvas = document.getElementById("view"), ctx = canvas.getContext("2d");
const slider = document.getElementById("epoch"), tip = document.getElementById("tip");
const colourBy = document.getElementById("colour");
slider.max = E - 1;
slider.value = E - 1;
document.getElementById("title").textContent =
  `timevis units${D.run_id ? " of run " + D.run_id : ""}: ${U} units of ${D.feature_layer}, ` +
  `${E} epochs, described by ${D.samples} samples (t = ${D.t})`;
let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
for (let i = 0; i < P.length; i += 2) {
  minX = Math.min(minX, P[i]); maxX = Math.max(maxX, P[i]);
  minY = Math.min(minY, P[i + 1]); maxY = Math.max(maxY, P[i + 1]);
}
const pad = 24, span = Math.max(maxX - minX, maxY - minY, 1e-9);
function sx(x) { return pad + (x - (minX + maxX) / 2 + span / 2) / span * (canvas.width - 2 * pad); }
function sy(y) { return canvas.height - pad - (y - (minY + maxY) / 2 + span / 2) / span * (canvas.height - 2 * pad); }
function viridis(t) {
  const stops = [[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1), i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}
function magma(t) {
  const stops = [[252,253,191],[252,137,97],[183,55,121],[81,18,124],[0,0,4]];
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1), i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}
function colour(e, u) {
  const mode = colourBy.value, k = e * U + u;
  if (mode === "selectivity") return magma(SEL[k] / 255);
  if (mode === "epoch") return viridis(E > 1 ? e / (E - 1) : 1);
  const c = PREF[k];
  return c < 0 ? D.none_colour : D.colours[c];
}
let selected = -1;
function legend() {
  const box = document.getElementById("legend");
  box.innerHTML = "";
  const add = (fill, text) => {
    const row = document.createElement("div"), sw = document.createElement("span");
    sw.className = "sw"; sw.style.background = fill; row.appendChild(sw);
    row.appendChild(document.createTextNode(text)); box.appendChild(row);
  };
  if (colourBy.value === "preferred") {
    D.classes.forEach((name, c) => add(D.colours[c], name));
    add(D.none_colour, "no preference (constant unit)");
  } else {
    const bar = document.createElement("canvas"); bar.id = "bar"; bar.width = 220; bar.height = 14;
    const g = bar.getContext("2d");
    for (let x = 0; x < 220; x++) {
      g.fillStyle = colourBy.value === "epoch" ? viridis(x / 219) : magma(x / 219);
      g.fillRect(x, 0, 1, 14);
    }
    box.appendChild(bar);
    const ends = colourBy.value === "epoch" ? [D.epochs[0], D.epochs[E - 1]] : [0, 1];
    const row = document.createElement("div");
    row.textContent = `${ends[0]} \\u2192 ${ends[1]}` + (colourBy.value === "selectivity" ? " (class selectivity)" : " (epoch)");
    box.appendChild(row);
  }
}
function draw() {
  const e = +slider.value;
  document.getElementById("epochLabel").textContent = `${D.epochs[e]} (${e + 1} of ${E})`;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (document.getElementById("ghosts").checked) {
    ctx.fillStyle = "#e6e6e6";
    for (let i = 0; i < P.length; i += 2) ctx.fillRect(sx(P[i]) - 1, sy(P[i + 1]) - 1, 2, 2);
  }
  if (document.getElementById("trails").checked && e > 0) {
    ctx.lineWidth = 0.7;
    ctx.globalAlpha = 0.35;
    for (let u = 0; u < U; u++) {
      ctx.strokeStyle = colour(e, u);
      ctx.beginPath();
      ctx.moveTo(sx(P[2 * u]), sy(P[2 * u + 1]));
      for (let f = 1; f <= e; f++) { const k = 2 * (f * U + u); ctx.lineTo(sx(P[k]), sy(P[k + 1])); }
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
  }
  const r = Math.max(1.5, Math.min(5, 60 / Math.sqrt(U)));
  for (let u = 0; u < U; u++) {
    const k = 2 * (e * U + u);
    ctx.fillStyle = colour(e, u);
    ctx.beginPath(); ctx.arc(sx(P[k]), sy(P[k + 1]), r, 0, 2 * Math.PI); ctx.fill();
  }
  if (selected >= 0) {
    ctx.strokeStyle = "#000"; ctx.lineWidth = 1.5; ctx.beginPath();
    for (let f = 0; f < E; f++) {
      const k = 2 * (f * U + selected);
      if (f === 0) ctx.moveTo(sx(P[k]), sy(P[k + 1])); else ctx.lineTo(sx(P[k]), sy(P[k + 1]));
    }
    ctx.stroke();
    const k = 2 * (e * U + selected);
    ctx.beginPath(); ctx.arc(sx(P[k]), sy(P[k + 1]), r + 3, 0, 2 * Math.PI); ctx.stroke();
    document.getElementById("info").textContent = describe(e, selected) + " (followed)";
  } else {
    document.getElementById("info").textContent = "";
  }
}
function describe(e, u) {
  const k = e * U + u, c = PREF[k];
  const pref = c < 0 ? "no preference (constant over the samples)" : `prefers ${D.classes[c]}`;
  return `unit ${u} at epoch ${D.epochs[e]}: ${pref}, selectivity ${(SEL[k] / 255).toFixed(2)}`;
}
function nearest(mx, my) {
  const e = +slider.value;
  let best = -1, bestD = 64;
  for (let u = 0; u < U; u++) {
    const k = 2 * (e * U + u), dx = sx(P[k]) - mx, dy = sy(P[k + 1]) - my, d = dx * dx + dy * dy;
    if (d < bestD) { bestD = d; best = u; }
  }
  return best;
}
function mouse(ev) {
  const rect = canvas.getBoundingClientRect();
  return [(ev.clientX - rect.left) * canvas.width / rect.width, (ev.clientY - rect.top) * canvas.height / rect.height];
}
canvas.addEventListener("mousemove", (ev) => {
  const [mx, my] = mouse(ev), u = nearest(mx, my);
  if (u < 0) { tip.style.display = "none"; return; }
  tip.textContent = describe(+slider.value, u);
  tip.style.left = (ev.offsetX + 12) + "px"; tip.style.top = (ev.offsetY + 12) + "px";
  tip.style.display = "block";
});
canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
canvas.addEventListener("click", (ev) => { const [mx, my] = mouse(ev); selected = nearest(mx, my); draw(); });
let timer = null;
document.getElementById("play").addEventListener("click", (ev) => {
  if (timer) { clearInterval(timer); timer = null; ev.target.textContent = "Play"; return; }
  if (+slider.value >= E - 1) slider.value = 0;
  ev.target.textContent = "Pause";
  timer = setInterval(() => {
    if (+slider.value >= E - 1) { clearInterval(timer); timer = null; document.getElementById("play").textContent = "Play"; return; }
    slider.value = +slider.value + 1; draw();
  }, Math.max(40, Math.min(400, 8000 / E)));
});
slider.addEventListener("input", draw);
colourBy.addEventListener("change", () => { legend(); draw(); });
document.getElementById("trails").addEventListener("change", draw);
document.getElementById("ghosts").addEventListener("change", draw);
legend();
draw();
</script>
</body>
</html>
"""
