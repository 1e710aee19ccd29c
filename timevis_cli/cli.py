"""The ``timevis`` command. Errors the user can fix print as one line on stderr, exit code 1."""

from __future__ import annotations

import json
import logging
import os
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


class _LineHandler(logging.StreamHandler):
    """Log lines on stderr; on a terminal the current line is cleared first, so a log line never
    lands in the middle of a progress bar (the bar redraws itself below it at its next step)."""

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream.isatty():
            self.stream.write("\r\x1b[2K")
        super().emit(record)


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = _LineHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("timevis_cli", "timevis_callback"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@options.verbose_option
@options.quiet_option
@options.threads_option
@click.version_option(package_name="timevis")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool, threads: int) -> None:
    """timevis: watch a classifier's predictions form during training.

    Record with TimeVisCallback, then: timevis info RUN_DIR.
    """
    _configure_logging(verbose, quiet)
    ctx.obj = {"threads": threads}


def _limit_threads() -> int:
    """Size torch's, OpenMP's and the BLAS's thread pools (``timevis --threads``) before a
    command computes; returns the count (logged with -v; fit's summary line names it)."""
    from timevis_cli.threads import limit_threads

    root = click.get_current_context().find_root()
    return limit_threads((root.obj or {}).get("threads", 0))


@main.command()
@options.run_dir_argument
@options.json_option
def info(run_dir: Path, as_json: bool) -> None:
    """What a run store holds: epochs, samples, classes, disk use, unreadable epochs.

    Example: timevis info lightning_logs/version_0/timevis
    """
    summary = summarize(open_run(run_dir, warn_unreadable=False))  # listed as UNREADABLE
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(format_summary(summary))


class _BarReporter:
    """Progress bars per fit stage on a terminal (stderr); the fit's log lines otherwise."""

    def __init__(self, logger: logging.Logger) -> None:
        from timevis_cli.fit.pipeline import Reporter

        self.fallback = Reporter(logger)
        self.tty = sys.stderr.isatty()
        self.bar: object | None = None
        self.stage = ""

    def start(self, stage: str, total: int) -> None:
        self.stage = stage
        if not self.tty:
            self.fallback.start(stage, total)
            return
        self.bar = click.progressbar(length=total, label=f"{stage:<28}", file=sys.stderr)
        self.bar.__enter__()

    def advance(self, steps: int = 1, **info: object) -> None:
        if self.bar is None:
            self.fallback.advance(steps, **info)
            return
        if "loss" in info:
            self.bar.label = f"{self.stage} (loss {info['loss']:.4f})".ljust(28)
        self.bar.update(steps)

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
@options.temporal_weight_option
@options.method_option
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
    temporal_weight: float | None,
    method: str | None,
    seed: int | None,
    overwrite: bool,
) -> None:
    """Fit one visualization model for all epochs; writes RUN_DIR/fit/.

    Example: timevis fit runs/mnist/store --preset mnist --epochs 1-15

    --method dvi fits the DeepVisualInsight baseline instead (one model per epoch).
    """
    from timevis_cli.fit.io import FIT_DIR, save_fit
    from timevis_cli.fit.pipeline import fit as run_fit

    config = _resolve_config(
        config_file,
        preset,
        overrides,
        **{
            "fit.epochs": epochs,
            "fit.device": device,
            "knn.backend": knn,
            "fit.seed": seed,
            "refine.trajectory_weight": temporal_weight,
            "fit.method": method,
        },
    )
    if temporal_weight is not None and config.fit.method == "dvi":
        raise InputError(
            f"--temporal-weight {temporal_weight} sets timevis's refinement, which a DVI fit does "
            "not run; set DVI's temporal term with --set dvi.lambda2=VALUE instead"
        )
    if temporal_weight is not None and not config.refine.enabled:
        raise InputError(
            f"--temporal-weight {temporal_weight} sets refine.trajectory_weight, which acts only "
            "with the refinement; drop --temporal-weight or refine.enabled=false"
        )
    threads = _limit_threads()
    run = open_run(run_dir)
    _prepare(run.path, FIT_DIR, overwrite=overwrite, replace_file=True)
    result = run_fit(run, config, _BarReporter(logging.getLogger("timevis_cli.fit.pipeline")))
    path = save_fit(run.path, result, overwrite)
    seconds = result.stats["seconds"]
    click.echo(
        f"fitted {len(result.epochs)} epochs in {sum(seconds.values()):.1f} s "
        f"({', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())}) on {threads} CPU "
        f"thread(s); wrote {path}"
    )


def _prepare(run_dir: Path, name: str, overwrite: bool = True, replace_file: bool = False) -> None:
    """Before any computing: RUN_DIR/NAME may be (re)written, and RUN_DIR can be written at all
    (a full disk shows only when writing; that is a one-line error too, see outputs)."""
    from timevis_cli.outputs import OutputExists, prepare_output

    try:
        prepare_output(run_dir, name, overwrite=overwrite, replace_file=replace_file)
    except OutputExists as exc:
        raise InputError(
            f"{run_dir / name} already exists; pass --overwrite to replace it"
        ) from exc


@main.command()
@options.run_dir_argument
@options.config_option
@options.preset_option
@options.set_option
@options.epochs_option
@options.split_option
@options.resolution_option
@options.bounds_option
@options.agreement_option
@options.sample_lift_option
@options.gif_option
@options.mp4_option
@options.html_option
@options.track_option
@options.html_neighbors_option
@options.jobs_option
@options.device_option
@options.exact_option
def render(
    run_dir: Path,
    config_file: Path | None,
    preset: str | None,
    overrides: tuple[str, ...],
    epochs: str | None,
    split: str | None,
    resolution: int | None,
    bounds: str | None,
    agreement: bool | None,
    sample_lift: bool | None,
    gif: bool | None,
    mp4: bool | None,
    html: bool | None,
    track: str | None,
    html_neighbors: int | None,
    jobs: int | None,
    device: str | None,
    exact: bool,
) -> None:
    """Per-epoch landscape PNGs and an animation; writes RUN_DIR/render/.

    The landscape (grid decode, each epoch's head) is computed on --device (the GPU when there is
    one) in this process; --jobs worker processes draw the frames.

    Every render replaces RUN_DIR/render/ as a whole (no --overwrite: it is derived from the fit
    and cheap to redo), so frames of epochs not rendered this time do not linger; the previous
    render stays untouched until the new one is complete.

    The landscape is lifted, just enough and continuously, around the train samples the decoder
    would show in another class or less surely than the model, so every train sample's own point
    has the model's prediction by at least the model's own top-2 logit gap; the frames' agreement
    is then the test samples' (--no-sample-lift: the decoder's own).

    --exact draws the exact decision regions instead of the sampled landscape: per epoch
    render/epoch_XXXX.svg, the regions in the PNG frames and as sharp paths in the page, and
    render/regions.json (docs/exact.md).

    Example: timevis render runs/mnist/store --epochs 1-15 --html
    """
    from timevis_cli.device import resolve_device
    from timevis_cli.fit.io import load_fit
    from timevis_cli.render.animate import write_gif, write_mp4
    from timevis_cli.render.page import export_viewer
    from timevis_cli.render.playback import (
        ExactLandscapes,
        FrameBuilder,
        GridLandscapes,
        agreement_summary,
        frame_inputs,
        parse_track,
        plan_render,
        write_agreement,
        write_regions,
    )

    config = _resolve_config(
        config_file,
        preset,
        overrides,
        **{
            "render.epochs": epochs,
            "render.split": split,
            "render.resolution": resolution,
            "render.bounds": bounds,
            "render.show_agreement": agreement,
            "render.sample_lift": sample_lift,
            "render.gif": gif,
            "render.mp4": mp4,
            "render.html": html,
            "render.html_neighbors": html_neighbors,
            "render.jobs": jobs,
            "render.device": device,
        },
    )
    settings = config.render
    _limit_threads()
    run = open_run(run_dir)
    fit_result = load_fit(run)
    plan = plan_render(run, fit_result, settings, exact=exact)
    track_rows = parse_track(track, run, plan)
    if track_rows and not settings.html:
        raise InputError("--track draws trails in the HTML page; add --html")
    torch_device = resolve_device(settings.device)  # of the landscape, in this process only
    if settings.mp4:
        from timevis_cli.render import animate

        animate._import_video_writer()  # before any frame is drawn
    workers = settings.jobs or os.cpu_count() or 1
    renderer = {
        "class_names": run.class_names,
        "size_px": (settings.size_px, settings.size_px),
        "dpi": settings.dpi,
        "show_test": len(plan.test_rows) > 0,
    }
    from timevis_cli.outputs import replaced_folder
    from timevis_cli.render.frames import render_epochs
    from timevis_cli.render.landscape import palette

    out = run.path / "render"
    # written into a temporary folder that replaces render/ only once everything is in it
    with replaced_folder(run.path, "render") as tmp:
        shown = min(workers, len(plan.epochs))
        log.info("rendering %d epochs with %d worker(s)", len(plan.epochs), shown)
        landscapes = GridLandscapes(run, fit_result, plan, torch_device)
        exact_landscapes = ExactLandscapes(run, fit_result, plan, tmp) if exact else None
        # computed here while the workers draw
        inputs = frame_inputs(landscapes, fit_result, exact_landscapes)
        paths = render_epochs(
            FrameBuilder(plan), plan.epochs, tmp, renderer, jobs=workers, inputs=inputs
        )
        written = [f"{len(paths)} frames ({paths[0].name} ... {paths[-1].name})"]
        write_agreement(tmp, landscapes.agreements)
        written.append(str(out / "agreement.json"))
        if exact_landscapes is not None:
            written.append(f"{len(paths)} SVGs")
            regions = write_regions(tmp, exact_landscapes.summaries)
            written.append(str(out / regions.name))
        if settings.gif:
            animation = write_gif(
                paths,
                tmp / "training.gif",
                frame_ms=int(1000 / settings.fps),
                class_colours=palette(run.num_classes),
            )
            written.append(str(out / animation.name))
        if settings.mp4:
            video = write_mp4(paths, tmp / "training.mp4", fps=settings.fps)
            written.append(str(out / video.name))
        if settings.html:
            page = export_viewer(
                run,
                fit_result,
                plan,
                tmp / "index.html",
                track_rows,
                torch_device,
                landscapes,
                neighbors=settings.html_neighbors,
                exact_boundaries=None if exact_landscapes is None else exact_landscapes.boundaries,
            )
            written.append(str(out / page.name))
        (tmp / "config.toml").write_text(config.to_toml())
    click.echo(
        "wrote " + ", ".join(written) + f" into {out}; "
        + agreement_summary(landscapes.agreements, landscapes.agreement_split())
    )


@main.command(name="eval")
@options.run_dir_argument
@options.config_option
@options.preset_option
@options.set_option
@options.epochs_option
@options.k_option
@options.temporal_k_option
@options.knn_option
def evaluate_command(
    run_dir: Path,
    config_file: Path | None,
    preset: str | None,
    overrides: tuple[str, ...],
    epochs: str | None,
    k: int | None,
    temporal_k: int | None,
    knn: str | None,
) -> None:
    """Faithfulness metrics of the fit (nnpv, boundary, ppr, landscape, recon, temporal); writes RUN_DIR/eval/.

    Every eval replaces RUN_DIR/eval/ as a whole (no --overwrite: it is derived from the fit and
    cheap to redo); the previous one stays untouched until the new one is complete.

    Example: timevis eval runs/mnist/store --epochs 3- --k 15
    """
    from timevis_cli.evaluate.loop import EVAL_DIR, evaluate, select_eval_epochs, write_eval
    from timevis_cli.fit.io import load_fit

    config = _resolve_config(
        config_file,
        preset,
        overrides,
        **{"eval.epochs": epochs, "eval.k": k, "eval.temporal_k": temporal_k, "knn.backend": knn},
    )
    _limit_threads()
    run = open_run(run_dir)
    fitted = load_fit(run)
    chosen = select_eval_epochs(run, fitted, config.eval.epochs)
    _prepare(run.path, EVAL_DIR)
    result = evaluate(
        run, fitted, chosen, config.eval.k, config.eval.temporal_k, config.knn.backend,
        _BarReporter(logging.getLogger("timevis_cli.evaluate.loop"))
    )
    path = write_eval(run.path, result)
    click.echo(f"wrote {path}/metrics.json, metrics.md, metrics.png")
    for line in result.summary_lines():
        click.echo(f"  {line}")


def _register_commands() -> None:
    """Commands defined in their stage's subpackage (their heavy imports stay inside them)."""
    from timevis_cli.dynamics.command import dynamics_command
    from timevis_cli.units.command import units_command

    main.add_command(dynamics_command, name="dynamics")
    main.add_command(units_command, name="units")


_register_commands()
