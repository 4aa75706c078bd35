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

import itertools
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


def _channel_tiles(n: int, dim: int) -> list[int]:
    """Channel tile sizes: whole DIM blocks split evenly (ceil(blocks/p)·DIM, capped at n),
    plus the balanced splits rounded up to DIM (no partial blocks except at the edge)."""
    blocks = _ceil(n, dim)
    out = {min(n, _ceil(blocks, p) * dim) for p in range(1, blocks + 1)}
    return sorted(out | set(_splits(n, dim, n)), reverse=True)


def candidate_tiles(spec: ConvSpec, cfg: GemminiConfig = DEFAULT) -> np.ndarray:
    """Every tile of parconv's search space that fits the build, as an (n, 7) int array.

    Per axis: batch, output rows and kernel rows/cols split evenly (every ``ceil(n/p)``);
    output columns split evenly or in multiples of DIM (full I blocks); channel tiles as
    whole DIM blocks split evenly (:func:`_channel_tiles`). The fit check is the library's
    (vectorised :func:`parconv.gemmini.vendor.tile_rows`).
    """
    d = cfg.dim
    tw = sorted(set(_splits(spec.W, 1, spec.W)) | set(range(d, spec.W + 1, d)), reverse=True)
    axes = [_splits(spec.B, 1, spec.B), _splits(spec.H, 1, spec.H), tw,
            _channel_tiles(spec.K, d), _splits(spec.R, 1, spec.R), _splits(spec.S, 1, spec.S),
            _channel_tiles(spec.C, d)]
    grid = np.stack([g.ravel() for g in np.meshgrid(*[np.array(a, dtype=np.int64) for a in axes],
                                                    indexing="ij")], axis=1)
    bb, th, tw_, tk, kr, ks, tc = grid.T
    stride, dil, ds = max(spec.stride), max(spec.dilation), int(downsampled(spec))
    irows = th * stride + dil * (kr - 1)
    icols = tw_ * stride + dil * (ks - 1)
    sp = _ceil(tc, d) * bb * (irows >> ds) * (icols >> ds) + _ceil(tk, d) * kr * ks * tc
    acc = _ceil(tk, d) * bb * th * tw_
    return grid[(sp <= cfg.sp_rows_tile) & (acc <= cfg.acc_rows_tile)]


def _span_count(axis, t_out, t_k, first: bool, n_out: int, n_k: int, ds: bool) -> np.ndarray:
    """Real input positions along one axis of the first (or last) tile, vectorised over tiles."""
    if first:
        o_lo, o_hi, k_lo, k_hi = 0, np.minimum(t_out, n_out), 0, np.minimum(t_k, n_k)
    else:
        o_lo, k_lo = (_ceil(n_out, t_out) - 1) * t_out, (_ceil(n_k, t_k) - 1) * t_k
        o_hi, k_hi = n_out, n_k
    lo = np.maximum(axis.stride * o_lo + axis.dilation * k_lo - axis.padding, 0)
    hi = np.minimum(axis.stride * (o_hi - 1) + axis.dilation * (k_hi - 1) - axis.padding + 1,
                    axis.in_size)
    step = 2 if ds else 1
    return np.maximum(_ceil(hi - lo, step), 0)


def _rows_lb(axis, e_out, e_k, ds: bool, clip: bool = True):
    """At least this many real input positions along one axis for a tile of ``e_out``
    outputs and ``e_k`` kernel taps: its window less the padding on each side (``clip``),
    or the whole window capped at the input (an interior tile, ``clip=False``)."""
    win = axis.stride * (e_out - 1) + axis.dilation * (e_k - 1) + 1
    if not clip:
        return np.minimum(_ceil(win, 2 if ds else 1), axis.in_size)
    return np.maximum(_ceil(win - 2 * axis.padding, 2 if ds else 1), 0)


def tile_lower_bound(spec: ConvSpec, tiles, cfg: GemminiConfig = DEFAULT, bias: bool = False,
                     raw: bool = False) -> np.ndarray:
    """A lower bound on the modelled cycles of ANY plan (order, policy) with each tile;
    see :func:`_bound_and_estimate`."""
    return _bound_and_estimate(spec, tiles, cfg, bias, raw)[0]


def _bound_and_estimate(spec: ConvSpec, tiles, cfg: GemminiConfig, bias: bool, raw: bool):
    """(lower bound, estimate) of the modelled cycles of any plan with each tile.

    The bound: a lower bound on the modelled cycles of ANY plan (order, policy) with each tile.

    Execute and store cycles of a tile vector do not depend on the order, nor do the first
    tile (the origin, which loads both operands) and the last one (the far corner, which
    stores). :func:`parconv.gemmini.cycles.pipeline_cycles` is
    ``load₀ + Σ_t max(load_{t+1}, exec_t, store_{t−1}) + store_last``, which is at least
    ``load₀ + Σ exec + store_last`` and at least ``load₀ + exec₀ + Σ store`` (slot 0 has no
    store, slot t ≥ 1 at least store_{t−1}) and at least ``Σ load + exec_last +
    store_last`` (slot t ≥ load_{t+1}; the last slot ≥ exec_last). The first two are exact
    per tile vector: the tiles of an axis have two sizes (full, and the clamped edge), so
    the sums run over ≤ 2⁷ size classes with their multiplicities. ``Σ load`` is bounded
    below, for every order: each distinct input and weight tile is loaded at least once;
    with a reduction split (r, s or c) consecutive tiles never share an operand tile, so
    every tile reloads each operand with more than 2 tiles; without one, consecutive tiles
    differ in an output loop, so when neither operand stays resident each tile reloads at
    least one of them. Input windows are counted less the padding on each side (a tile
    loses at most that much to clipping).

    The estimate (for ranking only, not a bound): ``load₀ + Σ_t max(exec_t, reload_t,
    store_t / reduction tiles) + store_last`` over the same size classes, with reload_t
    the per-tile operand reload of the bound.

    Parameters
    ----------
    tiles : (n, 7) int array of tile vectors (each entry ≤ the layer's extent).
    """
    t = np.atleast_2d(np.asarray(tiles, dtype=np.int64))
    dims = np.array([spec.B, spec.H, spec.W, spec.K, spec.R, spec.S, spec.C], dtype=np.int64)
    n = _ceil(dims, t)
    last = dims - (n - 1) * t
    cls = [((t[:, i], n[:, i] - 1), (last[:, i], np.ones_like(n[:, i]))) for i in range(7)]
    ds = downsampled(spec)
    ah, aw = spec.axes
    total_ex, total_st, both, either, dist_in, dist_w, est = (
        np.zeros(len(t), dtype=np.int64) for _ in range(7))
    n_red = n[:, 4] * n[:, 5] * n[:, 6]
    many_in = np.prod(n[:, [0, 1, 2, 4, 5, 6]], axis=1) > 2   # not kept resident
    many_w = np.prod(n[:, 3:], axis=1) > 2
    for pick in np.ndindex(*(2,) * 7):
        v = [cls[i][p][0] for i, p in enumerate(pick)]
        cnts = [cls[i][p][1] for i, p in enumerate(pick)]
        cnt = np.prod(cnts, axis=0)
        ex = cyc.exec_cycles(*v, cfg)
        total_ex += cnt * ex
        _, q, b = store_cost(v[0] * v[1] * v[2], v[3], raw, cfg)
        st = cyc.dma_cycles(q, b, cfg)
        if pick[4] == pick[5] == pick[6] == 1:  # one store per output tile (last reduction)
            total_st += np.prod(cnts[:4], axis=0) * st
        # operand loads, with the input window clipped by at most the padding on each side
        px = v[0] * _rows_lb(ah, v[1], v[4], ds) * _rows_lb(aw, v[2], v[5], ds)
        rq, bt = cyc.run_cost(v[6] * cfg.in_bytes, cfg)
        in_q, in_b = px * rq, px * bt
        rq, bt = cyc.run_cost(v[3] * cfg.in_bytes, cfg)
        w_q, w_b = v[4] * v[5] * v[6] * rq, v[4] * v[5] * v[6] * bt
        l_in, l_w = cyc.dma_cycles(in_q, in_b, cfg), cyc.dma_cycles(w_q, w_b, cfg)
        l_both = cyc.dma_cycles(in_q * many_in + w_q * many_w, in_b * many_in + w_b * many_w, cfg)
        both += cnt * l_both
        either += cnt * np.minimum(l_in, l_w)
        # the estimate takes interior windows (no clipping)
        px = v[0] * _rows_lb(ah, v[1], v[4], ds, clip=False) * _rows_lb(aw, v[2], v[5], ds, clip=False)
        e_in, e_w = px * _ceil(v[6] * cfg.in_bytes, cfg.dma_max_request_bytes), w_q
        e_inb = px * _ceil(v[6] * cfg.in_bytes, cfg.dma_beat_bytes)
        e_both = cyc.dma_cycles(e_in * many_in + e_w * many_w, e_inb * many_in + w_b * many_w, cfg)
        reload = np.where(n_red > 1, e_both,
                          np.where(many_in & many_w,
                                   np.minimum(cyc.dma_cycles(e_in, e_inb, cfg), l_w), 0))
        est += cnt * np.maximum(np.maximum(ex, reload), st // n_red)
        if pick[3] == 1:  # each distinct input tile (b, h, w, r, s, c) is loaded at least once
            dist_in += np.prod([cnts[i] for i in (0, 1, 2, 4, 5, 6)], axis=0) * l_in
        if pick[0] == pick[1] == pick[2] == 1:  # each distinct weight tile (k, r, s, c)
            dist_w += np.prod(cnts[3:], axis=0) * l_w
    # with a reduction split every tile reloads every non-resident operand; without one,
    # consecutive tiles differ in an output loop, so each reloads at least one operand
    # unless one of them stays resident (≤ 2 tiles)
    loads = np.where(n_red > 1, both, np.where(many_in & many_w, either, 0))
    loads = np.maximum(loads, np.maximum(dist_in, dist_w))
    first = [np.minimum(t[:, i], dims[i]) for i in range(7)]
    px = first[0] * _span_count(ah, t[:, 1], t[:, 4], True, spec.H, spec.R, ds) \
        * _span_count(aw, t[:, 2], t[:, 5], True, spec.W, spec.S, ds)
    rq, bt = cyc.run_cost(first[6] * cfg.in_bytes, cfg)
    req, beats = px * rq, px * bt
    rq, bt = cyc.run_cost(first[3] * cfg.in_bytes, cfg)
    wrows = first[4] * first[5] * first[6]
    req, beats = req + wrows * rq, beats + wrows * bt
    if bias:
        opx = first[0] * first[1] * first[2]
        rq, bt = cyc.run_cost(first[3] * cfg.acc_bytes, cfg)
        req, beats = req + opx * rq, beats + opx * bt
    load0 = cyc.dma_cycles(req, beats, cfg)
    exec0 = cyc.exec_cycles(*first, cfg)
    _, q, b = store_cost(last[:, 0] * last[:, 1] * last[:, 2], last[:, 3], raw, cfg)
    store_last = cyc.dma_cycles(q, b, cfg)
    exec_last = cyc.exec_cycles(*[last[:, i] for i in range(7)], cfg)
    bound = np.maximum.reduce([load0 + total_ex + store_last, load0 + exec0 + total_st,
                               loads + exec_last + store_last])
    return bound, np.maximum(bound, load0 + est + store_last)


def cycle_floor(spec: ConvSpec, config: GemminiConfig | None = None, raw: bool = False) -> int:
    """A lower bound on the modelled cycles of ANY tiling, order and policy of ``spec``.

    The largest of three floors (``P = B·H·W`` output pixels, ``d = DIM``):

    * **execute**: every pixel meets every DIM-block of output channels, kernel tap and
      input-channel block once, at ≥ 1 cycle per pixel of a preload+compute pair, and a
      weight block of K_rows channels preloaded before a pair of I pixels costs
      ``max(I, K_rows, 4) − max(I, 4)`` more, with ``I ≤ min(W, d)``. Per (tile, output
      block, tap), splitting its channels into blocks cannot beat
      ``(channels/d)·(pair cycles + d − m)``, ``m = max(min(W, d), 4)`` (a block's pairs
      cost ≥ m), so exec ≥ ``⌈K/d⌉·R·S·max(⌈C/d⌉·P, (C/d)·(P + d − m))``;
    * **store**: each pixel leaves in ≥ ``⌈K/d⌉`` and ≥ ``⌈K·e/64⌉`` requests and
      ``⌈K·e/16⌉`` beats (e = 1, or 4 when raw), in ≥ ``⌈P·⌈K/d⌉ / acc rows⌉`` phases;
    * **load**: the used input and all weights cross the bus at least once.

    Unlike ``MACs/(min(C,d)·min(K,d))`` it charges the preloads of 7×7 layers and the
    latency-bound int8 stores of wide 1×1 layers, which no tiling avoids.
    """
    cfg = config or DEFAULT
    d, lat, fl = cfg.dim, cfg.dram_latency, cfg.dma_inflight
    px = spec.B * spec.H * spec.W
    nk = _ceil(spec.K, d)
    m = max(min(spec.W, d), cfg.min_compute_cycles)
    exe = nk * spec.R * spec.S * max(_ceil(spec.C, d) * px,
                                     spec.C * (px + max(d - m, 0)) // d)
    eb = cfg.acc_bytes if raw else cfg.in_bytes
    req = px * max(nk, _ceil(spec.K * eb, cfg.dma_max_request_bytes))
    beats = px * _ceil(spec.K * eb, cfg.dma_beat_bytes)
    phases = _ceil(px * nk, cfg.acc_rows_tile)
    store = phases * lat + max(beats, req * lat // fl)
    nbytes = (spec.input_used_elems + spec.filter_elems) * cfg.in_bytes
    load = lat + max(_ceil(nbytes, cfg.dma_beat_bytes),
                     _ceil(nbytes, cfg.dma_max_request_bytes) * lat // fl)
    return int(max(exe, store, load))


#: Output loops; parconv tries every order of those with more than one tile.
OUTPUT_LOOPS = ("b", "h", "w", "k")


def _orders(spec: ConvSpec, tile) -> list[tuple[str, ...]]:
    """Distinct output-loop orders for ``tile``: loops with a single tile do not matter."""
    dims = dict(zip(LOOPS, (spec.B, spec.H, spec.W, spec.K, spec.R, spec.S, spec.C)))
    size = dict(zip(LOOPS, tile))
    multi = [a for a in OUTPUT_LOOPS if _ceil(dims[a], size[a]) > 1]
    single = tuple(a for a in OUTPUT_LOOPS if a not in multi)
    return [single + perm + REDUCTION for perm in itertools.permutations(multi)]


def parconv_plan(spec: ConvSpec, config: GemminiConfig | None = None, bias: bool = False,
                 raw: bool = False, max_bytes: int | None = None, max_cycles: int | None = None,
                 cycle_slack: float = 0.005, max_tiles: int = 200) -> tuple[Plan, Cost]:
    """parconv's tiling: the least DRAM traffic among the (near-)fastest plans.

    Branch and bound over :func:`candidate_tiles` × every order of the output loops (with
    parconv's reuse): tile vectors are taken in increasing estimated cycles and every
    order of each is priced exactly with :func:`evaluate`; a tile whose
    :func:`tile_lower_bound` exceeds the fastest plan found by more than ``cycle_slack``
    is skipped; at most ``max_tiles`` tile vectors are priced (the search is exact within
    its space when every tile left over is pruned by the bound). The library's own
    tile under its own order with parconv's reuse is always priced first. Among the plans
    within ``cycle_slack`` of the fewest modelled cycles (and within ``max_cycles`` /
    ``max_bytes`` when given) the one moving the fewest DRAM bytes wins.

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
    return _search(spec, cfg, bias, raw, max_bytes, max_cycles, cycle_slack, max_tiles)


@lru_cache(maxsize=512)
def _search(spec, cfg, bias, raw, max_bytes, max_cycles, cycle_slack, max_tiles):
    tiles = candidate_tiles(spec, cfg)
    if not len(tiles):
        raise ValueError(f"no tile fits this Gemmini build for {spec.describe()}")
    lb, est = _bound_and_estimate(spec, tiles, cfg, bias, raw)
    rank = np.lexsort((-np.prod(tiles, axis=1), lb, est))
    priced = []

    def price(plan):
        c = evaluate(spec, plan, cfg, bias, raw)
        if max_bytes is None or c.dram_bytes["total"] <= max_bytes:
            priced.append((c.cycles, c.dram_bytes["total"], plan, c))

    # the library's own tile under its order with parconv's reuse never costs more than
    # the library's execution, so the search can only improve on it
    try:
        price(Plan(vendor_plan(spec, cfg).tile, LIBRARY_ORDER, "parconv"))
    except ValueError:  # non-square layer: no library tile
        pass
    done = 0
    for i in rank:
        if priced and lb[i] > min(t[0] for t in priced) * (1 + cycle_slack):
            continue  # no order of this tile can be among the fastest
        if done >= max_tiles:
            break
        done += 1
        tile = tuple(int(v) for v in tiles[i])
        for order in _orders(spec, tile):
            price(Plan(tile, order, "parconv"))
    if not priced:
        raise ValueError(f"no candidate tiling moves at most {max_bytes} DRAM bytes")
    fastest = min(t[0] for t in priced)
    limit = fastest * (1 + cycle_slack)
    if max_cycles is not None:
        limit = min(limit, max(max_cycles, fastest))
    ok = [t for t in priced if t[0] <= limit]
    _, _, plan, cost = min(ok, key=lambda t: (t[1], t[0]))
    return plan, cost


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
           "compare", "candidate_tiles", "tile_lower_bound", "cycle_floor", "tile_fits"]
