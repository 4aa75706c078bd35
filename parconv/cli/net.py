"""``parconv net plan|run|simulate``: whole networks (a grid per layer, redistributions
charged; run under MPI with every byte counted; or simulated rank by rank)."""

from __future__ import annotations

import argparse

import numpy as np

from .common import _pair_arg, add_json_arg, emit_json, table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "net", help="whole networks: plan every layer's grid with the redistributions",
        description="Whole-network commands: 'net plan' chooses every layer's grid, "
                    "'net run' (under mpiexec) runs the network on that plan counting every "
                    "byte, 'net simulate' gives every rank's bytes without running.")
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
    register_run(sub)


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


# -- net run / net simulate ---------------------------------------------------------------
def _model_args(p: argparse.ArgumentParser, default_batch: int, default_image: int) -> None:
    from ..network.models import MODELS

    p.add_argument("--model", default="resnet18", type=model_arg, metavar="NAME|FILE.onnx",
                   help=f"built-in torchvision architecture ({', '.join(sorted(MODELS))}; "
                        "default resnet18) or an ONNX file (its initializers are the weights)")
    p.add_argument("--batch", type=int, default=default_batch,
                   help=f"batch size (default {default_batch})")
    p.add_argument("--image", type=_pair_arg, default=None,
                   metavar="H,W", help=f"input height,width (default {default_image},"
                                       f"{default_image} for a built-in model; an ONNX "
                                       "model's own input size)")
    p.set_defaults(default_image=(default_image, default_image))
    p.add_argument("--dtype", default="fp32",
                   help="fp32 (default) or bf16 (bfloat16 activations on the wire, float32 "
                        "accumulation); int8 is refused (no requantisation between layers)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the input and of the weights (when --weights is not given)")
    p.add_argument("--weights", metavar="FILE.npz",
                   help="parameters under torchvision names (conv/bn/fc .weight, .bias, "
                        ".running_mean, .running_var); checked name by name and shape by shape")
    p.add_argument("--beam", type=int, default=64,
                   help="DP states kept per layer (default 64; 0 = all)")
    p.add_argument("--all-layers", action="store_true",
                   help="list every node (default: only nodes that move data or run a grid)")


def register_run(sub) -> None:
    r = sub.add_parser(
        "run", help="run a whole network under MPI on its plan (mpiexec -n P parconv net run)",
        description="Run the network on the joint plan of 'net plan' for the job's ranks: "
                    "each convolution on its grid (a DistributedConv2d built once), each "
                    "redistribution one Alltoallw, pooling with its halo exchange, the global "
                    "pool a reduce-scatter, the fc distributed. Every rank counts the bytes "
                    "it hands to MPI per layer and per redistribution; the table shows the "
                    "busiest rank's measured and planned bytes, the bound and the time. Bad "
                    "input is refused on every rank before any communication (exit 2).")
    _model_args(r, 2, 64)
    r.add_argument("--verify", action="store_true",
                   help="gather the logits on rank 0 and compare with the single-process "
                        "reference (parconv.network.reference); exit 1 on mismatch")
    r.add_argument("--save", metavar="FILE.npz",
                   help="write input, output (the logits) and every parameter as used "
                        "(conv/fc .weight and .bias with batch norms folded) on rank 0")
    r.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the report as JSON to FILE (the table still goes to stdout), "
                        "or to stdout instead of the table")
    r.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="deadline on every collective (a hung rank aborts the job, named)")
    r.add_argument("--repeat", type=int, default=1,
                   help="run the network this many times on the same runner (plan once, run "
                        "many); the report is the fastest run's (default 1)")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.set_defaults(func=run_net)
    s = sub.add_parser(
        "simulate", help="every rank's bytes of the network plan, without running",
        description="Build every rank's schedule of every step of the plan (convolutions, "
                    "redistributions, pooling halos, the global pool's reduce-scatter), "
                    "check that every message has its matching receive and that the "
                    "per-rank bytes equal the plan's, and print the per-layer table of "
                    "'net run' (busiest rank's bytes per step).")
    _model_args(s, 2, 64)
    s.add_argument("--procs", type=int, default=4, help="number of ranks P (default 4)")
    add_json_arg(s)
    s.set_defaults(func=run_simulate)


def _setup(args: argparse.Namespace, procs: int):
    """(graph, plan, weights or None) for the arguments; raises ValueError on bad input."""
    from ..dtypes import parse_precision
    from ..network.plan import plan_network
    from ..network.reference import check_network_precision
    from ..network.weights import load_weights

    if args.batch is None or args.batch < 1:
        raise ValueError(f"--batch must be a positive integer, got {args.batch}")
    if args.beam < 0:
        raise ValueError(f"--beam must be >= 0, got {args.beam}")
    if procs < 1:
        raise ValueError(f"--procs must be a positive integer, got {procs}")
    precision = parse_precision(args.dtype)
    check_network_precision(precision)
    if args.image is None and not args.model.lower().endswith(".onnx"):
        args.image = args.default_image
    graph, weights = build_graph(args)
    args.image = tuple(graph.shape(next(iter(graph.nodes)))[1:])
    if args.weights:
        weights = load_weights(args.weights, graph)
    plan = plan_network(graph, args.batch, procs, precision, beam=args.beam or None)
    return graph, plan, weights


def _rows(plan, measured, all_layers: bool) -> list[list]:
    """Table rows: per layer the grid, layer and redistribution bytes (busiest rank,
    measured and planned, received + sent), the bound and the time (max over ranks)."""
    rows = []
    for lp in plan.layers:
        m = measured[lp.name]
        if not (all_layers or lp.placement or m["layer_planned"] or m["redist_planned"]):
            continue
        rows.append([lp.name, lp.op, str(lp.placement) if lp.placement else "-",
                     m["layer_measured"], m["layer_planned"], m["redist_measured"],
                     m["redist_planned"], int(lp.bound_bytes),
                     "-" if m.get("seconds") is None else f"{m['seconds']:.4f}"])
    return rows


HEADER = ["layer", "op", "grid (bxkxcxhxw)", "layer B", "planned", "redistrib. B", "planned",
          "bound B", "time s"]


def _per_layer(plan, per_rank) -> dict[str, dict]:
    """Busiest rank's received + sent bytes per layer from per-rank figures:
    ``per_rank[name] = (layer recv[P], layer send[P], redistribution recv[P], send[P],
    seconds[P] or None)``."""
    out = {}
    for lp in plan.layers:
        lr, ls, rr, rs, secs = per_rank[lp.name]
        red_planned = sum(r.max_rank_traffic_bytes for r in lp.redistributions.values())
        out[lp.name] = {
            "layer_measured": int((lr + ls).max()), "layer_planned": lp.layer_bytes,
            # each redistribution is its own step: the busiest rank of each, summed
            "redist_measured": int(sum((a + b).max() for a, b in zip(rr, rs))) if rr else 0,
            "redist_planned": red_planned,
            "seconds": None if secs is None else float(np.max(secs)),
        }
    return out


def _totals(plan, per_layer) -> dict:
    lm = sum(v["layer_measured"] for v in per_layer.values())
    rm = sum(v["redist_measured"] for v in per_layer.values())
    return {"measured_total_bytes": lm + rm, "measured_layer_bytes": lm,
            "measured_redistribution_bytes": rm, "planned_total_bytes": plan.total_bytes,
            "bound_bytes": plan.bound_bytes,
            "measured_ratio_to_bound": (lm + rm) / plan.bound_bytes if plan.bound_bytes else None}


def _print_totals(plan, tot: dict, what: str) -> None:
    from ..units import format_bytes

    t = tot["measured_total_bytes"]
    print(f"\ntotal ({what})  {t} B ({format_bytes(t)}) = layers {tot['measured_layer_bytes']} "
          f"+ redistributions {tot['measured_redistribution_bytes']}; planned "
          f"{plan.total_bytes} B")
    if plan.bound_bytes > 0:
        print(f"sum of per-layer bounds  {int(plan.bound_bytes)} B "
              f"({format_bytes(plan.bound_bytes)}); total/bound "
              f"{t / plan.bound_bytes:.3f} (received + sent of each step's busiest rank)")


def run_simulate(args: argparse.Namespace) -> int:
    from ..network.runtime import simulate_network

    graph, plan, _ = _setup(args, args.procs if args.procs is not None else 0)
    sim = simulate_network(graph, plan)
    per_rank = {n: (v["layer"][0], v["layer"][1], [a for a, _ in v["redistributions"].values()],
                    [b for _, b in v["redistributions"].values()], None)
                for n, v in sim.layers.items()}
    per_layer = _per_layer(plan, per_rank)
    tot = _totals(plan, per_layer)
    payload = {"command": "net simulate", "model": args.model, "image": list(args.image),
               "batch": args.batch, "precision": plan.precision.label(), "procs": plan.procs,
               "consistent": not sim.mismatches, "mismatches": sim.mismatches[:100],
               "messages": sim.messages, "seconds": sim.seconds, **tot,
               "layers": [{"name": lp.name, "op": lp.op,
                           "grid": str(lp.placement) if lp.placement else None,
                           **per_layer[lp.name], "bound_bytes": lp.bound_bytes,
                           "ranks": {"layer_recv": sim.layers[lp.name]["layer"][0],
                                     "layer_send": sim.layers[lp.name]["layer"][1],
                                     "redistributions": {
                                         x: {"recv": a, "send": b} for x, (a, b)
                                         in sim.layers[lp.name]["redistributions"].items()}}}
                          for lp in plan.layers]}
    if args.json is not None:
        emit_json(args, payload)
        return 0 if not sim.mismatches else 1
    print(f"model   {plan.model}  batch {plan.batch}  image {args.image[0]}x{args.image[1]}  "
          f"{plan.precision.label()}  P={plan.procs}  (simulated: every rank's schedules)")
    print(table(_rows(plan, per_layer, args.all_layers), HEADER))
    _print_totals(plan, tot, "simulated")
    print(f"{sim.messages} messages checked; every send has its matching receive and every "
          f"rank's bytes equal the plan's: {'yes' if not sim.mismatches else 'NO'}")
    for m in sim.mismatches[:20]:
        print(f"  mismatch: {m}")
    return 0 if not sim.mismatches else 1


def run_net(args: argparse.Namespace) -> int:
    import sys
    import time

    from mpi4py import MPI

    from ..io import check_output_path, npz_path, save_npz
    from ..mpienv import is_rank_zero
    from ..runtime.deadline import check_timeout
    from ..runtime.errors import abort_on_exception, check_slurm

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    speaker = rank == 0 and (size > 1 or is_rank_zero())
    out = sys.stderr if args.json == "-" else sys.stdout

    def say(msg: str) -> None:
        if rank == 0 and not args.quiet:
            print(f"[parconv net run] {msg}", flush=True, file=out)

    # -- validation: same arguments, same verdict on every rank, before any communication
    save_path = npz_path(args.save) if args.save else None
    try:
        check_slurm(size)
        check_timeout(args.timeout)
        if args.repeat < 1:
            raise ValueError(f"--repeat must be a positive integer, got {args.repeat}")
        for flag, path in (("--json", None if args.json in (None, "-") else args.json),
                           ("--save", save_path and str(save_path))):
            if path is not None:
                check_output_path(path, flag)
        t0 = time.perf_counter()
        graph, plan, weights = _setup(args, size)
        plan_s = time.perf_counter() - t0
    except (ValueError, OverflowError) as exc:
        if speaker:
            print(f"parconv net run: error: {exc}", file=sys.stderr, flush=True)
        return 2
    from ..dtypes import numpy_dtype
    from ..kernels import warmup
    from ..network.reference import forward, seeded_input
    from ..network.runtime import NetworkRunner, gather_layout
    from ..network.weights import folded_weights, seeded_weights

    with abort_on_exception(comm):
        # the ranks planned independently: agree on the plan before any data moves
        import zlib

        digest = zlib.crc32(str([(lp.name, str(lp.placement)) for lp in plan.layers]).encode())
        if comm.allgather(digest) != [digest] * size:
            raise RuntimeError("the ranks computed different plans")
        say(f"{plan.model} batch {plan.batch} image {args.image[0]}x{args.image[1]} "
            f"{plan.precision.label()} on {size} ranks; planned in {plan_s:.2f} s")
        if weights is None:
            weights = seeded_weights(graph, args.seed)
        p = plan.precision
        compile_s = warmup([(numpy_dtype(p.input), numpy_dtype(p.filter))])
        t0 = time.perf_counter()
        runner = NetworkRunner(graph, plan, weights, comm, timeout=args.timeout)
        build_s = time.perf_counter() - t0
        x = seeded_input((args.batch, *graph[next(iter(graph.nodes))].shape), args.seed)
        xl = runner.input_block(x)
        say(f"built {runner.builds} convolution layers and the exchanges in {build_s:.2f} s; "
            "running")
        walls = []
        for _ in range(args.repeat):
            comm.Barrier()
            t0 = time.perf_counter()
            logits_local = runner.run(xl)
            walls.append(time.perf_counter() - t0)
            if min(walls) == walls[-1]:
                stats = dict(runner.stats)
        runner.stats = stats
        wall = min(walls)
        mine = {"rank": rank, "wall_seconds": wall, "wall_seconds_all": walls,
                "compile_seconds": compile_s,
                "build_seconds": build_s,
                "layers": {n: {"layer": list(s.layer),
                               "redistributions": {x: list(v) for x, v in
                                                   s.redistributions.items()},
                               "seconds": s.seconds} for n, s in runner.stats.items()},
                "mismatches": runner.mismatches()}
        entries = comm.gather(mine, root=0)
        logits = None
        if args.verify or args.save:
            logits = gather_layout(runner.output_layout(), logits_local, comm)
        verdict = None
        if rank == 0:
            if logits is not None:
                logits = logits.reshape(logits.shape[0], -1)
            if args.verify:
                say("verifying against the single-process reference")
                ref = forward(graph, weights, x, plan.precision)
                verdict = _compare(ref, logits, plan.precision)
            if args.save:
                fw = folded_weights(graph, weights)
                fdt = numpy_dtype(p.filter)
                used = {k: (v.astype(fdt) if k.endswith(".weight") else v) for k, v in fw.items()}
                save_npz(save_path, input=x, output=logits, **used)
                say(f"saved input, output and {len(used)} parameters to {save_path}")
            _report_run(args, plan, entries, verdict)
        ok = comm.bcast(None if verdict is None else verdict["ok"], root=0)
        match = comm.bcast(None if rank else all(not e["mismatches"] for e in entries), root=0)
        runner.free()
    if ok is False:
        if speaker:
            print("parconv net run: error: verification failed", file=sys.stderr, flush=True)
        return 1
    return 0 if match else 1


def _compare(ref, got, precision) -> dict:
    """Logits against the reference: max |error| within ``tol · max|ref|`` (fp32 1e-4;
    bf16/fp16 3e-2: the reference rounds exactly where the runtime does, only float32
    summation order differs)."""
    import numpy as np

    rel = 1e-4 if precision.input in ("float32", "float64") else 3e-2
    err = float(np.abs(got.astype(np.float64) - ref).max())
    scale = float(np.abs(ref).max())
    ok = bool(got.shape == ref.shape and err <= rel * max(scale, 1e-30))
    return {"ok": ok, "max_abs_error": err, "max_abs_reference": scale, "tolerance": rel * scale,
            "message": f"logits {got.shape}: max |error| {err:.3g}, max |reference| "
                       f"{scale:.3g}, tolerance {rel:g} x max|reference|"}


def _report_run(args, plan, entries, verdict) -> None:
    import numpy as np

    P = len(entries)
    per_rank = {}
    for lp in plan.layers:
        ls = [e["layers"][lp.name] for e in entries]
        red = list(lp.redistributions) or []
        per_rank[lp.name] = (
            np.array([s["layer"][0] for s in ls]), np.array([s["layer"][1] for s in ls]),
            [np.array([s["redistributions"].get(x, [0, 0])[0] for s in ls]) for x in red],
            [np.array([s["redistributions"].get(x, [0, 0])[1] for s in ls]) for x in red],
            np.array([s["seconds"] for s in ls]))
    per_layer = _per_layer(plan, per_rank)
    tot = _totals(plan, per_layer)
    mism = [f"rank {e['rank']}: {m}" for e in entries for m in e["mismatches"]]
    wall = max(e["wall_seconds"] for e in entries)
    payload = {
        "command": "net run", "model": args.model, "image": list(args.image),
        "batch": args.batch, "precision": plan.precision.label(), "procs": P,
        "seed": args.seed, "weights": args.weights or f"seeded ({args.seed})",
        "wall_seconds": wall, "measured_equals_planned": not mism, "mismatches": mism[:100],
        **tot, "baselines": plan.baselines,
        "verify": verdict,
        "layers": [{"name": lp.name, "op": lp.op,
                    "grid": str(lp.placement) if lp.placement else None, **per_layer[lp.name],
                    "bound_bytes": lp.bound_bytes,
                    "ranks": [{"rank": e["rank"], **e["layers"][lp.name],
                               "planned_layer": [int(lp.step.recv[e["rank"]]),
                                                 int(lp.step.send[e["rank"]])],
                               "planned_redistributions": {
                                   x: [int(r.recv_bytes[e["rank"]]), int(r.send_bytes[e["rank"]])]
                                   for x, r in lp.redistributions.items()}}
                              for e in entries]}
                   for lp in plan.layers],
        "ranks": [{k: e[k] for k in ("rank", "wall_seconds", "wall_seconds_all",
                                     "compile_seconds", "build_seconds")}
                  for e in entries],
    }
    if args.json not in (None, "-"):
        emit_json(args, payload)
    if args.json == "-":
        emit_json(args, payload)
        return
    print(f"model   {plan.model}  batch {plan.batch}  image {args.image[0]}x{args.image[1]}  "
          f"{plan.precision.label()}  P={P}")
    print("bytes: received + sent of each step's busiest rank (measured from the MPI buffers "
          "and datatypes; planned by parconv.network.plan)")
    print(table(_rows(plan, per_layer, args.all_layers), HEADER))
    _print_totals(plan, tot, "measured")
    print(f"wall time {wall:.3f} s (slowest rank's fastest of {args.repeat} run"
          f"{'s' if args.repeat > 1 else ''})")
    print(f"measured bytes equal planned bytes on every rank, layer and redistribution: "
          f"{'yes' if not mism else 'NO'}")
    for m in mism[:20]:
        print(f"  mismatch: {m}")
    if verdict is not None:
        print(f"verify: {'OK' if verdict['ok'] else 'FAILED'}: {verdict['message']}")
    if args.json not in (None, "-"):
        print(f"wrote {args.json}")
