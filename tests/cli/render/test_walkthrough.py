"""A user's walk through a real run in the browser: find the mislabelled samples.

The quick digits run with 5% of its training labels flipped (recorded once per session by
``scripts/demo_train.py``), fitted and rendered by the CLI; then, in headless Chromium, as a user
would: brush the data map's hard-to-learn corner, see those samples selected in the landscape,
step through the epochs with the keyboard (the selection follows them, with trails), and export
the selection's ids. The exported ids are then compared with the flipped ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_viewer_browser import _drag, _open, browser, pytestmark  # noqa: F401

from timevis_callback.reader import open_run
from timevis_cli.cli import main


@pytest.mark.slow
def test_find_the_flipped_labels_from_the_data_map_and_export_them(browser, flipped_digits):  # noqa: F811
    store = flipped_digits / "store"
    flipped = set(json.loads((flipped_digits / "flipped.json").read_text())["ids"])
    fit = ["fit", str(store), "--set", "training.max_epochs=1", "--set", "refine.epochs=20",
           "--set", "refine.decoder_steps=50"]  # fmt: skip
    done = CliRunner().invoke(main, fit)
    assert done.exit_code == 0, done.output
    render = ["render", str(store), "--html", "--no-gif", "--resolution", "48", "--jobs", "1"]
    done = CliRunner().invoke(main, render)
    assert done.exit_code == 0, done.output

    page = _open(browser, store / "render" / "index.html")
    # brush the data map's bottom-left corner: confidence and variability both up to 0.4
    a = page.evaluate("timevis.datamapToClient(0, 0.4)")
    b = page.evaluate("timevis.datamapToClient(0.4, 0)")
    _drag(page, [(a["clientX"], a["clientY"]), (b["clientX"], b["clientY"])])
    rows = page.evaluate("timevis.selection()")
    assert rows, "the brush selected nothing"

    # the rows are the page's train samples, in the store's order
    run = open_run(store)
    train_ids = run.samples.id[run.samples.mask("train")]
    chosen = {int(train_ids[r]) for r in rows}
    recall = len(chosen & flipped) / len(flipped)
    precision = len(chosen & flipped) / len(chosen)
    assert recall >= 0.8 and precision >= 0.9, (recall, precision, len(chosen))

    # the selection follows its samples through the epochs, drawn with trails
    epochs = page.evaluate("timevis.epochs")
    positions = []
    for _ in epochs[1:]:
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"timevis.time() === {len(positions) + 1}")
        assert page.evaluate("timevis.selection()") == rows
        assert set(page.evaluate("timevis.trailRows()")) <= set(rows)
        positions.append(page.evaluate(f"timevis.pointAt({rows[0]})"))
    assert page.evaluate("timevis.epochNumber()") == epochs[-1]
    assert len({json.dumps(p) for p in positions}) > 1  # it travels

    with page.expect_download() as info:
        page.click("#export-json")
    exported = json.loads(Path(info.value.path()).read_text())
    assert {record["id"] for record in exported} == chosen
    assert {record["split"] for record in exported} == {"train"}
    train = run.samples.mask("train")  # ids are per split: a test sample may share one
    labels = {int(i): int(label) for i, label in zip(run.samples.id[train], run.samples.label[train], strict=True)}
    names = run.class_names
    assert all(record["label"] == names[labels[record["id"]]] for record in exported)
    assert not page.errors, page.errors
    page.close()
