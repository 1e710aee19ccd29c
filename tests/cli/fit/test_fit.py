"""``timevis fit`` end to end on synthetic stores, through the Python API and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from stores import drifting_clusters

from timevis_callback import open_run
from timevis_callback.writer import RunHeader, write_epoch, write_run
from timevis_cli.cli import main
from timevis_cli.config import load_config
from timevis_cli.errors import ConfigError, InputError
from timevis_cli.evaluate.metrics import nnpv
from timevis_cli.fit.io import load_fit, save_fit
from timevis_cli.fit.neighbors import TorchExact
from timevis_cli.fit.pipeline import Reporter, fit
from timevis_cli.render.landscape import shared_canvas_bounds

FAST = ["training.max_epochs=6", "reduction.init_size=100", "refine.decoder_steps=150"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    store = drifting_clusters(tmp_path_factory.mktemp("fit") / "store")
    result = invoke("fit", store, "--set", FAST[0], "--set", FAST[1])  # refinement is the default
    assert result.exit_code == 0, result.output
    return store


def test_fit_writes_every_output(fitted):
    fit_dir = fitted / "fit"
    assert {p.name for p in fit_dir.iterdir()} == {
        "projector.pt",
        "embedding.h5",
        "fit.json",
        "config.toml",
    }
    saved = torch.load(fit_dir / "projector.pt", weights_only=True)
    assert saved["projector"]["config"]["input_dim"] == 16
    report = json.loads((fit_dir / "fit.json").read_text())
    assert report["knn_backend"] in ("FaissCPU", "TorchExact")
    assert report["epochs"] == [0, 1, 2, 3, 4]
    assert set(report["seconds"]) >= {"reduction", "complex", "temporal", "training", "refine"}
    assert report["refine"]["points"] == 5 * 360 + sum(report["complex"]["boundary_per_epoch"].values())
    assert report["refine"]["edges"] > 0
    assert report["refine"]["trajectory_pairs"] == 360 * 10  # every sample, every epoch pair
    assert set(report["refine"]["seconds"]) == {"graph", "trajectories", "layout", "decoder"}
    peaks = report["refine"]["peak_memory_mb_after"]
    assert list(peaks) == ["graph", "trajectories", "layout", "decoder"]
    assert all(0 < mb <= report["peak_memory_mb"] for mb in peaks.values())
    assert list(report["peak_memory_mb_after"]) == list(report["seconds"])  # one per stage
    assert saved["projector"]["config"]["epochs"] == 5  # the decoder's per-epoch biases
    assert report["complex"]["edges"]["temporal"] > 0
    assert report["complex"]["boundary_source"]["3"] == "feature"
    assert report["peak_memory_mb"] > 0
    held = report["complex"]["bytes"]  # the complex's features held once, float32
    assert held["features"] == report["complex"]["vertices"] * 16 * 4
    n_edges = sum(report["complex"]["edges"].values())
    assert held["edges"] == n_edges * (8 + 8 + 4 + 1)
    assert held["edges_before_mixing"] >= held["edges"]
    assert load_config(fit_dir / "config.toml").training.max_epochs == 6


def test_embedding_preserves_neighbours_and_keeps_still_samples_still(fitted):
    run = open_run(fitted)
    loaded = load_fit(run)
    high = run.features(loaded.epochs[0], split="test")
    np.testing.assert_array_equal(loaded.transform(high), loaded.model.transform(high))
    for epoch in loaded.epochs:
        emb = loaded.embedding(epoch)
        high = run.features(epoch, split="train")
        assert emb["train"].shape == (300, 2) and emb["test"].shape == (60, 2)
        score = nnpv(high, emb["train"], k=10)
        assert score >= 0.4, f"epoch {epoch}: nnpv {score}"
    still = np.stack([loaded.embedding(e)["train"][0] for e in loaded.epochs])
    moving = np.stack([loaded.embedding(e)["train"][1:] for e in loaded.epochs])
    moved = np.abs(moving - moving[0]).max(axis=(0, 2))
    assert np.median(moved) > 0.5
    # refinement moves every point a little; the sample that does not move in high-D moves
    # far less than the typical one
    assert np.abs(still - still[0]).max() < 0.2 * np.median(moved)


def test_without_refinement_the_embedding_is_the_encoders(tmp_path):
    store = drifting_clusters(tmp_path / "s", n_train=150, n_test=30, epochs=4)
    run = open_run(store)
    base = FAST + ["training.max_epochs=2"]
    plain = fit(run, load_config(overrides=base + ["refine.enabled=false"]))
    refined = fit(run, load_config(overrides=base + ["refine.enabled=true"]))
    assert "refine" not in plain.stats and "embedding" in plain.stats["seconds"]
    # a refined fit's decoder has one bias per fitted epoch; a plain one is shared
    assert plain.model.projector.epochs == 0 and refined.model.projector.epochs == len(refined.epochs)
    shared = fit(run, load_config(overrides=base + ["refine.epoch_decoder=false"]))
    assert shared.model.projector.epochs == 0
    points = refined.train[1][:5]
    assert not np.allclose(
        refined.model.inverse_transform(points, epoch=plain.epochs[0]),
        refined.model.inverse_transform(points, epoch=plain.epochs[-1]),
    )
    with pytest.raises(InputError, match="was not fitted"):
        refined.model.inverse_transform(points, epoch=99)
    np.testing.assert_array_equal(
        refined.inverse_transform(points, epoch=plain.epochs[1]),
        refined.model.inverse_transform(points, epoch=plain.epochs[1]),
    )
    dim = run.feature_dim
    assert refined.transform(np.zeros((0, dim))).shape == (0, 2)
    assert refined.inverse_transform(np.zeros((0, 2)), epoch=plain.epochs[0]).shape == (0, dim)
    with pytest.raises(InputError, match=rf"features of shape \(5, 3\) given.*\[n, {dim}\]"):
        refined.transform(np.zeros((5, 3)))
    with pytest.raises(InputError, match=r"points of shape \(4,\) given.*\[n, 2\]"):
        refined.inverse_transform(np.zeros(4), epoch=plain.epochs[0])
    for i, epoch in enumerate(plain.epochs):
        high = run.features(epoch, split="train")
        np.testing.assert_allclose(plain.model.transform(high), plain.train[i], atol=1e-5)
        np.testing.assert_allclose(
            plain.model.transform(run.features(epoch, split="test")), plain.test[i], atol=1e-5
        )
    # the refinement starts from the same projector and lifts neighbour preservation
    gain = [
        nnpv(run.features(e, split="train"), refined.train[i], k=10)
        - nnpv(run.features(e, split="train"), plain.train[i], k=10)
        for i, e in enumerate(plain.epochs)
    ]
    assert np.mean(gain) > 0.05, gain
    assert [len(b) for b in refined.boundary_points] == [len(b) for b in plain.boundary_points]


@pytest.mark.parametrize("refine", ["true", "false"])
def test_inverse_transform_keeps_the_prediction(tmp_path, refine):
    # The decoder path itself, the projector's own (shared) decoder and the refined one with a
    # bias per epoch: the decoded positions keep the classifier's prediction.
    store = drifting_clusters(tmp_path / "s", n_train=100, n_test=20, epochs=3)
    overrides = [
        "complex.rate_temporal=5",
        "reduction.enabled=false",
        "training.max_epochs=6",
        "projector.hidden=64",
        f"refine.enabled={refine}",
    ]
    result = fit(open_run(store), load_config(overrides=overrides))
    run = open_run(store)
    if refine == "true":
        with pytest.raises(InputError, match="pass epoch="):
            result.model.inverse_transform(result.train[0])
    for i, epoch in enumerate(result.epochs):
        high = run.features(epoch, split="train")
        head = run.head(epoch)
        recon = result.model.inverse_transform(result.train[i], epoch=epoch)
        agreement = (head(recon).argmax(1) == head(high).argmax(1)).mean()
        assert agreement > 0.9, f"epoch {epoch}: ppr {agreement}"


def _store_without(source, dest, held_out):
    """A copy of the store ``source`` at ``dest`` without the rows ``held_out`` (its samples
    become new samples of the same run, never seen by a fit of the copy)."""
    run = open_run(source)
    keep = np.setdiff1d(np.arange(len(run.samples)), held_out)
    head = run.head(run.epochs[0])
    header = RunHeader(
        run_id=f"{run.run_id}-kept",
        feature_layer=run.feature_layer,
        feature_io=run.feature_io,
        feature_dim=run.feature_dim,
        num_classes=run.num_classes,
        class_names=run.class_names,
        head_spec=head.spec,
    )
    write_run(dest, header, run.samples.id[keep], run.samples.split[keep], run.samples.label[keep])
    for epoch in run.epochs:
        write_epoch(
            dest,
            epoch,
            features=run.features(epoch)[keep],
            logits=run.logits(epoch)[keep],
            head_state=run.head(epoch).state,
            boundary=run.boundary(epoch),
        )
    return dest


def _overlap(a, b):
    """Mean share of each row's indices in ``a`` [n, k] that are also in ``b`` [n, k]."""
    return float(np.mean([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b, strict=True)]))


def test_transform_places_tracked_samples_where_the_fit_drew_them_and_new_ones_among_neighbours(
    tmp_path,
):
    source = drifting_clusters(tmp_path / "all", n_train=330, n_test=60, epochs=4, boundary=True)
    all_run = open_run(source)
    held_out = np.flatnonzero(all_run.samples.mask("train"))[-30:]  # 30 train samples
    run = open_run(_store_without(source, tmp_path / "kept", held_out))
    result = fit(run, load_config(overrides=FAST + ["training.max_epochs=4"]))
    bounds, _ = shared_canvas_bounds({e: result.train[i] for i, e in enumerate(result.epochs)})
    side = bounds.xmax - bounds.xmin
    backend = TorchExact()
    k = 10
    for i, epoch in enumerate(result.epochs):
        features = run.features(epoch)
        drawn = np.zeros((len(features), 2), np.float32)
        drawn[run.samples.mask("train")], drawn[run.samples.mask("test")] = result.train[i], result.test[i]
        # tracked samples land where the fit drew them (the encoder alone is far off)
        error = np.linalg.norm(result.transform(features, epoch=epoch) - drawn, axis=1) / side
        assert error.max() < 0.005 and error.mean() < 0.001, (epoch, error.max(), error.mean())
        encoder = np.linalg.norm(result.model.encode(features) - drawn, axis=1) / side
        assert encoder.mean() > 0.01, encoder.mean()
        moving = np.arange(1, len(features))  # sample 0 has the same features at every epoch
        anywhere = np.linalg.norm(result.transform(features[moving]) - drawn[moving], axis=1) / side
        assert anywhere.max() < 0.005, anywhere.max()
        # new samples land among their feature-space neighbours ...
        new = all_run.features(epoch)[held_out]
        placed = result.transform(new, epoch=epoch)
        near_high = backend.query(features, new, k=k)[0]
        near_low = backend.query(drawn, placed, k=k)[0]
        overlap = _overlap(near_high, near_low)
        chance = k / len(features)
        assert overlap > max(0.4, 10 * chance), f"epoch {epoch}: kNN overlap {overlap:.2f}"
        # ... where the landscape says what the classifier says, as for the tracked samples
        head = run.head(epoch)
        tracked_agree = np.mean(
            head(result.inverse_transform(drawn, epoch=epoch)).argmax(1) == head(features).argmax(1)
        )
        new_agree = np.mean(
            head(result.inverse_transform(placed, epoch=epoch)).argmax(1) == head(new).argmax(1)
        )
        assert new_agree >= tracked_agree - 0.05, f"epoch {epoch}: {new_agree} vs {tracked_agree}"
    with pytest.raises(InputError, match="epoch 9 was not fitted"):
        result.transform(features, epoch=9)
    # a saved and loaded fit places samples exactly as the fit in memory does
    save_fit(run.path, result, overwrite=False)
    loaded = load_fit(open_run(run.path))
    epoch = result.epochs[-1]
    new = all_run.features(epoch)[held_out]
    np.testing.assert_array_equal(
        loaded.transform(new, epoch=epoch), result.transform(new, epoch=epoch)
    )
    bad = features[:3].copy()
    bad[1, 0] = np.nan
    with pytest.raises(InputError, match="1 of the 3 feature rows hold NaN"):
        result.transform(bad, epoch=result.epochs[0])


def test_same_seed_same_embedding(tmp_path):
    store = drifting_clusters(tmp_path / "s", n_train=120, n_test=20, epochs=3)
    config = load_config(overrides=FAST + ["training.max_epochs=2"])
    first = fit(open_run(store), config)
    second = fit(open_run(store), config)
    np.testing.assert_array_equal(first.train, second.train)


def test_a_refinement_past_its_memory_budget_gives_the_same_fit_from_a_scratch_file(tmp_path):
    # refine.memory_mb=0 keeps the layout's edges and trajectory targets in a scratch file in
    # RUN_DIR, read back every layout epoch: the same fit, and nothing left behind
    store = drifting_clusters(tmp_path / "s", n_train=120, n_test=20, epochs=3)
    config = load_config(overrides=FAST + ["training.max_epochs=2"])
    in_memory = fit(open_run(store), config)
    before = sorted(p.name for p in store.iterdir())
    streamed = fit(open_run(store), load_config(overrides=FAST + ["training.max_epochs=2", "refine.memory_mb=0"]))
    assert not in_memory.stats["refine"]["scratch_file"] and streamed.stats["refine"]["scratch_file"]
    assert streamed.stats["refine"]["resident_bytes"] == 0
    assert in_memory.stats["refine"]["resident_bytes"] == in_memory.stats["refine"]["blocks_bytes"]
    assert streamed.stats["refine"]["blocks_bytes"] == in_memory.stats["refine"]["blocks_bytes"] > 0
    np.testing.assert_array_equal(streamed.train, in_memory.train)
    np.testing.assert_array_equal(streamed.test, in_memory.test)
    assert sorted(p.name for p in store.iterdir()) == before


def test_input_space_boundary_points_from_the_store_are_used(tmp_path):
    store = drifting_clusters(tmp_path / "s", n_train=120, n_test=20, epochs=3, boundary=True)
    result = fit(open_run(store), load_config(overrides=FAST + ["training.max_epochs=2"]))
    assert result.boundary_source == ["store"] * 3
    assert result.stats["complex"]["edges"]["boundary"] > 0
    assert all(len(p) > 0 for p in result.boundary_points)


def test_one_class_run_fits_without_boundary_points(tmp_path, caplog):
    store = drifting_clusters(tmp_path / "s", n_train=120, n_test=20, epochs=3, one_class=True)
    with caplog.at_level("WARNING"):
        result = fit(open_run(store), load_config(overrides=FAST + ["training.max_epochs=2"]))
    assert result.train.shape == (3, 120, 2)
    assert any("one class" in r.getMessage() for r in caplog.records)


def test_temporal_weight_sets_the_trajectory_weight(fitted):
    result = invoke("fit", fitted, "--overwrite", *sum((["--set", o] for o in FAST), []),
                    "--temporal-weight", "2.5")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_config(fitted / "fit" / "config.toml").refine.trajectory_weight == 2.5


def test_an_existing_fit_is_kept_unless_overwrite(fitted):
    before = (fitted / "fit" / "embedding.h5").read_bytes()
    result = invoke("fit", fitted, "--set", FAST[0])
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert (fitted / "fit" / "embedding.h5").read_bytes() == before


def test_a_failed_fit_leaves_the_previous_one_intact(fitted):
    before = (fitted / "fit" / "embedding.h5").read_bytes()
    result = invoke("fit", fitted, "--overwrite", "--set", "knn.n_neighbors=500", "--set", FAST[1])
    assert result.exit_code == 1, result.output
    assert "knn.n_neighbors=500" in result.output
    assert (fitted / "fit" / "embedding.h5").read_bytes() == before
    assert not [p for p in fitted.iterdir() if p.name.startswith(".fit")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "3"], "at least two"),
        (["--epochs", "3-9"], "not recorded (5-9); recorded: 0-4"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--set", "trainig.lr=0.1"], "did you mean 'training.lr'"),
        (["--preset", "imagenet"], "imagenet"),
        (["--temporal-weight", "-1"], "refine.trajectory_weight"),
        (["--temporal-weight", "1", "--set", "refine.enabled=false"], "acts only with the refinement"),
    ],
)
def test_bad_fit_requests_are_one_line_errors(fitted, args, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke("fit", fitted, "--overwrite", *args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unknown_knn_backend_is_a_usage_error(fitted):
    result = invoke("fit", fitted, "--knn", "annoy")
    assert result.exit_code == 2 and "annoy" in result.output


def test_nan_features_are_refused_naming_the_epoch(tmp_path):
    store = drifting_clusters(tmp_path / "s", n_train=50, n_test=10, epochs=3)
    import h5py

    with h5py.File(store / "epochs" / "epoch_0002.h5", "r+") as f:
        data = f["features"][...]
        data[:3, 0] = np.nan
        f["features"][...] = data
    with pytest.raises(InputError, match="epoch 2 has 3 samples with NaN"):
        fit(open_run(store), load_config(overrides=FAST))


@pytest.mark.parametrize("refine", ["true", "false"])
def test_nan_in_a_test_sample_is_refused_naming_the_epoch(tmp_path, refine):
    store = drifting_clusters(tmp_path / "s", n_train=50, n_test=10, epochs=3)
    import h5py

    test_row = int(np.flatnonzero(open_run(store).samples.mask("test"))[0])
    with h5py.File(store / "epochs" / "epoch_0001.h5", "r+") as f:
        data = f["features"][...]
        data[test_row, 0] = np.inf
        f["features"][...] = data
    overrides = FAST + ["training.max_epochs=1", f"refine.enabled={refine}"]
    reporter = RecordingReporter()
    with pytest.raises(InputError, match="epoch 1 has 1 samples with NaN or inf"):
        fit(open_run(store), load_config(overrides=overrides), reporter)
    assert "training" not in reporter.totals  # refused in the first pass, before any training


class RecordingReporter(Reporter):
    """Every stage's total and the steps reported done for it."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.stage = ""

    def start(self, stage: str, total: int) -> None:
        self.stage = stage
        self.totals[stage], self.done[stage] = total, 0

    def advance(self, steps: int = 1, **info) -> None:
        self.done[self.stage] += steps


def test_every_stage_reports_its_progress_to_the_end(tmp_path, caplog):
    store = drifting_clusters(tmp_path / "s", n_train=150, n_test=20, epochs=3)
    reporter = RecordingReporter()
    overrides = FAST + ["training.max_epochs=2", "refine.decoder_steps=25"]
    with caplog.at_level("INFO", logger="timevis_cli"):
        fit(open_run(store), load_config(overrides=overrides), reporter)
    assert set(reporter.totals) >= {"reduction", "training", "trajectories", "refinement", "decoder"}
    assert reporter.done == reporter.totals
    # the store has no boundary points: the feature-space fallback is said once
    said = [r.getMessage() for r in caplog.records if "feature-space boundary" in r.getMessage()]
    assert len(said) == 1 and "epoch(s) 0-2" in said[0]
    # init_size covering every sample: nothing to reduce, no reduction bar left unfilled
    reporter = RecordingReporter()
    fit(open_run(store), load_config(overrides=overrides + ["reduction.init_size=150"]), reporter)
    assert "reduction" not in reporter.totals and reporter.done == reporter.totals


def test_nan_in_a_stored_boundary_point_names_the_fix(tmp_path):
    store = drifting_clusters(tmp_path / "s", n_train=60, n_test=10, epochs=3, boundary=True)
    import h5py

    with h5py.File(store / "epochs" / "epoch_0002.h5", "r+") as f:
        data = f["boundary/features"][...]
        data[1, 0] = np.nan
        f["boundary/features"][...] = data
        n = len(data)
    with pytest.raises(InputError, match=rf"epoch 2 has 1 of {n} stored boundary points with NaN.*"
                       r"--set complex.boundary_source=feature"):  # fmt: skip
        fit(open_run(store), load_config(overrides=FAST))


def test_linear_head_attention_is_stored_once_per_class_pair():
    from timevis_callback.head import Head
    from timevis_cli.fit.losses import attention_weights
    from timevis_cli.fit.pipeline import vertex_attention

    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(5, 8)), rng.normal(size=5)
    head = Head([{"type": "Linear", "in_features": 8, "out_features": 5, "bias": True}],
                {"0.weight": weight.astype(np.float32), "0.bias": bias.astype(np.float32)})  # fmt: skip
    x = rng.normal(size=(200, 8)).astype(np.float32)
    table, index = vertex_attention(x, head, 0.05)
    dense = attention_weights(
        torch.from_numpy(x), torch.from_numpy(head(x)), torch.from_numpy(weight).float(), 0.05
    ).numpy()
    assert len(table) <= 10 < len(x)  # at most C(5, 2) distinct class pairs
    np.testing.assert_allclose(table[index], dense, rtol=1e-6, atol=1e-7)


def test_not_a_store(tmp_path):
    result = invoke("fit", tmp_path)
    assert result.exit_code == 1 and "not a timevis run store" in result.output


def test_config_errors_are_config_errors():
    with pytest.raises(ConfigError):
        load_config(overrides=["knn.n_neighbors=1"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("memory_mb", [2048, 0])
def test_a_fit_on_cuda_matches_the_cpu_fit_in_quality(tmp_path, memory_mb):
    # training, refinement (blocks resident on the GPU or read back from the scratch file) and
    # the decoder on CUDA: as faithful as the same fit on the CPU, and the CUDA kNN used
    store = drifting_clusters(tmp_path / "s", n_train=200, n_test=40, epochs=4)
    run = open_run(store)
    overrides = FAST + ["training.max_epochs=3", f"refine.memory_mb={memory_mb}"]
    fits = {d: fit(run, load_config(overrides=overrides + [f"fit.device={d}"])) for d in ("cpu", "cuda")}
    assert fits["cuda"].stats["device"].startswith("cuda")
    refined = fits["cuda"].stats["refine"]
    assert refined["scratch_file"] == (memory_mb == 0)
    assert refined["resident_bytes"] == (0 if memory_mb == 0 else refined["blocks_bytes"])
    for i, epoch in enumerate(fits["cpu"].epochs):
        features = run.features(epoch, split="train")
        on_cpu = nnpv(features, fits["cpu"].train[i], k=10)
        on_gpu = nnpv(features, fits["cuda"].train[i], k=10)
        assert np.isfinite(fits["cuda"].train[i]).all()
        assert on_gpu >= on_cpu - 0.1, f"epoch {epoch}: nnpv {on_gpu:.3f} on CUDA, {on_cpu:.3f} on the CPU"


def test_training_draws_are_capped_only_when_the_refinement_places_every_sample(tmp_path):
    run = open_run(drifting_clusters(tmp_path / "s", n_train=200, n_test=20, epochs=3))
    settings = FAST + ["training.max_epochs=1", "training.min_edges_per_epoch=0"]
    free = fit(run, load_config(overrides=settings + ["refine.enabled=false"]))
    assert free.report.edges_per_epoch > 300
    capped = fit(run, load_config(overrides=settings + ["training.max_edges_per_epoch=300"]))
    assert capped.report.edges_per_epoch == 300
    unrefined = fit(
        run,
        load_config(
            overrides=settings + ["training.max_edges_per_epoch=300", "refine.enabled=false"]
        ),
    )
    assert unrefined.report.edges_per_epoch == free.report.edges_per_epoch


def test_the_layout_graph_gets_every_tracked_samples_prediction_and_the_anchor_setting(tmp_path, monkeypatch):
    from timevis_cli.fit import pipeline

    store = drifting_clusters(tmp_path / "s", n_train=120, n_test=20, epochs=3)
    run = open_run(store)
    seen = []
    original = pipeline.layout_graph

    def spy(epochs, *args, **kwargs):
        seen.append(kwargs)
        points = list(epochs)
        seen.append(points)
        return original(points, *args, **kwargs)

    monkeypatch.setattr(pipeline, "layout_graph", spy)
    config = load_config(overrides=FAST + ["refine.prediction_anchors=3", "refine.cross_prediction_weight=0.25"])
    fit(run, config)
    kwargs, points = seen
    assert kwargs["anchors"] == 3 and kwargs["cross_class_weight"] == 0.25
    train, test = run.samples.mask("train"), run.samples.mask("test")
    for epoch, p in zip(run.epochs, points, strict=True):
        n = p.n_tracked
        # the model's predictions (the stored logits' argmax), train and test; boundary points none
        np.testing.assert_array_equal(p.classes[:n][train], run.logits(epoch, "train").argmax(axis=1))
        np.testing.assert_array_equal(p.classes[:n][test], run.logits(epoch, "test").argmax(axis=1))
        assert (p.classes[n:] == -1).all()


@pytest.mark.parametrize("stored", [True, False])
def test_the_decoder_learns_the_features_the_projector_was_trained_on(tmp_path, monkeypatch, stored):
    # the refinement drops the complex's features and reads them back for the decoder fit: the
    # same rows, in the same order, bit for bit (stored and feature-space boundary points alike)
    from timevis_cli.fit import pipeline

    store = drifting_clusters(tmp_path / "s", n_train=120, n_test=20, epochs=3, boundary=stored)
    trained, decoded = [], []
    fit_projector, fit_decoder = pipeline.fit_projector, pipeline.fit_decoder

    def spy_projector(features, *args, **kwargs):
        trained.append(features.clone())
        return fit_projector(features, *args, **kwargs)

    def spy_decoder(projector, positions, features, *args, **kwargs):
        decoded.append(features.clone())
        return fit_decoder(projector, positions, features, *args, **kwargs)

    monkeypatch.setattr(pipeline, "fit_projector", spy_projector)
    monkeypatch.setattr(pipeline, "fit_decoder", spy_decoder)
    result = fit(open_run(store), load_config(overrides=FAST + ["training.max_epochs=1"]))
    assert set(result.boundary_source) == {"store" if stored else "feature"}
    assert trained[0].shape[0] > 0 and torch.equal(trained[0], decoded[0])


def test_the_refinement_graph_searches_with_torch_instead_of_faiss_on_the_cpu(tmp_path, monkeypatch):
    # FAISS's flat CPU index takes about three times torch's exact search for an epoch's
    # every-point kNN; the complex keeps the configured backend
    pytest.importorskip("faiss")
    from timevis_cli.fit import pipeline
    from timevis_cli.fit.neighbors import FaissCPU

    backends = []
    original = pipeline.layout_graph

    def spy(epochs, backend, *args, **kwargs):
        backends.append(backend)
        return original(epochs, backend, *args, **kwargs)

    monkeypatch.setattr(pipeline, "layout_graph", spy)
    store = drifting_clusters(tmp_path / "s", n_train=120, n_test=20, epochs=3)
    result = fit(open_run(store), load_config(overrides=FAST + ["training.max_epochs=1", "knn.backend=faiss-cpu"]))
    assert result.stats["knn_backend"] == FaissCPU.__name__
    assert len(backends) == 1 and isinstance(backends[0], TorchExact)
