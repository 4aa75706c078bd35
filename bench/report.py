"""Regenerate the benchmark report: ``bench/results/report_*.{json,png}`` and
``bench/results/SUMMARY.md``.

Parts (``--only a,b``; default all):

* ``scaling``  per-rank received bytes vs P (2 … 4,096) for a few ResNet-50 layers (batch
  32, fp32): parconv's planned grid *simulated* (``parconv.planner.simulate``: the runtime's
  schedule for every virtual rank, consistency-checked), *measured* by real ``mpiexec``
  runs of ``parconv run`` at small P, each fixed strategy and the memory-independent lower
  bound, which bounds the busiest rank's received + sent bytes (also plotted; the
  received-only figure is a grid-family figure); log-log, one figure per layer; also the
  time of the P = 4,096 simulations.
* ``suite``    the same summed over every ResNet-50 convolution (planner figures, which
  equal the simulator's by test), one figure.
* ``plan``     the planner's ratios to the bound (recv + send, and the received-only
  grid-family figure) and to the best fixed strategy vs P, per precision (from
  ``plan.json``, written by ``bench/bench_plan.py``).
* ``walltime`` wall time of ``parconv run`` at P = 1, 2, 4 in the overlapped and the
  sequential order against PyTorch ``conv2d`` with the same total threads (from
  ``walltime.json``, written by ``bench/bench_walltime.py``).
* ``tiling``   sequential tiling traffic vs the lower bound vs Im2Col (from ``tiling.json``,
  written by ``bench/bench_tiling.py``).
* ``gemmini``  Gemmini: parconv vs vendor tiling, cycles and DRAM bytes per layer (from
  ``gemmini.json``, ``bench/bench_gemmini.py``).
* ``kernels``  local kernels vs PyTorch (from ``kernels.json``, ``bench/bench_kernels.py``).

Each figure ``report_<part>[_<layer>].png`` sits beside ``report_<part>.json`` holding
its data, the command that made it and the machine. Parts that read other scripts' JSON
say which script to run when it is missing. SUMMARY.md is rebuilt from every
``report_*.json`` present, so ``--only`` refreshes some sections and keeps the others.

    .venv/bin/python bench/report.py                 # everything (~5 min on 2 cores)
    .venv/bin/python bench/report.py --quick         # fewer layers/P, ~1 min
    .venv/bin/python bench/report.py --only tiling,gemmini,kernels
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
PARTS = ("scaling", "suite", "plan", "walltime", "tiling", "gemmini", "kernels")
SCALING_LAYERS = ["resnet50/conv1", "resnet50/layer1.0.conv2", "resnet50/layer3.1.conv2",
                  "resnet50/layer4.0.conv2", "resnet50/layer4.2.conv3"]
QUICK_LAYERS = ["resnet50/layer3.1.conv2", "resnet50/layer4.0.conv2"]
BATCH = 32
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def log(msg: str) -> None:
    print(f"[report] {msg}", flush=True)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cores": len(os.sched_getaffinity(0)), "loadavg": os.getloadavg()}
    try:
        from mpi4py import MPI

        info["mpi"] = MPI.Get_library_version().splitlines()[0].strip()
    except Exception as exc:  # pragma: no cover - informational only
        info["mpi"] = f"unavailable: {exc}"
    return info


def _env1() -> dict[str, str]:
    env = dict(os.environ)
    env.update(dict.fromkeys(THREAD_VARS, "1"))
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
    return {k: v for k, v in env.items() if not k.startswith(("SLURM_", "PMI_", "OMPI_"))}


def _mpi_cmd(n: int, program: list[str]) -> list[str]:
    from parconv import mpienv

    return mpienv.launch_command(mpienv.find_launcher(), n, program)


def _geomean(xs) -> float | None:
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def _slug(name: str) -> str:
    return name.replace("/", "_")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------ scaling (bytes vs P)

STRATEGY_STYLE = {"batch_only": ("tab:orange", "v"), "spatial_only": ("tab:green", "^"),
                  "batch_spatial": ("tab:olive", "x"), "channel_filter": ("tab:purple", "D"),
                  "im2col_matmul": ("tab:brown", "+")}


def _strategy_line(ax, pts, sname: str) -> None:
    color, marker = STRATEGY_STYLE[sname]
    ax.plot(*zip(*pts), "--", color=color, marker=marker, ms=4, lw=1.1, label=sname.replace("_", " "))


def _log_axes(ax, procs: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(procs)
    ax.set_xticklabels([str(p) for p in procs], fontsize=7)
    ax.set_xlabel("processes P")
    ax.grid(True, which="both", alpha=0.25)


def _measure_run(name: str, batch: int, n: int) -> dict[str, Any]:
    """One real ``mpiexec -n n parconv run``; its per-rank bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        cmd = _mpi_cmd(n, [sys.executable, "-m", "parconv", "run", "--layer", name, "--batch",
                           str(batch), "--quiet", "--json", str(out)])
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=_env1(), capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({r.returncode}): {r.stderr[-500:]}")
        d = json.loads(out.read_text())
    return {"procs": n, "grid": d["grid"], "seconds": time.perf_counter() - t0,
            "recv_bytes": [x["recv_bytes"] for x in d["ranks"]],
            "send_bytes": [x["send_bytes"] for x in d["ranks"]], "command": shlex.join(cmd)}


def part_scaling(args) -> dict[str, Any]:
    from parconv.layers import layer
    from parconv.planner.plan import plan
    from parconv.planner.simulate import simulate
    from parconv.planner.strategies import FAMILIES, all_strategies

    names = QUICK_LAYERS if args.quick else SCALING_LAYERS
    procs = [4, 8, 64, 512, 4096] if args.quick else [2 ** i for i in range(1, 13)]
    measured_procs = [] if args.no_measure else ([4] if args.quick else [2, 4, 8])
    layers = []
    for name in names:
        spec = layer(name, BATCH)
        rows = []
        for P in procs:
            pl = plan(spec, P)
            sim = simulate(spec, pl.grid)
            strat = all_strategies(spec, P)
            rows.append({
                "procs": P, "grid": str(pl.grid),
                "simulated_max_recv_bytes": int(sim.recv_bytes.max()),
                "simulated_mean_recv_bytes": float(sim.recv_bytes.mean()),
                "simulated_min_recv_bytes": int(sim.recv_bytes.min()),
                "planned_max_recv_bytes": pl.max_rank_recv_bytes,
                "simulated_max_traffic_bytes": int((sim.recv_bytes + sim.send_bytes).max()),
                "planned_max_traffic_bytes": pl.max_rank_traffic_bytes,
                "consistent": sim.consistent, "simulate_seconds": sim.elapsed_s,
                "lower_bound_bytes": pl.lower_bound_bytes,
                "lemma_bound_bytes": pl.lemma_bound_bytes,
                "strategies": {k: (None if v is None else v.max_rank_recv_bytes) for k, v in strat.items()},
            })
            log(f"scaling {name} P={P}: grid {pl.grid}, max {rows[-1]['simulated_max_recv_bytes']} B, "
                f"simulated in {sim.elapsed_s:.2f} s")
        measured = []
        for n in measured_procs:
            m = _measure_run(name, BATCH, n)
            sim = simulate(spec, plan(spec, n).grid, check=False)
            m["equals_simulated"] = m["recv_bytes"] == sim.recv_bytes.tolist() and \
                m["send_bytes"] == sim.send_bytes.tolist()
            measured.append(m)
            log(f"scaling {name}: measured P={n} in {m['seconds']:.1f} s, max {max(m['recv_bytes'])} B, "
                f"equals simulated: {m['equals_simulated']}")
        layers.append({"layer": name, "batch": BATCH, "dtype": "fp32", "rows": rows, "measured": measured})

    plt = _plt()
    figures = []
    for lay in layers:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        P = [r["procs"] for r in lay["rows"]]
        for sname in FAMILIES:
            pts = [(r["procs"], r["strategies"][sname]) for r in lay["rows"] if r["strategies"][sname]]
            if pts:
                _strategy_line(ax, pts, sname)
        lb = [(r["procs"], r["lower_bound_bytes"]) for r in lay["rows"] if r["lower_bound_bytes"]]
        if lb:
            ax.plot(*zip(*lb), ":", color="black", lw=1.5, label="lower bound (on recv + send)")
        if "simulated_max_traffic_bytes" in lay["rows"][0]:
            ax.plot(P, [r["simulated_max_traffic_bytes"] for r in lay["rows"]], "-", color="tab:cyan",
                    lw=1.5, label="parconv recv + send (simulated)")
        ax.plot(P, [r["simulated_max_recv_bytes"] for r in lay["rows"]], "-o", color="tab:blue",
                ms=3.5, lw=2, label="parconv received (simulated)")
        if lay["measured"]:
            ax.plot([m["procs"] for m in lay["measured"]], [max(m["recv_bytes"]) for m in lay["measured"]],
                    "s", mfc="none", mec="red", ms=9, mew=1.5, label="parconv (measured, mpiexec)")
        _log_axes(ax, P)
        ax.set_ylabel("busiest rank's bytes (strategies: received)")
        ax.set_title(f"{lay['layer']} (batch {BATCH}, fp32)", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fn = f"report_scaling_{_slug(lay['layer'])}.png"
        fig.savefig(RESULTS / fn, dpi=110)
        plt.close(fig)
        figures.append(fn)

    t4096 = {lay["layer"]: r["simulate_seconds"] for lay in layers for r in lay["rows"] if r["procs"] == 4096}
    lines = ["Busiest rank's received bytes vs P, ResNet-50 layers, batch 32, fp32. parconv's "
             "grid (planner) simulated for every virtual rank with the runtime's schedule "
             "(`parconv simulate`); squares: real `mpiexec` runs of `parconv run`. The bound "
             "bounds the busiest rank's received + sent bytes (recv+send / bound, never below 1); "
             "recv / lemma (received ÷ the busiest-processor lemma, the bound without its averaging "
             "part) is a grid-family figure, not a bound ratio (relaying schedules receive "
             "less). Best fixed / parconv compares received bytes with received bytes.", "",
             "| layer | P | grid | parconv max recv B | max recv+send B | lower bound B "
             "| recv+send / bound | recv / lemma (grid family) | best fixed recv B (strategy) "
             "| best fixed / parconv |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for lay in layers:
        for r in lay["rows"]:
            if r["procs"] not in (8, 64, 512, 4096):
                continue
            feas = {k: v for k, v in r["strategies"].items() if v}
            bname = min(feas, key=feas.get) if feas else None
            lbv, mx = r["lower_bound_bytes"], r["simulated_max_recv_bytes"]
            tr, lem = r["simulated_max_traffic_bytes"], r.get("lemma_bound_bytes")
            bound = (f"{lbv:.0f} | {tr / lbv:.3f} | " + (f"{mx / lem:.3f}" if lem else "–")
                     if lbv else "vacuous | – | –")
            best = f"{feas[bname]} ({bname}) | {feas[bname] / mx:.2f}" if bname else "– | –"
            lines.append(f"| {lay['layer']} | {r['procs']} | {r['grid']} | {mx} | {tr} | {bound} | {best} |")
    checks = [r["consistent"] and r["simulated_max_recv_bytes"] == r["planned_max_recv_bytes"]
              and r["simulated_max_traffic_bytes"] == r["planned_max_traffic_bytes"]
              for lay in layers for r in lay["rows"]]
    meas = [m["equals_simulated"] for lay in layers for m in lay["measured"]]
    lines += ["", f"- Schedules consistent and simulated max = planned max (received, and "
              f"received + sent): {sum(checks)}/{len(checks)} (layer, P) points.",
              f"- Measured (mpiexec) per-rank bytes equal simulated, rank by rank: {sum(meas)}/{len(meas)} runs "
              f"(P = {', '.join(map(str, measured_procs)) or 'none'}).",
              "- Simulation time at P = 4,096 (all ranks' schedules + consistency check): " +
              ", ".join(f"{k.split('/')[-1]} {v:.1f} s" for k, v in t4096.items()) + "."]
    return {"data": {"layers": layers, "simulate_seconds_at_4096": t4096}, "figures": figures,
            "summary_md": "\n".join(lines), "title": "Per-rank communication vs P (per layer)"}


# ------------------------------------------------------------------ suite

def part_suite(args) -> dict[str, Any]:
    from parconv.layers import suite
    from parconv.planner.plan import plan
    from parconv.planner.strategies import FAMILIES, all_strategies

    procs = [8, 64, 512, 4096] if args.quick else [2 ** i for i in range(3, 13)]
    specs = suite("resnet50", BATCH)
    rows = []
    for P in procs:
        t0 = time.perf_counter()
        tot = {"parconv": 0, "parconv_traffic": 0, "lower_bound": 0.0, "lemma": 0.0,
               "parconv_traffic_bounded": 0, "parconv_bounded": 0, **dict.fromkeys(FAMILIES, 0)}
        vacuous = 0
        for spec in specs:
            pl = plan(spec, P)
            tot["parconv"] += pl.max_rank_recv_bytes
            tot["parconv_traffic"] += pl.max_rank_traffic_bytes
            if pl.lower_bound_bytes:
                tot["lower_bound"] += pl.lower_bound_bytes
                tot["lemma"] += pl.lemma_bound_bytes or 0.0
                tot["parconv_traffic_bounded"] += pl.max_rank_traffic_bytes
                tot["parconv_bounded"] += pl.max_rank_recv_bytes
            else:
                vacuous += 1
            for k, v in all_strategies(spec, P).items():
                tot[k] = None if (v is None or tot[k] is None) else tot[k] + v.max_rank_recv_bytes
        rows.append({"procs": P, "totals": tot, "vacuous_bound_layers": vacuous,
                     "seconds": time.perf_counter() - t0})
        log(f"suite P={P}: parconv {tot['parconv']} B over {len(specs)} layers "
            f"({rows[-1]['seconds']:.1f} s)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for sname in FAMILIES:
        pts = [(r["procs"], r["totals"][sname]) for r in rows if r["totals"][sname]]
        if pts:
            _strategy_line(ax, pts, sname)
    ax.plot([r["procs"] for r in rows], [r["totals"]["lower_bound"] for r in rows], ":", color="black",
            lw=1.5, label="lower bound on recv + send (sum; vacuous layers count 0)")
    ax.plot([r["procs"] for r in rows], [r["totals"]["parconv_traffic"] for r in rows], "-",
            color="tab:cyan", lw=1.5, label="parconv recv + send")
    ax.plot([r["procs"] for r in rows], [r["totals"]["parconv"] for r in rows], "-o", color="tab:blue",
            ms=3.5, lw=2, label="parconv received")
    _log_axes(ax, procs)
    ax.set_ylabel("Σ over layers of the busiest rank's bytes")
    ax.set_title(f"ResNet-50, all {len(specs)} convolutions (batch {BATCH}, fp32)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "report_suite.png", dpi=110)
    plt.close(fig)
    lines = [f"Sum over all {len(specs)} ResNet-50 convolutions (batch 32, fp32) of the busiest rank's "
             "received bytes (each layer on its own best grid; strategies missing where infeasible "
             "for some layer, e.g. batch-only at P > 32). Planner figures: exact per rank, equal to "
             "the simulator's (tests/test_simulate.py). The ratios to the bound sum over the "
             "layers whose bound is not vacuous: recv+send / bound compares the quantity the bound "
             "bounds; recv / lemma (÷ the sum of the busiest-processor lemmas) is a grid-family "
             "figure, not a bound ratio.", "",
             "| P | parconv recv B | parconv recv+send B | lower bound B | recv+send / bound "
             "| recv / lemma (grid family) | best fixed recv B (strategy) | best fixed / parconv |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["totals"]
        feas = {k: t[k] for k in FAMILIES if t[k]}
        b = min(feas, key=feas.get) if feas else None
        lbs = t["lower_bound"]
        ratios = (f"{t['parconv_traffic_bounded'] / lbs:.3f} | "
                  + (f"{t['parconv_bounded'] / t['lemma']:.3f}" if t.get("lemma") else "–")
                  if lbs else "– | –")
        lines.append(f"| {r['procs']} | {t['parconv']} | {t['parconv_traffic']} | {lbs:.0f} | "
                     f"{ratios} | "
                     + (f"{feas[b]} ({b}) | {feas[b] / t['parconv']:.2f} |" if b else "– | – |"))
    return {"data": {"suite": "resnet50", "batch": BATCH, "dtype": "fp32", "rows": rows},
            "figures": ["report_suite.png"], "summary_md": "\n".join(lines),
            "title": "Per-rank communication vs P (ResNet-50 suite)"}


# ------------------------------------------------------------------ wall time

def part_walltime(args) -> dict[str, Any]:
    """From ``walltime.json`` (``bench/bench_walltime.py``: ``parconv run --repeat`` at
    P = 1, 2, 4 in both orders, PyTorch with the same threads)."""
    d = _load("walltime.json", "bench/bench_walltime.py")
    rows = d.get("rows") or []
    if not rows:
        raise Missing("walltime.json has no rows: rerun bench/bench_walltime.py")
    plt = _plt()
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows) + 1, 4.0), squeeze=False)
    for ax, row in zip(axes[0], rows):
        runs = [r for r in row["parconv"] if not r.get("env")]
        procs = sorted({r["procs"] for r in runs})
        for off, (order, color) in enumerate((("on", "tab:blue"), ("off", "tab:gray"))):
            pts = [(p, r["seconds"]) for p in procs for r in runs
                   if r["procs"] == p and (r["overlap"] == order or p == 1)]
            ax.bar([i + (off - 0.5) * 0.38 for i in range(len(pts))], [t for _, t in pts],
                   width=0.38, color=color,
                   label="overlapped" if order == "on" else "sequential")
        for i, p in enumerate(procs):
            tt = row["torch"].get(str(p))
            if tt:
                ax.plot([i - 0.4, i + 0.4], [tt["seconds"]] * 2, color="tab:red",
                        label="PyTorch, P threads" if i == 0 else None)
        ax.set_xticks(range(len(procs)), [str(p) for p in procs])
        ax.set_title(f"{row['layer'].split('/')[-1]} b{row['batch']}", fontsize=9)
        ax.set_xlabel("P (one thread each)")
    axes[0][0].set_ylabel("seconds (median, slowest rank)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "report_walltime.png", dpi=110)
    plt.close(fig)
    md = (RESULTS / "walltime.md")
    summary = md.read_text().split("\n", 2)[2] if md.exists() else ""
    return {"data": d, "figures": ["report_walltime.png"], "summary_md": summary,
            "title": "Wall time of parconv run vs PyTorch, parallel efficiency"}


# ------------------------------------------------------------------ others' JSON

class Missing(Exception):
    """A part's input JSON is absent or unusable (the message says what to run)."""


def _load(name: str, script: str) -> dict[str, Any]:
    path = RESULTS / name
    if not path.exists():
        raise Missing(f"{name} not found: run `.venv/bin/python {script}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise Missing(f"{name} is not valid JSON ({exc}): rerun {script}") from None


def _walk(obj: Any, want: tuple[str, ...], ctx: dict[str, Any] | None = None):
    """Yield (dict, context) for every dict under ``obj`` holding all keys of ``want``;
    context collects scalar keys of enclosing dicts (layer, memory, dtype ...)."""
    ctx = dict(ctx or {})
    if isinstance(obj, dict):
        ctx.update({k: v for k, v in obj.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)})
        if all(k in obj for k in want):
            yield obj, ctx
            return
        for k, v in obj.items():
            yield from _walk(v, want, {**ctx, "_key": k})
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, want, ctx)


def _total(v: Any) -> float:
    return float(v["total"]) if isinstance(v, dict) else float(v)


def part_tiling(args) -> dict[str, Any]:
    d = _load("tiling.json", "bench/bench_tiling.py")
    want = ("traffic_bytes", "lower_bound_bytes", "im2col_traffic_bytes")
    groups: dict[str, list[dict[str, Any]]] = {}
    for row, ctx in _walk(d, want):
        name = str(row.get("layer") or ctx.get("layer") or ctx.get("name") or ctx.get("_key", "?"))
        mem = ctx.get("memory_label") or row.get("memory_bytes", ctx.get("memory_bytes", ctx.get("memory", "?")))
        prec = row.get("dtype", ctx.get("dtype", ctx.get("preset", ctx.get("precision", ""))))
        key = f"{prec} M={mem}" if prec else f"M={mem}"
        groups.setdefault(key, []).append({"layer": name, "traffic": float(row["traffic_bytes"]),
                                           "bound": float(row["lower_bound_bytes"]),
                                           "chain": float(row.get("single_chain_bound_bytes") or 0),
                                           "im2col": float(row["im2col_traffic_bytes"])})
    if not groups:
        raise Missing("tiling.json has no rows with traffic_bytes, lower_bound_bytes and "
                      "im2col_traffic_bytes: rerun bench/bench_tiling.py")
    plt = _plt()
    keys = sorted(groups)[:4]
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 3.2 * len(keys)), squeeze=False)
    lines = ["Sequential traffic of parconv's tiling and of Im2Col, divided by the sequential "
             "lower bound (1 = optimal), per layer (from `tiling.json`). One-chain bound: the "
             "bound for schedules with one accumulation chain per output, a class containing "
             "every box tiling (the yardstick for box tilings; remaining gap: output stores, "
             "borders, integrality, docs/tiling.md §6).", "",
             "| group | layers | geomean tiling / bound | max tiling / bound "
             "| geomean tiling / one-chain bound | geomean Im2Col / tiling |",
             "|---|---|---|---|---|---|"]
    for ax, k in zip(axes[:, 0], keys):
        rows = [r for r in groups[k] if r["bound"] > 0]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["traffic"] / r["bound"] for r in rows], 0.4, label="parconv tiling / bound")
        ax.bar([i + 0.2 for i in x], [r["im2col"] / r["bound"] for r in rows], 0.4, label="Im2Col / bound")
        ax.axhline(1, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(list(x))
        ax.set_xticklabels([r["layer"].split("/")[-1] for r in rows], rotation=90, fontsize=6)
        ax.set_title(k, fontsize=9)
        ax.legend(fontsize=7)
    for k in sorted(groups):
        rows = [r for r in groups[k] if r["bound"] > 0]
        ratios = [r["traffic"] / r["bound"] for r in rows]
        chain = _geomean([r["traffic"] / r["chain"] for r in rows if r["chain"] > 0])
        lines.append(f"| {k} | {len(rows)} | {_geomean(ratios):.3f} | {max(ratios):.3f} | "
                     + ("–" if chain is None else f"{chain:.3f}") + " | "
                     f"{_geomean([r['im2col'] / r['traffic'] for r in rows]):.2f} |")
    fig.tight_layout()
    fig.savefig(RESULTS / "report_tiling.png", dpi=100)
    plt.close(fig)
    return {"data": {"source": "bench/results/tiling.json", "groups": groups},
            "figures": ["report_tiling.png"], "summary_md": "\n".join(lines),
            "title": "Sequential tiling traffic vs bound vs Im2Col"}


def part_gemmini(args) -> dict[str, Any]:
    d = _load("gemmini.json", "bench/bench_gemmini.py")
    rows = [(r, ctx) for r, ctx in _walk(d, ("vendor", "parconv"))
            if isinstance(r["vendor"], dict) and "cycles" in r["vendor"] and "cycles" in r["parconv"]]
    if not rows:
        raise Missing("gemmini.json has no rows with vendor/parconv cycles: rerun bench/bench_gemmini.py")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r, ctx in rows:
        g = f"batch {r.get('batch', ctx.get('batch', '?'))}"
        groups.setdefault(g, []).append({
            "layer": str(r.get("layer", ctx.get("layer", "?"))),
            "vendor_cycles": _total(r["vendor"]["cycles"]), "parconv_cycles": _total(r["parconv"]["cycles"]),
            "vendor_dram_bytes": _total(r["vendor"]["dram_bytes"]),
            "parconv_dram_bytes": _total(r["parconv"]["dram_bytes"])})
    plt = _plt()
    keys = sorted(groups)
    fig, axes = plt.subplots(len(keys), 2, figsize=(12, 3.4 * len(keys)), squeeze=False)
    lines = ["Gemmini (MODELLED by `parconv.gemmini`, default configuration): vendor tile chooser vs "
             "parconv's tiling (from `gemmini.json`). Speedup = vendor cycles / parconv cycles.", "",
             "| group | layers | geomean speedup | min speedup | geomean parconv / vendor DRAM bytes |",
             "|---|---|---|---|---|"]
    for (ax1, ax2), k in zip(axes, keys):
        rs = groups[k]
        x = list(range(len(rs)))
        names = [r["layer"].split("/")[-1] for r in rs]
        ax1.bar(x, [r["vendor_cycles"] / r["parconv_cycles"] for r in rs], color="tab:blue")
        ax1.axhline(1, color="black", lw=0.8)
        ax1.set_ylabel("speedup (vendor / parconv cycles)")
        ax2.bar([i - 0.2 for i in x], [r["vendor_dram_bytes"] for r in rs], 0.4, label="vendor", color="tab:gray")
        ax2.bar([i + 0.2 for i in x], [r["parconv_dram_bytes"] for r in rs], 0.4, label="parconv", color="tab:blue")
        ax2.set_yscale("log")
        ax2.set_ylabel("DRAM bytes")
        ax2.legend(fontsize=7)
        for ax in (ax1, ax2):
            ax.set_xticks(x)
            ax.set_xticklabels(names, rotation=90, fontsize=6)
            ax.set_title(f"ResNet-50, {k}", fontsize=9)
        sp = [r["vendor_cycles"] / r["parconv_cycles"] for r in rs]
        lines.append(f"| {k} | {len(rs)} | {_geomean(sp):.3f} | {min(sp):.3f} | "
                     f"{_geomean([r['parconv_dram_bytes'] / r['vendor_dram_bytes'] for r in rs]):.3f} |")
    fig.tight_layout()
    fig.savefig(RESULTS / "report_gemmini.png", dpi=100)
    plt.close(fig)
    return {"data": {"source": "bench/results/gemmini.json", "groups": groups},
            "figures": ["report_gemmini.png"], "summary_md": "\n".join(lines),
            "title": "Gemmini: parconv vs vendor tiling"}


def part_plan(args) -> dict[str, Any]:
    d = _load("plan.json", "bench/bench_plan.py")
    rows = [r for r, _ in _walk(d, ("preset", "procs", "geomean_ratio_to_bound",
                                    "geomean_best_fixed_over_planned"))]
    if not rows:
        raise Missing("plan.json has no per-(preset, P) summaries: rerun bench/bench_plan.py")
    presets = sorted({r["preset"] for r in rows})
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for pre in presets:
        rs = sorted((r for r in rows if r["preset"] == pre), key=lambda r: r["procs"])
        P = [r["procs"] for r in rs]
        line, = ax1.plot(P, [r["geomean_ratio_to_bound"] for r in rs], "-o", label=f"{pre} recv + send")
        if rs[0].get("geomean_recv_ratio_grid_family") is not None:
            ax1.plot(P, [r["geomean_recv_ratio_grid_family"] for r in rs], "--", marker="x",
                     color=line.get_color(), label=f"{pre} received only (grid family)")
        ax2.plot(P, [r["geomean_best_fixed_over_planned"] for r in rs], "-o", label=pre)
    for ax, t in ((ax1, "busiest rank's bytes ÷ lower bound (geomean over layers)"),
                  (ax2, "best fixed strategy ÷ planned (geomean)")):
        ax.set_xscale("log", base=2)
        ax.axhline(1, color="black", lw=0.8)
        ax.set_xlabel("processes P")
        ax.set_title(t, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.25)
    fig.tight_layout()
    fig.savefig(RESULTS / "report_plan.png", dpi=100)
    plt.close(fig)
    lines = ["ResNet-50 (batch " + str(d.get("batch", "?")) + "), all layers: the planner's busiest-rank "
             "bytes against the memory-independent bound and the best fixed strategy (from "
             "`plan.json`, written by `" + str(d.get("command", "bench/bench_plan.py")) + "`). "
             "recv+send / bound compares the quantity the bound bounds (never below 1); recv / "
             "lemma (received ÷ the busiest-processor lemma) is a grid-family figure, not a "
             "bound ratio (relaying schedules receive less).",
             "",
             "| preset | P | geomean recv+send / bound | max recv+send / bound "
             "| geomean recv / lemma (grid family) | geomean best fixed / planned (recv) |",
             "|---|---|---|---|---|---|"]
    nan = float("nan")
    for r in sorted(rows, key=lambda r: (r["preset"], r["procs"])):
        lines.append(f"| {r['preset']} | {r['procs']} | {r['geomean_ratio_to_bound']:.3f} | "
                     f"{r.get('max_ratio_to_bound', nan):.3f} | "
                     f"{r.get('geomean_recv_ratio_grid_family') or nan:.3f} | "
                     f"{r['geomean_best_fixed_over_planned']:.3f} |")
    return {"data": {"source": "bench/results/plan.json",
                     "rows": [{k: v for k, v in r.items() if k != "rows"} for r in rows]},
            "figures": ["report_plan.png"], "summary_md": "\n".join(lines),
            "title": "Planner vs bound and fixed strategies (ResNet-50 suite)"}


def part_kernels(args) -> dict[str, Any]:
    d = _load("kernels.json", "bench/bench_kernels.py")
    seen: dict[str, dict[str, Any]] = {}
    for r, _ in _walk(d, ("gflops",)):
        key = str(r.get("shape", r.get("layer", len(seen))))
        if key not in seen and isinstance(r["gflops"], dict):
            seen[key] = {"layer": str(r.get("layer", key)), "shape": key,
                         "gflops": {k: float(v) for k, v in r["gflops"].items()}}
    if not seen:
        raise Missing("kernels.json has no per-layer 'gflops': rerun bench/bench_kernels.py")
    rows = list(seen.values())
    impls = sorted({k for r in rows for k in r["gflops"]})
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 4.2))
    w = 0.8 / len(impls)
    for j, name in enumerate(impls):
        ax.bar([i + (j - (len(impls) - 1) / 2) * w for i in range(len(rows))],
               [r["gflops"].get(name, 0.0) for r in rows], w, label=name)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["layer"].split("/")[-1] for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("GFLOP/s (GOP/s for int8), one thread")
    meta = d.get("meta", {})
    ax.set_title(f"local kernels, distinct ResNet-50 shapes, batch {meta.get('batch', '?')}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "report_kernels.png", dpi=100)
    plt.close(fig)
    lines = ["Local (single-process, one thread) convolution speed per distinct ResNet-50 shape "
             "(from `kernels.json`; command there: `" + str(meta.get("command", "bench/bench_kernels.py")) + "`).", "",
             "| implementation | geomean GFLOP/s | geomean vs torch_f32 |", "|---|---|---|"]
    for name in impls:
        g = _geomean([r["gflops"].get(name) for r in rows])
        rel = _geomean([r["gflops"][name] / r["gflops"]["torch_f32"] for r in rows
                        if name in r["gflops"] and r["gflops"].get("torch_f32")])
        lines.append(f"| {name} | {g:.2f} | " + (f"{rel:.2f} |" if rel else "– |"))
    return {"data": {"source": "bench/results/kernels.json", "rows": rows},
            "figures": ["report_kernels.png"], "summary_md": "\n".join(lines),
            "title": "Local kernels vs PyTorch"}


# ------------------------------------------------------------------ driver and SUMMARY.md

RUNNERS = {"scaling": part_scaling, "suite": part_suite, "plan": part_plan, "walltime": part_walltime,
           "tiling": part_tiling, "gemmini": part_gemmini, "kernels": part_kernels}


def write_summary() -> Path:
    """SUMMARY.md from every report_<part>.json present (in :data:`PARTS` order)."""
    out = ["# parconv benchmark summary", "",
           "Regenerate everything with `.venv/bin/python bench/report.py` (or parts: "
           "`--only scaling,suite,plan,walltime,tiling,gemmini,kernels`, `--quick`). Every figure "
           "sits beside the JSON it was drawn from, which also records the command and the machine.", ""]
    for part in PARTS:
        path = RESULTS / f"report_{part}.json"
        if not path.exists():
            out += [f"## {part}", "", f"Not generated yet: `.venv/bin/python bench/report.py --only {part}`.", ""]
            continue
        d = json.loads(path.read_text())
        out += [f"## {d.get('title', part)}", ""]
        if d.get("status") == "missing":
            out += [f"**Missing input**: {d['message']}", ""]
            continue
        m = d.get("machine", {})
        out += [f"Generated {d['generated_utc']} by `{d['command']}` on {m.get('cores', '?')} cores "
                f"(load {', '.join(f'{x:.1f}' for x in m.get('loadavg', []))}); data: "
                f"[{path.name}]({path.name}).", ""]
        out += [f"![{f}]({f})" for f in d.get("figures", [])] + [""]
        out += [d.get("summary_md", ""), ""]
    path = RESULTS / "SUMMARY.md"
    path.write_text("\n".join(out))
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="fewer layers, P values and repeats")
    ap.add_argument("--no-measure", action="store_true", help="scaling: simulate only, no mpiexec runs")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = shlex.join([".venv/bin/python", "bench/report.py", *argv])
    failed = []
    for part in parts:
        log(f"--- {part}")
        t0 = time.perf_counter()
        base = {"part": part, "command": command, "machine": machine(),
                "generated_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
        try:
            res = RUNNERS[part](args)
            res.update(base, status="ok", seconds=time.perf_counter() - t0)
        except Missing as exc:
            log(f"{part}: {exc}")
            res = {**base, "status": "missing", "message": str(exc), "figures": []}
            for stale in RESULTS.glob(f"report_{part}*.png"):
                stale.unlink()
        except Exception as exc:  # a part's failure must not lose the other parts
            log(f"{part}: FAILED: {type(exc).__name__}: {exc}")
            failed.append(part)
            continue
        (RESULTS / f"report_{part}.json").write_text(json.dumps(res, indent=1) + "\n")
        log(f"{part}: done in {time.perf_counter() - t0:.1f} s")
    log(f"wrote {write_summary()}")
    if failed:
        log(f"failed parts: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
