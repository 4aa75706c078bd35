"""``parconv gemmini``: the vendor's and parconv's Gemmini tilings of one layer, side by side."""

from __future__ import annotations

import argparse

from .common import add_json_arg, add_layer_args, emit_json, spec_from_args, table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "gemmini",
        help="Gemmini tilings: the C library's tile chooser vs parconv's (modelled cycles, DRAM bytes)",
        description="Tile one int8 layer for a Gemmini accelerator with the C library's "
                    "tiled_conv_auto chooser and with parconv's communication-optimal search, "
                    "and print both tiles, DRAM bytes, modelled cycles and array utilisation. "
                    "All figures come from parconv's Gemmini model (docs/gemmini.md), not hardware.",
    )
    add_layer_args(p)
    for action in p._actions:  # Gemmini computes in int8: make that the (documented) default
        if action.dest == "dtype":
            action.default = "int8"
            action.help = "int8 (default) or uint8 inputs; Gemmini has int8 weights and int32 accumulators"
    p.add_argument("--config", metavar="FILE", default=None,
                   help="Gemmini build description (.toml or .json; default: Gemmini's default config)")
    p.add_argument("--bias", action="store_true", help="count an int32 bias load")
    p.add_argument("--emit-c", action="store_true",
                   help="also print the tiled_conv(...) call with parconv's tile factors")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..gemmini.config import load_config
    from ..gemmini.export import c_snippet
    from ..gemmini.tiling import check_spec, compare

    spec = spec_from_args(args)
    check_spec(spec)
    if spec.kernel[0] != spec.kernel[1]:
        raise ValueError(f"the Gemmini library's tiled_conv supports square kernels only, got "
                         f"{spec.kernel[0]}x{spec.kernel[1]}")
    cfg = load_config(args.config)
    res = compare(spec, cfg, bias=args.bias)
    (vp, vc), (pp, pc) = res["vendor"], res["parconv"]
    payload = {
        "layer": spec.to_dict(), "config": cfg.to_dict(),
        "vendor": {**vp.to_dict(), **vc.to_dict()},
        "parconv": {**pp.to_dict(), **pc.to_dict()},
        "speedup": res["speedup"],
        "modelled": True,
    }
    if args.emit_c:
        payload["c_snippet"] = c_snippet(spec, pp.tile)
    if args.json is not None:
        emit_json(args, payload)
        return 0
    rows = [["tile [b,porows,pocols,pochs,krows,kcols,kchs]", str(list(vp.tile)), str(list(pp.tile))],
            ["loop order / reuse", f"{''.join(vp.order)} / {vp.policy}",
             f"{''.join(pp.order)} / {pp.policy}"]]
    for k in ("input", "weight", "bias", "output", "total"):
        rows.append([f"DRAM bytes {k}", vc.dram_bytes[k], pc.dram_bytes[k]])
    rows += [["tiles", vc.n_tiles, pc.n_tiles],
             ["load / exec / store cycles", f"{vc.load_cycles} / {vc.exec_cycles} / {vc.store_cycles}",
              f"{pc.load_cycles} / {pc.exec_cycles} / {pc.store_cycles}"],
             ["modelled cycles", vc.cycles, pc.cycles],
             ["array utilisation", f"{vc.utilisation:.1%}", f"{pc.utilisation:.1%}"]]
    print(spec.describe())
    print(table(rows, ["", "vendor (tiled_conv_auto)", "parconv"]))
    print(f"speedup (modelled cycles, vendor / parconv): {res['speedup']:.3f}")
    if args.emit_c:
        print()
        print(payload["c_snippet"], end="")
    return 0
