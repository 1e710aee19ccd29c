"""Per-sample training dynamics from the stored logits: data maps and forgetting events.

Every tracked sample's logits and label at every recorded epoch are in the run store, so how each
sample was learned can be read without any fit (Dataset Cartography, Swayamdipta et al. 2020;
forgetting events, Toneva et al. 2019). Over the chosen epochs, per sample:

- ``confidence``: the mean of p(label), the softmax of the logits at the sample's label;
- ``variability``: the standard deviation of p(label) over the epochs (population, ddof 0);
- ``correctness``: the fraction of epochs at which the prediction (the logits' argmax; a tie goes
  to the lower class index, as ``numpy.argmax``) is the label;
- ``forgetting``: forgetting events, correct -> incorrect between consecutive chosen epochs;
- ``first_learned``: the first epoch from which the sample stays correct to the last chosen
  epoch (:data:`NEVER` when it is wrong at the last one);
- ``flips``: changes of the predicted class between consecutive chosen epochs;
- ``margin`` [N, E]: the logit of the label minus the largest other logit, per epoch (> 0:
  correct; 0 on a tie);
- ``region``: where the sample lies on the data map (:class:`DynamicsSettings`);
- ``suggested`` and ``agreement``: the class other than the label the model predicted most often,
  and the fraction of epochs it predicted that class (:func:`other_class_agreement`);
- ``suspect``: the suspect-label score (:func:`suspect_scores`), which ranks likely mislabelled
  samples first.

The measures are pure functions of per-epoch arrays [N, E]; :func:`collect_trajectories` builds
those arrays reading one epoch's logits [N, C] at a time (never [N, E, C]), and
:func:`compute_dynamics` does so from a run store.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from timevis_callback import schema
from timevis_callback.reader import Run, format_epochs
from timevis_cli.errors import ConfigError, InputError
from timevis_cli.ranges import parse_range

__all__ = [
    "NEVER",
    "NO_CLASS",
    "REGIONS",
    "SPLIT_CHOICES",
    "SUSPECT_FORMULA",
    "Dynamics",
    "DynamicsSettings",
    "Trajectories",
    "collect_trajectories",
    "compute_dynamics",
    "confidence",
    "correctness",
    "data_map_regions",
    "dynamics_from_logits",
    "events_per_epoch",
    "first_learned",
    "forgetting_events",
    "other_class_agreement",
    "prediction_flips",
    "select_epochs",
    "split_rows",
    "suspect_scores",
    "true_class_margin",
    "true_class_probability",
    "variability",
]

log = logging.getLogger(__name__)

NEVER = -1  # first_learned of a sample that is not correct at the last chosen epoch
NO_CLASS = -1  # suggested class of a sample the model never predicted as another class
REGIONS = ("easy", "ambiguous", "hard")
SPLIT_CHOICES = ("train", "test", "both")
SUSPECT_FORMULA = "suspect = (1 - confidence) * agreement * (1 - 2 * variability)"
_BLOCK_ELEMENTS = 1 << 22  # rows x classes counted at once by other_class_agreement


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class DynamicsSettings:
    """The data map's region thresholds (all in [0, 1] of p(label); variability at most 0.5).

    A sample is

    - ``ambiguous`` when its variability is >= ``ambiguous_variability`` (the model kept changing
      its mind about the label), else
    - ``easy`` when its confidence is >= ``easy_confidence``,
    - ``hard`` (hard-to-learn) when its confidence is <= ``hard_confidence``,
    - ``ambiguous`` in between (consistently unsure).

    The defaults (0.7, 0.3, 0.2) are absolute, so a region means the same in every run: p(label)
    is at most 1, its standard deviation at most 0.5, and a sample whose p(label) climbs steadily
    from 0.1 to 0.9 over the epochs has a variability of about 0.25.
    """

    easy_confidence: float = 0.7
    hard_confidence: float = 0.3
    ambiguous_variability: float = 0.2

    def __post_init__(self) -> None:
        limits = {"easy_confidence": 1.0, "hard_confidence": 1.0, "ambiguous_variability": 0.5}
        for name, upper in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                raise ConfigError(f"{name}={value!r} must be a number in [0, {upper}]")
            if not (math.isfinite(value) and 0.0 <= value <= upper):
                raise ConfigError(
                    f"{name}={value!r} must be in [0, {upper}] (--{name.replace('_', '-')})"
                )
        if self.hard_confidence > self.easy_confidence:
            raise ConfigError(
                f"hard_confidence={self.hard_confidence} must be <= easy_confidence="
                f"{self.easy_confidence}; lower --hard-confidence or raise --easy-confidence"
            )

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- per epoch


def _check_epoch(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise InputError(
            f"logits of shape {logits.shape} and labels of shape {labels.shape}: expected "
            "logits [N, C] and labels [N]"
        )
    classes = logits.shape[1]
    if classes < 2:
        raise InputError(f"logits have {classes} class(es); the measures need at least 2")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)]
        raise InputError(f"label {int(bad[0])} is outside the {classes} classes of the logits")
    return logits, labels.astype(np.int64, copy=False)


def true_class_probability(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p(label) of each sample: the softmax of its logits at its label.

    logits: [N, C]; labels: int [N]. Returns float64 [N]. Computed as exp(z_y - logsumexp(z)),
    so large logits do not overflow.

    >>> true_class_probability(np.array([[0.0, 0.0], [1000.0, 0.0]]), np.array([0, 1]))
    array([0.5, 0. ])
    """
    logits, labels = _check_epoch(logits, labels)
    z = logits.astype(np.float64)
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return np.exp(z[np.arange(len(labels)), labels] - log_norm)


def true_class_margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The logit of the label minus the largest other logit: [N] (> 0 correct, 0 on a tie).

    >>> true_class_margin(np.array([[3.0, 1.0, 2.0], [0.5, 0.5, 0.0]]), np.array([0, 1]))
    array([1., 0.], dtype=float32)
    """
    logits, labels = _check_epoch(logits, labels)
    z = np.array(logits, dtype=np.float32)  # a copy: the label's column is masked below
    rows = np.arange(len(labels))
    own = z[rows, labels].copy()
    z[rows, labels] = -np.inf
    return own - z.max(axis=1)


# --------------------------------------------------------------------------- over epochs


def _check_series(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] < 1:
        raise InputError(f"{name} has shape {values.shape}; expected [N samples, E >= 1 epochs]")
    return values


def confidence(p_true: np.ndarray) -> np.ndarray:
    """Mean p(label) over the epochs: p_true [N, E] -> float64 [N].

    >>> confidence(np.array([[0.2, 0.4], [1.0, 1.0]]))
    array([0.3, 1. ])
    """
    return _check_series(p_true, "p_true").mean(axis=1, dtype=np.float64)


def variability(p_true: np.ndarray) -> np.ndarray:
    """Standard deviation (ddof 0) of p(label) over the epochs: p_true [N, E] -> float64 [N].

    >>> variability(np.array([[0.2, 0.4], [1.0, 1.0]]))
    array([0.1, 0. ])
    """
    return _check_series(p_true, "p_true").astype(np.float64).std(axis=1)


def correctness(correct: np.ndarray) -> np.ndarray:
    """Fraction of the epochs at which the sample is predicted correctly: bool [N, E] -> [N].

    >>> correctness(np.array([[True, False, True, True], [False] * 4]))
    array([0.75, 0.  ])
    """
    return _check_series(correct, "correct").mean(axis=1, dtype=np.float64)


def forgetting_events(correct: np.ndarray) -> np.ndarray:
    """Correct -> incorrect transitions between consecutive epochs: bool [N, E] -> int64 [N].

    >>> forgetting_events(np.array([[True, False, True, False], [False, True, True, True]]))
    array([2, 0])
    """
    correct = _check_series(correct, "correct").astype(bool)
    return (correct[:, :-1] & ~correct[:, 1:]).sum(axis=1, dtype=np.int64)


def first_learned(correct: np.ndarray, epochs: Sequence[int]) -> np.ndarray:
    """The first epoch from which each sample stays correct to the last one: int64 [N].

    correct: bool [N, E]; epochs: the E epoch numbers. :data:`NEVER` (-1) for a sample that is
    wrong at the last epoch.

    >>> correct = np.array([[True, True], [False, True], [True, False], [False, False]])
    >>> first_learned(correct, [3, 7])
    array([ 3,  7, -1, -1])
    """
    correct = _check_series(correct, "correct").astype(bool)
    epochs = np.asarray(epochs, dtype=np.int64)
    if epochs.shape != (correct.shape[1],):
        raise InputError(f"{len(epochs)} epoch numbers for {correct.shape[1]} epochs of data")
    wrong = ~correct
    # index of the last wrong epoch (-1 if none): the sample is learned for good one after it
    last_wrong = np.where(wrong.any(axis=1), correct.shape[1] - 1 - wrong[:, ::-1].argmax(axis=1), -1)
    start = last_wrong + 1
    learned = start < correct.shape[1]
    return np.where(learned, epochs[np.minimum(start, len(epochs) - 1)], NEVER).astype(np.int64)


def prediction_flips(predicted: np.ndarray) -> np.ndarray:
    """Changes of the predicted class between consecutive epochs: int [N, E] -> int64 [N].

    >>> prediction_flips(np.array([[1, 2, 2, 1], [0, 0, 0, 0]]))
    array([2, 0])
    """
    predicted = _check_series(predicted, "predicted")
    return (predicted[:, 1:] != predicted[:, :-1]).sum(axis=1, dtype=np.int64)


def data_map_regions(
    confidence: np.ndarray, variability: np.ndarray, settings: DynamicsSettings | None = None
) -> np.ndarray:
    """The data-map region of each sample (see :class:`DynamicsSettings`): str [N].

    >>> data_map_regions(np.array([0.95, 0.1, 0.6, 0.5]), np.array([0.02, 0.05, 0.3, 0.05]))
    array(['easy', 'hard', 'ambiguous', 'ambiguous'], dtype='<U9')
    """
    settings = settings or DynamicsSettings()
    confidence = np.asarray(confidence, dtype=np.float64)
    variability = np.asarray(variability, dtype=np.float64)
    region = np.full(confidence.shape, "ambiguous", dtype="<U9")
    steady = variability < settings.ambiguous_variability
    region[steady & (confidence <= settings.hard_confidence)] = "hard"
    region[steady & (confidence >= settings.easy_confidence)] = "easy"  # wins where both hold
    return region


def other_class_agreement(
    predicted: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """The class other than the label the model predicted most often, and how consistently.

    predicted: int [N, E]; labels: int [N]. Returns ``(suggested, agreement)``: int64 [N], the
    most often predicted class among those that are not the label (a tie goes to the lower class
    index; :data:`NO_CLASS`, -1, when the model always predicted the label), and float64 [N], the
    fraction of the epochs at which it predicted that class (0 when ``suggested`` is -1).

    >>> predicted = np.array([[2, 2, 1, 2], [0, 0, 0, 0], [1, 2, 0, 0]])
    >>> other_class_agreement(predicted, np.array([0, 0, 0]), 3)
    (array([ 2, -1,  1]), array([0.75, 0.  , 0.25]))
    """
    predicted = _check_series(predicted, "predicted")
    labels = np.asarray(labels, dtype=np.int64)
    n, n_epochs = predicted.shape
    if labels.shape != (n,):
        raise InputError(f"labels of shape {labels.shape} for {n} samples")
    suggested = np.full(n, NO_CLASS, dtype=np.int64)
    agreement = np.zeros(n, dtype=np.float64)
    step = max(1, _BLOCK_ELEMENTS // max(num_classes, 1))
    for start in range(0, n, step):
        block = predicted[start : start + step].astype(np.int64)
        rows = len(block)
        offset = np.arange(rows, dtype=np.int64)[:, None] * num_classes
        counts = np.bincount((block + offset).ravel(), minlength=rows * num_classes)
        counts = counts.reshape(rows, num_classes)
        counts[np.arange(rows), labels[start : start + rows]] = 0
        best = counts.argmax(axis=1)
        top = counts[np.arange(rows), best]
        suggested[start : start + rows] = np.where(top > 0, best, NO_CLASS)
        agreement[start : start + rows] = top / n_epochs
    return suggested, agreement


def suspect_scores(
    confidence: np.ndarray, variability: np.ndarray, agreement: np.ndarray
) -> np.ndarray:
    """The suspect-label score of each sample, in [0, 1]; higher: more likely mislabelled.

    ``suspect = (1 - confidence) * agreement * (1 - 2 * variability)``

    A mislabelled sample is hard-to-learn (Swayamdipta et al. 2020): the model rarely gives its
    label any probability (low confidence), steadily so (low variability: a standard deviation
    of p(label) is at most 0.5, so ``1 - 2 * variability`` is in [0, 1]), and it predicts the
    sample's true class instead, consistently the same one (high ``agreement``, the fraction of
    epochs at which the most often predicted other class was predicted). A sample the model
    always predicted as its label scores 0; one it never gave any probability and always
    predicted as the same other class scores 1. A sample the network was confused by (flipping
    between classes, or learning the label late) scores in between.

    >>> suspect_scores(np.array([0.05, 0.95, 0.3]), np.array([0.02, 0.01, 0.25]),
    ...                np.array([1.0, 0.0, 0.5]))
    array([0.912, 0.   , 0.175])
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    variability = np.asarray(variability, dtype=np.float64)
    agreement = np.asarray(agreement, dtype=np.float64)
    steady = np.clip(1.0 - 2.0 * variability, 0.0, 1.0)
    return np.clip(1.0 - confidence, 0.0, 1.0) * agreement * steady


def events_per_epoch(correct: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Per epoch, over the samples: ``accuracy`` (float64 [E]) and, between each epoch and the
    one before, ``flips``, ``forgetting`` (correct -> incorrect) and ``learning`` (incorrect ->
    correct) counts (int64 [E], 0 at the first epoch).

    >>> correct = np.array([[False, True, False], [True, True, True]])
    >>> events = events_per_epoch(correct, np.array([[1, 0, 2], [1, 1, 1]]))
    >>> events["accuracy"].tolist(), events["forgetting"].tolist(), events["flips"].tolist()
    ([0.5, 1.0, 0.5], [0, 0, 1], [0, 1, 1])
    """
    correct = _check_series(correct, "correct").astype(bool)
    predicted = _check_series(predicted, "predicted")
    zero = np.zeros(1, dtype=np.int64)
    return {
        "accuracy": correct.mean(axis=0, dtype=np.float64)
        if len(correct)
        else np.full(correct.shape[1], np.nan),
        "flips": np.r_[zero, (predicted[:, 1:] != predicted[:, :-1]).sum(axis=0)],
        "forgetting": np.r_[zero, (correct[:, :-1] & ~correct[:, 1:]).sum(axis=0)],
        "learning": np.r_[zero, (~correct[:, :-1] & correct[:, 1:]).sum(axis=0)],
    }


# --------------------------------------------------------------------------- streaming


def _epoch_values(
    logits: np.ndarray, labels: np.ndarray, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p(label), the margin and the argmax class of one epoch's checked logits [N, C]: the
    values of :func:`true_class_probability`, :func:`true_class_margin` and ``argmax`` (first
    maximum), computed together on the logits transposed to [C, N], so every reduction runs
    over C rows of N values (five times faster than along rows of C for ten classes)."""
    z = np.array(logits, dtype=np.float32).T.copy()  # [C, N], contiguous; a copy, masked below
    finite = np.isfinite(z).all(axis=0)
    if not finite.all():
        raise InputError(
            f"{int((~finite).sum())} samples have NaN or inf logits at epoch index {index}"
        )
    classes, n = z.shape
    cols = np.arange(n)
    own = z[labels, cols]
    top = z.max(axis=0)
    predicted = np.full(n, classes - 1, dtype=np.int64)
    for c in range(classes - 2, -1, -1):  # the lowest class at the maximum wins, as argmax
        predicted[z[c] == top] = c
    p_true = np.exp(own - top) / np.exp(z - top).sum(axis=0)
    z[labels, cols] = -np.inf
    return p_true, own - z.max(axis=0), predicted


@dataclass(frozen=True, eq=False)
class Trajectories:
    """Per sample and epoch, all the measures need: built one epoch's logits at a time.

    p_true: float32 [N, E], p(label); predicted: int [N, E], the argmax class (the smallest
    integer type that holds the classes); margin: float32 [N, E], :func:`true_class_margin`.
    """

    p_true: np.ndarray
    predicted: np.ndarray
    margin: np.ndarray
    num_classes: int


def collect_trajectories(
    logits_per_epoch: Iterable[np.ndarray],
    labels: np.ndarray,
    n_epochs: int,
    on_epoch: Callable[[int], None] | None = None,
) -> Trajectories:
    """Read ``n_epochs`` logits arrays [N, C] one at a time into :class:`Trajectories`.

    Only one epoch's logits are held at once; the kept arrays are [N, E] (9-12 bytes per
    sample and epoch). ``on_epoch(index)`` is called after each epoch. NaN or inf logits, or
    another number of epochs than ``n_epochs``, are an :class:`InputError`.

    >>> steps = [np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 3.0], [0.0, 1.0]])]
    >>> t = collect_trajectories(steps, np.array([0, 1]), 2)
    >>> t.predicted.tolist(), t.margin.tolist()
    ([[0, 1], [1, 1]], [[2.0, -3.0], [1.0, 1.0]])
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    p_true = np.empty((n, n_epochs), dtype=np.float32)
    margin = np.empty((n, n_epochs), dtype=np.float32)
    predicted: np.ndarray | None = None
    classes = 0
    index = -1
    for index, logits in enumerate(logits_per_epoch):
        if index >= n_epochs:
            raise InputError(f"more than the {n_epochs} announced epochs of logits")
        logits, _ = _check_epoch(logits, labels)
        if predicted is None:
            classes = logits.shape[1]
            dtype = np.int8 if classes <= 127 else np.int16 if classes <= 32767 else np.int32
            predicted = np.empty((n, n_epochs), dtype=dtype)
        elif logits.shape[1] != classes:
            raise InputError(
                f"epoch index {index} has logits of {logits.shape[1]} classes, the first {classes}"
            )
        p_true[:, index], margin[:, index], predicted[:, index] = _epoch_values(
            logits, labels, index
        )
        if on_epoch is not None:
            on_epoch(index)
    if index + 1 != n_epochs or predicted is None:
        raise InputError(f"{index + 1} epochs of logits for {n_epochs} announced")
    return Trajectories(p_true=p_true, predicted=predicted, margin=margin, num_classes=classes)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class Dynamics:
    """The training dynamics of the chosen samples over the chosen epochs.

    Per sample (arrays [N], in store row order): ``ids`` (index in the sample's source dataset;
    ids restart per split), ``split`` ("train"/"test"), ``label``, ``confidence``,
    ``variability``, ``correctness``, ``forgetting``, ``first_learned`` (:data:`NEVER`: not
    learned for good), ``flips``, ``suggested`` (:data:`NO_CLASS`: never predicted as another
    class), ``agreement``, ``suspect``, ``region``; per sample and epoch ([N, E]): ``margin`` and
    ``predicted``. See the module docstring for each measure.
    """

    epochs: list[int]
    ids: np.ndarray
    split: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    variability: np.ndarray
    correctness: np.ndarray
    forgetting: np.ndarray
    first_learned: np.ndarray
    flips: np.ndarray
    suggested: np.ndarray
    agreement: np.ndarray
    suspect: np.ndarray
    region: np.ndarray
    margin: np.ndarray
    predicted: np.ndarray
    class_names: list[str]
    settings: DynamicsSettings
    run_id: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def splits(self) -> list[str]:
        """The splits present, train first."""
        return [s for s in ("train", "test") if (self.split == s).any()]

    @property
    def correct(self) -> np.ndarray:
        """bool [N, E]: predicted as the label at each epoch."""
        return self.predicted == self.label[:, None]

    def ranking(self) -> np.ndarray:
        """Row indices by suspect score, highest first (ties keep the store order)."""
        return np.argsort(-self.suspect, kind="stable")

    def region_counts(self, split: str | None = None) -> dict[str, int]:
        """Samples per region (of one split, or all)."""
        region = self.region if split is None else self.region[self.split == split]
        return {name: int((region == name).sum()) for name in REGIONS}

    def events(self, split: str | None = None) -> dict[str, np.ndarray]:
        """:func:`events_per_epoch` of one split's samples (or all)."""
        rows = slice(None) if split is None else self.split == split
        return events_per_epoch(self.correct[rows], self.predicted[rows])

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else ""

    def columns(self) -> dict[str, np.ndarray]:
        """The per-sample table, rows ranked by suspect score: the columns of ``samples.csv``.

        ``rank`` (1 = most suspect), ``id``, ``split``, ``label``, ``label_name``, ``suspect``,
        ``suggested_label`` and ``suggested_name`` (the most often predicted other class, -1 and
        "" if none), ``agreement``, ``region``, ``confidence``, ``variability``,
        ``correctness``, ``forgetting``, ``flips``, ``first_learned`` (-1: never),
        ``margin_mean`` and ``margin_last`` (the margin's mean over the epochs and at the last).
        """
        order = self.ranking()
        names = np.array([*self.class_names, ""], dtype=object)
        return {
            "rank": np.arange(1, len(order) + 1),
            "id": self.ids[order],
            "split": self.split[order],
            "label": self.label[order],
            "label_name": names[self.label[order]],
            "suspect": self.suspect[order],
            "suggested_label": self.suggested[order],
            "suggested_name": names[self.suggested[order]],  # -1 picks the trailing ""
            "agreement": self.agreement[order],
            "region": self.region[order],
            "confidence": self.confidence[order],
            "variability": self.variability[order],
            "correctness": self.correctness[order],
            "forgetting": self.forgetting[order],
            "flips": self.flips[order],
            "first_learned": self.first_learned[order],
            "margin_mean": self.margin[order].mean(axis=1, dtype=np.float64),
            "margin_last": self.margin[order, -1].astype(np.float64),
        }

    def to_pandas(self) -> Any:
        """The table of :meth:`columns` as a pandas DataFrame (pandas is optional): NEVER and
        NO_CLASS become missing values (nullable ``Int64``)."""
        try:
            import pandas as pd
        except ImportError:
            raise InputError(
                "Dynamics.to_pandas needs pandas, which timevis does not install; "
                "pip install pandas (or use Dynamics.columns() for plain numpy arrays)"
            ) from None
        frame = pd.DataFrame(self.columns())
        for column in ("first_learned", "suggested_label"):
            frame[column] = frame[column].astype("Int64").mask(frame[column] < 0)
        return frame

    def top_suspects(self, count: int) -> list[dict[str, Any]]:
        """The ``count`` most suspect samples as plain dicts (id, split, label, suggested, ...)."""
        out = []
        for rank, row in enumerate(self.ranking()[:count], start=1):
            out.append(
                {
                    "rank": rank,
                    "id": int(self.ids[row]),
                    "split": str(self.split[row]),
                    "label": int(self.label[row]),
                    "label_name": self.class_name(int(self.label[row])),
                    "suggested_label": int(self.suggested[row]),
                    "suggested_name": self.class_name(int(self.suggested[row])),
                    "suspect": float(self.suspect[row]),
                    "region": str(self.region[row]),
                    "confidence": float(self.confidence[row]),
                }
            )
        return out


def dynamics_from_logits(
    logits_per_epoch: Iterable[np.ndarray],
    labels: np.ndarray,
    epochs: Sequence[int],
    *,
    ids: np.ndarray | None = None,
    split: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    settings: DynamicsSettings | None = None,
    run_id: str | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> Dynamics:
    """Every measure of the samples whose logits [N, C] at ``epochs`` are given one epoch at a
    time (an iterator is read once, never held whole).

    labels: int [N]; ids: [N] (default 0..N-1); split: str [N] (default all "train");
    class_names: C names (default the class indices).

    >>> logits = [np.array([[0.0, 4.0], [4.0, 0.0]]), np.array([[0.0, 4.0], [0.0, 4.0]])]
    >>> d = dynamics_from_logits(logits, np.array([0, 0]), [1, 2])
    >>> d.forgetting.tolist(), d.first_learned.tolist(), d.suggested.tolist(), d.region.tolist()
    ([0, 1], [-1, -1], [1, 1], ['hard', 'ambiguous'])
    >>> d.ranking().tolist()  # always "1" although labelled 0: the first suspect
    [0, 1]
    """
    settings = settings or DynamicsSettings()
    epochs = [int(e) for e in epochs]
    if not epochs:
        raise InputError("no epochs to measure; choose at least one")
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n == 0:
        raise InputError("no samples to measure")
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    split = np.full(n, "train", dtype="<U5") if split is None else np.asarray(split, dtype="<U5")
    if ids.shape != (n,) or split.shape != (n,):
        raise InputError(f"ids {ids.shape} and split {split.shape} must have shape ({n},)")
    traj = collect_trajectories(logits_per_epoch, labels, len(epochs), on_epoch)
    if class_names is None:
        names = [str(c) for c in range(traj.num_classes)]
    elif len(class_names) == traj.num_classes:
        names = [str(name) for name in class_names]
    else:
        raise InputError(f"{len(class_names)} class names for logits of {traj.num_classes} classes")
    correct = traj.predicted == labels[:, None]
    conf = confidence(traj.p_true)
    var = variability(traj.p_true)
    suggested, agreement = other_class_agreement(traj.predicted, labels, traj.num_classes)
    return Dynamics(
        epochs=epochs,
        ids=ids,
        split=split,
        label=labels,
        confidence=conf,
        variability=var,
        correctness=correctness(correct),
        forgetting=forgetting_events(correct),
        first_learned=first_learned(correct, epochs),
        flips=prediction_flips(traj.predicted),
        suggested=suggested,
        agreement=agreement,
        suspect=suspect_scores(conf, var, agreement),
        region=data_map_regions(conf, var, settings),
        margin=traj.margin,
        predicted=traj.predicted,
        class_names=names,
        settings=settings,
        run_id=run_id,
    )


# --------------------------------------------------------------------------- from a store


def select_epochs(run: Run, text: str | None = None) -> list[int]:
    """The epochs a ``--epochs RANGE`` chooses among the store's readable ones.

    ``None`` (no ``--epochs``): every readable epoch but epoch 0 when later ones exist: the
    untrained network's predictions are chance, which would add variability to every sample
    and count its chance hits as forgetting events (``all`` or ``0-`` keeps it).
    """
    if not run.epochs:
        broken = (
            f"; unreadable: {format_epochs(sorted(run.bad_epochs))}" if run.bad_epochs else ""
        )
        raise InputError(
            f"{run.path} holds no readable epoch{broken}; record at least one epoch with "
            "TimeVisCallback (or re-copy the epoch files)"
        )
    if text is None:
        trained = [e for e in run.epochs if e != 0]
        return trained or list(run.epochs)
    return parse_range(text, run.epochs, run.bad_epochs)


def split_rows(run: Run, split: str) -> np.ndarray:
    """Store rows of ``split`` (train, test or both), ascending; InputError when it has none."""
    if split not in SPLIT_CHOICES:
        raise InputError(f"split={split!r} must be one of {', '.join(SPLIT_CHOICES)}")
    counts = {name: int(run.samples.mask(name).sum()) for name in ("train", "test")}
    if split == "both":
        if counts["test"] == 0:
            log.warning("%s tracks no test samples: measuring the train split only", run.path)
        rows = np.arange(len(run.samples))
    else:
        rows = np.flatnonzero(run.samples.mask(split))
    if len(rows) == 0:
        other = "train" if split == "test" else "test"
        hint = f"; use --split {other}" if counts[other] else ""
        raise InputError(f"{run.path} tracks no {split} samples{hint}")
    return rows


def compute_dynamics(
    run: Run,
    epochs: Sequence[int] | None = None,
    split: str = "train",
    settings: DynamicsSettings | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> Dynamics:
    """The training dynamics of ``split`` ("train", "test" or "both") of a run store over
    ``epochs`` (default: :func:`select_epochs`'s), reading one epoch's logits at a time.

    Raises InputError for no samples in the split, an epoch with NaN or inf logits (naming its
    file), or labels outside the classes; StoreError for an unreadable epoch.
    """
    chosen = select_epochs(run) if epochs is None else sorted({int(e) for e in epochs})
    if not chosen:
        raise InputError(f"no epochs chosen; readable: {format_epochs(run.epochs)}")
    missing = [e for e in chosen if e not in run.epochs]
    if missing:
        raise InputError(
            f"epochs {format_epochs(missing)} are not readable in {run.path}; readable: "
            f"{format_epochs(run.epochs)}"
        )
    rows = split_rows(run, split)
    labels = run.samples.label[rows]
    if labels.size and (labels.min() < 0 or labels.max() >= run.num_classes):
        raise InputError(
            f"{run.run_file}: labels outside the {run.num_classes} classes (e.g. "
            f"{int(labels[(labels < 0) | (labels >= run.num_classes)][0])}); the store is corrupted"
        )
    if len(chosen) < 2:
        log.warning(
            "one epoch (%d) chosen: variability, forgetting events and flips are 0; choose more "
            "epochs with --epochs",
            chosen[0],
        )
    split_names = np.where(run.samples.split[rows] == schema.SPLIT_TEST, "test", "train")
    log.info(
        "dynamics of %d samples (%s) over %d epochs (%s)",
        len(rows),
        split,
        len(chosen),
        format_epochs(chosen),
    )

    def logits() -> Iterable[np.ndarray]:
        whole = split == "both"
        for epoch in chosen:
            values = run.logits(epoch)
            values = values if whole else values[rows]
            bad = int((~np.isfinite(values)).any(axis=1).sum())
            if bad:
                raise InputError(
                    f"{run.epoch_path(epoch)}: epoch {epoch} has {bad} samples with NaN or inf "
                    "logits; leave it out with --epochs"
                )
            log.debug("epoch %d read", epoch)
            yield values

    return dynamics_from_logits(
        logits(),
        labels,
        chosen,
        ids=run.samples.id[rows],
        split=split_names,
        class_names=run.class_names,
        settings=settings,
        run_id=run.run_id,
        on_epoch=on_epoch,
    )

