"""Communication-optimal sequential box tilings: exact traffic, fit, and the optimiser.

One level of fast memory of ``M`` bits between the processor and slow memory. A *box
tiling* cuts each of the seven loops ``b, k, c, h, w, r, s`` (``h, w`` are OUTPUT
coordinates) into consecutive blocks of a fixed size (the last block of a loop may be
shorter: an *edge* tile). A *loop order* is a permutation of the seven tile loops,
outermost first, e.g. ``"kbhwcrs"``; named orders are in :data:`ORDERS`.

Semantics (the replay in :mod:`parconv.replay` executes exactly this; see
``docs/tiling.md``): before executing a tile, fast memory holds exactly the tile's
working set -- the real input elements it reads (padding is not data), its filter block
and its output block. Going from one tile to the next, elements the next tile does not
need are evicted (outputs are written back: a partial sum if their reduction is not
complete, else the final value) and missing elements are loaded (an output that was
touched before is reloaded; a first touch starts from zero and moves nothing). At the
end the resident outputs are written back. Partial sums live and travel in accumulator
precision ``p_O``; the final value of an output is stored in the output precision.

The traffic of that schedule has an exact closed form (derivation in
``docs/tiling.md`` §3): per array, a count over the tile-loop *prefix* that the array
depends on, with the input's halo overlap between consecutive tiles summed per spatial
axis from precomputed tables. :func:`tiling_traffic_bits` evaluates it exactly (Python
ints); :func:`best_tiling` evaluates the same formula vectorised over a grid of
candidate tile sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import prod

import numpy as np

from .spec import Axis, ConvSpec

#: The seven loops, in the canonical order used for tile dicts.
DIMS = "bkchwrs"
#: Which loops each array's index depends on.
RELEVANT = {"input": frozenset("bchwrs"), "filter": frozenset("kcrs"), "output": frozenset("bkhw")}

#: Named tile-loop orders (outermost loop first).
ORDERS: dict[str, str] = {
    # the output block stays while the reduction (c, r, s) runs innermost
    "output-stationary": "kbhwcrs",
    # the filter block stays while b, h, w run innermost: each weight is loaded once
    "weight-stationary": "kcrsbhw",
    # the input block stays while k runs innermost
    "input-stationary": "bchwrsk",
    # output-stationary with k innermost among the output loops: when the whole
    # reduction fits in one tile, the input block is reused across the k-tiles
    "output-stationary-k": "bhwkcrs",
    # reduction over c outermost (few partial-sum round trips), filter taps innermost
    "channel-outer": "ckbhwrs",
}
#: Orders :func:`best_tiling` searches by default.
SEARCH_ORDERS: tuple[str, ...] = tuple(ORDERS)

_ROLE_OUTER, _ROLE_INC, _ROLE_RESET = 0, 1, 2


def loop_order(order: str) -> str:
    """The permutation (7 letters, outermost first) of a named order or a permutation.

    Raises
    ------
    ValueError
        If ``order`` is neither a name in :data:`ORDERS` nor a permutation of ``bkchwrs``.
    """
    perm = ORDERS.get(order, order)
    if not isinstance(perm, str) or sorted(perm) != sorted(DIMS):
        raise ValueError(f"order {order!r}: expected one of {', '.join(ORDERS)} or a "
                         f"permutation of the letters {DIMS!r}")
    return perm


def order_name(order: str) -> str:
    """The name of a permutation if it has one, else the permutation itself."""
    perm = loop_order(order)
    for name, p in ORDERS.items():
        if p == perm:
            return name
    return perm


def extents(spec: ConvSpec) -> dict[str, int]:
    """Loop bounds ``{b: B, k: K, c: C, h: H, w: W, r: R, s: S}``."""
    return {"b": spec.B, "k": spec.K, "c": spec.C, "h": spec.H, "w": spec.W, "r": spec.R, "s": spec.S}


def check_tile(spec: ConvSpec, tile: dict) -> dict[str, int]:
    """Validate a tile-size dict; return it with plain ints in :data:`DIMS` order.

    Raises
    ------
    ValueError
        Naming a missing/unknown key or a size outside ``1..extent``.
    """
    if set(tile) != set(DIMS):
        raise ValueError(f"tile: expected keys {', '.join(DIMS)}, got {', '.join(sorted(tile))}")
    ext = extents(spec)
    out = {}
    for d in DIMS:
        v = tile[d]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"tile[{d!r}]: expected an int, got {v!r}")
        if not 1 <= v <= ext[d]:
            raise ValueError(f"tile[{d!r}]={v} outside 1..{ext[d]} (the loop's extent)")
        out[d] = int(v)
    return out


def tile_counts(spec: ConvSpec, tile: dict) -> dict[str, int]:
    """Number of tiles ``n_d = ceil(N_d / t_d)`` along each loop."""
    ext = extents(spec)
    return {d: -(-ext[d] // int(tile[d])) for d in DIMS}


# -- per spatial axis: footprints and overlaps of consecutive tiles -----------------------
@dataclass(frozen=True)
class AxisTable:
    """Input-footprint statistics of one spatial axis for tile sizes ``(t_out, t_ker)``.

    ``X(i, j)`` is the set of real input indices read by output block ``i`` with filter
    block ``j``. ``table[a][b]`` sums ``|X(i, j) ∩ X(i', j')|`` over the index pairs of the
    output loop in role ``a`` and the filter loop in role ``b`` (roles: 0 = fixed, all
    values; 1 = incremented, ``i -> i+1``; 2 = reset, ``n-1 -> 0``). ``table[0][0]`` is
    ``Σ |X(i, j)|``; ``max_x`` is ``max |X(i, j)|``.
    """

    n_out: int
    n_ker: int
    max_x: int
    table: tuple[tuple[int, int, int], ...]

    @property
    def total(self) -> int:
        return self.table[0][0]


def _pairs(role: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    if role == _ROLE_OUTER:
        a = np.arange(n)
        return a, a
    if role == _ROLE_INC:
        a = np.arange(n - 1)
        return a, a + 1
    return np.array([n - 1]), np.array([0])


def axis_masks(axis: Axis, t_out: int, t_ker: int) -> np.ndarray:
    """Boolean ``(n_out, n_ker, in_size)``: ``[i, j, x]`` is True when input index ``x``
    is read by output block ``i`` with filter block ``j`` (padding excluded)."""
    out_n, ker_n = axis.out_size, axis.kernel
    n_o, n_k = -(-out_n // t_out), -(-ker_n // t_ker)
    h, r = np.meshgrid(np.arange(out_n), np.arange(ker_n), indexing="ij")
    x = axis.input_index(h, r)
    ok = (x >= 0) & (x < axis.in_size)
    masks = np.zeros((n_o, n_k, axis.in_size), dtype=bool)
    masks[h[ok] // t_out, r[ok] // t_ker, x[ok]] = True
    return masks


@lru_cache(maxsize=8192)
def axis_table(axis: Axis, t_out: int, t_ker: int) -> AxisTable:
    """The :class:`AxisTable` of ``axis`` for output tile ``t_out`` and filter tile ``t_ker``."""
    m = axis_masks(axis, t_out, t_ker)
    n_o, n_k = m.shape[0], m.shape[1]
    counts = m.sum(axis=2)
    rows = []
    for ro in (_ROLE_OUTER, _ROLE_INC, _ROLE_RESET):
        row = []
        for rk in (_ROLE_OUTER, _ROLE_INC, _ROLE_RESET):
            (i1, i2), (j1, j2) = _pairs(ro, n_o), _pairs(rk, n_k)
            if (ro != _ROLE_OUTER and n_o == 1) or (rk != _ROLE_OUTER and n_k == 1):
                row.append(0)  # the loop is trivial: it never increments or resets
            elif ro == _ROLE_OUTER and rk == _ROLE_OUTER:
                row.append(int(counts.sum()))
            else:
                a = m[np.ix_(i1, j1)]
                b = m[np.ix_(i2, j2)]
                row.append(int((a & b).sum()))
        rows.append(tuple(row))
    return AxisTable(n_o, n_k, int(counts.max()), tuple(rows))


# -- footprint and fit ------------------------------------------------------------------
def footprint_bits(spec: ConvSpec, tile: dict) -> dict[str, int]:
    """Largest per-array working set over all tile positions, in bits (the peak: all
    maxima occur together at the first tile that is full along every loop)."""
    t = check_tile(spec, tile)
    p = spec.precision
    xh = axis_table(spec.axes[0], t["h"], t["r"]).max_x
    xw = axis_table(spec.axes[1], t["w"], t["s"]).max_x
    return {
        "input": p.p_input * t["b"] * t["c"] * xh * xw,
        "filter": p.p_filter * t["k"] * t["c"] * t["r"] * t["s"],
        "output": p.p_accum * t["b"] * t["k"] * t["h"] * t["w"],
    }


def fits(spec: ConvSpec, tile: dict, memory_bytes: int, double_buffer: bool = False) -> bool:
    """True when the tile's peak working set fits ``memory_bytes`` of fast memory
    (half of it per buffer when ``double_buffer``)."""
    cap = 8 * int(memory_bytes) // (2 if double_buffer else 1)
    return sum(footprint_bits(spec, tile).values()) <= cap


# -- the exact traffic formula ----------------------------------------------------------
def traffic_breakdown(spec: ConvSpec, tile: dict, order: str) -> dict[str, int]:
    """Exact bits moved per array (``input``/``filter``/``output``; output = partial-sum
    stores and reloads in ``p_accum`` + one final store per output in ``p_output``) by the
    tiling's schedule (module docstring)."""
    t = check_tile(spec, tile)
    perm = loop_order(order)
    p = spec.precision
    n = tile_counts(spec, t)
    pos = {d: i for i, d in enumerate(perm)}
    th = axis_table(spec.axes[0], t["h"], t["r"])
    tw = axis_table(spec.axes[1], t["w"], t["s"])

    def innermost(rel: frozenset) -> int:
        return max((pos[d] for d in rel if n[d] > 1), default=-1)

    def reps(rel: frozenset) -> int:
        j = innermost(rel)
        return prod(n[d] for d in DIMS if d not in rel and pos[d] < j)

    filt = p.p_filter * spec.filter_elems * reps(RELEVANT["filter"])
    outp = spec.output_elems * (2 * p.p_accum * (reps(RELEVANT["output"]) - 1) + p.p_output)
    j_in = innermost(RELEVANT["input"])
    loaded = reps(RELEVANT["input"]) * spec.B * spec.C * th.total * tw.total
    overlap = 0
    for q, dq in enumerate(perm):
        if n[dq] == 1 or q > j_in:
            continue
        if any(n[d] > 1 and pos[d] >= q for d in "bc"):
            continue  # the b- or c-block changes: consecutive input blocks are disjoint

        def role(d: str, q: int = q) -> int:
            if n[d] == 1 or pos[d] < q:
                return _ROLE_OUTER
            return _ROLE_INC if pos[d] == q else _ROLE_RESET

        kf = n["k"] if pos["k"] < q else (n["k"] - 1 if pos["k"] == q else 1)
        overlap += kf * th.table[role("h")][role("r")] * tw.table[role("w")][role("s")]
    inp = p.p_input * (loaded - spec.B * spec.C * overlap)
    return {"input": inp, "filter": filt, "output": outp}


def tiling_traffic_bits(spec: ConvSpec, tile: dict, order: str) -> int:
    """Exact slow<->fast memory traffic in bits of a box tiling under a loop order
    (sum of :func:`traffic_breakdown`); edge tiles and clipped halos counted exactly.

    Raises
    ------
    ValueError
        For an invalid tile or order.
    """
    return sum(traffic_breakdown(spec, tile, order).values())


def compulsory_bits(spec: ConvSpec) -> int:
    """Every used input, every weight read once and every output written once (in the
    output precision): what the tiling's schedule moves at the least."""
    p = spec.precision
    return (p.p_input * spec.input_used_elems + p.p_filter * spec.filter_elems
            + p.p_output * spec.output_elems)


# -- the optimiser ----------------------------------------------------------------------
@dataclass(frozen=True)
class Tiling:
    """A box tiling with its loop order and exact traffic.

    Attributes
    ----------
    tile : tile sizes, keys ``b, k, c, h, w, r, s`` (``h, w`` output sizes).
    order : order name (:data:`ORDERS`) or a 7-letter permutation, outermost first.
    traffic_bits : exact traffic of the schedule (:func:`tiling_traffic_bits`).
    memory_bytes : the fast-memory size it was chosen for.
    """

    tile: dict[str, int]
    order: str
    traffic_bits: int
    memory_bytes: int

    @property
    def loop_order(self) -> str:
        """The order as a permutation of ``bkchwrs``, outermost first."""
        return loop_order(self.order)

    @property
    def traffic_bytes(self) -> float:
        """Traffic in bytes (an int when the bits are whole bytes)."""
        return self.traffic_bits // 8 if self.traffic_bits % 8 == 0 else self.traffic_bits / 8

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {"tile": dict(self.tile), "order": self.order, "loop_order": self.loop_order,
                "traffic_bits": self.traffic_bits, "traffic_bytes": self.traffic_bytes,
                "memory_bytes": self.memory_bytes}


def candidate_sizes(extent: int, full_below: int = 16) -> list[int]:
    """Tile sizes worth trying along a loop of ``extent``: every size when the extent is
    at most ``full_below``, else ``ceil(extent / m)`` for every tile count ``m`` (the
    smallest size giving ``m`` tiles; for b, k, c the traffic depends only on ``m``)."""
    if extent <= full_below:
        return list(range(1, extent + 1))
    return sorted({-(-extent // m) for m in range(1, extent + 1)})


_CHUNK = 1 << 19


def best_tiling(spec: ConvSpec, memory_bytes: int, orders=None) -> Tiling:
    """The box tiling and loop order of least exact traffic that fit ``memory_bytes``.

    Searches, for each order, every candidate size (:func:`candidate_sizes`) of
    ``b, k, h, w, r, s`` and, for each, the largest c-tile that fits (traffic never
    decreases when the c-loop is cut finer; ``docs/tiling.md``), evaluating the exact
    formula of :func:`traffic_breakdown` vectorised. Ties go to the earlier order, then
    the smaller working set.

    Raises
    ------
    ValueError
        When not even the all-ones tile fits, or for an unknown order.
    """
    orders = tuple(orders) if orders is not None else SEARCH_ORDERS
    if not orders:
        raise ValueError("orders: need at least one loop order")
    perms = [loop_order(o) for o in orders]
    best = None
    for name, found in zip(orders, _search(spec, int(memory_bytes), perms)):
        if found is not None and (best is None or found[0] < best[0]):
            best = (found[0], found[1], name)
    if best is None:
        ones = dict.fromkeys(DIMS, 1)
        need = sum(footprint_bits(spec, ones).values())
        raise ValueError(f"memory {memory_bytes} bytes is too small for {spec.name or 'the layer'}: "
                         f"the smallest tile needs {-(-need // 8)} bytes")
    vec, tile, name = best
    exact = tiling_traffic_bits(spec, tile, name)
    if exact != vec:  # the vectorised and the exact formula must agree
        raise AssertionError(f"traffic formulas disagree for {tile} {name}: {vec} != {exact}")
    return Tiling(tile, order_name(name), exact, int(memory_bytes))


def _search(spec: ConvSpec, memory_bytes: int, perms: list[str]) -> list:
    """Best (traffic_bits, tile) for each permutation (None where nothing fits)."""
    p = spec.precision
    pi, pf, po = p.p_input, p.p_filter, p.p_accum
    cap = 8 * memory_bytes
    ext = extents(spec)
    C = spec.C

    # spatial configurations (t_h, t_r, t_w, t_s) with their axis tables
    def axis_cfgs(axis: Axis, n_out: int, n_ker: int):
        cfgs = []
        for to in candidate_sizes(n_out):
            for tk in candidate_sizes(n_ker, full_below=4):
                cfgs.append((to, tk, axis_table(axis, to, tk)))
        return cfgs

    hc = axis_cfgs(spec.axes[0], spec.H, spec.R)
    wc = axis_cfgs(spec.axes[1], spec.W, spec.S)
    hi, wi = np.meshgrid(np.arange(len(hc)), np.arange(len(wc)), indexing="ij")
    hi, wi = hi.ravel(), wi.ravel()

    def col(cfgs, idx, f):
        return np.array([f(c) for c in cfgs], dtype=np.int64)[idx]

    th_, tr_ = col(hc, hi, lambda c: c[0]), col(hc, hi, lambda c: c[1])
    tw_, ts_ = col(wc, wi, lambda c: c[0]), col(wc, wi, lambda c: c[1])
    xh, xw = col(hc, hi, lambda c: c[2].max_x), col(wc, wi, lambda c: c[2].max_x)
    # minimal fit (b = k = c = 1) prunes spatial configurations
    keep = pi * xh * xw + pf * tr_ * ts_ + po * th_ * tw_ <= cap
    best: list = [None] * len(perms)
    if not keep.any():
        return best
    hi, wi, th_, tr_, tw_, ts_, xh, xw = (a[keep] for a in (hi, wi, th_, tr_, tw_, ts_, xh, xw))
    htab = np.array([[v for row in c[2].table for v in row] for c in hc], dtype=np.int64)[hi]
    wtab = np.array([[v for row in c[2].table for v in row] for c in wc], dtype=np.int64)[wi]

    bs = np.array(candidate_sizes(ext["b"]), dtype=np.int64)
    ks = np.array(candidate_sizes(ext["k"]), dtype=np.int64)
    nbk = len(bs) * len(ks)
    step = max(1, _CHUNK // nbk)
    big = np.iinfo(np.int64).max
    for s0 in range(0, len(hi), step):
        sl = slice(s0, s0 + step)
        sp = {"h": th_[sl, None, None], "r": tr_[sl, None, None],
              "w": tw_[sl, None, None], "s": ts_[sl, None, None]}
        tb, tk = bs[None, :, None], ks[None, None, :]
        xhs, xws = xh[sl, None, None], xw[sl, None, None]
        rest = cap - po * tb * tk * sp["h"] * sp["w"]
        per_c = pi * tb * xhs * xws + pf * tk * sp["r"] * sp["s"]
        cmax = np.minimum(rest // per_c, C)
        ok = cmax >= 1
        if not ok.any():
            continue
        nc = -(-C // np.maximum(cmax, 1))
        tc = -(-C // nc)
        t = {"b": tb, "k": tk, "c": tc, **sp}
        n = {d: -(-ext[d] // t[d]) for d in DIMS}
        foot = (pi * tb * tc * xhs * xws + pf * tk * tc * sp["r"] * sp["s"]
                + po * tb * tk * sp["h"] * sp["w"])
        hts, wts = htab[sl, None, None, :], wtab[sl, None, None, :]
        for j, perm in enumerate(perms):
            traffic = np.where(ok, _vector_traffic(spec, perm, n, hts, wts), big)
            val = int(traffic.min())
            if val == big or (best[j] is not None and val >= best[j][0]):
                continue
            i = int(np.argmin(np.where(traffic == val, foot, big)))
            si, bi, ki = np.unravel_index(i, traffic.shape)
            tile = {"b": int(bs[bi]), "k": int(ks[ki]),
                    "c": int(np.broadcast_to(tc, traffic.shape)[si, bi, ki]),
                    "h": int(th_[s0 + si]), "w": int(tw_[s0 + si]),
                    "r": int(tr_[s0 + si]), "s": int(ts_[s0 + si])}
            best[j] = (val, tile)
    return best


def _grid(spec: ConvSpec, tiles: dict) -> dict[str, np.ndarray]:
    arrs = np.broadcast_arrays(*(np.asarray(tiles[d], dtype=np.int64) for d in DIMS))
    t = dict(zip(DIMS, arrs))
    for d, e in extents(spec).items():
        if t[d].size and (t[d].min() < 1 or t[d].max() > e):
            raise ValueError(f"tile[{d!r}] outside 1..{e} (the loop's extent)")
    return t


def _axis_arrays(axis: Axis, t_out: np.ndarray, t_ker: np.ndarray):
    """Flattened tables (last axis 3·role_out + role_ker) and max footprints per element."""
    tab = np.zeros(t_out.shape + (9,), dtype=np.int64)
    mx = np.zeros(t_out.shape, dtype=np.int64)
    for a, b in np.unique(np.stack([t_out.ravel(), t_ker.ravel()], axis=1), axis=0).tolist():
        at = axis_table(axis, a, b)
        sel = (t_out == a) & (t_ker == b)
        tab[sel] = [v for row in at.table for v in row]
        mx[sel] = at.max_x
    return tab, mx


def traffic_bits_grid(spec: ConvSpec, order: str, tiles: dict) -> np.ndarray:
    """:func:`tiling_traffic_bits` for many tilings at once: ``tiles`` maps each loop to
    an array of tile sizes (broadcast together); returns int64 bits per tiling."""
    return traffic_bits_grids(spec, [order], tiles)[order]


def traffic_bits_grids(spec: ConvSpec, orders, tiles: dict) -> dict[str, np.ndarray]:
    """:func:`traffic_bits_grid` for several orders (tables shared): order -> bits."""
    perms = {o: loop_order(o) for o in orders}
    t = _grid(spec, tiles)
    ext = extents(spec)
    n = {d: -(-ext[d] // t[d]) for d in DIMS}
    htab, _ = _axis_arrays(spec.axes[0], t["h"], t["r"])
    wtab, _ = _axis_arrays(spec.axes[1], t["w"], t["s"])
    return {o: np.broadcast_to(_vector_traffic(spec, perm, n, htab, wtab), t["b"].shape)
            for o, perm in perms.items()}


def footprint_bits_grid(spec: ConvSpec, tiles: dict) -> np.ndarray:
    """Total peak working set in bits (:func:`footprint_bits` summed) for many tilings."""
    t = _grid(spec, tiles)
    p = spec.precision
    _, xh = _axis_arrays(spec.axes[0], t["h"], t["r"])
    _, xw = _axis_arrays(spec.axes[1], t["w"], t["s"])
    return (p.p_input * t["b"] * t["c"] * xh * xw + p.p_filter * t["k"] * t["c"] * t["r"] * t["s"]
            + p.p_accum * t["b"] * t["k"] * t["h"] * t["w"])


def _vector_traffic(spec: ConvSpec, perm: str, n: dict, htab: np.ndarray, wtab: np.ndarray):
    """:func:`traffic_breakdown` summed, vectorised over broadcastable tile-count arrays
    ``n`` (int64) and flattened axis tables ``htab``/``wtab`` (last axis: 3·role + role)."""
    p = spec.precision
    pos = {d: i for i, d in enumerate(perm)}
    nontriv = {d: n[d] > 1 for d in DIMS}

    def innermost(rel):
        j = None
        for d in rel:
            v = np.where(nontriv[d], pos[d], -1)
            j = v if j is None else np.maximum(j, v)
        return j

    def reps(rel, j):
        r = 1
        for d in DIMS:
            if d not in rel:
                r = r * np.where(pos[d] < j, n[d], 1)
        return r

    j_f, j_o, j_i = (innermost(RELEVANT[a]) for a in ("filter", "output", "input"))
    filt = p.p_filter * spec.filter_elems * reps(RELEVANT["filter"], j_f)
    outp = spec.output_elems * (2 * p.p_accum * (reps(RELEVANT["output"], j_o) - 1) + p.p_output)
    loaded = reps(RELEVANT["input"], j_i) * (spec.B * spec.C) * htab[..., 0] * wtab[..., 0]
    overlap = 0
    for q, dq in enumerate(perm):
        active = nontriv[dq] & (q <= j_i)
        for d in "bc":
            if pos[d] >= q:
                active = active & ~nontriv[d]

        def role(d, q=q):
            if pos[d] < q:
                return np.zeros_like(n[d])
            if pos[d] == q:
                return np.where(nontriv[d], _ROLE_INC, _ROLE_OUTER)
            return np.where(nontriv[d], _ROLE_RESET, _ROLE_OUTER)

        if pos["k"] < q:
            kf = n["k"]
        elif pos["k"] == q:
            kf = n["k"] - 1
        else:
            kf = 1
        hv = np.take_along_axis(htab, (3 * role("h") + role("r"))[..., None] + 0 * htab[..., :1], -1)[..., 0]
        wv = np.take_along_axis(wtab, (3 * role("w") + role("s"))[..., None] + 0 * wtab[..., :1], -1)[..., 0]
        overlap = overlap + np.where(active, kf * hv * wv, 0)
    inp = p.p_input * (loaded - spec.B * spec.C * overlap)
    return inp + filt + outp
