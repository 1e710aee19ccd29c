"""A fit is a function of its store and its seed: on the CPU two fits give bitwise the same
projector (encoder, decoder and its per-epoch biases) and so the same landscapes, whether they run
in one process or in two.

The fits run on more threads than the machine has cores: without deterministic sums, the CPU's
multi-threaded scatter-adds (the backward of a row gather) then add in a different order in
nearly every run, which is what made two fits of one store differ.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from stores import drifting_clusters

from timevis_callback import open_run
from timevis_cli.config import load_config
from timevis_cli.fit.pipeline import FitResult, fit
from timevis_cli.render.landscape import canvas_bounds, classify_grid, grid_points

FAST = ["training.max_epochs=3", "reduction.init_size=100", "refine.epochs=30", "refine.decoder_steps=150"]
THREADS = 8
RESOLUTION = 48
HERE = Path(__file__).resolve().parent


def fit_store(store: Path) -> FitResult:
    return fit(open_run(store), load_config(overrides=FAST))


def fingerprint(result: FitResult, store: Path) -> dict[str, np.ndarray]:
    """The projector's state and every epoch's decoded landscape (features, classes, margins)."""
    run = open_run(store)
    out = {
        f"state/{key}": value.detach().cpu().numpy()
        for key, value in result.model.projector.state_dict().items()
    }
    bounds = canvas_bounds(list(result.train))
    grid = grid_points(bounds, RESOLUTION)
    for epoch in result.epochs:
        decoded = result.inverse_transform(grid, epoch=epoch)
        classes, margins = classify_grid(decoded, run.head(epoch))
        out[f"decoded/{epoch}"], out[f"classes/{epoch}"], out[f"margins/{epoch}"] = (
            decoded, classes, margins
        )
    out["train"], out["test"] = result.train, result.test
    return out


def assert_identical(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> None:
    assert first.keys() == second.keys()
    differ = [key for key in first if first[key].tobytes() != second[key].tobytes()]
    assert not differ, f"differ between the two fits: {differ}"


@pytest.fixture
def many_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return drifting_clusters(tmp_path_factory.mktemp("det") / "store", n_train=200, n_test=40, epochs=4)


def test_two_fits_in_one_process_are_bitwise_identical(store, many_threads):
    first = fingerprint(fit_store(store), store)
    second = fingerprint(fit_store(store), store)
    assert any(key.startswith("state/epoch_bias") for key in first)  # the refined decoder
    assert_identical(first, second)
    assert not torch.are_deterministic_algorithms_enabled()  # the fit's setting is undone


_SCRIPT = """
import sys
import numpy as np
import torch
sys.path[:0] = [{tests!r}, {here!r}]
torch.set_num_threads({threads})
from test_determinism import fingerprint, fit_store
store = {store!r}
np.savez({out!r}, **fingerprint(fit_store(store), store))
"""


def test_fits_in_two_processes_are_bitwise_identical(store, tmp_path):
    results = []
    for i in range(2):
        out = tmp_path / f"fit{i}.npz"
        script = _SCRIPT.format(
            tests=str(HERE.parents[1]), here=str(HERE), threads=THREADS, store=str(store), out=str(out)
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        with np.load(out) as saved:
            results.append({key: saved[key] for key in saved.files})
    assert_identical(*results)
