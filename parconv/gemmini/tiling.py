"""Tilings of a convolution on Gemmini and their modelled cost.

A :class:`Plan` is a tile vector in the library's 7-entry form ``[batches, porows,
pocols, pochs, krows, kcols, kchs]`` (no pooling: porows = output rows), a tile-loop
order, and a reuse policy:

* ``"library"``: what ``tiled_conv`` does: loops b, h, w, k, r, s, c (outer to inner);
  weights are kept only when there are ≤ 2 weight tiles (k, r, s, c combinations),
  inputs only when there are ≤ 2 input tiles (b, h, w, r, s, c); otherwise every tile
  reloads its whole input and weight tile.
* ``"parconv"``: any order with the reduction loops (r, s, c) innermost (partial sums
  stay in the accumulator); an operand tile is loaded only when it differs from the one
  the previous tile used (plus the library's ≤ 2-tile residency).

:func:`evaluate` prices a plan exactly (every tile enumerated, vectorised) with the
model of :mod:`parconv.gemmini.cycles`; :mod:`parconv.gemmini.simulator` executes the
same plan and counts; the tests check both agree. :func:`parconv_plan` searches tile
vectors and loop orders with this same model (see ``docs/gemmini.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..spec import ConvSpec
from . import cycles as cyc
from .config import DEFAULT, GemminiConfig
from .vendor import fits, vendor_tile

#: Tile loops: batch, output rows, output cols, output channels, kernel rows/cols, input channels.
LOOPS = ("b", "h", "w", "k", "r", "s", "c")
LIBRARY_ORDER = LOOPS
REDUCTION = ("r", "s", "c")
POLICIES = ("library", "parconv")
#: Which loops index each operand's tile.
INPUT_LOOPS = ("b", "h", "w", "r", "s", "c")
WEIGHT_LOOPS = ("k", "r", "s", "c")


def _ceil(a, b):
    return -(-a // b)


@dataclass(frozen=True)
class Plan:
    """A Gemmini tiling: 7-entry tile, loop order (outer to inner), reuse policy."""

    tile: tuple[int, ...]
    order: tuple[str, ...] = LIBRARY_ORDER
    policy: str = "library"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", tuple(int(t) for t in self.tile))
        object.__setattr__(self, "order", tuple(self.order))
        if len(self.tile) != 7 or min(self.tile) <= 0:
            raise ValueError(f"tile must be 7 positive ints, got {list(self.tile)}")
        if sorted(self.order) != sorted(LOOPS):
            raise ValueError(f"order must be a permutation of {LOOPS}, got {self.order}")
        if set(self.order[4:]) != set(REDUCTION):
            raise ValueError(f"order must keep the reduction loops r, s, c innermost, got {self.order}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")

    def to_dict(self) -> dict:
        return {"tile": list(self.tile), "order": "".join(self.order), "policy": self.policy}


@dataclass
class Cost:
    """Modelled cost of a plan."""

    cycles: int
    load_cycles: int
    exec_cycles: int
    store_cycles: int
    dram_bytes: dict[str, int]
    n_tiles: int
    macs: int
    peak: int = field(repr=False, default=256)

    @property
    def utilisation(self) -> float:
        """MACs / (peak MACs per cycle · cycles)."""
        return self.macs / (self.peak * self.cycles) if self.cycles else 0.0

    def to_dict(self) -> dict:
        return {"cycles": self.cycles, "load_cycles": self.load_cycles,
                "exec_cycles": self.exec_cycles, "store_cycles": self.store_cycles,
                "dram_bytes": dict(self.dram_bytes), "n_tiles": self.n_tiles,
                "utilisation": self.utilisation}


# -- layer geometry -------------------------------------------------------------------
def check_spec(spec: ConvSpec) -> None:
    """Gemmini runs int8/uint8 inputs with int8 weights only.

    Raises
    ------
    ValueError
        Naming the unsupported dtype.
    """
    p = spec.precision
    if p.input not in ("int8", "uint8") or p.filter != "int8":
        raise ValueError(f"Gemmini supports int8/uint8 inputs with int8 weights only, got "
                         f"input {p.input}, filter {p.filter}")


def downsampled(spec: ConvSpec) -> bool:
    """The library's ``ds`` case: inputs loaded at every other pixel (stride 2, 1×1, no padding,
    even input)."""
    return (spec.stride == (2, 2) and spec.kernel == (1, 1) and spec.padding == (0, 0)
            and spec.in_size[0] % 2 == 0 and spec.in_size[1] % 2 == 0)


def extents(n: int, t: int) -> np.ndarray:
    """Sizes of the tiles of an axis of length n cut into pieces of t (last one clamped)."""
    return np.minimum(t, n - np.arange(0, n, t)).astype(np.int64)


def input_span(axis, out_lo: int, out_hi: int, k_lo: int, k_hi: int, ds: bool) -> tuple[int, int, int]:
    """(first, stop, step) of the real input positions a tile loads along one axis."""
    lo = axis.stride * out_lo + axis.dilation * k_lo - axis.padding
    hi = axis.stride * (out_hi - 1) + axis.dilation * (k_hi - 1) - axis.padding + 1
    lo, hi = max(lo, 0), min(hi, axis.in_size)
    hi = max(hi, lo)
    return lo, hi, (2 if ds else 1)


def _span_matrix(axis, n_out: int, t_out: int, n_k: int, t_k: int, ds: bool) -> np.ndarray:
    rows = []
    for o in range(0, n_out, t_out):
        row = []
        for k in range(0, n_k, t_k):
            lo, hi, st = input_span(axis, o, min(o + t_out, n_out), k, min(k + t_k, n_k), ds)
            row.append(len(range(lo, hi, st)))
        rows.append(row)
    return np.array(rows, dtype=np.int64)


def store_cost(pixels, ochs, raw: bool, cfg: GemminiConfig):
    """(bytes, requests, beats) of an mvout of ``pixels`` output pixels × ``ochs`` channels
    (int8, or int32 when ``raw``); one request per pixel per DIM-channel block."""
    eb = cfg.acc_bytes if raw else cfg.in_bytes
    d = cfg.dim
    full, rem = ochs // d, ochs % d
    req_f, beat_f = cyc.run_cost(d * eb, cfg)
    req_r, beat_r = cyc.run_cost(rem * eb, cfg)
    req = full * req_f + np.where(rem > 0, req_r, 0)
    beats = full * beat_f + np.where(rem > 0, beat_r, 0)
    return pixels * ochs * eb, pixels * req, pixels * beats


# -- exact evaluation -----------------------------------------------------------------
def evaluate(spec: ConvSpec, plan: Plan, config: GemminiConfig | None = None,
             bias: bool = False, raw: bool = False) -> Cost:
    """Modelled cycles and DRAM bytes of ``plan`` on ``spec`` (every tile enumerated).

    Parameters
    ----------
    bias : a bias vector is loaded (int32, once per output pixel on the first reduction tile).
    raw : outputs leave as int32 accumulators (no scaling) instead of int8.
    """
    cfg = config or DEFAULT
    check_spec(spec)
    _check_fits(spec, plan.tile, cfg)
    ds = downsampled(spec)
    (ah, aw) = spec.axes
    bb, th, tw, tk, tr, ts, tc = plan.tile
    ext = {"b": extents(spec.B, bb), "h": extents(spec.H, th), "w": extents(spec.W, tw),
           "k": extents(spec.K, tk), "r": extents(spec.R, tr), "s": extents(spec.S, ts),
           "c": extents(spec.C, tc)}
    n = {a: len(v) for a, v in ext.items()}
    ih = _span_matrix(ah, spec.H, th, spec.R, tr, ds)        # (n_h, n_r)
    iw = _span_matrix(aw, spec.W, tw, spec.S, ts, ds)        # (n_w, n_s)
    # broadcast everything to the 7-d grid in LOOPS order
    shp = [n[a] for a in LOOPS]

    def ax(a):
        s = [1] * 7
        s[LOOPS.index(a)] = n[a]
        return ext[a].reshape(s)

    B_, H_, W_, K_, R_, S_, C_ = (ax(a) for a in LOOPS)
    IH = ih.reshape(1, n["h"], 1, 1, n["r"], 1, 1)
    IW = iw.reshape(1, 1, n["w"], 1, 1, n["s"], 1)
    in_px = B_ * IH * IW
    rq, bt = cyc.run_cost(C_ * cfg.in_bytes, cfg)
    in_bytes, in_req, in_beats = in_px * C_ * cfg.in_bytes, in_px * rq, in_px * bt
    wrows = R_ * S_ * C_
    rq, bt = cyc.run_cost(K_ * cfg.in_bytes, cfg)
    w_bytes, w_req, w_beats = wrows * K_ * cfg.in_bytes, wrows * rq, wrows * bt
    out_px = B_ * H_ * W_
    rq, bt = cyc.run_cost(K_ * cfg.acc_bytes, cfg)
    b_bytes, b_req, b_beats = out_px * K_ * cfg.acc_bytes, out_px * rq, out_px * bt
    o_bytes, o_req, o_beats = store_cost(out_px, K_, raw, cfg)
    ex = cyc.exec_cycles(B_, H_, W_, K_, R_, S_, C_, cfg)

    perm = [LOOPS.index(a) for a in plan.order]

    def flat(arr):
        return np.broadcast_to(arr, shp).transpose(perm).ravel()

    idx = np.indices(shp).reshape(7, *shp)
    ids = {a: flat(idx[i]) for i, a in enumerate(LOOPS)}
    in_load = _load_mask(ids, INPUT_LOOPS, n, plan.policy)
    w_load = _load_mask(ids, WEIGHT_LOOPS, n, plan.policy)
    first_red = (ids["r"] == 0) & (ids["s"] == 0) & (ids["c"] == 0)
    last_red = (ids["r"] == n["r"] - 1) & (ids["s"] == n["s"] - 1) & (ids["c"] == n["c"] - 1)
    b_load = first_red & bias

    req = flat(in_req) * in_load + flat(w_req) * w_load + flat(b_req) * b_load
    beats = flat(in_beats) * in_load + flat(w_beats) * w_load + flat(b_beats) * b_load
    load = cyc.dma_cycles(req, beats, cfg)
    store = cyc.dma_cycles(flat(o_req) * last_red, flat(o_beats) * last_red, cfg)
    execute = flat(ex)
    dram = {"input": int((flat(in_bytes) * in_load).sum()),
            "weight": int((flat(w_bytes) * w_load).sum()),
            "bias": int((flat(b_bytes) * b_load).sum()),
            "output": int((flat(o_bytes) * last_red).sum())}
    dram["total"] = sum(dram.values())
    return Cost(cyc.pipeline_cycles(load, execute, store), int(load.sum()), int(execute.sum()),
                int(store.sum()), dram, int(load.size), spec.macs, cfg.peak_macs_per_cycle)


def _load_mask(ids: dict[str, np.ndarray], loops: tuple[str, ...], n: dict[str, int],
               policy: str) -> np.ndarray:
    """Which tiles (in execution order) load the operand indexed by ``loops``."""
    key = np.zeros_like(ids["b"])
    for a in loops:
        key = key * n[a] + ids[a]
    combos = int(np.prod([n[a] for a in loops]))
    if combos <= 2:  # both tiles stay resident in the two buffer halves
        first = np.zeros(key.size, dtype=bool)
        first[np.unique(key, return_index=True)[1]] = True
        return first
    if policy == "library":
        return np.ones(key.size, dtype=bool)
    return np.append(True, key[1:] != key[:-1])


def _check_fits(spec: ConvSpec, tile: tuple[int, ...], cfg: GemminiConfig) -> None:
    if not tile_fits(spec, tile, cfg):
        raise ValueError(f"tile {list(tile)} does not fit the scratchpad/accumulator halves "
                         f"({cfg.sp_rows_tile}/{cfg.acc_rows_tile} rows)")


def tile_fits(spec: ConvSpec, tile, cfg: GemminiConfig = DEFAULT) -> bool:
    """The library's fit check for ``tile`` on ``spec`` (non-square shapes use the larger
    stride; kernel dilation widens the window)."""
    return fits(list(tile), max(spec.stride), max(spec.dilation), downsampled(spec), 1, 1, cfg)


# -- the two tilers -------------------------------------------------------------------
def vendor_plan(spec: ConvSpec, config: GemminiConfig | None = None) -> Plan:
    """The library's tile and execution (``tiled_conv_auto`` + ``tiled_conv``).

    Raises
    ------
    ValueError
        For non-square layers (the library's chooser handles square ones only).
    """
    cfg = config or DEFAULT
    check_spec(spec)
    if spec.in_size[0] != spec.in_size[1] or spec.kernel[0] != spec.kernel[1] \
            or spec.stride[0] != spec.stride[1] or spec.padding[0] != spec.padding[1] \
            or spec.dilation[0] != spec.dilation[1]:
        raise ValueError("the vendor tile chooser handles square layers only (input, kernel, "
                         f"stride, padding, dilation); got {spec.describe()}")
    tile = vendor_tile(spec.B, spec.in_size[0], spec.C, spec.K, spec.H, spec.stride[0],
                       spec.padding[0], spec.R, config=cfg, kernel_dilation=spec.dilation[0])
    return Plan(tuple(tile), LIBRARY_ORDER, "library")


def _splits(n: int, dim: int = 1, most: int = 64) -> list[int]:
    """Balanced tile sizes ceil(n/p) (rounded up to a multiple of dim, capped at n)."""
    out = set()
    for p in range(1, min(n, most) + 1):
        t = _ceil(n, p)
        out.add(min(n, _ceil(t, dim) * dim))
    return sorted(out, reverse=True)


#: Output-loop orders parconv considers (reduction loops r, s, c always innermost):
#: channels innermost (inputs reused across k tiles) or outermost (weights reused across
#: spatial tiles), and batch innermost (weights reused across images).
PARCONV_ORDERS = (("b", "h", "w", "k"), ("k", "b", "h", "w"), ("h", "w", "k", "b"),
                  ("k", "h", "w", "b"))


def candidate_plans(spec: ConvSpec, cfg: GemminiConfig = DEFAULT):
    """Tile vectors (fitting, DIM-aware, balanced) × loop orders for the parconv search."""
    d = cfg.dim
    kr_opts = [spec.R] + ([1] if spec.R > 1 else [])
    for kr in kr_opts:
        ks = spec.S if kr == spec.R else 1
        found = False
        for bb in _splits(spec.B):
            for tk in _splits(spec.K, d, 16):
                for tc in _splits(spec.C, d, 16):
                    for th in _splits(spec.H):
                        if not tile_fits(spec, (bb, th, 1, tk, kr, ks, tc), cfg):
                            continue
                        head = (bb, th)
                        tail = (tk, kr, ks, tc)
                        tw_max = _max_fit(lambda w, head=head, tail=tail:
                                          tile_fits(spec, head + (w,) + tail, cfg), spec.W)
                        tws = {_ceil(spec.W, _ceil(spec.W, tw_max))}
                        if tw_max >= d:
                            tws.add(tw_max // d * d)
                        for tw in tws:
                            found = True
                            for outer in PARCONV_ORDERS:
                                yield Plan((bb, th, tw, tk, kr, ks, tc), outer + REDUCTION, "parconv")
        if found:
            return


def _max_fit(ok, hi: int) -> int:
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _quick_score(spec: ConvSpec, plan: Plan, cfg: GemminiConfig) -> tuple[float, float]:
    """Cheap (cycles, DRAM bytes) estimates used to rank candidates: interior-tile load,
    execute and store costs, with the exact number of operand loads of the order."""
    bb, th, tw, tk, kr, ks, tc = plan.tile
    n = {a: _ceil(v, t) for a, v, t in zip(LOOPS, (spec.B, spec.H, spec.W, spec.K, spec.R,
                                                    spec.S, spec.C), plan.tile)}
    ntiles = int(np.prod(list(n.values())))
    n_red = n["r"] * n["s"] * n["c"]

    def loads(loops):
        if n_red > 1:
            return ntiles
        last = max(plan.order.index(a) for a in loops if a not in REDUCTION)
        return int(np.prod([n[a] for a in plan.order[:last + 1]]))

    ih = min(spec.in_size[0], spec.stride[0] * (th - 1) + spec.dilation[0] * (kr - 1) + 1)
    iw = min(spec.in_size[1], spec.stride[1] * (tw - 1) + spec.dilation[1] * (ks - 1) + 1)
    rq, bt = cyc.run_cost(tc, cfg)
    px = bb * ih * iw
    l_in = float(cyc.dma_cycles(px * rq, px * bt, cfg))
    rq, bt = cyc.run_cost(tk, cfg)
    l_w = float(cyc.dma_cycles(kr * ks * tc * rq, kr * ks * tc * bt, cfg))
    _, srq, sbt = store_cost(bb * th * tw, tk, False, cfg)
    st = float(cyc.dma_cycles(srq, sbt, cfg)) / n_red
    ex = float(cyc.exec_cycles(bb, th, tw, tk, kr, ks, tc, cfg))
    ld = (loads(INPUT_LOOPS) * l_in + loads(WEIGHT_LOOPS) * l_w) / ntiles
    nbytes = loads(INPUT_LOOPS) * px * tc + loads(WEIGHT_LOOPS) * kr * ks * tc * tk
    return ntiles * max(ex, ld, st), float(nbytes)


def parconv_plan(spec: ConvSpec, config: GemminiConfig | None = None, bias: bool = False,
                 raw: bool = False, max_bytes: int | None = None, max_cycles: int | None = None,
                 cycle_slack: float = 0.005, keep: int = 40) -> tuple[Plan, Cost]:
    """parconv's tiling: the least DRAM traffic among the (near-)fastest plans.

    Candidates (:func:`candidate_plans`) are ranked by cheap cycle and byte estimates; the
    best ``keep`` by cycles, the best ``keep // 2`` by bytes, the largest tiles and the
    library's own tile (run with parconv's reuse) are priced exactly with :func:`evaluate`.
    Among those within ``cycle_slack`` of the fewest modelled cycles (and within
    ``max_cycles`` / ``max_bytes`` when given) the one moving the fewest DRAM bytes wins.

    Returns
    -------
    (Plan, Cost)

    Raises
    ------
    ValueError
        When nothing fits the build or no candidate meets ``max_bytes``.
    """
    cfg = config or DEFAULT
    check_spec(spec)
    return _search(spec, cfg, bias, raw, max_bytes, max_cycles, cycle_slack, keep)


@lru_cache(maxsize=512)
def _search(spec, cfg, bias, raw, max_bytes, max_cycles, cycle_slack, keep):
    cands = list(candidate_plans(spec, cfg))
    if not cands:
        raise ValueError(f"no tile fits this Gemmini build for {spec.describe()}")
    est = {p: _quick_score(spec, p, cfg) for p in cands}
    by_cycles = sorted(cands, key=lambda p: (est[p][0], -_volume(p)))
    by_bytes = sorted(cands, key=lambda p: (est[p][1], est[p][0]))
    by_volume = sorted(cands, key=lambda p: -_volume(p))
    # the library's own tile under parconv's order and reuse never costs more than the
    # library's execution, so the search can only improve on it
    own = []
    try:
        own = [Plan(vendor_plan(spec, cfg).tile, LIBRARY_ORDER, "parconv")]
    except ValueError:  # non-square layer: no library tile
        pass
    pool = list(dict.fromkeys(own + by_cycles[:keep] + by_bytes[:keep // 2] + by_volume[:keep // 4]))
    priced = []
    for p in pool:
        c = evaluate(spec, p, cfg, bias, raw)
        if max_bytes is not None and c.dram_bytes["total"] > max_bytes:
            continue
        priced.append((c.cycles, c.dram_bytes["total"], p, c))
    if not priced:
        raise ValueError(f"no candidate tiling moves at most {max_bytes} DRAM bytes")
    fastest = min(t[0] for t in priced)
    limit = fastest * (1 + cycle_slack)
    if max_cycles is not None:
        limit = min(limit, max(max_cycles, fastest))
    ok = [t for t in priced if t[0] <= limit]
    _, _, plan, cost = min(ok, key=lambda t: (t[1], t[0]))
    return plan, cost


def _volume(p: Plan) -> int:
    return int(np.prod(p.tile[:4])) * p.tile[6]


@lru_cache(maxsize=256)
def compare(spec: ConvSpec, config: GemminiConfig = DEFAULT, bias: bool = False,
            raw: bool = False) -> dict:
    """Vendor vs parconv on one layer: plans, costs and the speedup (cached)."""
    vp = vendor_plan(spec, config)
    vc = evaluate(spec, vp, config, bias, raw)
    pp, pc = parconv_plan(spec, config, bias, raw, max_bytes=vc.dram_bytes["total"],
                          max_cycles=vc.cycles)
    return {"vendor": (vp, vc), "parconv": (pp, pc), "speedup": vc.cycles / pc.cycles}


__all__ = ["LOOPS", "LIBRARY_ORDER", "Plan", "Cost", "evaluate", "vendor_plan", "parconv_plan",
           "compare", "candidate_plans", "tile_fits"]
