"""Training planner benchmark: ResNet-50 (batch 32), training presets fp32 and bf16, per
pass (forward, dgrad, wgrad) and per training step, at P = 8, 64, 512, 4096.

Per layer, pass and P:

* planned busiest-rank received + sent bytes ÷ the memory-independent bound of that pass
  (``parconv.bounds.pass_bounds``; for the step, the ``keep`` bound of
  ``parconv.bounds.step_bounds`` on the busiest rank's step total, which holds for any
  algorithm whether or not it keeps data between the passes) -- the quantity the bound
  bounds, never below 1; goal: geomean ≤ 1.25;
* beside it, labelled, the received-only figure (busiest rank's received bytes ÷ the
  busiest-processor lemma, the bound without its averaging part): a grid-family
  figure, not a bound ratio;
* step only: the ``separate`` bound against the sum over the three passes (each alone on
  the step's grid) of the busiest rank's bytes;
* best fixed strategy ÷ planned on the same quantity, naming data-parallel training
  (filters replicated, weight gradients all-reduced) and spatial-only (DistConv's
  default) with their own ratios (for the single passes only those two are priced).

Layers with identical shapes are planned once (23 distinct shapes among the 53
convolutions); geomeans are over all 53 layers whose bound is not vacuous.

Writes ``bench/results/training_plan.json`` and ``bench/results/training_plan.md``.

Reproduce: ``.venv/bin/python bench/bench_training_plan.py`` (from the repository root).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

from parconv.layers import suite
from parconv.passes import training_precision
from parconv.planner.plan import plan
from parconv.planner.strategies import all_strategies, best_fixed, fixed_strategy

PROCS = (8, 64, 512, 4096)
PRESETS = ("fp32", "bf16")
PASSES = ("forward", "dgrad", "wgrad", "step")
BATCH = 32
GOAL = 1.25
ROOT = Path(__file__).resolve().parent
NAMED = ("data_parallel_training", "spatial_only")


def geomean(xs) -> float | None:
    """Geometric mean of the positive values (None and 0 left out: a 0 is DP training's
    dgrad alone, which moves nothing because its filter starts replicated)."""
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def _key(spec) -> tuple:
    return (spec.B, spec.C, spec.K, spec.in_size, spec.kernel, spec.stride, spec.padding,
            spec.dilation)


def one(spec, procs: int, pass_: str) -> dict:
    pl = plan(spec, procs, pass_=pass_)
    if pass_ == "step":
        strat = all_strategies(spec, procs, pass_=pass_)
    else:
        strat = {n: fixed_strategy(n, spec, procs, pass_=pass_) for n in NAMED}
        if pass_ == "forward":
            strat["data_parallel_training"] = fixed_strategy("batch_only", spec, procs)
    t = pl.max_rank_traffic_bytes
    best = best_fixed(strat)
    row = {"grid": str(pl.grid), "max_rank_traffic_bytes": t,
           "max_rank_recv_bytes": pl.max_rank_recv_bytes, "bound_bytes": pl.lower_bound_bytes,
           "binding": pl.bound.get("binding"), "ratio_to_bound": pl.ratio_to_bound,
           "recv_ratio_grid_family": pl.recv_ratio_grid_family,
           "strategies_traffic": {k: (None if v is None else v.max_rank_traffic_bytes)
                                  for k, v in strat.items()},
           "best_fixed": None if best is None else best.name,
           "best_fixed_over_planned": None if best is None else best.max_rank_traffic_bytes / t}
    for n in NAMED:
        v = strat.get(n)
        row[f"{n}_over_planned"] = None if v is None else v.max_rank_traffic_bytes / t
    sep = pl.bound.get("separate")
    if sep:
        row["separate_sum_bytes"] = sep["separate_sum_bytes"]
        row["separate_bound_bytes"] = sep["bytes"]
        row["separate_ratio"] = sep["ratio"]
    return row


def measure(preset: str, procs: int, pass_: str) -> dict:
    fp = training_precision(preset).forward_precision
    cache: dict = {}
    rows = []
    for spec in suite("resnet50", BATCH, fp):
        k = _key(spec)
        if k not in cache:
            cache[k] = one(spec, procs, pass_)
        rows.append({"layer": spec.name, **cache[k]})
    out = {"preset": preset, "procs": procs, "pass": pass_, "layers": len(rows),
           "bound_layers": sum(r["ratio_to_bound"] is not None for r in rows),
           "geomean_ratio_to_bound": geomean(r["ratio_to_bound"] for r in rows),
           "max_ratio_to_bound": max((r["ratio_to_bound"] for r in rows
                                      if r["ratio_to_bound"]), default=None),
           "min_ratio_to_bound": min((r["ratio_to_bound"] for r in rows
                                      if r["ratio_to_bound"]), default=None),
           "geomean_recv_ratio_grid_family": geomean(r["recv_ratio_grid_family"] for r in rows),
           "geomean_best_fixed_over_planned": geomean(r["best_fixed_over_planned"] for r in rows),
           "rows": rows}
    for n in NAMED:
        vals = [r[f"{n}_over_planned"] for r in rows]
        out[f"geomean_{n}_over_planned"] = geomean(vals)
        out[f"{n}_feasible_layers"] = sum(v is not None and v > 0 for v in vals)
        out[f"{n}_zero_layers"] = sum(v == 0 for v in vals if v is not None)
    if pass_ == "step":
        out["geomean_separate_ratio"] = geomean(r.get("separate_ratio") for r in rows)
    wins: dict = {}
    for r in rows:
        if r["best_fixed"]:
            wins[r["best_fixed"]] = wins.get(r["best_fixed"], 0) + 1
    out["best_fixed_counts"] = wins
    return out


def _f(x, nd=3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def write_markdown(res: dict, path: Path) -> None:
    lines = [
        "# Training planner benchmark",
        "",
        f"Reproduce: `{res['command']}` (machine: {res['machine']}; {res['seconds']:.0f} s).",
        "",
        f"ResNet-50, batch {BATCH}, all 53 convolutions, training presets fp32 and bf16 "
        "(bf16: activations, weights and gradients in 16 bits, fp32 accumulation, the filter "
        "gradient in fp32). For each pass the planner picks the grid minimising the busiest "
        "rank's received + sent bytes of that pass; `step` picks one grid for forward + dgrad "
        "+ wgrad (input window kept for wgrad) minimising the busiest rank's step total.",
        "",
        "* **recv+send / bound**: the planned busiest rank's received + sent bytes ÷ the "
        "memory-independent bound of the pass (step: the `keep` bound, valid for any "
        "algorithm on the busiest rank's step total). The bound bounds exactly this quantity, "
        "so it is never below 1. It is the larger of the busiest-processor lemma and the "
        "averaging bound (every received byte is sent by some rank, so the ranks' average "
        "received + sent is at least twice what they must obtain; docs/theory.md §5).",
        "* **recv / bound (grid family)**: received bytes only ÷ the busiest-processor lemma "
        "-- not a bound ratio (relaying schedules receive less), shown for comparison with "
        "the forward figures of `plan.md`.",
        "* **separate**: step only -- the sum over forward, dgrad, wgrad (each run alone on "
        "the step's grid) of each pass's busiest rank ÷ the `separate` bound (passes run one "
        "after another with nothing kept).",
        "* **best fixed / planned**, **DP training / planned**, **spatial-only / planned**: "
        "the same busiest-rank recv+send of the fixed strategies ÷ the plan's. DP training = "
        "batch split only, filters replicated, weight gradients all-reduced (reduce-scatter + "
        "allgather, exact); for the forward pass it is `batch_only`. Spatial-only = P_h × P_w "
        "(DistConv's default). For the single passes only these two are priced; for the step "
        "all strategies (batch_only, DP training, spatial_only, batch_spatial, "
        "channel_filter). '-' where infeasible on every layer (DP needs P ≤ B = 32). DP "
        "training's dgrad alone moves nothing (its filter starts replicated on every rank, "
        "a layout the bound's even-ownership assumption and the plan do not have): those "
        "layers are left out of its geomean.",
        "",
        "| preset | P | pass | layers with bound | geomean recv+send/bound | max | "
        "recv/bound (grid family) | separate | best fixed/planned | DP training/planned "
        "(layers) | spatial-only/planned (layers) | best fixed (layers) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["results"]:
        wins = ", ".join(f"{k} {v}" for k, v in sorted(r["best_fixed_counts"].items(),
                                                         key=lambda kv: -kv[1]))
        lines.append(
            f"| {r['preset']} | {r['procs']} | {r['pass']} | {r['bound_layers']} | "
            f"{_f(r['geomean_ratio_to_bound'])} | {_f(r['max_ratio_to_bound'])} | "
            f"{_f(r['geomean_recv_ratio_grid_family'])} | {_f(r.get('geomean_separate_ratio'))} "
            f"| {_f(r['geomean_best_fixed_over_planned'])} | "
            f"{_f(r['geomean_data_parallel_training_over_planned'])} "
            f"({r['data_parallel_training_feasible_layers']}) | "
            f"{_f(r['geomean_spatial_only_over_planned'])} ({r['spatial_only_feasible_layers']}) "
            f"| {wins} |")
    lines += ["", "## Verdict", ""] + res["verdict"]
    path.write_text("\n".join(lines) + "\n")


def verdict(res: dict) -> list[str]:
    out = []
    lows = [r["min_ratio_to_bound"] for r in res["results"] if r["min_ratio_to_bound"]]
    out.append(f"- smallest recv+send/bound over all layers, passes and P: {min(lows):.4f} "
               f"({'never below 1' if min(lows) >= 1 - 1e-9 else 'BELOW 1: a bug'})")
    for r in res["results"]:
        g = r["geomean_ratio_to_bound"]
        out.append(f"- {r['preset']} P={r['procs']} {r['pass']}: recv+send/bound {_f(g)} "
                   f"{'meets' if g is not None and g <= GOAL else 'MISSES'} the goal "
                   f"≤ {GOAL}; received-only (grid family) "
                   f"{_f(r['geomean_recv_ratio_grid_family'])}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "results"))
    ap.add_argument("--procs", type=int, nargs="+", default=list(PROCS))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = {"command": ".venv/bin/python bench/bench_training_plan.py",
           "machine": platform.platform(), "batch": BATCH, "results": []}
    for preset in PRESETS:
        for procs in args.procs:
            for pass_ in PASSES:
                r = measure(preset, procs, pass_)
                res["results"].append(r)
                print(f"{preset} P={procs:5d} {pass_:8s} recv+send/bound "
                      f"{_f(r['geomean_ratio_to_bound'])} recv/bound "
                      f"{_f(r['geomean_recv_ratio_grid_family'])} best-fixed/planned "
                      f"{_f(r['geomean_best_fixed_over_planned'])}", flush=True)
    res["seconds"] = time.perf_counter() - t0
    res["verdict"] = verdict(res)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_plan.json").write_text(json.dumps(res, separators=(",", ":")) + "\n")
    write_markdown(res, out / "training_plan.md")
    print("\n".join(res["verdict"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
