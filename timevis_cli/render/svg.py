"""``render/epoch_XXXX.svg``: one epoch's exact landscape as vector graphics.

The class regions are filled paths (one ``<path>`` per class holding its convex pieces, in the
render palette's colours; a hairline stroke in the same colour hides the seams a renderer's
anti-aliasing leaves between pieces), the class boundaries one stroked path of segments, and
the drawn samples (optional) small circles coloured by label. Coordinates are the canvas's own
(the y axis flipped by the root group), so the figure stays exact at any zoom.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from timevis_cli.render.exact import ExactLandscape

__all__ = ["SVG_FILENAME", "svg_text", "write_svg"]

#: File name of one epoch's SVG inside render/.
SVG_FILENAME = "epoch_{epoch:04d}.svg"
#: Width and height of the SVG's viewport in CSS pixels (its viewBox is the canvas).
SVG_SIZE_PX = 800
_BOUNDARY_COLOUR = "#1f1f1f"


def _hex(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def _number(values: np.ndarray) -> list[str]:
    return [f"{v:.9g}" for v in values.ravel().tolist()]


def svg_text(
    landscape: ExactLandscape,
    palette: np.ndarray,
    class_names: Sequence[str] | None = None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    title: str = "",
) -> str:
    """The SVG document of ``landscape`` (see the module docstring). palette: uint8 (C, 3);
    points: float (n, 2) and labels: int (n,) the samples drawn on top (None: none)."""
    b = landscape.bounds
    width, height = b.xmax - b.xmin, b.ymax - b.ymin
    side = max(width, height)
    stroke = side / SVG_SIZE_PX  # one viewport pixel in canvas units
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_SIZE_PX}" '
        f'height="{SVG_SIZE_PX * height / side:.6g}" '
        f'viewBox="{b.xmin:.9g} {-b.ymax:.9g} {width:.9g} {height:.9g}">',
    ]
    if title:
        out.append(f"<title>{escape(title)}</title>")
    out.append('<g transform="scale(1,-1)">')
    out.append(
        f'<rect x="{b.xmin:.9g}" y="{b.ymin:.9g}" width="{width:.9g}" height="{height:.9g}" '
        'fill="#ffffff"/>'
    )
    polygons = landscape.piece_polygons()
    for k in np.unique(landscape.piece_class):
        rows = np.flatnonzero(landscape.piece_class == k)
        parts = []
        for row in rows:
            coords = _number(polygons[row])
            pairs = [f"{coords[i]} {coords[i + 1]}" for i in range(0, len(coords), 2)]
            parts.append("M" + "L".join(pairs) + "Z")
        name = escape(str(class_names[k])) if class_names is not None else str(int(k))
        colour = _hex(palette[k])
        out.append(
            f'<path class="region" data-class="{name}" fill="{colour}" stroke="{colour}" '
            f'stroke-width="{stroke * 0.5:.6g}" stroke-linejoin="round" d="{"".join(parts)}"/>'
        )
    if len(landscape.boundary):
        coords = _number(landscape.boundary)
        segments = [
            f"M{coords[i]} {coords[i + 1]}L{coords[i + 2]} {coords[i + 3]}"
            for i in range(0, len(coords), 4)
        ]
        out.append(
            f'<path class="boundary" fill="none" stroke="{_BOUNDARY_COLOUR}" '
            f'stroke-width="{stroke * 1.5:.6g}" stroke-linecap="round" d="{"".join(segments)}"/>'
        )
    if points is not None and labels is not None and len(points):
        radius = stroke * 2.5
        out.append(f'<g class="samples" stroke="#1f1f1f" stroke-width="{stroke * 0.4:.6g}">')
        for (x, y), label in zip(np.asarray(points, np.float64), np.asarray(labels), strict=True):
            if np.isfinite(x) and np.isfinite(y):
                out.append(
                    f'<circle cx="{x:.7g}" cy="{y:.7g}" r="{radius:.4g}" '
                    f'fill="{_hex(palette[int(label)])}"/>'
                )
        out.append("</g>")
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(path: str | Path, landscape: ExactLandscape, palette: np.ndarray, **kwargs) -> Path:
    """Write :func:`svg_text` to ``path`` (its folder must exist); the path."""
    path = Path(path)
    path.write_text(svg_text(landscape, palette, **kwargs), encoding="utf-8")
    return path
