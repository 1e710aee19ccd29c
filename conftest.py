"""Root pytest configuration: modules that must not be imported by --doctest-modules."""

collect_ignore = ["timevis_cli/__main__.py", "scripts"]
