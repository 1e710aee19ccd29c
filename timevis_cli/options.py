"""Every CLI option is defined once here and stacked on the commands that use it."""

from __future__ import annotations

from pathlib import Path

import click

from timevis_cli.neighbors import KNN_BACKENDS

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

config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file of [section] keys (see configs/default.toml).",
)
preset_option = click.option(
    "--preset",
    type=str,
    help="Named preset: mnist, fmnist, cifar10 (overrides of the defaults).",
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one config key, e.g. --set training.max_epochs=10 (repeatable).",
)
epochs_option = click.option(
    "--epochs", type=str, help="Epoch RANGE: 1-160, 5, 1,5,10-20, 10-, -20, 0-200:10 or all."
)
device_option = click.option("--device", type=str, help="auto, cpu, cuda or cuda:N.")
knn_option = click.option(
    "--knn",
    type=click.Choice(KNN_BACKENDS),
    help="kNN backend (auto: FAISS GPU if a GPU, else FAISS CPU, else torch).",
)
seed_option = click.option("--seed", type=int, help="Seed of every random choice.")
overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace existing outputs (kept otherwise)."
)
