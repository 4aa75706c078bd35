"""Runtime pieces that need no MPI: seeded blocks, verification, validation messages,
the SLURM check and fault injection."""

from __future__ import annotations

import numpy as np
import pytest

from parconv.dtypes import PRESETS, parse_precision
from parconv.planner.partition import Grid, layout
from parconv.reference import conv2d_reference
from parconv.runtime import RunInputError, seeded_operands_global, seeded_operands_local
from parconv.runtime.api import block_ranges
from parconv.runtime.errors import (
    check_local_blocks,
    check_slurm,
    corrupt_requested,
    fault_point,
    integer_bound,
    validate_run,
)
from parconv.runtime.verify import compare
from parconv.spec import ConvSpec


def spec_of(dtype="fp32", **kw):
    args = dict(batch=3, in_channels=5, out_channels=4, in_size=(7, 6), kernel=(3, 2),
                stride=1, padding=1, dilation=1)
    args.update(kw)
    return ConvSpec(precision=parse_precision(dtype), **args)


@pytest.mark.parametrize("dtype", list(PRESETS))
def test_seeded_blocks_tile_the_global_operands(dtype):
    spec, grid = spec_of(dtype), Grid(2, 2, 1, 2, 1)
    xg, wg = seeded_operands_global(spec, seed=7)
    assert xg.shape == spec.input_shape and wg.shape == spec.filter_shape
    x_seen, w_seen = np.zeros(xg.shape, int), np.zeros(wg.shape, int)
    for r in range(grid.size):
        x, w = seeded_operands_local(spec, grid, r, seed=7)
        me = layout(spec, grid, r)
        assert x.shape == me.input_owned_shape and w.shape == me.filter_owned_shape
        xs = tuple(slice(a, b) for a, b in block_ranges(spec, grid, r, "input"))
        ws = tuple(slice(a, b) for a, b in block_ranges(spec, grid, r, "filter"))
        np.testing.assert_array_equal(x, xg[xs])
        np.testing.assert_array_equal(w, wg[ws])
        x_seen[xs] += 1
        w_seen[ws] += 1
    assert (x_seen == 1).all() and (w_seen == 1).all()  # blocks partition the arrays
    x8, _ = seeded_operands_global(spec, seed=8)
    assert not np.array_equal(x8, xg)  # the seed matters
    if spec.precision.is_integer:
        assert xg.min() < 0 or spec.precision.input == "uint8"
        assert len(np.unique(xg)) > 50
    else:
        assert np.abs(xg.astype(np.float64)).max() <= 1.0 and xg.astype(np.float64).std() > 0.4


def test_local_block_cuts_each_ranks_block_from_a_global_array():
    """local_block(global, spec, grid, rank, which) == the block that rank owns, for the
    input, the filter and the output, on an uneven grid of a custom layer whose precision
    is given as a preset name."""
    from parconv.runtime import local_block

    spec = ConvSpec(3, 5, 7, (11, 9), 3, 2, 1, precision="fp16")
    grid = Grid(1, 2, 1, 3, 1)
    xg, wg = seeded_operands_global(spec, seed=3)
    og = np.arange(np.prod(spec.output_shape)).reshape(spec.output_shape)
    seen = np.zeros(spec.output_shape, int)
    for r in range(grid.size):
        me = layout(spec, grid, r)
        x, w = local_block(xg, spec, grid, r, "input"), local_block(wg, spec, grid, r, "filter")
        assert x.shape == me.input_owned_shape and w.shape == me.filter_owned_shape
        assert x.dtype == np.float16 and x.flags.c_contiguous
        sx, sw = seeded_operands_local(spec, grid, r, seed=3)
        np.testing.assert_array_equal(x, sx)
        np.testing.assert_array_equal(w, sw)
        o = local_block(og, spec, grid, r, "output")
        assert o.shape == me.output_owned_shape
        seen[tuple(slice(a, b) for a, b in block_ranges(spec, grid, r, "output"))] += 1
        np.testing.assert_array_equal(
            o, og[tuple(slice(a, b) for a, b in block_ranges(spec, grid, r, "output"))])
    assert (seen == 1).all()
    with pytest.raises(ValueError, match="global input has shape"):
        local_block(xg[:, :2], spec, grid, 0, "input")
    with pytest.raises(ValueError, match="unknown block kind"):
        local_block(xg, spec, grid, 0, "bias")


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "fp64", "int8"])
def test_compare_accepts_reference_and_catches_one_wrong_element(dtype):
    spec = spec_of(dtype)
    x, w = seeded_operands_global(spec, 1)
    ref = conv2d_reference(x, w, spec.stride, spec.padding, spec.dilation, spec.precision.accum)
    out = ref.astype(np.dtype(ref.dtype) if dtype != "fp16" else np.float16)
    assert compare(spec, x, w, out).ok
    bad = out.copy()
    bad.reshape(-1)[5] += 1
    v = compare(spec, x, w, bad)
    assert not v.ok and "outputs" in v.message
    if not spec.precision.is_integer:
        nan = out.copy()
        nan.reshape(-1)[0] = np.nan
        assert not compare(spec, x, w, nan).ok
    assert not compare(spec, x, w, out[:, :1]).ok


def test_validate_run_messages():
    spec = spec_of()
    with pytest.raises(RunInputError, match="has 4 ranks but the job has 3"):
        validate_run(spec, Grid(1, 2, 2, 1, 1), 3)
    with pytest.raises(RunInputError, match=r"in-channels \(5\) into 6 blocks"):
        validate_run(spec, Grid(1, 1, 6, 1, 1), 6)
    with pytest.raises(RunInputError, match="needs .* per rank, more than --memory"):
        validate_run(spec, Grid(1, 1, 1, 1, 1), 1, memory_bytes=100)
    validate_run(spec, Grid(1, 2, 1, 1, 2), 4, memory_bytes=10**8)


def test_integer_overflow_policy():
    assert integer_bound(spec_of("fp32")) is None
    ok = spec_of("int8", in_channels=4000, kernel=(3, 3))  # 36000 * 128 * 128 < 2**31
    assert integer_bound(ok)[0] == 36000 * 128 * 128
    validate_run(ok, Grid(), 1)
    big = spec_of("uint8", in_channels=8000, kernel=(3, 3))  # 72000 * 255 * 128 > 2**31
    with pytest.raises(RunInputError, match="integer overflow possible"):
        validate_run(big, Grid(), 1)
    with pytest.raises(RunInputError, match="accumulates uint8 x int8 in int32, not int64"):
        validate_run(big.with_precision(parse_precision("uint8/int8/int64")), Grid(), 1)


def test_unsupported_precisions_refused():
    spec = spec_of()
    for text in ("float32/float32/float64", "float16/float16/float16", "int16/int8/int32",
                 "float32/float32/float32/int32"):
        with pytest.raises(RunInputError, match="precision"):
            validate_run(spec.with_precision(parse_precision(text)), Grid(), 1)
    validate_run(spec.with_precision(parse_precision("float16/float16/float32/float32")), Grid(), 1)


def test_slurm_world_size_check():
    check_slurm(4, {"SLURM_NTASKS": "4"})
    check_slurm(1, {})
    with pytest.raises(RunInputError, match="SLURM_NTASKS=4"):
        check_slurm(1, {"SLURM_NTASKS": "4"})  # N copies of "rank 0 of 1"
    check_slurm(2, {"SLURM_NTASKS": "4", "PMI_SIZE": "2"})  # mpiexec -n 2 inside an allocation
    check_slurm(1, {"SLURM_NTASKS": "4", "PARCONV_SKIP_WORLD_CHECK": "1"})


def test_local_block_checks():
    spec, grid = spec_of("int8"), Grid(1, 2, 1, 1, 2)
    x, w = seeded_operands_local(spec, grid, 1, 0)
    assert check_local_blocks(spec, grid, 1, x, w) is None
    assert "shape" in check_local_blocks(spec, grid, 1, x[:, :1], w)
    assert "dtype" in check_local_blocks(spec, grid, 1, x, w.astype(np.int16))
    assert "numpy array" in check_local_blocks(spec, grid, 1, x.tolist(), w)
    g2 = Grid(1, 1, 1, 2, 1)  # 7 input rows: 4 + 3, so rank 0's block does not fit rank 1
    x0, w0 = seeded_operands_local(spec, g2, 0, 0)
    assert "local input block has shape (3, 5, 4, 6), expected (3, 5, 3, 6)" == \
        check_local_blocks(spec, g2, 1, x0, w0)


def test_fault_injection_only_on_the_named_rank_and_phase():
    env = {"PARCONV_FAULT_RANK": "2", "PARCONV_FAULT_PHASE": "input_halo"}
    fault_point("input_halo", 1, env)
    fault_point("compute", 2, env)
    with pytest.raises(RuntimeError, match="injected fault in phase input_halo"):
        fault_point("input_halo", 2, env)
    assert corrupt_requested(2, {"PARCONV_FAULT_RANK": "2", "PARCONV_FAULT_PHASE": "corrupt_output"})
    assert not corrupt_requested(2, env)


@pytest.mark.parametrize("grid", [Grid(1, 1, 1, 2, 2), Grid(1, 1, 1, 3, 1)])
def test_padded_window_for_gemmini_matches_the_window_kernel(grid):
    """The explicit-padding window given to Gemmini computes what the offset kernel does."""
    from parconv.gemmini.offload import run_local
    from parconv.kernels import conv2d_window
    from parconv.planner.schedule import build_schedule
    from parconv.runtime.offload import check_offload, padded_window

    spec = spec_of("int8", kernel=(3, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                   in_size=(9, 8))
    check_offload(spec, "gemmini")
    with pytest.raises(ValueError, match="int8/uint8"):
        check_offload(spec_of("fp32"), "gemmini")
    rng = np.random.default_rng(3)
    for r in range(grid.size):
        s = build_schedule(spec, grid, r)
        (a, b), (c, d) = s.window
        z = s.sizes
        x = rng.integers(-128, 128, (z["b"], z["c_blk"], b - a, d - c)).astype(np.int8)
        w = rng.integers(-128, 128, (z["k_blk"], z["c_blk"], 3, 3)).astype(np.int8)
        out = np.zeros((z["b"], z["k_blk"], z["out_h"], z["out_w"]), np.int32)
        conv2d_window(x, w, out, spec.stride, spec.dilation, s.offset)
        acc, report = run_local(padded_window(x, s), w, spec.stride, spec.dilation)
        np.testing.assert_array_equal(acc, out)
        assert report["cycles"] > 0
