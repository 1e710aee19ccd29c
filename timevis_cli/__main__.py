"""``python -m timevis_cli`` is the ``timevis`` command."""

from timevis_cli.cli import main

main()
