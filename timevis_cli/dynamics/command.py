"""The ``timevis dynamics`` command: per-sample training dynamics, data map, suspect labels.

Reads only the stored logits and labels (no fit needed) and writes ``RUN_DIR/dynamics/``.
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

SUSPECTS_SHOWN = 5

easy_confidence_option = click.option(
    "--easy-confidence",
    type=float,
    default=0.7,
    show_default=True,
    help="Data map: a steady sample (variability below --ambiguous-variability) with a mean "
    "p(label) at least this is 'easy'.",
)
hard_confidence_option = click.option(
    "--hard-confidence",
    type=float,
    default=0.3,
    show_default=True,
    help="Data map: a steady sample with a mean p(label) at most this is 'hard' (to learn).",
)
ambiguous_variability_option = click.option(
    "--ambiguous-variability",
    type=float,
    default=0.2,
    show_default=True,
    help="Data map: a sample whose p(label) varies over the epochs by at least this standard "
    "deviation (at most 0.5) is 'ambiguous'.",
)


@click.command(name="dynamics")
@options.run_dir_argument
@options.epochs_option
@options.split_option
@easy_confidence_option
@hard_confidence_option
@ambiguous_variability_option
def dynamics_command(
    run_dir: Path,
    epochs: str | None,
    split: str | None,
    easy_confidence: float,
    hard_confidence: float,
    ambiguous_variability: float,
) -> None:
    """Per-sample training dynamics from the stored logits (no fit needed); writes
    RUN_DIR/dynamics/.

    Per sample: confidence and variability of p(label), correctness, forgetting events, the
    first epoch learned for good, prediction flips, the margin per epoch, its data-map region
    (easy, ambiguous, hard) and a suspect-label score. Without --epochs: every epoch but 0
    (the untrained network). --split defaults to train.

    Example: timevis dynamics runs/mnist/store --epochs 1-15 --split both
    """
    from timevis_callback.reader import format_epochs, open_run
    from timevis_cli.dynamics.measures import DynamicsSettings, compute_dynamics, select_epochs
    from timevis_cli.dynamics.outputs import SAMPLES_FILE, write_dynamics

    settings = DynamicsSettings(
        easy_confidence=easy_confidence,
        hard_confidence=hard_confidence,
        ambiguous_variability=ambiguous_variability,
    )
    run = open_run(run_dir)
    chosen = select_epochs(run, epochs)
    started = time.perf_counter()
    bar = (
        click.progressbar(length=len(chosen), label="reading logits", file=sys.stderr)
        if sys.stderr.isatty()
        else nullcontext(None)
    )
    with bar as progress:
        result = compute_dynamics(
            run,
            chosen,
            split or "train",
            settings,
            on_epoch=None if progress is None else (lambda _index: progress.update(1)),
        )
    measured = time.perf_counter() - started
    started = time.perf_counter()
    seconds = {"measures": round(measured, 3)}
    path = write_dynamics(run.path, result, seconds)
    log.info("measured in %.2f s, wrote in %.2f s", measured, time.perf_counter() - started)

    click.echo(f"wrote {path}/ ({SAMPLES_FILE}, datamap.png, events.png, summary.json)")
    regions = "; ".join(
        f"{split_name} " + ", ".join(f"{k} {v}" for k, v in result.region_counts(split_name).items())
        for split_name in result.splits
    )
    click.echo(
        f"  regions (epochs {format_epochs(result.epochs)}, {len(result)} samples): {regions}"
    )
    never = int((result.first_learned < 0).sum())
    forgotten = int((result.forgetting > 0).sum())
    click.echo(
        f"  learning: {never} not learned by the last epoch, {forgotten} forgotten at least once "
        f"({int(result.forgetting.sum())} forgetting events), {int(result.flips.sum())} "
        "prediction flips"
    )
    shown = []
    for item in result.top_suspects(SUSPECTS_SHOWN):
        if item["suspect"] <= 0:
            break
        other = item["suggested_name"] or "-"
        shown.append(
            f"{item['split']} {item['id']} (label {item['label_name']}, predicted {other}, "
            f"{item['suspect']:.2f})"
        )
    click.echo("  top suspects: " + (", ".join(shown) if shown else "none (every score is 0)"))
