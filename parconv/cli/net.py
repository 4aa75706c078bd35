"""``parconv net plan``: plan a whole network (a grid per layer, redistributions charged)."""

from __future__ import annotations

import argparse

from .common import _pair_arg, add_json_arg, emit_json, table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "net", help="whole networks: plan every layer's grid with the redistributions",
        description="Whole-network commands (pure planning; 'net run' and 'net simulate' are "
                    "not implemented yet).")
    sub = p.add_subparsers(dest="net_command", metavar="NET_COMMAND")
    sub.required = True
    q = sub.add_parser(
        "plan", help="choose every layer's grid jointly, with exact redistribution bytes",
        description="Choose a processor grid per convolution by dynamic programming over "
                    "per-layer candidates, charging the exact redistribution between "
                    "consecutive layouts (and on residual edges), pooling halos and the "
                    "global pool's reduce-scatter. Cost: sum over steps of the busiest rank's "
                    "received + sent bytes; compared with the sum of the per-layer "
                    "memory-independent lower bounds and with the baselines (each layer on "
                    "its own best grid, one grid, data parallel, spatial-only).")
    from ..network.models import MODELS

    q.add_argument("--model", default="resnet50", type=model_arg, metavar="NAME|FILE.onnx",
                   help=f"built-in torchvision architecture ({', '.join(sorted(MODELS))}; "
                        "default resnet50) or an ONNX model file (needs the onnx package: "
                        "pip install parconv[onnx]; see docs/network.md for the ops it may use)")
    q.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    q.add_argument("--image", type=_pair_arg, default=None, metavar="H,W",
                   help="input image height,width (default 224,224; an ONNX model's input "
                        "size is its own, --image must match it if given)")
    q.add_argument("--procs", type=int, default=64, help="number of ranks P (default 64)")
    q.add_argument("--dtype", default="fp32",
                   help="precision preset (fp32, bf16, fp16, int8, ...) or IN/FILTER/ACC[/OUT]")
    q.add_argument("--beam", type=int, default=64,
                   help="DP states kept per layer (default 64; 0 = all, exact over the "
                        "candidates)")
    q.add_argument("--all-layers", action="store_true",
                   help="list every node (default: only nodes that move data)")
    add_json_arg(q)
    q.set_defaults(func=run_plan)


def model_arg(text: str) -> str:
    """``--model``: a built-in model name or a path ending in ``.onnx``."""
    from ..network.models import MODELS

    if text in MODELS or text.lower().endswith(".onnx"):
        return text
    raise argparse.ArgumentTypeError(f"unknown model {text!r}; built-in: "
                                     f"{', '.join(sorted(MODELS))}, or a FILE.onnx")


def build_graph(args: argparse.Namespace):
    """``(graph, weights)`` of ``--model`` (``weights`` is None for a built-in model):
    a built-in at ``--image`` (default 224,224), or an ONNX file loaded at ``--batch``.
    Pure: under MPI every rank reaches the same verdict before any communication."""
    from ..network.models import build

    if not args.model.lower().endswith(".onnx"):
        return build(args.model, tuple(args.image or (224, 224))), None
    from ..network.onnx_import import load_onnx

    graph, weights = load_onnx(args.model, batch=args.batch)
    hw = graph.shape(next(iter(graph.nodes)))[1:]
    if args.image is not None and tuple(args.image) != hw:
        raise ValueError(f"--image {args.image[0]},{args.image[1]}: the ONNX model's input "
                         f"is {hw[0]}x{hw[1]} (omit --image or give that size)")
    return graph, weights


def build_plan(args: argparse.Namespace):
    """The network plan for the parsed arguments."""
    from ..dtypes import parse_precision
    from ..network.plan import plan_network

    if args.procs is None or args.procs < 1:
        raise ValueError(f"--procs must be a positive integer, got {args.procs}")
    if args.batch is None or args.batch < 1:
        raise ValueError(f"--batch must be a positive integer, got {args.batch}")
    if args.beam < 0:
        raise ValueError(f"--beam must be >= 0, got {args.beam}")
    graph, _ = build_graph(args)
    return plan_network(graph, args.batch, args.procs, parse_precision(args.dtype),
                        beam=args.beam or None)


def run_plan(args: argparse.Namespace) -> int:
    from ..units import format_bytes

    plan = build_plan(args)
    image = next(lp.shape[2:] for lp in plan.layers if lp.op == "input")
    if args.json is not None:
        payload = plan.to_dict()
        payload["command"] = {"model": args.model, "image": list(image)}
        emit_json(args, payload)
        return 0
    print(f"model   {plan.model}  batch {plan.batch}  image {image[0]}x{image[1]}  "
          f"{plan.precision.label()}  P={plan.procs}")
    print("bytes: busiest rank's received + sent bytes of each step (layer; its input "
          "redistributions)")
    rows = []
    for lp in plan.layers:
        if not (args.all_layers or lp.layer_bytes or lp.redistribution_bytes or lp.placement):
            continue
        ratio = f"{lp.layer_bytes / lp.bound_bytes:.2f}" if lp.bound_bytes else "-"
        rows.append([lp.name, lp.op, "x".join(str(d) for d in lp.shape[1:]),
                     str(lp.placement) if lp.placement else "-", lp.layer_bytes,
                     lp.redistribution_bytes, int(lp.bound_bytes), ratio])
    print(table(rows, ["layer", "op", "out CxHxW", "grid (bxkxcxhxw)", "layer B",
                       "redistribution B", "bound B", "layer/bound"]))
    tot, bd = plan.total_bytes, plan.bound_bytes
    print(f"\ntotal            {tot} B ({format_bytes(tot)})  = layers {plan.layer_bytes} + "
          f"redistributions {plan.redistribution_bytes} "
          f"({100 * plan.redistribution_bytes / max(tot, 1):.1f}%)")
    if bd > 0:
        print(f"sum of bounds    {int(bd)} B ({format_bytes(bd)})  total/bound "
              f"{plan.ratio_to_bound:.3f}  (received-only, grid family: "
              f"{plan.recv_bytes / bd:.3f})")
    for k in ("own_best", "one_grid", "data_parallel", "spatial_only"):
        v = plan.baselines.get(k)
        extra = f"  grid {plan.baselines['one_grid_grid']}" if k == "one_grid" and v else ""
        print(f"baseline {k:14s} " + ("infeasible" if v is None else
                                      f"{v} B  ({v / max(tot, 1):.2f}x the plan){extra}"))
    s = plan.search
    print(f"planned in {plan.seconds:.2f} s ({s.get('candidates')} candidates, at most "
          f"{s.get('max_states')} DP states per node, beam {s.get('beam')}"
          f"{', pruned' if s.get('beam_pruned') else ''}; chosen: {s.get('chosen')})")
    return 0
