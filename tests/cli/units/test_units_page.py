"""units/index.html in a real browser (headless Chromium through Playwright): it loads without
errors and from no network, the slider moves the units, hovering a unit names its preferred
class and selectivity as Python computed them, and the colour choice changes the picture.
Skipped, with the reason, where ``chromium`` or the ``playwright`` package is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from stores import drifting_clusters

from timevis_callback import open_run
from timevis_cli.units.mphate import MPhateSettings
from timevis_cli.units.page import write_page
from timevis_cli.units.pipeline import NO_PREFERENCE, compute_units

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        sync_playwright is None,
        reason="the playwright package is missing: pip install -e '.[dev]'",
    ),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no `chromium` on PATH: apt-get install -y --no-install-recommends chromium",
    ),
]


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    store = drifting_clusters(
        tmp_path_factory.mktemp("units-page") / "store", n_train=120, n_test=0, dim=12, epochs=4
    )
    run = open_run(store)
    return compute_units(run, run.epochs, samples=90, settings=MPhateSettings())


@pytest.fixture(scope="module")
def page_path(units, tmp_path_factory) -> Path:
    return write_page(units, tmp_path_factory.mktemp("units-html") / "index.html")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser, page_path):
    opened = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on("request", lambda request: requests.append(request.url))
    opened.goto(page_path.as_uri())
    opened.wait_for_function("document.getElementById('epochLabel').textContent.length > 0")
    yield opened
    assert not errors, errors
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    opened.close()


def _set_epoch(page, index: int) -> None:
    page.evaluate(
        "(i) => { const s = document.getElementById('epoch'); s.value = i;"
        " s.dispatchEvent(new Event('input')); }",
        index,
    )


def _client_point(page, epoch_index: int, unit: int) -> tuple[float, float]:
    return tuple(
        page.evaluate(
            """([e, u]) => {
                const k = 2 * (e * U + u), r = canvas.getBoundingClientRect();
                return [r.left + sx(P[k]) * r.width / canvas.width,
                        r.top + sy(P[k + 1]) * r.height / canvas.height];
            }""",
            [epoch_index, unit],
        )
    )


def _canvas_pixels(page) -> np.ndarray:
    data = page.evaluate("Array.from(ctx.getImageData(0, 0, canvas.width, canvas.height).data)")
    return np.asarray(data, np.uint8)


def test_page_loads_with_the_last_epoch_and_every_unit(page, units):
    assert page.input_value("#epoch") == str(len(units.epochs) - 1)
    assert page.evaluate("U") == units.units and page.evaluate("E") == len(units.epochs)
    positions = np.asarray(page.evaluate("Array.from(P)"), np.float32).reshape(-1, units.units, 2)
    np.testing.assert_array_equal(positions, units.positions)
    assert f"{units.units} units of fc" in page.inner_text("#title")


def test_hover_names_the_units_class_and_selectivity(page, units):
    epoch_index, unit = 1, 5
    _set_epoch(page, epoch_index)
    assert page.inner_text("#epochLabel").startswith(f"{units.epochs[epoch_index]} ")
    x, y = _client_point(page, epoch_index, unit)
    page.mouse.move(x, y)
    tip = page.inner_text("#tip")
    preferred = int(units.preferred[epoch_index, unit])
    name = units.class_names[preferred] if preferred != NO_PREFERENCE else None
    assert tip.startswith(f"unit {unit} at epoch {units.epochs[epoch_index]}: "), tip
    assert (f"prefers {name}" in tip) if name else ("no preference" in tip), tip
    shown = float(tip.rsplit("selectivity ", 1)[1])
    assert shown == pytest.approx(float(units.selectivity[epoch_index, unit]), abs=0.006)


def test_slider_and_colour_change_the_picture(page):
    first = _canvas_pixels(page)
    _set_epoch(page, 0)
    moved = _canvas_pixels(page)
    assert (first != moved).any()
    page.select_option("#colour", "selectivity")
    recoloured = _canvas_pixels(page)
    assert (recoloured != moved).any()
    assert "class selectivity" in page.inner_text("#legend")


def test_click_follows_a_unit(page, units):
    x, y = _client_point(page, len(units.epochs) - 1, 3)
    page.mouse.click(x, y)
    assert page.evaluate("selected") == 3
    assert "(followed)" in page.inner_text("#info")
