"""scripts/bench.py's table, machine line and eval reading, on tiny inputs (no benchmark runs)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _metric(value: float) -> dict:
    return {"paper": value, "reference": value * 15}


def _metrics() -> dict:
    """A tiny eval/metrics.json: epochs 0-4, train and test."""
    per_epoch = []
    for split, base in (("train", 0.9), ("test", 0.8)):
        for epoch, ppr in enumerate([0.3, 0.6, 0.7, base, base + 0.06]):
            per_epoch.append({"epoch": epoch, "split": split, "ppr": _metric(ppr)})
    averages = {
        split: {"nnpv": _metric(nnpv), "boundary": _metric(0.37), "ppr": _metric(0.5),
                "temp_l": _metric(0.697), "temp_g": _metric(0.62), "temppv": _metric(-0.59)}
        for split, nnpv in (("train", 0.206), ("test", 0.182))
    }  # fmt: skip
    return {"format": "timevis-eval", "epochs": [0, 1, 2, 3, 4], "k": 15, "temporal_k": 5,
            "per_epoch": per_epoch, "averages": averages}  # fmt: skip


def test_format_table_has_the_five_columns_padded_and_escaped(bench):
    text = bench.format_table([["fit", "a|b", "1.0 s", "< 60 s", "yes"], ["render", "x", "", "", ""]])
    lines = text.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == bench.HEADER
    assert set(lines[1].replace("|", "").replace(" ", "")) == {"-"}
    assert "a\\|b" in lines[2]  # a pipe in a cell does not open a column
    assert len({len(line) for line in lines}) == 1  # padded: every line as wide
    with pytest.raises(ValueError, match="cells"):
        bench.format_table([["fit", "too few"]])


def test_machine_line_states_the_machine_and_the_load(bench):
    info = {"cpu": "AMD EPYC 7B13", "cores": 2, "cpu_count": 4, "ram_gib": 7.8, "gpu": None,
            "torch": "2.13.0+cpu", "python": "3.11.9"}  # fmt: skip
    line = bench.machine_line(info, [0.5, 0.25, 0.125], [0.75, 0.5, 0.25])
    assert line.startswith("machine: AMD EPYC 7B13, 2 cores available (of 4), 8 GiB RAM")
    assert "GPU: none" in line and "torch 2.13.0+cpu" in line and "Python 3.11.9" in line
    assert "0.50/0.25/0.12 at start" in line and "0.75/0.50/0.25 at end" in line
    assert "busy" not in line and "\n" not in line
    gpu = dict(info, gpu="NVIDIA H100", cores=1, cpu_count=1, ram_gib=None)
    busy = bench.machine_line(gpu, [1.9, 1.0, 1.0], None)
    assert "1 core available," in busy and "(of" not in busy and "RAM" not in busy
    assert "GPU: NVIDIA H100" in busy and "n/a at end" in busy and "busy machine" in busy
    real = bench.machine_line(bench.machine_info(), bench.load_average(), bench.load_average())
    assert real.startswith("machine: ") and "core" in real


def test_eval_metrics_are_read_from_the_store(bench, tmp_path):
    assert bench.read_eval(tmp_path) is None
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(_metrics()))
    metrics = bench.read_eval(tmp_path)
    rows = bench.faithfulness_rows(metrics, tmp_path)
    assert all(row[0] == "faithfulness" and len(row) == 5 for row in rows)
    values = {row[1]: row[2] for row in rows}
    assert values["nnpv(15) train / test"] == "0.206 / 0.182"
    assert values["boundary(15) train"] == "0.370"
    assert values["temp_l(5) train"] == "0.697"
    assert values["temp_g (Kendall tau) train"] == "0.620"
    assert values["temppv train (lower is better)"] == "-0.590"
    # ppr: the mean over every epoch (0.3, 0.6, 0.7, 0.9, 0.96), the worst in brackets
    assert values["ppr train / test, every epoch: mean (worst)"] == "0.692 (0.300) / 0.652 (0.300)"
    assert "epochs 0-4" in values["source"]
    assert all(row[3] == bench.FAITHFULNESS_DOC and row[4] == "" for row in rows[1:])


def test_missing_eval_says_so_and_how_to_write_it(bench, tmp_path):
    rows = bench.faithfulness_rows(bench.read_eval(tmp_path), tmp_path)
    assert len(rows) == 1
    area, measure, value, target, met = rows[0]
    assert area == "faithfulness" and target == met == ""
    assert value.startswith("missing: no ") and str(tmp_path / "eval" / "metrics.json") in value
    assert f"timevis eval {tmp_path}" in value
    assert f"timevis fit {tmp_path}" in value  # no fit/ either: fit first
    table = bench.format_table(rows)
    assert "missing" in table and "0." not in table  # no value is invented
    (tmp_path / "fit").mkdir()
    value = bench.faithfulness_rows(None, tmp_path)[0][2]
    assert "timevis fit" not in value and f"timevis eval {tmp_path}" in value


def test_benchmark_rows_judge_the_targets(bench):
    callback = {"data": "digits", "n_tracked": 1797, "epochs": 2, "threads": 1,
                "epoch_bare_s": 2.0, "epoch_with_s": 2.5, "callback_total_s": 0.5,
                "callback_s": {"features": 0.2, "boundary": 0.25, "write": 0.05},
                "ratio": 1.1, "ratios": [1.0, 1.2]}  # fmt: skip
    rows = bench.callback_rows(callback)
    assert rows[-1][2:] == ["1.10 (per epoch: 1.00, 1.20)", "<= 1.25", "yes"]
    assert bench.callback_rows(dict(callback, ratio=1.3))[-1][4] == "NO"

    fit = {"n_train": 4000, "epochs": 16, "dim": 512, "device": "cpu", "threads": 2,
           "seconds": {"reduction": 5.0, "complex": 1.5, "temporal": 0.1, "mixing": 0.0,
                       "training": 45.0, "embedding": 0.5},
           "wall": 52.3, "peak_rss_mb": 544.2, "rss_before_mb": 400.0, "peak_gpu_mb": None}  # fmt: skip
    rows = {row[1]: row for row in bench.fit_rows(fit, "mnist")}
    build = rows["complex + training + refinement (all but embedding)"]
    assert build[2] == "51.6 s (fit() wall 52.3 s, with embedding 0.5 s)" and build[4] == "yes"
    assert rows["seconds per stage"][2].startswith("reduction 5.00, complex 1.50, temporal 0.10")
    refined = dict(fit, seconds={**fit["seconds"], "refine": 8.0})  # counted in the target
    assert bench.fit_rows(refined, "mnist")[1][2].startswith("59.6 s")
    assert "refine 8.00" in bench.fit_rows(refined, "mnist")[0][2]
    later = dict(fit, seconds={**fit["seconds"], "export": 3.0})  # a stage added later is shown
    assert "export 3.0 s" in bench.fit_rows(later, "mnist")[1][2]
    assert "544 MB" in rows["peak memory (process high-water mark)"][2]
    slow = dict(fit, threads=1, seconds=dict(fit["seconds"], training=70.0))
    assert bench.fit_rows(slow, "mnist")[1][4] == "NO (1 thread, target is 2)"
    assert bench.fit_rows(dict(fit, n_train=50_000), None)[1][4].startswith("n/a")
    assert bench.fit_rows({"error": "boom"}, None) == [["fit", "(all)", "FAILED: boom", "", ""]]

    render = {"size_px": 800, "resolution": 200, "points": 2000, "device": "cpu",
              "per_frame_s": 0.21, "per_frame_cpu_s": 0.2, "frame_met": True,
              "animation_s": 25.0, "animation_measured": False, "animation_met": True,
              "epochs": 20, "workers": 1, "total_s": 6.0}  # fmt: skip
    frame, animation = bench.render_rows(render)
    assert frame[3:] == ["<= 0.3 s", "yes"] and frame[2].startswith("0.210 s")
    assert "projected from 20 epochs on 1 worker" in animation[2] and animation[4] == "yes"
    assert bench.render_rows(dict(render, frame_met=False))[0][4] == "NO"


def test_skip_and_run_dir_arguments(bench, tmp_path):
    assert bench.parse_skip("fit, render") == {"fit", "render"}
    with pytest.raises(argparse.ArgumentTypeError, match="unknown fitt; choose from callback"):
        bench.parse_skip("fitt")
    assert bench.skipped_rows("fit") == [["fit", "(all)", "skipped (--skip fit)", "", ""]]
    with pytest.raises(SystemExit, match="holds no run store"):
        bench.resolve_store(tmp_path)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "run.h5").write_bytes(b"")
    assert bench.resolve_store(tmp_path) == tmp_path / "store"
    assert bench.resolve_store(tmp_path / "store") == tmp_path / "store"
