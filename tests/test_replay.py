"""The replay (explicit fast memory, counts every load and store) is the ground truth:
the exact traffic formula must equal it, its peak must equal the working set, it must
refuse a tiling that does not fit, and its schedule must compute the convolution."""

from __future__ import annotations

import random

import numpy as np
import pytest

from parconv.dtypes import PRESETS
from parconv.reference import conv2d_reference, random_operands
from parconv.replay import replay_traffic_bits
from parconv.spec import ConvSpec
from parconv.tiling import (
    DIMS,
    ORDERS,
    extents,
    footprint_bits,
    tiling_traffic_bits,
    traffic_breakdown,
)

BIG = 1 << 30


def _random_spec(rng: random.Random) -> ConvSpec:
    while True:
        try:
            return ConvSpec(
                rng.randint(1, 2), rng.randint(1, 3), rng.randint(1, 3),
                (rng.randint(2, 8), rng.randint(2, 8)),
                (rng.randint(1, 3), rng.randint(1, 3)),
                (rng.randint(1, 3), rng.randint(1, 3)),
                (rng.randint(0, 2), rng.randint(0, 2)),
                (rng.randint(1, 2), rng.randint(1, 2)),
                PRESETS[rng.choice(["int8", "fp32", "bf16", "fp16"])])
        except ValueError:
            continue  # empty output: draw again


def _random_case(rng: random.Random):
    spec = _random_spec(rng)
    ext = extents(spec)
    tile = {d: rng.randint(1, ext[d]) for d in DIMS}
    order = rng.choice(list(ORDERS)) if rng.random() < 0.5 else "".join(rng.sample(DIMS, 7))
    return spec, tile, order


def test_formula_equals_replay_random_layers():
    rng = random.Random(20240611)
    n_checked = n_partials = n_overlap = 0
    for _ in range(400):
        spec, tile, order = _random_case(rng)
        rep = replay_traffic_bits(spec, tile, order, BIG)
        parts = traffic_breakdown(spec, tile, order)
        assert parts == rep.bits, (spec.describe(), tile, order)
        assert tiling_traffic_bits(spec, tile, order) == rep.total_bits
        n_checked += 1
        n_partials += rep.partial_stores > 0
        # input loaded less than (tiles visited) x footprint: halo reuse was exercised
        n_overlap += rep.loads["input"] < rep.tiles * footprint_bits(spec, tile)["input"] // spec.precision.p_input
    # the sample must exercise partial sums and overlapping input blocks
    assert n_partials > 50 and n_overlap > 50 and n_checked == 400


@pytest.mark.parametrize("stride,dilation,padding", [(1, 1, 0), (2, 1, 1), (3, 1, 0), (1, 2, 2), (3, 2, 1)])
def test_formula_equals_replay_every_order_and_edges(stride, dilation, padding):
    # uneven extents everywhere: every loop has an edge tile
    spec = ConvSpec(3, 3, 5, (9, 8), (3, 2), stride, padding, dilation, PRESETS["int8"])
    tile = {"b": 2, "k": 2, "c": 2, "h": 2, "w": 3, "r": 2, "s": 1}
    for t in (tile, dict(tile, c=3, h=1), dict(tile, b=3, r=3)):
        t = {d: min(v, extents(spec)[d]) for d, v in t.items()}
        for order in list(ORDERS) + ["srhwbkc", "hkbwscr"]:
            rep = replay_traffic_bits(spec, t, order, BIG)
            assert tiling_traffic_bits(spec, t, order) == rep.total_bits, (t, order)


def test_output_traffic_counts_partial_round_trips():
    # weight-stationary: the reduction loops are outside b,h,w, so every output is
    # stored n_crs times (n_crs - 1 partial) and reloaded n_crs - 1 times
    spec = ConvSpec(1, 4, 2, (5, 5), (3, 3), padding=1, precision=PRESETS["int8"])
    tile = {"b": 1, "k": 2, "c": 2, "h": 1, "w": 5, "r": 3, "s": 1}  # n_c = 2, n_s = 3
    rep = replay_traffic_bits(spec, tile, "weight-stationary", BIG)
    n_out = spec.output_elems
    # with a single b,h,w tile the output block never leaves: no round trips at all
    still = replay_traffic_bits(spec, dict(tile, h=5), "weight-stationary", BIG)
    assert still.stores["output"] == n_out and still.loads["output"] == 0
    assert rep.stores["output"] == 6 * n_out
    assert rep.partial_stores == 5 * n_out
    assert rep.loads["output"] == 5 * n_out
    assert rep.bits["output"] == 32 * 11 * n_out  # int8 preset: int32 partials and finals
    # filter: each weight exactly once
    assert rep.loads["filter"] == spec.filter_elems
    # fp16 preset: partial sums travel in float32, final values leave as float16
    half = replay_traffic_bits(spec.with_precision(PRESETS["fp16"]), tile, "weight-stationary", BIG)
    assert half.bits["output"] == (32 * 10 + 16) * n_out


@pytest.mark.parametrize("seed", range(6))
def test_replay_schedule_computes_the_convolution(seed):
    rng = random.Random(seed)
    spec, tile, order = _random_case(rng)
    spec = spec.with_precision(PRESETS["int8"])
    rep = replay_traffic_bits(spec, tile, order, BIG, compute=True, seed=seed)
    x, w = random_operands(spec, seed)
    ref = conv2d_reference(x, w, spec.stride, spec.padding, spec.dilation, "int64")
    np.testing.assert_array_equal(rep.output, ref)


def test_peak_is_working_set_and_capacity_enforced():
    rng = random.Random(7)
    for _ in range(40):
        spec, tile, order = _random_case(rng)
        need_bits = sum(footprint_bits(spec, tile).values())
        need = -(-need_bits // 8)
        rep = replay_traffic_bits(spec, tile, order, need)
        assert rep.peak_bits == need_bits
        with pytest.raises(ValueError, match="does not fit"):
            replay_traffic_bits(spec, tile, order, need - 1)


def test_replay_rejects_bad_tiles():
    spec = ConvSpec(1, 2, 2, (4, 4), (3, 3), precision=PRESETS["int8"])
    good = dict.fromkeys(DIMS, 1)
    with pytest.raises(ValueError, match="tile\\['h'\\]"):
        replay_traffic_bits(spec, dict(good, h=5), "output-stationary", BIG)
    with pytest.raises(ValueError, match="order"):
        replay_traffic_bits(spec, good, "bkchwr", BIG)
