"""The DVI baseline (``timevis fit --method dvi``): per-epoch models, warm starts, the temporal
term, the fit/ outputs and everything that reads them (render, eval, the Python API)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from stores import drifting_clusters

from timevis_callback import open_run
from timevis_cli.cli import main
from timevis_cli.config import load_config
from timevis_cli.errors import ConfigError, InputError, StoreError
from timevis_cli.fit import dvi
from timevis_cli.fit.io import load_fit, save_fit
from timevis_cli.fit.neighbors import TorchExact
from timevis_cli.fit.pipeline import fit

# short passes: the tests check behaviour, not the layout's quality
FAST = ["fit.method=dvi", "dvi.max_passes=2", "dvi.edges_factor=2"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _config(*extra: str):
    return load_config(overrides=[*FAST, *extra])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return drifting_clusters(
        tmp_path_factory.mktemp("dvi") / "store", n_train=150, n_test=30, epochs=4, boundary=True
    )


def _state(projector) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in projector.state_dict().items()}


def _equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def recorded(store):
    """The fit of ``store``, and each epoch's weights as its training started."""
    started: list[dict[str, torch.Tensor]] = []
    train_epoch = dvi.train_epoch

    def recording(projector, *args, **kwargs):
        started.append(_state(projector))
        return train_epoch(projector, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dvi, "train_epoch", recording)
        return fit(open_run(store), _config()), started


@pytest.fixture(scope="module")
def result(recorded):
    return recorded[0]


# --- the method ----------------------------------------------------------------------------------


def test_each_epoch_starts_from_the_previous_epochs_final_weights(recorded):
    result, started = recorded
    models = result.model.epoch_projectors
    assert len(started) == len(models) == 4
    for t in range(1, 4):
        assert _equal_states(started[t], _state(models[t - 1])), f"epoch {t} did not warm-start"
        # and then trained on (its saved model is its own, not its predecessor's)
        assert not _equal_states(_state(models[t]), _state(models[t - 1]))
    assert result.stats["method"] == "dvi"


def test_the_first_epoch_has_no_temporal_term_and_the_others_are_weighted_by_npr(result):
    first, *rest = result.report.per_epoch
    assert first["npr_mean"] == 0 and first["temporal_weight"] == 0
    assert all(v == 0 for v in first["temporal"])
    for epoch in rest:
        assert 0 < epoch["npr_mean"] <= 1
        assert epoch["temporal_weight"] == pytest.approx(1.0 * epoch["npr_mean"], abs=1e-6)
        assert epoch["temporal"][-1] > 0
    assert result.report.epochs_run == sum(e["passes"] for e in result.report.per_epoch)


def test_each_epochs_npr_is_the_knn_overlap_with_the_previous_epoch(store, result):
    run = open_run(store)
    backend = TorchExact("cpu")
    for before, after, report in zip(
        result.epochs, result.epochs[1:], result.report.per_epoch[1:], strict=False
    ):
        npr = dvi.neighbour_preservation(
            run.features(before, split="train"), run.features(after, split="train"), 15, backend
        )
        assert report["npr_mean"] == pytest.approx(npr.mean(), abs=2e-3)  # kNN ties aside


def _mean_drift(train: np.ndarray) -> float:
    """Mean 2-D displacement of the train samples between consecutive epochs."""
    return float(np.linalg.norm(np.diff(train, axis=0), axis=2).mean())


def test_a_larger_temporal_weight_moves_the_samples_less_between_epochs(tmp_path):
    # features that change little between epochs: what moves the map is the model
    path = drifting_clusters(tmp_path / "slow", n_train=150, n_test=30, epochs=4, drift=0.3)
    run = open_run(path)
    free = fit(run, _config("dvi.lambda2=0"))
    held = fit(run, _config("dvi.lambda2=10"))
    assert _mean_drift(held.train) < 0.9 * _mean_drift(free.train)
    assert all(v == 0 for e in free.report.per_epoch for v in e["temporal"])


def test_neighbour_preservation_is_each_samples_knn_overlap():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    backend = TorchExact("cpu")
    np.testing.assert_array_equal(dvi.neighbour_preservation(x, x, 5, backend), np.ones(40))
    # a line turned around keeps every neighbourhood; a shuffled one keeps few
    line = np.arange(30, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(dvi.neighbour_preservation(line, -line, 4, backend), np.ones(30))
    shuffled = line[rng.permutation(30)]
    assert dvi.neighbour_preservation(line, shuffled, 4, backend).mean() < 0.5
    # row 0's neighbours {1, 2} at first, {1, 3} after: half kept
    before = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
    after = np.array([[0.0], [1.0], [10.0], [2.0]], np.float32)
    assert dvi.neighbour_preservation(before, after, 2, backend)[0] == 0.5
    with pytest.raises(InputError, match="same samples"):
        dvi.neighbour_preservation(before, after[:3], 2, backend)


# --- the model: transforms and decoders per epoch ------------------------------------------------


def test_positions_are_each_epochs_encoder_on_its_features(store, result):
    run = open_run(store)
    train, test = run.samples.mask("train"), run.samples.mask("test")
    for i, epoch in enumerate(result.epochs):
        features = run.features(epoch)
        np.testing.assert_array_equal(
            result.transform(features[train], epoch=epoch), result.train[i]
        )
        np.testing.assert_array_equal(result.transform(features[test], epoch=epoch), result.test[i])
    with pytest.raises(InputError, match="pass epoch="):
        result.transform(run.features(0)[train])
    with pytest.raises(InputError, match="pass epoch="):
        result.inverse_transform(result.train[0])
    with pytest.raises(InputError, match="epoch 9 was not fitted"):
        result.inverse_transform(result.train[0], epoch=9)


def test_decoder_layers_are_each_epochs_own_decoder(result):
    points = np.random.default_rng(1).normal(size=(64, 2)).astype(np.float32) * 3
    chains = []
    for epoch in result.epochs:
        layers = result.model.decoder_layers(epoch)
        assert len(layers) == result.model.projector.depth + 2
        y = torch.from_numpy(points).double()
        for i, (weight, bias) in enumerate(layers):
            y = y @ weight.T + bias
            if i < len(layers) - 1:
                y = torch.relu(y)
        np.testing.assert_allclose(
            y.numpy(), result.inverse_transform(points, epoch=epoch), rtol=1e-4, atol=1e-4
        )
        chains.append(y)
    assert not torch.allclose(chains[0], chains[-1])  # one decoder per epoch, not one shared
    decode = result.model.decoder("cpu")  # what render decodes its landscapes with
    with torch.no_grad():
        for index, epoch in enumerate(result.epochs):
            assert result.model.decode_index(epoch) == index
            np.testing.assert_array_equal(
                decode(torch.from_numpy(points), index).numpy(),
                result.inverse_transform(points, epoch=epoch),
            )
        with pytest.raises(InputError, match="one decoder per epoch"):
            decode(torch.from_numpy(points))
    with pytest.raises(InputError, match="pass epoch="):
        result.model.decoder_layers(None)


# --- fit/ on disk ---------------------------------------------------------------------------------


def test_save_and_load_round_trip_bitwise(store, result):
    run = open_run(store)
    save_fit(run.path, result, overwrite=True)
    saved = torch.load(run.path / "fit" / "projector.pt", weights_only=True)
    assert "projector" not in saved and len(saved["epoch_projectors"]) == len(result.epochs)
    report = json.loads((run.path / "fit" / "fit.json").read_text())
    assert report["method"] == "dvi" and report["config"]["fit"]["method"] == "dvi"
    assert len(report["training"]["per_epoch"]) == len(result.epochs)
    loaded = load_fit(run)
    assert loaded.model.tracked is None  # no refinement: transform is the epoch's encoder
    for mine, theirs in zip(
        result.model.epoch_projectors, loaded.model.epoch_projectors, strict=True
    ):
        assert _equal_states(_state(mine), _state(theirs))
    points = np.random.default_rng(2).normal(size=(20, 2)).astype(np.float32)
    features = run.features(2, split="train")
    for i, epoch in enumerate(result.epochs):
        np.testing.assert_array_equal(loaded.embedding(epoch)["train"], result.train[i])
        np.testing.assert_array_equal(
            loaded.inverse_transform(points, epoch=epoch),
            result.inverse_transform(points, epoch=epoch),
        )
    np.testing.assert_array_equal(
        loaded.transform(features, epoch=2), result.transform(features, epoch=2)
    )


def test_a_damaged_dvi_projector_file_is_one_line(store, result, tmp_path):
    run = open_run(store)
    save_fit(run.path, result, overwrite=True)
    file = run.path / "fit" / "projector.pt"
    saved = torch.load(file, weights_only=True)
    saved["epoch_projectors"] = saved["epoch_projectors"][:2]
    torch.save(saved, file)
    with pytest.raises(StoreError, match="holds 2 per-epoch models for 4 fitted epochs") as info:
        load_fit(run)
    assert "\n" not in str(info.value)
    del saved["epoch_projectors"]
    torch.save(saved, file)
    with pytest.raises(StoreError, match="no 'epoch_projectors' entry"):
        load_fit(run)


# --- the command line -----------------------------------------------------------------------------


def test_cli_fit_render_and_eval_run_on_a_dvi_fit(tmp_path):
    path = drifting_clusters(tmp_path / "store", n_train=120, n_test=24, epochs=3, boundary=True)
    sets = [arg for item in FAST[1:] for arg in ("--set", item)]
    done = invoke("fit", path, "--method", "dvi", *sets)
    assert done.exit_code == 0, done.output
    assert json.loads((path / "fit" / "fit.json").read_text())["method"] == "dvi"
    done = invoke("render", path, "--resolution", "32", "--no-gif", "--html", "--jobs", "1")
    assert done.exit_code == 0, done.output
    assert (path / "render" / "epoch_0002.png").is_file() and (
        path / "render" / "index.html"
    ).is_file()
    done = invoke("eval", path, "--temporal-k", "2")
    assert done.exit_code == 0, done.output
    metrics = json.loads((path / "eval" / "metrics.json").read_text())
    assert "ppr" in json.dumps(metrics)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "dvi.lamda2=1"],
            "unknown key 'dvi.lamda2' in --set; did you mean 'dvi.lambda2'?",
        ),
        (["--set", "dvi.lambda2=-1"], "dvi.lambda2 = -1.0 in --set is out of range"),
        (["--set", "fit.method=umap"], 'fit.method = "umap" in --set is not accepted'),
        (["--method", "dvi", "--temporal-weight", "0.3"], "--set dvi.lambda2=VALUE instead"),
    ],
)
def test_bad_dvi_settings_are_one_line_errors(store, args, message):
    done = invoke("fit", store, "--overwrite", *args)
    assert done.exit_code == 1
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.output


def test_dvi_section_in_a_config_file(tmp_path):
    file = tmp_path / "dvi.toml"
    file.write_text('[fit]\nmethod = "dvi"\n\n[dvi]\nlambda2 = 0.5\nmax_passes = 3\n')
    config = load_config(file)
    assert (config.fit.method, config.dvi.lambda2, config.dvi.max_passes) == ("dvi", 0.5, 3)
    file.write_text("[dvi]\nlambda3 = 1\n")
    with pytest.raises(ConfigError, match="'dvi.lambda3'"):
        load_config(file)
    assert load_config().fit.method == "timevis"


def test_a_collapsed_epoch_is_warned_about_with_the_fix(caplog):
    caplog.set_level("WARNING", logger="timevis_cli.fit.dvi")
    dvi._warn_if_collapsed(np.full((50, 2), 0.3, np.float32), 0, [1, 2, 3])
    assert "epoch 0's map collapsed to a point" in caplog.text and "--epochs 1-" in caplog.text
    caplog.clear()
    spread = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    dvi._warn_if_collapsed(spread, 0, [1])
    assert caplog.text == ""
