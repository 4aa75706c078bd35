"""Training passes (forward, dgrad, wgrad) and the training step: precisions, the union
inequalities by brute force, and adversarial executions that must never beat the bounds
(docs/theory.md §8). The dgrad/wgrad replays reuse the forward machinery of
``test_bounds_adversarial`` with the roles of the three projections swapped."""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest
from test_bounds_adversarial import (
    SPECS,
    Problem,
    _direct_traffic,
    _owner_triples,
    _parallel_cases,
    _replay_processors,
    _traffic,
)
from test_inequalities import TINY, Space, make

from parconv.bounds import (
    _caps_bits,
    _min_sum_for_product,
    _step_counts,
    _union_factors,
    _union_max_work,
    min_footprint_cost,
    owned_bits,
    parallel_memory_dependent_bound,
    parallel_memory_independent_bound,
    pass_bounds,
    sequential_bound,
    step_bounds,
    step_compulsory_bits,
    step_owned_bits,
)
from parconv.cli import main
from parconv.dtypes import PRESETS
from parconv.inequalities import counts
from parconv.passes import TRAINING_PRESETS, pass_precision, training_precision
from parconv.spec import ConvSpec

TRAIN = [s.with_precision(TRAINING_PRESETS[n].forward_precision)
         for s, n in zip(SPECS, ["fp16", "fp16", "bf16", "fp32", "fp64", "bf16", "fp32", "bf16",
                                 "fp32"])]


# ------------------------------------------------------------------------ precisions
def test_training_presets_give_each_projection_its_type():
    bf = training_precision("bf16")
    w = {j: {p: bf.pass_precision(j).weight(p) for p in ("input", "filter", "output")}
         for j in ("forward", "dgrad", "wgrad")}
    # forward: In, F 16 read, Out accumulated in fp32, delivered bf16 -> weight 16
    assert w["forward"] == {"input": 16, "filter": 16, "output": 16}
    # dgrad reads dOut, F at 16, accumulates dIn (fp32 partials, bf16 result)
    assert w["dgrad"] == {"input": 16, "filter": 16, "output": 16}
    # wgrad reads In, dOut at 16, delivers dF in fp32
    assert w["wgrad"] == {"input": 16, "filter": 32, "output": 16}
    assert bf.pass_precision("dgrad").accumulated == "input"
    assert bf.pass_precision("wgrad").accumulated == "filter"
    assert bf.pass_precision("wgrad").array("filter") == "dF"
    assert all(pp.p_max == 32 for pp in bf.passes.values())
    assert training_precision("float16") is TRAINING_PRESETS["fp16"]
    assert training_precision("fp64").pass_precision("wgrad").p_max == 64
    # the forward precision of the presets: only bf16 differs from the inference preset
    for n in ("fp32", "fp16", "fp64"):
        assert TRAINING_PRESETS[n].forward_precision == PRESETS[n]
    assert TRAINING_PRESETS["bf16"].forward_precision.output == "bfloat16"


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int8/int8/int32/int8"])
def test_integer_training_is_refused(dtype):
    with pytest.raises(ValueError, match="integer training is not supported"):
        training_precision(dtype)
    spec = ConvSpec(1, 2, 2, (4, 4), 3, precision=PRESETS["int8"])
    for p in ("dgrad", "wgrad", "step"):
        with pytest.raises(ValueError, match="integer training"):
            pass_bounds(spec, p, 1, 1024)
    assert pass_precision(PRESETS["int8"], "forward").weight("output") == 32
    with pytest.raises(ValueError, match="pass 'bogus'"):
        pass_bounds(spec, "bogus", 1, 1024)


def test_forward_pass_is_the_forward_bound_bit_for_bit():
    for spec in SPECS + [ConvSpec(8, 64, 64, (14, 14), 3, 2, 1, precision=PRESETS["bf16"])]:
        r = pass_bounds(spec, "forward", 5, 2048)
        assert r["sequential"] == sequential_bound(spec, 2048)
        assert r["sequential_single_chain"] == sequential_bound(spec, 2048, single_chain=True)
        assert r["parallel_memory_dependent"] == parallel_memory_dependent_bound(spec, 5, 2048)
        assert r["parallel_memory_independent"] == parallel_memory_independent_bound(spec, 5)


def test_compulsory_counts_the_read_arrays_used_and_the_delivered_array_whole():
    # stride 3 > kernel 2 skips input pixels: In_used < |In|; padding makes taps unused
    spec = ConvSpec(1, 2, 3, (1, 8), (3, 2), (1, 3), 1, precision=PRESETS["fp32"])
    c = counts(spec)
    assert c.in_used < c.in_total and c.filter_used < c.filter_total
    fwd = sequential_bound(spec, 1e9).bits
    dg = sequential_bound(spec, 1e9, pass_="dgrad").bits
    wg = sequential_bound(spec, 1e9, pass_="wgrad").bits
    assert fwd == 32 * (c.in_used + c.filter_used + c.out_total)
    assert dg == 32 * (c.out_used + c.filter_used + c.in_total)     # dIn delivered whole
    assert wg == 32 * (c.in_used + c.out_used + c.filter_total)     # dF delivered whole
    assert step_compulsory_bits(spec) == 32 * (c.in_used + c.filter_used + c.out_used
                                               + c.out_total + c.in_total + c.filter_total)


# ------------------------------------------------------------ union inequalities
def _step_sets(space: Space, rng):
    """Triples of iteration sets (forward, dgrad, wgrad) of the union: random, sub-boxes,
    equal sets, and closures sharing the read arrays."""
    n = space.real.size
    for _ in range(25):
        dens = rng.uniform(0.05, 1.0, 3)
        yield tuple(rng.random(space.shape) < d for d in dens)
    for _ in range(25):
        lo = [int(rng.integers(0, m)) for m in space.shape]
        hi = [int(rng.integers(a + 1, m + 1)) for a, m in zip(lo, space.shape)]
        box = np.zeros(space.shape, dtype=bool)
        box[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
        yield box, box, box
        yield box, box, np.zeros(space.shape, dtype=bool)
    for _ in range(15):
        # closures: all iterations whose read elements lie in random element sets
        ki = rng.random(space.n_in) < rng.uniform(0.2, 1)
        kf = rng.random(space.n_fil) < rng.uniform(0.2, 1)
        ko = rng.random(space.n_out) < rng.uniform(0.2, 1)
        yield (ki[space.inp] & kf[space.fil], kf[space.fil] & ko[space.out],
               ki[space.inp] & ko[space.out])
    del n


def test_union_inequalities_by_brute_force():
    """v_f + v_d + v_w <= sqrt(ρ·(2I+D)(F+E)(O+G)) and its two variants, where I, F, O are
    the In, F, Out elements and D, E, G the dIn, dF, dOut elements the three sets touch
    (In is read by forward and wgrad, F by forward and dgrad, dOut by dgrad and wgrad)."""
    rng = np.random.default_rng(3)
    ratios = []
    for t in TINY:
        spec = make(t)
        space = Space(spec)
        rho = spec.rho
        for sf, sd, sw in _step_sets(space, rng):
            vf, i_f, f_f, o_f = space.measure(sf)     # forward: In, F, Out
            vd, d_d, f_d, g_d = space.measure(sd)     # dgrad: dIn, F, dOut
            vw, i_w, e_w, g_w = space.measure(sw)     # wgrad: In, dF, dOut
            real = space.real
            i = len(set(space.inp[sf & real]) | set(space.inp[sw & real]))
            f = len(set(space.fil[sf & real]) | set(space.fil[sd & real]))
            g = len(set(space.out[sd & real]) | set(space.out[sw & real]))
            o, d, e = o_f, d_d, e_w
            v = vf + vd + vw
            if v == 0:
                continue
            lims = [math.sqrt(rho * (2 * i + d) * (f + e) * (o + g)),
                    math.sqrt(rho * (i + d) * (2 * f + e) * (o + g)),
                    math.sqrt(rho * (i + d) * (f + e) * (2 * g + o))]
            assert v <= min(lims) * (1 + 1e-12), (t, v, i, d, f, e, o, g)
            ratios.append(v / min(lims))
    assert len(ratios) > 500 and max(ratios) > 0.6      # not vacuous


def test_union_max_work_is_an_upper_bound_on_enumerated_sets():
    """U(Z) (what the step's union segment bound uses) >= v_f+v_d+v_w of every enumerated
    triple whose union footprint costs Z bits (bf16 weights: dF is 32 bits)."""
    rng = np.random.default_rng(5)
    checked = 0
    for t in TINY[:5]:
        spec = make(t, "bf16").with_precision(TRAINING_PRESETS["bf16"].forward_precision)
        space = Space(spec)
        cs = _step_counts(spec)
        factors = _union_factors(cs)
        f_, d_, w_ = cs["forward"], cs["dgrad"], cs["wgrad"]
        for sf, sd, sw in _step_sets(space, rng):
            real = space.real
            i = len(set(space.inp[sf & real]) | set(space.inp[sw & real]))
            f = len(set(space.fil[sf & real]) | set(space.fil[sd & real]))
            g = len(set(space.out[sd & real]) | set(space.out[sw & real]))
            o = space.measure(sf)[3]
            d = space.measure(sd)[1]
            e = space.measure(sw)[2]
            z = (f_.p_in * i + f_.p_filter * f + d_.p_out * g + f_.p_out * o + d_.p_in * d
                 + w_.p_filter * e)
            v = sum(space.measure(s)[0] for s in (sf, sd, sw))
            assert v <= float(_union_max_work(factors, np.array([z]))[0]) * (1 + 1e-12)
            checked += 1
    assert checked > 300


# ------------------------------------------------------------- adversarial replays
class PassProblem(Problem):
    """A Problem whose three id columns are (read, read, accumulated) of a pass."""

    def __init__(self, spec: ConvSpec, pass_: str):
        super().__init__(spec)
        pp = pass_precision(spec.precision, pass_)
        ids = {"input": (self.inp, self.n_in), "filter": (self.fil, self.n_fil),
               "output": (self.out, self.n_out)}
        r1, r2 = pp.read
        a = pp.accumulated
        (self.inp, self.n_in), (self.fil, self.n_fil), (self.out, self.n_out) = (
            ids[r1], ids[r2], ids[a])
        self.p_in, self.p_fil = pp.weight(r1), pp.weight(r2)
        self.p_acc, self.p_fin = pp.p_accum, pp.p_delivered
        self.p_o = min(self.p_acc, self.p_fin)
        self.pass_, self.roles = pass_, (r1, r2, a)


@pytest.fixture(scope="module")
def pass_problems():
    return {(k, p): PassProblem(TRAIN[k], p) for k in range(len(TRAIN))
            for p in ("dgrad", "wgrad")}


@pytest.mark.parametrize("pass_", ["dgrad", "wgrad"])
def test_pass_sequential_bounds_never_beaten(pass_problems, pass_):
    best_seg, met = math.inf, 0
    for k in range(len(TRAIN)):
        pb = pass_problems[(k, pass_)]
        spec = pb.spec
        orders = list(pb.orders(seed=300 + k, tiled=3))
        lo = pb.p_in + pb.p_fil + pb.p_acc
        data = pb.p_in * pb.n_in + pb.p_fil * pb.n_fil + pb.p_acc * pb.n_out
        for m in (lo, 3 * lo, 10 * lo, 1.1 * data):
            m = float(8 * math.ceil(m / 8))
            gen = sequential_bound(spec, m / 8, pass_=pass_)
            chain = sequential_bound(spec, m / 8, single_chain=True, pass_=pass_)
            costs = [pb.sequential_cost(o, m, keep_dirty=kd) for j, (_, o) in enumerate(orders)
                     for kd in ((False, True) if j == 0 else (False,))]
            best = min(costs)
            assert gen.bits <= best, (spec.describe(), pass_, m, best, gen)
            assert chain.bits <= best, (spec.describe(), pass_, m, best, chain)
            if chain.binding == "compulsory":
                met += best == chain.bits
            else:
                best_seg = min(best_seg, best / chain.bits)
    assert met >= len(TRAIN) - 1          # everything fits: the compulsory bound is met
    assert best_seg < 20.0                # the segment regime has teeth


@pytest.mark.parametrize("pass_", ["dgrad", "wgrad"])
def test_pass_memory_independent_bound_never_beaten(pass_problems, pass_):
    tight, checked = [], 0
    pbs = [pass_problems[(k, pass_)] for k in range(len(TRAIN))]
    for pb, procs, name, assign, rng in _parallel_cases(pbs, (2, 3, 5), seed=17):
        spec = pb.spec
        bound = parallel_memory_independent_bound(spec, procs, pass_=pass_)
        c = counts(spec, pass_)
        caps = _caps_bits(c)
        iters = np.bincount(assign, minlength=procs)
        wwork = np.bincount(assign, weights=pb.wt, minlength=procs)
        for owners in _owner_triples(pb, procs, assign, rng):
            traffic, owned = _traffic(pb, procs, assign, owners)
            assert owned.max() <= owned_bits(spec, procs, pass_=pass_)
            worst = traffic.max()
            assert bound.details["lemma_bits"] <= worst, (spec.describe(), pass_, procs, name)
            moved = _direct_traffic(pb, procs, assign, owners)     # received + sent
            assert bound.bits <= moved.max(), (spec.describe(), pass_, procs, name, bound)
            need = min_footprint_cost(spec, iters.astype(float), pass_=pass_)
            assert np.all(traffic >= need - owned)
            need_w = np.array([_min_sum_for_product(c.p_in * c.p_filter * c.p_out * w * w, caps)
                               for w in wwork])
            assert np.all(traffic >= need_w * (1 - 1e-14) - owned)
            if not bound.vacuous:
                tight.append(moved.max() / bound.bits)
            checked += 1
    assert checked > 300 and min(tight) < 1.6


@pytest.mark.parametrize("pass_", ["dgrad", "wgrad"])
def test_pass_memory_dependent_bound_never_beaten(pass_problems, pass_):
    """Per-processor replays (two-level: fast memory M, every load/store counted; one-level:
    M holds the owned share, receives + sends counted) vs the memory-dependent bound."""
    checked, nonvacuous = 0, 0
    for k in (0, 1, 5, 8):
        pb = pass_problems[(k, pass_)]
        for _, procs, name, assign, rng in _parallel_cases([pb], (3,), seed=41 + k):
            if not name.startswith(("cyclic", "skewed", "by-", "grid")):
                continue
            order = pb.tiled_order(rng)
            owners = next(iter(_owner_triples(pb, procs, assign, rng)))
            _, owned = _traffic(pb, procs, assign, owners)
            lo = pb.p_in + pb.p_fil + pb.p_acc
            for m, one_level in ((lo, False), (4 * lo, False),
                                 (max(float(owned.max()), lo), True)):
                m = float(8 * math.ceil(m / 8))
                dep = parallel_memory_dependent_bound(pb.spec, procs, m / 8, pass_=pass_)
                rows = _replay_processors(pb, procs, assign, order, owners, m, one_level)
                worst = max(r[0] for r in rows)
                assert dep.bits <= worst, (pb.spec.describe(), pass_, name, m, worst, dep)
                nonvacuous += not dep.vacuous
                checked += 1
    assert checked > 40 and nonvacuous > 15


# ------------------------------------------------------------------ the training step
def _belady(ids: np.ndarray, acc: np.ndarray, size: np.ndarray, fin: np.ndarray,
            p_acc: float, m_bits: float) -> float:
    """Loads + stores of the iterations ``ids`` (n x 3 global element ids; column 2 the
    accumulated element, columns 0-1 read) against ``m_bits`` of fast memory with
    furthest-next-use replacement; read elements of ``size[e]`` bits loaded when absent;
    partial sums spilled/reloaded at ``p_acc``; every accumulated element ends stored once
    in its delivered type ``fin[e]``. Data may stay resident across iterations of
    different passes (the "keep" class)."""
    n = len(ids)
    inf = float(n + 2)
    nxt = np.full((n, 3), inf)
    last: dict[int, int] = {}
    for t in range(n - 1, -1, -1):
        for j in range(3):
            e = int(ids[t, j])
            nxt[t, j] = last.get(e, inf)
            last[e] = t
    res: dict[int, float] = {}
    heap: list = []
    used = moved = 0.0
    started: set[int] = set()
    for t in range(n):
        pinned = {int(x) for x in ids[t]}
        for j in range(3):
            e = int(ids[t, j])
            nu = nxt[t, j]
            if e not in res:
                need = p_acc if acc[e] else size[e]
                while used + need > m_bits:
                    stash = []
                    while True:
                        negp, v = heapq.heappop(heap)
                        if v in res and res[v] == -negp:
                            if v in pinned:
                                stash.append((negp, v))
                                continue
                            break
                    for s_ in stash:
                        heapq.heappush(heap, s_)
                    if acc[v]:
                        moved += p_acc if -negp < inf else fin[v]
                        used -= p_acc
                    else:
                        used -= size[v]
                    del res[v]
                if not acc[e]:
                    moved += size[e]
                elif e in started:
                    moved += p_acc
                started.add(e)
                used += need
            res[e] = nu
            heapq.heappush(heap, (-nu, e))
    moved += sum(fin[e] for e in res if acc[e])
    return moved


class Step:
    """The union of the three passes' real iterations with global element ids of the six
    arrays In, F, dOut (read), Out, dIn, dF (accumulated)."""

    def __init__(self, spec: ConvSpec):
        pb = Problem(spec)
        self.spec, self.pb = spec, pb
        tp = training_precision(spec.precision)
        f, d, w = (tp.pass_precision(j) for j in ("forward", "dgrad", "wgrad"))
        ni, nf, no = pb.n_in, pb.n_fil, pb.n_out
        off = np.cumsum([0, ni, nf, no, no, ni])      # In, F, dOut, Out, dIn, dF
        self.n_elems = int(off[-1] + nf)
        self.fwd = np.stack([pb.inp, off[1] + pb.fil, off[3] + pb.out], axis=1)
        self.dgr = np.stack([off[2] + pb.out, off[1] + pb.fil, off[4] + pb.inp], axis=1)
        self.wgr = np.stack([pb.inp, off[2] + pb.out, off[5] + pb.fil], axis=1)
        self.acc = np.zeros(self.n_elems, dtype=bool)
        self.acc[off[3]:] = True
        self.size = np.zeros(self.n_elems)
        self.fin = np.zeros(self.n_elems)
        self.size[:off[1]] = f.weight("input")
        self.size[off[1]:off[2]] = f.weight("filter")
        self.size[off[2]:off[3]] = d.weight("output")
        self.fin[off[3]:off[4]] = f.p_delivered
        self.fin[off[4]:off[5]] = d.p_delivered
        self.fin[off[5]:] = w.p_delivered
        self.p_acc = f.p_accum
        # all-padding outputs, unused dIn pixels and unused dF taps are stored as zeros
        self.zeros = (f.p_delivered * (pb.n_out - len(np.unique(pb.out)))
                      + d.p_delivered * (ni - len(np.unique(pb.inp)))
                      + w.p_delivered * (nf - len(np.unique(pb.fil))))

    def cost(self, ids, m_bits):
        return _belady(ids, self.acc, self.size, self.fin, self.p_acc, m_bits) + self.zeros


def test_step_bounds_never_beaten():
    """Sequential step executions: the three passes one after another with memory flushed
    between them (separate class) and the same concatenated orders, interleaved orders
    (dgrad and wgrad fused, all three round-robin, random) replayed through one memory
    that keeps data across passes (keep class). Each cost >= its class's bound; the keep
    bound is also below every separate execution."""
    rng = np.random.default_rng(23)
    checked, keep_ratios, union_bound = 0, [], 0
    for spec in TRAIN[:6]:
        st = Step(spec)
        pb = st.pb
        lo = 3 * 64
        for m in (lo, 4 * lo, 16 * lo):
            m = float(8 * math.ceil(m / 8))
            sb = step_bounds(spec, 1, m / 8)
            sep, keep = sb["separate"]["sequential"], sb["keep"]["sequential"]
            union_bound += keep.binding == "union segment"
            for _ in range(2):
                o = [pb.tiled_order(rng) for _ in range(3)]
                f_, d_, w_ = st.fwd[o[0]], st.dgr[o[1]], st.wgr[o[2]]
                separate = st.cost(f_, m) + st.cost(d_, m) + st.cost(w_, m) - 2 * st.zeros
                assert sep.bits <= separate and keep.bits <= separate
                kept = st.cost(np.concatenate([f_, d_, w_]), m)
                inter = np.empty((2 * pb.n, 3), dtype=np.int64)
                inter[0::2], inter[1::2] = st.dgr[o[1]], st.wgr[o[1]]      # fused backward
                fused = st.cost(np.concatenate([f_, inter]), m)
                rr = np.empty((3 * pb.n, 3), dtype=np.int64)
                rr[0::3], rr[1::3], rr[2::3] = st.fwd[o[0]], st.dgr[o[0]], st.wgr[o[0]]
                allin = np.concatenate([st.fwd, st.dgr, st.wgr])
                rand = allin[rng.permutation(len(allin))]
                for name, ids in (("kept", np.concatenate([f_, d_, w_])), ("fused", None),
                                  ("round-robin", rr), ("random", rand)):
                    c = {"kept": kept, "fused": fused}.get(name)
                    c = st.cost(ids, m) if c is None else c
                    assert keep.bits <= c, (spec.describe(), m, name, c, keep)
                    keep_ratios.append(c / keep.bits)
                    checked += 1
    assert checked > 100 and union_bound > 0 and min(keep_ratios) < 3.0


def test_step_parallel_bounds_never_beaten():
    """Parallel step: each processor receives every In/F/dOut element it touches (in any
    pass) and does not own, once, and sends one contribution per Out/dIn/dF element it
    touches and does not own (keep class: data kept between passes); the max over
    processors must be >= the keep memory-independent bound. Separate class: per pass,
    traffic as in the forward model; the sum over passes of each pass's busiest processor
    >= the separate bound."""
    rng = np.random.default_rng(29)
    checked, tight = 0, []
    for spec in TRAIN[:7]:
        pbs = {j: PassProblem(spec, j) if j != "forward" else Problem(spec)
               for j in ("forward", "dgrad", "wgrad")}
        st = Step(spec)
        for procs in (2, 3, 5):
            sb = step_bounds(spec, procs, 1024)
            keep = sb["keep"]["parallel_memory_independent"]
            sep = sb["separate"]["parallel_memory_independent"]
            owned_cap = step_owned_bits(spec, procs)
            n = pbs["forward"].n
            for kind in ("same", "random", "cyclic"):
                if kind == "same":
                    a = rng.integers(0, procs, n)
                    assign = {j: a for j in pbs}
                elif kind == "random":
                    assign = {j: rng.integers(0, procs, n) for j in pbs}
                else:
                    assign = {j: (np.arange(n) + s) % procs for s, j in enumerate(pbs)}
                # ownership of the six arrays: adversarial per pass (first triple)
                own = {j: next(iter(_owner_triples(pbs[j], procs, assign[j], rng))) for j in pbs}
                # separate class: per pass traffic, busiest per pass summed
                total_sep = 0.0
                for j, pb in pbs.items():
                    total_sep += _direct_traffic(pb, procs, assign[j], own[j]).max()
                assert sep.bits <= total_sep
                # keep class: union of touched elements; owners: In/F/Out from forward,
                # dIn/dOut from dgrad, dF from wgrad
                owner = np.full(st.n_elems, -1)
                pbf = pbs["forward"]
                off = [0, pbf.n_in, pbf.n_in + pbf.n_fil]
                ni, nf, no = pbf.n_in, pbf.n_fil, pbf.n_out
                owner[:ni] = own["forward"][0]
                owner[ni:ni + nf] = own["forward"][1]
                owner[ni + nf:ni + nf + no] = own["dgrad"][1]        # dOut (dgrad reads F, dOut)
                owner[ni + nf + no:ni + nf + 2 * no] = own["forward"][2]
                owner[ni + nf + 2 * no:2 * ni + nf + 2 * no] = own["dgrad"][2]   # dIn
                owner[2 * ni + nf + 2 * no:] = own["wgrad"][2]       # dF
                del off
                wt = np.where(st.acc, np.minimum(st.fin, st.p_acc), st.size)
                worst, owned_max = 0.0, 0.0
                moved = np.zeros(procs)         # received + sent, direct transfers
                for p in range(procs):
                    touched = np.unique(np.concatenate(
                        [st.fwd[assign["forward"] == p].ravel(),
                         st.dgr[assign["dgrad"] == p].ravel(),
                         st.wgr[assign["wgrad"] == p].ravel()]))
                    away = touched[owner[touched] != p]
                    worst = max(worst, float(wt[away].sum()))
                    owned_max = max(owned_max, float(wt[owner == p].sum()))
                    moved[p] += wt[away].sum()
                    np.add.at(moved, owner[away], wt[away])
                assert owned_max <= owned_cap
                assert keep.details["lemma_bits"] <= worst, (spec.describe(), procs, kind, worst)
                assert keep.bits <= moved.max(), (spec.describe(), procs, kind, moved, keep)
                if keep.details["lemma_bits"] > 0:
                    tight.append(worst / keep.details["lemma_bits"])
                checked += 1
    assert checked >= 50 and min(tight) < 5.0     # loose (docs/theory.md §8), not vacuous


# ------------------------------------------------------------------------------ CLI
def test_cli_pass_json_and_refusal(capsys):
    import json

    args = ["bound", "--in-channels", "8", "--out-channels", "8", "--input", "6,6",
            "--kernel", "3,3", "--padding", "1,1", "--memory", "1KiB", "--procs", "3"]
    assert main(args + ["--dtype", "bf16", "--pass", "step", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d["passes"]) == {"forward", "dgrad", "wgrad"}
    assert d["passes"]["wgrad"]["precision"]["projections"]["filter"]["weight_bits"] == 32
    for cls in ("separate", "keep"):
        st = d["step"][cls]
        assert st["assumes"] and "sequential_bytes" in st
        assert "parallel_memory_independent_bytes" in st
    sep, keep = d["step"]["separate"], d["step"]["keep"]
    assert sep["sequential_bytes"] >= keep["sequential_bytes"]
    assert sep["sequential_bytes"] >= sum(
        max(d["passes"][j]["sequential_bytes"], 0) for j in d["passes"]) - 1e-6
    # forward without --pass: unchanged payload; with --pass forward and fp32: same numbers
    assert main(args + ["--dtype", "fp32", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "pass" not in plain
    assert main(args + ["--dtype", "fp32", "--pass", "forward", "--json"]) == 0
    fwd = json.loads(capsys.readouterr().out)
    assert fwd["sequential_bytes"] == plain["sequential_bytes"]
    assert (fwd["parallel_memory_independent_bytes"]
            == plain["parallel_memory_independent_bytes"])
    # integer training refused (exit 2, one message); integer forward allowed
    for p in ("dgrad", "wgrad", "step"):
        assert main(args + ["--dtype", "int8", "--pass", p]) == 2
        assert "integer training is not supported" in capsys.readouterr().err
    assert main(args + ["--dtype", "int8", "--pass", "forward"]) == 0
    out = capsys.readouterr().out
    assert "forward: sequential" in out
    assert main(args + ["--dtype", "fp16", "--pass", "step"]) == 0
    out = capsys.readouterr().out
    assert "step (keep): sequential" in out and "dgrad: parallel" in out
