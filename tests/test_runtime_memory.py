"""Runtime memory: the plan's per-rank memory against tracemalloc-measured runs (3 ranks,
one mpiexec launch), the local kernel's workspace formula, the chunked seeded
generator and scatter/gather through point-to-point byte blocks."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from parconv import dtypes
from parconv.dtypes import PRESETS
from parconv.kernels import accumulator_dtype, conv2d_window
from parconv.kernels.window import workspace_bytes
from parconv.layers import layer
from parconv.planner.partition import Grid, memory_phases, rank_memory_buffers, rank_memory_bytes
from parconv.runtime import seeded_block
from parconv.runtime.api import _global_shape, _splitmix, block_ranges
from parconv.spec import ConvSpec

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mpi" / "memory_cases.py"
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


def old_seeded_block(spec, which, ranges, seed):
    """The definition before chunking (whole-block uint64 index arrays)."""
    shape = _global_shape(spec, which)
    name = spec.precision.input if which == "input" else spec.precision.filter
    strides = np.cumprod((1, *shape[:0:-1]))[::-1]
    idx = np.zeros([hi - lo for lo, hi in ranges], np.uint64)
    for ax, (lo, hi) in enumerate(ranges):
        sh = [1] * 4
        sh[ax] = hi - lo
        idx = idx + (np.arange(lo, hi, dtype=np.uint64) * np.uint64(strides[ax])).reshape(sh)
    key = _splitmix(np.array([seed & (2**64 - 1), 1 + (which == "filter")], np.uint64)).sum()
    z = _splitmix(idx ^ np.uint64(key))
    dt = dtypes.numpy_dtype(name)
    if dtypes.is_integer(name):
        lo, hi = dtypes.value_range(name)
        lo, hi = int(max(lo, -128)), int(min(hi, 127))
        vals = (z >> np.uint64(33)) % np.uint64(hi - lo + 1)
        return (vals.astype(np.int64) + lo).astype(dt)
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 * 2.0 - 1.0
    if which == "filter":
        u *= np.sqrt(3.0 / (spec.C * spec.R * spec.S))
    return u.astype(dt)


@pytest.mark.parametrize("preset", ["fp32", "int8", "bf16", "fp16", "uint8", "fp64"])
def test_chunked_seeded_block_equals_the_old_definition(preset):
    spec = ConvSpec(5, 7, 6, (11, 9), 3, 1, 1, precision=PRESETS[preset])
    grid = Grid(2, 2, 1, 2, 1)
    for r in (0, 3, 5, 7):
        for which in ("input", "filter"):
            ranges = block_ranges(spec, grid, r, which)
            ref = old_seeded_block(spec, which, ranges, 11)
            for chunk in (1, 7, 100, 1 << 16):
                got = seeded_block(spec, which, ranges, 11, chunk=chunk)
                assert got.dtype == ref.dtype and got.shape == ref.shape
                assert np.array_equal(got.view(np.uint8), ref.view(np.uint8)), (r, which, chunk)


def test_seeded_block_temporaries_are_bounded_by_the_chunk():
    spec = layer("resnet50/layer1.0.conv2", 4, PRESETS["fp32"])   # 3.2 MB input
    full = tuple((0, n) for n in spec.input_shape)
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    x = seeded_block(spec, "input", full, 0, chunk=4096)
    peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    # the block plus a few 4096-element temporaries (the old code: ~5 block-sized uint64s)
    assert x.nbytes <= peak <= x.nbytes + 64 * 4096 + 65536


CASES_WS = [((2, 8, 10, 10), (4, 8, 3, 3), np.float32, np.float32, 1),
            ((3, 16, 20, 20), (8, 16, 1, 1), np.float32, np.float32, 1),
            ((1, 40, 40, 40), (16, 40, 3, 3), np.float32, np.float32, 1),
            ((4, 8, 12, 12), (4, 8, 3, 3), np.int8, np.int8, 1),
            ((2, 30, 30, 30), (5, 30, 3, 3), ml_dtypes.bfloat16, ml_dtypes.bfloat16, 1),
            ((2, 30, 31, 30), (5, 30, 3, 3), np.float16, np.float16, 2),
            ((2, 8, 40, 40), (4, 8, 1, 1), np.float64, np.float64, 1),
            ((6, 8, 5, 5), (4, 8, 3, 3), np.float32, np.float32, 1),
            ((2, 8, 40, 40), (4, 8, 3, 3), np.uint8, np.int8, 2),
            ((2, 9, 40, 40), (7, 9, 1, 1), np.int8, np.int8, 1),     # int 1x1: x interleaved
            ((3, 9, 12, 12), (5, 9, 1, 1), np.uint8, np.int8, 1)]    # blocks span images


@pytest.mark.parametrize("int_kernel", ["simd", "float"])
@pytest.mark.parametrize("xs,ws,xd,wd,stride", CASES_WS)
def test_kernel_workspace_formula_and_transposed_output(xs, ws, xd, wd, stride, int_kernel,
                                                        warm_numba, monkeypatch):
    """The kernel's own allocations equal ``workspace_bytes``; writing through the
    transposed view of a (K, B, H, W) buffer gives the same result as a plain output.
    Integer cases on both integer kernels (chosen through ``$PARCONV_INT_KERNEL``, as
    the runtime and the planner see it)."""
    if np.dtype(xd).kind == "f" and int_kernel == "float":
        pytest.skip("integer kernels only")
    monkeypatch.setenv("PARCONV_INT_KERNEL", int_kernel)
    rng = np.random.default_rng(0)
    x, w = rng.integers(-3, 3, xs).astype(xd), rng.integers(-3, 3, ws).astype(wd)
    H, W = (xs[2] - ws[2]) // stride + 1, (xs[3] - ws[3]) // stride + 1
    acc = accumulator_dtype(xd, wd)
    ref = np.zeros((xs[0], ws[0], H, W), acc)
    conv2d_window(x, w, ref, stride)
    buf = np.zeros((ws[0], xs[0], H, W), acc)
    conv2d_window(x, w, buf.transpose(1, 0, 2, 3), stride)   # compiles outside the measure
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    conv2d_window(x, w, buf.transpose(1, 0, 2, 3), stride)
    peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    assert np.array_equal(buf.transpose(1, 0, 2, 3), ref)
    direct = ws[2] == ws[3] == 1 and stride == 1 and (
        np.dtype(xd) == acc and H * W >= 256 or acc.kind == "i")   # as kernel_direct
    pred = int(workspace_bytes(xs[0], ws[0], xs[1], H, W, ws[2], ws[3], xd, wd, direct))
    assert pred <= peak <= pred + 16384, (peak, pred)
    with pytest.raises(ValueError, match="planes"):
        conv2d_window(x, w, np.zeros((xs[0], ws[0], W, H), acc).transpose(0, 1, 3, 2), stride)


def test_memory_is_the_maximum_over_phases_not_a_sum():
    spec = layer("vgg16/features.2", 4, PRESETS["fp32"])
    grid = Grid(1, 1, 4, 1, 1)
    n = rank_memory_buffers(spec, grid, 0)
    phases = memory_phases(spec.precision, n)
    assert rank_memory_bytes(spec, grid, 0) == max(phases.values()) // 8
    total = sum(v for k, v in n.items() if k != "kernel") * 4 + n["kernel"]
    # (0.80 here: the overlapped order keeps the reduce-scatter's buffers alive while
    # the later tiles are computed; the cast's result and output blocks are never alive
    # with the partial)
    assert rank_memory_bytes(spec, grid, 0) < 0.85 * total
    # the compute phase (window, kernel workspace, partial + received block + MPI's
    # temporary of the tiles' reduce-scatters in flight) is the peak of a channel split
    assert max(phases, key=phases.get) == "compute"


def test_distributed_memory_matches_the_plan_and_scatter_gather_bounded(tmp_path, warm_numba):
    out = tmp_path / "memory.json"
    proc = subprocess.run([MPIEXEC, "-n", "3", sys.executable, str(SCRIPT), str(out)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    for case in res["cases"]:
        for r in case["ranks"]:
            ratio = r["traced"] / r["plan_numpy"]
            assert 0.9 <= ratio <= 1.15, (case["name"], r)
            assert r["plan"] >= r["plan_numpy"]
    sg = res["scatter_gather"]
    assert all(sg["blocks_equal"]) and sg["gathered_equal"]
    assert all(sg["refused_everywhere"])
    slack = 256 * 1024   # Python objects, MPI request objects
    # root: its own blocks + one packed block at a time (pickled scatter: all of them)
    assert sg["scatter_peak"] <= sg["own_blocks"] + sg["max_input_block"] + slack
    assert sg["scatter_peak"] < 0.75 * sg["global_input"]
    # gather: the global array + one block buffer at a time
    assert sg["gather_peak"] <= sg["global_input"] + sg["max_input_block"] + slack
