"""Every on-disk name of the run store (format version 1) is defined here and only here.

The writer and the reader both import this module; see docs/store-format.md for the layout.
This module imports neither torch nor lightning.
"""

from __future__ import annotations

import re

FORMAT_NAME = "timevis-run"
SCHEMA_VERSION = 1

# Files and folders inside RUN_DIR.
RUN_FILE = "run.h5"
EPOCHS_DIR = "epochs"
OUTPUT_DIRS = ("fit", "render", "eval")
TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"

# Root attributes of run.h5.
ATTR_FORMAT = "format"
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_RUN_ID = "run_id"
ATTR_CREATED = "created"
ATTR_TIMEVIS_VERSION = "timevis_version"
ATTR_TORCH_VERSION = "torch_version"
ATTR_LIGHTNING_VERSION = "lightning_version"
ATTR_FEATURE_LAYER = "feature_layer"
ATTR_FEATURE_IO = "feature_io"  # "input" or "output" of the feature layer
ATTR_FEATURE_DIM = "feature_dim"
ATTR_NUM_CLASSES = "num_classes"
ATTR_CLASS_NAMES = "class_names"  # JSON list of str
ATTR_HEAD_SPEC = "head_spec"  # JSON list of layer dicts
ATTR_CALLBACK_CONFIG = "callback_config"  # JSON object
RUN_REQUIRED_ATTRS = (
    ATTR_FORMAT,
    ATTR_SCHEMA_VERSION,
    ATTR_RUN_ID,
    ATTR_FEATURE_LAYER,
    ATTR_FEATURE_IO,
    ATTR_FEATURE_DIM,
    ATTR_NUM_CLASSES,
    ATTR_CLASS_NAMES,
    ATTR_HEAD_SPEC,
)

# Datasets of run.h5.
SAMPLES_ID = "samples/id"  # int64 [N]
SAMPLES_SPLIT = "samples/split"  # uint8 [N]
SAMPLES_LABEL = "samples/label"  # int64 [N]
SAMPLES_THUMBNAIL = "samples/thumbnail"  # uint8 [N, h, w] or [N, h, w, c], optional
SPLIT_TRAIN = 0
SPLIT_TEST = 1
SPLIT_CODES = {"train": SPLIT_TRAIN, "test": SPLIT_TEST}
THUMBNAIL_MAX_SIZE = 32

# Root attributes of epochs/epoch_EEEE.h5.
ATTR_EPOCH = "epoch"
ATTR_GLOBAL_STEP = "global_step"
ATTR_WALL_TIME = "wall_time"
ATTR_METRICS = "metrics"  # JSON object of the trainer's logged scalars
EPOCH_REQUIRED_ATTRS = (ATTR_EPOCH, ATTR_SCHEMA_VERSION)

# Datasets and groups of an epoch file.
FEATURES = "features"  # float16 | float32 [N, D]
LOGITS = "logits"  # float32 [N, C]
HEAD_GROUP = "head"  # head/<param>, float32, named as in the rebuilt head's state_dict
BOUNDARY_FEATURES = "boundary/features"  # [B, D]
BOUNDARY_PAIR = "boundary/pair"  # int64 [B, 2]
WEIGHTS_GROUP = "weights"  # weights/<param>: the model's state_dict, optional
EPOCH_REQUIRED_KEYS = (FEATURES, LOGITS, HEAD_GROUP)
FEATURE_DTYPES = ("float16", "float32")

# The declarative head: layer types that can be rebuilt without user code.
HEAD_LAYER_TYPES = (
    "Linear",
    "ReLU",
    "GELU",
    "Tanh",
    "Sigmoid",
    "Dropout",
    "Flatten",
    "BatchNorm1d",
    "Identity",
)

_EPOCH_FILE_RE = re.compile(r"^epoch_(\d{4,})\.h5$")


def epoch_filename(epoch: int) -> str:
    """The file name of one epoch, e.g. ``epoch_0007.h5``."""
    if epoch < 0:
        raise ValueError(f"epoch={epoch} must be >= 0")
    return f"epoch_{epoch:04d}.h5"


def parse_epoch_filename(name: str) -> int | None:
    """The epoch number of an epoch file name, or None for any other name (temp files too)."""
    match = _EPOCH_FILE_RE.match(name)
    return int(match.group(1)) if match else None


def tmp_name(final_name: str, token: str) -> str:
    """The hidden temporary name a file is written under before it is renamed into place."""
    return f"{TMP_PREFIX}{final_name}.{token}{TMP_SUFFIX}"
