"""The ``timevis`` command. Errors the user can fix print as one line on stderr, exit code 1."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from timevis_callback.reader import open_run
from timevis_cli import options
from timevis_cli.errors import TimeVisError
from timevis_cli.info import format_summary, summarize

log = logging.getLogger("timevis_cli")


class _Group(click.Group):
    """Turns every TimeVisError into one line on stderr and exit code 1 (no traceback)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except TimeVisError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.INFO if verbose < 2 else logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("timevis_cli", "timevis_callback"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@options.verbose_option
@options.quiet_option
@click.version_option(package_name="timevis")
def main(verbose: int, quiet: bool) -> None:
    """timevis: watch a classifier's predictions form during training.

    Record with TimeVisCallback, then: timevis info RUN_DIR.
    """
    _configure_logging(verbose, quiet)


@main.command()
@options.run_dir_argument
@options.json_option
def info(run_dir: Path, as_json: bool) -> None:
    """What a run store holds: epochs, samples, classes, disk use, unreadable epochs.

    Example: timevis info lightning_logs/version_0/timevis
    """
    summary = summarize(open_run(run_dir))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(format_summary(summary))
