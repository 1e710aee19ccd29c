"""Sample-exact landscapes: the smallest lift of the decoded logits that shows every train
sample in the class the model predicts for it.

The landscape at a 2-D point ``p`` of epoch ``t`` is ``h_t(ψ_t(p))``: the epoch's classifier head
on the decoder's features there. Where the decoder's features at a train sample's own position
``y_v`` fall on the other side of the head's boundary, the picture shows the sample in a region
of another class, or in its class but far less sure of it than the model (drawn in the white of
the decision boundary where the model is confident). The lift removes exactly those shortfalls
and nothing more:

    s_v  = max(0, max_{c != c_v} ℓ_v[c] + μ_v - ℓ_v[c_v])        ℓ_v = h_t(ψ_t(y_v))
    μ_v  = max(m_v, δ_t)
    L(p) = h_t(ψ_t(p)) + Σ_{v in N(p)} w_v(p) s_v e_{c_v}

``c_v`` is the model's prediction for the sample (its recorded logits) and ``m_v`` the model's
own top-1 minus top-2 logit gap there, so the picture shows each train sample's class by at
least the gap the model gives it (the shading, the gap relative to the logits' spread, may still
differ); ``δ_t``, a quarter of the epoch's median margin
(:func:`timevis_cli.fit.predictive.margin_floor`), keeps a win for the samples the model itself
barely separates. ``N(p)`` the :data:`NEIGHBORS` train samples nearest to ``p`` on the map,
and ``w_v(p)`` the Franke-Little (localised Shepard) weights ``((R - d_v)_+ / (R d_v))²``,
normalised to sum to 1, with ``d_v`` the 2-D distance from ``p`` to ``y_v`` and ``R`` the
distance to the next nearest sample. These weights interpolate (``w_v(y_v) = 1``), so at every
train sample the lifted logits of its predicted class beat every other class by at least
``μ_v >= δ_t``: its own point has its prediction by construction. They change continuously with
``p`` (a sample enters or leaves ``N(p)`` at weight 0), so the landscape stays a continuous
function of position; the lift is 0 wherever the decoder already shows the nearest samples in
their class as surely as the model, so there the picture is the decoder's own.
Test samples are never used: their agreement with the lifted landscape measures how well the
picture predicts the model away from the samples it was made to honour.
"""

from __future__ import annotations

import numpy as np

from timevis_cli.errors import InputError

__all__ = ["NEIGHBORS", "SampleLift", "logit_lift"]

#: Train samples whose lifts are interpolated at each point of the map.
NEIGHBORS = 8


def logit_lift(
    decoded_logits: np.ndarray, predictions: np.ndarray, floor: float | np.ndarray
) -> np.ndarray:
    """Per sample (float32 [n]): how far the logit of its predicted class (``predictions``,
    int [n]) must rise in ``decoded_logits`` [n, C] to beat every other class by ``floor`` (one
    number, or one per sample [n]); 0 where it already does."""
    decoded_logits = np.asarray(decoded_logits, np.float64)
    predictions = np.asarray(predictions)
    if decoded_logits.ndim != 2 or decoded_logits.shape[1] < 2 or predictions.shape != (len(decoded_logits),):
        raise InputError(
            f"decoded logits of shape {decoded_logits.shape} and predictions of shape "
            f"{predictions.shape} must be [n, C >= 2] and [n]"
        )
    if len(predictions) and (predictions.min() < 0 or predictions.max() >= decoded_logits.shape[1]):
        raise InputError(f"predictions must be classes in [0, {decoded_logits.shape[1] - 1}]")
    floor = np.asarray(floor, np.float64)
    if floor.shape not in ((), predictions.shape) or not (floor >= 0).all():
        got = f"{float(floor)!r}" if floor.ndim == 0 else f"an array of shape {floor.shape}"
        raise InputError(f"floor must be >= 0, one number or one per sample [n]; got {got}")
    rows = np.arange(len(predictions))
    own = decoded_logits[rows, predictions]
    others = decoded_logits.copy()
    others[rows, predictions] = -np.inf
    return np.maximum(others.max(axis=1) + floor - own, 0.0).astype(np.float32)


class SampleLift:
    """One epoch's lift as a function of 2-D points: ``lift(points [m, 2]) -> float32 [m, C]``,
    to add to the decoded logits there (module docstring). Built from the train samples'
    positions [n, 2], their predicted classes [n], their lifts [n] (:func:`logit_lift`) and the
    number of classes C.
    """

    def __init__(
        self,
        positions: np.ndarray,
        classes: np.ndarray,
        lifts: np.ndarray,
        n_classes: int,
        neighbors: int = NEIGHBORS,
    ):
        positions = np.asarray(positions, np.float64)
        classes, lifts = np.asarray(classes), np.asarray(lifts, np.float64)
        n = len(positions)
        if positions.ndim != 2 or positions.shape[1] != 2 or classes.shape != (n,) or lifts.shape != (n,):
            raise InputError(
                f"positions {positions.shape}, classes {classes.shape} and lifts {lifts.shape} "
                "must be [n, 2], [n] and [n]"
            )
        if not (np.isfinite(positions).all() and np.isfinite(lifts).all()) or (lifts < 0).any():
            raise InputError("sample positions and lifts must be finite, lifts >= 0")
        if isinstance(neighbors, bool) or not isinstance(neighbors, int) or neighbors < 1:
            raise InputError(f"neighbors={neighbors!r} must be an integer >= 1")
        self.n_classes = int(n_classes)
        if n and (classes.min() < 0 or classes.max() >= self.n_classes):
            raise InputError(f"classes must be in [0, {self.n_classes - 1}]")
        self.n_lifted = int((lifts > 0).sum())
        self._classes, self._lifts = classes.astype(np.int64), lifts
        self._positions = positions
        self._k = min(neighbors + 1, n)
        self._tree = None
        if self.n_lifted:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(positions)

    @classmethod
    def from_logits(
        cls,
        positions: np.ndarray,
        decoded_logits: np.ndarray,
        model_logits: np.ndarray,
        neighbors: int = NEIGHBORS,
        fraction: float | None = None,
    ) -> SampleLift:
        """The lift of one epoch from its train samples' positions [n, 2], the landscape's
        logits there [n, C] (decoded, then the head) and the model's own logits [n, C]: each
        sample's class must win by its own margin in ``model_logits``, and by at least ``δ_t``,
        ``fraction`` of the epoch's median margin (None: the decoder's prediction term's,
        :data:`timevis_cli.fit.predictive.MARGIN_FRACTION`)."""
        from timevis_cli.fit.predictive import (  # imports torch
            MARGIN_FRACTION,
            margin_floor,
            top_margins,
        )

        fraction = MARGIN_FRACTION if fraction is None else fraction
        model_logits = np.asarray(model_logits, np.float64)
        if model_logits.shape != np.shape(decoded_logits):
            raise InputError(
                f"model logits {model_logits.shape} and decoded logits {np.shape(decoded_logits)} "
                "must have the same shape"
            )
        if not np.isfinite(model_logits).all():
            raise InputError(
                f"the model's logits hold {int((~np.isfinite(model_logits)).sum())} non-finite "
                "values; the lift needs finite logits (check the store's features and head)"
            )
        classes, margins = top_margins(model_logits)
        floor = margin_floor(model_logits, fraction, margins=margins) if len(model_logits) else 0.0
        wanted = np.maximum(margins, floor)  # μ_v: the model's own margin, at least δ_t
        return cls(positions, classes, logit_lift(decoded_logits, classes, wanted), model_logits.shape[1], neighbors)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, np.float64).reshape(-1, 2)
        out = np.zeros((len(points), self.n_classes), np.float32)
        if self._tree is None or len(points) == 0:
            return out
        k = self._k
        distance, index = self._tree.query(points, k=k)
        distance, index = distance.reshape(len(points), k), index.reshape(len(points), k)
        if k > 1:
            reach = distance[:, -1:]  # R: the next nearest sample's distance
            distance, index = distance[:, :-1], index[:, :-1]
        else:  # one sample: its lift everywhere (the weights below normalise to 1)
            reach = 2 * distance
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = (np.maximum(reach - distance, 0.0) / (reach * distance)) ** 2
        on_sample = distance == 0
        hit = on_sample.any(axis=1)
        weight[hit] = on_sample[hit]  # on a sample (or several at one place): theirs only
        weight = np.nan_to_num(weight, nan=0.0, posinf=0.0)
        total = weight.sum(axis=1, keepdims=True)
        weight = np.divide(weight, total, out=np.zeros_like(weight), where=total > 0)
        cells = np.arange(len(points))[:, None] * self.n_classes + self._classes[index]
        lifted = np.bincount(
            cells.ravel(), weights=(weight * self._lifts[index]).ravel(), minlength=out.size
        )
        return lifted.reshape(out.shape).astype(np.float32)
