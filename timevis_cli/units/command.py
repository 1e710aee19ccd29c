"""The ``timevis units`` command: the feature layer's hidden units over training (M-PHATE).

Reads only the stored features and labels (no fit needed) and writes ``RUN_DIR/units/``.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import click

from timevis_cli import options

log = logging.getLogger(__name__)

samples_option = click.option(
    "--samples",
    type=int,
    default=500,
    show_default=True,
    help="Tracked samples (stratified by label, drawn with --seed) whose activations describe "
    "each unit.",
)
landmarks_option = click.option(
    "--landmarks",
    type=int,
    default=1000,
    show_default=True,
    help="Above this many points (units x epochs) the diffusion runs between this many "
    "spectral landmarks; more is finer and slower.",
)
t_option = click.option(
    "--t",
    "t_text",
    type=str,
    default="auto",
    show_default=True,
    help="Diffusion steps: auto (the knee of the von Neumann entropy) or a positive integer.",
)
potential_option = click.option(
    "--potential",
    type=click.Choice(["sqrt", "log"]),
    default="sqrt",
    show_default=True,
    help="The diffusion potential: sqrt (M-PHATE's) or log (PHATE's).",
)
overwrite_option = click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing RUN_DIR/units/ (refused otherwise; the previous one stays until the "
    "new one is complete).",
)


def _limit_threads() -> int:
    from timevis_cli.threads import limit_threads

    root = click.get_current_context().find_root()
    return limit_threads((root.obj or {}).get("threads", 0))


def _parse_t(text: str) -> int | None:
    from timevis_cli.errors import InputError

    value = text.strip().lower()
    if value == "auto":
        return None
    try:
        t = int(value)
    except ValueError:
        t = 0
    if t < 1:
        raise InputError(f"--t {text}: use auto or a positive integer number of steps, e.g. 20")
    return t


@click.command(name="units")
@options.run_dir_argument
@options.epochs_option
@options.split_option
@samples_option
@options.seed_option
@landmarks_option
@t_option
@potential_option
@overwrite_option
def units_command(
    run_dir: Path,
    epochs: str | None,
    split: str | None,
    samples: int,
    seed: int | None,
    landmarks: int,
    t_text: str,
    potential: str,
    overwrite: bool,
) -> None:
    """The feature layer's hidden units over training, embedded with M-PHATE (no fit
    needed); writes RUN_DIR/units/.

    Each unit at each epoch is a point, described by its activations over --samples tracked
    samples (z-scored per unit and epoch); units that respond alike sit together and a unit's
    path shows its response changing. Writes positions (units.npz, units.csv), units.png,
    units.gif, index.html (a self-contained page with an epoch slider) and summary.json, with
    each unit's preferred class and selectivity per epoch. Without --epochs: every readable
    epoch. --split defaults to train.

    Example: timevis units runs/mnist/store --epochs 0-15 --samples 500
    """
    from timevis_callback.reader import format_epochs, open_run
    from timevis_cli.errors import InputError
    from timevis_cli.outputs import OutputExists, prepare_output
    from timevis_cli.units.mphate import MPhateSettings
    from timevis_cli.units.outputs import UNITS_DIR, write_units
    from timevis_cli.units.pipeline import compute_units, select_epochs

    settings = MPhateSettings(
        landmarks=landmarks,
        t=_parse_t(t_text),
        potential=potential,
        seed=0 if seed is None else seed,
    )
    if samples < 2:
        raise InputError(
            f"--samples {samples}: need at least 2 samples to describe a unit, e.g. 500"
        )
    run = open_run(run_dir)
    chosen = select_epochs(run, epochs)
    try:
        prepare_output(run.path, UNITS_DIR, overwrite=overwrite)
    except OutputExists as exc:
        raise InputError(
            f"{run.path / UNITS_DIR} already exists; pass --overwrite to replace it"
        ) from exc
    threads = _limit_threads()
    started = time.perf_counter()
    bar = (
        click.progressbar(length=len(chosen), label="reading features", file=sys.stderr)
        if sys.stderr.isatty()
        else nullcontext(None)
    )
    with bar as progress:
        result = compute_units(
            run,
            chosen,
            samples=samples,
            split=split or "train",
            settings=settings,
            on_epochs=None if progress is None else progress.update,
        )
    computed = time.perf_counter() - started
    started = time.perf_counter()
    seconds = {**result.seconds, "total": round(computed, 3)}
    path = write_units(run.path, result, seconds, overwrite=overwrite)
    log.info("computed in %.2f s, wrote in %.2f s", computed, time.perf_counter() - started)

    embedding = result.embedding
    click.echo(
        f"wrote {path}/ (units.npz, units.csv, units.png, units.gif, index.html, summary.json)"
    )
    landmark_text = f"{embedding.landmarks} landmarks" if embedding.landmarks else "no landmarks"
    click.echo(
        f"  {result.units} units x {len(result.epochs)} epochs ({format_epochs(result.epochs)}), "
        f"described by {len(result.sample_rows)} {result.split} samples; t = {embedding.t}, "
        f"{landmark_text}; {computed:.1f} s on {threads} CPU thread(s)"
    )
    if len(result.epochs) > 1:
        moves = result.displacement()
        changes = result.preference_changes()
        most = int(max(range(1, len(moves)), key=lambda i: moves[i]))
        flips = int(max(range(1, len(changes)), key=lambda i: changes[i]))
        click.echo(
            f"  largest move: epochs {result.epochs[most - 1]} -> {result.epochs[most]}; most "
            f"preferred-class changes: {int(changes[flips])} units at epoch "
            f"{result.epochs[flips]}"
        )
