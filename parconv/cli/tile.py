"""``parconv tile``: the communication-optimal sequential box tiling of one layer."""

from __future__ import annotations

import argparse

from .common import (
    add_json_arg,
    add_layer_args,
    add_memory_arg,
    emit_json,
    memory_from_args,
    spec_from_args,
    table,
)

DEFAULT_MEMORY = "256KiB"


def register(subparsers) -> None:
    from ..tiling import ORDERS

    p = subparsers.add_parser(
        "tile", help="communication-optimal sequential tiling (one fast memory level)",
        description="Box tile sizes (b,k,c,h,w,r,s; h,w are output sizes) and a tile-loop order "
                    "minimising the exact bytes moved between a fast memory of --memory bytes and "
                    "slow memory (edge tiles and clipped halos counted exactly), compared with the "
                    "general sequential lower bound, the bound for schedules with one "
                    "accumulation chain per output (a class containing every box tiling) and "
                    "the Im2Col baseline. Schedule semantics and formulas: docs/tiling.md.")
    add_layer_args(p)
    add_memory_arg(p, default=DEFAULT_MEMORY,
                   help_=f"fast memory, e.g. 256KiB, 1MiB (default {DEFAULT_MEMORY})")
    p.add_argument("--order", action="append", metavar="ORDER",
                   help=f"restrict the search to this tile-loop order (repeatable): one of "
                        f"{', '.join(ORDERS)} or a permutation of 'bkchwrs', outermost first "
                        f"(default: all named orders)")
    add_json_arg(p)
    p.set_defaults(func=run)


def build_payload(args: argparse.Namespace) -> dict:
    """The JSON payload (also the data behind the table)."""
    from ..bounds import sequential_bound
    from ..im2col import im2col_breakdown
    from ..tiling import best_tiling, compulsory_bits, footprint_bits, traffic_breakdown

    spec = spec_from_args(args)
    memory = memory_from_args(args)
    tiling = best_tiling(spec, memory, orders=args.order)
    bound = sequential_bound(spec, memory)
    chain = sequential_bound(spec, memory, single_chain=True)
    im2col = im2col_breakdown(spec, memory)
    parts = traffic_breakdown(spec, tiling.tile, tiling.order)
    traffic = tiling.traffic_bits / 8
    return {
        "layer": spec.to_dict(),
        "memory_bytes": memory,
        "tile": dict(tiling.tile),
        "order": tiling.order,
        "loop_order": tiling.loop_order,
        "traffic_bytes": traffic,
        "traffic_breakdown_bytes": {k: v / 8 for k, v in parts.items()},
        "footprint_bytes": sum(footprint_bits(spec, tiling.tile).values()) / 8,
        "lower_bound_bytes": bound.bytes,
        "lower_bound_binding": bound.binding,
        "single_chain_bound_bytes": chain.bytes,
        "single_chain_bound_binding": chain.binding,
        "compulsory_bytes": compulsory_bits(spec) / 8,
        "im2col_traffic_bytes": im2col["total"] / 8,
        "im2col_breakdown_bytes": {k: im2col[k] / 8 for k in ("build_read", "matrix_write", "gemm")},
        "ratio_to_bound": traffic / bound.bytes if bound.bytes > 0 else None,
        "ratio_to_single_chain_bound": traffic / chain.bytes if chain.bytes > 0 else None,
        "im2col_over_tiling": im2col["total"] / tiling.traffic_bits,
    }


def run(args: argparse.Namespace) -> int:
    from ..units import format_bytes

    payload = build_payload(args)
    if args.json is not None:
        emit_json(args, payload)
        return 0
    spec = spec_from_args(args)
    tile = payload["tile"]
    print(f"layer   {spec.describe()}")
    print(f"memory  {format_bytes(payload['memory_bytes'])}   tile "
          + " ".join(f"{d}={tile[d]}" for d in "bkchwrs")
          + f"   order {payload['order']} ({payload['loop_order']}, outermost first)"
          + f"   peak working set {format_bytes(payload['footprint_bytes'])}")
    ratio = payload["ratio_to_bound"]
    rows = [
        ["tiling traffic", payload["traffic_bytes"], format_bytes(payload["traffic_bytes"]),
         "" if ratio is None else f"{ratio:.3f}"],
        ["  input", payload["traffic_breakdown_bytes"]["input"],
         format_bytes(payload["traffic_breakdown_bytes"]["input"]), ""],
        ["  filter", payload["traffic_breakdown_bytes"]["filter"],
         format_bytes(payload["traffic_breakdown_bytes"]["filter"]), ""],
        ["  output (partials + final)", payload["traffic_breakdown_bytes"]["output"],
         format_bytes(payload["traffic_breakdown_bytes"]["output"]), ""],
        [f"lower bound ({payload['lower_bound_binding']})", payload["lower_bound_bytes"],
         format_bytes(payload["lower_bound_bytes"]), "1"],
        ["lower bound, one accumulation chain per output", payload["single_chain_bound_bytes"],
         format_bytes(payload["single_chain_bound_bytes"]),
         "" if ratio is None else f"{payload['single_chain_bound_bytes'] / payload['lower_bound_bytes']:.3f}"],
        ["compulsory", payload["compulsory_bytes"], format_bytes(payload["compulsory_bytes"]), ""],
        ["Im2Col baseline", payload["im2col_traffic_bytes"],
         format_bytes(payload["im2col_traffic_bytes"]),
         "" if ratio is None else f"{payload['im2col_traffic_bytes'] / payload['lower_bound_bytes']:.3f}"],
    ]
    rows = [[r[0], int(round(r[1])), *r[2:]] for r in rows]
    print(table(rows, ["", "bytes", "", "/ bound"]))
    chain = payload["ratio_to_single_chain_bound"]
    if chain is not None:
        print(f"tiling / one-chain bound = {chain:.3f} (that bound holds for every box tiling and "
              "loop order; the rest of the gap: docs/tiling.md §6)")
    print(f"Im2Col moves {payload['im2col_over_tiling']:.2f}x the tiling's bytes")
    return 0
