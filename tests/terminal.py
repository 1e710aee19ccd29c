"""Lines a test shows on the terminal while pytest captures output (its measurements)."""

from __future__ import annotations

import pytest


def report(config: pytest.Config, line: str) -> None:
    """One line on the terminal even while output is captured (plain print as a fallback)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)
