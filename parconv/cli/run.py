"""``parconv run``: run one layer under MPI on a planned grid, counting every byte.

Usage: ``mpiexec -n P parconv run --layer resnet50/layer3.1.conv2 --batch 4 --verify``.
Every rank validates the arguments, the memory the layer needs and the output paths
before any data moves (one message from rank 0 and exit status 2 on every rank on bad
input); an exception on any rank during the run aborts the whole job (``rank R failed:
...``, exit status non-zero).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from ..mpienv import MemoryLimit
from .common import (
    PASS_CHOICES,
    add_layer_args,
    add_memory_arg,
    emit_json,
    pass_spec_from_args,
    table,
)

HELP = "run a layer under MPI (mpiexec -n P parconv run ...), verify it and count bytes"


def register(sub) -> None:
    p = sub.add_parser("run", help=HELP, description=HELP + ". " + __doc__.split("\n\n")[1],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_layer_args(p, default_batch=1)
    p.add_argument("--grid", default="auto",
                   help="processor grid BxKxCxHxW (product = number of MPI ranks), or 'auto' "
                        "for the planner's grid")
    add_memory_arg(p, default="auto",
                   help_="per-rank memory limit the grid must fit (the plan's peak bytes per "
                         "rank), e.g. 64MiB; 'auto': the memory the ranks really have (the "
                         "node's available memory / ranks on the node, or less under a cgroup "
                         "or SLURM memory limit); 'none': no check")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the global input and filter (each rank generates its own blocks)")
    p.add_argument("--verify", action="store_true",
                   help="gather on rank 0 and compare with parconv.reference (integers bit-exact, "
                        "floats within the tolerance of docs/runtime.md); exit 1 on mismatch")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the report as JSON to FILE (the table still goes to stdout), or "
                        "to stdout instead of the table when no FILE is given")
    p.add_argument("--save", metavar="FILE.npz",
                   help="save the gathered global input, weight and output on rank 0 "
                        "(bfloat16 arrays as exact float32 plus a NAME.dtype entry; "
                        "parconv.io.load_npz restores bfloat16)")
    p.add_argument("--offload", choices=["none", "gemmini"], default="none",
                   help="local compute on a modelled Gemmini (int8/uint8 presets only): reports "
                        "each node's modelled cycles and DRAM bytes beside its network bytes")
    # -- training passes (--pass) -------------------------------------------------------
    p.add_argument("--pass", dest="pass_", default="forward", choices=PASS_CHOICES,
                   help="forward (default); step: forward then backward (input and filter "
                        "gradients) with a seeded grad_output; dgrad / wgrad: one backward "
                        "pass alone with seeded operands. Other than forward, --dtype names "
                        "a training precision (fp32, bf16, fp16, fp64); integer training is "
                        "refused. --verify then also checks grad_input and grad_weight, --save "
                        "also writes grad_output, grad_input and grad_weight")
    # -- end training passes ----------------------------------------------------------------
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="deadline on every collective: a rank that waits longer (a stopped or "
                        "hung rank) aborts the job naming the operation and the ranks that did "
                        "not arrive (default: no deadline, blocking collectives)")
    # -- issue 12.2: --repeat and --overlap -------------------------------------------
    p.add_argument("--repeat", type=_positive_int, default=None, metavar="N",
                   help="run the layer N times after one warm-up run and report the median "
                        "wall time per rank (JSON: wall_seconds = the median, wall_samples = "
                        "all N; phase and time figures of the median run); default: one run, "
                        "no warm-up")
    p.add_argument("--overlap", choices=["on", "off"], default=None,
                   help="overlap communication with the local convolution (on) or run the "
                        "sequential order (off); default: $PARCONV_OVERLAP, on unless 0")
    # -- end issue 12.2 ---------------------------------------------------------------
    p.set_defaults(func=run_command)


def _positive_int(text: str) -> int:
    """--repeat: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    """--timeout: a positive, finite number of seconds."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _pid_host() -> tuple[int, str]:
    import os
    import socket

    return os.getpid(), socket.gethostname()


def _pid_table(pids: list[tuple[int, str]] | None) -> str:
    """``rank:pid@host`` for every rank, host named once per run of ranks on it."""
    if pids is None:
        return ""
    parts, host = [], None
    for r, (pid, h) in enumerate(pids):
        parts.append(f"{r}:{pid}" + (f"@{h}" if h != host else ""))
        host = h
    return " ".join(parts)


def _memory_mode(text: str) -> int | str | None:
    """``--memory``: bytes, ``"auto"`` or None (``none``: no limit)."""
    from ..units import parse_bytes

    t = str(text).strip().lower()
    if t in ("none", "off", "unlimited"):
        return None
    return "auto" if t == "auto" else parse_bytes(text)


def _memory_limit(mode: int | str | None, ranks_on_node: tuple[int, str] | None) -> MemoryLimit:
    from ..mpienv import default_memory_limit

    if mode is None:
        return MemoryLimit(None, "none (--memory none)")
    if mode == "auto":
        return default_memory_limit(ranks_on_node or (1, "assumed"))
    return MemoryLimit(int(mode), "--memory")


def _limit_text(limit: MemoryLimit) -> str:
    from ..units import format_bytes

    figure = f"{format_bytes(limit.bytes)} ({limit.bytes} B)"
    if limit.source == "--memory":
        return f"--memory {figure}"
    return (f"the memory limit {figure} = {limit.source} (set --memory SIZE to change it, "
            f"--memory none to skip the check)")


def _choose_grid(spec, text: str, procs: int, limit: MemoryLimit, pass_: str = "forward"):
    """(plan, "auto" | "explicit"); the plan's peak memory per rank (of ``pass_``) must
    fit ``limit``."""
    from ..planner.partition import Grid
    from ..planner.plan import candidate_grids, min_memory_grid, plan, plan_for_grid
    from ..runtime.errors import RunInputError, validate_run
    from ..units import format_bytes

    if text.strip().lower() == "auto":
        try:
            return plan(spec, procs, limit.bytes, pass_=pass_), "auto"
        except ValueError:
            if limit.bytes is None or not candidate_grids(spec, procs):
                raise
            g, need = min_memory_grid(spec, procs, pass_)
            raise RunInputError(f"no grid of {procs} ranks fits: the least planned peak memory "
                                f"per rank is {format_bytes(need)} ({need} B, grid {g}), more "
                                f"than {_limit_text(limit)}") from None
    grid = Grid.parse(text)
    validate_run(spec, grid, procs)
    the_plan = plan_for_grid(spec, grid, pass_=pass_)
    need = the_plan.max_rank_memory_bytes
    if limit.bytes is not None and need > limit.bytes:
        raise RunInputError(f"grid {grid} needs {format_bytes(need)} ({need} B) per rank "
                            f"(planned peak), more than {_limit_text(limit)}")
    return dataclasses.replace(the_plan, memory_limit_bytes=limit.bytes), "explicit"


def _ranks_on_node(comm) -> tuple[int, str]:
    """Ranks on this node: the launcher's variables, else the size of the MPI
    shared-memory communicator (a collective every rank reaches before any data moves)."""
    from mpi4py import MPI

    from ..mpienv import local_ranks

    found = local_ranks()
    if found is not None or comm.Get_size() == 1:
        return found or (1, "one rank")
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size(), "MPI shared-memory communicator"
    finally:
        node.Free()


def _warm_kernel(spec) -> float:
    """Compile (or load from the numba cache) the local kernel for the layer's input and
    filter dtypes; seconds taken (reported as ``compile s``, outside ``compute s``)."""
    from ..dtypes import numpy_dtype
    from ..kernels import warmup

    p = spec.precision
    return warmup([(numpy_dtype(p.input), numpy_dtype(p.filter))])


def run_command(args: argparse.Namespace) -> int:
    from mpi4py import MPI

    from ..io import check_output_path, npz_path, save_npz
    from ..mpienv import is_rank_zero
    from ..runtime.errors import abort_on_exception, check_slurm, fault_point, validate_run
    from ..runtime.offload import check_offload, gemmini_local_compute
    from ..units import format_bytes

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    # refusals are printed once: by rank 0, and when N processes each came up as "rank 0 of
    # 1" (a launcher/MPI mismatch), only by the one the launcher calls rank 0
    speaker = rank == 0 and (size > 1 or is_rank_zero())

    def refuse(exc: Exception) -> int:
        if speaker:
            print(f"parconv run: error: {exc}", file=sys.stderr, flush=True)
        return 2

    def say(msg: str) -> None:
        if rank == 0 and not args.quiet:  # keep stdout pure JSON with --json alone
            print(f"[parconv run] {msg}", flush=True,
                  file=sys.stderr if args.json == "-" else sys.stdout)

    # -- validation: same arguments, same decision on every rank, no data moved ----------
    try:
        check_slurm(size)
        memory_mode = _memory_mode(args.memory)
    except (ValueError, OverflowError) as exc:
        return refuse(exc)
    # every rank gets here; the only collective before the run, and only when the
    # launcher does not say how many ranks share this node
    ranks_on_node = _ranks_on_node(comm) if memory_mode == "auto" else None
    save_path = npz_path(args.save) if args.save else None
    try:
        spec = pass_spec_from_args(args)
        outputs = [("--json", None if args.json in (None, "-") else args.json),
                   ("--save", args.save), ("--save", save_path and str(save_path))]
        for flag, path in dict.fromkeys(o for o in outputs if o[1] is not None):
            check_output_path(path, flag)  # on every rank: same verdict on a shared FS
        limit = _memory_limit(memory_mode, ranks_on_node)
        the_plan, source = _choose_grid(spec, args.grid, size, limit, args.pass_)
        validate_run(spec, the_plan.grid, size)
        check_offload(spec, args.offload)
        if args.pass_ != "forward" and args.offload != "none":
            raise ValueError("--offload models the forward pass only; use --pass forward")
        if args.pass_ != "forward" and (args.repeat is not None or args.overlap is not None):
            raise ValueError("--repeat and --overlap apply to the forward pass only; the "
                             "training passes run once, in the sequential order")
    except (ValueError, OverflowError) as exc:
        return refuse(exc)

    grid = the_plan.grid
    if args.timeout is not None:  # every collective below under the deadline
        from ..runtime.deadline import DeadlineComm

        comm = DeadlineComm(comm, args.timeout)

    def conclude(entries, verdict) -> int:
        """Collective: every rank learns rank 0's verdict; rank 0 reports. The exit code."""
        ok = comm.bcast(None if verdict is None else verdict.ok, root=0)
        if rank == 0:
            _report(args, spec, the_plan, source, entries, verdict, limit)
            if verdict is not None and not verdict.ok:
                print(f"parconv run: error: verification failed: {verdict.message}",
                      file=sys.stderr, flush=True)
        return 0 if ok in (None, True) else 1

    with abort_on_exception(comm):
        say(f"{spec.describe()}")
        say(f"{size} ranks, grid {grid} (b x k x c x h x w, {source})")
        if not args.quiet:  # maps the PID of a launcher's "BAD TERMINATION" to a rank
            say(f"process ids: {_pid_table(comm.gather(_pid_host(), root=0))}")
        need = the_plan.max_rank_memory_bytes
        say(f"memory per rank: planned peak {format_bytes(need)}, limit "
            + (f"{format_bytes(limit.bytes)} ({limit.source})" if limit.bytes is not None
               else limit.source))
        from ..runtime.api import gather_blocks, seeded_operands_local

        fault_point("setup", rank)
        compile_s = _warm_kernel(spec) if args.offload == "none" else 0.0
        if args.pass_ != "forward":
            entry, verdict = _run_training(args, spec, grid, comm, compile_s, save_path, say)
            return conclude(comm.gather(entry, root=0), verdict)
        x, w = seeded_operands_local(spec, grid, rank, args.seed)
        say("running: input allgather, halo exchange, filter allgather, local convolution, "
            "output reduce-scatter")
        local = gemmini_local_compute if args.offload == "gemmini" else None
        res, walls = _timed_runs(args, spec, grid, comm, x, w, local)
        entry = _rank_entry(res, walls, compile_s)
        entries = comm.gather(entry, root=0)
        verdict = None
        if args.verify or args.save:
            say("gathering global arrays on rank 0")
            xg = gather_blocks(spec, grid, "input", x, comm)
            wg = gather_blocks(spec, grid, "filter", w, comm)
            og = gather_blocks(spec, grid, "output", res.output, comm)
            if rank == 0 and args.save:
                save_npz(save_path, input=xg, weight=wg, output=og)
                say(f"saved input, weight, output to {save_path}")
            if args.verify:
                say("verifying against parconv.reference")
                if rank == 0:
                    from ..runtime.verify import compare

                    verdict = compare(spec, xg, wg, og)
            del xg, wg, og
        return conclude(entries, verdict)


def _timed_runs(args, spec, grid, comm, x, w, local):
    """Run the layer (a persistent :class:`~parconv.runtime.DistributedConv2d`: grid
    communicators, schedule and execution plan built once): once, or a warm-up and
    ``--repeat N`` timed runs. Returns (the run of the median wall time, every timed
    run's wall seconds on this rank)."""
    from ..runtime.api import RunResult
    from ..runtime.layer import DistributedConv2d

    overlap = None if args.overlap is None else args.overlap == "on"
    layer = DistributedConv2d(spec, grid, comm, requires_grad=False, timeout=args.timeout,
                              overlap=overlap, local_compute=local)
    try:
        if args.repeat is not None:   # warm-up: caches, MPI connections; not timed
            layer.forward(x, w)
            layer.validate_blocks = False   # the blocks were checked and stay the same
        runs = []
        for _ in range(args.repeat or 1):
            comm.Barrier()
            t0 = time.perf_counter()
            out = layer.forward(x, w)
            runs.append((time.perf_counter() - t0, out, layer.stats["forward"]))
            layer.validate_blocks = False
        if args.repeat is None:
            wall, out, stats = runs[0]
        else:   # the median run (the lower middle one for an even N)
            wall, out, stats = sorted(runs, key=lambda r: r[0])[(len(runs) - 1) // 2]
        return RunResult(out, layer.schedule, stats), [r[0] for r in runs]
    finally:
        layer.free()


def _median(xs: list[float]) -> float:
    import statistics

    return float(statistics.median(xs))


# -- training passes (--pass dgrad | wgrad | step) ---------------------------------------


def _run_training(args, spec, grid, comm, compile_s: float, save_path, say):
    """Run ``--pass`` (step, dgrad or wgrad) on this rank with seeded operands; gather,
    verify and save on rank 0. Returns (this rank's report entry, verdict or None)."""
    from ..runtime import DistributedConv2d
    from ..runtime.api import block_ranges, gather_blocks, seeded_block, seeded_operands_local

    rank = comm.Get_rank()
    x, w = seeded_operands_local(spec, grid, rank, args.seed)
    g = seeded_block(spec, "grad_output", block_ranges(spec, grid, rank, "grad_output"),
                     args.seed)
    layer = DistributedConv2d(spec, grid, getattr(comm, "comm", comm), timeout=args.timeout)
    y = gx = gw = None
    steps = {"step": "forward, then backward: dOut allgather, dgrad, dIn halo back, dIn "
                     "reduce-scatter, wgrad, dF reduce-scatter",
             "dgrad": "filter allgather, dOut allgather, dgrad, dIn halo back, dIn "
                      "reduce-scatter",
             "wgrad": "input allgather, halo exchange, dOut allgather, wgrad, dF "
                      "reduce-scatter"}
    say(f"running {args.pass_}: {steps[args.pass_]}")
    comm.Barrier()
    t0 = time.perf_counter()
    if args.pass_ == "step":
        y = layer.forward(x, w)
        gx, gw = layer.backward(g)
        groups = {"forward": layer.volume("forward"), "backward": layer.volume("backward")}
    elif args.pass_ == "dgrad":
        gx = layer.grad_input(g, w)
        groups = {"dgrad": layer.volume("dgrad")}
    else:
        gw = layer.grad_weight(x, g)
        groups = {"wgrad": layer.volume("wgrad")}
    wall = time.perf_counter() - t0
    entry = _training_entry(layer, groups, wall, compile_s)
    layer.free()
    verdict = None
    if args.verify or args.save:
        say("gathering global arrays on rank 0")
        arrays = {"input": gather_blocks(spec, grid, "input", x, comm),
                  "weight": gather_blocks(spec, grid, "filter", w, comm),
                  "grad_output": gather_blocks(spec, grid, "grad_output", g, comm)}
        if y is not None:
            arrays["output"] = gather_blocks(spec, grid, "output", y, comm)
        if gx is not None:
            arrays["grad_input"] = gather_blocks(spec, grid, "input", gx, comm)
        if gw is not None:
            arrays["grad_weight"] = gather_blocks(spec, grid, "filter", gw, comm)
        if rank == 0 and args.save:
            from ..io import save_npz

            save_npz(save_path, **arrays)
            say(f"saved {', '.join(arrays)} to {save_path}")
        if args.verify and rank == 0:
            say("verifying against parconv.reference")
            verdict = _verify_training(spec, arrays)
    return entry, verdict


def _training_entry(layer, groups: dict, wall: float, compile_s: float) -> dict:
    """One rank's report: per pass and operation measured and planned bytes, totals over
    the whole run."""
    measured = layer.measured()
    seconds: dict[str, float] = {}
    for st in layer.stats.values():
        for k, v in st.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
    passes = {name: {op: {"recv_bytes": measured.get(op, (0, 0))[0],
                          "send_bytes": measured.get(op, (0, 0))[1],
                          "planned_recv_bytes": pr, "planned_send_bytes": ps,
                          "seconds": seconds.get(op, 0.0)}
                     for op, (pr, ps) in planned.items()}
              for name, planned in groups.items()}
    ops = {op: v for per in passes.values() for op, v in per.items()}
    s = layer.schedule
    return {
        "rank": s.rank, "coords": dict(zip("bkchw", s.coords)),
        "recv_bytes": sum(v[0] for v in measured.values()),
        "send_bytes": sum(v[1] for v in measured.values()),
        "planned_recv_bytes": sum(v["planned_recv_bytes"] for v in ops.values()),
        "planned_send_bytes": sum(v["planned_send_bytes"] for v in ops.values()),
        "operations": ops, "passes": passes,
        "phase_seconds": seconds, "wall_seconds": wall, "compile_seconds": compile_s,
        "time_seconds": {"compute": sum(v for k, v in seconds.items()
                                        if k.startswith("compute"))},
        "gemmini": None,
    }


def _verify_training(spec, arrays: dict):
    """Output, input gradient and filter gradient against parconv.reference (those the
    pass produced); one verdict (ok when all are)."""
    from ..runtime.verify import Verdict, compare, compare_grad_input, compare_grad_weight

    x, w, g = arrays["input"], arrays["weight"], arrays["grad_output"]
    parts = {}
    if "output" in arrays:
        parts["output"] = compare(spec, x, w, arrays["output"])
    if "grad_input" in arrays:
        parts["grad_input"] = compare_grad_input(spec, g, w, arrays["grad_input"])
    if "grad_weight" in arrays:
        parts["grad_weight"] = compare_grad_weight(spec, x, g, arrays["grad_weight"])
    ok = all(v.ok for v in parts.values())
    return Verdict(ok, "; ".join(f"{k}: {v.message}" for k, v in parts.items()),
                   max(v.max_abs_error for v in parts.values()),
                   max(v.worst_ratio for v in parts.values()))


# -- end training passes -------------------------------------------------------------------


def _rank_entry(res, walls: list[float], compile_s: float) -> dict:
    planned = res.planned
    measured = res.measured
    ops = {op: {"recv_bytes": measured[op][0], "send_bytes": measured[op][1],
                "planned_recv_bytes": planned[op][0], "planned_send_bytes": planned[op][1],
                "seconds": res.stats.seconds.get(op, 0.0)}
           for op in planned}
    s = res.schedule
    return {
        "rank": s.rank, "coords": dict(zip("bkchw", s.coords)),
        "recv_bytes": sum(v[0] for v in measured.values()),
        "send_bytes": sum(v[1] for v in measured.values()),
        "planned_recv_bytes": s.recv_bytes, "planned_send_bytes": s.send_bytes,
        "operations": ops,
        "phase_seconds": dict(res.stats.seconds), "wall_seconds": _median(walls),
        "wall_samples": walls, "time_seconds": dict(res.stats.time),
        "overlap": res.stats.extra.get("overlap"), "tiles": res.stats.extra.get("tiles"),
        "compile_seconds": compile_s,
        "gemmini": res.stats.extra.get("gemmini"),
    }


def _time_cells(e: dict) -> list[str]:
    """Table cells: compute, communication (in MPI calls), waiting seconds."""
    t = e["time_seconds"]   # training passes: compute only (their backward phases are
    return [f"{t[k]:.3f}" if k in t else "-"   # timed per operation, packing included)
            for k in ("compute", "communication", "waiting")]


def _report(args, spec, the_plan, source, entries, verdict, limit: MemoryLimit) -> None:
    from ..units import format_bytes

    rv = the_plan.rank_volumes()
    for e in entries:  # the planner's per-rank figures (must equal the schedule's)
        r = e["rank"]
        e["planner_recv_bytes"] = int(rv["recv_bytes"][r])
        e["planner_send_bytes"] = int(rv["send_bytes"][r])
    match = all(e["recv_bytes"] == e["planned_recv_bytes"] == e["planner_recv_bytes"]
                and e["send_bytes"] == e["planned_send_bytes"] == e["planner_send_bytes"]
                and all(v["recv_bytes"] == v["planned_recv_bytes"]
                        and v["send_bytes"] == v["planned_send_bytes"]
                        for v in e["operations"].values())
                for e in entries)
    max_recv = max(e["recv_bytes"] for e in entries)
    max_traffic = max(e["recv_bytes"] + e["send_bytes"] for e in entries)
    lb = the_plan.lower_bound_bytes
    payload = {
        "layer": spec.to_dict(), "procs": len(entries), "grid": the_plan.grid.as_dict(),
        "grid_text": str(the_plan.grid), "grid_source": source, "seed": args.seed,
        "lower_bound_bytes": lb,
        "planned_max_rank_recv_bytes": the_plan.max_rank_recv_bytes,
        "measured_max_rank_recv_bytes": max_recv,
        "planned_max_rank_traffic_bytes": the_plan.max_rank_traffic_bytes,
        "measured_max_rank_traffic_bytes": max_traffic,
        # the bound bounds the busiest rank's received + sent bytes (docs/theory.md §5)
        "ratio_to_bound": (max_traffic / lb) if lb else None,
        "lemma_bound_bytes": the_plan.lemma_bound_bytes,
        "recv_ratio_grid_family": (max_recv / the_plan.lemma_bound_bytes
                                   if the_plan.lemma_bound_bytes else None),
        "measured_equals_planned": match,
        "planned_max_rank_memory_bytes": the_plan.max_rank_memory_bytes,
        "memory_limit": limit.as_dict(),
        "verify": None if verdict is None else {"ok": verdict.ok, "message": verdict.message,
                                                 "max_abs_error": verdict.max_abs_error,
                                                 "worst_error_over_tolerance": verdict.worst_ratio},
        "offload": args.offload,
        "repeat": args.repeat, "overlap": entries[0].get("overlap"),
        "pass": the_plan.pass_,
        "ranks": entries,
    }
    if args.json not in (None, "-"):
        emit_json(args, payload)
    if args.json == "-":
        emit_json(args, payload)
        return
    from .plan import SHORT

    short = {op: SHORT.get(op, op) for op in entries[0]["operations"]}
    rows = []
    for e in entries:
        ops = e["operations"]
        rows.append([e["rank"], ",".join(str(v) for v in e["coords"].values()),
                     *(ops[op]["recv_bytes"] for op in short),
                     e["recv_bytes"], e["planned_recv_bytes"], e["send_bytes"],
                     "yes" if e["recv_bytes"] == e["planned_recv_bytes"]
                     and e["send_bytes"] == e["planned_send_bytes"] else "NO",
                     f"{e['compile_seconds']:.3f}", *_time_cells(e),
                     f"{e['wall_seconds']:.3f}"])
        if e["gemmini"]:
            rows[-1] += [e["gemmini"]["cycles"], e["gemmini"]["dram_bytes"]]
    header = ["rank", "b,k,c,h,w", *(f"{s} recv" for s in short.values()), "recv B",
              "planned recv", "send B", "match", "compile s", "compute s", "comm s", "wait s",
              "wall s"]
    if entries[0]["gemmini"]:
        header += ["gemmini cycles", "gemmini DRAM B"]
    print(table(rows, header))
    lbt = f"{format_bytes(lb)} ({lb:.0f} B)" if lb else "vacuous"
    ratio = f", {max_traffic / lb:.3f}x the bound" if lb else ""
    print(f"max recv + send per rank: {format_bytes(max_traffic)} ({max_traffic} B){ratio}; "
          f"lower bound {lbt}")
    lemma = the_plan.lemma_bound_bytes
    recv_ratio = (f", {max_recv / lemma:.3f}x the busiest-processor lemma received only "
                  "(grid-family figure, not a bound ratio: relaying schedules receive less)"
                  ) if lemma else ""
    print(f"max recv per rank: {format_bytes(max_recv)} ({max_recv} B){recv_ratio}")
    print(f"measured bytes equal planned bytes on every rank: {'yes' if match else 'NO'}")
    if args.pass_ == "forward":
        order = "overlapped" if entries[0]["overlap"] else "sequential"
        runs = (f"median of {args.repeat} runs after a warm-up" if args.repeat is not None
                else "one run")
        print(f"wall s: {runs}, {order} order; compute s = local kernel, comm s = inside MPI "
              f"calls, wait s = blocked waiting for collectives")
    else:
        print(f"wall s: one {args.pass_} run (forward overlapped, backward sequential); "
              "compute s = local kernels; comm s / wait s are reported for --pass forward")
    if verdict is not None:
        print(f"verify: {'OK' if verdict.ok else 'FAILED'}: {verdict.message}")
    if args.json not in (None, "-"):
        print(f"wrote {args.json}")
