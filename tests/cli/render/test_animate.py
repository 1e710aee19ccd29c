"""The GIF's palette (timevis_cli.render.animate): every class colour a frame shows keeps its own
exact colour in the GIF, on the frames of a real fit and on frames made to tempt a median cut
into merging two classes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageSequence
from stores import drifting_clusters

from timevis_cli.cli import main
from timevis_cli.errors import InputError
from timevis_cli.render.animate import MAX_CLASS_ENTRIES, gif_palette, quantise_frame, write_gif
from timevis_cli.render.landscape import palette

CLASSES = 10
FIT = ["training.max_epochs=2", "reduction.init_size=100", "refine.epochs=20"]
EPOCHS = 3


def _colours(image: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in np.unique(image.reshape(-1, 3), axis=0)}


def _gif_frames(path) -> list[np.ndarray]:
    with Image.open(path) as gif:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A 10-class store fitted and rendered by the CLI: its render/ folder."""
    store = drifting_clusters(
        tmp_path_factory.mktemp("gif") / "store", n_train=200, n_test=40, classes=CLASSES, epochs=EPOCHS
    )
    runner = CliRunner()
    result = runner.invoke(main, ["fit", str(store), *sum((["--set", o] for o in FIT), [])])
    assert result.exit_code == 0, result.output
    render = ["render", str(store), "--jobs", "1", "--split", "both", "--resolution", "120"]
    result = runner.invoke(main, render)  # 800-pixel frames, scaled to 600 in the GIF
    assert result.exit_code == 0, result.output
    return store / "render"


def test_every_class_colour_of_a_frame_survives_exactly_in_the_gif(rendered):
    pngs = sorted(rendered.glob("epoch_*.png"))
    gif = _gif_frames(rendered / "training.gif")
    assert len(gif) == len(pngs) == EPOCHS
    classes = {tuple(int(v) for v in c) for c in palette(CLASSES)}
    for png, frame in zip(pngs, gif, strict=True):
        with Image.open(png) as image:
            shown = _colours(np.asarray(image.convert("RGB"))) & classes
        assert len(shown) == CLASSES, f"{png.name} shows {len(shown)} class colours"
        missing = shown - _colours(frame)
        assert not missing, f"{png.name}: class colours {sorted(missing)} lost in the GIF"
        # and each is drawn in more than a stray pixel: the scaled-down markers keep it
        pixels = frame.reshape(-1, 3)
        counts = [int((pixels == c).all(axis=1).sum()) for c in palette(CLASSES)]
        assert min(counts) >= 20, counts


def test_the_gif_stays_small(rendered):
    gif = (rendered / "training.gif").stat().st_size
    pngs = sum(p.stat().st_size for p in rendered.glob("epoch_*.png"))
    assert gif < 0.4 * pngs, (gif, pngs)


def _tempting_frames(n_frames: int = 3) -> list[np.ndarray]:
    """Frames of a smooth two-tone gradient (thousands of colours, most of the pixels) with small
    squares of every tab10 class colour: a median cut spends its entries on the gradient and
    merges the squares' colours (classes 0 and 9, blue and cyan, first)."""
    size = 240
    ramp = np.linspace(0.0, 1.0, size)
    frames = []
    for t in range(n_frames):
        mix = np.clip(ramp[:, None] * 0.6 + ramp[None, :] * 0.4 + 0.05 * t, 0, 1)[..., None]
        frame = (mix * [250, 200, 120] + (1 - mix) * [120, 60, 170]).round().astype(np.uint8)
        for c, colour in enumerate(palette(CLASSES)):
            frame[10 + 20 * c : 14 + 20 * c, 10 + 10 * t : 14 + 10 * t] = colour
        frames.append(frame)
    return frames


def test_class_colours_keep_their_entries_against_a_busy_background(tmp_path):
    frames = _tempting_frames()
    paths = []
    for t, frame in enumerate(frames):
        paths.append(tmp_path / f"f{t}.png")
        Image.fromarray(frame).save(paths[-1])
    write_gif(paths, tmp_path / "out.gif", max_side=None)
    classes = {tuple(int(v) for v in c) for c in palette(CLASSES)}
    for frame, gif in zip(frames, _gif_frames(tmp_path / "out.gif"), strict=True):
        assert classes <= _colours(gif)
        inside = slice(10, 14), slice(10, 14)  # class 0's square in the first frame's place
        if frame is frames[0]:
            assert (gif[inside] == palette(1)[0]).all()
        # the background is still drawn in many colours, close to the frame
        assert len(_colours(gif)) > 100
        assert np.abs(gif.astype(int) - frame.astype(int)).mean() < 3


def test_palette_puts_the_class_colours_first_and_snaps_near_pixels_to_them():
    frames = _tempting_frames(1)
    near = frames[0].copy()
    near[200:204, 200:204] = palette(1)[0].astype(int) + [3, -4, 2]  # a blended marker edge
    colours, n_class = gif_palette([near], palette(20))
    assert n_class == CLASSES  # the light tab20 colours are not shown: no entries for them
    np.testing.assert_array_equal(colours[:CLASSES], palette(CLASSES))
    assert len(colours) <= 256 and len(np.unique(colours, axis=0)) == len(colours)
    indexed = np.asarray(quantise_frame(near, colours, n_class))
    assert (indexed[200:204, 200:204] == 0).all()  # drawn in class 0's colour itself
    assert (indexed[10:14, 10:14] == 0).all()


def test_more_class_colours_than_the_palette_keeps_are_said(tmp_path, caplog):
    many = palette(MAX_CLASS_ENTRIES + 20)
    frame = np.repeat(many[None], 4, axis=0)  # every colour, 4 pixels each
    with caplog.at_level(logging.WARNING, logger="timevis_cli.render.animate"):
        colours, n_class = gif_palette([frame], many)
    assert n_class == MAX_CLASS_ENTRIES and len(colours) <= 256
    assert any("keeps the first" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("class_colours", "message"),
    [
        (np.zeros((3, 4), np.uint8), r"class_colours of shape \(3, 4\)"),
        (np.full((2, 3), 300), "0..255"),
        (np.zeros((2, 3), np.float32), "integer RGB"),
    ],
)
def test_bad_class_colours_are_one_line_errors(tmp_path, class_colours, message):
    path = tmp_path / "f.png"
    Image.fromarray(_tempting_frames(1)[0]).save(path)
    with pytest.raises(InputError, match=message):
        write_gif([path], tmp_path / "out.gif", class_colours=class_colours)
    assert not (tmp_path / "out.gif").exists()
