"""Brute force: every inequality parconv's bounds use holds for every iteration set we can
enumerate on tiny problems (all sub-boxes of the 7-D iteration space, residue classes,
random subsets, closures of random element sets), for strides 1-3, dilations 1-2 and
padding 0-1; and the tempting sqrt(I*F*O) inequality is caught as false."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest

from parconv.dtypes import PRESETS
from parconv.inequalities import (
    NAMES,
    counts,
    inequalities,
    max_iterations,
    real_iterations,
    stride_classes,
    weighted_work,
)
from parconv.spec import ConvSpec

# (B, C, K, in_size, kernel, stride, padding, dilation): tiny, but covering strides 1-3,
# dilations 1-2, padding 0-1, stride > kernel (skipped pixels) and non-square shapes.
TINY = [
    (1, 2, 2, (5, 4), (3, 2), (1, 2), (1, 0), (1, 1)),
    (2, 1, 2, (6, 3), (2, 2), (2, 1), (0, 1), (1, 1)),
    (1, 2, 1, (7, 5), (3, 2), (1, 1), (1, 0), (2, 2)),
    (1, 1, 2, (8, 6), (2, 2), (3, 3), (1, 0), (1, 2)),
    (2, 2, 1, (4, 4), (2, 3), (1, 1), (0, 1), (1, 1)),
    (1, 2, 2, (7, 3), (3, 1), (2, 1), (1, 0), (2, 1)),
    (1, 1, 1, (1, 6), (1, 3), (1, 1), (0, 0), (1, 1)),
]


def make(t, precision="fp32") -> ConvSpec:
    b, c, k, ins, ker, st, pad, dil = t
    return ConvSpec(b, c, k, ins, ker, st, pad, dil, PRESETS[precision])


class Space:
    """The 7-D iteration space (b, k, c, h, w, r, s) with element indices of each point."""

    def __init__(self, spec: ConvSpec):
        self.spec = spec
        B, K, C, H, W, R, S = spec.B, spec.K, spec.C, spec.H, spec.W, spec.R, spec.S
        self.shape = (B, K, C, H, W, R, S)
        b, k, c, h, w, r, s = np.ix_(*(np.arange(n) for n in self.shape))
        ah, aw = spec.axes
        x, y = ah.input_index(h, r), aw.input_index(w, s)
        ih, iw = spec.in_size
        self.real = np.broadcast_to((x >= 0) & (x < ih) & (y >= 0) & (y < iw), self.shape)
        xi, yi = np.clip(x, 0, ih - 1), np.clip(y, 0, iw - 1)
        self.inp = np.broadcast_to(((b * C + c) * ih + xi) * iw + yi, self.shape)
        self.fil = np.broadcast_to(((k * C + c) * R + r) * S + s, self.shape)
        self.out = np.broadcast_to(((b * K + k) * H + h) * W + w, self.shape)
        self.n_in, self.n_fil, self.n_out = B * C * ih * iw, K * C * R * S, B * K * H * W
        # (I1w) weight of a real iteration: 1/sqrt(rho of its stride class)
        rho_h, rho_w = (np.zeros(ax.stride) for ax in (ah, aw))
        for rho, ax in ((rho_h, ah), (rho_w, aw)):
            for k, (_, m) in stride_classes(ax).items():
                rho[k] = m
        with np.errstate(divide="ignore"):
            wt = 1.0 / np.sqrt(rho_h[xi % ah.stride] * rho_w[yi % aw.stride])
        self.wt = np.broadcast_to(np.where(self.real, wt, 0.0), self.shape)

    def measure(self, mask: np.ndarray) -> tuple[int, int, int, int]:
        """(|V'|, I, F, O) of the real iterations V' of the set ``mask``."""
        sel = mask & self.real
        n = int(sel.sum())
        if n == 0:
            return 0, 0, 0, 0
        distinct = [int(np.count_nonzero(np.bincount(a[sel], minlength=m)))
                    for a, m in ((self.inp, self.n_in), (self.fil, self.n_fil), (self.out, self.n_out))]
        return (n, *distinct)

    def weighted(self, mask: np.ndarray) -> tuple[float, int, int, int]:
        """(sum of (I1w) weights over V', I, F, O)."""
        n, i, f, o = self.measure(mask)
        return float(self.wt[mask & self.real].sum()), i, f, o

    def measure_box(self, box: tuple[slice, ...]) -> tuple[int, int, int, int]:
        sel = self.real[box]
        n = int(sel.sum())
        if n == 0:
            return 0, 0, 0, 0
        return (n, len(np.unique(self.inp[box][sel])), len(np.unique(self.fil[box][sel])),
                len(np.unique(self.out[box][sel])))


def all_boxes(shape):
    ranges = [[slice(lo, hi) for lo in range(n) for hi in range(lo + 1, n + 1)] for n in shape]
    return itertools.product(*ranges)


def residue_sets(space: Space, rng: np.random.Generator, count: int):
    grids = np.ix_(*(np.arange(n) for n in space.shape))
    for _ in range(count):
        mask = np.ones(space.shape, dtype=bool)
        for g in grids:
            m = int(rng.integers(1, 4))
            mask &= (g % m) == int(rng.integers(0, m))
        yield mask


def closure_sets(space: Space, rng: np.random.Generator, count: int):
    """All iterations whose input, filter and output lie in random element sets: the
    largest sets for their footprints, the adversarial case for the inequalities."""
    for _ in range(count):
        pi, pf, po = rng.uniform(0.2, 1.0, size=3)
        si = rng.random(space.n_in) < pi
        sf = rng.random(space.n_fil) < pf
        so = rng.random(space.n_out) < po
        yield si[space.inp] & sf[space.fil] & so[space.out]


def collect(spec: ConvSpec, seed: int = 0) -> np.ndarray:
    """(|V'|, I, F, O) rows for every enumerated set of a tiny problem (they do not
    depend on the precision, so they are cached per shape and seed)."""
    return _collect(spec.with_precision(PRESETS["fp32"]), seed).copy()


@functools.lru_cache(maxsize=32)
def _collect(spec: ConvSpec, seed: int) -> np.ndarray:
    space = Space(spec)
    rng = np.random.default_rng(seed)
    rows = [space.measure_box(box) for box in all_boxes(space.shape)]
    rows += [space.measure(m) for m in residue_sets(space, rng, 200)]
    rows += [space.measure(rng.random(space.shape) < d) for d in rng.uniform(0.05, 0.95, 150)]
    rows += [space.measure(m) for m in closure_sets(space, rng, 150)]
    rows.append(space.measure(np.ones(space.shape, dtype=bool)))
    return np.array([r for r in rows if r[0] > 0], dtype=float)


@pytest.fixture(scope="module", params=range(len(TINY)), ids=[f"tiny{i}" for i in range(len(TINY))])
def measured(request):
    spec = make(TINY[request.param])
    return spec, collect(spec, seed=request.param)


def test_every_inequality_holds_by_brute_force(measured):
    spec, rows = measured
    n, i, f, o = rows.T
    vals = inequalities(spec, i, f, o)
    assert set(vals) == set(NAMES)
    for name, bound in vals.items():
        bad = n > np.asarray(bound) * (1 + 1e-12)
        assert not bad.any(), (name, spec.describe(), rows[bad][:3])
    mx = np.array([max_iterations(spec, *r[1:]) for r in rows[:: max(1, len(rows) // 500)]])
    assert np.all(rows[:: max(1, len(rows) // 500), 0] <= mx * (1 + 1e-12))


def test_brute_force_reaches_the_box_limits(measured):
    """The enumeration is not vacuous: the full set touches exactly the used arrays, and
    some set makes an inequality tight (so a wrong constant would be caught)."""
    spec, rows = measured
    c = counts(spec)
    n, i, f, o = rows.T
    full = rows[np.argmax(n)]
    assert full[0] == c.g_real == real_iterations(spec)
    assert (full[1], full[2], full[3]) == (c.in_used, c.filter_used, c.out_used)
    tight = np.minimum.reduce([np.asarray(v) for v in inequalities(spec, i, f, o).values()])
    assert np.any(np.isclose(n, tight))


def test_real_iteration_count_matches_space():
    for t in TINY:
        spec = make(t)
        assert real_iterations(spec) == int(Space(spec).real.sum())
        assert counts(spec).in_used == spec.input_used_elems


def test_pitfall_counterexample():
    """THEORY.md §2: 1-D, W = R = 2, σ = 1: |V| = 4 > sqrt(I F O) = sqrt(12)."""
    spec = ConvSpec(1, 1, 1, (1, 3), (1, 2))
    space = Space(spec)
    n, i, f, o = space.measure(np.ones(space.shape, dtype=bool))
    assert (n, i, f, o) == (4, 3, 2, 2)
    assert n > math.sqrt(i * f * o)                        # the false inequality fails
    assert spec.rho == 2 and n <= math.sqrt(spec.rho * i * f * o)
    assert max_iterations(spec, i, f, o) >= n


@pytest.mark.parametrize("t", [TINY[0], TINY[2], TINY[4]])
def test_false_inequality_is_caught_by_the_enumeration(t):
    """On stride-1 problems the enumeration finds sets violating |V| <= sqrt(I F O), so a
    bound built on it would fail these tests."""
    spec = make(t)
    rows = collect(spec, seed=1)
    n, i, f, o = rows.T
    assert np.any(n > np.sqrt(i * f * o) * (1 + 1e-9))


def test_footprints_are_clipped_to_the_used_arrays():
    spec = make(TINY[0])
    c = counts(spec)
    big = max_iterations(spec, 1e9, 1e9, 1e9)
    assert big == c.g_real
    assert max_iterations(spec, 0, 5, 5) == 0.0


def random_tiny_specs(n: int, seed: int = 11):
    """Random tiny layers: per-axis strides 1-3, dilations 1-2, padding 0-1."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        ker = tuple(int(v) for v in rng.integers(1, 4, 2))
        st = tuple(int(v) for v in rng.integers(1, 4, 2))
        dil = tuple(int(v) for v in rng.integers(1, 3, 2))
        pad = tuple(int(v) for v in rng.integers(0, 2, 2))
        ins = tuple(int(v) for v in rng.integers(2, 9, 2))
        try:
            spec = ConvSpec(int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(1, 3)),
                            ins, ker, st, pad, dil)
        except ValueError:
            continue
        if spec.H * spec.W <= 24:
            out.append(spec)
    return out


@pytest.mark.parametrize("spec", random_tiny_specs(12), ids=lambda s: s.describe().replace(" ", "_"))
def test_inequalities_on_random_layers(spec):
    """Random shapes: random sub-boxes, residue classes and closures."""
    space = Space(spec)
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(300):
        box = []
        for n in space.shape:
            lo = int(rng.integers(0, n))
            box.append(slice(lo, int(rng.integers(lo + 1, n + 1))))
        rows.append(space.measure_box(tuple(box)))
    rows += [space.measure(m) for m in residue_sets(space, rng, 60)]
    rows += [space.measure(m) for m in closure_sets(space, rng, 60)]
    rows.append(space.measure(np.ones(space.shape, dtype=bool)))
    rows = np.array([r for r in rows if r[0] > 0], dtype=float)
    n, i, f, o = rows.T
    for name, bound in inequalities(spec, i, f, o).items():
        assert np.all(n <= np.asarray(bound) * (1 + 1e-12)), name
    assert rows[:, 0].max() == real_iterations(spec)


@pytest.mark.parametrize("spec", [make(t) for t in TINY] + random_tiny_specs(12, seed=5)
                         + [ConvSpec(1, 1, 2, (9, 7), 3, 2, 1), ConvSpec(1, 2, 1, (11, 5), (5, 2), (3, 2), 0, (1, 2))],
                         ids=lambda s: s.describe().replace(" ", "_"))
def test_stride_class_inequality_by_brute_force(spec):
    """(I1w): sum over V' of 1/sqrt(rho of the iteration's stride class) <= sqrt(I F O),
    on sub-boxes, residue classes, random sets and closures restricted to one stride
    class (the adversarial case: the class of largest multiplicity alone)."""
    space = Space(spec)
    rng = np.random.default_rng(17)
    ah, aw = spec.axes
    b, c, x, y = np.unravel_index(np.arange(space.n_in), spec.input_shape)
    sets = []
    for _ in range(150):
        box = []
        for n in space.shape:
            lo = int(rng.integers(0, n))
            box.append(slice(lo, int(rng.integers(lo + 1, n + 1))))
        m = np.zeros(space.shape, dtype=bool)
        m[tuple(box)] = True
        sets.append(m)
    sets += list(residue_sets(space, rng, 80))
    sets += [rng.random(space.shape) < d for d in rng.uniform(0.1, 0.9, 40)]
    for kh, kw in itertools.product(stride_classes(ah), stride_classes(aw)):
        cls = (x % ah.stride == kh) & (y % aw.stride == kw)
        for m in closure_sets(space, rng, 6):
            sets.append(m & cls[space.inp])
        sets.append(cls[space.inp])
    sets.append(np.ones(space.shape, dtype=bool))
    rows = np.array([space.weighted(m) for m in sets])
    w, i, f, o = rows.T
    assert np.all(w <= np.sqrt(i * f * o) * (1 + 1e-12))
    assert rows[-1, 0] == pytest.approx(weighted_work(spec), rel=1e-12)


def test_weighted_work_equals_unweighted_without_stride():
    for t in TINY:
        spec = make(t)
        if spec.stride == (1, 1):
            assert weighted_work(spec) == pytest.approx(real_iterations(spec) / math.sqrt(spec.rho))
    # 3x3 stride 2: classes of multiplicity 2 (taps 0, 2) and 1 (tap 1) per axis
    spec = ConvSpec(1, 1, 1, (9, 9), 3, 2, 0)
    assert spec.rho == 4
    per_axis = 2 * spec.H / math.sqrt(2) + spec.H / 1.0
    assert weighted_work(spec) == pytest.approx(per_axis**2)
    assert weighted_work(spec) > real_iterations(spec) / math.sqrt(spec.rho) * 1.2
