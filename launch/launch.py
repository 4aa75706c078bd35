"""parconv-launch: print the plan, then run ``parconv run`` on N MPI ranks.

Usage::

    launch/parconv-launch -n N [--grid auto|BxKxCxHxW] [--dry-run] [--no-plan]
                          [--mpiexec CMD] [parconv run flags: --layer ... --verify --json F]

Finds the MPI launcher (``PARCONV_MPIEXEC``, the virtual environment's ``mpiexec``, the
system ``mpiexec``/``mpirun``, ``srun`` inside SLURM; see :mod:`parconv.mpienv`), binds
one rank per core when the ranks fit on the cores (none when oversubscribed), and refuses
before launching anything when an explicit ``--grid`` does not have N ranks or does not
fit the layer. ``--dry-run`` prints the commands without running them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from parconv import mpienv  # noqa: E402
from parconv.cli.common import add_layer_args, add_memory_arg, spec_from_args  # noqa: E402
from parconv.planner.partition import Grid, check_grid  # noqa: E402

#: Flags of ``parconv run`` that describe the layer (also given to ``parconv plan``).
LAYER_FLAGS = ("--layer", "--in-channels", "--out-channels", "--input", "--kernel", "--stride",
               "--padding", "--dilation", "--batch", "--dtype", "--memory")


def layer_tokens(tokens: list[str]) -> list[str]:
    """The layer-describing flags (with their values) among ``tokens``."""
    out, i = [], 0
    while i < len(tokens):
        t = tokens[i]
        name = t.split("=", 1)[0]
        if name in LAYER_FLAGS:
            if "=" in t:
                out.append(t)
            else:
                out += tokens[i:i + 2]
                i += 1
        i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="parconv-launch",
        description="Print the plan, then run `parconv run` on N MPI ranks with sensible "
                    "binding. Unrecognised flags (layer, --verify, --json FILE, --seed, "
                    "--save ...) are passed to `parconv run`.")
    p.add_argument("-n", "--procs", type=int, required=True, help="number of MPI ranks")
    p.add_argument("--grid", default="auto",
                   help="auto (the planner's grid) or BxKxCxHxW with product N (default auto)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--no-plan", action="store_true", help="do not print the plan first")
    p.add_argument("--mpiexec", help="launcher command (overrides PARCONV_MPIEXEC and the search)")
    return p


def _refuse(msg: str) -> int:
    print(f"parconv-launch: refusing to launch: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    if args.procs < 1:
        return _refuse(f"-n must be positive, got {args.procs}")
    # validate the layer and the grid here, before any MPI process starts
    lp = argparse.ArgumentParser(add_help=False)
    add_layer_args(lp)
    add_memory_arg(lp)
    largs, _ = lp.parse_known_args(rest)
    try:
        spec = spec_from_args(largs)
    except ValueError as exc:
        return _refuse(str(exc))
    if args.grid != "auto":
        try:
            grid = Grid.parse(args.grid)
        except ValueError as exc:
            return _refuse(str(exc))
        if grid.size != args.procs:
            return _refuse(f"--grid {grid} has {grid.size} ranks (product of its dimensions) but "
                           f"-n asks for {args.procs}; use -n {grid.size} or another grid")
        try:
            check_grid(spec, grid, args.procs)
        except ValueError as exc:
            return _refuse(str(exc))

    env = dict(os.environ)
    if args.mpiexec:
        env["PARCONV_MPIEXEC"] = args.mpiexec
    try:
        launcher = mpienv.find_launcher(env)
    except FileNotFoundError as exc:
        return _refuse(str(exc))
    py = [sys.executable, "-m", "parconv"]
    plan_cmd = py + ["plan", "--procs", str(args.procs)] + layer_tokens(rest)
    if args.grid != "auto":
        plan_cmd += ["--grid", args.grid]
    run_cmd = mpienv.launch_command(launcher, args.procs,
                                    py + ["run", "--grid", args.grid] + rest, env=env)
    print(f"# launcher: {shlex.join(launcher.command)} ({launcher.impl}, from {launcher.source}); "
          f"{mpienv.available_cores(env)} cores for {args.procs} ranks", flush=True)
    if args.dry_run:
        if not args.no_plan:
            print(shlex.join(plan_cmd))
        print(shlex.join(run_cmd))
        return 0
    if not args.no_plan:
        print(f"+ {shlex.join(plan_cmd)}", flush=True)
        rc = subprocess.run(plan_cmd, env=env).returncode
        if rc != 0:
            return _refuse(f"`parconv plan` failed (exit {rc})")
    print(f"+ {shlex.join(run_cmd)}", flush=True)
    return subprocess.run(run_cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
