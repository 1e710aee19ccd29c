"""Benchmark: the HTML viewer (``render/index.html``) at scale, in headless Chromium.

    python scripts/bench_viewer.py [--samples 50000] [--epochs 200] [--classes 10]
                                   [--seconds 5] [--renderer webgl2,2d] [--workdir DIR]

Writes a synthetic page of ``--samples`` samples x ``--epochs`` epochs through
:func:`timevis_cli.render.viewer.write_viewer` directly (no run store, no fit): samples drifting
in ``--classes`` clusters, every epoch on its own canvas (the follow camera), a 64 x 64
landscape per epoch, per-sample measures (so the data map and the colour modes are live), no
neighbours (the page leaves them out above 5 000 samples) and no thumbnails. Then it opens the
page in headless Chromium (``/usr/bin/chromium`` through Playwright's Python package, with
``executable_path``; never ``playwright install``), once per ``--renderer``, and measures:

- load: from the navigation's start to the page's ``ready`` (HTML parsed, data decoded, images
  decoded, the first frame drawn), read in the page as ``performance.now()``;
- frames per second while playing (10 epochs/s, the camera and the points gliding every frame)
  over ``--seconds``, counted by the page, and the page's own drawing time per frame (its
  JavaScript: positions, colours, the points' raster; the rest of a frame is the browser's
  compositing, and other jobs on the machine).

WebGL2 in headless Chromium is SwiftShader (a software GL, on the CPU), so the page draws its
points with its own 2-D canvas renderer there (``auto``); ``webgl2`` forces WebGL2 on SwiftShader
(the slowest case; a browser with a GPU draws WebGL2 faster than either). Targets: load under
5 s and at least 30 fps on 2 cores. Prints one markdown table with the machine (its load
average at the start: other jobs slow the browser down).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from make_synthetic_store import machine_description, markdown_table  # noqa: E402

from timevis_cli.render.landscape import Bounds, palette  # noqa: E402
from timevis_cli.render.viewer import write_viewer  # noqa: E402

LOAD_TARGET_S = 5.0
FPS_TARGET = 30.0
BACKGROUND = 64  # landscape side in pixels


def synthetic_page(path: Path, samples: int, epochs: int, classes: int, seed: int = 0) -> Path:
    """A page of ``samples`` x ``epochs``: clusters that separate and drift, one canvas each."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, samples)
    angle = 2 * np.pi * np.arange(classes) / classes
    centres = np.stack([np.cos(angle), np.sin(angle)], 1) * 4
    noise = rng.normal(size=(samples, 2)).astype(np.float32)
    positions = np.empty((epochs, samples, 2), dtype=np.float32)
    boxes, backgrounds = [], []
    colours = palette(classes)
    yy, xx = np.mgrid[0:BACKGROUND, 0:BACKGROUND]
    for t in range(epochs):
        spread = t / max(1, epochs - 1)
        drift = np.array([2 * np.sin(t / 15), 1.5 * np.cos(t / 20)], dtype=np.float32)
        positions[t] = centres[labels] * spread + noise * (1.5 - spread) + drift
        lo = np.percentile(positions[t], 1, axis=0) - 0.5
        hi = np.percentile(positions[t], 99, axis=0) + 0.5
        side = float((hi - lo).max())
        centre = (lo + hi) / 2
        boxes.append(Bounds(centre[0] - side / 2, centre[0] + side / 2,
                            centre[1] - side / 2, centre[1] + side / 2))  # fmt: skip
        sector = (
            np.floor(
                (np.arctan2(yy - BACKGROUND / 2, xx - BACKGROUND / 2 + t % 7) + np.pi)
                / (2 * np.pi)
                * classes
            ).astype(int)
            % classes
        )
        backgrounds.append(colours[sector])
    predictions = np.where(rng.random((epochs, samples)) < 0.1,
                           rng.integers(0, classes, (epochs, samples)), labels)  # fmt: skip
    overall = Bounds(min(b.xmin for b in boxes), max(b.xmax for b in boxes),
                     min(b.ymin for b in boxes), max(b.ymax for b in boxes))  # fmt: skip
    return write_viewer(
        path,
        epochs=list(range(epochs)),
        backgrounds=backgrounds,
        bounds=overall,
        epoch_bounds=boxes,
        positions=positions,
        labels=labels,
        predictions=predictions,
        ids=np.arange(samples),
        splits=(np.arange(samples) % 10 == 9).astype(np.uint8),
        class_names=[f"class {c}" for c in range(classes)],
        agreements=list(0.85 + 0.15 * rng.random(epochs)),
        measures={
            "confidence": rng.random(samples),
            "variability": 0.4 * rng.random(samples),
            "suspect": rng.random(samples),
        },
        max_points=samples,
    )


def measure(page_path: Path, renderer: str, seconds: float, chromium: str) -> dict[str, object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        forced = "" if renderer == "auto" else f"#renderer={renderer}"
        page.goto(page_path.as_uri() + forced, timeout=120_000)
        page.wait_for_function("window.timevis && timevis.readyMs() !== null", timeout=120_000)
        load_s = page.evaluate("timevis.readyMs()") / 1000
        used = page.evaluate("timevis.renderer()")
        fps, draw_ms = page.evaluate(
            """seconds => new Promise(done => {
                 timevis.setEpoch(0); timevis.play();
                 const f0 = timevis.frames(), d0 = timevis.drawMs(), t0 = performance.now();
                 setTimeout(() => {
                   const n = timevis.frames() - f0;
                   timevis.stop();
                   done([n / ((performance.now() - t0) / 1000), (timevis.drawMs() - d0) / n]);
                 }, seconds * 1000);
               })""",
            seconds,
        )
        browser.close()
    if errors:
        raise RuntimeError(f"the page failed: {errors[0]}")
    return {"renderer": f"{renderer} -> {used}", "load_s": load_s, "fps": fps, "draw_ms": draw_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0, help="playing time measured")
    parser.add_argument(
        "--renderer",
        default="auto,webgl2",
        help="comma-separated: auto (the page's choice: WebGL2, or its 2-D canvas renderer on a "
        "software GL such as headless Chromium's), webgl2 (forced), 2d (forced)",
    )
    parser.add_argument("--workdir", type=Path, help="where the page is written (default: temp)")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no `chromium` on PATH: apt-get install -y --no-install-recommends chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        sys.exit("the playwright package is missing: pip install -e '.[dev]'")

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.workdir or Path(tmp)
        started = time.perf_counter()
        page = synthetic_page(folder / "index.html", args.samples, args.epochs, args.classes)
        write_s = time.perf_counter() - started
        size_mb = page.stat().st_size / 1e6
        rows = []
        for renderer in args.renderer.split(","):
            result = measure(page, renderer.strip(), args.seconds, chromium)
            ok = result["load_s"] < LOAD_TARGET_S and result["fps"] >= FPS_TARGET
            rows.append([
                result["renderer"], f"{args.samples} x {args.epochs}", f"{size_mb:.1f}",
                f"{write_s:.1f}", f"{result['load_s']:.2f}", f"{result['fps']:.1f}",
                f"{result['draw_ms']:.1f}",
                "yes" if ok else "no",
            ])  # fmt: skip
    print(f"machine: {machine_description()}")
    print(f"targets: load < {LOAD_TARGET_S:.0f} s, >= {FPS_TARGET:.0f} fps while playing")
    print(markdown_table(
        ["points", "samples x epochs", "page MB", "write s", "load s", "fps playing",
         "page ms/frame", "on target"],
        rows,
    ))  # fmt: skip


if __name__ == "__main__":
    main()
