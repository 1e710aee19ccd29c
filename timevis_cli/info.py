"""What a run store holds: the summary behind ``timevis info``, as a plain dict and as text."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from timevis_callback import schema
from timevis_callback.reader import Run, format_epochs


def summarize(run: Run) -> dict[str, Any]:
    """A JSON-ready summary of a run store: samples, epochs, sizes, problems and outputs."""
    splits = {name: int((run.samples.split == code).sum()) for name, code in schema.SPLIT_CODES.items()}
    contents = {epoch: run.contents(epoch) for epoch in run.epochs}
    usage = run.disk_usage()
    thumbnails = run.thumbnails() if run.has_thumbnails else None
    return {
        "path": str(run.path),
        "run_id": run.run_id,
        "created": _text(run.attrs.get(schema.ATTR_CREATED)),
        "versions": {
            "schema": int(run.attrs[schema.ATTR_SCHEMA_VERSION]),  # checked at open
            "timevis": _text(run.attrs.get(schema.ATTR_TIMEVIS_VERSION)),
            "torch": _text(run.attrs.get(schema.ATTR_TORCH_VERSION)),
            "lightning": _text(run.attrs.get(schema.ATTR_LIGHTNING_VERSION)),
        },
        "feature_layer": run.feature_layer,
        "feature_io": run.feature_io,
        "feature_dim": run.feature_dim,
        "head": [layer["type"] for layer in run.head_spec],
        "num_classes": run.num_classes,
        "class_names": run.class_names,
        "samples": splits,
        "thumbnail_shape": list(thumbnails.shape[1:]) if thumbnails is not None else None,
        "epochs": run.epochs,
        "feature_dtypes": dict(Counter(c.feature_dtype for c in contents.values())),
        "boundary_points": {str(e): c.n_boundary for e, c in contents.items()},
        "epochs_with_weights": [e for e, c in contents.items() if c.has_weights],
        "unreadable_epochs": {str(e): reason for e, reason in sorted(run.bad_epochs.items())},
        "unreadable_files": {str(e): str(run.epoch_path(e)) for e in sorted(run.bad_epochs)},
        "disk_bytes": usage,
        "outputs": {name: (run.path / name).is_dir() for name in schema.OUTPUT_DIRS},
    }


def _text(value: Any) -> str:
    """An informational attribute of run.h5 as text, whatever was stored (a damaged or foreign
    attribute is shown as read, never breaks the summary or its JSON)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_summary(info: dict[str, Any]) -> str:
    """The summary as aligned text lines for a terminal."""
    names = info["class_names"]
    shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
    boundary = [n for n in info["boundary_points"].values() if n]
    epochs = info["epochs"]
    lines = [
        ("run store", f"{info['path']}  (run {info['run_id'][:12]}, created {info['created']})"),
        (
            "versions",
            "schema {schema}, timevis {timevis}, torch {torch}, lightning {lightning}".format(
                **info["versions"]
            ),
        ),
        (
            "model",
            f"features = {info['feature_io']} of {info['feature_layer']!r} (dim {info['feature_dim']}), "
            f"head {' -> '.join(info['head'])}",
        ),
        ("classes", f"{info['num_classes']}: {shown}"),
        (
            "samples",
            ", ".join(f"{n} {split}" for split, n in info["samples"].items())
            + (
                f"; thumbnails {'x'.join(map(str, info['thumbnail_shape']))}"
                if info["thumbnail_shape"]
                else "; no thumbnails"
            ),
        ),
        (
            "epochs",
            f"{format_epochs(epochs)} ({len(epochs)} readable); features "
            + ", ".join(f"{dtype} in {n}" for dtype, n in info["feature_dtypes"].items()),
        ),
        (
            "boundary",
            f"{sum(boundary)} points in {len(boundary)} of {len(epochs)} epochs"
            + (f" (median {sorted(boundary)[len(boundary) // 2]} per epoch)" if boundary else ""),
        ),
        ("weights", f"full model state in {len(info['epochs_with_weights'])} of {len(epochs)} epochs"),
    ]
    for epoch, reason in info["unreadable_epochs"].items():
        lines.append(("UNREADABLE", f"epoch {epoch}: {reason} ({info['unreadable_files'][epoch]})"))
    usage = info["disk_bytes"]
    lines.append(
        (
            "disk",
            ", ".join(f"{part} {_size(n)}" for part, n in usage.items() if n)
            + f"; total {_size(sum(usage.values()))}",
        )
    )
    lines.append(
        (
            "outputs",
            ", ".join(f"{name}/ {'present' if ok else 'none'}" for name, ok in info["outputs"].items()),
        )
    )
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)
