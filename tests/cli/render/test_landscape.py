"""Tests of timevis_cli.render.landscape: canvas bounds, grid orientation, classification, colours."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from timevis_callback.boundary import margin
from timevis_callback.head import Head
from timevis_cli.errors import InputError
from timevis_cli.render.landscape import (
    BOUNDARY_MARGIN,
    Bounds,
    canvas_bounds,
    classify_grid,
    decode_grid,
    fade_weights,
    follow_canvas_bounds,
    grid_points,
    landscape_alpha,
    landscape_image,
    palette,
)

TAB10_HEX = "1f77b4 ff7f0e 2ca02c d62728 9467bd 8c564b e377c2 7f7f7f bcbd22 17becf".split()


def _identity(points: np.ndarray) -> np.ndarray:
    return points


def _by_x(features: np.ndarray) -> np.ndarray:
    """Two classes: 1 where x > 0, else 0."""
    return np.stack([-features[:, 0], features[:, 0]], axis=1)


def _by_y(features: np.ndarray) -> np.ndarray:
    """Two classes: 1 where y > 0, else 0."""
    return np.stack([-features[:, 1], features[:, 1]], axis=1)


# --- canvas_bounds ---------------------------------------------------------------------------


def test_canvas_bounds_is_square_padded_and_centred():
    points = np.array([[0.0, 0.0], [4.0, 1.0], [2.0, 2.0]])
    b = canvas_bounds([points])
    assert b.xmax - b.xmin == pytest.approx(b.ymax - b.ymin)
    assert b.xmax - b.xmin == pytest.approx(4.0 * 1.2)  # larger span 4, 10% on each side
    assert (b.xmin + b.xmax) / 2 == pytest.approx(2.0)
    assert (b.ymin + b.ymax) / 2 == pytest.approx(1.0)
    assert b.xmin < 0.0 and b.xmax > 4.0 and b.ymin < 0.0 and b.ymax > 2.0
    assert b.extent == (b.xmin, b.xmax, b.ymin, b.ymax)


def test_canvas_bounds_is_global_over_epochs_and_works_per_epoch():
    early = np.array([[0.0, 0.0], [1.0, 1.0]])
    late = np.array([[10.0, -5.0], [12.0, 3.0]])
    both = canvas_bounds([early, late])
    assert both == canvas_bounds([np.concatenate([early, late])])
    assert both.xmin < 0.0 and both.xmax > 12.0 and both.ymin < -5.0 and both.ymax > 3.0
    assert canvas_bounds(early) == canvas_bounds([early])  # one (n, 2) array is one epoch
    assert canvas_bounds(np.stack([early, late])) == both  # an (E, n, 2) array: epochs
    assert canvas_bounds(early, pad=0.0) == Bounds(0.0, 1.0, 0.0, 1.0)
    assert canvas_bounds(x for x in [early, late]) == both  # any iterable, read once


def test_canvas_bounds_degenerate_and_invalid():
    b = canvas_bounds([np.array([[3.0, 3.0], [3.0, 3.0]])], pad=0.0)
    assert b == Bounds(2.5, 3.5, 2.5, 3.5)
    with pytest.raises(InputError, match="no 2-D points"):
        canvas_bounds([np.zeros((0, 2))])
    with pytest.raises(InputError, match="NaN"):
        canvas_bounds([np.array([[0.0, np.nan]])])
    with pytest.raises(InputError, match=r"must be \(n, 2\)"):
        canvas_bounds([np.zeros((4, 3))])
    with pytest.raises(InputError, match="pad"):
        canvas_bounds([np.zeros((4, 2))], pad=-0.1)


# --- grid ------------------------------------------------------------------------------------


def test_grid_points_are_pixel_centres_row_0_on_top():
    grid = grid_points(Bounds(0.0, 4.0, 0.0, 4.0), 4)
    assert grid.shape == (16, 2) and grid.dtype == np.float32
    image = grid.reshape(4, 4, 2)
    np.testing.assert_allclose(image[0, 0], [0.5, 3.5])  # top left
    np.testing.assert_allclose(image[0, 3], [3.5, 3.5])  # top right
    np.testing.assert_allclose(image[3, 0], [0.5, 0.5])  # bottom left
    with pytest.raises(InputError, match="resolution"):
        grid_points(Bounds(0.0, 1.0, 0.0, 1.0), 0)


def test_grid_orientation_left_right_and_top_bottom():
    bounds = Bounds(-1.0, 1.0, -1.0, 1.0)
    decoded = decode_grid(_identity, bounds, resolution=8, batch_size=5)
    colours = palette(2)
    classes, _ = classify_grid(decoded, _by_x)
    assert (classes[:, :4] == 0).all() and (classes[:, 4:] == 1).all()
    image = landscape_image(classes, np.ones_like(classes, dtype=np.float32), colours)
    assert (image[:, :4] == colours[0]).all() and (image[:, 4:] == colours[1]).all()
    classes, _ = classify_grid(decoded, _by_y)
    assert (classes[:4] == 1).all() and (classes[4:] == 0).all()  # row 0 is the top (y > 0)


def test_decode_grid_batches_and_checks_the_decoder():
    calls = []

    def decode(points: np.ndarray) -> np.ndarray:
        calls.append(len(points))
        return np.concatenate([points, points**2], axis=1).astype(np.float64)

    decoded = decode_grid(decode, Bounds(0.0, 1.0, 0.0, 1.0), resolution=10, batch_size=30)
    assert calls == [30, 30, 30, 10]
    assert decoded.shape == (100, 4) and decoded.dtype == np.float32
    with pytest.raises(InputError, match="decode returned shape"):
        decode_grid(lambda p: p[:-1], Bounds(0.0, 1.0, 0.0, 1.0), 4)
    with pytest.raises(InputError, match="NaN"):
        decode_grid(lambda p: p * np.nan, Bounds(0.0, 1.0, 0.0, 1.0), 4)


def test_decode_grid_accepts_a_torch_decoder():
    torch = pytest.importorskip("torch")
    layer = torch.nn.Linear(2, 3)

    def decode(points: np.ndarray):
        return layer(torch.from_numpy(points))  # requires grad: must be detached

    decoded = decode_grid(decode, Bounds(0.0, 1.0, 0.0, 1.0), 4)
    assert decoded.shape == (16, 3)


def test_classify_grid_with_a_stored_head_matches_the_method_margin():
    rng = np.random.default_rng(0)
    spec = [{"type": "Linear", "in_features": 5, "out_features": 4, "bias": True}]
    head = Head(spec, {"0.weight": rng.normal(size=(4, 5)), "0.bias": rng.normal(size=4)})
    decoded = rng.normal(size=(36, 5)).astype(np.float32)
    classes, margins = classify_grid(decoded, head, batch_size=7)
    logits = head(decoded)
    assert classes.shape == margins.shape == (6, 6)
    np.testing.assert_array_equal(classes.ravel(), logits.argmax(axis=1))
    np.testing.assert_allclose(margins.ravel(), margin(logits), rtol=1e-6)
    assert ((margins >= 0) & (margins <= 1)).all()
    same, _ = classify_grid(decoded.reshape(6, 6, 5), head)
    np.testing.assert_array_equal(same, classes)
    with pytest.raises(InputError, match="square grid"):
        classify_grid(decoded[:35], head)


# --- colours ---------------------------------------------------------------------------------


def test_palette_is_tab10_then_tab20_and_fixed_by_class_id():
    tab10 = np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in TAB10_HEX])
    np.testing.assert_array_equal(palette(10), tab10)
    matplotlib = pytest.importorskip("matplotlib")
    tab20 = np.rint(np.array(matplotlib.colormaps["tab20"].colors) * 255).astype(np.uint8)
    np.testing.assert_array_equal(palette(20), np.concatenate([tab20[0::2], tab20[1::2]]))
    big = palette(100)
    assert big.shape == (100, 3) and big.dtype == np.uint8
    for n in (1, 3, 10, 11, 20, 57):
        np.testing.assert_array_equal(palette(n), big[:n])  # a class never changes colour
    assert len({tuple(c) for c in big}) == 100
    assert (big.astype(int).sum(axis=1) < 3 * 240).all()  # nothing mistaken for a boundary
    with pytest.raises(InputError, match="num_classes"):
        palette(0)


def test_a_class_keeps_its_colour_across_frames_when_others_are_absent():
    colours = palette(10)
    confident = np.ones((4, 4), dtype=np.float32)
    epoch_a = np.array([[0, 1, 2, 9]] * 4)  # four classes on the grid
    epoch_b = np.full((4, 4), 9)  # only class 9 left
    image_a = landscape_image(epoch_a, confident, colours)
    image_b = landscape_image(epoch_b, confident, colours)
    np.testing.assert_array_equal(image_a[0, 3], image_b[0, 0])
    np.testing.assert_array_equal(image_b[0, 0], colours[9])


def test_boundary_pixels_are_pure_white_and_confidence_fades_to_white():
    colours = palette(3)
    margins = np.array([[0.0, 0.05, 0.1499, BOUNDARY_MARGIN, 0.4, 1.0]], dtype=np.float32)
    classes = np.zeros_like(margins, dtype=np.int64)
    image = landscape_image(classes, margins, colours)
    assert image.shape == (1, 6, 3) and image.dtype == np.uint8
    assert (image[0, :3] == 255).all()
    assert (image[0, 3:] < 255).any(axis=1).all()  # coloured from the threshold on
    np.testing.assert_array_equal(image[0, 5], colours[0])  # full confidence: the class colour
    whiteness = image[0, 3:].astype(int).sum(axis=1)
    assert (np.diff(whiteness) < 0).all()  # less white as the margin grows
    alpha = landscape_alpha(np.linspace(0, 1, 101))
    assert (alpha[np.linspace(0, 1, 101) < BOUNDARY_MARGIN] == 0).all()
    assert (np.diff(alpha[alpha > 0]) >= 0).all() and alpha[-1] == 1.0
    wide = landscape_image(classes, margins, colours, boundary_margin=0.5)
    assert (wide[0, :5] == 255).all()


def test_the_landscape_fades_to_the_background_far_from_every_recorded_point():
    bounds, resolution = Bounds(0.0, 10.0, 0.0, 10.0), 50  # pixels 0.2 wide
    samples = np.array([[2.1, 7.9], [2.5, 7.5]])  # near the top-left corner
    boundary = np.array([[-0.3, 0.3]])  # just off the canvas, beside the bottom-left corner
    fade = fade_weights(np.concatenate([samples, boundary]), bounds, resolution, distance=0.2)
    assert fade.shape == (50, 50) and fade.dtype == np.float32
    classes = np.full((50, 50), 2)
    margins = np.ones((50, 50), np.float32)
    image = landscape_image(classes, margins, palette(3), fade=fade)
    row, col = int((10.0 - 7.9) / 0.2), int(2.1 / 0.2)  # the pixel the first sample lies in
    np.testing.assert_array_equal(image[row, col], palette(3)[2])  # keeps its class colour
    np.testing.assert_array_equal(image[row, col + 8], palette(3)[2])  # 1.6 away: within 2
    assert (image[10, 45] == 255).all()  # far from every point: the background
    assert (image[49, 0] < 255).any()  # near the boundary point off the canvas: coloured
    # beyond the distance (0.2 of the side: 2) the colour fades out, gone at 1.5 times it
    points = np.concatenate([samples, boundary])
    centres = grid_points(bounds, 50)
    nearest = np.hypot(*(centres[:, None, :] - points[None]).transpose(2, 0, 1)).min(axis=1)
    nearest = nearest.reshape(50, 50)  # measured on the pixel grid: exact to ~a pixel (0.2)
    assert (fade[nearest < 2.0 - 0.2] == 1).all()
    ring = (nearest > 2.0 + 0.2) & (nearest < 3.0 - 0.2)
    assert ring.sum() > 10 and ((fade[ring] > 0) & (fade[ring] < 1)).all()
    assert (fade[nearest > 3.0 + 0.2] == 0).all()
    assert fade_weights(samples, bounds, resolution, distance=0.0) is None  # off
    assert (fade_weights(np.zeros((0, 2)), bounds, 8, 0.1) == 0).all()
    with pytest.raises(InputError, match="fade distance"):
        fade_weights(samples, bounds, resolution, distance=-1.0)
    with pytest.raises(InputError, match="fade"):
        landscape_image(classes, margins, palette(3), fade=fade[:10])


def test_follow_canvas_bounds_checks_its_input():
    with pytest.raises(InputError, match="no epochs"):
        follow_canvas_bounds({})
    with pytest.raises(InputError, match="epoch 3 has no 2-D points"):
        follow_canvas_bounds({3: np.zeros((0, 2))})
    with pytest.raises(InputError, match="NaN"):
        follow_canvas_bounds({0: np.array([[0.0, np.nan]])})
    one = follow_canvas_bounds({5: np.zeros((4, 2))})[5]  # all points identical: a side of 1
    assert one.xmax - one.xmin == pytest.approx(1.1)


def test_landscape_image_shape_dtype_and_errors():
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 5, size=(20, 20))
    margins = rng.random((20, 20)).astype(np.float32)
    image = landscape_image(classes, margins, palette(5))
    assert image.shape == (20, 20, 3) and image.dtype == np.uint8
    with pytest.raises(InputError, match="outside the palette"):
        landscape_image(classes, margins, palette(3))
    with pytest.raises(InputError, match="same"):
        landscape_image(classes, margins[:10], palette(5))


def test_landscape_module_does_not_import_matplotlib():
    code = (
        "import sys, timevis_cli.render.landscape, timevis_cli.render.animate; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
