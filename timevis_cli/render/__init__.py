"""Stage 3, ``timevis render``: the animated decision landscapes.

Modules: ``landscape`` (canvas bounds, the decoded grid, per-epoch classes, margins and colours),
``playback`` (render planning and the per-epoch landscapes computed in the parent process),
``frames`` (the pyplot-free frame renderer and its process pool), ``animate`` (GIF and MP4) and
``viewer`` (the self-contained HTML page).
"""
