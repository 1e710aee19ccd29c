"""Every CLI option is defined once here and stacked on the commands that use it."""

from __future__ import annotations

from pathlib import Path

import click

from timevis_cli.config import FIT_METHODS
from timevis_cli.fit.neighbors import KNN_BACKENDS

run_dir_argument = click.argument(
    "run_dir",
    metavar="RUN_DIR",
    type=click.Path(file_okay=True, dir_okay=True, path_type=Path),
)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout instead of text."
)

verbose_option = click.option(
    "-v", "--verbose", count=True, help="Debug detail on stderr (per-step progress, timings)."
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
threads_option = click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    envvar="TIMEVIS_THREADS",
    show_default=True,
    help="CPU threads for torch, FAISS and the BLAS (0: the cores this process may use, from its "
    "CPU affinity and cgroup quota; env TIMEVIS_THREADS).",
)

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
temporal_weight_option = click.option(
    "--temporal-weight",
    type=float,
    help="refine.trajectory_weight, the one knob between space and time: higher keeps each "
    "sample's path on the canvas shaped like its path in the network, lower keeps more "
    "neighbours per epoch (default 0.75; 0: per-epoch layouts only).",
)
method_option = click.option(
    "--method",
    type=click.Choice(FIT_METHODS),
    help="fit.method: timevis (default) or dvi, the DeepVisualInsight baseline (one model per "
    "epoch, each warm-started from the previous one; [dvi] settings, docs/dvi.md).",
)
seed_option = click.option("--seed", type=int, help="Seed of every random choice.")
overwrite_option = click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing RUN_DIR/fit/ (refused otherwise; the previous fit stays until the "
    "new one is complete).",
)

split_option = click.option(
    "--split",
    type=click.Choice(["train", "test", "both"]),
    help="Which samples to draw (default: train).",
)
resolution_option = click.option(
    "--resolution", type=int, help="Landscape grid size R (R x R decoded points), 16-2048."
)
bounds_option = click.option(
    "--bounds",
    type=click.Choice(["follow", "global", "per-epoch"]),
    help="Canvas: follow (default) frames each epoch on its samples and boundary points, "
    "gliding between epochs, the data always filling most of the frame; global is one for all "
    "rendered epochs (an epoch lying far from the rest, such as an untrained epoch 0, gets its "
    "own); per-epoch is each epoch's own, jumping from frame to frame.",
)
agreement_option = click.option(
    "--agreement/--no-agreement",
    default=None,
    help="Draw each epoch's landscape agreement (share of samples whose landscape class at "
    "their own point is the model's prediction: the test samples when the sample lift is on, "
    "the train samples otherwise) in the frame's corner (default: on).",
)
sample_lift_option = click.option(
    "--sample-lift/--no-sample-lift",
    default=None,
    help="Lift the landscape just enough around the train samples the decoder shows in another "
    "class, or less surely than the model, that every train sample's own point has the model's "
    "prediction by at least the model's own top-2 logit gap (default: on; --exact draws the "
    "decoder's own regions).",
)
gif_option = click.option("--gif/--no-gif", default=None, help="Write render/training.gif.")
mp4_option = click.option(
    "--mp4", is_flag=True, default=None, help='Write render/training.mp4 (pip install "timevis[video]").'
)
html_option = click.option(
    "--html", is_flag=True, default=None, help="Write render/index.html (one self-contained page)."
)
track_option = click.option(
    "--track",
    type=str,
    metavar="ID,...",
    help="Train sample ids whose trails the HTML page draws (test samples as test:ID).",
)
jobs_option = click.option("--jobs", type=int, help="Parallel frame workers (0: one per core).")
exact_option = click.option(
    "--exact",
    is_flag=True,
    default=False,
    help="Exact decision regions: split the canvas into the polygons where the decoder and head "
    "are linear; per epoch an SVG, the regions drawn into the frames and the page, "
    "render/regions.json (needs a head of Linear, BatchNorm1d, ReLU, Flatten, Dropout, Identity).",
)

k_option = click.option("--k", "k", type=int, help="Neighbours for nnpv and boundary (default 15).")
temporal_k_option = click.option(
    "--temporal-k", type=int, help="Nearest other epochs for temp_l (default 5)."
)
html_neighbors_option = click.option(
    "--html-neighbors",
    type=int,
    metavar="K",
    help="Neighbours per sample index.html draws on hover, in feature space and on the map, and "
    "the kNN preservation it colours by (default 5; 0: none; off above 5000 samples).",
)
