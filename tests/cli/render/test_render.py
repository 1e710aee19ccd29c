"""Tests of timevis_cli.render.frames (frames, the process pool) and timevis_cli.render.animate (GIF, MP4)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from timevis_cli.config import load_config
from timevis_cli.errors import InputError
from timevis_cli.render.animate import MissingVideoDependencyError, write_gif, write_mp4
from timevis_cli.render.frames import EpochFrame, FrameRenderer, render_epochs, title_text
from timevis_cli.render.landscape import Bounds, canvas_bounds, palette, shared_canvas_bounds
from timevis_cli.render.playback import plan_render

NAMES = ["zero", "one", "two"]
WHITE = np.full((4, 4, 3), 255, dtype=np.uint8)
UNIT = Bounds(-1.0, 1.0, -1.0, 1.0)


def _frame(epoch: int = 1, seed: int = 0, n: int = 200, with_test: bool = False) -> EpochFrame:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    preds = np.where(rng.random(n) < 0.2, (labels + 1) % 3, labels)
    background = palette(3)[rng.integers(0, 3, size=(10, 10))]
    test = {}
    if with_test:
        test = {
            "test_points": rng.uniform(-1, 1, size=(50, 2)),
            "test_labels": labels[:50],
            "test_preds": preds[:50],
        }
    return EpochFrame(
        epoch=epoch,
        background=background,
        bounds=UNIT,
        train_points=rng.uniform(-1, 1, size=(n, 2)),
        train_labels=labels,
        train_preds=preds,
        metrics={"val_acc": 0.9312, "val_loss": 0.2101},
        **test,
    )


class SyntheticFrames:
    """A picklable frame builder: frames depend on the epoch only."""

    def __init__(self, n: int = 300):
        self.n = n

    def __call__(self, epoch: int) -> EpochFrame:
        return _frame(epoch=epoch, seed=epoch, n=self.n)


class FramesFromInputs:
    """A picklable frame builder whose frames depend on the per-epoch input only."""

    def __call__(self, epoch: int, seed: int) -> EpochFrame:
        return _frame(epoch=epoch, seed=seed, n=150)


@pytest.fixture(scope="module")
def renderer() -> FrameRenderer:
    return FrameRenderer(NAMES, show_test=True)


def _pixel(renderer: FrameRenderer, x: float, y: float) -> tuple[int, int]:
    """Image (row, column) of the data point (x, y)."""
    px, py = renderer.axes.transData.transform((x, y))
    return int(round(renderer.size_px[1] - py)), int(round(px))


# --- frames ----------------------------------------------------------------------------------


def test_title_text():
    assert title_text(12, {"val_acc": 0.93, "val_loss": 0.2134}) == (
        "epoch 12 · val_acc 0.93 · val_loss 0.213"
    )
    assert title_text(3) == "epoch 3"
    assert _frame(epoch=7).title.startswith("epoch 7 · val_acc 0.931")


@pytest.mark.parametrize("size", [320, 480])
def test_a_long_title_fits_the_frame_width(size):
    frame = dataclasses.replace(
        _frame(epoch=123),
        metrics={"val_acc": 0.9312, "val_loss": 0.2101, "train_loss": 0.123456},
    )
    small = FrameRenderer(NAMES, size_px=(size, size), show_test=True)
    small.render(frame)
    title = small._title
    assert title.get_text().replace("\n", " · ") == frame.title  # nothing dropped
    extent = title.get_window_extent(small._canvas.get_renderer())
    assert 0 <= extent.x0 and extent.x1 <= size, (extent, title.get_fontsize())
    assert 0 <= extent.y0 and extent.y1 <= size, (extent, title.get_fontsize())
    assert title.get_fontsize() >= 9  # still legible
    default = FrameRenderer(NAMES, size_px=(800, 800))
    default.render(frame)
    assert default._title.get_fontsize() == 14 and "\n" not in default._title.get_text()


def test_a_frame_too_small_for_its_legend_says_which_size_fits():
    names = [f"class {c}" for c in range(10)]
    with pytest.raises(InputError, match=r"size_px=\(200, 200\) leaves .* render\.size_px=") as info:
        FrameRenderer(names, size_px=(200, 200), show_test=True)
    larger = int(str(info.value).rsplit("=", 1)[1].rstrip(")"))
    FrameRenderer(names, size_px=(larger, larger), show_test=True).render(_frame())


def test_epoch_frame_validates_its_arrays():
    good = _frame()
    with pytest.raises(InputError, match="background"):
        EpochFrame(
            1, good.background[..., 0], UNIT, good.train_points, good.train_labels, good.train_preds
        )
    with pytest.raises(InputError, match=r"must be \(n, 2\)"):
        EpochFrame(
            1, good.background, UNIT, good.train_points[:, :1], good.train_labels, good.train_preds
        )
    with pytest.raises(InputError, match="labels"):
        EpochFrame(
            1, good.background, UNIT, good.train_points, good.train_labels[:5], good.train_preds
        )
    with pytest.raises(InputError, match="together"):
        EpochFrame(1, good.background, UNIT, good.train_points, good.train_labels, good.train_preds,
                   test_points=good.train_points)  # fmt: skip


def test_renderer_image_and_png_have_the_requested_size(renderer, tmp_path):
    image = renderer.render(_frame(with_test=True))
    assert image.shape == (800, 800, 3) and image.dtype == np.uint8
    path = renderer.save_png(_frame(), tmp_path / "frame.png")
    with Image.open(path) as png:
        assert png.size == (800, 800) and png.mode == "RGB"
    small = FrameRenderer(NAMES, size_px=(640, 480))
    assert small.render(_frame()).shape == (480, 640, 3)


def test_points_are_coloured_and_misclassified_drawn_as_ring_around_dot(renderer):
    colours = palette(3)
    frame = EpochFrame(
        epoch=0,
        background=WHITE,
        bounds=UNIT,
        train_points=np.array([[0.0, 0.0], [-0.5, 0.5]]),
        train_labels=np.array([0, 2]),
        train_preds=np.array([1, 2]),  # the first is misclassified
    )
    big = FrameRenderer(NAMES, point_size=400.0)
    image = big.render(frame).astype(int)
    row, col = _pixel(big, 0.0, 0.0)
    assert np.abs(image[row, col] - colours[1]).max() <= 3  # the dot: predicted colour
    ring_radius = np.sqrt(400.0 * 3.2) / 2 * big.figure.dpi / 72  # marker edge, in pixels
    ring = image[row, col + int(ring_radius) - 3 : col + int(ring_radius) + 4]
    assert (np.abs(ring - colours[0]).max(axis=1) <= 10).any(), ring  # the ring: label colour
    between = image[row, col + int(ring_radius * 0.75)]
    assert (between == 255).all()  # white background between dot and ring
    row, col = _pixel(big, -0.5, 0.5)
    assert np.abs(image[row, col] - colours[2]).max() <= 3  # a correct point: label colour
    ring_artist, dot_artist = big._train.ring.lines[0], big._train.dot.lines[1]
    np.testing.assert_allclose(ring_artist.get_markeredgecolor()[:3], colours[0] / 255)
    assert ring_artist.get_markerfacecolor() == "none"
    np.testing.assert_allclose(dot_artist.get_markerfacecolor()[:3], colours[1] / 255)
    assert set(big._train.ring.lines) == {0} and set(big._train.dot.lines) == {1}


def test_reusing_the_renderer_updates_in_place_without_leaking_figures(renderer):
    figures = plt.get_fignums()
    first = renderer.render(_frame(seed=1, with_test=True))
    second = renderer.render(_frame(seed=2))
    assert (first != second).any()
    np.testing.assert_array_equal(renderer.render(_frame(seed=1, with_test=True)), first)
    fresh = FrameRenderer(NAMES, show_test=True)
    np.testing.assert_array_equal(fresh.render(_frame(seed=2)), second)  # nothing stale
    assert plt.get_fignums() == figures
    assert len(renderer.figure.axes) == 1 and not renderer.axes.collections
    lines = len(renderer.axes.lines)  # marker artists: per split, role and class, reused
    renderer.render(_frame(seed=4, with_test=True))
    assert len(renderer.axes.lines) == lines <= 2 * 3 * len(NAMES)


def test_canvas_shape_change_redraws_the_static_part(renderer):
    wide = Bounds(-2.0, 2.0, -1.0, 1.0)
    frame = _frame(seed=3)
    frame_wide = dataclasses.replace(frame, bounds=wide)
    renderer.render(frame)
    reused = renderer.render(frame_wide)
    np.testing.assert_array_equal(FrameRenderer(NAMES, show_test=True).render(frame_wide), reused)


# --- canvas bounds shared by the frames -------------------------------------------------------


def _drifting_epochs(n_epochs: int = 8, n: int = 300) -> dict[int, np.ndarray]:
    """Epochs of a spread-out map that drifts and grows a little from one epoch to the next."""
    rng = np.random.default_rng(5)
    return {
        t: rng.normal(size=(n, 2)) * (2.0 + 0.1 * t) + np.array([0.3 * t, -0.2 * t])
        for t in range(n_epochs)
    }


def test_global_bounds_leave_out_an_epoch_far_from_the_others(caplog):
    epochs = _drifting_epochs()
    rng = np.random.default_rng(6)
    epochs[0] = rng.normal(size=(300, 2)) * 0.3 + np.array([-30.0, 4.0])  # the untrained blob
    with caplog.at_level(logging.INFO, logger="timevis_cli.render.landscape"):
        bounds, apart = shared_canvas_bounds(epochs)
    assert apart == [0]
    assert "0" in caplog.text and "own canvas" in caplog.text
    others = [points for t, points in epochs.items() if t != 0]
    assert bounds == canvas_bounds(others)  # covers the others, all of their points
    assert bounds.xmin > -10.0  # not stretched out to the blob
    for points in others:
        assert (points[:, 0] > bounds.xmin).all() and (points[:, 0] < bounds.xmax).all()
        assert (points[:, 1] > bounds.ymin).all() and (points[:, 1] < bounds.ymax).all()
    huge = {**epochs, 9: rng.normal(size=(300, 2)) * 80.0}  # an exploded epoch
    assert shared_canvas_bounds(huge)[1] == [0, 9]


def test_global_bounds_of_an_ordinary_run_cover_every_point():
    epochs = _drifting_epochs()
    epochs[3] = np.concatenate([epochs[3], [[25.0, -20.0]]])  # one stray point is not an epoch
    bounds, apart = shared_canvas_bounds(epochs)
    assert apart == []
    assert bounds == canvas_bounds(list(epochs.values()))
    everything = np.concatenate(list(epochs.values()))
    assert (everything[:, 0] > bounds.xmin).all() and (everything[:, 0] < bounds.xmax).all()
    assert (everything[:, 1] > bounds.ymin).all() and (everything[:, 1] < bounds.ymax).all()
    # too few epochs to tell a bulk from an outlier: nothing is left out
    far = {0: epochs[1] + 100.0, 1: epochs[1]}
    assert shared_canvas_bounds(far) == (canvas_bounds(list(far.values())), [])


def test_plan_render_draws_an_epoch_apart_on_its_own_canvas(tmp_path):
    epochs = _drifting_epochs(n_epochs=6, n=40)
    epochs[0] = np.full((40, 2), [-30.0, 4.0]) + np.random.default_rng(1).normal(size=(40, 2)) * 0.1
    split = np.array(["train"] * 40)
    run = SimpleNamespace(
        path=tmp_path, class_names=NAMES, samples=SimpleNamespace(mask=lambda s: split == s)
    )
    fit = SimpleNamespace(epochs=list(epochs), embedding=lambda t: {"train": epochs[t]})
    plan = plan_render(run, fit, load_config(overrides=["render.bounds=global"]).render)
    assert plan.global_bounds and plan.epochs_apart == [0]
    shared = canvas_bounds([epochs[t] for t in range(1, 6)])
    assert all(plan.bounds[t] == shared for t in range(1, 6))
    assert plan.bounds[0] == canvas_bounds(epochs[0])  # its points are on its own canvas
    per_epoch = plan_render(run, fit, load_config(overrides=["render.bounds=per-epoch"]).render)
    assert per_epoch.epochs_apart == [] and per_epoch.bounds[3] == canvas_bounds(epochs[3])


def _fake_run_and_fit(tmp_path, positions, boundary=None):
    n = len(next(iter(positions.values())))
    split = np.array(["train"] * n)
    run = SimpleNamespace(
        path=tmp_path, class_names=NAMES, samples=SimpleNamespace(mask=lambda s: split == s)
    )
    boundary = boundary or {}

    def embedding(t):
        return {"train": positions[t], "boundary": boundary.get(t, np.zeros((0, 2)))}

    return run, SimpleNamespace(epochs=list(positions), embedding=embedding)


def _fill(points: np.ndarray, bounds: Bounds) -> np.ndarray:
    """The points' 5-95% extent over the frame's extent, on x and y."""
    low, high = np.quantile(points, [0.05, 0.95], axis=0)
    return (high - low) / np.array([bounds.xmax - bounds.xmin, bounds.ymax - bounds.ymin])


def _centre(bounds: Bounds) -> np.ndarray:
    return np.array([(bounds.xmin + bounds.xmax) / 2, (bounds.ymin + bounds.ymax) / 2])


def test_frames_follow_a_drifting_cloud_by_default_and_the_data_fills_them(tmp_path):
    # each epoch's cloud ~9 units wide, its centre moving ~90 units over the epochs
    rng = np.random.default_rng(3)
    positions = {t: rng.normal(size=(400, 2)) * 2.0 + [8.0 * t, 3.0 * t] for t in range(12)}
    boundary = {t: rng.normal(size=(30, 2)) * 1.5 + [8.0 * t, 3.0 * t] for t in range(12)}
    run, fit = _fake_run_and_fit(tmp_path, positions, boundary)
    plan = plan_render(run, fit, load_config().render)
    assert load_config().render.bounds == "follow" and not plan.global_bounds
    fills = np.array([_fill(positions[t], plan.bounds[t]) for t in plan.epochs])
    assert fills.min() >= 0.6, fills
    for t in plan.epochs:  # the frame is square and holds the epoch's 5-95% box
        b = plan.bounds[t]
        assert b.xmax - b.xmin == pytest.approx(b.ymax - b.ymin)
        low, high = np.quantile(positions[t], [0.05, 0.95], axis=0)
        assert b.xmin <= low[0] and high[0] <= b.xmax and b.ymin <= low[1] and high[1] <= b.ymax
    shared = plan_render(run, fit, load_config(overrides=["render.bounds=global"]).render)
    global_fills = np.array([_fill(positions[t], shared.bounds[t]) for t in plan.epochs])
    assert global_fills.max() < 0.15, global_fills


def test_followed_frames_change_smoothly_where_raw_bounds_jump(tmp_path):
    rng = np.random.default_rng(3)
    positions = {}
    for t in range(12):  # spread jumping by +-15 % and centre by ~a spread, drifting slowly
        scale = 2.0 * (1 + 0.15 * rng.choice([-1, 1]))
        positions[t] = rng.normal(size=(400, 2)) * scale + rng.normal(size=2) + [2.0 * t, 0.0]
    run, fit = _fake_run_and_fit(tmp_path, positions)

    def steps(bounds: dict[int, Bounds]) -> tuple[float, float]:
        """Largest |log side ratio| and centre move (less the drift) / side between frames."""
        sides = np.array([bounds[t].xmax - bounds[t].xmin for t in range(12)])
        moves = np.diff([_centre(bounds[t]) for t in range(12)], axis=0) - [2.0, 0.0]
        return (
            float(np.abs(np.diff(np.log(sides))).max()),
            float((np.linalg.norm(moves, axis=1) / sides[:-1]).max()),
        )

    follow = plan_render(run, fit, load_config().render).bounds
    raw = plan_render(run, fit, load_config(overrides=["render.bounds=per-epoch"]).render).bounds
    raw_side, raw_move = steps(raw)
    side, move = steps(follow)
    assert raw_side > 0.3 and raw_move > 0.2, (raw_side, raw_move)  # the raw frames jump
    assert side < 0.25 and move < 0.1, (side, move)  # sides within 28 %, centres 10 % a frame
    assert side < 0.6 * raw_side and move < 0.4 * raw_move
    assert min(_fill(positions[t], follow[t]).min() for t in range(12)) >= 0.6


@pytest.mark.parametrize("only", ["train", "test"])
def test_plan_render_refuses_a_split_the_store_has_no_samples_of(tmp_path, caplog, only):
    epochs = _drifting_epochs(n_epochs=3, n=40)
    split = np.array([only] * 40)
    run = SimpleNamespace(
        path=tmp_path, class_names=NAMES, samples=SimpleNamespace(mask=lambda s: split == s)
    )
    fit = SimpleNamespace(
        epochs=list(epochs),
        embedding=lambda t: {"train": epochs[t] if only == "train" else np.zeros((0, 2))},
    )
    other = "test" if only == "train" else "train"
    settings = load_config(overrides=[f"render.split={other}"]).render
    with pytest.raises(InputError) as info:
        plan_render(run, fit, settings)
    assert str(info.value) == (
        f'render.split = "{other}", but {tmp_path} tracks no {other} samples (40 {only}); '
        f"use --split {only}"
    )
    if only == "train":
        with caplog.at_level(logging.WARNING, logger="timevis_cli.render.playback"):
            both = plan_render(run, fit, load_config(overrides=["render.split=both"]).render)
        assert len(both.train_rows) == 40 and len(both.test_rows) == 0
        assert "tracks no test samples" in caplog.text


def test_the_agreement_is_drawn_in_the_corner_only(renderer):
    frame = _frame(epoch=4)
    plain = renderer.render(frame)
    good = renderer.render(dataclasses.replace(frame, agreement=0.97))
    bad = renderer.render(dataclasses.replace(frame, agreement=0.71))
    assert renderer.render(frame).tobytes() == plain.tobytes()  # hidden again when None
    for shown in (good, bad):
        rows, cols = np.nonzero((shown != plain).any(axis=2))
        assert len(rows) > 50
        # only in the canvas's top-left corner (a small box, well inside its top-left quarter)
        top, left = _pixel(renderer, -1.0, 1.0)
        assert rows.min() >= top and cols.min() >= left
        assert rows.max() < top + 0.1 * renderer.size_px[1]
        assert cols.max() < left + 0.3 * renderer.size_px[0]
    box = (slice(top, top + 40), slice(left, left + 200))
    reds = lambda image: int(  # noqa: E731
        ((image[box][..., 0] > 150) & (image[box][..., 1] < 80) & (image[box][..., 2] < 80)).sum()
    )
    assert reds(bad) > 20 and reds(good) == 0  # below 0.9 in red
    with pytest.raises(InputError, match="agreement"):
        dataclasses.replace(frame, agreement=1.5)


def test_renderer_rejects_unknown_classes(renderer):
    frame = _frame()
    bad = dataclasses.replace(frame, train_preds=frame.train_preds + 5)
    with pytest.raises(InputError, match="outside"):
        renderer.render(bad)
    with pytest.raises(InputError, match="palette"):
        FrameRenderer(NAMES, palette=palette(2))


def test_render_epochs_in_a_pool_writes_frames_in_epoch_order(tmp_path):
    epochs = [5, 1, 3]
    options = {"class_names": NAMES, "size_px": (320, 320)}
    pooled = render_epochs(SyntheticFrames(), epochs, tmp_path / "pool", options, jobs=2)
    assert [p.name for p in pooled] == ["epoch_0005.png", "epoch_0001.png", "epoch_0003.png"]
    single = render_epochs(SyntheticFrames(), epochs, tmp_path / "one", options, jobs=1)
    for a, b in zip(pooled, single, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert len({np.asarray(Image.open(p)).tobytes() for p in pooled}) == 3
    with pytest.raises(InputError, match="twice"):
        render_epochs(SyntheticFrames(), [1, 1], tmp_path, options)
    with pytest.raises(InputError, match="jobs"):
        render_epochs(SyntheticFrames(), [1], tmp_path, options, jobs=0)
    with pytest.raises(InputError, match="worker processes"):
        render_epochs(lambda epoch: _frame(epoch), [1, 2], tmp_path, options, jobs=2)


def test_render_epochs_streams_per_epoch_inputs_to_the_workers(tmp_path):
    epochs = [4, 2, 9, 7, 1]
    seeds = [11, 12, 13, 14, 15]
    consumed = []

    def produce():  # runs in this process, while the workers draw
        for seed in seeds:
            consumed.append(seed)
            yield seed

    options = {"class_names": NAMES, "size_px": (200, 200)}
    pooled = render_epochs(FramesFromInputs(), epochs, tmp_path / "pool", options, jobs=2,
                           inputs=produce())  # fmt: skip
    assert consumed == seeds
    single = render_epochs(FramesFromInputs(), epochs, tmp_path / "one", options, jobs=1,
                           inputs=iter(seeds))  # fmt: skip
    for a, b in zip(pooled, single, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    by_seed = render_epochs(SyntheticFrames(150), [11], tmp_path / "seed", options)
    np.testing.assert_array_equal(  # the frame of epoch 4 was built from input 11
        np.asarray(Image.open(pooled[0]))[100:], np.asarray(Image.open(by_seed[0]))[100:]
    )
    for jobs in (1, 2):
        with pytest.raises(InputError, match="gave 2 values for 5 epochs"):
            render_epochs(FramesFromInputs(), epochs, tmp_path, options, jobs=jobs, inputs=[1, 2])
        with pytest.raises(InputError, match="more values than the 5 epochs"):
            render_epochs(FramesFromInputs(), epochs, tmp_path, options, jobs=jobs, inputs=range(6))


# --- animations ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> list:
    out = tmp_path_factory.mktemp("frames")
    options = {"class_names": NAMES, "size_px": (800, 800)}
    return render_epochs(SyntheticFrames(n=100), [1, 2, 3, 4], out, options)


def test_gif_has_one_looping_frame_per_png_scaled_down(pngs, tmp_path):
    path = write_gif(pngs, tmp_path / "training.gif", frame_ms=150, last_frame_ms=900)
    with Image.open(path) as gif:
        assert gif.n_frames == len(pngs)
        assert gif.info["loop"] == 0
        assert max(gif.size) == 600
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    assert durations == [150, 150, 150, 900]
    with pytest.raises(InputError, match="do not exist"):
        write_gif([tmp_path / "missing.png"], tmp_path / "x.gif")
    with pytest.raises(InputError, match="no frames"):
        write_gif([], tmp_path / "x.gif")


def test_mp4_without_imageio_names_the_extra(pngs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio", None)  # makes "import imageio" fail
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    with pytest.raises(
        MissingVideoDependencyError, match=r'pip install "timevis\[video\]"'
    ) as info:
        write_mp4(pngs, tmp_path / "training.mp4", fps=4)
    assert isinstance(info.value, ImportError) and isinstance(info.value, InputError)


def test_mp4_with_imageio(pngs, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    imageio = pytest.importorskip("imageio.v2")
    path = write_mp4(pngs, tmp_path / "training.mp4", fps=4)
    reader = imageio.get_reader(path)
    try:
        assert reader.count_frames() == len(pngs)
    finally:
        reader.close()
