"""Every CLI option is defined once here and stacked on the commands that use it."""

from __future__ import annotations

from pathlib import Path

import click

run_dir_argument = click.argument(
    "run_dir",
    metavar="RUN_DIR",
    type=click.Path(file_okay=True, dir_okay=True, path_type=Path),
)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout instead of text."
)

verbose_option = click.option(
    "-v", "--verbose", count=True, help="More log detail on stderr (-vv for debug)."
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
