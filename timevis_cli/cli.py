"""The ``timevis`` command. Errors the user can fix print as one line on stderr, exit code 1."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from timevis_callback.reader import open_run
from timevis_cli import options
from timevis_cli.config import Config, load_config
from timevis_cli.errors import InputError, TimeVisError
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


class _BarReporter:
    """Progress bars per fit stage on a terminal (stderr); the fit's log lines otherwise."""

    def __init__(self) -> None:
        from timevis_cli.fit import Reporter

        self.fallback = Reporter()
        self.tty = sys.stderr.isatty()
        self.bar: object | None = None

    def start(self, stage: str, total: int) -> None:
        if not self.tty:
            self.fallback.start(stage, total)
            return
        self.bar = click.progressbar(length=total, label=f"{stage:<28}", file=sys.stderr)
        self.bar.__enter__()

    def advance(self, **info: object) -> None:
        if self.bar is None:
            self.fallback.advance(**info)
            return
        if "loss" in info:
            self.bar.label = f"training (loss {info['loss']:.4f})".ljust(28)
        self.bar.update(1)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _resolve_config(
    config_file: Path | None, preset: str | None, overrides: tuple[str, ...], **flags: object
) -> Config:
    return load_config(config_file, preset, overrides, flags)


@main.command()
@options.run_dir_argument
@options.config_option
@options.preset_option
@options.set_option
@options.epochs_option
@options.device_option
@options.knn_option
@options.seed_option
@options.overwrite_option
def fit(
    run_dir: Path,
    config_file: Path | None,
    preset: str | None,
    overrides: tuple[str, ...],
    epochs: str | None,
    device: str | None,
    knn: str | None,
    seed: int | None,
    overwrite: bool,
) -> None:
    """Fit one visualization model for all epochs; writes RUN_DIR/fit/.

    Example: timevis fit runs/mnist/store --preset mnist --epochs 1-15
    """
    from timevis_cli.fit import fit as run_fit
    from timevis_cli.fit_io import FIT_DIR, save_fit

    config = _resolve_config(
        config_file,
        preset,
        overrides,
        **{"fit.epochs": epochs, "fit.device": device, "knn.backend": knn, "fit.seed": seed},
    )
    run = open_run(run_dir)
    if (run.path / FIT_DIR).exists() and not overwrite:
        raise InputError(f"{run.path / FIT_DIR} already exists; pass --overwrite to replace it")
    result = run_fit(run, config, _BarReporter())
    path = save_fit(run.path, result, overwrite)
    seconds = result.stats["seconds"]
    click.echo(
        f"fitted {len(result.epochs)} epochs in {sum(seconds.values()):.1f} s "
        f"({', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())}); wrote {path}"
    )
