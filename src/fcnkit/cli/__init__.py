"""The ``fcnkit`` command line: :mod:`.main` (entry point, error handling), :mod:`.args` (shared flags and
parsers) and one module per command. The top layer: library code never imports it."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
