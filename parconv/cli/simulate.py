"""``parconv simulate``: the runtime's exact message schedule for every virtual rank,
without data or MPI; per-rank bytes and a schedule-consistency check."""

from __future__ import annotations

import argparse
import sys

from .common import (
    TIME_HEADER,
    add_json_arg,
    add_layer_args,
    add_machine_args,
    add_pass_args,
    emit_json,
    machine_from_args,
    pass_spec_from_args,
    table,
    time_rows,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate", help="per-rank bytes of the runtime's schedule for P virtual ranks (no MPI)",
        description="Build the message schedule `parconv run` executes for every one of P "
                    "virtual ranks (no data, no MPI), report each rank's received and sent "
                    "bytes per operation, and check that every message has a matching "
                    "receiver (what rank a sends to b equals what b expects from a). Exits 1 "
                    "on a mismatch. The bytes equal a real run's measured bytes. With --pass, "
                    "the operations of a training pass or step (the backward ones are the "
                    "adjoints of the forward ones, checked the same way).")
    add_layer_args(p)
    p.add_argument("--procs", type=int, default=None,
                   help="number of virtual ranks P (default: the product of --grid)")
    p.add_argument("--grid", default="auto", metavar="auto|BxKxCxHxW",
                   help="'auto' (default): the planner's grid for P ranks; or an explicit grid")
    p.add_argument("--no-check", action="store_true",
                   help="skip the schedule-consistency check (bytes only; less memory)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_pass_args(p, "simulate")
    add_machine_args(p)
    add_json_arg(p)
    p.set_defaults(func=run)


def _resolve(args: argparse.Namespace):
    from ..planner.partition import Grid, check_grid
    from ..planner.plan import plan, plan_for_grid

    spec = pass_spec_from_args(args)
    kw = {"pass_": args.pass_, "keep_window": not args.recompute_window}
    if args.grid == "auto":
        if args.procs is None or args.procs < 1:
            raise ValueError(f"--procs must be a positive integer (or give --grid), got {args.procs}")
        pl = plan(spec, args.procs, **kw)
    else:
        grid = Grid.parse(args.grid)
        if args.procs is not None and grid.size != args.procs:
            raise ValueError(f"--grid {grid} has {grid.size} ranks but --procs is {args.procs}")
        check_grid(spec, grid)
        pl = plan_for_grid(spec, grid, **kw)
    return spec, pl


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..planner.simulate import simulate
    from ..units import format_bytes

    spec, pl = _resolve(args)
    grid = pl.grid
    machine = machine_from_args(args)

    def progress(done: int, total: int) -> None:
        if args.quiet or total < 1024:
            return
        if sys.stderr.isatty():
            print(f"\rsimulate: {done}/{total} ranks", end="" if done < total else "\n",
                  file=sys.stderr, flush=True)
        elif done % 1024 == 0 or done == total:
            print(f"simulate: {done}/{total} ranks", file=sys.stderr, flush=True)

    sim = simulate(spec, grid, check=not args.no_check, progress=progress, pass_=pl.pass_,
                   keep_window=pl.keep_window)
    planned = pl.rank_volumes()
    matches_plan = bool(np.array_equal(planned["recv_bytes"], sim.recv_bytes)
                        and np.array_equal(planned["send_bytes"], sim.send_bytes))
    payload = sim.to_dict(include_ranks=args.json is not None)
    lb = pl.lower_bound_bytes
    traffic = int((sim.recv_bytes + sim.send_bytes).max())
    payload["max_rank_traffic_bytes"] = traffic
    payload["lower_bound_bytes"] = lb
    payload["ratio_to_bound"] = traffic / lb if lb else None
    lemma = pl.lemma_bound_bytes
    payload["lemma_bound_bytes"] = lemma
    payload["recv_ratio_grid_family"] = int(sim.recv_bytes.max()) / lemma if lemma else None
    payload["matches_plan"] = matches_plan
    payload["keep_window"] = pl.keep_window
    payload["max_rank_memory_bytes"] = pl.max_rank_memory_bytes
    pred = None
    if machine is not None:
        from ..timemodel import predict

        pred = predict(spec, grid, machine, pass_=pl.pass_, overlap=args.overlap,
                       keep_window=pl.keep_window)
        payload["time"] = pred.to_dict()
        payload["time"]["machine_description"] = machine.to_dict()
        for entry in payload.get("ranks", []):
            entry["predicted"] = pred.rank(entry["rank"])
    if args.json is not None:
        emit_json(args, payload)
    else:
        print(f"layer   {spec.describe()}")
        print(f"grid    {grid}  ({grid.size} virtual ranks)")
        print(f"pass    {pl.pass_}" + ("" if pl.pass_ != "step" else
                                       " (input window kept)" if pl.keep_window else
                                       " (input window gathered again)")
              + f": {', '.join(pl.operations)}")
        s = sim.summary()
        rows = [[k, v["max"], round(v["mean"], 1), v["min"]] for k, v in s.items()]
        print(table(rows, ["received bytes", "max", "mean", "min"]))
        mx = s["total"]["max"]
        print(f"busiest rank's received + sent bytes: {traffic} B ({format_bytes(traffic)})")
        print(("step bound (any algorithm): " if pl.pass_ == "step" else
               "lower bound (memory-independent): ")
              + (f"{lb:.0f} B ({format_bytes(lb)}); busiest rank's recv + send = "
                 f"{traffic / lb:.3f}x the bound (received only: "
                 + (f"{mx / lemma:.3f}x the busiest-processor lemma" if lemma else "-")
                 + ", a grid-family figure, not a bound ratio)" if lb else "vacuous at this P"))
        print(f"messages {sim.messages}; simulated in {sim.elapsed_s:.2f} s; "
              f"equals the planner's per-rank bytes: {'yes' if matches_plan else 'NO'}")
        if not args.no_check:
            print("schedule consistent: " + ("yes" if sim.consistent else "NO"))
        if pred is not None:
            print(f"predicted step time {pred.step_seconds * 1e3:.4g} ms on {machine.name} "
                  f"({'overlap' if pred.overlap else 'phases in sequence'}; busiest rank "
                  f"{pred.busiest_rank})")
            print(table(time_rows(pred), TIME_HEADER))
    for m in sim.mismatches:
        print(f"parconv simulate: schedule mismatch: {m}", file=sys.stderr)
    if not matches_plan:
        print("parconv simulate: simulated bytes differ from the planner's per-rank bytes",
              file=sys.stderr)
    return 1 if (sim.mismatches or not matches_plan) else 0
