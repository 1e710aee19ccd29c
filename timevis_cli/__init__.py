"""The offline tools behind the ``timevis`` command, one subpackage per stage.

- :mod:`timevis_cli.fit`: the visualization model (kNN, reduction, complex, projector, training,
  refinement) and the ``fit/`` outputs.
- :mod:`timevis_cli.render`: landscapes, frames, the GIF/MP4 and the HTML viewer.
- :mod:`timevis_cli.evaluate`: the faithfulness metrics and the ``eval/`` outputs.

Shared plumbing stays at the top: ``cli`` and ``options`` (the command line), ``config``,
``ranges``, ``device``, ``outputs``, ``info`` and ``errors``.
"""
