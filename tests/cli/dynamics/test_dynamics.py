"""``timevis dynamics``: the per-sample measures on hand-made logits, the streaming pass over a
store, the ``dynamics/`` outputs (whole or nothing), bad inputs, and flipped digits labels."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from timevis_callback import open_run
from timevis_callback.writer import RunHeader, write_epoch, write_run
from timevis_cli.cli import main
from timevis_cli.dynamics import measures as dm
from timevis_cli.dynamics import outputs as do
from timevis_cli.dynamics.measures import (
    NEVER,
    NO_CLASS,
    DynamicsSettings,
    collect_trajectories,
    compute_dynamics,
    dynamics_from_logits,
    select_epochs,
)
from timevis_cli.errors import ConfigError, InputError


def _onehot(classes: list[int], num_classes: int = 3, high: float = 5.0) -> np.ndarray:
    """Logits [N, C] predicting ``classes`` (``high`` on the class, 0 elsewhere)."""
    out = np.zeros((len(classes), num_classes), np.float32)
    out[np.arange(len(classes)), classes] = high
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _store(
    path: Path,
    logits: np.ndarray,
    labels: np.ndarray,
    splits: np.ndarray | None = None,
    epochs: list[int] | None = None,
) -> Path:
    """A run store whose epoch ``epochs[e]`` holds ``logits[e]`` ([E, N, C]); 2-d features."""
    n_epochs, n, classes = logits.shape
    splits = np.zeros(n, np.uint8) if splits is None else np.asarray(splits, np.uint8)
    ids = np.zeros(n, np.int64)
    for code in (0, 1):
        ids[splits == code] = np.arange(int((splits == code).sum()))
    header = RunHeader(
        run_id="dynamics-test",
        feature_layer="fc",
        feature_io="input",
        feature_dim=2,
        num_classes=classes,
        class_names=[f"c{c}" for c in range(classes)],
        head_spec=[{"type": "Linear", "name": "fc", "in_features": 2, "out_features": classes,
                    "bias": True}],  # fmt: skip
    )
    write_run(path, header, ids=ids, splits=splits, labels=labels)
    for index, epoch in enumerate(epochs if epochs is not None else range(n_epochs)):
        write_epoch(
            path,
            epoch,
            features=np.zeros((n, 2), np.float32),
            logits=logits[index],
            head_state={"0.weight": np.zeros((classes, 2)), "0.bias": np.zeros(classes)},
        )
    return path


def _invoke(*args: str):
    return CliRunner().invoke(main, ["-q", "dynamics", *(str(a) for a in args)])


def _one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    # the reader's warnings about damaged epoch files may precede the one error line
    lines = [
        line
        for line in result.output.splitlines()
        if line.strip() and not line.startswith("WARNING timevis_callback.reader")
    ]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- the measures


def test_every_measure_on_hand_made_logits():
    # label 0 for all; predicted classes per epoch (epochs 2, 4, 6, 8):
    predicted = [
        [0, 0, 0, 0],  # learned from the first epoch on
        [1, 0, 1, 0],  # forgotten once, learned for good at the last epoch
        [2, 2, 2, 2],  # never learned, always the same other class: the suspect
        [1, 2, 0, 0],  # learned at epoch 6, two other classes before
        [0, 0, 0, 1],  # forgotten at the last epoch
    ]
    epochs = [2, 4, 6, 8]
    logits = [_onehot([row[e] for row in predicted]) for e in range(4)]
    labels = np.zeros(5, np.int64)
    d = dynamics_from_logits(iter(logits), labels, epochs)

    p_hit, p_miss = _softmax(np.array([5.0, 0, 0]))[[0, 1]]  # p(label) when right / wrong
    correct = np.array(predicted) == 0
    p = np.where(correct, p_hit, p_miss)
    np.testing.assert_allclose(d.confidence, p.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(d.variability, p.std(axis=1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d.correctness, [1, 0.5, 0, 0.5, 0.75])
    assert d.forgetting.tolist() == [0, 1, 0, 0, 1]
    assert d.first_learned.tolist() == [2, 8, NEVER, 6, NEVER]
    assert d.flips.tolist() == [0, 3, 0, 2, 1]
    assert d.suggested.tolist() == [NO_CLASS, 1, 2, 1, 1]  # sample 3: 1 and 2 tie -> 1
    np.testing.assert_allclose(d.agreement, [0, 0.5, 1, 0.25, 0.25])
    assert d.margin.shape == (5, 4) and d.margin.dtype == np.float32
    np.testing.assert_allclose(d.margin, np.where(correct, 5.0, -5.0))
    assert d.predicted.tolist() == predicted
    assert d.region.tolist() == ["easy", "ambiguous", "hard", "ambiguous", "ambiguous"]
    expected = (1 - d.confidence) * d.agreement * (1 - 2 * d.variability)
    np.testing.assert_allclose(d.suspect, expected)
    assert d.suspect[0] == 0.0
    assert d.ranking()[0] == 2  # the never-learned, consistently "2" sample leads
    events = d.events()
    assert events["forgetting"].tolist() == [0, 0, 1, 1]  # sample 1 at epoch 6, 4 at 8
    assert events["learning"].tolist() == [0, 1, 1, 1]
    assert events["flips"].tolist() == [0, 2, 2, 2]
    np.testing.assert_allclose(events["accuracy"], correct.mean(axis=0))


def test_probability_and_margin_against_a_direct_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(50, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 50)
    np.testing.assert_allclose(
        dm.true_class_probability(logits, labels),
        _softmax(logits.astype(np.float64))[np.arange(50), labels],
        rtol=1e-6,
    )
    others = np.where(np.eye(7, dtype=bool)[labels], -np.inf, logits)
    np.testing.assert_allclose(
        dm.true_class_margin(logits, labels), logits[np.arange(50), labels] - others.max(axis=1)
    )
    big = np.array([[1e4, -1e4, 0.0]], np.float32)  # no overflow
    assert dm.true_class_probability(big, np.array([1]))[0] == 0.0
    assert dm.true_class_probability(big, np.array([0]))[0] == 1.0


def test_the_streaming_pass_equals_the_measure_functions():
    rng = np.random.default_rng(2)
    logits = [rng.normal(scale=3.0, size=(40, 6)).astype(np.float32) for _ in range(3)]
    logits[1][:10, 1] = logits[1][:10, 4]  # ties: the lower class wins
    logits[2][:5] = 0.0  # every class ties
    labels = rng.integers(0, 6, 40)
    t = collect_trajectories(iter(logits), labels, 3)
    for e, z in enumerate(logits):
        np.testing.assert_allclose(t.p_true[:, e], dm.true_class_probability(z, labels), rtol=1e-5)
        np.testing.assert_array_equal(t.margin[:, e], dm.true_class_margin(z, labels))
        np.testing.assert_array_equal(t.predicted[:, e], z.argmax(axis=1))
    assert t.num_classes == 6 and t.predicted.dtype == np.int8


def test_one_epoch():
    d = dynamics_from_logits([_onehot([0, 1, 2])], np.array([0, 0, 2]), [7])
    assert d.margin.shape == (3, 1)
    assert d.variability.tolist() == [0, 0, 0]
    assert d.forgetting.tolist() == [0, 0, 0] and d.flips.tolist() == [0, 0, 0]
    assert d.first_learned.tolist() == [7, NEVER, 7]
    assert d.correctness.tolist() == [1, 0, 1]
    assert d.suggested.tolist() == [NO_CLASS, 1, NO_CLASS]
    assert d.events()["flips"].tolist() == [0]


def test_never_learned_and_learned_at_epoch_zero():
    epochs = [0, 1, 2]
    logits = [_onehot([0, 1]), _onehot([0, 1]), _onehot([0, 1])]
    d = dynamics_from_logits(logits, np.array([0, 2]), epochs)
    assert d.first_learned.tolist() == [0, NEVER]  # learned at epoch 0: the first epoch
    assert d.correctness.tolist() == [1, 0]
    assert d.region.tolist() == ["easy", "hard"]
    assert d.suggested[1] == 1 and d.agreement[1] == 1.0
    assert d.suspect[1] > 0.9 and d.suspect[0] == 0.0


def test_ties_go_to_the_lower_class_index():
    tie = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], np.float32)  # classes 0 and 1 tie
    d = dynamics_from_logits([tie, tie], np.array([0, 1]), [1, 2])
    assert d.predicted.tolist() == [[0, 0], [0, 0]]  # numpy's argmax: the first maximum
    assert d.correctness.tolist() == [1, 0]
    np.testing.assert_array_equal(d.margin, 0.0)  # a tie is a zero margin either way
    np.testing.assert_allclose(d.confidence, [0.4223188, 0.4223188], rtol=1e-6)
    # a tie among the other classes' counts goes to the lower class index too
    predicted = np.array([[2, 1, 2, 1]])
    suggested, agreement = dm.other_class_agreement(predicted, np.array([0]), 3)
    assert suggested.tolist() == [1] and agreement.tolist() == [0.5]


def test_agreement_in_blocks_equals_one_block(monkeypatch):
    rng = np.random.default_rng(1)
    predicted = rng.integers(0, 5, size=(101, 9))
    labels = rng.integers(0, 5, 101)
    whole = dm.other_class_agreement(predicted, labels, 5)
    monkeypatch.setattr(dm, "_BLOCK_ELEMENTS", 5 * 7)  # blocks of 7 rows
    blocks = dm.other_class_agreement(predicted, labels, 5)
    for a, b in zip(whole, blocks, strict=True):
        np.testing.assert_array_equal(a, b)


def test_regions_follow_the_settings():
    conf = np.array([0.9, 0.5, 0.2, 0.9])
    var = np.array([0.05, 0.05, 0.05, 0.3])
    assert dm.data_map_regions(conf, var).tolist() == ["easy", "ambiguous", "hard", "ambiguous"]
    loose = DynamicsSettings(easy_confidence=0.5, hard_confidence=0.5, ambiguous_variability=0.4)
    assert dm.data_map_regions(conf, var, loose).tolist() == ["easy", "easy", "hard", "easy"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"easy_confidence": 1.5}, "easy_confidence=1.5 must be in [0, 1.0]"),
        ({"ambiguous_variability": 0.6}, "ambiguous_variability=0.6 must be in [0, 0.5]"),
        ({"hard_confidence": float("nan")}, "hard_confidence=nan"),
        ({"hard_confidence": 0.8}, "hard_confidence=0.8 must be <= easy_confidence=0.7"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DynamicsSettings(**kwargs)


def test_collect_reads_one_epoch_at_a_time_and_refuses_bad_logits():
    seen = []

    def epochs():
        for e in range(3):
            seen.append(e)
            yield _onehot([0, 1])

    collect_trajectories(epochs(), np.array([0, 1]), 3, on_epoch=lambda i: seen.append(f"done {i}"))
    assert seen == [0, "done 0", 1, "done 1", 2, "done 2"]  # each epoch processed before the next
    nan = _onehot([0, 1])
    nan[1, 0] = np.nan
    with pytest.raises(InputError, match="1 samples have NaN or inf logits"):
        collect_trajectories([nan], np.array([0, 1]), 1)
    with pytest.raises(InputError, match="label 3 is outside the 3 classes"):
        collect_trajectories([_onehot([0, 1])], np.array([0, 3]), 1)
    with pytest.raises(InputError, match="1 epochs of logits for 2 announced"):
        collect_trajectories([_onehot([0, 1])], np.array([0, 1]), 2)


def test_to_pandas_and_without_pandas(monkeypatch):
    d = dynamics_from_logits([_onehot([0, 2]), _onehot([0, 2])], np.array([0, 1]), [1, 2])
    pytest.importorskip("pandas")
    frame = d.to_pandas()
    assert list(frame.columns) == list(d.columns())
    assert frame["id"].tolist() == [1, 0]  # ranked: the mislabelled-looking sample first
    assert frame["first_learned"].isna().tolist() == [True, False]
    assert frame["suggested_label"].isna().tolist() == [False, True]
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(InputError, match="pip install pandas"):
        d.to_pandas()


# --------------------------------------------------------------------------- from a store


def _mixed_store(path: Path) -> tuple[Path, np.ndarray]:
    """6 train + 2 test samples, epochs 0-3; train sample 4 is always predicted 2 (label 0)."""
    predicted = np.array([
        [1, 0, 0, 0], [2, 1, 1, 1], [0, 2, 2, 2], [2, 0, 1, 1], [1, 2, 2, 2], [0, 0, 0, 0],
        [1, 1, 1, 1], [0, 2, 2, 0],
    ])  # fmt: skip
    labels = np.array([0, 1, 2, 1, 0, 0, 1, 0])
    logits = np.stack([_onehot(predicted[:, e].tolist(), 3, 3.0) for e in range(4)])
    splits = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    return _store(path, logits, labels, splits), predicted


def test_store_dynamics_default_epochs_skip_the_untrained_one(tmp_path):
    store, predicted = _mixed_store(tmp_path / "store")
    run = open_run(store)
    assert select_epochs(run) == [1, 2, 3]
    assert select_epochs(run, "all") == [0, 1, 2, 3]
    d = compute_dynamics(run, select_epochs(run), "train")
    assert len(d) == 6 and d.epochs == [1, 2, 3] and set(d.split) == {"train"}
    assert d.predicted.tolist() == predicted[:6, 1:].tolist()
    assert int(d.ids[d.ranking()[0]]) == 4
    both = compute_dynamics(run, [0, 1, 2, 3], "both")
    assert both.split.tolist() == ["train"] * 6 + ["test"] * 2
    assert both.ids.tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    test = compute_dynamics(run, [0, 1, 3], "test")
    assert test.first_learned.tolist() == [0, 3]  # test sample 1: right, wrong, right


def test_command_writes_ranked_samples_figures_and_summary(tmp_path):
    store, _ = _mixed_store(tmp_path / "store")
    result = _invoke(store, "--split", "both")
    assert result.exit_code == 0, result.output
    out = store / "dynamics"
    lines = result.output.splitlines()
    assert lines[0] == f"wrote {out}/ (samples.csv, datamap.png, events.png, summary.json)"
    assert len(lines) == 4
    assert "regions (epochs 1-3, 8 samples): train easy" in lines[1] and "; test " in lines[1]
    assert lines[3].startswith("  top suspects: train 4 (label c0, predicted c2, ")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["samples.csv", "datamap.png", "events.png", "summary.json"]
    )
    with open(out / "samples.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8
    scores = [float(r["suspect"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, 9)]
    first = rows[0]
    assert (first["id"], first["split"], first["label"], first["suggested_label"]) == (
        "4", "train", "0", "2"
    )
    assert first["region"] == "hard" and first["first_learned"] == ""
    always_right = next(r for r in rows if (r["split"], r["id"]) == ("train", "5"))
    assert always_right["suggested_label"] == "" and always_right["first_learned"] == "1"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == "timevis-dynamics" and summary["epochs"] == [1, 2, 3]
    assert summary["splits"]["train"]["samples"] == 6
    assert summary["splits"]["test"]["samples"] == 2
    assert sum(summary["splits"]["train"]["regions"].values()) == 6
    assert summary["top_suspects"][0]["id"] == 4
    assert summary["settings"] == DynamicsSettings().to_dict()
    assert summary["splits"]["train"]["per_epoch"]["epoch"] == [1, 2, 3]
    for name in ("datamap.png", "events.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 400 and image.size[1] > 300


def test_threshold_options_change_the_regions(tmp_path):
    store, _ = _mixed_store(tmp_path / "store")
    result = _invoke(store, "--easy-confidence", "0.0", "--hard-confidence", "0.0")
    assert result.exit_code == 0, result.output
    summary = json.loads((store / "dynamics" / "summary.json").read_text())
    regions = summary["splits"]["train"]["regions"]
    assert summary["settings"]["easy_confidence"] == 0.0
    assert regions["hard"] == 0 and regions["easy"] > 0


def test_datamap_shades_density_for_many_samples(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(300, 4)).astype(np.float32) for _ in range(3)]
    d = dynamics_from_logits(logits, rng.integers(0, 4, 300), [1, 2, 3])
    calls = []
    from matplotlib.axes import Axes

    original = Axes.hexbin
    monkeypatch.setattr(Axes, "hexbin", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    do.plot_datamap(d, tmp_path / "small.png")
    assert calls == []
    monkeypatch.setattr(do, "HEXBIN_FROM", 100)
    do.plot_datamap(d, tmp_path / "large.png")
    assert calls == [1]


def test_a_failed_write_keeps_the_previous_output(tmp_path, monkeypatch):
    store, _ = _mixed_store(tmp_path / "store")
    assert _invoke(store).exit_code == 0
    before = {p.name: p.read_bytes() for p in (store / "dynamics").iterdir()}

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk trouble")

    monkeypatch.setattr(do, "plot_events", broken)
    with pytest.raises(RuntimeError, match="disk trouble"):
        do.write_dynamics(store, compute_dynamics(open_run(store), [0, 1, 2, 3]))
    after = {p.name: p.read_bytes() for p in (store / "dynamics").iterdir()}
    assert after == before  # the previous folder, whole and unchanged
    assert [p.name for p in store.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    assert _invoke(store, "--epochs", "all").exit_code == 0  # a finished write replaces it
    summary = json.loads((store / "dynamics" / "summary.json").read_text())
    assert summary["epochs"] == [0, 1, 2, 3]


# --------------------------------------------------------------------------- bad input


def test_no_epoch_matches(tmp_path):
    store, _ = _mixed_store(tmp_path / "store")
    _one_line_error(_invoke(store, "--epochs", "40-"), "'40-' selects no recorded epoch", "0-3")
    _one_line_error(_invoke(store, "--epochs", "2-9"), "not recorded (4-9)")
    assert not (store / "dynamics").exists()


def test_split_test_without_test_samples(tmp_path):
    logits = np.stack([_onehot([0, 1]), _onehot([0, 1])])
    store = _store(tmp_path / "store", logits, np.array([0, 1]))
    _one_line_error(_invoke(store, "--split", "test"), "tracks no test samples", "--split train")
    assert not (store / "dynamics").exists()
    assert _invoke(store, "--split", "both").exit_code == 0  # both: the train split alone


def test_nan_logits_name_the_epoch_file(tmp_path):
    logits = np.stack([_onehot([0, 1]), _onehot([0, 1]), _onehot([0, 1])])
    logits[2, 1, 1] = np.inf
    store = _store(tmp_path / "store", logits, np.array([0, 1]))
    line = _one_line_error(_invoke(store), "epoch 2 has 1 samples with NaN or inf logits")
    assert "epoch_0002.h5" in line and "--epochs" in line
    assert _invoke(store, "--epochs", "0-1").exit_code == 0


def test_bad_thresholds_and_a_file_in_the_way(tmp_path):
    store, _ = _mixed_store(tmp_path / "store")
    _one_line_error(_invoke(store, "--ambiguous-variability", "0.7"), "must be in [0, 0.5]")
    (store / "dynamics").write_text("my notes")
    _one_line_error(_invoke(store), "is a file, not a folder")
    assert (store / "dynamics").read_text() == "my notes"


def test_unreadable_epochs_are_skipped_or_named(tmp_path):
    store, _ = _mixed_store(tmp_path / "store")
    path = store / "epochs" / "epoch_0002.h5"
    path.write_bytes(path.read_bytes()[:200])  # truncated
    result = _invoke(store)
    assert result.exit_code == 0, result.output
    assert json.loads((store / "dynamics" / "summary.json").read_text())["epochs"] == [1, 3]
    _one_line_error(_invoke(store, "--epochs", "1-3"), "unreadable epoch files (2")


def test_a_store_without_readable_epochs(tmp_path):
    store, _ = _mixed_store(tmp_path / "store")
    for path in (store / "epochs").iterdir():
        path.unlink()
    _one_line_error(_invoke(store), "holds no readable epoch")


# --------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_flipped_digits_labels_lead_the_suspect_ranking(flipped_digits):
    """The quick digits run (5 epochs) with 5% of its training labels flipped: the top-k of the
    suspect ranking (k = the number flipped) holds at least 80% of the flipped samples."""
    out = flipped_digits
    flipped = json.loads((out / "flipped.json").read_text())
    assert flipped["count"] == 75 and len(set(flipped["ids"])) == 75
    store = out / "store"
    with h5py.File(store / "run.h5", "r") as f:  # the store holds the flipped labels
        labels = f["samples/label"][...]
        train_ids = f["samples/id"][...][f["samples/split"][...] == 0]
    assert train_ids.tolist() == list(range(1500))
    assert labels[flipped["ids"]].tolist() == flipped["flipped"]
    result = _invoke(store)
    assert result.exit_code == 0, result.output
    with open(store / "dynamics" / "samples.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    top = {int(r["id"]) for r in rows[: flipped["count"]]}
    recall = len(top & set(flipped["ids"])) / flipped["count"]
    assert recall >= 0.8, f"suspect recall@{flipped['count']} {recall:.2f}"
