"""``parconv plan``: choose the processor grid for a layer and show every rank's bytes."""

from __future__ import annotations

import argparse

from .common import (
    TIME_HEADER,
    add_json_arg,
    add_layer_args,
    add_machine_args,
    add_memory_arg,
    add_pass_args,
    add_procs_arg,
    emit_json,
    machine_from_args,
    memory_from_args,
    pass_spec_from_args,
    table,
    time_rows,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="choose the processor grid minimising the busiest rank's received + sent "
                     "bytes",
        description="Choose the grid P_b x P_k x P_c x P_h x P_w for P ranks that minimises the "
                    "busiest rank's received + sent bytes (exact, uneven blocks and halos "
                    "included; the quantity the lower bound bounds for every execution), "
                    "compare it with the memory-independent lower bound and with the fixed "
                    "strategies, and list each rank's bytes per operation. With --pass, for a "
                    "training pass (dgrad, wgrad) or a whole training step (one grid for "
                    "forward + dgrad + wgrad: the busiest rank's step total, compared with "
                    "the step bound for any algorithm; also the bound for passes run "
                    "separately against the sum of each pass's busiest rank); the fixed "
                    "strategies then include data-parallel training (filters replicated, "
                    "weight gradients all-reduced).")
    add_layer_args(p)
    add_procs_arg(p, default=4)
    add_memory_arg(p, help_="per-rank memory limit, e.g. 1MiB (grids whose busiest rank needs "
                            "more are excluded; default: no limit)")
    p.add_argument("--grid", default="auto", metavar="auto|BxKxCxHxW",
                   help="'auto' (default) searches all grids; BxKxCxHxW evaluates that grid")
    add_pass_args(p)
    p.add_argument("--objective", choices=["bytes", "time"], default="bytes",
                   help="bytes (default): least busiest-rank received bytes; time: least "
                        "predicted step time under --machine (docs/timemodel.md)")
    add_machine_args(p)
    p.add_argument("--max-evaluations", type=int, default=None, metavar="N",
                   help="--objective time: predict at most N grids, in increasing order of "
                        "their time lower bound (default: exact search over all candidates)")
    p.add_argument("--show-ranks", type=int, default=16, metavar="N",
                   help="ranks listed in the table (default 16; the JSON lists all)")
    add_json_arg(p)
    p.set_defaults(func=run)


def build_payload(args: argparse.Namespace):
    """The plan, the strategies and the JSON payload for the parsed arguments."""
    from ..planner.partition import Grid
    from ..planner.plan import plan, plan_for_grid
    from ..planner.strategies import all_strategies, best_fixed

    spec = pass_spec_from_args(args)
    memory = memory_from_args(args)
    pass_, keep = args.pass_, not args.recompute_window
    if args.procs is None or args.procs < 1:
        raise ValueError(f"--procs must be a positive integer, got {args.procs}")
    machine = machine_from_args(args)
    if args.objective == "time" and machine is None:
        raise ValueError("--objective time needs --machine PRESET|FILE")
    search = None
    if args.grid == "auto" and args.objective == "time":
        from ..timemodel import best_grid_by_time

        search = best_grid_by_time(spec, args.procs, machine, memory, pass_=pass_,
                                   overlap=args.overlap, max_evaluations=args.max_evaluations)
        pl = plan_for_grid(spec, search.grid, memory, pass_=pass_, keep_window=keep)
    elif args.grid == "auto":
        pl = plan(spec, args.procs, memory, pass_=pass_, keep_window=keep)
    else:
        grid = Grid.parse(args.grid)
        if grid.size != args.procs:
            raise ValueError(f"--grid {grid} has {grid.size} ranks but --procs is {args.procs}")
        pl = plan_for_grid(spec, grid, memory, pass_=pass_, keep_window=keep)
    strategies = all_strategies(spec, args.procs, memory, pass_, keep)
    payload = pl.to_dict(include_ranks=args.json is not None)
    best = best_fixed(strategies)
    payload["best_fixed"] = None if best is None else best.name
    payload["best_fixed_over_planned"] = (
        None if best is None else best.max_rank_traffic_bytes / max(pl.max_rank_traffic_bytes, 1))
    payload["strategies"] = {k: (None if v is None else v.max_rank_recv_bytes)
                             for k, v in strategies.items()}
    payload["strategies_traffic"] = {k: (None if v is None else v.max_rank_traffic_bytes)
                                     for k, v in strategies.items()}
    payload["strategy_grids"] = {k: (None if v is None else v.to_dict()) for k, v in strategies.items()}
    payload["objective"] = args.objective
    if machine is not None:
        from ..timemodel import predict

        pred = search.prediction if search else predict(spec, pl.grid, machine,
                                                         overlap=args.overlap)
        payload["time"] = pred.to_dict(include_ranks=args.json is not None)
        payload["time"]["machine_description"] = machine.to_dict()
        if search is not None:
            payload["time_search"] = search.to_dict()
    return pl, strategies, payload


def _b(n) -> str:
    from ..units import format_bytes

    return f"{int(n)} B ({format_bytes(n)})" if n >= 1024 else f"{int(n)} B"


def run(args: argparse.Namespace) -> int:
    pl, strategies, payload = build_payload(args)
    if args.json is not None:
        emit_json(args, payload)
        return 0
    g = pl.grid
    print(f"layer   {pl.spec.describe()}")
    what = {"forward": "forward pass", "dgrad": "input gradient (dgrad) alone",
            "wgrad": "filter gradient (wgrad) alone",
            "step": "training step (forward + dgrad + wgrad, one grid)"}[pl.pass_]
    keep = "" if pl.pass_ != "step" else ("; input window kept for wgrad" if pl.keep_window
                                          else "; input window gathered again for wgrad")
    print(f"pass    {pl.pass_}: {what}{keep}")
    lim = "none" if pl.memory_limit_bytes is None else _b(pl.memory_limit_bytes)
    print(f"procs   {pl.procs}   (per-rank memory limit: {lim})")
    print(f"grid    {g}  (b={g.b} k={g.k} c={g.c} h={g.h} w={g.w})"
          + ("" if args.grid == "auto" else "  [given]"))
    objective = ("the planner's objective" + (", the busiest rank's step total"
                                              if pl.pass_ == "step" else "")
                 if args.objective == "bytes" else "objective: predicted time")
    print(f"max-rank recv + send      {_b(pl.max_rank_traffic_bytes)}   ({objective})")
    print(f"max-rank received bytes   {_b(pl.max_rank_recv_bytes)}")
    print(f"total received bytes      {_b(pl.total_recv_bytes)}")
    print(f"max-rank memory           {_b(pl.max_rank_memory_bytes)}")
    if pl.lower_bound_bytes:
        label = ("step bound (any algorithm, data kept or not)" if pl.pass_ == "step"
                 else "memory-independent bound")
        print(f"{label}  {_b(pl.lower_bound_bytes)}  (binding: {pl.bound.get('binding')})")
        print(f"  busiest rank's recv + send = {pl.ratio_to_bound:.3f}x the bound")
        if pl.recv_ratio_grid_family is not None:
            print(f"  received only: {pl.recv_ratio_grid_family:.3f}x the busiest-processor "
                  f"lemma {_b(pl.lemma_bound_bytes)} (grid-family figure, not a bound ratio: "
                  "relaying schedules receive less; docs/theory.md §5)")
    else:
        print(f"memory-independent bound  vacuous at P={pl.procs} ({pl.bound.get('bytes', 0):.4g} B)")
    sep = pl.bound.get("separate")
    if sep and sep.get("ratio"):
        parts = sep["per_pass_max_rank_traffic_bytes"]
        print(f"separate passes: sum over forward, dgrad, wgrad (each alone on this grid) of the "
              f"busiest rank's recv + send = {_b(sep['separate_sum_bytes'])} = "
              f"{sep['ratio']:.3f}x the bound for passes run separately ({_b(sep['bytes'])}; "
              + ", ".join(f"{k} {v}" for k, v in parts.items()) + ")")
    if "time" in payload:
        t = payload["time"]
        print(f"\npredicted step time {t['step_seconds'] * 1e3:.4g} ms on {t['machine']} "
              f"({'overlap' if t['overlap'] else 'phases in sequence'}; busiest rank "
              f"{t['busiest_rank']['rank']})")
        if "time_search" in payload:
            ts = payload["time_search"]
            print(f"  bytes-optimal grid {ts['bytes_grid_text']}: "
                  f"{ts['bytes_grid_step_seconds'] * 1e3:.4g} ms "
                  f"({ts['speedup_over_bytes']:.3f}x the time-optimal); "
                  f"{ts['evaluated']} of {ts['candidates']} grids predicted ("
                  + ("exact search)" if ts["exact"] else "capped by --max-evaluations)"))
        from ..timemodel import predict as _predict

        print(table(time_rows(_predict(pl.spec, pl.grid, machine_from_args(args),
                                       pass_=pl.pass_, overlap=args.overlap,
                                       keep_window=pl.keep_window)), TIME_HEADER))
    rows = []
    for name, r in strategies.items():
        if r is None:
            rows.append([name, "infeasible" if pl.pass_ == "forward" or name != "im2col_matmul"
                         else "forward only", "-", "-", "-"])
        else:
            grid = "x".join(f"{k}{v}" for k, v in r.grid.items() if v > 1) or "1"
            rows.append([name, grid, r.max_rank_traffic_bytes,
                         f"{r.max_rank_traffic_bytes / max(pl.max_rank_traffic_bytes, 1):.2f}",
                         r.max_rank_recv_bytes])
    print(f"\nfixed strategies for {pl.pass_} (best grid of each family; same accounting)")
    print(table(rows, ["strategy", "grid", "max-rank recv+send B", "x planned",
                       "max-rank recv B"]))
    if payload["best_fixed"]:
        print(f"best fixed strategy: {payload['best_fixed']}, "
              f"{payload['best_fixed_over_planned']:.3f}x the planned busiest-rank recv + send")
    vols = pl.rank_volumes()
    n = min(pl.procs, max(args.show_ranks, 0))
    if n:
        ops = pl.operations
        head = ["rank", "coords"] + [_short(op) for op in ops] + ["recv B", "send B",
                                                                  "memory B"]
        rows = [[r, ",".join(str(c) for c in g.coords(r))]
                + [int(vols[op + ".recv"][r]) for op in ops]
                + [int(vols["recv_bytes"][r]), int(vols["send_bytes"][r]), int(vols["memory_bytes"][r])]
                for r in range(n)]
        more = f", first {n} of {pl.procs}" if n < pl.procs else ""
        print(f"\nper-rank received bytes per operation (b,k,c,h,w coords{more})")
        print(table(rows, head))
    return 0


#: Short column names of the operations.
SHORT = {"input_allgather": "in-ag", "input_halo": "halo", "filter_allgather": "filt-ag",
         "output_reduce_scatter": "out-rs", "grad_output_allgather": "dout-ag",
         "grad_input_halo": "din-halo", "grad_input_reduce_scatter": "din-rs",
         "grad_filter_reduce_scatter": "df-rs", "recompute_input_allgather": "re-in-ag",
         "recompute_input_halo": "re-halo"}


def _short(op: str) -> str:
    return SHORT.get(op, op)
