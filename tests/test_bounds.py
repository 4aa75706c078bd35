"""Lower bounds: V*(Z) against brute force and random footprints, the sequential bound
against explicitly counted schedules, the parallel bounds against the grid algorithm's
exact per-rank volumes and against the matmul bounds of Al Daas et al. (SPAA 2022), and
the ``parconv bound`` CLI."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from test_inequalities import TINY, Space, collect, make

from parconv.bounds import (
    Bound,
    _caps_bits,
    _min_sum_for_product,
    _waterfill_at,
    compulsory_bits,
    max_iterations,
    min_footprint_cost,
    owned_bits,
    parallel_memory_dependent_bound,
    parallel_memory_independent_bound,
    sequential_bound,
    traffic_average_bound,
    vstar,
    waterfill,
)
from parconv.cli import main
from parconv.dtypes import PRESETS
from parconv.inequalities import I1, I1W, counts, inequalities, weighted_work
from parconv.layers import layer
from parconv.planner.partition import Grid, layout, rank_memory_bytes, rank_volume
from parconv.spec import ConvSpec

LAYERS = ["resnet50/conv1", "resnet50/layer1.0.conv2", "resnet50/layer2.0.conv2",
          "resnet50/layer3.0.downsample.0", "resnet50/layer4.1.conv2"]


def _weights(spec: ConvSpec) -> np.ndarray:
    c = counts(spec)
    return np.array([c.p_in, c.p_filter, c.p_out])


# ---------------------------------------------------------------------------- V*(Z)
@pytest.mark.parametrize("idx,prec", [(0, "int8"), (2, "fp16"), (3, "fp32"), (4, "int8")])
def test_vstar_dominates_every_brute_force_set(idx, prec):
    """|V'| <= V*(p·footprint) for every enumerated set (checked on the Pareto frontier:
    V* is monotone, so the frontier points are the hardest)."""
    spec = make(TINY[idx], prec)
    rows = collect(spec, seed=idx)
    z = rows[:, 1:] @ _weights(spec)
    order = np.lexsort((-rows[:, 0], z))
    best = -1.0
    checked = 0
    for n, zz in zip(rows[order, 0], z[order]):
        if n > best:
            best = n
            assert n <= vstar(spec, float(zz)) * (1 + 1e-12), (n, zz)
            checked += 1
    assert checked >= 3


def _random_layers(n: int, seed: int = 23) -> list[ConvSpec]:
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        try:
            out.append(ConvSpec(int(rng.integers(1, 9)), int(rng.integers(1, 300)),
                                int(rng.integers(1, 300)), tuple(rng.integers(4, 60, 2)),
                                tuple(rng.integers(1, 8, 2)), tuple(rng.integers(1, 4, 2)),
                                tuple(rng.integers(0, 4, 2)), tuple(rng.integers(1, 3, 2)),
                                PRESETS[str(rng.choice(list(PRESETS)))]))
        except ValueError:
            continue
    return out


@pytest.mark.parametrize("spec", [layer(n, 4, PRESETS[p]) for n in LAYERS for p in ("int8", "fp16")]
                         + _random_layers(8), ids=lambda s: s.describe().replace(" ", "_"))
def test_min_cost_is_a_lower_bound_on_random_footprints(spec):
    """For any footprint (I, F, O), the solver's minimum cost of admitting
    max_iterations(I, F, O) iterations is <= p·(I, F, O): the solver never over-estimates
    the cost, i.e. never under-estimates V*."""
    c = counts(spec)
    rng = np.random.default_rng(7)
    n = 1500
    lim = np.array([c.in_used, c.filter_used, c.out_used], dtype=float)
    fp = np.exp(rng.uniform(0, 1, size=(n, 3)) * np.log(lim))
    # also points right next to the solver's own optimum
    vs = np.geomspace(10, c.g_real, 30)
    from parconv.bounds import _solve
    _, i, f, o = _solve(c, vs)
    near = np.stack([i, f, o], axis=1)[:, None, :] * np.exp(rng.normal(0, 0.02, size=(30, 40, 3)))
    fp = np.concatenate([fp, near.reshape(-1, 3)])
    fp = np.minimum(fp, lim)
    v = np.minimum.reduce([np.asarray(a) for a in inequalities(spec, *fp.T).values()])
    z = fp @ _weights(spec)
    cost = min_footprint_cost(spec, v)
    assert np.all(cost <= z * (1 + 1e-12))


def test_min_cost_is_accurate_against_grid_search():
    """Not only valid but (nearly) exact: a dense search over (I, F), with the least O
    that (I1)-(I3) allow, never finds a cheaper feasible footprint, and finds one within
    1 %."""
    spec = ConvSpec(2, 8, 16, (12, 12), (3, 3), (1, 1), (1, 1), precision=PRESETS["int8"])
    c = counts(spec)
    i, f = np.meshgrid(np.geomspace(1, c.in_used, 700), np.geomspace(1, c.filter_used, 700),
                       indexing="ij")
    for target in np.geomspace(50, c.g_real * 0.9, 12):
        o = np.maximum.reduce([target**2 / (c.rho * i * f), np.full_like(i, target / c.crs),
                               target / f, target / i])
        ok = (o <= c.out_used) & (i * c.K * c.rho >= target) & (f * c.bhw >= target) & (i * f >= target)
        o = o * (1 + 1e-12)
        v = np.minimum.reduce([np.asarray(a) for a in inequalities(spec, i, f, o).values()])
        assert np.all(v[ok] >= target * (1 - 1e-9))
        grid_min = (c.p_in * i + c.p_filter * f + c.p_out * o)[ok].min()
        cost = min_footprint_cost(spec, target)
        assert cost <= grid_min * (1 + 1e-12)
        assert cost >= grid_min * 0.99


@pytest.mark.parametrize("name", LAYERS[:3])
def test_vstar_monotone_and_consistent(name):
    spec = layer(name, 2, PRESETS["int8"])
    c = counts(spec)
    zs = np.geomspace(100, 2 * compulsory_bits(spec), 25)
    vs = [vstar(spec, float(z)) for z in zs]
    assert all(b >= a for a, b in zip(vs, vs[1:]))
    for z, v in zip(zs, vs):
        if v < c.g_real:
            assert min_footprint_cost(spec, v) > z            # returned v is an over-estimate
            assert min_footprint_cost(spec, v * (1 - 1e-6)) <= z  # ... but a tight one
        assert v <= max_iterations(spec, *(np.full(3, z) / _weights(spec))) * (1 + 1e-9)
    assert vs[-1] == c.g_real
    assert vstar(spec, 0.0) == 0.0


# ---------------------------------------------------------------------- sequential
def _axis_footprints(ax) -> dict[tuple[int, int], tuple[int, int]]:
    """For every output range [h0, h1): (distinct real input indices, taps used)."""
    out = {}
    for h0 in range(ax.out_size):
        for h1 in range(h0 + 1, ax.out_size + 1):
            x = ax.input_index(np.arange(h0, h1)[:, None], np.arange(ax.kernel)[None, :])
            real = (x >= 0) & (x < ax.in_size)
            out[h0, h1] = (len(np.unique(x[real])), int(real.any(axis=0).sum()))
    return out


def explicit_schedules(spec: ConvSpec, sizes=None):
    """Box tilings (r, s untiled) in two tile-loop orders, counted explicitly tile by tile
    (only the elements a tile's real iterations read are loaded; partial sums travel in
    the accumulator type). Both keep one accumulation chain per output.

    * output-stationary: keep the output tile, stream (c-tile) input and filter tiles,
      store the output tile once;
    * weight-stationary: keep a (k, c) filter tile (all used taps), stream (b, h, w)
      input tiles, load the partial output tile (except for the first c-tile) and store
      it back.

    Yields (order, tile sizes, fast memory bytes needed, traffic bits)."""
    p = spec.precision
    pi, pf, po = p.p_input, p.p_filter, p.p_accum
    dims = (spec.B, spec.K, spec.C, spec.H, spec.W)
    fh, fw = (_axis_footprints(ax) for ax in spec.axes)
    taps = fh[0, spec.H][1] * fw[0, spec.W][1]
    sizes = sizes or [range(1, n + 1) for n in dims]
    for tiles in itertools.product(*sizes):
        parts = [[(lo, min(lo + t, n)) for lo in range(0, n, t)] for n, t in zip(dims, tiles)]
        # output-stationary
        traffic, peak = po * spec.output_elems, 0
        for (b0, b1), (k0, k1), (h0, h1), (w0, w1) in itertools.product(*parts[:2], *parts[3:]):
            (xs, rs), (ys, ss) = fh[h0, h1], fw[w0, w1]
            otile = (b1 - b0) * (k1 - k0) * (h1 - h0) * (w1 - w0)
            for c0, c1 in parts[2]:
                i = (b1 - b0) * (c1 - c0) * xs * ys
                f = (k1 - k0) * (c1 - c0) * rs * ss
                traffic += pi * i + pf * f
                peak = max(peak, pi * i + pf * f + po * otile)
        yield "output-stationary", tiles, math.ceil(peak / 8), traffic
        # weight-stationary
        traffic, peak = 0, 0
        for (k0, k1), (ci, (c0, c1)) in itertools.product(parts[1], enumerate(parts[2])):
            f = (k1 - k0) * (c1 - c0) * taps
            traffic += pf * f
            for (b0, b1), (h0, h1), (w0, w1) in itertools.product(parts[0], *parts[3:]):
                (xs, _), (ys, _) = fh[h0, h1], fw[w0, w1]
                i = (b1 - b0) * (c1 - c0) * xs * ys
                otile = (b1 - b0) * (k1 - k0) * (h1 - h0) * (w1 - w0)
                traffic += pi * i + po * otile * (2 if ci else 1)
                peak = max(peak, pi * i + pf * f + po * otile)
        yield "weight-stationary", tiles, math.ceil(peak / 8), traffic


def test_tile_footprints_match_brute_force():
    """The per-tile counts used by the explicit schedules equal a brute-force count."""
    for t in TINY[:4]:
        spec = make(t)
        space = Space(spec)
        fh, fw = (_axis_footprints(ax) for ax in spec.axes)
        for (h0, h1), (w0, w1) in itertools.product(fh, fw):
            box = (slice(None),) * 3 + (slice(h0, h1), slice(w0, w1), slice(None), slice(None))
            n, i, f, _ = space.measure_box(box)
            if n:
                assert i == spec.B * spec.C * fh[h0, h1][0] * fw[w0, w1][0]
                assert f == spec.K * spec.C * fh[h0, h1][1] * fw[w0, w1][1]


SCHEDULE_CASES = [
    (make(TINY[0], "int8"), None),
    (make(TINY[3], "fp16"), None),
    (make(TINY[5], "fp32"), None),
    (ConvSpec(1, 8, 8, (6, 6), 3, 1, 1, precision=PRESETS["int8"]),
     [[1], [1, 2, 8], [1, 2, 8], [1, 2, 6], [1, 3, 6]]),
    (ConvSpec(1, 16, 16, (9, 9), 3, 2, 1, (1, 1), PRESETS["int8"]),
     [[1], [1, 4, 16], [1, 4, 16], [1, 5], [1, 5]]),
    (ConvSpec(1, 4, 8, (9, 8), (3, 2), 1, 0, (2, 1), PRESETS["bf16"]),
     [[1], [1, 2, 8], [1, 4], [1, 2, 5], [1, 7]]),
]


@pytest.mark.parametrize("case", range(len(SCHEDULE_CASES)))
def test_sequential_bound_never_beaten_by_explicit_schedules(case):
    """Neither the general bound nor the single-accumulation-chain bound (footprint
    M + T) is ever above an explicitly counted schedule (both orders keep one chain)."""
    spec, sizes = SCHEDULE_CASES[case]
    cache: dict[int, tuple[Bound, Bound]] = {}
    kinds = set()
    for order, tiles, mem, traffic in explicit_schedules(spec, sizes):
        if mem not in cache:
            cache[mem] = (sequential_bound(spec, mem), sequential_bound(spec, mem, single_chain=True))
        b, bc = cache[mem]
        assert b.bits <= bc.bits + 1e-6 * bc.bits
        assert bc.bits <= traffic, (order, tiles, mem, traffic, bc)
        kinds.add(b.binding == "compulsory")
    if sizes is not None:   # the larger problems exercise the segment (non-compulsory) bound
        assert False in kinds


def test_sequential_bound_everything_fits_is_compulsory():
    spec = make(TINY[0], "int8")
    c = counts(spec)
    # load every used input and filter once, compute, store every output once
    schedule = c.p_in * c.in_used + c.p_filter * c.filter_used + 32 * spec.output_elems
    mem = math.ceil(schedule / 8)
    b = sequential_bound(spec, mem)
    assert b.binding == "compulsory" and b.bits == compulsory_bits(spec) <= schedule
    assert not b.vacuous and b.bytes == b.bits / 8


def test_compulsory_counts_used_data_only():
    # stride 3 > kernel 2 skips input pixels; large padding makes taps read only zeros
    spec = ConvSpec(1, 2, 3, (8, 6), (2, 2), (3, 3), (1, 0), (1, 2), PRESETS["fp16"])
    space = Space(spec)
    _, i, f, _ = space.measure(np.ones(space.shape, dtype=bool))
    assert compulsory_bits(spec) == 16 * i + 16 * f + 16 * spec.output_elems  # fp16 output


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("prec", ["int8", "fp32"])
def test_sequential_bound_properties(name, prec):
    spec = layer(name, 8, PRESETS[prec])
    prev = math.inf
    for mem in (16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20):
        b = sequential_bound(spec, mem)
        assert b.bits >= compulsory_bits(spec)
        assert b.bits <= prev + 1e-6                      # more memory never raises it
        prev = b.bits
        # the numeric V* is never weaker than the (I1)-only closed form
        assert b.bits >= b.details["closed_form_I1_bits"] - 1e-6 * b.bits
        if b.binding != "compulsory":
            assert b.details["T_bits"] > 0 and b.details["vstar"] <= counts(spec).g_real


def test_stride_class_bound_tightens_strided_layers():
    """(I1w) lifts the bound of 3x3 stride-2 layers by ~29% (classes of multiplicity 4, 2,
    2, 1 instead of 4 everywhere) and never changes stride-1 layers."""
    for name in ("resnet50/layer3.0.conv2", "resnet50/layer4.0.conv2"):
        spec = layer(name, 32, PRESETS["fp32"])
        b = sequential_bound(spec, 64 << 10)
        assert b.binding == I1W and b.bits == b.details["stride_class_bits"]
        assert b.bits > 1.25 * b.details["segment_bits"]
        gw = weighted_work(spec)
        # per axis: taps {0, 2} at multiplicity 2, tap {1} at 1 -> H(sqrt(2) + 1) (edges aside)
        assert gw == pytest.approx(counts(spec).g_real / 2 * (1 + math.sqrt(2)) ** 2 / 4.5, rel=0.05)
    spec = layer("resnet50/layer3.1.conv2", 32, PRESETS["fp32"])
    b = sequential_bound(spec, 64 << 10)
    assert b.details["stride_class_bits"] <= b.details["segment_bits"] * (1 + 1e-6)


def test_single_chain_bound_reaches_the_matmul_constant():
    """1x1, fp32: with footprint M + T the bound's leading term is 2mnk/sqrt(M) words, the
    tight matmul constant (Smith, Lowery, Langou, van de Geijn 2019); the general bound
    (footprint 2M + T) has sqrt(2)."""
    spec = ConvSpec(8, 512, 1024, (32, 32), 1, precision=PRESETS["fp32"])
    g = spec.macs
    for mem in (16 << 10, 64 << 10, 256 << 10):
        words = mem / 4
        chain = sequential_bound(spec, mem, single_chain=True)
        general = sequential_bound(spec, mem)
        lead = g / math.sqrt(words)
        # (I1)-only values at T = 2M and T = 4M (in words; p_max = one word)
        at_2m = (2 * words - 1) * (g / words**1.5 - 1)
        at_4m = (4 * words - 1) * (g / (2 * words) ** 1.5 - 1)
        seg_chain, seg = chain.details["segment_bits"] / 32, general.details["segment_bits"] / 32
        assert at_2m * (1 - 1e-9) <= seg_chain <= 2 * lead
        assert at_4m * (1 - 1e-9) <= seg <= math.sqrt(2) * lead
        assert chain.bits >= general.bits
        assert at_2m > 0.95 * 2 * lead and at_4m > 0.95 * math.sqrt(2) * lead  # leading terms
        assert chain.details["segment_footprint"].startswith("M + T")


def test_sequential_bound_rejects_bad_memory():
    spec = make(TINY[0])
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="memory"):
            sequential_bound(spec, bad)


# ------------------------------------------------------------------------ parallel
def al_daas(m: int, n: int, k: int, procs: int) -> tuple[float, str]:
    """Memory-independent matmul bound of Al Daas, Ballard, Grigori, Kumar, Rouse (SPAA
    2022), Theorem 3, for an m x k times k x n product (words, one copy of the data
    load-balanced at the start and the end), with its regime."""
    m, n, k = sorted((m, n, k), reverse=True)
    if procs <= m / n:
        d, regime = m * k / procs + n * k + m * n / procs, "1D"
    elif procs <= m * n / k**2:
        d, regime = 2 * math.sqrt(m * n * k * k / procs) + m * n / procs, "2D"
    else:
        d, regime = 3 * (m * n * k / procs) ** (2 / 3), "3D"
    return d - (m * n + m * k + n * k) / procs, regime


@pytest.mark.parametrize("K,C,B,HW,P,regime", [
    (512, 16, 1, 4, 8, "1D"), (8, 8, 4, 32, 16, "1D"), (1024, 32, 1, 2, 16, "1D"),
    (16, 256, 1, 16, 16, "2D"), (1024, 32, 1, 2, 64, "2D"), (16, 256, 1, 16, 256, "2D"),
    (64, 64, 1, 8, 64, "3D"), (64, 64, 1, 8, 8, "3D"), (16, 256, 1, 16, 1024, "3D"),
])
def test_1x1_reproduces_matmul_bounds(K, C, B, HW, P, regime):
    """1x1 convolution, equal precisions: m = K, n = B*H*W, k = C."""
    spec = ConvSpec(B, C, K, (HW, HW), 1, precision=PRESETS["fp32"])
    want, want_regime = al_daas(K, B * HW * HW, C, P)
    assert want_regime == regime
    b = parallel_memory_independent_bound(spec, P)
    # Al Daas et al. bound what the busiest processor must receive of A, B and send of
    # C: the lemma. Their algorithms meet it, and with symmetric collectives each of
    # their processors sends what it receives, so received + sent is 2W: the averaging
    # bound on received + sent sits between W and 2W.
    assert b.details["lemma_bits"] / 32 == pytest.approx(want, rel=1e-9)
    assert want * (1 - 1e-9) <= b.bits / 32 <= 2 * want * (1 + 1e-12)
    assert b.details["lemma_binding"] == regime and b.details["regime"] == regime
    assert b.details["full_solver_bits"] <= b.details["waterfill_bits"] * (1 + 1e-6)


def test_waterfill_closed_form():
    spec = layer("resnet50/layer3.1.conv2", 32, PRESETS["int8"])
    c = counts(spec)
    for P in (2, 8, 64, 512, 4096, 65536):
        wf = waterfill(spec, P)
        g = c.g_real / P
        prod = wf["y_I"] * wf["y_F"] * wf["y_O"]
        assert prod == pytest.approx(c.p_in * c.p_filter * c.p_out * g * g / c.rho, rel=1e-9)
        for j in "IFO":
            assert wf[f"y_{j}"] >= wf[f"c_{j}"] * (1 - 1e-12)
            assert wf[f"y_{j}"] >= wf["lambda"] * (1 - 1e-12)
        if wf["regime"] == "3D":
            assert wf["total"] == pytest.approx(3 * prod ** (1 / 3), rel=1e-9)
        b = parallel_memory_independent_bound(spec, P)
        assert b.details["lemma_bits"] == pytest.approx(
            max(wf["total"], b.details["full_solver_bits"]) - owned_bits(spec, P), rel=1e-12)
        assert b.bits == max(b.details["lemma_bits"], b.details["average_bits"])


def _grids(procs: int, spec: ConvSpec):
    for dims in itertools.product(*[[d for d in range(1, procs + 1) if procs % d == 0]] * 5):
        if math.prod(dims) == procs:
            g = Grid(*dims)
            if all(getattr(g, a) <= n for a, n in zip("bkchw", (spec.B, spec.K, spec.C, spec.H, spec.W))):
                yield g


def _rank_facts(spec: ConvSpec, grid: Grid, rank: int):
    """(real iterations, owned bits, bits it must move by the lower-bound argument:
    inputs/filters received + output contributions sent)."""
    me = layout(spec, grid, rank)
    ah, aw = spec.axes
    def pairs(ax, rng):
        h = np.arange(*rng)[:, None]
        x = ax.input_index(h, np.arange(ax.kernel)[None, :])
        return int(((x >= 0) & (x < ax.in_size)).sum())
    ln = lambda r: r[1] - r[0]  # noqa: E731
    iters = (ln(me.batch) * ln(me.out_channels) * ln(me.in_channels)
             * pairs(ah, me.out_rows) * pairs(aw, me.out_cols))
    c = counts(spec)
    owned = (c.p_in * math.prod(me.input_owned_shape) + c.p_filter * math.prod(me.filter_owned_shape)
             + c.p_out * math.prod(me.output_owned_shape))
    vol = rank_volume(spec, grid, rank)
    moved = 8 * (vol["input_allgather"][0] + vol["input_halo"][0] + vol["filter_allgather"][0]
                 + vol["output_reduce_scatter"][1])
    return iters, owned, moved, 8 * sum(r + s for r, s in vol.values())


@pytest.mark.parametrize("procs", [3, 4, 6])
@pytest.mark.parametrize("prec", ["int8", "fp32"])
def test_every_rank_of_every_grid_respects_the_footprint_bound(procs, prec):
    """The per-processor argument behind the memory-independent bound, checked against the
    grid algorithm's exact volumes (uneven blocks, halos, padding): a rank performing v
    real iterations moves at least min_cost(v) - (bits it owns)."""
    spec = ConvSpec(2, 6, 6, (7, 6), (3, 2), (1, 2), (1, 1), (1, 1), PRESETS[prec])
    space, c = Space(spec), counts(spec)
    caps = _caps_bits(c)
    n = 0
    for grid in _grids(procs, spec):
        for rank in range(procs):
            iters, owned, moved, _ = _rank_facts(spec, grid, rank)
            assert moved >= min_footprint_cost(spec, iters) - owned - 1e-6, (grid, rank)
            me = layout(spec, grid, rank)
            box = tuple(slice(*r) for r in (me.batch, me.out_channels, me.in_channels,
                                            me.out_rows, me.out_cols)) + (slice(None),) * 2
            work = float(space.wt[box].sum())               # (I1w) weighted work of the rank
            need = _min_sum_for_product(c.p_in * c.p_filter * c.p_out * work**2, caps)
            assert moved >= need - owned - 1e-6, (grid, rank)
            n += 1
    assert n >= 3 * procs


def _max_owned(spec: ConvSpec, grid: Grid) -> tuple[int, int, int]:
    ls = [layout(spec, grid, r) for r in range(grid.size)]
    return (max(math.prod(m.input_owned_shape) for m in ls),
            max(math.prod(m.filter_owned_shape) for m in ls),
            max(math.prod(m.output_owned_shape) for m in ls))


@pytest.mark.parametrize("procs,prec,stride", [(2, "fp32", 1), (4, "int8", 1), (8, "int8", 1),
                                                (2, "int8", 2), (4, "int8", 2), (8, "fp32", 2)])
def test_parallel_bounds_below_grid_algorithm(procs, prec, stride):
    """On every grid whose layout satisfies the bound's assumption (no rank owns more
    than ceil(|A|/P) of an array), some rank moves at least the memory-independent
    bound, and some rank (send + receive) at least the memory-dependent bound for a
    memory as large as the largest rank's."""
    spec = ConvSpec(2 * stride, 16, 16, (8, 8), (3, 3), stride, (1, 1), precision=PRESETS[prec])
    ind = parallel_memory_independent_bound(spec, procs)
    assert not ind.vacuous
    # strided: the class bound binds the lemma
    assert (ind.details["lemma_binding"].startswith(I1W)) == (stride == 2)
    share = [-(-n // procs) for n in (spec.input_elems, spec.filter_elems, spec.output_elems)]
    checked = 0
    for grid in _grids(procs, spec):
        if any(a > b for a, b in zip(_max_owned(spec, grid), share)):
            continue
        facts = [_rank_facts(spec, grid, r) for r in range(procs)]
        assert max(f[0] for f in facts) >= counts(spec).g_real / procs
        # the theorems bound the maximum over processors (the busiest in iterations, or
        # in (I1w)-weighted work, which may be another rank)
        assert max(f[2] for f in facts) >= ind.details["lemma_bits"] - 1e-6, grid
        assert max(f[3] for f in facts) >= ind.bits - 1e-6, grid     # received + sent
        mem = max(rank_memory_bytes(spec, grid, r) for r in range(procs))
        dep = parallel_memory_dependent_bound(spec, procs, mem)
        assert max(f[3] for f in facts) >= dep.bits - 1e-6, grid
        checked += 1
    assert checked >= 4


def test_memory_dependent_bound_scales_and_reports_vacuous():
    spec = layer("resnet50/layer3.1.conv2", 32, PRESETS["fp32"])
    seq = sequential_bound(spec, 64 << 10)
    one = parallel_memory_dependent_bound(spec, 1, 64 << 10)
    assert one.bits == pytest.approx(seq.details["segment_bits"], rel=1e-6)
    b8, b64 = (parallel_memory_dependent_bound(spec, p, 64 << 10) for p in (8, 64))
    assert b8.bits > b64.bits > 0 and not b8.vacuous and b8.binding.startswith(I1)
    huge = parallel_memory_dependent_bound(spec, 64, 1 << 30)
    assert huge.vacuous and huge.bits <= 0


def test_memory_independent_vacuous_when_owned_share_suffices():
    # conv1 at P = 8: the max multiplicity rho = 16 exceeds the average 12.25, so the
    # (valid) bound falls below the owned share: reported as vacuous, never negative work
    spec = layer("resnet50/conv1", 32, PRESETS["fp32"])
    b = parallel_memory_independent_bound(spec, 8)
    assert b.vacuous and b.bits <= 0
    assert b.details["owned_bits"] > 0
    assert not parallel_memory_independent_bound(spec, 4096).vacuous


def test_parallel_bounds_reject_bad_procs():
    spec = make(TINY[0])
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="procs"):
            parallel_memory_independent_bound(spec, bad)
        with pytest.raises(ValueError, match="procs"):
            parallel_memory_dependent_bound(spec, bad, 1024)


# ----------------------------------------------------------------------------- CLI
def test_cli_json(tmp_path):
    out = tmp_path / "b.json"
    rc = main(["bound", "--layer", "resnet50/layer2.0.conv2", "--batch", "8", "--dtype", "int8",
               "--memory", "64KiB", "--procs", "64", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    spec = layer("resnet50/layer2.0.conv2", 8, PRESETS["int8"])
    assert d["layer"] == spec.to_dict() and d["memory_bytes"] == 65536 and d["procs"] == 64
    assert d["sequential_bytes"] == sequential_bound(spec, 65536).bytes
    assert d["sequential_single_chain_bytes"] == sequential_bound(spec, 65536, single_chain=True).bytes
    assert d["parallel_memory_independent_bytes"] == parallel_memory_independent_bound(spec, 64).bytes
    assert d["parallel_memory_dependent_bytes"] == parallel_memory_dependent_bound(spec, 64, 65536).bytes
    for k in ("sequential", "parallel_memory_dependent", "parallel_memory_independent"):
        assert isinstance(d[f"{k}_vacuous"], bool) and isinstance(d["binding"][k], str)


def test_cli_defaults_and_table(capsys):
    assert main(["bound", "--in-channels", "4", "--out-channels", "8", "--input", "9,7",
                 "--kernel", "3", "--stride", "2,1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["memory_bytes"] == 256 * 1024 and d["procs"] == 1
    assert "parallel_memory_independent_bytes" not in d and "sequential_bytes" in d
    assert main(["bound", "--layer", "resnet50/conv1", "--batch", "32", "--procs", "8"]) == 0
    text = capsys.readouterr().out
    assert "sequential" in text and "memory-independent" in text and "vacuous" in text
    assert main(["bound", "--procs", "0"]) == 2


def test_cli_memory_dependent_bound_is_not_reported_as_network_bound_when_data_exceeds_memories():
    """With P*M below the data (M read as a cache), the memory-dependent bound counts network
    plus local-memory traffic: the JSON's network key is null, the two-level figure is given,
    and the data-parallel grid's real network bytes are indeed below that figure."""
    from parconv.planner.partition import Grid, rank_volume

    args = ["bound", "--layer", "resnet50/layer3.1.conv2", "--batch", "32", "--dtype", "fp32",
            "--memory", "256KiB", "--procs", "2", "--json"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    d = json.loads(buf.getvalue())
    spec = layer("resnet50/layer3.1.conv2", 32, PRESETS["fp32"])
    dep = parallel_memory_dependent_bound(spec, 2, 256 * 1024)
    assert d["parallel_memory_dependent_network_only"] is False
    assert d["parallel_memory_dependent_bytes"] is None
    assert d["parallel_memory_dependent_two_level_bytes"] == dep.bytes
    vol = rank_volume(spec, Grid(2, 1, 1, 1, 1), 0)
    network = sum(r + s for r, s in vol.values())
    assert network < dep.bytes  # why it must not be read as a network bound
    # With memories that hold the data, the same key is the network bound.
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args[:-5] + ["--memory", "64MiB", "--procs", "2", "--json"]) == 0
    d = json.loads(buf.getvalue())
    assert d["parallel_memory_dependent_network_only"] is True
    assert d["parallel_memory_dependent_bytes"] == parallel_memory_dependent_bound(spec, 2, 64 << 20).bytes


# -- the averaging bound (docs/theory.md §5, "Sharper: every received bit is sent") ------

def test_waterfill_footprint_per_iteration_never_rises():
    """``h(g)/g`` is non-increasing (the averaging bound's premise): on real layers, from
    a hundredth of one processor's share to the whole layer."""
    for name in LAYERS:
        for prec in ("int8", "fp32"):
            c = counts(layer(name, 8, PRESETS[prec]))
            gs = c.g_real * np.geomspace(1e-6, 1.0, 400)
            per = np.array([_waterfill_at(c, g)["total"] / g for g in gs])
            assert np.all(np.diff(per) <= per[1:] * 1e-12), name


@pytest.mark.parametrize("procs", [2, 3, 8, 64, 4096])
def test_traffic_average_bound_is_the_min_max_over_the_busiest_work(procs):
    """Against a dense scan of g* in [G/P, G]: never above min max(A, C) (a valid lower
    bound) and within the scan's resolution of it (the bisection converged)."""
    for name in LAYERS:
        spec = layer(name, 32, PRESETS["int8"])
        c = counts(spec)
        owned = owned_bits(spec, procs)
        bits, ratio = traffic_average_bound(c, procs, owned)
        g0 = c.g_real / procs
        gs = g0 * np.geomspace(1.0, procs, 20001)
        h = np.array([_waterfill_at(c, g)["total"] for g in gs]) * (1 - 1e-14)
        scan = np.maximum(h - owned, 2 * g0 * h / gs - 2 * owned).min()
        assert bits <= scan + 1e-12 * abs(scan) + 1e-9, (name, procs)
        assert bits >= scan - 1e-3 * abs(scan) - 1e-6, (name, procs)   # scan step 4e-4
        assert 1.0 <= ratio <= procs


@pytest.mark.parametrize("procs,helpers", [(4, 2), (6, 2), (6, 3), (8, 4)])
@pytest.mark.parametrize("prec", ["int8", "fp32"])
def test_averaging_bound_never_above_executions_with_idle_helpers(procs, helpers, prec):
    """Unbalanced executions (the averaging bound's adversary: few processors do all the
    work): a grid of P/k workers runs the layer, each worker's owned blocks are spread
    over itself and k - 1 helpers (every processor owns at most ceil(|A|/P) of each
    array). Helpers send their input/filter shares to their worker and receive their
    output shares from it. The busiest processor's received + sent bits are never below
    the bound."""
    spec = ConvSpec(4, 12, 12, (9, 8), (3, 3), (1, 1), (1, 1), precision=PRESETS[prec])
    bound = parallel_memory_independent_bound(spec, procs)
    assert not bound.vacuous
    share = [-(-n // procs) for n in (spec.input_elems, spec.filter_elems, spec.output_elems)]
    c = counts(spec)
    k, checked = helpers, 0
    for grid in _grids(procs // k, spec):
        lays = [layout(spec, grid, r) for r in range(grid.size)]
        sizes = [(math.prod(m.input_owned_shape), math.prod(m.filter_owned_shape),
                  math.prod(m.output_owned_shape)) for m in lays]
        if any(-(-n // k) > cap for s in sizes for n, cap in zip(s, share)):
            continue                                   # a processor would own too much
        worst = 0.0
        for r, (ni, nf, no) in enumerate(sizes):
            rest = [n - -(-n // k) for n in (ni, nf, no)]    # the helpers' part
            extra = c.p_in * rest[0] + c.p_filter * rest[1] + c.p_out * rest[2]
            worst = max(worst, _rank_facts(spec, grid, r)[3] + extra,
                        c.p_in * (ni // k) + c.p_filter * (nf // k) + c.p_out * (no // k))
        assert bound.bits <= worst, (grid, bound.bits, worst)
        checked += 1
    assert checked >= 2
