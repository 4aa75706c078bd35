"""Time model benchmark: predicted vs measured wall time, and time- vs bytes-optimal grids.

1. **Calibration**: ``mpiexec -n 2 parconv calibrate`` writes
   ``bench/results/timemodel_machine.json`` (and every measurement to
   ``timemodel_calibration.json``).
2. **Validation** (this machine, 2 cores shared with other jobs): every distinct
   ResNet-50 convolution at batch 8, fp32, at P = 1, 2, 4 (4 ranks oversubscribe the 2
   cores, and the model says so: compute and packing × 2). Each (layer, P) runs
   ``mpiexec -n P parconv run --layer L --batch 8 --json F`` ``--repeats`` times on the
   planner's grid; the measured time is the slowest rank's ``wall_seconds`` of the
   least-disturbed run (the smallest), beside the runtime's per-phase seconds. The
   prediction is :func:`parconv.timemodel.predict` with the calibrated machine (all P
   ranks on one node). Goal: |predicted / measured − 1| ≤ 25 %.
3. **Cluster study** (pure model): every distinct ResNet-50 convolution at batch 32,
   fp32, P = 64 … 4,096 under the ``ib-hdr`` preset (docs/timemodel.md): the
   time-optimal grid (:func:`parconv.timemodel.best_grid_by_time`, exact search) against
   the bytes-optimal grid (:func:`parconv.planner.plan.plan`), their predicted step times and
   received bytes; network totals weight each shape by its number of layers.

Writes ``bench/results/timemodel.{json,md}``.

Reproduce (from the repository root, ~10-15 min on 2 shared cores)::

    .venv/bin/python bench/bench_timemodel.py                 # all three parts
    .venv/bin/python bench/bench_timemodel.py --skip-calibrate --repeats 2
    .venv/bin/python bench/bench_timemodel.py --only cluster
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
REPO = ROOT.parent
MACHINE_FILE = RESULTS / "timemodel_machine.json"
GOAL = 0.25
COMMAND = ".venv/bin/python bench/bench_timemodel.py"
PROCS = (1, 2, 4)
CLUSTER_PROCS = (64, 128, 256, 512, 1024, 2048, 4096)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    return env


def _launcher() -> list[str]:
    from parconv import mpienv

    return list(mpienv.find_launcher(_env()).command)


def calibrate() -> dict:
    t0 = time.perf_counter()
    cmd = [*_launcher(), "-n", "2", sys.executable, "-m", "parconv", "calibrate",
           "--out", str(MACHINE_FILE), "--raw", str(RESULTS / "timemodel_calibration.json")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=_env(), cwd=REPO)
    if r.returncode:
        raise SystemExit(f"calibration failed:\n{r.stdout}\n{r.stderr}")
    return {"seconds": time.perf_counter() - t0, "log": r.stderr.strip()[-500:]}


def _run(layer: str, procs: int, out: Path) -> dict:
    cmd = [*_launcher(), "-n", str(procs), sys.executable, "-m", "parconv", "run",
           "--layer", layer, "--batch", "8", "--quiet", "--json", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(), cwd=REPO)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
    return json.loads(out.read_text())


def probe_seconds_per_mac() -> float:
    """Seconds per MAC of the fp32 kernel on one ResNet-like block, best of 3, in this
    process now: how fast the (shared) machine is at the moment of a measurement."""
    import numpy as np

    from parconv.kernels import conv2d_window

    x = np.ones((4, 64, 28, 28), np.float32)
    w = np.ones((64, 64, 3, 3), np.float32)
    o = np.zeros((4, 64, 26, 26), np.float32)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        conv2d_window(x, w, o, 1, 1, (0, 0))
        best = min(best, time.perf_counter() - t0)
    return best / (4 * 64 * 64 * 26 * 26 * 9)


def validate(repeats: int, layers: list[str] | None) -> list[dict]:
    from parconv.layers import suite
    from parconv.planner.partition import Grid
    from parconv.timemodel import FORWARD_PHASES, load_machine, predict

    base = load_machine(str(MACHINE_FILE))
    specs = suite("resnet50", 8, unique=True)
    if layers:
        specs = [s for s in specs if s.name in layers]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            for P in PROCS:
                probe = probe_seconds_per_mac()
                runs = [_run(spec.name, P, Path(tmp) / f"r{i}.json") for i in range(repeats)]
                walls = [max(e["wall_seconds"] for e in d["ranks"]) for d in runs]
                best = runs[walls.index(min(walls))]
                grid = Grid.parse(best["grid_text"])
                # all P ranks on this one node; cores stay as calibrated (oversubscription)
                m = dataclasses.replace(base, ranks_per_node=max(P, base.ranks_per_node))
                pred = predict(spec, grid, m)
                meas_ph = {}
                for ph in FORWARD_PHASES:
                    if ph == "setup":
                        vals = [e["wall_seconds"] - sum(e["phase_seconds"].values())
                                for e in best["ranks"]]
                    else:
                        vals = [e["phase_seconds"].get(ph, 0.0) for e in best["ranks"]]
                    meas_ph[ph] = max(vals)
                row = {
                    "layer": spec.name, "procs": P, "grid": best["grid_text"],
                    "measured_s": min(walls), "measured_all_s": walls,
                    "predicted_s": pred.step_seconds,
                    "ratio": pred.step_seconds / min(walls),
                    "measured_phase_max_s": meas_ph,
                    "predicted_phase_max_s": {ph: float(pred.phase_seconds(ph).max())
                                              for ph in FORWARD_PHASES},
                    "oversubscribed": P > m.cores_per_node,
                    "load_average": os.getloadavg()[0],
                    # fp32 kernel speed just before the runs, relative to the calibration
                    "probe_slowdown": probe / base.gamma["fp32"],
                }
                comp = [e["phase_seconds"].get("compute", 0.0) for e in best["ranks"]]
                if len(set(pred.compute["compute"].round(15))) == 1 and min(comp) > 0:
                    row["rank_compute_spread"] = max(comp) / min(comp)
                rows.append(row)
                print(f"{spec.name:34s} P={P} {row['grid']:10s} measured "
                      f"{row['measured_s'] * 1e3:8.2f} ms predicted "
                      f"{row['predicted_s'] * 1e3:8.2f} ms ratio {row['ratio']:.2f} "
                      f"(load {row['load_average']:.1f}, probe x{row['probe_slowdown']:.2f})",
                      flush=True)
    return rows


def cluster(preset: str, batch: int) -> list[dict]:
    from parconv.layers import suite
    from parconv.planner.plan import max_rank_recv_bytes
    from parconv.timemodel import best_grid_by_time, load_machine

    m = load_machine(preset)
    all_specs = suite("resnet50", batch)
    specs = suite("resnet50", batch, unique=True)
    key = lambda s: (s.C, s.K, s.in_size, s.kernel, s.stride, s.padding)  # noqa: E731
    count = {}
    for s in all_specs:
        count[key(s)] = count.get(key(s), 0) + 1
    rows = []
    for P in CLUSTER_PROCS:
        for spec in specs:
            t0 = time.perf_counter()
            res = best_grid_by_time(spec, P, m)
            dt = time.perf_counter() - t0
            row = {"procs": P, "layer": spec.name, "layers_of_shape": count[key(spec)],
                   "time_grid": str(res.grid), "bytes_grid": str(res.bytes_grid),
                   "time_grid_s": res.prediction.step_seconds,
                   "bytes_grid_s": res.bytes_prediction.step_seconds,
                   "speedup": res.speedup_over_bytes,
                   "time_grid_recv": max_rank_recv_bytes(spec, res.grid),
                   "bytes_grid_recv": max_rank_recv_bytes(spec, res.bytes_grid),
                   "evaluated": res.evaluated, "candidates": res.candidates,
                   "search_s": dt}
            rows.append(row)
        tot_t = sum(r["time_grid_s"] * r["layers_of_shape"] for r in rows if r["procs"] == P)
        tot_b = sum(r["bytes_grid_s"] * r["layers_of_shape"] for r in rows if r["procs"] == P)
        diff = sum(r["time_grid"] != r["bytes_grid"] for r in rows if r["procs"] == P)
        print(f"P={P}: {diff} of {len(specs)} shapes differ; network bytes-grid / time-grid "
              f"predicted {tot_b / tot_t:.3f}", flush=True)
    return rows


def _geomean(xs) -> float:
    xs = list(xs)
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def write_md(data: dict) -> None:
    lines = ["# Time model: predicted vs measured, time- vs bytes-optimal grids", "",
             f"Command: `{COMMAND}" + (f" {data['args']}" if data.get("args") else "") + "`", "",
             f"Machine: {data['machine']}; load average {data['load_before']:.2f} before, "
             f"{data['load_after']:.2f} after (2 cores shared with other jobs).", ""]
    m = data.get("calibrated")
    if m:
        lines += ["## Calibration (`mpiexec -n 2 parconv calibrate`)", "",
                  "| kind | alpha (us) | beta (GB/s) |", "|---|---|---|"]
        for k, v in m["intra"].items():
            bw = 1 / v["beta"] / 1e9 if v["beta"] else float("inf")
            lines.append(f"| {k} | {v['alpha'] * 1e6:.2f} | {bw:.2f} |")
        lines += ["", "kernel rates (GMAC/s, one thread): " + ", ".join(
            f"{k} {1 / v / 1e9:.1f}" for k, v in m["gamma"].items())
            + f"; copy {1 / m['copy'] / 1e9:.2f} GB/s; set-up {m['setup'] * 1e3:.2f} ms; "
            f"ping-pong latency {(m.get('extra') or {}).get('ping_pong_latency_s', 0) * 1e6:.1f} us", ""]
    rows = data.get("validation") or []
    if rows:
        lines += ["## Validation: ResNet-50 distinct convolutions, batch 8, fp32", "",
                  "Measured: slowest rank's `wall_seconds` of `parconv run --json`, best of "
                  f"{data['repeats']} launches. Predicted: `parconv.timemodel.predict` with the "
                  "calibrated machine. P = 4 runs 4 ranks on 2 cores (oversubscribed; the "
                  "model doubles compute and packing). `probe`: the fp32 kernel's seconds per MAC "
                  "measured in the bench process just before the case ÷ the calibrated figure "
                  "(> 1: the shared machine was slower than when calibrated). `launch spread`: "
                  "slowest ÷ fastest of the launches of the case; `rank compute spread`: slowest "
                  "÷ fastest rank's compute phase in the kept launch, for grids whose ranks all "
                  "do the same MACs (else blank): the noise floor of the measurement.", ""]
        for P in PROCS:
            sel = [r for r in rows if r["procs"] == P]
            if not sel:
                continue
            within = sum(abs(r["ratio"] - 1) <= GOAL for r in sel)
            err = _geomean(max(r["ratio"], 1 / r["ratio"]) for r in sel)
            lines.append(f"- P = {P}: {within} of {len(sel)} within 25 %; geomean "
                         f"predicted/measured {_geomean(r['ratio'] for r in sel):.3f}; geomean "
                         f"error factor {err:.3f}; worst {min(r['ratio'] for r in sel):.2f} / "
                         f"{max(r['ratio'] for r in sel):.2f}")
        lines += ["", "| layer | P | grid | measured ms | predicted ms | pred/meas | "
                  "compute meas/pred ms | comm+pack meas/pred ms | set-up meas/pred ms | load | "
                  "probe | launch spread | rank compute spread |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            mp, pp = r["measured_phase_max_s"], r["predicted_phase_max_s"]
            comm_m = sum(v for k, v in mp.items() if k not in ("compute", "setup"))
            comm_p = sum(v for k, v in pp.items() if k not in ("compute", "setup"))
            lines.append(f"| {r['layer']} | {r['procs']} | {r['grid']} | "
                         f"{r['measured_s'] * 1e3:.2f} | {r['predicted_s'] * 1e3:.2f} | "
                         f"{r['ratio']:.2f} | {mp['compute'] * 1e3:.2f} / {pp['compute'] * 1e3:.2f} | "
                         f"{comm_m * 1e3:.2f} / {comm_p * 1e3:.2f} | "
                         f"{mp['setup'] * 1e3:.2f} / {pp['setup'] * 1e3:.2f} | "
                         f"{r['load_average']:.1f} | {r.get('probe_slowdown', float('nan')):.2f} | "
                         f"{max(r['measured_all_s']) / min(r['measured_all_s']):.2f} | "
                         f"{r.get('rank_compute_spread', float('nan')):.2f} |")
        lines.append("")
    crow = data.get("cluster") or []
    if crow:
        lines += [f"## Cluster model: ResNet-50 batch {data['cluster_batch']}, fp32, "
                  f"`{data['cluster_preset']}`", "",
                  "Time-optimal grid (exact search over the planner's candidates) vs the "
                  "bytes-optimal grid; network = sum over the 53 layers.", "",
                  "| P | shapes where grids differ | max per-layer speedup (layer) | "
                  "network time: bytes grids / time grids | network ms (time grids) |",
                  "|---|---|---|---|---|"]
        for P in CLUSTER_PROCS:
            sel = [r for r in crow if r["procs"] == P]
            if not sel:
                continue
            diff = [r for r in sel if r["time_grid"] != r["bytes_grid"]]
            best = max(sel, key=lambda r: r["speedup"])
            tot_t = sum(r["time_grid_s"] * r["layers_of_shape"] for r in sel)
            tot_b = sum(r["bytes_grid_s"] * r["layers_of_shape"] for r in sel)
            lines.append(f"| {P} | {len(diff)} of {len(sel)} | {best['speedup']:.3f} "
                         f"({best['layer']}) | {tot_b / tot_t:.3f} | {tot_t * 1e3:.3f} |")
        lines += ["", "Per layer where the grids differ:", "",
                  "| P | layer | bytes grid | ms | recv B | time grid | ms | recv B | speedup |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in crow:
            if r["time_grid"] != r["bytes_grid"]:
                lines.append(f"| {r['procs']} | {r['layer']} | {r['bytes_grid']} | "
                             f"{r['bytes_grid_s'] * 1e3:.4f} | {r['bytes_grid_recv']} | "
                             f"{r['time_grid']} | {r['time_grid_s'] * 1e3:.4f} | "
                             f"{r['time_grid_recv']} | {r['speedup']:.3f} |")
        lines.append("")
    (RESULTS / "timemodel.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-calibrate", action="store_true",
                    help=f"reuse {MACHINE_FILE.relative_to(REPO)}")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--layers", nargs="*", help="validate only these layers")
    ap.add_argument("--only", choices=["validate", "cluster"], default=None)
    ap.add_argument("--preset", default="ib-hdr")
    ap.add_argument("--cluster-batch", type=int, default=32)
    ap.add_argument("--report", action="store_true",
                    help="only rewrite timemodel.md from timemodel.json")
    args = ap.parse_args()
    if args.report:
        write_md(json.loads((RESULTS / "timemodel.json").read_text()))
        return
    out = RESULTS / "timemodel.json"
    data: dict = {}
    data.update(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}", load_before=os.getloadavg()[0],
                args=" ".join(sys.argv[1:]))
    if args.only != "cluster":
        if not args.skip_calibrate:
            data["calibration"] = calibrate()
        data["calibrated"] = json.loads(MACHINE_FILE.read_text())
        data["repeats"] = args.repeats
        data["validation"] = validate(args.repeats, args.layers)
    if args.only != "validate":
        data["cluster_preset"], data["cluster_batch"] = args.preset, args.cluster_batch
        data["cluster"] = cluster(args.preset, args.cluster_batch)
    data["load_after"] = os.getloadavg()[0]
    if args.only and out.is_file():   # keep the other part's results (read at the end)
        data = {**json.loads(out.read_text()), **data}
    out.write_text(json.dumps(data, indent=1) + "\n")
    write_md(data)
    print(f"wrote {out} and {RESULTS / 'timemodel.md'}")


if __name__ == "__main__":
    main()
