"""index.html (timevis_cli.render.viewer): self-contained, safe with hostile class names, data that
decode back, a documented size, subsampling that warns; and, in headless Chromium, a page whose
slider, title and hover tooltip work (skipped where no ``chromium`` is installed)."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timevis_cli.errors import InputError
from timevis_cli.render.landscape import Bounds, canvas_bounds, palette
from timevis_cli.render.viewer import BYTES_PER_POINT_EPOCH, payload_bytes, write_viewer

EVIL = '<b>"cat"</b>'
NAMES = ["plane", EVIL, "</script><img src=x onerror=alert(1)>", "a & b \u2028 猫"]
_DTYPES = {"uint8": "u1", "uint16": "<u2", "int32": "<i4", "float32": "<f4", "float64": "<f8"}


def _inputs(n_epochs=6, n=60, n_classes=4, thumbnails="grey", seed=0, same_background=False):
    rng = np.random.default_rng(seed)
    positions = rng.normal(size=(n_epochs, n, 2)).astype(np.float32)
    positions += np.linspace(0, 1, n_epochs, dtype=np.float32)[:, None, None]
    labels = rng.integers(0, n_classes, n)
    predictions = np.where(rng.random((n_epochs, n)) < 0.2, rng.integers(0, n_classes, n), labels)
    splits = (np.arange(n) % 5 == 4).astype(np.uint8)  # every fifth row is a test sample
    colours = palette(n_classes)
    backgrounds = []
    for t in range(n_epochs):
        classes = np.add.outer(np.arange(40), np.arange(40)) // 20 + t * (not same_background)
        backgrounds.append(colours[classes % n_classes])
    thumbs = None
    if thumbnails == "grey":
        thumbs = rng.integers(0, 256, (n, 8, 6), dtype=np.uint8)
    elif thumbnails == "rgb":
        thumbs = rng.integers(0, 256, (n, 8, 6, 3), dtype=np.uint8)
    return dict(
        epochs=list(range(1, n_epochs + 1)),
        backgrounds=backgrounds,
        bounds=canvas_bounds(list(positions)),
        positions=positions,
        labels=labels,
        predictions=predictions,
        ids=np.arange(n) + 1000,
        splits=splits,
        class_names=(NAMES * n_classes)[:n_classes],
        palette=colours,
        thumbnails=thumbs,
        titles=[f"epoch {e} · val_acc {0.5 + e / 100:.3f}" for e in range(1, n_epochs + 1)],
        track=[3, 17],
    )


def _data(text: str) -> dict:
    match = re.search(
        r'<script type="application/json" id="timevis-data">(.*?)</script>', text, re.S
    )
    assert match, "no data block"
    return json.loads(match.group(1))


def _array(typed: dict) -> np.ndarray:
    raw = base64.b64decode(typed["b64"])
    return np.frombuffer(raw, dtype=_DTYPES[typed["dtype"]]).reshape(typed["shape"])


def _png(uri: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :]))))


def _page_bytes() -> int:
    """Bytes of the page's own files (HTML, CSS, JavaScript)."""
    folder = resources.files("timevis_cli.render") / "viewer_assets"
    return sum(len((folder / name).read_bytes()) for name in ("viewer.html", "viewer.css", "viewer.js"))


def test_page_is_self_contained(tmp_path):
    path = write_viewer(tmp_path / "render" / "index.html", **_inputs())
    assert path == tmp_path / "render" / "index.html"
    text = path.read_text(encoding="utf-8").lower()
    for needle in ("http://", "https://", "<script src", "<link ", "@import", "<iframe"):
        assert needle not in text, needle
    style = re.search(r"<style>(.*?)</style>", text, re.S).group(1)
    assert "url(" not in style  # no stylesheet resource either
    for name in ("viewer.css", "viewer.js"):  # the shipped files, inlined whole
        shipped = (resources.files("timevis_cli.render") / "viewer_assets" / name).read_text()
        assert shipped.lower() in text, name
    assert "__timevis_" not in text  # every placeholder filled
    for hook in ('id="epoch-slider"', 'id="play"', 'id="title"', 'id="tooltip"', 'id="canvas"'):
        assert hook in text


def test_class_names_cannot_break_the_page(tmp_path):
    text = write_viewer(tmp_path / "index.html", **_inputs()).read_text(encoding="utf-8")
    # Two script elements only (the data block and the code): no name closes one or adds markup.
    assert text.count("</script>") == 2
    assert text.lower().count("<script") == 2
    assert "<b>" not in text and "<img" not in text and "\u2028" not in text
    assert "plane" in text  # plain names appear verbatim
    assert json.dumps(EVIL).replace("<", "\\u003c").replace(">", "\\u003e") in text
    data = _data(text)
    assert data["classNames"] == NAMES  # every name, exactly, once JSON-decoded
    assert data["titles"][0] == "epoch 1 · val_acc 0.510"


@pytest.mark.parametrize("thumbnails", ["grey", "rgb", None])
def test_data_decode_back(tmp_path, thumbnails):
    inputs = _inputs(thumbnails=thumbnails)
    inputs["positions"][2, 5] = np.nan  # absent at that epoch
    data = _data(write_viewer(tmp_path / "index.html", **inputs).read_text(encoding="utf-8"))
    n_epochs, n = inputs["positions"].shape[:2]
    assert data["n"] == n and data["epochs"] == inputs["epochs"]
    codes = _array(data["positions"]).astype(np.float64)
    assert codes.shape == (n_epochs, n, 2)
    assert (codes[2, 5] == 65535).all()
    xlo, xhi, ylo, yhi = data["qrange"]
    decoded = np.stack(
        [xlo + codes[..., 0] * (xhi - xlo) / 65534, ylo + codes[..., 1] * (yhi - ylo) / 65534], -1
    )
    present = np.isfinite(inputs["positions"]).all(-1)
    error = np.abs(decoded[present] - inputs["positions"][present]).max()
    assert error <= max(xhi - xlo, yhi - ylo) / 65534
    np.testing.assert_array_equal(_array(data["predictions"]), inputs["predictions"])
    np.testing.assert_array_equal(_array(data["labels"]), inputs["labels"])
    np.testing.assert_array_equal(_array(data["ids"]), inputs["ids"])
    np.testing.assert_array_equal(_array(data["splits"]), inputs["splits"])
    assert data["palette"] == inputs["palette"].tolist()
    assert data["track"] == [3, 17]
    for t, k in enumerate(data["backgroundIndex"]):
        np.testing.assert_array_equal(_png(data["backgrounds"][k]), inputs["backgrounds"][t])
    if thumbnails is None:
        assert data["thumbnails"] is None
    else:
        sheet, cell = _png(data["thumbnails"]["uri"]), data["thumbnails"]
        h, w, cols = cell["h"], cell["w"], cell["cols"]
        for k in (0, 17, n - 1):
            r, c = divmod(k, cols)
            np.testing.assert_array_equal(
                sheet[r * h : (r + 1) * h, c * w : (c + 1) * w], inputs["thumbnails"][k]
            )


def test_identical_backgrounds_are_stored_once(tmp_path):
    data = _data(
        write_viewer(tmp_path / "i.html", **_inputs(same_background=True)).read_text("utf-8")
    )
    assert len(data["backgrounds"]) == 1 and data["backgroundIndex"] == [0] * 6


def test_size_grows_as_documented(tmp_path):
    # The documented figure: 200 epochs x 10 000 samples, 10 classes.
    assert BYTES_PER_POINT_EPOCH == 5
    assert payload_bytes(200, 10_000, 10) == 13_333_336
    assert payload_bytes(200, 10_000, 1000) == 16_000_004

    def size(n_epochs, n):
        inputs = _inputs(n_epochs, n, thumbnails=None, same_background=True)
        return write_viewer(tmp_path / f"{n_epochs}_{n}.html", **inputs).stat().st_size

    base = size(10, 2000)
    # Each (epoch, sample) costs the documented bytes; little else grows with the epochs.
    for n_epochs in (20, 40):
        grown = size(n_epochs, 2000) - base
        expected = payload_bytes(n_epochs, 2000, 4) - payload_bytes(10, 2000, 4)
        assert expected <= grown <= expected * 1.01 + 2_000
    # + labels, ids, splits; two float32 measures (correctness, forgetting); the page's code
    measures = 2 * 2000 * 4 * 4 / 3
    assert base <= payload_bytes(10, 2000, 4) + 2000 * 10 + measures + _page_bytes() + 20_000


def test_subsampling_warns_and_keeps_tracked_rows(tmp_path, caplog):
    inputs = _inputs(n_epochs=3, n=500, thumbnails="grey")
    inputs["track"] = [3, 17, 499]
    with caplog.at_level(logging.WARNING, logger="timevis_cli.render.viewer"):
        text = write_viewer(tmp_path / "i.html", max_points=100, **inputs).read_text("utf-8")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "max_points=100" in warnings[0].getMessage()
    assert "500 samples" in warnings[0].getMessage()
    data = _data(text)
    rows = np.asarray(data["sourceRows"])
    assert data["n"] == 100 and len(rows) == 100 and (np.diff(rows) > 0).all()
    ids = _array(data["ids"])
    np.testing.assert_array_equal(ids, inputs["ids"][rows])
    assert [int(ids[k]) for k in data["track"]] == [1003, 1017, 1499]
    np.testing.assert_array_equal(_array(data["predictions"]), inputs["predictions"][:, rows])
    assert data["thumbnails"]["cols"] == 10  # the sprite holds the kept rows only
    # Bounded: 5x the samples beyond max_points cost no more than max_points of them.
    small = write_viewer(tmp_path / "s.html", max_points=100, **_inputs(3, 100, thumbnails=None))
    big = write_viewer(tmp_path / "b.html", max_points=100, **_inputs(3, 500, thumbnails=None))
    assert big.stat().st_size < small.stat().st_size * 1.05


def test_no_warning_within_max_points(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="timevis_cli.render.viewer"):
        data = _data(write_viewer(tmp_path / "i.html", max_points=60, **_inputs()).read_text())
    assert not caplog.records
    assert data["sourceRows"] is None and data["n"] == 60


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(backgrounds=d["backgrounds"][:-1]), "backgrounds given"),
        (lambda d: d.update(labels=d["labels"] + 10), "fall outside"),
        (lambda d: d.update(splits=d["splits"] * 2), "splits"),
        (lambda d: d.update(track=[60]), "track row"),
        (lambda d: d.update(thumbnails=d["thumbnails"].astype(np.float32)), "thumbnails"),
        (lambda d: d.update(titles=["x"]), "titles given"),
        (lambda d: d.update(positions=d["positions"][:, :, :1]), "positions"),
        (lambda d: d.update(predictions=d["predictions"][:2]), "predictions"),
        (lambda d: d.update(epochs=[1, 1, 2, 3, 4, 5]), "twice"),
        (lambda d: d.update(bounds=Bounds(0, 0, 0, 1)), "empty"),
        (lambda d: d.update(class_names=[]), "class_names"),
    ],
)
def test_bad_inputs_raise(tmp_path, change, message):
    inputs = _inputs()
    change(inputs)
    with pytest.raises(InputError, match=message):
        write_viewer(tmp_path / "i.html", **inputs)
    assert not (tmp_path / "i.html").exists()


# ---------------------------------------------------------------------------------------------
# In a real browser: chromium --headless --dump-dom / --screenshot, the page testing itself
# through its #selftest=... hook (no websocket client needed).

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no `chromium` on PATH: the browser tests need Debian's chromium "
    "(apt-get install -y --no-install-recommends chromium)",
)


def _chromium(tmp_path: Path, url: str, *extra: str) -> str:
    command = [
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000",
        "--window-size=1000,1000", *extra, url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def _selftest(tmp_path: Path, page: Path, spec: str) -> dict:
    dom = _chromium(tmp_path, f"{page.as_uri()}#selftest={spec}", "--dump-dom")
    match = re.search(r'<pre id="selftest">(.*?)</pre>', dom, re.S)
    assert match and match.group(1), f"the page wrote no self-test report: {dom[-1500:]}"
    return json.loads(html.unescape(match.group(1)))


def _browser_inputs():
    inputs = _inputs(n_epochs=6, n=60)
    inputs["labels"][17] = 1  # EVIL
    inputs["predictions"][:, 17] = 1
    inputs["predictions"][3, 17] = 2  # wrong at epoch index 3 only
    return inputs


@pytest.mark.slow
@needs_chromium
def test_browser_slider_title_and_hover(tmp_path):
    inputs = _browser_inputs()
    page = write_viewer(tmp_path / "index.html", **inputs)
    report = _selftest(tmp_path, page, "epoch:3,hover:17")
    assert report["titleBefore"] == inputs["titles"][0]
    assert report["epoch"] == 3 and report["epochNumber"] == 4
    assert report["title"] == inputs["titles"][3]  # the slider's input event changed the title
    assert report["tooltipVisible"] and report["hovered"] == 17
    tip = report["tooltip"]
    assert "id 1017" in tip and "(train)" in tip
    assert f"label: {EVIL}" in tip  # the name shown as text, not parsed as HTML
    assert f"prediction: {NAMES[2]}" in tip and "wrong" in tip  # the prediction AT epoch 3
    assert report["thumbnail"]["max"] > report["thumbnail"]["min"]  # the thumbnail was drawn
    assert report["legend"] == NAMES
    assert 0 <= report["point"]["x"] <= 720 and 0 <= report["point"]["y"] <= 720

    # A test sample: hoverable once test samples are shown; its prediction at the last epoch.
    report = _selftest(tmp_path, page, "epoch:5,hover:19,test:1")
    assert report["title"] == inputs["titles"][5] and report["hovered"] == 19
    label = NAMES[inputs["labels"][19]]
    predicted = NAMES[inputs["predictions"][5, 19]]
    assert "id 1019 (test)" in report["tooltip"]
    assert f"label: {label}" in report["tooltip"]
    assert f"prediction: {predicted}" in report["tooltip"]


@pytest.mark.slow
@needs_chromium
def test_browser_trails_are_off_until_a_sample_is_hovered_or_selected(tmp_path):
    inputs = _browser_inputs()
    inputs["track"] = None
    page = write_viewer(tmp_path / "index.html", **inputs)
    report = _selftest(tmp_path, page, "epoch:3")
    assert report["trailsAtStart"] == [] and report["trails"] == []  # none by default
    report = _selftest(tmp_path, page, "epoch:3,hover:17")
    assert report["hovered"] == 17 and report["trails"] == [17]  # the hovered sample's only
    report = _selftest(tmp_path, page, "epoch:3,click:17,hover:20")
    assert report["trailsAfterClick"] == [17]  # a click keeps it
    assert report["trails"] == [17, 20]


@pytest.mark.slow
@needs_chromium
def test_browser_tracked_trails_are_selected_and_a_click_drops_them(tmp_path):
    page = write_viewer(tmp_path / "index.html", **_browser_inputs())  # track=[3, 17]
    report = _selftest(tmp_path, page, "epoch:2")
    assert report["trailsAtStart"] == [3, 17]
    report = _selftest(tmp_path, page, "epoch:2,click:17")
    assert report["trailsAfterClick"] == [3]  # clicked again: dropped
    report = _selftest(tmp_path, page, "epoch:2,click:5")
    assert report["trailsAfterClick"] == [3, 17, 5]


@pytest.mark.slow
@needs_chromium
def test_browser_draws_a_trail_only_where_asked(tmp_path):
    # one sample walking across an empty canvas: without a selection the screenshot has no
    # trail; selected, its smoothed path shows between its first and current positions,
    # darker near the current epoch than far behind it
    n_epochs = 12
    inputs = _inputs(n_epochs=n_epochs, n=2, n_classes=2, thumbnails=None, same_background=True)
    inputs["backgrounds"] = [np.full((8, 8, 3), 255, np.uint8)] * n_epochs
    steps = np.linspace(-1.0, 1.0, n_epochs)
    zigzag = 0.05 * (-1.0) ** np.arange(n_epochs)
    inputs["positions"] = np.stack(
        [np.stack([steps, zigzag], -1), np.full((n_epochs, 2), [0.0, 0.9])], axis=1
    ).astype(np.float32)
    inputs["bounds"] = Bounds(-1.2, 1.2, -1.2, 1.2)
    inputs["labels"] = inputs["labels"][:2] * 0
    inputs["predictions"] = np.zeros((n_epochs, 2), np.int64)
    shots = {}
    for name, track in (("plain", None), ("selected", [0])):
        page = write_viewer(tmp_path / f"{name}.html", **{**inputs, "track": track})
        shots[name] = tmp_path / f"{name}.png"
        _chromium(tmp_path, f"{page.as_uri()}#selftest=epoch:{n_epochs - 1}", f"--screenshot={shots[name]}")
    plain, selected = (np.asarray(Image.open(shots[k]).convert("L")).astype(int) for k in shots)
    # where the canvas is: from the current position of sample 0 at (1, zigzag[-1])
    where = _selftest(tmp_path, tmp_path / "selected.html", f"epoch:{n_epochs - 1},hover:0")["point"]
    left, top = where["clientX"] - where["x"], where["clientY"] - where["y"]
    scale = 720 / 2.4  # CSS pixels per unit: the 2.4-wide bounds fill the 720-pixel canvas
    row = round(top + 1.2 * scale)  # y = 0, where the smoothed walk runs
    first, last = round(left + 0.2 * scale), round(left + 2.2 * scale)  # x = -1 and x = 1
    band, inside = slice(row - 6, row + 7), slice(first + 30, last - 40)
    assert plain[band, inside].min() > 200, "a trail was drawn without a selection"
    darkness = 255 - selected[band, inside].min(axis=0)
    assert darkness.min() > 10, "the selected sample's trail has gaps"
    third = len(darkness) // 3
    assert darkness[-third:].mean() > darkness[:third].mean() + 20, "the trail does not fade"


@pytest.mark.slow
@needs_chromium
def test_browser_play_advances_to_the_last_epoch(tmp_path):
    inputs = _browser_inputs()
    page = write_viewer(tmp_path / "index.html", **inputs)
    report = _selftest(tmp_path, page, "epoch:1,play:2000")  # 10 epochs/s by default
    assert report["playing"] == {"epoch": 1, "button": "pause"}
    assert report["played"] == {"epoch": 5, "button": "play"}  # stopped at the end


@pytest.mark.slow
@needs_chromium
def test_browser_screenshot_is_drawn(tmp_path):
    inputs = _browser_inputs()
    page = write_viewer(tmp_path / "index.html", **inputs)
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"{page.as_uri()}#selftest=epoch:2,hover:17", f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int64)
    assert pixels.shape[:2] == (1000, 1000)
    assert pixels.std() > 20  # not blank
    # The landscape is drawn: a good share of the pixels carry the background's class colours.
    colours = inputs["palette"].astype(np.int64)
    near = (np.abs(pixels[:, :, None, :] - colours[None, None]).sum(-1) < 30).any(-1)
    assert near.mean() > 0.1


# ---------------------------------------------------------------------------------------------
# The analysis data: per-epoch camera bounds, agreements, per-sample measures, neighbours.


def test_follow_bounds_agreements_and_measures_reach_the_page(tmp_path):
    inputs = _inputs()
    boxes = [Bounds(-3 + t, 3 + t, -2, 2 + 0.5 * t) for t in range(6)]
    inputs["positions"][5, 0] = [9.0, 9.0]  # beyond every box: the quantisation still holds it
    region = np.array(["easy", "ambiguous", "hard"])[np.arange(60) % 3]
    data = _data(
        write_viewer(
            tmp_path / "i.html",
            **inputs,
            epoch_bounds=boxes,
            agreements=[0.95, float("nan"), None, 0.5, 1.0, 0.91],
            measures={"confidence": np.linspace(0, 1, 60), "region": region},
        ).read_text("utf-8")
    )
    assert data["epochBounds"] == [[b.xmin, b.xmax, b.ymin, b.ymax] for b in boxes]
    assert data["fixedCamera"] is False
    xlo, xhi, ylo, yhi = data["qrange"]
    assert xlo <= -3 and xhi >= 9 and ylo <= -2 and yhi >= 9  # every box and every point
    assert data["agreements"] == [0.95, None, None, 0.5, 1.0, 0.91]
    assert data["agreementWarn"] == 0.9
    fields = {name: _array(typed) for name, typed in data["fields"].items()}
    np.testing.assert_allclose(fields["confidence"], np.linspace(0, 1, 60), atol=1e-7)
    assert data["regions"] == ["easy", "ambiguous", "hard"]
    np.testing.assert_array_equal(fields["region"], np.arange(60) % 3)
    # correctness and forgetting come from the page's own predictions when not given
    correct = inputs["predictions"] == inputs["labels"][None]
    np.testing.assert_allclose(fields["correctness"], correct.mean(0), atol=1e-7)
    np.testing.assert_array_equal(fields["forgetting"], (correct[:-1] & ~correct[1:]).sum(0))
    # without epoch_bounds: one fixed camera on `bounds`
    fixed = _data(write_viewer(tmp_path / "f.html", **_inputs()).read_text("utf-8"))
    assert fixed["fixedCamera"] is True and len(fixed["epochBounds"]) == 6
    assert fixed["agreements"] is None and fixed["neighbors"] is None


def test_neighbours_and_faithfulness_survive_subsampling(tmp_path):
    inputs = _inputs(n_epochs=3, n=500, thumbnails=None)
    rows = np.arange(500)
    neighbors = np.stack([np.stack([(rows + 1) % 500, (rows + 2) % 500], 1)] * 3)
    faith = np.tile(np.linspace(0, 1, 500), (3, 1))
    faith[1, 7] = np.nan
    inputs["track"] = [7]
    data = _data(
        write_viewer(
            tmp_path / "i.html", **inputs, max_points=100, neighbors=neighbors, faithfulness=faith
        ).read_text("utf-8")
    )
    kept = np.asarray(data["sourceRows"])
    stored = _array(data["neighbors"]["rows"]).astype(np.int64)
    assert data["neighbors"]["k"] == 2 and stored.shape == (3, 100, 2)
    position = {int(old): k for k, old in enumerate(kept)}
    for new, old in enumerate(kept):
        for j, target in enumerate(neighbors[0, old]):  # kept neighbours renumbered, else none
            assert stored[0, new, j] == position.get(int(target), 65535)
    codes = _array(data["faithfulness"])
    assert codes.dtype == np.uint8 and codes.shape == (3, 100)
    np.testing.assert_allclose(codes[0] / 250, faith[0, kept], atol=0.5 / 250)
    assert codes[1, position[7]] == 255  # unknown


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"epoch_bounds": [Bounds(0, 1, 0, 1)] * 5}, "epoch_bounds given"),
        ({"epoch_bounds": [Bounds(0, 1, 0, 1)] * 5 + [Bounds(1, 1, 0, 1)]}, "empty"),
        ({"agreements": [0.9]}, "agreements given"),
        ({"measures": {"confidance": np.zeros(60)}}, "not known"),
        ({"measures": {"confidence": np.zeros(59)}}, "confidence"),
        ({"measures": {"region": np.array(["easy", "odd"] * 30)}}, "odd"),
        ({"neighbors": np.zeros((6, 60), np.int64)}, "neighbors of shape"),
        ({"neighbors": np.full((6, 60, 2), 60)}, "row indices"),
        ({"faithfulness": np.full((6, 60), 1.5)}, r"\[0, 1\]"),
    ],
)
def test_bad_analysis_inputs_raise(tmp_path, extra, message):
    with pytest.raises(InputError, match=message):
        write_viewer(tmp_path / "i.html", **_inputs(), **extra)
    assert not (tmp_path / "i.html").exists()


def test_neighbor_preservation_is_exact():
    from timevis_cli.fit.neighbors import resolve_backend
    from timevis_cli.render.page import neighbor_preservation

    # features on a line; the 2-D layout keeps the order but swaps the two last samples
    features = np.array([[0.0], [1.0], [2.1], [3.3], [4.6], [6.0]]) @ np.ones((1, 4))
    points = np.array([[0, 0], [1, 0], [2.1, 0], [3.3, 0], [6.0, 0], [4.6, 0]], dtype=float)
    points[2] = np.nan  # absent at this epoch: in neither search
    high, kept = neighbor_preservation(features, points, 2, resolve_backend("torch"))
    assert high.shape == (6, 2) and (high[2] == -1).all() and np.isnan(kept[2])
    assert high[0].tolist() == [1, 3] and high[5].tolist() == [4, 3]
    # feature space (without row 2): 0 -> {1, 3}, 1 -> {0, 3}, 3 -> {4, 1}, 4 -> {3, 5}, 5 -> {4, 3}
    # 2-D, rows 4 and 5 swapped:      0 -> {1, 3}, 1 -> {0, 3}, 3 -> {5, 1}, 4 -> {5, 3}, 5 -> {3, 4}
    np.testing.assert_allclose(kept[[0, 1, 3, 4, 5]], [1.0, 1.0, 0.5, 1.0, 1.0])


def test_a_missing_or_unsafe_page_file_is_one_clear_error(tmp_path, monkeypatch):
    from timevis_cli.render import viewer

    monkeypatch.setattr(viewer, "_ASSETS", "no_such_folder")
    with pytest.raises(viewer.ViewerAssetError, match="no_such_folder/viewer.html.*reinstall"):
        write_viewer(tmp_path / "i.html", **_inputs())
    assert not (tmp_path / "i.html").exists()
    monkeypatch.undo()
    real = viewer._asset
    monkeypatch.setattr(
        viewer, "_asset", lambda name: real(name) + ("</script>" if name == "viewer.js" else "")
    )
    with pytest.raises(viewer.ViewerAssetError, match="viewer.js holds a closing tag"):
        write_viewer(tmp_path / "i.html", **_inputs())
    assert not (tmp_path / "i.html").exists()
