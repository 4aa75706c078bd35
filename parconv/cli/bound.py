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
                    "vacuous. With --pass, the bounds of a training pass (forward, dgrad = "
                    "input gradient, wgrad = filter gradient) or of a whole training step "
                    "(step: the sum of the per-pass bounds for passes run one after another "
                    "with nothing kept between them, and a weaker bound for any algorithm, "
                    "which may interleave the passes and keep data between them); --dtype "
                    "then names a training precision (fp32, bf16, fp16, fp64: 16-bit "
                    "activations, weights and gradients with fp32 accumulation and an fp32 "
                    "filter gradient); integer training is refused. Proofs: docs/theory.md.")
    add_layer_args(p)
    add_memory_arg(p, default=DEFAULT_MEMORY,
                   help_="fast memory (sequential) and memory per processor (parallel), "
                         f"e.g. 256KiB, 1MiB (default {DEFAULT_MEMORY})")
    add_procs_arg(p, default=1)
    p.add_argument("--pass", dest="pass_", default=None,
                   choices=("forward", "dgrad", "wgrad", "step"),
                   help="training pass to bound (default: the forward pass with --dtype as an "
                        "inference precision, as without this flag)")
    add_json_arg(p)
    p.set_defaults(func=run)


def _training_spec(args: argparse.Namespace):
    """The layer with the forward precision of the training dtype (``--pass`` given)."""
    from ..dtypes import parse_precision
    from ..passes import training_precision

    spec = spec_from_args(args)
    if args.pass_ == "forward" and parse_precision(args.dtype).is_integer:
        return spec, None                  # integer forward: the inference precision
    tp = training_precision(args.dtype)    # refuses integer training
    return spec.with_precision(tp.forward_precision), tp


def build_payload(args: argparse.Namespace) -> dict:
    """The JSON payload (also the data behind the table)."""
    if getattr(args, "pass_", None) is not None:
        return _pass_payload(args)
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
    bounds = {"sequential": seq, "sequential_single_chain": chain}
    if args.procs > 1:
        bounds["parallel_memory_dependent"] = parallel_memory_dependent_bound(
            spec, args.procs, memory)
        bounds["parallel_memory_independent"] = parallel_memory_independent_bound(
            spec, args.procs)
    payload: dict = {"layer": spec.to_dict(), "memory_bytes": memory, "procs": args.procs}
    payload.update(_flat(bounds))
    return payload


def _flat(bounds: dict) -> dict:
    """The payload keys of one set of bounds (``sequential``, ..., as Bound objects)."""
    seq, chain = bounds["sequential"], bounds["sequential_single_chain"]
    payload: dict = {
        "sequential_bytes": seq.bytes,
        "sequential_vacuous": seq.vacuous,
        "sequential_single_chain_bytes": chain.bytes,
        "binding": {"sequential": seq.binding, "sequential_single_chain": chain.binding},
        "bounds": {"sequential": seq.to_dict(), "sequential_single_chain": chain.to_dict()},
    }
    if "parallel_memory_dependent" in bounds:
        dep = bounds["parallel_memory_dependent"]
        ind = bounds["parallel_memory_independent"]
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


def _step_flat(bounds: dict) -> dict:
    """Payload of one class of step bounds: ``<name>_bytes``, ``<name>_vacuous``, binding,
    bounds."""
    out: dict = {"binding": {}, "bounds": {}}
    for key, b in bounds.items():
        out[f"{key}_bytes"] = b.bytes
        out[f"{key}_vacuous"] = b.vacuous
        out["binding"][key] = b.binding
        out["bounds"][key] = b.to_dict()
    return out


def _pass_payload(args: argparse.Namespace) -> dict:
    from ..bounds import pass_bounds

    spec, tp = _training_spec(args)
    memory = memory_from_args(args)
    if args.procs is None or args.procs < 1:
        raise ValueError(f"--procs must be a positive integer, got {args.procs}")
    res = pass_bounds(spec, args.pass_, args.procs, memory)
    payload: dict = {"layer": spec.to_dict(), "memory_bytes": memory, "procs": args.procs,
                     "pass": args.pass_,
                     "training_precision": tp.to_dict() if tp is not None else None}
    per = res["passes"] if args.pass_ == "step" else {args.pass_: res}
    payload["passes"] = {}
    for name, r in per.items():
        entry = {"precision": r["precision"]}
        entry.update(_flat({k: v for k, v in r.items() if k not in ("pass", "precision")}))
        payload["passes"][name] = entry
    if args.pass_ == "step":
        payload["step"] = {
            "separate": {"assumes": "passes run one after another, nothing kept between them; "
                                    "parallel figures bound the sum over passes of each "
                                    "pass's busiest processor",
                         **_step_flat(res["separate"])},
            "keep": {"assumes": "any order of the three passes' iterations (interleaved, "
                                "fused), any data kept between passes; parallel figures bound "
                                "the busiest processor's step total",
                     **_step_flat(res["keep"])},
        }
    else:
        payload.update(payload["passes"][args.pass_])
    return payload


_LABELS = (("sequential", "sequential"),
           ("sequential_single_chain", "sequential, one accumulation chain per output"),
           ("parallel_memory_dependent", "parallel, memory-dependent (per proc)"),
           ("parallel_memory_independent", "parallel, memory-independent (per proc)"))


def _rows(bounds: dict, prefix: str = "", two_level: bool = False) -> list[list[str]]:
    from ..units import format_bytes

    rows = []
    for key, label in _LABELS:
        if key not in bounds:
            continue
        b = bounds[key]
        value = "vacuous (<= 0)" if b["vacuous"] else f"{b['bytes']:.0f} B ({format_bytes(b['bytes'])})"
        if key == "parallel_memory_dependent" and two_level:
            label = "parallel, memory-dependent, two-level (per proc: network + local memory)"
        rows.append([prefix + label, value, b["binding"]])
    return rows


def _run_pass(payload: dict, spec) -> int:
    from ..units import format_bytes

    print(f"layer   {spec.describe()}")
    print(f"memory  {format_bytes(payload['memory_bytes'])} per processor   procs {payload['procs']}"
          f"   rho={spec.rho}   G={spec.macs}   pass {payload['pass']}")
    rows = []
    for name, entry in payload["passes"].items():
        pp = entry["precision"]
        roles = ", ".join(f"{v['array']} {v['dtype']} ({v['role']}, {v['weight_bits']} b)"
                          for v in pp["projections"].values())
        print(f"{name:8s}{roles}; accumulator {pp['accum']}")
        two = not entry.get("parallel_memory_dependent_network_only", True)
        rows += _rows(entry["bounds"], f"{name}: ", two)
    if "step" in payload:
        for cls in ("separate", "keep"):
            st = payload["step"][cls]
            rows += _rows(st["bounds"], f"step ({cls}): ")
        print("step (separate): " + payload["step"]["separate"]["assumes"])
        print("step (keep):     " + payload["step"]["keep"]["assumes"])
    print(table(rows, ["bound", "bytes", "binding"]))
    return 0


def run(args: argparse.Namespace) -> int:
    from ..units import format_bytes

    payload = build_payload(args)
    if args.json is not None:
        emit_json(args, payload)
        return 0
    if args.pass_ is not None:
        return _run_pass(payload, _training_spec(args)[0])
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
