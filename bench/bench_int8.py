"""int8 benchmark: parconv's exact int8 -> int32 kernels against its own float32 kernel.

Every ResNet-50 layer at batch 8 (default), single thread, each distinct shape timed
once. Per shape and repeat the implementations run interleaved in one process (so load
from other processes on a shared machine hits all of them): parconv float32, parconv
int8 on the 16-bit SIMD kernel (``int_kernel='simd'``, ``vpmaddwd``), parconv int8 on
the float32-chunk kernel (``int_kernel='float'``), PyTorch float32 (oneDNN) and PyTorch's
quantized conv (fbgemm, weights prepacked once, uint8 requantised output). The best of
``--repeats`` thread-CPU times is kept (wall-clock ratios are reported too).

Figures: GOP/s = 2*MACs / time; the target ratio is parconv int8 (SIMD) GOP/s over
parconv float32 GFLOP/s, geomean over the layers and worst layer; fbgemm beside it.
Operands: uniformly random full-range int8 (input and weight; this is the case the
saturating ``vpmaddubsw`` kernels cannot compute exactly), standard-normal float32.
Every int8 result is checked bit for bit against the SIMD kernel's other path on the
first image.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        .venv/bin/python bench/bench_int8.py

Writes ``bench/results/int8.json`` and ``bench/results/int8.md``. PyTorch is optional.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    add_suite_args,
    best_of_interleaved,
    command,
    geomean,
    layer_rows,
    machine_meta,
    pin_threads,
    shape_key,
    shape_label,
    suite_shapes,
    total_times,
    write_results,
)

pin_threads()

import numpy as np  # noqa: E402
from bench_kernels import add_torch_runs, torch  # noqa: E402

from parconv import conv2d  # noqa: E402
from parconv.kernels import simd_supported, warmup  # noqa: E402
from parconv.reference import conv2d_reference  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def bench_shape(spec, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    w = (rng.standard_normal(spec.filter_shape) / math.sqrt(spec.C * spec.R * spec.S)
         ).astype(np.float32)
    x8 = rng.integers(-128, 128, spec.input_shape).astype(np.int8)
    w8 = rng.integers(-128, 128, spec.filter_shape).astype(np.int8)
    st, pad = spec.stride, spec.padding
    runs = {
        "parconv_f32": lambda: conv2d(x, w, st, pad),
        "parconv_i8_simd": lambda: conv2d(x8, w8, st, pad, int_kernel="simd"),
        "parconv_i8_float": lambda: conv2d(x8, w8, st, pad, int_kernel="float"),
    }
    engine = add_torch_runs(runs, x, w, x8, w8, st, pad)
    best, best_cpu = best_of_interleaved(runs, repeats)
    ops = 2 * spec.macs
    g = {k: ops / v / 1e9 for k, v in best_cpu.items()}
    gw = {k: ops / v / 1e9 for k, v in best.items()}
    first = (slice(0, 1),)
    exact = bool(np.array_equal(conv2d(x8[first], w8, st, pad, int_kernel="simd"),
                                conv2d_reference(x8[first], w8, st, pad, out_dtype="int32")))
    return {
        "shape": shape_label(spec),
        "ops": ops, "times_s": best_cpu, "wall_times_s": best, "gops": g, "gops_wall": gw,
        "ratio_simd_f32": g["parconv_i8_simd"] / g["parconv_f32"],
        "ratio_simd_f32_wall": gw["parconv_i8_simd"] / gw["parconv_f32"],
        "ratio_float_i8_f32": g["parconv_i8_float"] / g["parconv_f32"],
        "ratio_fbgemm_torch_f32": (g["torch_q8"] / g["torch_f32"]
                                   if "torch_q8" in g and "torch_f32" in g else None),
        "ratio_simd_fbgemm": g["parconv_i8_simd"] / g["torch_q8"] if "torch_q8" in g else None,
        "torch_q_engine": engine, "int8_exact_b0": exact,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_suite_args(ap)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8"))
    args = ap.parse_args(argv)
    if torch is not None:
        torch.set_num_threads(1)
    warm = warmup()
    layers, uniq = suite_shapes(args)
    load_before = os.getloadavg()
    t0 = time.time()
    shapes = {}
    for spec in uniq:
        shapes[shape_key(spec)] = r = bench_shape(spec, args.repeats)
        g = r["gops"]
        print(f"{spec.name:32s} {r['shape']:28s} f32 {g['parconv_f32']:6.1f} "
              f"i8 simd {g['parconv_i8_simd']:6.1f} ({r['ratio_simd_f32']:4.2f}) "
              f"i8 float {g['parconv_i8_float']:6.1f} torch f32 "
              f"{g.get('torch_f32', float('nan')):6.1f} fbgemm "
              f"{g.get('torch_q8', float('nan')):6.1f} exact {r['int8_exact_b0']}", flush=True)
    rows = layer_rows(layers, shapes)

    def stat(name):
        vals = [r[name] for r in rows if r[name]]
        if not vals:
            return None, None
        worst = min(rows, key=lambda r: r[name] or float("inf"))
        return geomean(vals), {"value": worst[name], "layer": worst["layer"]}

    summary = {"layers": len(rows), "distinct_shapes": len(shapes),
               "all_exact": all(r["int8_exact_b0"] for r in rows)}
    for name in ("ratio_simd_f32", "ratio_simd_f32_wall", "ratio_float_i8_f32",
                 "ratio_fbgemm_torch_f32", "ratio_simd_fbgemm"):
        summary[f"geomean_{name}"], summary[f"min_{name}"] = stat(name)
    summary["total_time_s"] = total_times(rows)
    summary["geomean_gops"] = {k: geomean(r["gops"][k] for r in rows) for k in rows[0]["gops"]}
    meta = {**machine_meta(command("bench_int8.py", argv), torch),
            "simd_supported": simd_supported(), "batch": args.batch, "suite": args.suite,
            "repeats": args.repeats, "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(), "wall_s": time.time() - t0, "warmup_s": warm,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    write_results(args.out, meta, summary, rows, render_md)
    return 0


def _fmt(v, digits=2):
    return "n/a" if v is None else f"{v:.{digits}f}"


def render_md(meta, summary, rows) -> str:
    s = summary
    lines = [
        f"# int8 benchmark: {meta['suite']} at batch {meta['batch']}, single thread",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['cpu']}, {meta['cores']} cores shared with other jobs (load average "
        f"{meta['loadavg_before'][0]:.2f} before, {meta['loadavg_after'][0]:.2f} after), "
        f"{meta['date_utc']} UTC; numpy {meta['numpy']}, torch {meta['torch']}, Python "
        f"{meta['python']}. Best of {meta['repeats']} interleaved repeats, thread CPU time "
        f"(wall-clock ratio listed too); {s['distinct_shapes']} distinct shapes, all "
        f"{s['layers']} layers listed. Operands: full-range random int8 input and weight.",
        "",
        f"- **parconv int8 (SIMD, vpmaddwd) / parconv float32: geomean "
        f"{_fmt(s['geomean_ratio_simd_f32'])}, worst {_fmt(s['min_ratio_simd_f32']['value'])}"
        f"** ({s['min_ratio_simd_f32']['layer']}); wall clock: geomean "
        f"{_fmt(s['geomean_ratio_simd_f32_wall'])}, worst "
        f"{_fmt(s['min_ratio_simd_f32_wall']['value'])} (targets 1.6 / 1.2)",
        f"- parconv int8 on the float32-chunk kernel / parconv float32: geomean "
        f"{_fmt(s['geomean_ratio_float_i8_f32'])}, worst "
        f"{_fmt(s['min_ratio_float_i8_f32']['value'])}",
        f"- PyTorch fbgemm int8 / PyTorch float32: geomean "
        f"{_fmt(s['geomean_ratio_fbgemm_torch_f32'])}; parconv int8 (SIMD) / fbgemm: geomean "
        f"{_fmt(s['geomean_ratio_simd_fbgemm'])}",
        "- geomean GOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in s["geomean_gops"].items()),
        f"- int8 results bit-identical to the int64 reference (first image, every shape): "
        f"{s['all_exact']}",
        "",
        "Design, the instruction-throughput limits behind these figures and the misses: "
        "`docs/kernels.md` (Integer mode).",
        "",
        "| layer | shape | parconv f32 GF/s | parconv i8 SIMD GOP/s | i8 SIMD / f32 | wall | "
        "parconv i8 float-chunk GOP/s | torch f32 GF/s | fbgemm GOP/s | fbgemm / torch f32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = r["gops"]
        lines.append(
            f"| {r['layer']} | {r['shape']} | {g['parconv_f32']:.1f} | "
            f"{g['parconv_i8_simd']:.1f} | {r['ratio_simd_f32']:.2f} | "
            f"{r['ratio_simd_f32_wall']:.2f} | {g['parconv_i8_float']:.1f} | "
            f"{g.get('torch_f32', float('nan')):.1f} | {g.get('torch_q8', float('nan')):.1f} | "
            f"{_fmt(r['ratio_fbgemm_torch_f32'])} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
