"""CPU threads sized to the cores the process may use (timevis_cli.threads)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from timevis_cli import threads
from timevis_cli.errors import ConfigError


def test_usable_cores_follows_the_affinity_not_the_machine():
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        pytest.skip("needs sched_setaffinity and at least 2 cores")
    code = (
        "import os; os.sched_setaffinity(0, {0}); "
        "from timevis_cli.threads import usable_cores, limit_threads; import torch; "
        "print(usable_cores(), limit_threads(), torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "1"]


@pytest.mark.parametrize(
    ("text", "expected"), [("max 100000", None), ("150000 100000", 1.5), ("50000 100000", 0.5)]
)
def test_cgroup_v2_quota(tmp_path, monkeypatch, text, expected):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(text + "\n")
    monkeypatch.setattr(threads, "_CGROUP_V2_MAX", cpu_max)
    assert threads._cgroup_quota() == expected


def test_quota_bounds_the_cores_rounded_up(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("50000 100000\n")  # half a core: still one thread
    monkeypatch.setattr(threads, "_CGROUP_V2_MAX", cpu_max)
    assert threads.usable_cores() == 1


def test_unreadable_quota_is_ignored(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("garbage\n")
    monkeypatch.setattr(threads, "_CGROUP_V2_MAX", cpu_max)
    assert threads._cgroup_quota() is None


def test_limit_threads_sets_torch_and_logs(caplog):
    before = torch.get_num_threads()
    try:
        with caplog.at_level("DEBUG", logger="timevis_cli.threads"):
            assert threads.limit_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert "using 1 CPU thread(s)" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_negative_thread_count_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"threads=-2 is negative"):
        threads.limit_threads(-2)


def test_cli_threads_option_sizes_the_pools_and_logs_it(tmp_path):
    from click.testing import CliRunner
    from stores import drifting_clusters

    from timevis_cli.cli import main

    store = drifting_clusters(tmp_path / "store", n_train=120, n_test=20, epochs=3)
    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(
            main,
            ["-v", "--threads", "1", "fit", str(store), "--set", "training.max_epochs=1",
             "--set", "refine.epochs=5", "--set", "refine.decoder_steps=5"],
        )
        assert result.exit_code == 0, result.output
        assert "using 1 CPU thread(s)" in result.output  # the debug log
        assert "on 1 CPU thread(s); wrote" in result.output  # the summary line
        assert torch.get_num_threads() == 1
        bad = CliRunner().invoke(main, ["--threads", "-1", "info", str(store)])
        assert bad.exit_code == 2 and "-1" in bad.output
    finally:
        torch.set_num_threads(before)
