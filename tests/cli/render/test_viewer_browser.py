"""index.html in a real browser: headless Chromium driven through Playwright.

A tiny synthetic page (a few dozen samples on a grid, six epochs) is opened once per test; each
test acts as a user would (mouse, keyboard, the page's controls) and checks the result against
what Python computes from the same data: the tooltip on hover, the ids a lasso or box drag
selects, pixels that change with the colour, search jumping to a sample, exports equal to the
selection, the camera following each epoch's bounds, the agreement strip, the data map's brush,
the legend hiding a class, the neighbour lines and the 2-D canvas fallback.

Skipped, with the reason, where ``chromium`` or the ``playwright`` package is missing (the dev
extra installs playwright; the browser is the system's chromium, never ``playwright install``).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as Polygon
from PIL import Image

from timevis_cli.render.landscape import Bounds, palette
from timevis_cli.render.viewer import write_viewer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(
        sync_playwright is None,
        reason="the playwright package is missing: pip install -e '.[dev]'",
    ),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no `chromium` on PATH: apt-get install -y --no-install-recommends chromium",
    ),
]

NAMES = ["cat", "dog", "<b>bird</b>"]
E, SIDE = 6, 6  # epochs; samples on a SIDE x SIDE grid
N = SIDE * SIDE


def _page_inputs(follow: bool = True) -> dict:
    """Samples on a unit grid drifting right by 0.5 per epoch; every fifth a test sample."""
    rng = np.random.default_rng(3)
    gx, gy = np.meshgrid(np.arange(SIDE, dtype=float), np.arange(SIDE, dtype=float))
    base = np.stack([gx.ravel(), gy.ravel()], axis=1)
    positions = np.stack([base + [0.5 * t, 0.0] for t in range(E)])
    labels = (np.arange(N) // SIDE) % 3
    predictions = np.tile(labels, (E, 1))
    predictions[2, 7] = (labels[7] + 1) % 3  # sample 7 wrong at epoch index 2 only
    predictions[3:, 8] = (labels[8] + 1) % 3  # sample 8 flips at epoch index 3
    colours = palette(3)
    backgrounds = [colours[(np.add.outer(np.arange(32), np.arange(32)) // 16 + t) % 3]
                   for t in range(E)]  # fmt: skip
    boxes = [Bounds(-1 + 0.5 * t, SIDE + 0.5 * t, -1, SIDE) for t in range(E)]
    rows = np.arange(N)
    neighbors = np.stack([np.stack([(rows + 1 + j + t) % N for j in range(3)], 1)
                          for t in range(E)])  # fmt: skip
    return dict(
        epochs=[0, 1, 2, 5, 10, 20],
        backgrounds=backgrounds,
        bounds=Bounds(-1, SIDE + 2.5, -1, SIDE),
        epoch_bounds=boxes if follow else None,
        positions=positions,
        labels=labels,
        predictions=predictions,
        ids=np.arange(N) + 500,
        splits=(np.arange(N) % 5 == 4).astype(np.uint8),
        class_names=NAMES,
        palette=colours,
        thumbnails=rng.integers(0, 256, (N, 6, 6), dtype=np.uint8),
        agreements=[0.97, 0.95, 0.85, None, 0.99, 0.93],
        measures={
            "confidence": np.linspace(0.05, 0.95, N),
            "variability": np.tile(np.linspace(0.0, 0.4, SIDE), SIDE),
            "suspect": rng.random(N),
            "region": np.array(["easy", "ambiguous", "hard"])[np.arange(N) % 3],
        },
        neighbors=neighbors,
        faithfulness=np.full((E, N), 0.5),
    )


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader"],
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def follow_page(tmp_path_factory) -> Path:
    return write_viewer(tmp_path_factory.mktemp("viewer") / "index.html", **_page_inputs())


def _open(browser, page_path: Path, hash_: str = ""):
    page = browser.new_page(viewport={"width": 1200, "height": 1100}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(page_path.as_uri() + hash_)
    page.evaluate("window.timevis.ready")
    page.errors = errors
    return page


@pytest.fixture
def page(browser, follow_page):
    opened = _open(browser, follow_page)
    yield opened
    assert not opened.errors, opened.errors
    opened.close()


def _row_of(sample_id: int) -> int:
    return sample_id - 500


def test_hover_shows_the_tooltip_and_neighbour_lines(page):
    page.evaluate("timevis.setEpoch(2)")
    point = page.evaluate("timevis.pointAt(7)")
    page.mouse.move(point["clientX"], point["clientY"])
    assert page.evaluate("timevis.hovered()") == 7
    tip = page.inner_text("#tooltip")
    assert page.is_visible("#tooltip")
    assert "id 507 (train)" in tip and "label: dog" in tip
    assert "prediction: <b>bird</b>" in tip and "wrong" in tip  # at epoch index 2, as text
    assert "data map: ambiguous" in tip and "kNN preservation: 0.50" in tip
    nb = page.evaluate("timevis.neighbors(7)")
    assert nb["high"] == [(7 + 1 + j + 2) % N for j in range(3)]  # the stored ones at epoch 2
    # its 2-D neighbours: the 3 nearest on the grid (left, right, below or above)
    grid = np.stack(np.meshgrid(np.arange(SIDE), np.arange(SIDE)), -1).reshape(-1, 2)
    d = np.hypot(*(grid - grid[7]).T)
    d[7] = np.inf
    assert set(nb["low"]) <= set(np.flatnonzero(d == 1))
    page.mouse.move(5, 5)
    assert not page.is_visible("#tooltip")


def _drag(page, points):
    page.mouse.move(*points[0])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()


def _client(page, x, y):
    p = page.evaluate(f"timevis.worldToClient({x}, {y})")
    return p["clientX"], p["clientY"]


def test_a_lasso_drag_selects_exactly_the_samples_inside(page):
    inputs = _page_inputs()
    epoch = 3
    page.evaluate(f"timevis.setEpoch({epoch})")
    # a concave polygon in world coordinates, its edges half a grid step from every sample
    shift = 0.5 * epoch
    polygon = np.array([[0.5, 0.5], [4.5, 0.5], [4.5, 3.5], [2.5, 3.5], [2.5, 1.5], [0.5, 1.5]])
    polygon[:, 0] += shift
    shown = inputs["splits"] == 0  # test samples are hidden until the box is ticked
    inside = Polygon(polygon).contains_points(inputs["positions"][epoch])
    expected = sorted(inputs["ids"][inside & shown].tolist())
    assert 6 <= len(expected) < N // 2
    _drag(page, [_client(page, x, y) for x, y in polygon])
    got = sorted(500 + row for row in page.evaluate("timevis.selection()"))
    assert got == expected
    # the selection follows its samples through the epochs; trails for the selection only
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"timevis.time() === {epoch + 1}")
    assert sorted(500 + r for r in page.evaluate("timevis.selection()")) == expected
    assert sorted(500 + r for r in page.evaluate("timevis.trailRows()")) == expected


def test_a_box_drag_with_shift_adds_to_the_selection(page):
    page.select_option("#tool", "box")
    page.evaluate("timevis.setEpoch(0)")
    _drag(page, [_client(page, -0.5, -0.5), _client(page, 1.5, 0.5)])  # rows 0, 1
    assert page.evaluate("timevis.selection()") == [0, 1]
    page.keyboard.down("Shift")
    _drag(page, [_client(page, -0.5, 4.5), _client(page, 0.5, 5.5)])  # rows 24 (test), 30
    page.keyboard.up("Shift")
    assert page.evaluate("timevis.selection()") == [0, 1, 30]
    page.keyboard.press("Escape")
    assert page.evaluate("timevis.selection()") == []


def _canvas_pixels(page) -> np.ndarray:
    shot = page.locator("#canvas").screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)


def test_colour_by_switch_changes_pixels_and_the_legend(page):
    page.evaluate("timevis.setSelection([])")
    before = _canvas_pixels(page)
    legend = page.locator("#legend .item").all_inner_texts()
    assert legend == NAMES
    page.select_option("#color-by", "confidence")
    after = _canvas_pixels(page)
    changed = (np.abs(after - before).sum(-1) > 60).mean()
    assert changed > 0.002, changed  # the points changed colour
    assert page.locator("#legend .item").count() == 0
    assert "confidence" in page.inner_text("#legend")
    page.select_option("#color-by", "region")
    assert page.locator("#legend .item").all_inner_texts() == ["easy", "ambiguous", "hard"]


def test_legend_click_hides_a_class_and_shift_click_solos_it(page):
    point = page.evaluate("timevis.pointAt(0)")  # label cat
    page.locator("#legend .item", has_text="cat").click()
    page.mouse.move(point["clientX"], point["clientY"])
    assert page.evaluate("timevis.hovered()") == -1  # hidden: not drawn, not hoverable
    page.locator("#legend .item", has_text="cat").click()
    page.mouse.move(point["clientX"] + 1, point["clientY"])
    assert page.evaluate("timevis.hovered()") == 0
    page.locator("#legend .item", has_text="dog").click(modifiers=["Shift"])
    hidden = page.locator("#legend .item.hidden").all_inner_texts()
    assert hidden == ["cat", "<b>bird</b>"]


def test_search_jumps_to_the_sample_by_id_label_and_flip(page):
    page.fill("#search", "512")
    page.press("#search", "Enter")
    assert page.evaluate("timevis.selection()") == [12]
    assert page.evaluate("timevis.hovered()") == 12 and page.is_visible("#tooltip")
    assert "id 512" in page.inner_text("#tooltip")
    # a test sample: the test samples are shown for it
    assert page.evaluate("timevis.search('test:524')")["rows"] == [24]
    assert page.is_checked("#show-test")
    assert page.evaluate("timevis.search('524')")["rows"] == [24]  # no train 524: the test one
    rows = page.evaluate("timevis.search('label:dog')")["rows"]
    assert rows == np.flatnonzero(_page_inputs()["labels"] == 1).tolist()
    page.evaluate("timevis.setEpoch(2)")
    assert page.evaluate("timevis.search('flipped')")["rows"] == [7]  # wrong at 2 only
    page.evaluate("timevis.setEpoch(3)")
    assert page.evaluate("timevis.search('flipped')")["rows"] == [7, 8]  # 7 back, 8 flips
    assert page.evaluate("timevis.search('999')")["count"] == 0
    assert "no sample" in page.inner_text("#search-status")


def test_export_content_equals_the_selection(page):
    rows = [3, 8, 30]
    page.evaluate(f"timevis.setSelection({rows})")
    with page.expect_download() as info:
        page.click("#export-csv")
    text = Path(info.value.path()).read_text()
    records = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["id"]) for r in records] == [503, 508, 530]
    assert [r["label"] for r in records] == [NAMES[0], NAMES[1], NAMES[2]]
    with page.expect_download() as info:
        page.click("#export-json")
    data = json.loads(Path(info.value.path()).read_text())
    assert data == [
        {"id": 503, "split": "train", "label": "cat"},
        {"id": 508, "split": "train", "label": "dog"},
        {"id": 530, "split": "train", "label": "<b>bird</b>"},
    ]


def test_copy_ids_uses_the_clipboard_or_falls_back_to_a_download(browser, follow_page):
    rows = "[3, 8, 24]"  # 24 is a test sample: written test:524
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.goto(follow_page.as_uri())
    page.evaluate(f"timevis.ready.then(() => timevis.setSelection({rows}))")
    page.click("#copy-ids")
    page.wait_for_function("document.getElementById('search-status').textContent !== ''")
    assert page.evaluate("navigator.clipboard.readText()") == "503,508,test:524"
    assert page.inner_text("#search-status") == "3 ids copied"
    context.close()
    # where the page may not use the clipboard (e.g. a sandboxed frame): a download instead
    context = browser.new_context(accept_downloads=True)
    context.add_init_script("Object.defineProperty(navigator, 'clipboard', {value: undefined})")
    page = context.new_page()
    page.goto(follow_page.as_uri())
    page.evaluate(f"timevis.ready.then(() => timevis.setSelection({rows}))")
    with page.expect_download() as info:
        page.click("#copy-ids")
    assert Path(info.value.path()).read_text() == "503,508,test:524"
    context.close()


def _fitted(box: Bounds, width: int, height: int) -> list[float]:
    s = min(width / (box.xmax - box.xmin), height / (box.ymax - box.ymin))
    cx, cy = (box.xmin + box.xmax) / 2, (box.ymin + box.ymax) / 2
    return [cx - width / 2 / s, cx + width / 2 / s, cy - height / 2 / s, cy + height / 2 / s]


def test_the_camera_follows_each_epochs_bounds_and_glides_between_them(page):
    boxes = _page_inputs()["epoch_bounds"]
    size = page.evaluate("timevis.size()")
    for epoch in (0, 4):
        page.evaluate(f"timevis.setEpoch({epoch})")
        camera = page.evaluate("timevis.camera()")
        np.testing.assert_allclose(camera, _fitted(boxes[epoch], size["width"], size["height"]))
    assert page.is_visible("#overview")
    page.evaluate("timevis.setEpoch(1)")
    page.focus("#play")
    times = page.evaluate(
        """() => new Promise(done => {
             const seen = [];
             document.dispatchEvent(new KeyboardEvent("keydown", {key: "ArrowRight"}));
             const look = () => { seen.push(timevis.time());
               if (seen.length < 200 && timevis.time() !== 2) requestAnimationFrame(look);
               else done(seen); };
             requestAnimationFrame(look);
           })"""
    )
    assert times[-1] == 2 and any(1 < t < 2 for t in times)  # glided, then arrived
    camera = page.evaluate("timevis.camera()")
    np.testing.assert_allclose(camera, _fitted(boxes[2], size["width"], size["height"]))
    # a sample keeps its place on the map: its screen position is its world position's
    x, y = _page_inputs()["positions"][2, 5]
    assert page.evaluate("timevis.pointAt(5)")["x"] == pytest.approx(
        page.evaluate(f"timevis.worldToClient({x}, {y})")["x"], abs=0.05
    )


def test_a_fixed_camera_with_global_bounds(browser, tmp_path):
    path = write_viewer(tmp_path / "index.html", **_page_inputs(follow=False))
    page = _open(browser, path)
    cameras = [page.evaluate(f"timevis.setEpoch({e}); timevis.camera()") for e in (0, 3, 5)]
    assert cameras[0] == cameras[1] == cameras[2]
    assert not page.is_visible("#overview")
    assert not page.errors
    page.close()


def test_the_agreement_strip_badge_and_hover(page):
    page.evaluate("timevis.setEpoch(2)")
    assert page.inner_text("#agreement-badge") == "agreement 0.850"
    assert page.get_attribute("#agreement-badge", "class") == "low"
    page.evaluate("timevis.setEpoch(0)")
    assert page.get_attribute("#agreement-badge", "class") == ""
    box = page.locator("#agreement-strip").bounding_box()
    cell = box["width"] / E
    page.mouse.move(box["x"] + 2.5 * cell, box["y"] + box["height"] / 2)
    assert page.inner_text("#agreement-tip") == "epoch 2: agreement 0.850 (low)"
    page.mouse.move(box["x"] + 3.5 * cell, box["y"] + box["height"] / 2)
    assert page.inner_text("#agreement-tip") == "epoch 5: agreement n/a"
    page.mouse.click(box["x"] + 4.5 * cell, box["y"] + box["height"] / 2)
    page.wait_for_function("timevis.time() === 4")
    assert page.evaluate("timevis.epochNumber()") == 10


def test_brushing_the_data_map_selects_and_the_landscape_selection_shows_there(page):
    inputs = _page_inputs()
    conf, var = inputs["measures"]["confidence"], inputs["measures"]["variability"]
    v0, v1, c0, c1 = 0.1, 0.3, 0.3, 0.8
    a = page.evaluate(f"timevis.datamapToClient({v0}, {c1})")
    b = page.evaluate(f"timevis.datamapToClient({v1}, {c0})")
    _drag(page, [(a["clientX"], a["clientY"]), (b["clientX"], b["clientY"])])
    inside = (var >= v0) & (var <= v1) & (conf >= c0) & (conf <= c1) & (inputs["splits"] == 0)
    assert page.evaluate("timevis.selection()") == np.flatnonzero(inside).tolist()
    # a landscape selection is drawn on the data map (its points marked over a faded map)
    before = page.locator("#datamap").screenshot()
    page.evaluate("timevis.setSelection([35])")
    after = page.locator("#datamap").screenshot()
    assert before != after


def test_keyboard_steps_and_space_plays(page):
    page.evaluate("timevis.setEpoch(0)")
    page.focus("#play")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("timevis.time() === 1")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("timevis.time() === 0")
    page.keyboard.press(" ")
    assert page.evaluate("timevis.playing()")
    page.wait_for_function("!timevis.playing()", timeout=5000)  # 10 epochs/s: done in 0.5 s
    assert page.evaluate("timevis.epoch()") == E - 1


@pytest.mark.parametrize("renderer", ["webgl2", "2d"])
def test_points_are_drawn_by_webgl2_or_the_2d_fallback(browser, follow_page, renderer):
    page = _open(browser, follow_page, f"#renderer={renderer}")
    assert page.evaluate("timevis.renderer()") == renderer
    page.evaluate("document.getElementById('background').style.visibility = 'hidden'")
    pixels = _canvas_pixels(page)  # the points alone, on the stage's white
    point = page.evaluate("timevis.pointAt(0)")  # label cat: palette colour 0
    x, y = round(point["x"]), round(point["y"])
    colour = palette(3)[0].astype(int)
    patch = pixels[y - 2 : y + 3, x - 2 : x + 3]
    assert (np.abs(patch - colour).sum(-1) < 60).any(), patch
    assert not page.errors
    page.close()


def test_the_page_works_in_a_sandboxed_frame(browser, follow_page):
    # scripts allowed, nothing else: no storage, no cookies, no clipboard, no same origin
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_content('<iframe id="f" sandbox="allow-scripts" width="1200" height="1000"></iframe>')
    page.evaluate(
        "html => { document.getElementById('f').srcdoc = html; }", follow_page.read_text()
    )
    page.wait_for_function("window.frames[0] && window.frames[0].frames !== undefined")
    frame = page.frames[1]
    frame.wait_for_function("window.timevis && timevis.readyMs() !== null")
    point = frame.evaluate("timevis.pointAt(7)")
    box = page.locator("#f").bounding_box()
    page.mouse.move(box["x"] + point["clientX"], box["y"] + point["clientY"])
    assert frame.evaluate("timevis.hovered()") == 7
    assert "id 507" in frame.inner_text("#tooltip")
    assert frame.evaluate("timevis.search('label:cat')")["count"] > 0
    assert frame.evaluate("timevis.exportText('csv')").startswith("id,split,label\n")
    frame.click("#copy-ids")  # no clipboard, no downloads here: nothing breaks
    page.wait_for_timeout(300)
    assert not errors, errors
    page.close()


@pytest.mark.slow
def test_a_real_run_rendered_by_the_cli(browser, tmp_path):
    """record (a synthetic store) -> fit -> render --html, then the page: follow camera,
    agreements, the run's dynamics, and neighbours that are the exact kNN of the features."""
    from click.testing import CliRunner
    from stores import drifting_clusters

    from timevis_callback.reader import open_run
    from timevis_cli.cli import main

    store = drifting_clusters(tmp_path / "store", n_train=120, n_test=20, epochs=4)
    fit = [
        "fit", str(store), "--set", "training.max_epochs=1", "--set", "refine.epochs=10",
        "--set", "refine.decoder_steps=50", "--set", "reduction.init_size=60",
    ]  # fmt: skip
    done = CliRunner().invoke(main, fit)
    assert done.exit_code == 0, done.output
    render = ["render", str(store), "--html", "--split", "both", "--resolution", "32",
              "--no-gif", "--jobs", "1", "--track", "3,test:2"]  # fmt: skip
    done = CliRunner().invoke(main, render)
    assert done.exit_code == 0, done.output
    agreements = json.loads((store / "render" / "agreement.json").read_text())

    page = _open(browser, store / "render" / "index.html")
    assert page.evaluate("timevis.epochs") == [0, 1, 2, 3]
    assert page.evaluate("timevis.rows") == 140
    assert sorted(page.evaluate("timevis.selection()")) == [3, 122]  # train 3, test 2 (rows)
    assert set(page.evaluate("timevis.colorModes()")) >= {
        "label",
        "confidence",
        "variability",
        "suspect",
        "region",
        "faithfulness",
    }
    page.evaluate("timevis.setEpoch(2)")
    assert page.inner_text("#agreement-badge") == f"agreement {agreements['2']:.3f}"
    assert page.is_visible("#overview")  # --bounds follow: the camera moves
    run = open_run(store)
    features = run.features(2)  # train rows then test rows, as on the page (all drawn here)
    features = np.concatenate([features[run.samples.mask("train")],
                               features[run.samples.mask("test")]])  # fmt: skip
    distances = np.linalg.norm(features[:, None] - features[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    for row in (0, 50, 130):
        high = page.evaluate(f"timevis.neighbors({row})")["high"]
        assert sorted(high) == sorted(np.argsort(distances[row])[:5].tolist())
    assert not page.errors
    page.close()
