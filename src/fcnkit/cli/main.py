"""The ``fcnkit`` entry point: one parser with a subcommand per module of this package.

Errors: fcnkit's own error types (:mod:`fcnkit.errors`, raised by every layer for user mistakes) print one
line, ``fcnkit: error: ...``, and exit with status 2. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..errors import FcnkitError
from ..version import __version__
from . import benchmark, data, demo, eval, export, models, predict, serve, train

COMMANDS = (models, train, eval, predict, serve, demo, benchmark, export, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fcnkit", description="Fully Convolutional Networks for segmentation.")
    parser.add_argument("--version", action="version", version=f"fcnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # fcnkit's modules log through the "fcnkit" logger; the command line shows its INFO and above on stderr,
    # one line per record, flushed as it is written (a file or pipe sees each line as it happens). Other
    # libraries only get WARNING and above through (the ONNX exporter's passes log every rewrite at INFO).
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    if logging.getLogger("fcnkit").level == logging.NOTSET:  # an application's (or a test's) own level stands
        logging.getLogger("fcnkit").setLevel(logging.INFO)
    try:
        return args.func(args)
    except FcnkitError as e:
        print(f"fcnkit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
