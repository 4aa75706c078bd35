"""``parconv bound``: communication lower bounds for one layer."""

from __future__ import annotations

import argparse

from .common import (
    add_json_arg,
    add_layer_args,
    add_memory_arg,
    add_procs_arg,
    emit_json,
    memory_from_args,
    spec_from_args,
    table,
)

DEFAULT_MEMORY = "256KiB"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bound", help="lower bounds on data movement (sequential and parallel)",
        description="Lower bounds on the bytes a convolution must move: sequential (between a "
                    "fast memory of --memory bytes and slow memory) and, with --procs > 1, "
                    "parallel memory-dependent (each processor has --memory bytes in all; "
                    "when P x memory cannot hold the data, it bounds each processor's traffic "
                    "across a memory of that size, network plus local, and is reported as "
                    "two-level instead of as a network bound) and "
                    "memory-independent (bytes the busiest processor must send plus receive). "
                    "Also the stronger sequential bound for schedules with one accumulation "
                    "chain per output (every box tiling; whether it holds in general is open). "
                    "Padding taps are not counted as work. A bound <= 0 is reported as "
                    "vacuous. Proofs: docs/theory.md.")
    add_layer_args(p)
    add_memory_arg(p, default=DEFAULT_MEMORY,
                   help_="fast memory (sequential) and memory per processor (parallel), "
                         f"e.g. 256KiB, 1MiB (default {DEFAULT_MEMORY})")
    add_procs_arg(p, default=1)
    add_json_arg(p)
    p.set_defaults(func=run)


def build_payload(args: argparse.Namespace) -> dict:
    """The JSON payload (also the data behind the table)."""
    from ..bounds import (
        parallel_memory_dependent_bound,
        parallel_memory_independent_bound,
        sequential_bound,
    )

    spec = spec_from_args(args)
    memory = memory_from_args(args)
    if args.procs is None or args.procs < 1:
        raise ValueError(f"--procs must be a positive integer, got {args.procs}")
    seq = sequential_bound(spec, memory)
    chain = sequential_bound(spec, memory, single_chain=True)
    payload: dict = {
        "layer": spec.to_dict(),
        "memory_bytes": memory,
        "procs": args.procs,
        "sequential_bytes": seq.bytes,
        "sequential_vacuous": seq.vacuous,
        "sequential_single_chain_bytes": chain.bytes,
        "binding": {"sequential": seq.binding, "sequential_single_chain": chain.binding},
        "bounds": {"sequential": seq.to_dict(), "sequential_single_chain": chain.to_dict()},
    }
    if args.procs > 1:
        dep = parallel_memory_dependent_bound(spec, args.procs, memory)
        ind = parallel_memory_independent_bound(spec, args.procs)
        # The memory-dependent bound is a bound on network bytes only when M is a processor's
        # whole memory, which needs P*M to hold the data (docs/theory.md §5); otherwise it
        # bounds the traffic across each processor's M bits (network plus local memory).
        network_only = bool(dep.details.get("network_only", True))
        payload.update({
            "parallel_memory_dependent_bytes": dep.bytes if network_only else None,
            "parallel_memory_dependent_vacuous": dep.vacuous,
            "parallel_memory_dependent_network_only": network_only,
            "parallel_memory_dependent_two_level_bytes": dep.bytes,
            "parallel_memory_independent_bytes": ind.bytes,
            "parallel_memory_independent_vacuous": ind.vacuous,
        })
        payload["binding"].update({"parallel_memory_dependent": dep.binding,
                                   "parallel_memory_independent": ind.binding})
        payload["bounds"].update({"parallel_memory_dependent": dep.to_dict(),
                                  "parallel_memory_independent": ind.to_dict()})
    return payload


def run(args: argparse.Namespace) -> int:
    from ..units import format_bytes

    payload = build_payload(args)
    if args.json is not None:
        emit_json(args, payload)
        return 0
    spec = spec_from_args(args)
    print(f"layer   {spec.describe()}")
    print(f"memory  {format_bytes(payload['memory_bytes'])} per processor   procs {payload['procs']}"
          f"   rho={spec.rho}   G={spec.macs}")
    rows = []
    for key, label in (("sequential", "sequential"),
                       ("sequential_single_chain", "sequential, one accumulation chain per output"),
                       ("parallel_memory_dependent", "parallel, memory-dependent (per proc)"),
                       ("parallel_memory_independent", "parallel, memory-independent (per proc)")):
        if key not in payload["bounds"]:
            continue
        b = payload["bounds"][key]
        value = "vacuous (<= 0)" if b["vacuous"] else f"{b['bytes']:.0f} B ({format_bytes(b['bytes'])})"
        if key == "parallel_memory_dependent" and not payload["parallel_memory_dependent_network_only"]:
            label = "parallel, memory-dependent, two-level (per proc: network + local memory)"
        rows.append([label, value, b["binding"]])
    print(table(rows, ["bound", "bytes", "binding"]))
    return 0
