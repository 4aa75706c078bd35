"""Kernel benchmark: parconv's local convolution vs PyTorch (oneDNN) and numpy Im2Col+BLAS.

Every ResNet-50 layer at batch 8 (default), single thread. Each distinct layer shape is
timed once (the suite repeats shapes; every layer is reported with its shape's figures).
Per shape and repeat the implementations run interleaved (parconv f32, torch f32,
parconv int8, torch quantized int8, numpy im2col) so that load from other processes on a
shared machine hits all of them; the best of ``--repeats`` is kept.

Figures: GFLOP/s = 2*MACs / best time (GOP/s for int8); ratios parconv/torch,
parconv/numpy-im2col, parconv int8/parconv f32; extra memory of one parconv call
(tracemalloc peak, numpy buffers) against its output size; numba compile time (cold cache
in a fresh process) and cache-load time, separate from run time.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        .venv/bin/python bench/bench_kernels.py

Writes ``bench/results/kernels.json`` and ``bench/results/kernels.md``. PyTorch is
optional (columns left empty without it).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
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

from parconv import conv2d  # noqa: E402
from parconv.reference import conv2d_reference  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover - benchmark-only dependency
    torch = None

ROOT = Path(__file__).resolve().parent.parent


def im2col_numpy(x: np.ndarray, w: np.ndarray, stride, padding) -> np.ndarray:
    """Textbook Im2Col + one BLAS GEMM (full im2col buffer, numpy's BLAS)."""
    B, C, _, _ = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (R, S), axis=(2, 3))[:, :, ::sh, ::sw]
    H, W = win.shape[2:4]
    cols = np.ascontiguousarray(win.transpose(0, 1, 4, 5, 2, 3)).reshape(B, C * R * S, H * W)
    return np.matmul(w.reshape(K, C * R * S), cols).reshape(B, K, H, W)


def extra_memory(fn) -> int:
    """Peak bytes allocated (tracemalloc sees numpy buffers) during ``fn()`` beyond its
    result."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    res = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return max(0, peak - base - res.nbytes)


def compile_times() -> dict:
    """Cold numba compile (empty cache) and warm cache load, each in a fresh process."""
    code = ("import time; t=time.perf_counter(); import parconv.kernels as k; "
            "t1=time.perf_counter(); w=k.warmup(); print(t1-t, w)")
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold_compile", "cache_load"):
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, check=True, cwd=ROOT)
            imp, warm = map(float, res.stdout.split())
            out[label] = {"import_s": imp, "warmup_s": warm}
    return out


def torch_quantized(x8: np.ndarray, w8: np.ndarray, stride, padding):
    """A callable running torch's quantized conv (fbgemm/onednn) on the same int8 data, or
    None. Weights are prepacked once (not timed); output is requantized to quint8."""
    if torch is None:
        return None, None
    try:
        engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else \
            torch.backends.quantized.supported_engines[-1]
        torch.backends.quantized.engine = engine
        qx = torch.quantize_per_tensor(torch.from_numpy(x8.astype(np.float32) + 128.0), 1.0,
                                       0, torch.quint8)
        qw = torch.quantize_per_tensor(torch.from_numpy(w8.astype(np.float32)), 1.0, 0,
                                       torch.qint8)
        packed = torch.ops.quantized.conv2d_prepack(qw, None, list(stride), list(padding),
                                                    [1, 1], 1)
        qx = qx.contiguous(memory_format=torch.channels_last)

        def run():
            return torch.ops.quantized.conv2d(qx, packed, 64.0, 0)
        run()
        return run, engine
    except Exception as exc:  # noqa: BLE001 - optional comparison
        print(f"torch quantized conv unavailable: {exc}", file=sys.stderr)
        return None, None


def add_torch_runs(runs: dict, x, w, x8, w8, stride, padding) -> str | None:
    """Add ``torch_f32`` (oneDNN) and, where available, ``torch_q8`` (quantized conv) on
    the same operands to ``runs``; the quantized engine's name, or None (also without
    PyTorch)."""
    if torch is None:
        return None
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    runs["torch_f32"] = lambda: torch.nn.functional.conv2d(tx, tw, None, stride, padding)
    qrun, engine = torch_quantized(x8, w8, stride, padding)
    if qrun is not None:
        runs["torch_q8"] = qrun
    return engine


def bench_shape(spec, repeats: int, check: bool) -> dict:
    rng = np.random.default_rng(0)
    B, C, K = spec.B, spec.C, spec.K
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    w = (rng.standard_normal(spec.filter_shape) / math.sqrt(C * spec.R * spec.S)).astype(np.float32)
    x8 = rng.integers(-128, 128, spec.input_shape).astype(np.int8)
    w8 = rng.integers(-128, 128, spec.filter_shape).astype(np.int8)
    st, pad = spec.stride, spec.padding
    runs = {
        "parconv_f32": lambda: conv2d(x, w, st, pad),
        "parconv_i8": lambda: conv2d(x8, w8, st, pad),
        "numpy_im2col": lambda: im2col_numpy(x, w, st, pad),
    }
    engine = add_torch_runs(runs, x, w, x8, w8, st, pad)
    best, best_cpu = best_of_interleaved(runs, repeats)
    flops = 2 * spec.macs
    res = {"shape": shape_label(spec),
           "flops": flops, "times_s": best_cpu, "wall_times_s": best,
           "gflops": {k: flops / v / 1e9 for k, v in best_cpu.items()},
           "gflops_wall": {k: flops / v / 1e9 for k, v in best.items()}}
    g, gw = res["gflops"], res["gflops_wall"]
    res["ratio_torch"] = g["parconv_f32"] / g["torch_f32"] if "torch_f32" in g else None
    res["ratio_torch_wall"] = (gw["parconv_f32"] / gw["torch_f32"] if "torch_f32" in gw
                               else None)
    res["ratio_im2col"] = g["parconv_f32"] / g["numpy_im2col"]
    res["ratio_i8_f32"] = g["parconv_i8"] / g["parconv_f32"]
    res["torch_q_engine"] = engine
    out_bytes = B * K * spec.H * spec.W * 4
    res["output_bytes"] = out_bytes
    res["extra_bytes_f32"] = extra_memory(runs["parconv_f32"])
    res["extra_bytes_i8"] = extra_memory(runs["parconv_i8"])
    res["extra_bytes_im2col"] = extra_memory(runs["numpy_im2col"])
    if check:
        y = runs["parconv_f32"]()
        ref = im2col_numpy(x.astype(np.float64), w.astype(np.float64), st, pad)
        res["max_abs_err_f32"] = float(np.abs(y - ref).max())
        sub = (slice(0, 1),)
        res["int8_exact_b0"] = bool(np.array_equal(
            runs["parconv_i8"]()[sub], conv2d_reference(x8[sub], w8, st, pad)))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_suite_args(ap)
    ap.add_argument("--no-check", action="store_true", help="skip the correctness check")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "kernels"))
    args = ap.parse_args(argv)
    if torch is not None:
        torch.set_num_threads(1)
    layers, uniq = suite_shapes(args)
    load_before = os.getloadavg()
    t0 = time.time()
    comp = compile_times()
    shapes = {}
    for spec in uniq:
        shapes[shape_key(spec)] = r = bench_shape(spec, args.repeats, not args.no_check)
        g = r["gflops"]
        print(f"{spec.name:32s} {r['shape']:28s} f32 {g['parconv_f32']:6.1f} "
              f"torch {g.get('torch_f32', float('nan')):6.1f} ratio {r['ratio_torch'] or 0:5.2f} "
              f"i8 {g['parconv_i8']:6.1f} ({r['ratio_i8_f32']:4.2f}) "
              f"im2col {g['numpy_im2col']:6.1f}", flush=True)
    rows = layer_rows(layers, shapes)
    summary = {
        "layers": len(rows), "distinct_shapes": len(shapes),
        "geomean_ratio_torch": geomean(r["ratio_torch"] for r in rows),
        "min_ratio_torch": min((r["ratio_torch"] for r in rows if r["ratio_torch"]), default=None),
        "geomean_ratio_torch_wall": geomean(r["ratio_torch_wall"] for r in rows),
        "min_ratio_torch_wall": min((r["ratio_torch_wall"] for r in rows
                                     if r["ratio_torch_wall"]), default=None),
        "geomean_ratio_im2col": geomean(r["ratio_im2col"] for r in rows),
        "geomean_ratio_i8_f32": geomean(r["ratio_i8_f32"] for r in rows),
        "min_ratio_i8_f32": min(r["ratio_i8_f32"] for r in rows),
        "max_extra_over_output_f32": max(r["extra_bytes_f32"] / r["output_bytes"] for r in rows),
        "max_extra_over_output_i8": max(r["extra_bytes_i8"] / r["output_bytes"] for r in rows),
        "total_time_s": total_times(rows),
    }
    meta = {**machine_meta(command("bench_kernels.py", argv), torch),
            "batch": args.batch, "suite": args.suite, "repeats": args.repeats,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "wall_s": time.time() - t0, "compile": comp}
    write_results(args.out, meta, summary, rows, render_md)
    return 0


def render_md(meta, summary, rows) -> str:
    c = meta["compile"]
    lines = [
        f"# Kernel benchmark: {meta['suite']} at batch {meta['batch']}, single thread",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['cpu']}, {meta['cores']} cores shared with other jobs (load average "
        f"{meta['loadavg_before'][0]:.2f} before, {meta['loadavg_after'][0]:.2f} after); "
        f"numpy {meta['numpy']}, torch {meta['torch']}, Python {meta['python']}. Best of "
        f"{meta['repeats']} interleaved repeats per implementation; each of the "
        f"{summary['distinct_shapes']} distinct shapes is timed once and every one of the "
        f"{summary['layers']} layers is listed with its shape's figures. Rates are computed "
        "from the best *thread CPU time* (every implementation runs single-threaded in the "
        "calling thread, so this excludes time spent descheduled by the other jobs on the "
        "machine); the wall-clock ratio is listed too.",
        "",
        f"- float32: parconv / torch (oneDNN) GFLOP/s geomean **{summary['geomean_ratio_torch']:.3f}**, "
        f"min layer **{summary['min_ratio_torch']:.3f}** (wall clock: geomean "
        f"{summary['geomean_ratio_torch_wall']:.3f}, min {summary['min_ratio_torch_wall']:.3f}); "
        f"parconv / numpy Im2Col+BLAS geomean "
        f"{summary['geomean_ratio_im2col']:.3f}",
        f"- int8->int32: parconv int8 / parconv float32 geomean **{summary['geomean_ratio_i8_f32']:.3f}**, "
        f"min {summary['min_ratio_i8_f32']:.3f}",
        f"- extra memory of one call / output bytes, max over layers: float32 "
        f"{summary['max_extra_over_output_f32']:.2f}, int8 {summary['max_extra_over_output_i8']:.2f}",
        f"- numba compile (fresh cache, separate process): import {c['cold_compile']['import_s']:.2f} s "
        f"+ warmup {c['cold_compile']['warmup_s']:.2f} s; from cache: import "
        f"{c['cache_load']['import_s']:.2f} s + warmup {c['cache_load']['warmup_s']:.2f} s "
        "(not included in any run time)",
        "- total run time over all layers (s): " + ", ".join(
            f"{k} {v:.2f}" for k, v in summary["total_time_s"].items()),
        "",
        "Method, causes of the misses and the memory bound: `docs/kernels.md`. torch q8 = "
        "PyTorch's quantized conv (fbgemm, weights prepacked once, uint8 requantised output); "
        "extra memory = tracemalloc peak of one call minus its result, over the output bytes.",
        "",
        "| layer | shape | parconv f32 GF/s | torch f32 GF/s | ratio | wall ratio | im2col GF/s | ratio | "
        "parconv i8 GOP/s | i8/f32 | torch q8 GOP/s | extra mem f32 / out | extra mem i8 / out | im2col extra / out |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = r["gflops"]
        ob = r["output_bytes"]
        lines.append(
            f"| {r['layer']} | {r['shape']} | {g['parconv_f32']:.1f} | "
            f"{g.get('torch_f32', float('nan')):.1f} | {r['ratio_torch'] or float('nan'):.2f} | "
            f"{r['ratio_torch_wall'] or float('nan'):.2f} | "
            f"{g['numpy_im2col']:.1f} | {r['ratio_im2col']:.2f} | {g['parconv_i8']:.1f} | "
            f"{r['ratio_i8_f32']:.2f} | {g.get('torch_q8', float('nan')):.1f} | "
            f"{r['extra_bytes_f32'] / ob:.2f} | {r['extra_bytes_i8'] / ob:.2f} | "
            f"{r['extra_bytes_im2col'] / ob:.2f} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
