"""Gemmini simulator: bit-exact output for both tilings, counted bytes and cycles equal the
analytic model, model invariants, rounding, and the runtime's offload entry point."""

from __future__ import annotations

import numpy as np
import pytest

from parconv.dtypes import PRESETS
from parconv.gemmini import (
    GemminiConfig,
    Plan,
    evaluate,
    parconv_plan,
    reference_output,
    requantize,
    simulate,
    vendor_plan,
)
from parconv.gemmini.cycles import exec_cycles
from parconv.gemmini.offload import run_local
from parconv.gemmini.simulator import _counted_exec
from parconv.layers import layer
from parconv.reference import conv2d_reference, random_operands
from parconv.spec import ConvSpec

#: A small build so that small layers still need many tiles (128 / 32 rows per half).
SMALL = GemminiConfig(sp_bank_rows=64, acc_rows=64, dram_latency=40)

# (B, C, K, in, kernel, stride, padding, dilation)
SHAPES = [
    (1, 3, 20, (11, 9), 3, 1, 1, 1),      # odd sizes, non-square input, 3 channels
    (2, 20, 17, (13, 13), 3, 2, 1, 1),    # stride 2, batch 2, channels not multiple of 16
    (1, 40, 33, (14, 14), 1, 2, 0, 1),    # 1x1 stride 2 (library "ds" case)
    (2, 5, 7, (15, 15), 7, 2, 3, 1),      # 7x7 / 2
    (3, 33, 18, (9, 9), 1, 1, 0, 1),      # 1x1, batch 3
    (1, 17, 35, (10, 10), 3, 1, 2, 2),    # dilation 2, padding 2
    (1, 48, 16, (7, 7), 3, 1, 1, 1),      # 7x7 spatial like layer4
    (2, 9, 5, (12, 12), 2, 2, 0, 1),      # even kernel, stride 2
]


def _spec(shape, dtype="int8"):
    b, c, k, hw, r, s, p, d = shape
    return ConvSpec(b, c, k, hw, r, s, p, d, PRESETS[dtype])


def _plans(spec, cfg):
    plans = [parconv_plan(spec, cfg, bias=True)[0]]
    if spec.in_size[0] == spec.in_size[1]:
        plans.append(vendor_plan(spec, cfg))
    return plans


@pytest.mark.parametrize("shape", SHAPES)
def test_bit_exact_and_counts_match_model(shape):
    spec = _spec(shape)
    x, w = random_operands(spec, seed=sum(shape[:3]))
    bias = np.random.default_rng(1).integers(-3000, 3000, spec.K).astype(np.int32)
    ref = reference_output(spec, x, w, bias, scale=0.0123, relu=True)
    for plan in _plans(spec, SMALL):
        res = simulate(spec, x, w, plan, SMALL, bias, scale=0.0123, relu=True)
        assert res.output.dtype == np.int8
        np.testing.assert_array_equal(res.output, ref)
        model = evaluate(spec, plan, SMALL, bias=True)
        assert res.dram_bytes == model.dram_bytes
        assert (res.cycles, res.load_cycles, res.exec_cycles, res.store_cycles, res.n_tiles) == \
            (model.cycles, model.load_cycles, model.exec_cycles, model.store_cycles, model.n_tiles)
        # invariants: compulsory traffic and peak compute
        compulsory = spec.input_used_elems + spec.filter_elems + spec.output_elems + 4 * spec.K
        assert res.dram_bytes["total"] >= compulsory
        assert res.cycles >= spec.macs / SMALL.dim ** 2
        assert res.cycles >= spec.macs / (min(spec.C, SMALL.dim) * min(spec.K, SMALL.dim))
        assert res.instructions * SMALL.dim ** 3 >= spec.macs  # a compute: ≤ DIM rows × DIM²


@pytest.mark.parametrize("order", ["bhwkrsc", "kbhwrsc", "hwkbrsc", "khwbrsc", "wbkhcrs"])
@pytest.mark.parametrize("policy", ["library", "parconv"])
def test_orders_and_policies_exact_raw(order, policy):
    """Raw int32 output equals the reference accumulator under every order and reuse policy;
    a wrong reuse decision would use a stale scratchpad tile."""
    spec = _spec((2, 21, 19, (10, 11), 3, 1, 1, 1), "uint8")
    x, w = random_operands(spec, seed=3)
    plan = Plan((1, 4, 5, 16, 3, 2, 16), tuple(order), policy)
    cfg = GemminiConfig(sp_bank_rows=128, acc_rows=64)
    res = simulate(spec, x, w, plan, cfg, raw=True)
    assert res.output.dtype == np.int32
    np.testing.assert_array_equal(res.output, conv2d_reference(x, w, 1, 1, 1, "int32"))
    model = evaluate(spec, plan, cfg, raw=True)
    assert (res.cycles, res.dram_bytes) == (model.cycles, model.dram_bytes)
    # raw int32 outputs are 4 bytes each
    assert res.dram_bytes["output"] == 4 * spec.output_elems


def test_reuse_policy_saves_bytes():
    spec = _spec((1, 32, 64, (12, 12), 1, 1, 0, 1))
    tile = (1, 4, 12, 16, 1, 1, 32)
    lib = evaluate(spec, Plan(tile, policy="library"))
    ours = evaluate(spec, Plan(tile, policy="parconv"))
    # k innermost, single reduction tile: parconv keeps the input tile across the 4 k tiles
    assert lib.dram_bytes["input"] == 4 * spec.input_elems
    assert ours.dram_bytes["input"] == spec.input_elems
    assert ours.cycles <= lib.cycles


def test_exec_closed_form_matches_instruction_walk():
    rng = np.random.default_rng(0)
    for _ in range(40):
        dims = tuple(int(v) for v in rng.integers(1, [4, 6, 40, 40, 4, 4, 50]))
        cfg = GemminiConfig(dim=int(rng.choice([4, 8, 16])))
        assert int(exec_cycles(*dims, cfg)) == _counted_exec(*dims, cfg)[0]
        b, h, ww, k, r, s, c = dims
        assert int(exec_cycles(*dims, cfg)) * cfg.dim ** 2 >= b * h * ww * k * r * s * c


def test_requantize_rounding():
    acc = np.array([5, 7, -5, -7, 3, 1000, -1000, -9], dtype=np.int32)
    np.testing.assert_array_equal(requantize(acc, 0.5), [2, 4, -2, -4, 2, 127, -128, -4])
    np.testing.assert_array_equal(requantize(acc, 0.5, relu=True), [2, 4, 0, 0, 2, 127, 0, 0])
    # float32 arithmetic: 16777217 is not representable and rounds to 16777216 first
    assert requantize(np.array([16777217], dtype=np.int32), 2.0 ** -24)[0] == 1


@pytest.mark.parametrize("name", ["resnet50/layer1.0.conv1", "resnet50/layer3.0.conv2",
                                  "resnet50/layer4.0.downsample.0"])
def test_resnet_layers_parconv_never_worse(name):
    spec = layer(name, 1, PRESETS["int8"])
    vc = evaluate(spec, vendor_plan(spec), None)
    pp, pc = parconv_plan(spec, max_bytes=vc.dram_bytes["total"])
    assert pc.cycles <= vc.cycles and pc.dram_bytes["total"] <= vc.dram_bytes["total"]
    compulsory = spec.input_used_elems + spec.filter_elems + spec.output_elems
    for c in (vc, pc):
        assert c.dram_bytes["total"] >= compulsory
        assert c.cycles >= spec.macs / 256


def test_run_local():
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (2, 19, 11, 11)).astype(np.int8)
    w = rng.integers(-128, 128, (23, 19, 3, 3)).astype(np.int8)
    acc, rep = run_local(x, w, stride=2, dilation=1, config=SMALL)
    np.testing.assert_array_equal(acc, conv2d_reference(x, w, 2, 0, 1, "int32"))
    assert set(rep) >= {"cycles", "dram_bytes", "tile", "vendor_cycles"}
    assert rep["dram_bytes"]["total"] == sum(v for k, v in rep["dram_bytes"].items() if k != "total")
    assert len(rep["tile"]) == 7 and rep["cycles"] <= rep["vendor_cycles"]
    # non-square local block (a row split): no vendor figure, still exact
    xu = rng.integers(0, 256, (1, 8, 6, 13)).astype(np.uint8)
    acc, rep = run_local(xu, w[:, :8], stride=(1, 2), dilation=1, config=SMALL)
    np.testing.assert_array_equal(acc, conv2d_reference(xu, w[:, :8], (1, 2), 0, 1, "int32"))
    assert rep["vendor_cycles"] is None


def test_run_local_rejects_dtypes():
    w = np.zeros((2, 3, 1, 1), np.int8)
    with pytest.raises(ValueError, match="float32"):
        run_local(np.zeros((1, 3, 4, 4), np.float32), w, 1, 1)
    with pytest.raises(ValueError, match="int16"):
        run_local(np.zeros((1, 3, 4, 4), np.int8), w.astype(np.int16), 1, 1)


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3], SHAPES[5]])
def test_sequential_bound_never_beaten(shape):
    """parconv's single-processor lower bound (one fast memory of scratchpad + accumulator
    bytes, int8 stored outputs) holds for both Gemmini executions."""
    from parconv.bounds import sequential_bound
    from parconv.dtypes import Precision

    spec = _spec(shape)
    memory = SMALL.sp_rows * SMALL.dim + SMALL.acc_rows * SMALL.dim * 4
    bound = sequential_bound(spec.with_precision(Precision("int8", "int8", "int32", "int8")),
                             memory).bits / 8
    assert bound > 0
    for plan in _plans(spec, SMALL):
        assert evaluate(spec, plan, SMALL).dram_bytes["total"] >= bound


def _random_plan_case(rng, max_batch: int, max_ch: int, max_size: int, max_dil: int):
    """A random Gemmini build, layer, fitting-or-not tile and loop order (``None`` tile
    when it does not fit the build)."""
    from parconv.gemmini.tiling import LOOPS, REDUCTION, tile_fits

    cfg = GemminiConfig(dim=int(rng.choice([4, 8, 16])), sp_bank_rows=int(rng.choice([64, 256])),
                        acc_rows=int(rng.choice([64, 256])), dram_latency=int(rng.integers(1, 200)))
    r = int(rng.integers(1, 4))
    spec = ConvSpec(int(rng.integers(1, max_batch)), int(rng.integers(1, max_ch)), int(rng.integers(1, max_ch)),
                    (int(rng.integers(r + 2, max_size)), int(rng.integers(r + 2, max_size))), (r, r),
                    int(rng.integers(1, 3)), int(rng.integers(0, 2)), int(rng.integers(1, max_dil + 1)),
                    PRESETS["int8"])
    dims = (spec.B, spec.H, spec.W, spec.K, spec.R, spec.S, spec.C)
    tile = tuple(int(rng.integers(1, d + 1)) for d in dims)
    outer = list(rng.permutation([a for a in LOOPS if a not in REDUCTION]))
    inner = list(rng.permutation(list(REDUCTION)))
    return cfg, spec, (tile if tile_fits(spec, tile, cfg) else None), tuple(outer + inner)


def test_random_plans_model_equals_execution():
    """Random layers, builds (DIM 4/8/16), tiles, orders and policies: the simulator is
    bit-exact and its counted bytes and cycles equal the analytic model's."""
    rng = np.random.default_rng(11)
    done = 0
    while done < 12:
        cfg, spec, tile, order = _random_plan_case(rng, 3, 24, 12, 1)
        if tile is None:
            continue
        plan = Plan(tile, order, str(rng.choice(["library", "parconv"])))
        x, w = random_operands(spec, seed=done)
        res = simulate(spec, x, w, plan, cfg, raw=True)
        np.testing.assert_array_equal(res.output, conv2d_reference(x, w, spec.stride, spec.padding,
                                                                   spec.dilation, "int32"))
        model = evaluate(spec, plan, cfg, raw=True)
        assert (res.cycles, res.dram_bytes, res.exec_cycles) == \
            (model.cycles, model.dram_bytes, model.exec_cycles), (spec.describe(), plan)
        done += 1


def test_bounds_hold_for_random_plans():
    """tile_lower_bound (per tile vector, any order/policy) and cycle_floor (any tiling)
    never exceed the modelled cycles of a plan, over random layers, builds, tiles, orders,
    policies, bias and raw outputs."""
    from parconv.gemmini.tiling import cycle_floor, tile_lower_bound

    rng = np.random.default_rng(23)
    done = tight = 0
    while done < 150:
        cfg, spec, tile, order = _random_plan_case(rng, 4, 40, 20, 2)
        if tile is None:
            continue
        policy = str(rng.choice(["library", "parconv"]))
        bias, raw = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
        cost = evaluate(spec, Plan(tile, order, policy), cfg, bias=bias, raw=raw)
        lb = int(tile_lower_bound(spec, [tile], cfg, bias, raw)[0])
        floor = cycle_floor(spec, cfg, raw)
        assert 0 < lb <= cost.cycles, (spec.describe(), tile, order, policy)
        assert 0 < floor <= cost.cycles, (spec.describe(), tile, order, policy)
        tight += lb >= 0.8 * cost.cycles
        done += 1
    assert tight >= done // 2  # the bound is useful for pruning, not just valid


@pytest.mark.parametrize("shape", [(1, 40, 33, (14, 14), 1, 2, 0, 1), (1, 3, 20, (29, 29), 7, 2, 3, 1)])
def test_search_matches_brute_force(shape):
    """The bound-pruned search finds the fastest plan of its whole space (every candidate
    tile under every output-loop order, priced exactly)."""
    from parconv.gemmini.tiling import _orders, candidate_tiles

    spec = _spec(shape)
    plan, cost = parconv_plan(spec, SMALL)
    best = min(evaluate(spec, Plan(tuple(int(v) for v in t), o, "parconv"), SMALL).cycles
               for t in candidate_tiles(spec, SMALL) for o in _orders(spec, tuple(t)))
    assert cost.cycles <= best * 1.005
    assert cost == evaluate(spec, plan, SMALL)


def test_split_kernel_plan_bit_exact():
    """A conv1-like 7×7/2 layer on a small build: the search splits the kernel rows and
    uses a non-library order; the simulator runs that plan bit-exactly and counts what
    the model prices."""
    spec = _spec((1, 3, 20, (29, 29), 7, 2, 3, 1))
    plan, cost = parconv_plan(spec, SMALL)
    assert plan.tile[4] < spec.R and plan.order[:4] != ("b", "h", "w", "k")
    x, w = random_operands(spec, seed=3)
    res = simulate(spec, x, w, plan, SMALL, scale=0.01, relu=True)
    np.testing.assert_array_equal(res.output, reference_output(spec, x, w, scale=0.01, relu=True))
    assert (res.cycles, res.dram_bytes) == (cost.cycles, cost.dram_bytes)
    assert cost.cycles <= evaluate(spec, vendor_plan(spec, SMALL), SMALL).cycles
