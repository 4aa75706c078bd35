"""The ``parconv`` command line: one module per subcommand.

Each module in :data:`COMMANDS` defines ``register(subparsers)`` (adding its parser and
setting ``func``). Modules are imported when the parser is built; keep their top-level
imports light (MPI is imported only by commands that run under it).
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Subcommand modules under ``parconv.cli``, in help order.
COMMANDS: list[str] = ["bound", "tile", "plan", "run", "gemmini", "simulate", "net"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
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
        print(f"parconv {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
