"""``parconv calibrate``: measure this machine's latency, bandwidth per collective kind,
kernel rates and copy rate into a machine file for ``--machine`` (docs/timemodel.md)."""

from __future__ import annotations

import argparse
import sys

HELP = "measure latency, bandwidth per collective, kernel rates into a machine file"


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate", help=HELP,
        description="Measure the alpha-beta-gamma figures of parconv's time model: under "
                    "`mpiexec -n N parconv calibrate` (N >= 2) alpha and beta of each "
                    "collective kind (allgather, reduce_scatter, alltoallv) by least squares "
                    "over a sweep of message sizes, a ping-pong latency, the local kernel's "
                    "seconds per multiply-accumulate for each dtype class, the packing copy "
                    "rate and the per-call set-up time. One rank measures the local figures "
                    "only (network figures from --network or the built-in this-machine). "
                    "Writes a JSON machine file for `parconv plan/simulate --machine FILE`.")
    p.add_argument("--out", default="-", metavar="FILE",
                   help="machine file to write (JSON; default: stdout)")
    p.add_argument("--quick", action="store_true",
                   help="fewer sizes, repeats and kernel shapes (a few seconds; coarser)")
    p.add_argument("--network", default=None, metavar="PRESET|FILE",
                   help="take the figures this run cannot measure (inter-node on one node; "
                        "all network figures on one rank) from this machine description, "
                        "e.g. ib-hdr")
    p.add_argument("--name", default="this-machine", help="name recorded in the file")
    p.add_argument("--raw", default=None, metavar="FILE",
                   help="also write every measurement (sweep points, fits, per-rank kernel "
                        "rates) as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mpi4py import MPI

    from ..calibrate import calibrate
    from ..io import check_output_path
    from ..timemodel import load_machine

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    try:   # same verdict on every rank before any communication
        for flag, path in (("--out", args.out), ("--raw", args.raw)):
            if path not in (None, "-"):
                check_output_path(path, flag)
        if args.network:
            load_machine(args.network)
    except ValueError as exc:
        if rank == 0:
            print(f"parconv calibrate: error: {exc}", file=sys.stderr, flush=True)
        return 2
    from ..runtime.errors import abort_on_exception

    with abort_on_exception(comm):
        machine, raw = calibrate(comm, quick=args.quick, network=args.network, name=args.name)
    if rank == 0:
        import json

        text = json.dumps(machine.to_dict(), indent=2) + "\n"
        if args.out == "-":
            sys.stdout.write(text)
        else:
            with open(args.out, "w") as fh:
                fh.write(text)
            g = machine.gamma
            print(f"wrote {args.out}: {machine.name}, {raw['world_size']} ranks "
                  f"({machine.ranks_per_node} per node); allgather alpha "
                  f"{machine.intra['allgather'].alpha * 1e6:.2f} us, beta "
                  f"{1 / max(machine.intra['allgather'].beta, 1e-30) / 1e9:.2f} GB/s; "
                  f"fp32 kernel {1 / g['fp32'] / 1e9:.1f} GMAC/s", file=sys.stderr)
        if args.raw:
            with open(args.raw, "w") as fh:
                json.dump(raw, fh, indent=2, default=float)
    return 0
