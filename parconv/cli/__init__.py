"""The ``parconv`` command line: one module per subcommand.

Each module in :data:`COMMANDS` defines ``register(subparsers)`` (adding its parser and
setting ``func``). Modules are imported when the parser is built; keep their top-level
imports light (MPI is imported only by commands that run under it).

Under ``mpiexec``/``srun`` every rank parses the same arguments, so every rank reaches
the same verdict; argument errors (argparse's usage + message, exit 2), ``--help`` and
the ``ValueError`` refusals below are printed by rank 0 only (the rank is read from the
launcher's variables, :func:`parconv.mpienv.launcher_rank`, without importing MPI) and
every rank exits with the same status.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from typing import IO

from ..mpienv import is_rank_zero

#: Subcommand modules under ``parconv.cli``, in help order.
COMMANDS: list[str] = ["bound", "tile", "plan", "run", "gemmini", "simulate", "net",
                       "calibrate"]


class RankZeroParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose messages (usage, errors, help) are written by launcher
    rank 0 only; its exit statuses are unchanged on every rank. Subparsers inherit it.

    Values like ``-1,0`` (a pair with a negative first number) are read as values, not
    options, so that ``--padding -1,0`` reaches the layer's validation.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+(,-?\d+)+$")

    def _print_message(self, message: str, file: IO[str] | None = None) -> None:
        if is_rank_zero():
            super()._print_message(message, file)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = RankZeroParser(
        prog="parconv",
        description="Communication-optimal parallel convolution: lower bounds, tilings, "
                    "processor-grid plans, and an MPI runtime that counts what it moves.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"parconv.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``parconv`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OverflowError) as exc:
        if is_rank_zero():
            print(f"parconv {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
