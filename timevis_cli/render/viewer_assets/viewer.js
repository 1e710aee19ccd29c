"use strict";
// timevis playback page. All data come from the JSON block #timevis-data; every user string
// reaches the page through textContent (never as HTML). No network, no storage.
(function () {
  const D = JSON.parse(document.getElementById("timevis-data").textContent);
  const HASH = {};  // #key=value&key=value (selftest=..., renderer=2d)
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    const at = part.indexOf("=");
    if (at > 0) HASH[part.slice(0, at)] = part.slice(at + 1);
  }
  const MAX_SIDE = 720, CELL = 8, TRAIL_CAP = 100, TWEEN_MS = 260, OVERVIEW = 140;
  const DATAMAP = 240;

  function decode(t) {
    if (!t) return null;
    let bytes;
    if (typeof Uint8Array.fromBase64 === "function") bytes = Uint8Array.fromBase64(t.b64);
    else {
      const bin = atob(t.b64), n = bin.length;
      bytes = new Uint8Array(n);
      for (let i = 0; i < n; i++) bytes[i] = bin.charCodeAt(i);
    }
    const Ctor = {uint8: Uint8Array, uint16: Uint16Array, int32: Int32Array,
                  float32: Float32Array, float64: Float64Array}[t.dtype];
    return new Ctor(bytes.buffer, bytes.byteOffset, bytes.byteLength / Ctor.BYTES_PER_ELEMENT);
  }
  const E = D.epochs.length, N = D.n;
  const Q = decode(D.positions), PRED = decode(D.predictions), LAB = decode(D.labels);
  const IDS = decode(D.ids), SPLIT = decode(D.splits);
  const FIELDS = {};
  for (const name of Object.keys(D.fields || {})) FIELDS[name] = decode(D.fields[name]);
  const KNN = D.neighbors ? decode(D.neighbors.rows) : null, KK = D.neighbors ? D.neighbors.k : 0;
  const KNN_NONE = D.neighbors && D.neighbors.rows.dtype === "int32" ? 2147483647 : 65535;
  const FAITH = decode(D.faithfulness);
  // Exact class boundaries per epoch (render --exact): x0, y0, x1, y1 segments, world units.
  const EXACT = D.exactBoundaries ? D.exactBoundaries.map(decode) : null;
  const MISSING = 65535;
  const PAL = D.palette;
  const rgbOf = c => "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")";
  const hasTest = SPLIT.some(s => s === 1), hasTrain = SPLIT.some(s => s === 0);

  // World coordinates of row i at epoch index e (null when missing).
  const [qx0, qx1, qy0, qy1] = D.qrange;
  const qsx = (qx1 - qx0) / D.qmax, qsy = (qy1 - qy0) / D.qmax;
  function world(e, i) {
    const k = 2 * (e * N + i), qx = Q[k], qy = Q[k + 1];
    if (qx === MISSING || qy === MISSING) return null;
    return [qx0 + qx * qsx, qy0 + qy * qsy];
  }

  // Camera: each epoch's bounds (its background's canvas), fitted into a W x H canvas keeping
  // the aspect; between epochs the bounds are interpolated.
  const EB = D.epochBounds;
  const aspect0 = (EB[0][1] - EB[0][0]) / (EB[0][3] - EB[0][2]);
  const W = Math.round(aspect0 >= 1 ? MAX_SIDE : MAX_SIDE * aspect0);
  const H = Math.round(aspect0 >= 1 ? MAX_SIDE / aspect0 : MAX_SIDE);
  function fit(b) {  // {x0, y1, s}: screen = ((x - x0) * s, (y1 - y) * s)
    const cx = (b[0] + b[1]) / 2, cy = (b[2] + b[3]) / 2;
    const s = Math.min(W / (b[1] - b[0]), H / (b[3] - b[2]));
    return {x0: cx - W / 2 / s, y1: cy + H / 2 / s, s};
  }
  function cameraAt(t) {
    const a = Math.max(0, Math.min(E - 1, Math.floor(t))), b = Math.min(E - 1, a + 1);
    const f = Math.max(0, Math.min(1, t - a));
    const box = EB[a].map((v, k) => v + (EB[b][k] - v) * f);
    return fit(box);
  }
  const R = Math.max(1.5, Math.min(4.5, 90 / Math.sqrt(Math.max(N, 1))));
  const RING = R * Math.sqrt(3.2), HOVER = Math.max(6, RING + 2), EDGE = R > 2.5 ? 0.7 : 0.4;

  const $ = id => document.getElementById(id);
  const bgCanvas = $("background"), overlay = $("overlay");
  let canvas = $("canvas");
  const overview = $("overview"), tooltip = $("tooltip");
  const slider = $("epoch-slider"), play = $("play"), title = $("title");
  const speed = $("speed"), showTestBox = $("show-test"), label = $("epoch-label");
  const clearTrails = $("clear-trails"), colorBy = $("color-by"), tool = $("tool");
  const legend = $("legend"), key = $("key"), badge = $("agreement-badge");
  const dpr = window.devicePixelRatio || 1;
  $("stage").style.width = W + "px"; $("stage").style.height = H + "px";
  function size(c, w, h) {
    c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    c.style.width = w + "px"; c.style.height = h + "px";
  }
  for (const c of [bgCanvas, canvas, overlay]) size(c, W, H);
  const bctx = bgCanvas.getContext("2d"), octx = overlay.getContext("2d");
  bctx.setTransform(dpr, 0, 0, dpr, 0, 0); octx.setTransform(dpr, 0, 0, dpr, 0, 0);
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
  bgs.forEach(img => img.addEventListener("load", () => requestDraw()));
  const TH = D.thumbnails, sprite = TH ? image(TH.uri) : null;

  // ---- state
  let t = 0;            // displayed time: epoch index, fractional while the camera glides
  let cur = 0;          // the epoch whose predictions, title and background are shown
  let showTest = showTestBox.checked;
  const selected = new Set(D.track);
  let hovered = -1;
  const SX = new Float32Array(N), SY = new Float32Array(N);  // CSS pixels at time t
  const VIS = new Uint8Array(N);  // drawn and hoverable now
  const FILL = new Uint8Array(4 * N), RINGC = new Uint8Array(4 * N);
  let gridDirty = true, styleDirty = true, frames = 0;

  // ---- colour modes
  const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
                   [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
  function ramp(stops, v) {
    if (!(v >= 0)) v = 0;
    if (v > 1) v = 1;
    const x = v * (stops.length - 1), k = Math.min(stops.length - 2, Math.floor(x)), f = x - k;
    return stops[k].map((c, j) => Math.round(c + (stops[k + 1][j] - c) * f));
  }
  const RDBU = [[178, 24, 43], [239, 138, 98], [247, 247, 247], [103, 169, 207], [33, 102, 172]];
  function range(a) {
    let lo = Infinity, hi = -Infinity;
    for (const v of a) if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
    return lo <= hi ? [lo, hi > lo ? hi : lo + 1] : [0, 1];
  }
  const MODES = [
    {key: "label", name: "label (ring: wrong prediction)", kind: "cat",
     names: D.classNames, colours: PAL, cat: i => LAB[i]},
    {key: "prediction", name: "prediction at the epoch", kind: "cat",
     names: D.classNames, colours: PAL, cat: i => PRED[cur * N + i]},
    {key: "correct", name: "correct at the epoch", kind: "cat",
     names: ["correct", "incorrect"], colours: [[44, 160, 44], [214, 39, 40]],
     cat: i => (PRED[cur * N + i] === LAB[i] ? 0 : 1)},
  ];
  const CONT = [["confidence", "confidence (mean p(label))", [0, 1], VIRIDIS],
                ["variability", "variability (std of p(label))", null, VIRIDIS],
                ["correctness", "correctness (share of epochs right)", [0, 1], RDBU],
                ["forgetting", "forgetting events", null, VIRIDIS],
                ["suspect", "suspect-label score", null, VIRIDIS]];
  for (const [name, text, fixed, stops] of CONT) {
    if (!FIELDS[name]) continue;
    const a = FIELDS[name];
    MODES.push({key: name, name: text, kind: "cont", stops, range: fixed || range(a),
                value: i => a[i]});
  }
  if (FIELDS.region) {
    MODES.push({key: "region", name: "data-map region", kind: "cat", names: D.regions,
                colours: [[44, 160, 44], [255, 187, 40], [214, 39, 40]],
                cat: i => FIELDS.region[i]});
  }
  if (FAITH) {
    MODES.push({key: "faithfulness", name: "kNN preservation at the epoch", kind: "cont",
                stops: VIRIDIS, range: [0, 1], value: i => {
                  const c = FAITH[cur * N + i]; return c === 255 ? NaN : c / 250; }});
  }
  let mode = MODES[0];
  const hiddenCats = new Set();
  for (const m of MODES) {
    const o = document.createElement("option");
    o.value = m.key; o.textContent = m.name; colorBy.append(o);
  }

  function computeStyles() {
    const dim = selected.size > 0;
    const wrongRing = mode.key === "label";
    for (let i = 0; i < N; i++) {
      const p = 4 * i;
      let vis = (SPLIT[i] === 0 || showTest) && Q[2 * (cur * N + i)] !== MISSING;
      let fill, ring = null;
      if (mode.kind === "cat") {
        const c = mode.cat(i);
        if (hiddenCats.has(c)) vis = false;
        fill = mode.colours[c] || [128, 128, 128];
        if (wrongRing) {
          const pr = PRED[cur * N + i];
          if (pr !== c) { ring = fill; fill = PAL[pr]; }
        }
      } else {
        const v = mode.value(i), [lo, hi] = mode.range;
        fill = Number.isFinite(v) ? ramp(mode.stops, (v - lo) / (hi - lo)) : [150, 150, 150];
      }
      VIS[i] = vis ? 1 : 0;
      const alpha = !vis ? 0 : (dim && !selected.has(i) ? 120 : 255);
      FILL[p] = fill[0]; FILL[p + 1] = fill[1]; FILL[p + 2] = fill[2]; FILL[p + 3] = alpha;
      if (ring) {
        RINGC[p] = ring[0]; RINGC[p + 1] = ring[1]; RINGC[p + 2] = ring[2]; RINGC[p + 3] = alpha;
      } else RINGC[p + 3] = 0;
    }
    styleDirty = false;
    if (gl) glStyles();
  }

  // ---- point renderers: WebGL2, or a 2-D canvas where WebGL2 is missing
  let gl = null, glState = null;
  function glInit() {
    // Each point is a square sprite just large enough for its dot (or its ring): a software
    // GL (SwiftShader in a headless browser) pays for every fragment.
    const vs = `#version 300 es
      in vec2 a_pos; in vec4 a_fill; in vec4 a_ring; in float a_shape;
      uniform vec2 u_size; uniform float u_dot; uniform float u_ringsize;
      out vec4 v_fill; out vec4 v_ring; out float v_shape; out float v_size;
      void main() {
        gl_Position = vec4(a_pos.x / u_size.x * 2.0 - 1.0, 1.0 - a_pos.y / u_size.y * 2.0, 0, 1);
        if (a_fill.a == 0.0 || isnan(a_pos.x)) gl_Position = vec4(3.0, 3.0, 0.0, 1.0);
        gl_PointSize = a_ring.a > 0.0 ? u_ringsize : u_dot;
        v_size = gl_PointSize; v_fill = a_fill; v_ring = a_ring; v_shape = a_shape;
      }`;
    const fs = `#version 300 es
      precision highp float;
      in vec4 v_fill; in vec4 v_ring; in float v_shape; in float v_size;
      uniform float u_r; uniform float u_ring; uniform float u_edge; uniform float u_px;
      out vec4 o;
      float tri(vec2 p, float r) {
        const float k = 1.7320508;
        p.y = -p.y; p.x = abs(p.x) - r; p.y = p.y + r / k;
        if (p.x + k * p.y > 0.0) p = vec2(p.x - k * p.y, -k * p.x - p.y) / 2.0;
        p.x -= clamp(p.x, -2.0 * r, 0.0);
        return -length(p) * sign(p.y);
      }
      float dist(vec2 p, float r) { return v_shape < 0.5 ? length(p) - r : tri(p, r * 1.08); }
      void main() {
        vec2 p = (gl_PointCoord - 0.5) * v_size;
        float d = dist(p, u_r);
        float inside = clamp(0.5 - d, 0.0, 1.0);
        float edge = clamp(u_edge + 0.5 - abs(d), 0.0, 1.0);
        float a = max(inside, edge) * v_fill.a;
        vec3 rgb = mix(v_fill.rgb, vec3(0.12), edge * 0.9);
        if (v_ring.a > 0.0) {
          float r = clamp(0.7 * u_px + 0.5 - abs(dist(p, u_ring)), 0.0, 1.0) * v_ring.a;
          if (a <= 0.0) { rgb = v_ring.rgb; a = r; }
        }
        if (a <= 0.01) discard;
        o = vec4(rgb, a);
      }`;
    function shader(type, src) {
      const s = gl.createShader(type);
      gl.shaderSource(s, src); gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
      return s;
    }
    const prog = gl.createProgram();
    gl.attachShader(prog, shader(gl.VERTEX_SHADER, vs));
    gl.attachShader(prog, shader(gl.FRAGMENT_SHADER, fs));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
    gl.useProgram(prog);
    const vao = gl.createVertexArray();
    gl.bindVertexArray(vao);
    function buffer(name, size, type, norm, data) {
      const b = gl.createBuffer(), loc = gl.getAttribLocation(prog, name);
      gl.bindBuffer(gl.ARRAY_BUFFER, b);
      gl.bufferData(gl.ARRAY_BUFFER, data, gl.DYNAMIC_DRAW);
      gl.enableVertexAttribArray(loc);
      gl.vertexAttribPointer(loc, size, type, norm, 0, 0);
      return b;
    }
    const pos = new Float32Array(2 * N);
    const shapes = new Float32Array(N);
    for (let i = 0; i < N; i++) shapes[i] = SPLIT[i];
    const st = {prog, pos, u: {}};
    st.pos_b = buffer("a_pos", 2, gl.FLOAT, false, pos);
    st.fill_b = buffer("a_fill", 4, gl.UNSIGNED_BYTE, true, FILL);
    st.ring_b = buffer("a_ring", 4, gl.UNSIGNED_BYTE, true, RINGC);
    buffer("a_shape", 1, gl.FLOAT, false, shapes);
    for (const u of ["u_size", "u_dot", "u_ringsize", "u_r", "u_ring", "u_edge", "u_px"]) {
      st.u[u] = gl.getUniformLocation(prog, u);
    }
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
    return st;
  }
  // Points: WebGL2, but for a software GL (SwiftShader, llvmpipe: no GPU), where the 2-D
  // renderer below is faster; #renderer=webgl2 or #renderer=2d forces one.
  let why = "";
  if (HASH.renderer !== "2d") {
    let tried = null;
    try {
      tried = canvas.getContext("webgl2", {antialias: false, premultipliedAlpha: false});
      if (!tried) why = "no WebGL2";
      else {
        const info = tried.getExtension("WEBGL_debug_renderer_info");
        const name = String(tried.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : tried.RENDERER));
        if (HASH.renderer !== "webgl2" && /swiftshader|llvmpipe|software/i.test(name)) {
          why = "software GL";
        } else { gl = tried; glState = glInit(); }
      }
    } catch (err) {
      console.warn("timevis: WebGL2 failed (" + err + "); drawing on a 2-D canvas");
      why = "WebGL2 failed"; gl = null;
    }
    if (!gl && tried) {  // a canvas with a WebGL context has no 2-D one: a fresh canvas
      const lose = tried.getExtension("WEBGL_lose_context");
      if (lose) lose.loseContext();
      const fresh = canvas.cloneNode(false);
      canvas.replaceWith(fresh); canvas = fresh;
    }
  }
  const pctx = gl ? null : canvas.getContext("2d");
  $("renderer-name").textContent = "points: " + (gl ? "WebGL2" : "2-D canvas" + (why ? " (" + why + ")" : ""));
  function glStyles() {
    gl.bindBuffer(gl.ARRAY_BUFFER, glState.fill_b); gl.bufferSubData(gl.ARRAY_BUFFER, 0, FILL);
    gl.bindBuffer(gl.ARRAY_BUFFER, glState.ring_b); gl.bufferSubData(gl.ARRAY_BUFFER, 0, RINGC);
  }
  function drawPointsGL() {
    const pos = glState.pos;
    for (let i = 0; i < N; i++) { pos[2 * i] = SX[i]; pos[2 * i + 1] = SY[i]; }
    gl.bindBuffer(gl.ARRAY_BUFFER, glState.pos_b); gl.bufferSubData(gl.ARRAY_BUFFER, 0, pos);
    gl.viewport(0, 0, canvas.width, canvas.height);
    gl.clearColor(0, 0, 0, 0); gl.clear(gl.COLOR_BUFFER_BIT);
    const u = glState.u;
    gl.uniform2f(u.u_size, W, H);
    gl.uniform1f(u.u_dot, Math.ceil((2 * R + 2 * EDGE + 2) * dpr));
    gl.uniform1f(u.u_ringsize, Math.ceil((2 * RING + 3) * dpr));
    gl.uniform1f(u.u_r, R * dpr); gl.uniform1f(u.u_ring, RING * dpr);
    gl.uniform1f(u.u_edge, EDGE * dpr); gl.uniform1f(u.u_px, dpr);
    gl.drawArrays(gl.POINTS, 0, N);
  }
  // The 2-D canvas renderer rasterises the points itself into one ImageData per frame: each
  // shape's pixel coverage is precomputed as stamps at SUB x SUB sub-pixel offsets, so a point
  // costs a few dozen pixel blends and the frame one putImageData (fast on any CPU, and much
  // faster than a software GL).
  const SUB = 4;
  function triDist(x, y, r) {  // signed distance to an upward equilateral triangle
    const k = Math.sqrt(3);
    x = Math.abs(x) - r; y = -y + r / k;
    if (x + k * y > 0) { const nx = (x - k * y) / 2, ny = (-k * x - y) / 2; x = nx; y = ny; }
    x -= Math.max(-2 * r, Math.min(0, x));
    return -Math.hypot(x, y) * Math.sign(y);
  }
  const shapeDist = (split, x, y, r) => (split === 0 ? Math.hypot(x, y) - r : triDist(x, y, r * 1.08));
  function makeStamps(split, ring) {
    const r = R * dpr, rr = RING * dpr, ew = EDGE * dpr, rw = 0.7 * dpr;
    const reach = Math.ceil((ring ? rr + rw : r * 1.3 + ew) + 1), out = [];
    for (let sy = 0; sy < SUB; sy++) {
      for (let sx = 0; sx < SUB; sx++) {
        const dx = [], dy = [], a = [], e = [];
        for (let y = -reach; y <= reach; y++) {
          for (let x = -reach; x <= reach; x++) {
            const px = x + 0.5 - sx / SUB, py = y + 0.5 - sy / SUB;
            let cov, edge = 0;
            if (ring) cov = Math.min(1, Math.max(0, rw + 0.5 - Math.abs(shapeDist(split, px, py, rr))));
            else {
              const d = shapeDist(split, px, py, r);
              edge = Math.min(1, Math.max(0, ew + 0.5 - Math.abs(d)));
              cov = Math.max(Math.min(1, Math.max(0, 0.5 - d)), edge);
            }
            if (cov > 0.02) { dx.push(x); dy.push(y); a.push(cov); e.push(edge * 0.9); }
          }
        }
        out.push({dx: Int16Array.from(dx), dy: Int16Array.from(dy),
                  a: Float32Array.from(a), e: Float32Array.from(e)});
      }
    }
    return out;
  }
  let stamps = null, frameImage = null, frame32 = null, reachMax = 0;
  function drawPoints2D() {
    const cw = canvas.width, ch = canvas.height;
    if (!stamps) {
      stamps = [[makeStamps(0, false), makeStamps(1, false)], [makeStamps(0, true), makeStamps(1, true)]];
      for (const layer of stamps) for (const kind of layer) for (const st of kind) {
        st.off = new Int32Array(st.a.length);
        st.ai = new Int32Array(st.a.length);
        for (let k = 0; k < st.a.length; k++) {
          st.off[k] = st.dy[k] * cw + st.dx[k];
          st.ai[k] = Math.round(st.a[k] * 256);
          reachMax = Math.max(reachMax, Math.abs(st.dx[k]), Math.abs(st.dy[k]));
        }
      }
      frameImage = pctx.createImageData(cw, ch);
      frame32 = new Uint32Array(frameImage.data.buffer);
    }
    const px32 = frame32;
    px32.fill(0);
    for (let i = 0; i < N; i++) {
      if (!VIS[i] || Number.isNaN(SX[i])) continue;
      const x = SX[i] * dpr, y = SY[i] * dpr, xi = Math.floor(x), yi = Math.floor(y);
      if (xi < -reachMax || yi < -reachMax || xi >= cw + reachMax || yi >= ch + reachMax) continue;
      const s = Math.min(SUB - 1, Math.floor((x - xi) * SUB)) +
                SUB * Math.min(SUB - 1, Math.floor((y - yi) * SUB));
      const p = 4 * i, split = SPLIT[i], base = yi * cw + xi;
      const clip = xi < reachMax || yi < reachMax || xi >= cw - reachMax || yi >= ch - reachMax;
      for (let layer = RINGC[p + 3] ? 1 : 0; layer >= 0; layer--) {
        const st = stamps[layer][split][s], src = layer ? RINGC : FILL;
        const r = src[p], g = src[p + 1], b = src[p + 2], alpha = src[p + 3];
        const off = st.off, cov = st.ai, dark = st.e, n = off.length;
        for (let k = 0; k < n; k++) {
          if (clip) {
            const xx = xi + st.dx[k], yy = yi + st.dy[k];
            if (xx < 0 || yy < 0 || xx >= cw || yy >= ch) continue;
          }
          const at = base + off[k], ai = (cov[k] * alpha) >> 8, m = layer ? 0 : dark[k];
          const cr = (r + (31 - r) * m) | 0, cg = (g + (31 - g) * m) | 0, cb = (b + (31 - b) * m) | 0;
          const old = px32[at];
          if (old === 0) { px32[at] = (ai << 24 | cb << 16 | cg << 8 | cr) >>> 0; continue; }
          const w = ai + 1, v = 256 - w, oa = old >>> 24;
          px32[at] = ((Math.min(255, oa + (((255 - oa) * w) >> 8))) << 24 |
                      ((cb * w + (old >>> 16 & 255) * v) >> 8) << 16 |
                      ((cg * w + (old >>> 8 & 255) * v) >> 8) << 8 |
                      ((cr * w + (old & 255) * v) >> 8)) >>> 0;
        }
      }
    }
    pctx.putImageData(frameImage, 0, 0);
  }

  // ---- layout at time t: screen positions (points glide between epochs with the camera)
  let cam = cameraAt(0);
  function layout() {
    cam = cameraAt(t);
    const a = Math.max(0, Math.min(E - 1, Math.floor(t))), b = Math.min(E - 1, a + 1);
    const f = t - a, near = f < 0.5 ? a : b;
    for (let i = 0; i < N; i++) {
      const ka = 2 * (a * N + i), kb = 2 * (b * N + i);
      let qx, qy;
      if (f === 0 || a === b) { qx = Q[ka]; qy = Q[ka + 1]; }
      else if (Q[ka] !== MISSING && Q[kb] !== MISSING) {
        qx = Q[ka] + (Q[kb] - Q[ka]) * f; qy = Q[ka + 1] + (Q[kb + 1] - Q[ka + 1]) * f;
      } else { const kn = 2 * (near * N + i); qx = Q[kn]; qy = Q[kn + 1]; }
      if (qx === MISSING || qy === MISSING) { SX[i] = NaN; SY[i] = NaN; continue; }
      SX[i] = (qx0 + qx * qsx - cam.x0) * cam.s;
      SY[i] = (cam.y1 - (qy0 + qy * qsy)) * cam.s;
    }
    gridDirty = true;
  }
  function toScreen(p) { return [(p[0] - cam.x0) * cam.s, (cam.y1 - p[1]) * cam.s]; }
  function fromScreen(x, y) { return [x / cam.s + cam.x0, cam.y1 - y / cam.s]; }

  // Hover lookup: a grid of CELL-pixel buckets over the screen positions.
  const NX = Math.ceil(W / CELL), NY = Math.ceil(H / CELL);
  let cellStart = null, cellItems = null;
  function buildGrid() {
    const cell = new Int32Array(N).fill(-1), counts = new Int32Array(NX * NY + 1);
    for (let i = 0; i < N; i++) {
      if (!VIS[i] || Number.isNaN(SX[i])) continue;
      const cx = Math.floor(SX[i] / CELL), cy = Math.floor(SY[i] / CELL);
      if (cx < 0 || cy < 0 || cx >= NX || cy >= NY) continue;
      cell[i] = cy * NX + cx; counts[cell[i] + 1]++;
    }
    for (let k = 1; k <= NX * NY; k++) counts[k] += counts[k - 1];
    cellStart = counts.slice();
    cellItems = new Int32Array(counts[NX * NY]);
    const fill = counts.slice();
    for (let i = 0; i < N; i++) if (cell[i] >= 0) cellItems[fill[cell[i]]++] = i;
    gridDirty = false;
  }
  function nearest(x, y) {
    if (gridDirty) buildGrid();
    const cx = Math.floor(x / CELL), cy = Math.floor(y / CELL), reach = Math.ceil(HOVER / CELL);
    let best = -1, bestD = HOVER * HOVER;
    for (let gy = cy - reach; gy <= cy + reach; gy++) {
      if (gy < 0 || gy >= NY) continue;
      for (let gx = cx - reach; gx <= cx + reach; gx++) {
        if (gx < 0 || gx >= NX) continue;
        const c = gy * NX + gx;
        for (let k = cellStart[c]; k < cellStart[c + 1]; k++) {
          const i = cellItems[k], dx = SX[i] - x, dy = SY[i] - y, d = dx * dx + dy * dy;
          if (d <= bestD) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }

  // ---- trails: smoothed paths in world coordinates, drawn through the current camera
  const SMOOTH = Math.max(1, Math.round(E / 20)), HALF_LIFE = Math.max(3, E / 4);
  const smoothed = new Map();
  function path(i) {
    if (smoothed.has(i)) return smoothed.get(i);
    const raw = [];
    for (let e = 0; e < E; e++) raw.push(world(e, i));
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
    const s = path(i).map(p => (p ? toScreen(p) : null));
    if (!Number.isNaN(SX[i])) s[cur] = [SX[i], SY[i]];
    c.save();
    c.lineCap = "butt"; c.lineJoin = "round";
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
  function trailRows() {
    const rows = Array.from(selected).filter(i => VIS[i]).slice(0, TRAIL_CAP);
    if (hovered >= 0 && !selected.has(hovered)) rows.push(hovered);
    return rows;
  }

  // ---- neighbours of a row: its k high-D ones (stored) and its k nearest on the screen now
  function neighbors(i) {
    if (!KNN) return null;
    const high = [];
    for (let j = 0; j < KK; j++) {
      const r = KNN[(cur * N + i) * KK + j];
      if (r !== KNN_NONE) high.push(r);
    }
    const best = [];  // [d, row] ascending, at most KK
    const x = SX[i], y = SY[i];
    if (!Number.isNaN(x)) {
      for (let r = 0; r < N; r++) {
        if (r === i || Number.isNaN(SX[r])) continue;
        const d = (SX[r] - x) * (SX[r] - x) + (SY[r] - y) * (SY[r] - y);
        if (best.length === KK && d >= best[KK - 1][0]) continue;
        let at = best.length;
        while (at > 0 && best[at - 1][0] > d) at--;
        best.splice(at, 0, [d, r]);
        if (best.length > KK) best.pop();
      }
    }
    return {high, low: best.map(b => b[1])};
  }
  function drawNeighbors(c, i) {
    const nb = neighbors(i);
    if (!nb || Number.isNaN(SX[i])) return;
    c.save();
    const lines = (rows, colour, dash, width) => {
      c.setLineDash(dash); c.strokeStyle = colour; c.lineWidth = width;
      c.beginPath();
      for (const r of rows) {
        if (Number.isNaN(SX[r])) continue;
        c.moveTo(SX[i], SY[i]); c.lineTo(SX[r], SY[r]);
      }
      c.stroke();
    };
    lines(nb.high, "rgba(230,110,0,0.95)", [], 2);
    lines(nb.low, "rgba(20,60,200,0.9)", [4, 3], 1.3);
    c.restore();
  }

  // ---- drawing
  let drawQueued = false;
  function requestDraw() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => { drawQueued = false; draw(); });
  }
  function drawBackground() {
    bctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    bctx.clearRect(0, 0, W, H);
    bctx.fillStyle = "#fff"; bctx.fillRect(0, 0, W, H);
    const a = Math.max(0, Math.min(E - 1, Math.floor(t))), b = Math.min(E - 1, a + 1);
    const f = t - a;
    bctx.imageSmoothingEnabled = true; bctx.imageSmoothingQuality = "high";
    const put = (e, alpha) => {
      const img = bgs[D.backgroundIndex[e]], box = EB[e];
      if (!img.complete || !img.naturalWidth) return;
      const [x, y] = toScreen([box[0], box[3]]);
      bctx.globalAlpha = alpha;
      bctx.drawImage(img, x, y, (box[1] - box[0]) * cam.s, (box[3] - box[2]) * cam.s);
    };
    put(a, 1);
    if (f > 0 && b !== a) put(b, f);
    bctx.globalAlpha = 1;
    if (EXACT) {
      drawExact(bctx, a, f > 0 && b !== a ? 1 - f : 1);
      if (f > 0 && b !== a) drawExact(bctx, b, f);
    }
  }
  // The exact boundaries as vector paths, stroked at the current camera: sharp at any scale.
  function drawExact(c, e, alpha) {
    const S = EXACT[e];
    if (!S || !S.length) return;
    c.save();
    c.globalAlpha = alpha;
    c.beginPath();
    for (let k = 0; k < S.length; k += 4) {
      c.moveTo((S[k] - cam.x0) * cam.s, (cam.y1 - S[k + 1]) * cam.s);
      c.lineTo((S[k + 2] - cam.x0) * cam.s, (cam.y1 - S[k + 3]) * cam.s);
    }
    c.lineWidth = 1.2; c.lineCap = "round"; c.strokeStyle = "rgba(20,20,20,0.85)"; c.stroke();
    c.restore();
  }
  function drawOverview() {
    if (D.fixedCamera) { overview.style.display = "none"; return; }
    const g = D.bounds, s = OVERVIEW / Math.max(g[1] - g[0], g[3] - g[2]);
    const w = Math.round((g[1] - g[0]) * s), h = Math.round((g[3] - g[2]) * s);
    if (overview.width !== Math.round(w * dpr)) size(overview, w, h);
    const c = overview.getContext("2d");
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    c.clearRect(0, 0, w, h);
    const box = EB[cur], img = bgs[D.backgroundIndex[cur]];
    if (img.complete && img.naturalWidth) {
      c.globalAlpha = 0.8;
      c.drawImage(img, (box[0] - g[0]) * s, (g[3] - box[3]) * s,
                  (box[1] - box[0]) * s, (box[3] - box[2]) * s);
      c.globalAlpha = 1;
    }
    const v0 = fromScreen(0, 0), v1 = fromScreen(W, H);
    c.strokeStyle = "#d00"; c.lineWidth = 1.5;
    c.strokeRect((v0[0] - g[0]) * s, (g[3] - v0[1]) * s, (v1[0] - v0[0]) * s, (v0[1] - v1[1]) * s);
  }
  let overlayBlank = true;
  function drawOverlay() {
    const empty = !selected.size && hovered < 0 && !(drag && drag.moved);
    if (empty && overlayBlank) return;  // nothing to draw, nothing to clear: the layer rests
    overlayBlank = empty;
    octx.clearRect(0, 0, W, H);
    for (const i of trailRows()) drawTrail(octx, i);
    octx.save();
    let shown = 0;
    for (const i of selected) {
      if (!VIS[i] || Number.isNaN(SX[i])) continue;
      octx.beginPath(); octx.arc(SX[i], SY[i], RING + 2, 0, 2 * Math.PI);
      octx.lineWidth = 3; octx.strokeStyle = "rgba(255,255,255,0.9)"; octx.stroke();
      octx.lineWidth = 1.5; octx.strokeStyle = "#000"; octx.stroke();
      if (shown++ < 30) {
        octx.font = "11px sans-serif"; octx.fillStyle = "#000";
        octx.fillText(String(IDS[i]), SX[i] + RING + 4, SY[i] - RING - 2);
      }
    }
    octx.restore();
    if (hovered >= 0 && !Number.isNaN(SX[hovered])) {
      drawNeighbors(octx, hovered);
      octx.beginPath(); octx.arc(SX[hovered], SY[hovered], RING + 2, 0, 2 * Math.PI);
      octx.lineWidth = 2; octx.strokeStyle = "#000"; octx.stroke();
    }
    if (drag && drag.moved) {
      octx.save();
      octx.setLineDash([5, 4]); octx.lineWidth = 1.5; octx.strokeStyle = "#000";
      octx.fillStyle = "rgba(0,0,0,0.06)";
      octx.beginPath();
      const poly = dragPolygon();
      poly.forEach((p, k) => (k ? octx.lineTo(p[0], p[1]) : octx.moveTo(p[0], p[1])));
      octx.closePath(); octx.fill(); octx.stroke();
      octx.restore();
    }
  }
  let drawMs = 0;
  function draw() {
    const t0 = performance.now();
    layout();
    if (styleDirty) computeStyles();
    drawBackground();
    if (gl) drawPointsGL(); else drawPoints2D();
    drawOverlay();
    drawOverview();
    frames++;
    drawMs += performance.now() - t0;
  }

  // ---- tooltip
  function fmt(v, digits) { return Number.isFinite(v) ? v.toFixed(digits) : "n/a"; }
  function describe(i) {
    const p = PRED[cur * N + i], l = LAB[i];
    const lines = [
      "id " + IDS[i] + " (" + (SPLIT[i] === 1 ? "test" : "train") + ")",
      "label: " + D.classNames[l],
      "prediction: " + D.classNames[p] + (p === l ? "" : "  \u2717 wrong"),
    ];
    if (cur > 0 && PRED[(cur - 1) * N + i] !== p) lines.push("flipped at this epoch");
    if (FIELDS.confidence) lines.push("confidence " + fmt(FIELDS.confidence[i], 3) +
                                      ", variability " + fmt(FIELDS.variability[i], 3));
    if (FIELDS.correctness) lines.push("right at " + fmt(100 * FIELDS.correctness[i], 0) + "% of epochs");
    if (FIELDS.forgetting) lines.push("forgetting events: " + FIELDS.forgetting[i]);
    if (FIELDS.region) lines.push("data map: " + D.regions[FIELDS.region[i]]);
    if (FIELDS.suspect) lines.push("suspect score " + fmt(FIELDS.suspect[i], 3));
    if (FAITH) {
      const c = FAITH[cur * N + i];
      lines.push("kNN preservation: " + (c === 255 ? "n/a" : (c / 250).toFixed(2)));
    }
    return lines;
  }
  function hideTip() {
    hovered = -1; tooltip.style.display = "none";
    drawOverlay(); drawDatamapMarks();
  }
  function showTip(i) {
    hovered = i;
    tooltip.replaceChildren();
    if (TH && sprite.complete && sprite.naturalWidth) {
      const scale = Math.max(1, Math.floor(64 / Math.max(TH.w, TH.h)));
      const tc = document.createElement("canvas");
      tc.width = TH.w * scale; tc.height = TH.h * scale; tc.className = "thumb";
      const c = tc.getContext("2d");
      c.imageSmoothingEnabled = false;
      c.drawImage(sprite, (i % TH.cols) * TH.w, Math.floor(i / TH.cols) * TH.h, TH.w, TH.h,
                  0, 0, tc.width, tc.height);
      tooltip.append(tc);
    }
    for (const line of describe(i)) {
      const div = document.createElement("div");
      div.textContent = line; tooltip.append(div);
    }
    tooltip.style.display = "block";
    const tw = tooltip.offsetWidth, th = tooltip.offsetHeight;
    let left = SX[i] + 14, top = SY[i] + 14;
    if (left + tw > W) left = Math.max(0, SX[i] - 14 - tw);
    if (top + th > H) top = Math.max(0, SY[i] - 14 - th);
    tooltip.style.left = left + "px"; tooltip.style.top = top + "px";
    drawOverlay(); drawDatamapMarks();
  }
  function refreshTip() {
    if (hovered < 0) return;
    if (VIS[hovered] && !Number.isNaN(SX[hovered])) showTip(hovered); else hideTip();
  }

  // ---- selection: click toggles one sample; a drag draws a lasso or a box (shift adds)
  let drag = null, suppressClick = false;
  function dragPolygon() {
    if (tool.value === "box" || drag.forceBox) {
      const [a, b] = [drag.points[0], drag.points[drag.points.length - 1]];
      return [a, [b[0], a[1]], b, [a[0], b[1]]];
    }
    return drag.points;
  }
  function inside(poly, x, y) {
    let hit = false;
    for (let a = 0, b = poly.length - 1; a < poly.length; b = a++) {
      const [xa, ya] = poly[a], [xb, yb] = poly[b];
      if ((ya > y) !== (yb > y) && x < (xb - xa) * (y - ya) / (yb - ya) + xa) hit = !hit;
    }
    return hit;
  }
  function selectPolygon(poly, add) {
    if (!add) selected.clear();
    for (let i = 0; i < N; i++) {
      if (VIS[i] && !Number.isNaN(SX[i]) && inside(poly, SX[i], SY[i])) selected.add(i);
    }
    selectionChanged();
  }
  function local(ev, el) {
    const rect = el.getBoundingClientRect();
    return [ev.clientX - rect.left, ev.clientY - rect.top];
  }
  canvas.addEventListener("mousedown", ev => {
    if (ev.button !== 0) return;
    drag = {points: [local(ev, canvas)], moved: false, add: ev.shiftKey};
  });
  window.addEventListener("mousemove", ev => {
    if (!drag) return;
    const p = local(ev, canvas), p0 = drag.points[0];
    if (!drag.moved && Math.hypot(p[0] - p0[0], p[1] - p0[1]) < 4) return;
    drag.moved = true; drag.points.push(p);
    drawOverlay();
  });
  window.addEventListener("mouseup", () => {
    if (!drag) return;
    const done = drag;
    if (done.moved) {
      suppressClick = true;
      selectPolygon(dragPolygon(), done.add);
    }
    drag = null;
    drawOverlay();
  });
  canvas.addEventListener("mousemove", ev => {
    if (drag && drag.moved) return;
    const [x, y] = local(ev, canvas), i = nearest(x, y);
    if (i < 0) { if (hovered >= 0) hideTip(); } else if (i !== hovered) showTip(i);
  });
  canvas.addEventListener("mouseleave", () => { if (!drag) hideTip(); });
  canvas.addEventListener("click", ev => {
    if (suppressClick) { suppressClick = false; return; }
    const [x, y] = local(ev, canvas), i = nearest(x, y);
    if (i >= 0) select(i);
  });
  function select(i) {  // toggle row i
    if (selected.has(i)) selected.delete(i); else selected.add(i);
    selectionChanged();
  }
  function selectionChanged() {
    clearTrails.disabled = selected.size === 0;
    for (const id of ["export-csv", "export-json", "copy-ids"]) $(id).disabled = !selected.size;
    $("selection-count").textContent = selected.size
      ? selected.size + " selected" + (selected.size > TRAIL_CAP
        ? " (trails of the first " + TRAIL_CAP + ")" : "")
      : "no selection";
    styleDirty = true;
    draw(); refreshTip(); drawDatamapMarks();
  }
  function clearSelection() { selected.clear(); selectionChanged(); }
  clearTrails.addEventListener("click", clearSelection);

  // ---- export
  function selectionRows() { return Array.from(selected).sort((a, b) => a - b); }
  function exportText(format) {
    const rows = selectionRows();
    const split = i => (SPLIT[i] === 1 ? "test" : "train");
    if (format === "json") {
      return JSON.stringify(rows.map(i => ({id: Number(IDS[i]), split: split(i),
                                             label: D.classNames[LAB[i]]})), null, 1);
    }
    const quote = s => (/[",\n\r]/.test(s) ? "\"" + s.replace(/"/g, "\"\"") + "\"" : s);
    return "id,split,label\n" +
      rows.map(i => IDS[i] + "," + split(i) + "," + quote(D.classNames[LAB[i]]) + "\n").join("");
  }
  function download(name, text, type) {
    const url = URL.createObjectURL(new Blob([text], {type}));
    const a = document.createElement("a");
    a.href = url; a.download = name; document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }
  $("export-csv").addEventListener("click",
    () => download("timevis-selection.csv", exportText("csv"), "text/csv"));
  $("export-json").addEventListener("click",
    () => download("timevis-selection.json", exportText("json"), "application/json"));
  $("copy-ids").addEventListener("click", () => {
    const text = selectionRows().map(i => (SPLIT[i] === 1 ? "test:" : "") + IDS[i]).join(",");
    let settled = false;
    const fallback = () => {  // no clipboard here (or refused, or no answer): a download
      if (settled) return;
      settled = true;
      download("timevis-selection-ids.txt", text, "text/plain");
    };
    const copied = () => {
      if (settled) return;
      settled = true;
      $("search-status").textContent = selected.size + " ids copied";
    };
    try {
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(copied, fallback);
        setTimeout(fallback, 1500);
      } else fallback();
    } catch (err) { fallback(); }
  });

  // ---- search: an id (train, else test), train:ID / test:ID, label:NAME, flipped
  const status = $("search-status");
  function search(text) {
    text = String(text).trim();
    let rows = [], what = text;
    let m;
    if ((m = /^(?:(train|test):)?\s*(-?\d+)$/i.exec(text))) {
      const id = Number(m[2]), want = m[1] ? (m[1].toLowerCase() === "test" ? 1 : 0) : null;
      for (const s of want === null ? [0, 1] : [want]) {
        for (let i = 0; i < N; i++) if (SPLIT[i] === s && IDS[i] === id) rows.push(i);
        if (rows.length) break;
      }
      what = (want === 1 ? "test" : want === 0 ? "train" : "") + " id " + id;
    } else if ((m = /^label:\s*(.+)$/i.exec(text))) {
      const name = m[1].trim().toLowerCase();
      let c = D.classNames.findIndex(s => s.toLowerCase() === name);
      if (c < 0 && /^\d+$/.test(name) && Number(name) < D.classNames.length) c = Number(name);
      if (c >= 0) for (let i = 0; i < N; i++) if (LAB[i] === c && (SPLIT[i] === 0 || showTest)) rows.push(i);
      what = "label " + m[1].trim();
    } else if (/^flip(ped)?$/i.test(text)) {
      if (cur > 0) {
        for (let i = 0; i < N; i++) {
          if ((SPLIT[i] === 0 || showTest) && PRED[cur * N + i] !== PRED[(cur - 1) * N + i]) rows.push(i);
        }
      }
      what = "flipped at epoch " + D.epochs[cur];
    } else {
      status.textContent = "cannot read \u201c" + text + "\u201d: try 12, test:7, label:cat or flipped";
      return {count: 0, rows: []};
    }
    if (!rows.length) {
      status.textContent = "no sample: " + what;
      return {count: 0, rows: []};
    }
    if (rows.some(i => SPLIT[i] === 1) && !showTest) {
      showTestBox.checked = true; showTest = true; styleDirty = true;
    }
    selected.clear();
    for (const i of rows) selected.add(i);
    status.textContent = rows.length + " found: " + what;
    if (rows.length === 1) jumpTo(rows[0]); else selectionChanged();
    return {count: rows.length, rows: rows.slice()};
  }
  function jumpTo(i) {  // show sample i: at an epoch where it has a position, hovered
    if (Q[2 * (cur * N + i)] === MISSING) {
      for (let d = 1; d < E; d++) {
        for (const e of [cur - d, cur + d]) {
          if (e >= 0 && e < E && Q[2 * (e * N + i)] !== MISSING) { setEpoch(e); d = E; break; }
        }
      }
    }
    selectionChanged();
    showTip(i);
  }
  $("search-go").addEventListener("click", () => search($("search").value));
  $("search").addEventListener("keydown", ev => {
    if (ev.key === "Enter") { ev.preventDefault(); search($("search").value); }
  });

  // ---- legend: categorical entries (click hides/shows, shift+click solos) or a colour ramp
  function buildLegend() {
    legend.replaceChildren();
    if (mode.kind === "cat") {
      mode.names.forEach((name, c) => {
        const item = document.createElement("span"), sw = document.createElement("span");
        const text = document.createElement("span");
        item.className = "item" + (hiddenCats.has(c) ? " hidden" : "");
        sw.className = "swatch"; sw.style.background = rgbOf(mode.colours[c]);
        text.textContent = name;
        item.append(sw, text);
        item.addEventListener("click", ev => legendClick(c, ev.shiftKey));
        legend.append(item);
      });
    } else {
      const box = document.createElement("span"), bar = document.createElement("canvas");
      const lo = document.createElement("span"), hi = document.createElement("span");
      const name = document.createElement("span");
      box.className = "ramp"; bar.width = 160; bar.height = 12;
      const c = bar.getContext("2d");
      for (let x = 0; x < 160; x++) { c.fillStyle = rgbOf(ramp(mode.stops, x / 159)); c.fillRect(x, 0, 1, 12); }
      lo.textContent = fmt(mode.range[0], 2); hi.textContent = fmt(mode.range[1], 2);
      name.textContent = mode.name + " (grey: unknown)";
      box.append(name, lo, bar, hi); legend.append(box);
    }
    key.textContent = (mode.key === "label"
      ? "\u25cf train  \u25b2 test  ring: label colour, inner dot: predicted colour (misclassified). "
      : "\u25cf train  \u25b2 test. ") +
      "Drag on the map to select (lasso or box, shift adds); click a sample to add or drop it; " +
      "selected samples keep their trails (fading: past epochs, dashed: epochs to come). " +
      (KNN ? "Hover: orange lines to the sample's nearest neighbours in feature space, dashed " +
             "blue to its nearest on the map. " : "") +
      "Keys: \u2190 \u2192 step, space plays, Escape clears the selection.";
  }
  function legendClick(c, solo) {
    if (solo) {
      const alone = hiddenCats.size === mode.names.length - 1 && !hiddenCats.has(c);
      hiddenCats.clear();
      if (!alone) mode.names.forEach((_, k) => { if (k !== c) hiddenCats.add(k); });
    } else if (hiddenCats.has(c)) hiddenCats.delete(c); else hiddenCats.add(c);
    styleDirty = true; buildLegend(); draw(); refreshTip(); drawDatamap();
  }
  function setColorBy(k) {
    const m = MODES.find(x => x.key === k);
    if (!m) throw new Error("no colour mode " + k);
    mode = m; colorBy.value = k; hiddenCats.clear();
    styleDirty = true; buildLegend(); draw(); refreshTip(); drawDatamap();
  }
  colorBy.addEventListener("change", () => setColorBy(colorBy.value));

  // ---- agreement strip and badge
  const strip = $("agreement-strip"), stripTip = $("agreement-tip"), A = D.agreements;
  const STRIP_W = 360, STRIP_H = 12, WARN = D.agreementWarn;
  function agreementColour(v) {
    if (v === null || v === undefined) return "rgb(200,200,200)";
    return rgbOf(ramp([[178, 24, 43], [244, 165, 130], [253, 219, 120], [120, 198, 121],
                       [35, 132, 67]], (v - 0.5) / 0.5));
  }
  function drawStrip() {
    if (!A) { $("agreement-row").style.display = "none"; return; }
    const c = strip.getContext("2d");
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    c.clearRect(0, 0, STRIP_W, STRIP_H);
    const w = STRIP_W / E;
    for (let e = 0; e < E; e++) {
      c.fillStyle = agreementColour(A[e]);
      c.fillRect(e * w, 0, Math.max(1, w - (w > 3 ? 1 : 0)), STRIP_H);
      if (A[e] !== null && A[e] < WARN) {  // marked: a dark bar along the bottom
        c.fillStyle = "#700"; c.fillRect(e * w, STRIP_H - 3, Math.max(1, w - (w > 3 ? 1 : 0)), 3);
      }
    }
    c.strokeStyle = "#000"; c.lineWidth = 1.5;
    c.strokeRect(cur * w + 0.75, 0.75, Math.max(1, w - 1.5), STRIP_H - 1.5);
  }
  if (A) {
    size(strip, STRIP_W, STRIP_H);
    const cellAt = ev => Math.max(0, Math.min(E - 1, Math.floor(local(ev, strip)[0] / (STRIP_W / E))));
    strip.addEventListener("mousemove", ev => {
      const e = cellAt(ev);
      stripTip.textContent = "epoch " + D.epochs[e] + ": agreement " +
        (A[e] === null ? "n/a" : A[e].toFixed(3)) + (A[e] !== null && A[e] < WARN ? " (low)" : "");
      stripTip.style.display = "block";
      stripTip.style.left = Math.min(STRIP_W - 60, local(ev, strip)[0]) + "px";
    });
    strip.addEventListener("mouseleave", () => { stripTip.style.display = "none"; });
    strip.addEventListener("click", ev => goTo(cellAt(ev)));
  }
  function updateBadge() {
    if (!A) { badge.textContent = ""; return; }
    const v = A[cur];
    badge.textContent = "agreement " + (v === null ? "n/a" : v.toFixed(3));
    badge.className = v !== null && v < WARN ? "low" : "";
    badge.title = "share of train samples whose landscape class at their position is the " +
      "model's prediction; below " + WARN + " the regions are not to be trusted";
  }

  // ---- data map: confidence (y) against variability (x), coloured by correctness
  const dm = $("datamap"), CONF = FIELDS.confidence, VAR = FIELDS.variability;
  const CORR = FIELDS.correctness;
  const DM_PAD = 24;
  let dmBase = null, dmX = 0.5, dmDrag = null;
  const dmPos = i => [DM_PAD + VAR[i] / dmX * (DATAMAP - DM_PAD - 6),
                      6 + (1 - CONF[i]) * (DATAMAP - DM_PAD - 6)];
  function drawDatamap() {
    if (!CONF || !VAR) { $("datamap-box").style.display = "none"; return; }
    for (let i = 0; i < N; i++) if (VAR[i] > dmX) dmX = Math.ceil(VAR[i] * 10) / 10;
    dmBase = document.createElement("canvas");
    dmBase.width = Math.round(DATAMAP * dpr); dmBase.height = Math.round(DATAMAP * dpr);
    const c = dmBase.getContext("2d");
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    c.fillStyle = "#fff"; c.fillRect(0, 0, DATAMAP, DATAMAP);
    c.strokeStyle = "#888"; c.lineWidth = 1;
    c.strokeRect(DM_PAD, 6, DATAMAP - DM_PAD - 6, DATAMAP - DM_PAD - 6);
    c.fillStyle = "#444"; c.font = "10px sans-serif";
    c.fillText("0", DM_PAD - 3, DATAMAP - DM_PAD + 11);
    c.fillText(String(dmX), DATAMAP - 22, DATAMAP - DM_PAD + 11);
    c.fillText("variability", DATAMAP / 2 - 18, DATAMAP - 4);
    c.fillText("1", 10, 12); c.fillText("0", 10, DATAMAP - DM_PAD);
    c.save(); c.translate(9, DATAMAP / 2 + 22); c.rotate(-Math.PI / 2);
    c.fillText("confidence", 0, 0); c.restore();
    for (let i = 0; i < N; i++) {
      if (!(SPLIT[i] === 0 || showTest)) continue;
      if (!Number.isFinite(CONF[i]) || !Number.isFinite(VAR[i])) continue;
      const [x, y] = dmPos(i);
      c.fillStyle = rgbOf(ramp(RDBU, CORR ? CORR[i] : 0.5));
      c.fillRect(x - 1.5, y - 1.5, 3, 3);
    }
    $("datamap-key").textContent = "colour: correctness (red: never right, blue: always). " +
      "Drag a box to select those samples.";
    drawDatamapMarks();
  }
  function drawDatamapMarks() {
    if (!dmBase) return;
    const c = dm.getContext("2d");
    c.setTransform(1, 0, 0, 1, 0, 0);
    c.drawImage(dmBase, 0, 0);
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (selected.size) {
      c.fillStyle = "rgba(255,255,255,0.55)"; c.fillRect(DM_PAD, 6, DATAMAP - DM_PAD - 6, DATAMAP - DM_PAD - 6);
      c.strokeStyle = "#000"; c.lineWidth = 1;
      for (const i of selected) {
        if (!Number.isFinite(CONF[i])) continue;
        const [x, y] = dmPos(i);
        c.fillStyle = rgbOf(ramp(RDBU, CORR ? CORR[i] : 0.5));
        c.beginPath(); c.arc(x, y, 2.6, 0, 2 * Math.PI); c.fill(); c.stroke();
      }
    }
    if (hovered >= 0 && Number.isFinite(CONF[hovered])) {
      const [x, y] = dmPos(hovered);
      c.strokeStyle = "#000"; c.lineWidth = 2;
      c.beginPath(); c.arc(x, y, 5, 0, 2 * Math.PI); c.stroke();
    }
    if (dmDrag && dmDrag.b) {
      const [a, b] = [dmDrag.a, dmDrag.b];
      c.setLineDash([4, 3]); c.strokeStyle = "#000"; c.lineWidth = 1.2;
      c.strokeRect(a[0], a[1], b[0] - a[0], b[1] - a[1]); c.setLineDash([]);
    }
  }
  if (CONF && VAR) {
    size(dm, DATAMAP, DATAMAP);
    dm.addEventListener("mousedown", ev => { dmDrag = {a: local(ev, dm), b: null}; });
    dm.addEventListener("mousemove", ev => {
      if (!dmDrag) return;
      dmDrag.b = local(ev, dm); drawDatamapMarks();
    });
    window.addEventListener("mouseup", ev => {
      if (!dmDrag) return;
      const {a} = dmDrag, b = dmDrag.b || local(ev, dm);
      dmDrag = null;
      if (Math.abs(b[0] - a[0]) < 2 && Math.abs(b[1] - a[1]) < 2) { drawDatamapMarks(); return; }
      brushDatamap(a, b, ev.shiftKey);
    });
  }
  function brushDatamap(a, b, add) {  // a, b: corners in data-map pixels
    const [x0, x1] = [Math.min(a[0], b[0]), Math.max(a[0], b[0])];
    const [y0, y1] = [Math.min(a[1], b[1]), Math.max(a[1], b[1])];
    if (!add) selected.clear();
    for (let i = 0; i < N; i++) {
      if (!(SPLIT[i] === 0 || showTest) || !Number.isFinite(CONF[i])) continue;
      const [x, y] = dmPos(i);
      if (x >= x0 && x <= x1 && y >= y0 && y <= y1) selected.add(i);
    }
    selectionChanged();
  }
  function brushValues(v0, v1, c0, c1, add) {  // a box in (variability, confidence) units
    const px = v => DM_PAD + v / dmX * (DATAMAP - DM_PAD - 6);
    const py = c => 6 + (1 - c) * (DATAMAP - DM_PAD - 6);
    brushDatamap([px(v0), py(c1)], [px(v1), py(c0)], add);
  }

  // ---- time: setEpoch jumps; goTo glides the camera there; play advances continuously
  function epochChanged() {
    slider.value = String(cur);
    title.textContent = D.titles[cur];
    label.textContent = "epoch " + D.epochs[cur] + " (" + (cur + 1) + "/" + E + ")";
    updateBadge(); drawStrip();
    styleDirty = true;
  }
  function setEpoch(e) {
    e = Math.max(0, Math.min(E - 1, Math.round(Number(e)) || 0));
    tween = null;
    t = e;
    cur = e; epochChanged();
    draw(); refreshTip();
  }
  let tween = null, playing = false, last = 0, ticking = false;
  function goTo(e) {
    e = Math.max(0, Math.min(E - 1, Math.round(Number(e)) || 0));
    if (playing) stop();
    if (Math.abs(e - t) > 1.5) { setEpoch(e); return; }
    tween = {from: t, to: e, start: performance.now()};
    kick();
  }
  function kick() {
    if (ticking) return;
    ticking = true; last = performance.now();
    schedule();
  }
  // The next frame: on the display's refresh, or after 50 ms where no frame comes (a hidden
  // or headless page), whichever is first.
  let tickToken = 0;
  function schedule() {
    const token = ++tickToken, run = () => { if (token === tickToken) tick(); };
    requestAnimationFrame(run); setTimeout(run, 50);
  }
  function tick() {
    const now = performance.now();
    const dt = Math.max(0, now - last) / 1000;
    last = now;
    if (playing) {
      t = Math.min(E - 1, t + dt * Number(speed.value));
      if (t >= E - 1) { t = E - 1; stop(); }
    } else if (tween) {
      const p = Math.min(1, (now - tween.start) / TWEEN_MS), ease = p * p * (3 - 2 * p);
      t = tween.from + (tween.to - tween.from) * ease;
      if (p >= 1) { t = tween.to; tween = null; }
    }
    const e = Math.max(0, Math.min(E - 1, Math.round(t)));
    if (e !== cur) { cur = e; epochChanged(); }
    draw();
    if (hovered >= 0 && !playing) refreshTip();
    if (playing || tween) schedule();
    else { ticking = false; refreshTip(); }
  }
  function stop() {
    playing = false; play.textContent = "play";
  }
  function start() {
    if (cur >= E - 1) setEpoch(0);
    tween = null; t = cur;
    playing = true; play.textContent = "pause";
    kick();
  }
  play.addEventListener("click", () => { if (playing) stop(); else start(); });
  slider.addEventListener("input", () => goTo(slider.value));
  showTestBox.addEventListener("change", () => {
    showTest = showTestBox.checked; styleDirty = true;
    draw(); refreshTip(); drawDatamap();
  });
  document.addEventListener("keydown", ev => {
    if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
    if (ev.key === " ") { ev.preventDefault(); play.click(); }
    else if (ev.key === "ArrowRight") { ev.preventDefault(); goTo(Math.round(tween ? tween.to : t) + 1); }
    else if (ev.key === "ArrowLeft") { ev.preventDefault(); goTo(Math.round(tween ? tween.to : t) - 1); }
    else if (ev.key === "Escape") clearSelection();
  });

  // ---- test hooks
  function pointAt(i) {
    if (Number.isNaN(SX[i])) return null;
    const rect = canvas.getBoundingClientRect();
    return {x: SX[i], y: SY[i], clientX: rect.left + SX[i], clientY: rect.top + SY[i]};
  }
  function worldToClient(x, y) {
    const rect = canvas.getBoundingClientRect(), p = toScreen([x, y]);
    return {x: p[0], y: p[1], clientX: rect.left + p[0], clientY: rect.top + p[1]};
  }
  let readyMs = null;  // milliseconds from the navigation's start to ready (the benchmark's)
  const ready = Promise.all(loads).then(() => {
    draw(); drawOverview();
    readyMs = performance.now();
  });
  window.timevis = {
    exactSegments: () => (EXACT ? EXACT.map(S => (S ? S.length / 4 : 0)) : null),
    setEpoch, goTo, epoch: () => cur, time: () => t, epochNumber: () => D.epochs[cur], pointAt,
    ready, epochs: D.epochs.slice(), rows: N, select, trailRows, worldToClient,
    selection: selectionRows,
    setSelection: rows => { selected.clear(); for (const i of rows) selected.add(i); selectionChanged(); },
    colorModes: () => MODES.map(m => m.key), colorBy: setColorBy, exportText, search,
    hovered: () => hovered, neighbors, camera: () => {
      const v0 = fromScreen(0, 0), v1 = fromScreen(W, H); return [v0[0], v1[0], v1[1], v0[1]]; },
    renderer: () => (gl ? "webgl2" : "2d"), frames: () => frames, playing: () => playing,
    readyMs: () => readyMs, drawMs: () => drawMs,
    play: start, stop, brushDatamap: brushValues, legendClick,
    size: () => ({width: W, height: H, dpr}),
    datamapToClient: (v, c) => {  // client pixels of (variability, confidence) on the data map
      const rect = dm.getBoundingClientRect();
      return {clientX: rect.left + DM_PAD + v / dmX * (DATAMAP - DM_PAD - 6),
              clientY: rect.top + 6 + (1 - c) * (DATAMAP - DM_PAD - 6)};
    },
  };
  buildLegend();
  drawDatamap();
  selectionChanged();
  setEpoch(0);

  // Test hook: index.html#selftest=epoch:3,click:5,hover:17[,test:1][,play:MS]
  if (HASH.selftest !== undefined) ready.then(() => {
    const opts = {};
    for (const kv of decodeURIComponent(HASH.selftest).split(",")) {
      const [k, v] = kv.split(":"); opts[k] = v;
    }
    const out = {titleBefore: title.textContent, epochBefore: cur, rows: N, epochs: E};
    if ("test" in opts) {
      showTestBox.checked = opts.test === "1";
      showTestBox.dispatchEvent(new Event("change"));
    }
    if ("epoch" in opts) setEpoch(opts.epoch);
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
        for (let k = 0; k < px.length; k += 4) { lo = Math.min(lo, px[k]); hi = Math.max(hi, px[k]); }
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
