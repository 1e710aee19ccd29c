"""Exact decision regions (timevis_cli.render.exact, ``timevis render --exact``): the partition
(with and without pruning) against the torch forward pass at a million points and on a fine
grid, a hand-counted case, each pruning rule's soundness, the per-epoch decoder of a refined fit,
the CLI end to end and the non-piecewise-linear head."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from stores import drifting_clusters

from timevis_callback import open_run
from timevis_callback.head import Head
from timevis_cli.cli import main
from timevis_cli.fit.io import load_fit
from timevis_cli.render.exact import (
    NotPiecewiseLinearError,
    cpwl_chain,
    exact_landscape,
)
from timevis_cli.render.frames import EpochFrame, FrameRenderer
from timevis_cli.render.landscape import Bounds, palette

CANVAS = Bounds(-3.0, 3.0, -2.5, 3.5)


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _torch_logits(decoder, head: Head, points: np.ndarray) -> np.ndarray:
    """head(decoder(y)) by the ordinary torch path, in float64."""
    x = torch.from_numpy(np.asarray(points, np.float64))
    for i, (weight, bias) in enumerate(decoder):
        x = x @ torch.as_tensor(weight, dtype=torch.float64).T + torch.as_tensor(bias, dtype=torch.float64)
        if i < len(decoder) - 1:
            x = torch.relu(x)
    with torch.no_grad():
        return head.to_torch().double()(x).numpy()


def _random_net(seed: int, head_kind: str, width: int = 24, depth: int = 3, dim: int = 12):
    rng = np.random.default_rng(seed)
    sizes = [2] + [width] * depth + [dim]
    decoder = [
        (rng.normal(size=(o, i)) * np.sqrt(2.0 / i), rng.normal(size=o) * 0.3)
        for i, o in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    if head_kind == "linear":
        spec = [{"type": "Flatten"}, {"type": "Linear", "in_features": dim, "out_features": 5}]
        state = {"1.weight": rng.normal(size=(5, dim)), "1.bias": rng.normal(size=5)}
    else:  # BatchNorm1d, a hidden ReLU, Dropout
        spec = [
            {"type": "BatchNorm1d", "num_features": dim},
            {"type": "Linear", "in_features": dim, "out_features": 8},
            {"type": "ReLU"},
            {"type": "Dropout", "p": 0.5},
            {"type": "Linear", "in_features": 8, "out_features": 4},
        ]
        state = {
            "0.weight": rng.uniform(0.5, 1.5, dim), "0.bias": rng.normal(size=dim),
            "0.running_mean": rng.normal(size=dim), "0.running_var": rng.uniform(0.5, 2, dim),
            "1.weight": rng.normal(size=(8, dim)), "1.bias": rng.normal(size=8),
            "4.weight": rng.normal(size=(4, 8)), "4.bias": rng.normal(size=4),
        }  # fmt: skip
    return decoder, Head(spec, {k: np.asarray(v, np.float32) for k, v in state.items()})


def _distance_to_segments(points: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Distance of each point (n, 2) to the nearest segment (S, 4)."""
    a, b = segments[None, :, :2], segments[None, :, 2:]
    p = points[:, None, :]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-300), 0, 1)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1).min(axis=1)


# --- the partition ---------------------------------------------------------------------------


def test_a_hand_built_two_layer_case_has_the_regions_counted_by_hand():
    # hidden: relu(x), relu(y); logits (relu(x), relu(y), 0.25) on [-1, 1]^2. The ReLU lines x=0
    # and y=0 make 4 linear regions. Class 2 wins on [-1, 0.25]^2, class 0 where x > 0.25 and
    # x > y, class 1 where y > 0.25 and y > x: 3 class regions, whose boundary is the segments
    # x = 0.25 and y = 0.25 (1.25 long each, from the canvas side to (0.25, 0.25)) and the
    # diagonal from (0.25, 0.25) to (1, 1).
    decoder = [(np.eye(2), np.zeros(2)), (np.array([[1.0, 0], [0, 1], [0, 0]]), np.r_[0, 0, 0.25])]
    head = Head([{"type": "Linear", "in_features": 3, "out_features": 3}],
                {"0.weight": np.eye(3, dtype=np.float32), "0.bias": np.zeros(3, np.float32)})  # fmt: skip
    chain = cpwl_chain(decoder, head.spec, head.state)
    exact = exact_landscape(chain, Bounds(-1, 1, -1, 1), prune=False)
    assert exact.linear_regions == 4 and len(exact.proven_class) == 0
    assert exact.class_regions == 3
    assert exact.boundary_length == pytest.approx(2.5 + 0.75 * np.sqrt(2), abs=1e-12)
    assert exact.summary()["boundary_fraction"] == pytest.approx(exact.boundary_length / np.sqrt(8))
    assert exact.slivers == 0
    areas = {}
    for polygon, k in zip(exact.piece_polygons(), exact.piece_class, strict=True):
        x, y = polygon.T
        areas[int(k)] = areas.get(int(k), 0) + 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
    assert areas[2] == pytest.approx(1.25**2)
    assert areas[0] == pytest.approx(areas[1]) and areas[0] == pytest.approx((4 - 1.25**2) / 2)
    # the quadrant x < 0, y < 0 is class 2 at every vertex: it stays one piece (pruned, not clipped)
    quadrant = [p for p in exact.piece_polygons() if p.max() <= 0]
    assert len(quadrant) == 1 and len(quadrant[0]) == 4
    # Q1 is clipped into three pieces, Q2 and Q4 into two: 8 pieces
    assert len(exact.piece_class) == 8
    # pruned: the same class regions, boundary and class areas (the proven cells are whole pieces)
    pruned = exact_landscape(chain, Bounds(-1, 1, -1, 1))
    assert len(pruned.proven_class) > 0
    assert pruned.class_regions == 3
    assert pruned.boundary_length == pytest.approx(exact.boundary_length, abs=1e-12)
    pruned_areas = {}
    for polygon, k in zip(pruned.piece_polygons(), pruned.piece_class, strict=True):
        x, y = polygon.T
        area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
        pruned_areas[int(k)] = pruned_areas.get(int(k), 0) + area
    assert pruned_areas == pytest.approx(areas, abs=1e-12)


@pytest.mark.parametrize("prune", [True, False], ids=["pruned", "full"])
@pytest.mark.parametrize("head_kind", ["linear", "batchnorm-relu"])
def test_exact_classes_equal_the_torch_argmax_at_a_million_points(head_kind, prune):
    decoder, head = _random_net(6, head_kind)
    exact = exact_landscape(cpwl_chain(decoder, head.spec, head.state), CANVAS, prune=prune)
    assert exact.class_regions >= 2
    if prune:
        assert len(exact.proven_class) > 0
    else:
        assert exact.linear_regions > 100 and len(exact.proven_class) == 0
    rng = np.random.default_rng(2)
    points = np.c_[rng.uniform(CANVAS.xmin, CANVAS.xmax, 10**6), rng.uniform(CANVAS.ymin, CANVAS.ymax, 10**6)]
    found = exact.classes_at(points)
    expected = _torch_logits(decoder, head, points).argmax(axis=1)
    wrong = np.flatnonzero(found != expected)
    # every disagreement (or unlocated point) lies within 1e-6 of the canvas side of a boundary
    if len(wrong):
        near = _distance_to_segments(points[wrong], exact.boundary) <= 1e-6 * 6.0
        assert near.all(), f"{(~near).sum()} of {len(wrong)} mismatches are away from a boundary"
    assert len(wrong) <= 10, f"{len(wrong)} of 10^6 points disagree"


def test_boundary_segments_lie_where_a_fine_grid_flips_class():
    decoder, head = _random_net(8, "linear")
    exact = exact_landscape(cpwl_chain(decoder, head.spec, head.state), CANVAS)
    segments = exact.boundary
    side = CANVAS.xmax - CANVAS.xmin
    # both sides of every boundary segment (at its midpoint) are of different classes
    lengths = np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])
    long = segments[lengths > 1e-6 * side]
    mid = (long[:, :2] + long[:, 2:]) / 2
    normal = np.c_[-(long[:, 3] - long[:, 1]), long[:, 2] - long[:, 0]]
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    step = 1e-7 * side
    left = _torch_logits(decoder, head, mid + step * normal).argmax(axis=1)
    right = _torch_logits(decoder, head, mid - step * normal).argmax(axis=1)
    assert (left != right).all(), f"{(left == right).sum()} of {len(long)} segments separate nothing"
    # every flip between neighbouring pixels of a 400 x 400 grid is crossed by a boundary segment
    size = 400
    xs = np.linspace(CANVAS.xmin, CANVAS.xmax, size)
    ys = np.linspace(CANVAS.ymin, CANVAS.ymax, size)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    classes = _torch_logits(decoder, head, grid).argmax(axis=1).reshape(size, size)
    flips = np.argwhere(classes[:, 1:] != classes[:, :-1])
    assert len(flips) > 50
    between = np.c_[(xs[flips[:, 1]] + xs[flips[:, 1] + 1]) / 2, ys[flips[:, 0]]]
    pixel = xs[1] - xs[0]
    far = _distance_to_segments(between, segments) > pixel / 2 + 1e-9
    assert not far.any(), f"{far.sum()} of {len(flips)} grid flips have no boundary within a pixel"


def _points_in(polygons: list[np.ndarray], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points drawn uniformly (by area) from the union of convex polygons, and the index of
    the polygon holding each."""
    tri, owner = [], []
    for i, poly in enumerate(polygons):
        for j in range(1, len(poly) - 1):
            tri.append((poly[0], poly[j], poly[j + 1]))
            owner.append(i)
    tri, owner = np.asarray(tri), np.asarray(owner)
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    pick = rng.choice(len(tri), size=n, p=area / area.sum())
    u, v = rng.uniform(size=(2, n))
    flip = u + v > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    points = tri[pick, 0] + u[:, None] * e1[pick] + v[:, None] * e2[pick]
    return points, owner[pick]


def _split_polygons(xy: np.ndarray, count: np.ndarray) -> list[np.ndarray]:
    return np.split(xy, np.cumsum(count)[:-1]) if len(count) else []


@pytest.mark.parametrize("rule", ["cells", "layers", "vertices", "impossible-classes"])
@pytest.mark.parametrize("head_kind", ["linear", "batchnorm-relu"])
def test_each_pruning_rule_keeps_the_class_at_random_points_of_what_it_pruned(rule, head_kind):
    decoder, head = _random_net(8, head_kind)
    exact = exact_landscape(cpwl_chain(decoder, head.spec, head.state), CANVAS)
    rng = np.random.default_rng(3)
    if rule in ("cells", "layers"):
        # a polygon proven one class (a grid cell bounded from the first layer on, or a polygon
        # bounded from a deeper layer's exact pre-activations) is that class at every point
        polygons = _split_polygons(*exact.proven)
        chosen = np.flatnonzero((exact.proven_stage == 0) == (rule == "cells"))
        assert len(chosen) >= 5, f"the rule pruned {len(chosen)} polygons"
        points, owner = _points_in([polygons[i] for i in chosen], 10**5, rng)
        expected = exact.proven_class[chosen][owner]
        found = _torch_logits(decoder, head, points).argmax(axis=1)
        assert (found == expected).all(), f"{(found != expected).sum()} of 10^5 points differ"
        return
    # the final linear regions: affine logits, decided at the vertices
    polygons = _split_polygons(*exact.regions)
    a, c = exact.region_maps  # (P, C, 2), (P, C)
    vertex_logits = [np.einsum("kd,vd->vk", a[i], p) + c[i] for i, p in enumerate(polygons)]
    if rule == "vertices":
        # vertices agreeing on one argmax with a positive gap: the whole region is that class
        whole = []
        for i, logits in enumerate(vertex_logits):
            top = np.sort(logits, axis=1)
            if len(set(logits.argmax(axis=1))) == 1 and (top[:, -1] - top[:, -2]).min() > 1e-9:
                whole.append(i)
        assert len(whole) >= 5
        points, owner = _points_in([polygons[i] for i in whole], 10**5, rng)
        expected = np.array([vertex_logits[i][0].argmax() for i in whole])[owner]
        found = _torch_logits(decoder, head, points).argmax(axis=1)
        assert (found == expected).all(), f"{(found != expected).sum()} of 10^5 points differ"
    else:
        # a class whose largest logit over the vertices is below some class's smallest never
        # wins inside: the torch argmax at points of such regions is always a possible class
        ruled_out = []
        for i, logits in enumerate(vertex_logits):
            impossible = logits.max(axis=0) < logits.min(axis=0).max()
            if impossible.any():
                ruled_out.append((i, impossible))
        assert len(ruled_out) >= 5
        points, owner = _points_in([polygons[i] for i, _ in ruled_out], 10**5, rng)
        impossible = np.array([m for _, m in ruled_out])[owner]
        found = _torch_logits(decoder, head, points).argmax(axis=1)
        assert not impossible[np.arange(len(found)), found].any()


@pytest.mark.parametrize("head_kind", ["linear", "batchnorm-relu"])
def test_pruning_gives_the_class_regions_and_boundary_of_the_full_partition(head_kind):
    decoder, head = _random_net(8, head_kind)
    chain = cpwl_chain(decoder, head.spec, head.state)
    full = exact_landscape(chain, CANVAS, prune=False)
    pruned = exact_landscape(chain, CANVAS)
    # most of the canvas is proven before being split to its linear regions
    proven_area = sum(
        0.5 * abs(np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1]))
        for p in _split_polygons(*pruned.proven)
    )
    assert proven_area > 0.5 * 36
    assert pruned.linear_regions < full.linear_regions
    assert pruned.class_regions == full.class_regions
    assert pruned.boundary_length == pytest.approx(full.boundary_length, rel=1e-9)
    rng = np.random.default_rng(4)
    points = np.c_[rng.uniform(CANVAS.xmin, CANVAS.xmax, 10**5), rng.uniform(CANVAS.ymin, CANVAS.ymax, 10**5)]
    differ = np.flatnonzero(pruned.classes_at(points) != full.classes_at(points))
    if len(differ):  # only on a boundary (either side's class)
        assert (_distance_to_segments(points[differ], full.boundary) <= 1e-6 * 6.0).all()


def test_a_non_piecewise_linear_head_is_refused_naming_the_layer():
    decoder, _ = _random_net(0, "linear")
    spec = [{"type": "Linear", "in_features": 12, "out_features": 6}, {"type": "GELU"},
            {"type": "Linear", "in_features": 6, "out_features": 3}]  # fmt: skip
    with pytest.raises(NotPiecewiseLinearError, match=r"head layer 1 is GELU.*without --exact"):
        cpwl_chain(decoder, spec, {})


def test_frames_draw_the_exact_regions_instead_of_the_background():
    renderer = FrameRenderer(["a", "b"], size_px=(300, 300))
    left = np.array([[-1.0, -1], [0, -1], [0, 1], [-1, 1]])
    right = np.array([[0.0, -1], [1, -1], [1, 1], [0, 1]])
    frame = EpochFrame(
        epoch=1, background=np.full((1, 1, 3), 255, np.uint8), bounds=Bounds(-1, 1, -1, 1),
        train_points=np.zeros((0, 2)), train_labels=np.zeros(0, int), train_preds=np.zeros(0, int),
        regions=([left, right], np.array([0, 1])), boundary=np.array([[0.0, -1, 0, 1]]),
    )  # fmt: skip
    image = renderer.render(frame).astype(int)
    px_left = renderer.axes.transData.transform((-0.5, 0.3))
    px_right = renderer.axes.transData.transform((0.5, 0.3))
    colours = palette(2).astype(int)
    for (px, py), k in ((px_left, 0), (px_right, 1)):
        pixel = image[int(round(300 - py)), int(round(px))]
        tint = 255 - 0.55 * (255 - colours[k])
        assert np.abs(pixel - tint).max() <= 2, (k, pixel, tint)
    # the boundary line x = 0 is dark
    px, py = renderer.axes.transData.transform((0.0, 0.0))
    assert image[int(round(300 - py)), int(round(px))].max() < 100


# --- on a fitted store -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A refined fit (its decoder has one bias per epoch), kept small: few refine epochs and
    decoder steps, a narrow decoder."""
    path = drifting_clusters(
        tmp_path_factory.mktemp("exact") / "store", n_train=120, n_test=20, classes=4, epochs=4
    )
    result = invoke(
        "-q", "fit", path, "--set", "training.max_epochs=1", "--set", "reduction.init_size=50",
        "--set", "projector.hidden=32", "--set", "refine.epochs=5",
        "--set", "refine.decoder_steps=60", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return path


def test_each_epoch_of_a_refined_fit_gets_the_partition_of_its_own_decoder(store):
    run = open_run(store)
    fit = load_fit(run)
    assert fit.model.projector.epoch_bias is not None
    first, last = fit.epochs[1], fit.epochs[-1]
    bounds = Bounds(-12.0, 12.0, -12.0, 12.0)
    landscapes = {}
    for epoch in (first, last):
        head = run.head(epoch)
        landscapes[epoch] = exact_landscape(
            cpwl_chain(fit.model.decoder_layers(epoch), head.spec, head.state), bounds
        )
    assert landscapes[first].linear_regions != landscapes[last].linear_regions or not np.allclose(
        landscapes[first].regions[0][:50], landscapes[last].regions[0][:50]
    )
    rng = np.random.default_rng(0)
    points = rng.uniform(-12, 12, size=(20000, 2))
    for epoch in (first, last):
        decoded = fit.model.inverse_transform(points.astype(np.float32), epoch=epoch)
        expected = run.head(epoch)(decoded).argmax(axis=1)
        found = landscapes[epoch].classes_at(points)
        agree = np.mean(found == expected)
        assert agree >= 0.999, f"epoch {epoch}: {agree}"  # float32 decoding at the boundaries
    other = landscapes[first].classes_at(points)
    own = run.head(last)(fit.model.inverse_transform(points.astype(np.float32), epoch=last))
    assert np.mean(other == own.argmax(axis=1)) < 0.999


def test_render_exact_end_to_end(store):
    result = invoke("-q", "render", store, "--exact", "--html", "--jobs", "1", "--epochs", "1-2")
    assert result.exit_code == 0, result.output
    out = store / "render"
    regions = json.loads((out / "regions.json").read_text())["epochs"]
    assert sorted(regions) == ["1", "2"]
    for epoch in (1, 2):
        figures = regions[str(epoch)]
        assert figures["linear_regions"] >= 1 and figures["class_regions"] >= 1
        assert figures["boundary_length"] > 0 and 0 < figures["boundary_fraction"] < 100
        tree = ET.parse(out / f"epoch_{epoch:04d}.svg")
        paths = tree.getroot().iter("{http://www.w3.org/2000/svg}path")
        kinds = [p.get("class") for p in paths]
        assert kinds.count("boundary") <= 1 and kinds.count("region") >= 1
        assert Image.open(out / f"epoch_{epoch:04d}.png").size == (800, 800)
    page = (out / "index.html").read_text()
    assert '"exactBoundaries":[{' in page
    # timevis eval reports the figures of render/regions.json over training
    result = invoke("eval", store, "--epochs", "1-2")
    assert result.exit_code == 0, result.output
    assert "exact regions (render --exact, epochs 1-2): linear" in result.output
    metrics = json.loads((store / "eval" / "metrics.json").read_text())
    assert metrics["regions"]["2"]["linear_regions"] == regions["2"]["linear_regions"]
    assert "## Exact regions" in (store / "eval" / "metrics.md").read_text()


def test_render_exact_refuses_a_non_piecewise_linear_head(store, monkeypatch):
    from timevis_callback import reader

    real = reader.Run.head

    def gelu_head(self, epoch):
        head = real(self, epoch)
        spec = [*head.spec, {"type": "GELU"}]
        return Head(spec, head.state)

    monkeypatch.setattr(reader.Run, "head", gelu_head)
    before = sorted(p.name for p in (store / "render").iterdir()) if (store / "render").exists() else []
    result = invoke("-q", "render", store, "--exact", "--jobs", "1")
    assert result.exit_code == 1
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and "GELU" in lines[0] and "without --exact" in lines[0], result.output
    after = sorted(p.name for p in (store / "render").iterdir()) if (store / "render").exists() else []
    assert after == before  # the previous render is kept
