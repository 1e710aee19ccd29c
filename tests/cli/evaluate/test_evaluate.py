"""``timevis eval``'s evaluator: every metric per epoch and split, streaming, outputs, errors."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from stores import drifting_clusters

from timevis_callback import open_run
from timevis_cli.config import Config, load_config
from timevis_cli.errors import InputError
from timevis_cli.evaluate import loop as evaluate_module
from timevis_cli.evaluate import metrics as m
from timevis_cli.evaluate.loop import (
    CONVENTIONS,
    METRICS,
    EvalResult,
    evaluate,
    select_eval_epochs,
    write_eval,
)
from timevis_cli.fit import io as fit_io
from timevis_cli.fit.io import LoadedFit, load_fit, save_fit
from timevis_cli.fit.neighbors import TorchExact
from timevis_cli.fit.pipeline import fit

K = 10
TEMPORAL_K = 3
# float64 distances: near-ties in 2-D resolve the same way however the lists are requested
EXACT = TorchExact(precision="float64")
PER_EPOCH = ("nnpv", "boundary", "ppr", "landscape", "recon", "temp_l", "temp_g", "temp_g_spearman")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    store = drifting_clusters(tmp_path_factory.mktemp("eval") / "store", n_train=200, n_test=40)
    config = load_config(overrides=["training.max_epochs=3", "reduction.init_size=100"])
    save_fit(store, fit(open_run(store), config), overwrite=False)
    run = open_run(store)
    return run, load_fit(run)


@pytest.fixture(scope="module")
def result(fitted):
    run, loaded = fitted
    return evaluate(run, loaded, loaded.epochs, k=K, temporal_k=TEMPORAL_K, knn_backend=EXACT)


def _torch_knn(data, queries, k):
    return EXACT.query(data, queries, k=k)[0]


def test_every_metric_for_every_epoch_and_split_in_range(result):
    assert result.splits == ["train", "test"]
    assert [(r.epoch, r.split) for r in result.rows] == [
        (e, s) for e in result.epochs for s in ("train", "test")
    ]
    for row in result.rows:
        assert set(row.values) == set(PER_EPOCH), row
        v = {name: row.values[name] for name in PER_EPOCH}
        for name, by_convention in v.items():
            assert set(by_convention) == set(CONVENTIONS)
            assert all(math.isfinite(x) for x in by_convention.values()), (name, row)
        where = f"epoch {row.epoch} {row.split}"
        assert 0 <= v["nnpv"]["paper"] <= 1 and 1 <= v["nnpv"]["reference"] <= K, where
        assert 0 <= v["boundary"]["paper"] <= 1 and 0 <= v["boundary"]["reference"] <= K, where
        assert 0 <= v["ppr"]["paper"] <= 1 and v["recon"]["paper"] >= 0, where
        assert 0 <= v["temp_l"]["paper"] <= 1, where
        assert 0 <= v["temp_l"]["reference"] <= TEMPORAL_K, where
        for name in ("temp_g", "temp_g_spearman"):
            assert all(-1 <= x <= 1 for x in v[name].values()), where
        assert v["nnpv"]["paper"] >= 0.15, f"{where}: nnpv {v['nnpv']['paper']}"
    for split in result.splits:
        assert set(result.temporal[split]) == {"temppv", "temp_l", "temp_g", "temp_g_spearman"}
        assert set(result.averages[split]) == set(METRICS)
        temppv = result.temporal[split]["temppv"]
        assert all(math.isnan(x) or -1 <= x <= 1 for x in temppv.values()), temppv
        assert result.temporal[split]["temp_l"]["paper"] >= 0.5, result.temporal[split]
    assert result.knn_backend == "TorchExact"


def test_values_equal_the_metric_functions_on_whole_arrays(fitted, result):
    run, loaded = fitted
    for split in ("train", "test"):
        high = np.stack([run.features(e, split=split) for e in loaded.epochs])
        low = np.stack([loaded.embedding(e)[split] for e in loaded.epochs])
        for i, epoch in enumerate(loaded.epochs):
            stored = loaded.embedding(epoch)
            ref = (
                (run.features(epoch, split="train"), stored["train"])
                if split == "test"
                else (None, None)
            )
            for c in CONVENTIONS:
                expected = m.nnpv(high[i], low[i], K, *ref, convention=c, knn=_torch_knn)
                assert result.value("nnpv", split, epoch, c) == pytest.approx(expected)
                expected = m.boundary_preservation(
                    high[i],
                    low[i],
                    stored["boundary_features"],
                    stored["boundary"],
                    K,
                    convention=c,
                    knn=_torch_knn,
                )
                assert result.value("boundary", split, epoch, c) == pytest.approx(expected)
            head = run.head(epoch)
            recon = loaded.model.inverse_transform(low[i], epoch=epoch)
            expected = m.ppr(head(high[i]).argmax(1), head(recon).argmax(1))
            assert result.value("ppr", split, epoch) == pytest.approx(expected)
            assert result.value("recon", split, epoch) == pytest.approx(
                m.recon_error(high[i], recon), rel=1e-6
            )
        for c in CONVENTIONS:
            scores = m.temporal_local_scores(high, low, TEMPORAL_K, convention=c)
            np.testing.assert_allclose(result.series("temp_l", split, c), scores.mean(axis=1))
            assert result.temporal[split]["temp_l"][c] == pytest.approx(scores.mean())
            for name, method in (("temp_g", "kendall"), ("temp_g_spearman", "spearman")):
                expected = m.temporal_global(high, low, method, convention=c)
                assert result.temporal[split][name][c] == pytest.approx(expected)
            expected = m.temppv(high, low, K, convention=c, knn=_torch_knn)
            got = result.temporal[split]["temppv"][c]
            assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def _numbers(result: EvalResult) -> dict:
    data = result.to_dict()
    del data["seconds"]
    return data


def test_streaming_over_small_blocks_equals_one_block(fitted, result, monkeypatch):
    run, loaded = fitted
    reads = []
    read_rows = evaluate_module._read_rows

    def spy(reader, rows):
        block = read_rows(reader, rows)
        reads.append(block.shape)
        return block

    monkeypatch.setattr(evaluate_module, "_read_rows", spy)
    one_block = evaluate(run, loaded, loaded.epochs, K, TEMPORAL_K, EXACT, block_size=10_000)
    assert sorted(reads) == [(5, 40, 16), (5, 200, 16)]
    reads.clear()
    # the default block size comes from the memory budget: here 7 samples per block
    monkeypatch.setattr(evaluate_module, "TEMPORAL_BLOCK_ELEMENTS", 5 * 16 * 7)
    streamed = evaluate(run, loaded, loaded.epochs, K, TEMPORAL_K, EXACT)
    assert max(shape[1] for shape in reads) == 7
    assert sum(shape[1] for shape in reads) == 240
    a, b = _numbers(one_block), _numbers(streamed)
    assert a.keys() == b.keys()
    for key in a:
        if key in ("per_epoch", "temporal", "averages", "worst"):
            np.testing.assert_allclose(_flat(a[key]), _flat(b[key]), rtol=1e-12, atol=1e-12)
        else:
            assert a[key] == b[key], key


def _flat(value) -> list[float]:
    if isinstance(value, dict):
        return [x for key in sorted(value) for x in _flat(value[key])]
    if isinstance(value, list):
        return [x for item in value for x in _flat(item)]
    if isinstance(value, str):
        return []
    return [float("nan") if value is None else float(value)]


def test_read_rows_slices_scattered_rows(fitted):
    run, loaded = fitted
    rows = np.array([0, 3, 150, 239])  # span far longer than the block: a point selection
    with run.feature_reader(loaded.epochs) as reader:
        block = evaluate_module._read_rows(reader, rows)
    expected = np.stack([run.features(e)[rows] for e in loaded.epochs])
    np.testing.assert_array_equal(block, expected)
    rows = np.array([5, 6, 8])  # a short span: read contiguously, then picked
    with run.feature_reader(loaded.epochs[1:3]) as reader:
        block = evaluate_module._read_rows(reader, rows)
    np.testing.assert_array_equal(block[1], run.features(loaded.epochs[2])[rows])


def test_write_eval_outputs(fitted, result):
    run, _ = fitted
    folder = write_eval(run.path, result)
    assert folder == run.path / "eval"
    assert {p.name for p in folder.iterdir()} == {"metrics.json", "metrics.md", "metrics.png"}

    text = (folder / "metrics.json").read_text()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON {name}"))
    assert data["format"] == "timevis-eval" and data["k"] == K
    assert data["higher_is_better"]["recon"] is False and data["higher_is_better"]["nnpv"]
    again = EvalResult.from_json(text)
    assert again.to_json() == result.to_json()
    assert again.value("nnpv", "test", 2) == result.value("nnpv", "test", 2)

    markdown = (folder / "metrics.md").read_text()
    for epoch in result.epochs:
        assert markdown.count(f"\n| {epoch} | ") == 2, f"epoch {epoch} rows"
    assert "## Train" in markdown and "## Test" in markdown and "## Averages" in markdown
    assert "nnpv(10) ↑" in markdown and "recon ↓" in markdown and "temppv ↓" in markdown
    assert "How to read" in markdown

    png = folder / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 20_000 < png.stat().st_size < 2_000_000
    with Image.open(png) as image:
        assert image.size[0] >= 800 and image.size[1] >= 400

    write_eval(run.path, result)  # overwriting a previous eval
    assert {p.name for p in folder.iterdir()} == {"metrics.json", "metrics.md", "metrics.png"}
    assert not [p for p in run.path.iterdir() if p.name.startswith(".eval")]


def test_summary_gives_every_metrics_mean_and_worst_epoch(fitted, result):
    run, _ = fitted
    for split in result.splits:
        for metric in PER_EPOCH:
            series = result.series(metric, split)
            assert len(series) == len(result.epochs)  # every evaluated epoch
            pick = np.argmin if m.HIGHER_IS_BETTER[metric.removesuffix("_spearman")] else np.argmax
            at = int(pick(series))
            assert result.worst[split][metric] == {"value": series[at], "epoch": result.epochs[at]}
        assert "temppv" not in result.worst[split]
    ppr = result.worst["train"]["ppr"]
    assert ppr["value"] == min(result.series("ppr", "train"))
    data = json.loads(write_eval(run.path, result).joinpath("metrics.json").read_text())
    assert data["worst"]["train"]["ppr"] == ppr
    markdown = (run.path / "eval" / "metrics.md").read_text()
    worst_row = next(line for line in markdown.splitlines() if line.startswith("| train worst |"))
    assert f"{ppr['value']:.3f} (epoch {ppr['epoch']})" in worst_row
    assert "| train mean |" in markdown and "| test worst |" in markdown
    lines = result.summary_lines()
    assert [line.split(":")[0] for line in lines] == result.splits
    mean = result.averages["train"]["ppr"]["paper"]
    assert f"ppr mean {mean:.3f} worst {ppr['value']:.3f} (epoch {ppr['epoch']})" in lines[0]
    assert "temppv " in lines[0] and "temppv mean" not in lines[0]


def test_too_few_epochs_and_boundary_points_give_nan_with_notes(fitted):
    run, loaded = fitted
    n_boundary = max(len(loaded.embedding(e)["boundary"]) for e in (0, 4))
    k = n_boundary + 1
    result = evaluate(run, loaded, [0, 4], k=k, temporal_k=TEMPORAL_K)
    assert all(math.isnan(r.values["boundary"]["paper"]) for r in result.rows)
    assert all(math.isfinite(r.values["nnpv"]["paper"]) for r in result.rows)
    assert math.isnan(result.temporal["train"]["temppv"]["paper"])
    assert math.isnan(result.value("temp_g", "test", 4))
    assert any(f"needs at least {k}" in note for note in result.notes), result.notes
    assert any("at least 3 epochs" in note for note in result.notes), result.notes
    json.loads(result.to_json())
    assert "n/a" in result.to_markdown() and "## Notes" in result.to_markdown()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": [3, 7, 8]}, "epochs 7-8 are not in the fit (fitted: 0-4)"),
        ({"epochs": []}, "no epochs"),
        ({"k": 200}, "k=200 needs more than 200 training samples"),
        ({"k": 0}, "k=0 must be an integer >= 1"),
        ({"temporal_k": 5}, "temporal_k=5 must be <= 4"),
    ],
)
def test_bad_requests_are_input_errors(fitted, kwargs, message):
    run, loaded = fitted
    request = {"epochs": loaded.epochs, **kwargs}
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(run, loaded, **request)


def test_temporal_k_counting_every_other_epoch_is_flagged(fitted, caplog):
    run, loaded = fitted
    with caplog.at_level("WARNING", logger="timevis_cli.evaluate.loop"):
        result = evaluate(run, loaded, loaded.epochs, k=K, temporal_k=len(loaded.epochs) - 1)
    assert "every map scores 1" in caplog.text and "--temporal-k 2" in caplog.text
    assert result.value("temp_l", "train") == pytest.approx(1.0)


def test_epochs_outside_the_fit_say_to_refit(fitted):
    run, loaded = fitted
    narrow = LoadedFit(loaded.model, loaded.config, loaded.run_id, [0, 1, 2], loaded.path)
    with pytest.raises(InputError, match="refit"):
        evaluate(run, narrow, [2, 3])
    assert select_eval_epochs(run, narrow, "all") == [0, 1, 2]
    assert select_eval_epochs(run, narrow, "1-2") == [1, 2]
    with pytest.raises(InputError, match="epochs 3-4 are not in the fit"):
        select_eval_epochs(run, narrow, "2-")
    with pytest.raises(InputError, match="not recorded"):
        select_eval_epochs(run, narrow, "9")


# --------------------------------------------------------------------------- identity map


@dataclass
class IdentityModel:
    """A "projector" of 2-D features that is the identity both ways."""

    device: torch.device = torch.device("cpu")

    def transform(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float32)

    def inverse_transform(self, points: np.ndarray, epoch: int | None = None) -> np.ndarray:
        return np.asarray(points, dtype=np.float32)


def _identity_fit(store: Path) -> LoadedFit:
    """A fit folder whose stored embedding is the store's own 2-D features."""
    run = open_run(store)
    folder = store / fit_io.FIT_DIR
    folder.mkdir()
    train = np.stack([run.features(e, split="train") for e in run.epochs])
    test = np.stack([run.features(e, split="test") for e in run.epochs])
    boundary = [run.boundary(e).features for e in run.epochs]
    with h5py.File(folder / fit_io.EMBEDDING_FILE, "w") as f:
        f.attrs[fit_io.ATTR_RUN_ID] = run.run_id
        f[fit_io.EPOCHS] = np.asarray(run.epochs, np.int64)
        f[fit_io.TRAIN] = train
        f[fit_io.TEST] = test
        f[fit_io.BOUNDARY_POINTS] = np.concatenate(boundary).astype(np.float32)
        f[fit_io.BOUNDARY_FEATURES] = np.concatenate(boundary).astype(np.float16)
        f[fit_io.BOUNDARY_PAIR] = np.concatenate([run.boundary(e).pair for e in run.epochs])
        f[fit_io.BOUNDARY_OFFSETS] = np.r_[0, np.cumsum([len(b) for b in boundary])]
    return LoadedFit(IdentityModel(), Config(), run.run_id, list(run.epochs), folder)


def test_identity_map_scores_perfectly(tmp_path):
    store = drifting_clusters(
        tmp_path / "flat", dim=2, n_train=80, n_test=20, epochs=4, boundary=True
    )
    run = open_run(store)
    result = evaluate(run, _identity_fit(store), run.epochs, k=5, temporal_k=2)
    assert not result.notes, result.notes
    for row in result.rows:
        where = f"epoch {row.epoch} {row.split}"
        assert row.values["nnpv"] == {"paper": 1.0, "reference": 5.0}, where
        assert row.values["boundary"] == {"paper": 1.0, "reference": 5.0}, where
        assert row.values["ppr"]["paper"] == 1.0 and row.values["recon"]["paper"] == 0.0, where
        assert row.values["temp_l"] == {"paper": 1.0, "reference": 2.0}, where
        for name in ("temp_g", "temp_g_spearman"):
            assert row.values[name]["paper"] == pytest.approx(1.0), (name, where)
            assert row.values[name]["reference"] == pytest.approx(1.0), (name, where)
