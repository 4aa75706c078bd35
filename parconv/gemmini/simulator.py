"""Tile-by-tile Gemmini execution: bit-exact output, counted DRAM bytes, modelled cycles.

:func:`simulate` runs a :class:`~parconv.gemmini.tiling.Plan` the way the hardware does:

* a scratchpad slot per operand: an input or weight tile is loaded from DRAM (real pixels
  only; padding is zeros and moves nothing) when the plan's reuse policy says so, and the
  *resident* copy is used otherwise, so a wrong reuse decision gives a wrong answer;
* int8 × int8 products summed exactly into an int32 accumulator tile that stays resident
  across the reduction tiles (r, s, c); the bias (int32, optional) is loaded on the first
  reduction tile;
* on the last reduction tile the accumulator is moved out: int8 after
  :func:`requantize`, or the raw int32 accumulator (``raw=True``, for partial sums that
  the distributed runtime reduces across ranks).

It counts every DRAM byte (per array), every DMA request and beat, and every
preload/compute instruction, and prices them with :mod:`parconv.gemmini.cycles`.
:func:`parconv.gemmini.tiling.evaluate` must agree with these counts exactly (tested).

Rounding (``requantize``)
-------------------------
Gemmini's ``ACC_SCALE`` for int8 builds: ``y = nearbyint((float)acc * scale)`` in IEEE
float32 (the accumulator converted to float32, multiplied by a float32 scale, rounded
to nearest with ties to even), then ReLU (optional), then saturation to [−128, 127].
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..reference import checked_cast
from ..spec import ConvSpec
from . import cycles as cyc
from .config import DEFAULT, GemminiConfig
from .tiling import (
    INPUT_LOOPS,
    LOOPS,
    WEIGHT_LOOPS,
    Plan,
    check_spec,
    downsampled,
    input_span,
    store_cost,
    tile_fits,
)


def requantize(acc: np.ndarray, scale: float = 1.0, relu: bool = False) -> np.ndarray:
    """int32 accumulators to int8 as Gemmini's mvout does (see the module docstring)."""
    y = np.rint(np.asarray(acc).astype(np.float32) * np.float32(scale))
    if relu:
        y = np.maximum(y, np.float32(0))
    return np.clip(y, -128, 127).astype(np.int8)


@dataclass
class SimResult:
    """Output and counts of one simulated layer."""

    output: np.ndarray
    dram_bytes: dict[str, int]
    cycles: int
    load_cycles: int
    exec_cycles: int
    store_cycles: int
    n_tiles: int
    instructions: int


class _Slot:
    """One operand's scratchpad residency under a reuse policy."""

    def __init__(self, policy: str, combos: int) -> None:
        self.policy, self.small = policy, combos <= 2
        self.held: dict = {}
        self.last = None

    def get(self, key):
        """The resident buffer for ``key`` or None when it must be loaded."""
        if self.small:
            return self.held.get(key)
        if self.policy == "parconv" and key == self.last:
            return self.held[key]
        return None

    def put(self, key, buf) -> None:
        if not self.small:
            self.held.clear()
        self.held[key] = buf
        self.last = key


@lru_cache(maxsize=4096)
def _counted_exec(bb: int, oh: int, ow: int, ok: int, kr: int, ks: int, kc: int,
                  cfg: GemminiConfig) -> tuple[int, int]:
    """(cycles, instructions) of one tile by walking its preload/compute instructions."""
    d, m = cfg.dim, cfg.min_compute_cycles
    i_sizes = np.array([min(d, ow - o) for o in range(0, ow, d)])
    per_row = np.maximum(i_sizes, m)
    total = n_instr = 0
    for _k0, _r, _s, c0 in itertools.product(range(0, ok, d), range(kr), range(ks),
                                             range(0, kc, d)):
        k_rows = min(d, kc - c0)
        pairs = np.tile(per_row, bb * oh)  # b, orow, ocol/DIM
        pairs[0] = max(i_sizes[0], k_rows, m)  # the pair right after the weight preload
        total += int(pairs.sum())
        n_instr += pairs.size
    return total, n_instr


def simulate(spec: ConvSpec, x: np.ndarray, w: np.ndarray, plan: Plan,
             config: GemminiConfig | None = None, bias: np.ndarray | None = None,
             scale: float = 1.0, relu: bool = False, raw: bool = False) -> SimResult:
    """Execute ``plan`` on Gemmini's model.

    Parameters
    ----------
    spec : the layer (int8/uint8 inputs, int8 weights); padding is applied as zeros.
    x : (B, C, Hin, Win) int8/uint8, unpadded. w : (K, C, R, S) int8.
    plan : tile, order and reuse policy. bias : (K,) int32 or None.
    scale, relu : mvout scaling and activation (ignored when ``raw``).
    raw : return the int32 accumulator (B, K, H, W) instead of int8.

    Raises
    ------
    ValueError
        For unsupported dtypes or shapes, or a tile that does not fit.
    """
    cfg = config or DEFAULT
    check_spec(spec)
    if x.shape != spec.input_shape or w.shape != spec.filter_shape:
        raise ValueError(f"operand shapes {x.shape}, {w.shape} do not match the layer "
                         f"{spec.input_shape}, {spec.filter_shape}")
    if x.dtype not in (np.int8, np.uint8) or w.dtype != np.int8:
        raise ValueError(f"Gemmini takes int8/uint8 inputs and int8 weights, got {x.dtype}, {w.dtype}")
    if bias is not None and (bias.shape != (spec.K,) or bias.dtype != np.int32):
        raise ValueError(f"bias must be int32 of shape ({spec.K},), got {bias.dtype} {bias.shape}")
    if not tile_fits(spec, plan.tile, cfg):
        raise ValueError(f"tile {list(plan.tile)} does not fit this Gemmini build")
    ds = downsampled(spec)
    ah, aw = spec.axes
    dims = dict(zip(LOOPS, (spec.B, spec.H, spec.W, spec.K, spec.R, spec.S, spec.C)))
    tsz = dict(zip(LOOPS, plan.tile))
    starts = {a: range(0, dims[a], tsz[a]) for a in LOOPS}
    combos = {name: int(np.prod([len(starts[a]) for a in loops]))
              for name, loops in (("input", INPUT_LOOPS), ("weight", WEIGHT_LOOPS))}
    slots = {name: _Slot(plan.policy, combos[name]) for name in combos}
    eb, ab = cfg.in_bytes, cfg.acc_bytes
    out = np.zeros(spec.output_shape, dtype=np.int32 if raw else np.int8)
    dram = {"input": 0, "weight": 0, "bias": 0, "output": 0}
    loads, execs, stores = [], [], []
    instructions = 0
    acc = None
    (ph, pw), (sh, sw), (dh, dw) = spec.padding, spec.stride, spec.dilation

    for idx in itertools.product(*(starts[a] for a in plan.order)):
        at = dict(zip(plan.order, idx))
        lo = {a: at[a] for a in LOOPS}
        hi = {a: min(at[a] + tsz[a], dims[a]) for a in LOOPS}
        ext = {a: hi[a] - lo[a] for a in LOOPS}
        req = beats = 0
        # -- input tile: padded window of the tile, real pixels loaded from DRAM --------
        ikey = tuple(lo[a] for a in INPUT_LOOPS)
        xin = slots["input"].get(ikey)
        y0 = sh * lo["h"] + dh * lo["r"] - ph
        x0 = sw * lo["w"] + dw * lo["s"] - pw
        if xin is None:
            ny = sh * (ext["h"] - 1) + dh * (ext["r"] - 1) + 1
            nx = sw * (ext["w"] - 1) + dw * (ext["s"] - 1) + 1
            xin = np.zeros((ext["b"], ext["c"], ny, nx), dtype=np.int64)
            rlo, rhi, rst = input_span(ah, lo["h"], hi["h"], lo["r"], hi["r"], ds)
            clo, chi, cst = input_span(aw, lo["w"], hi["w"], lo["s"], hi["s"], ds)
            rows, cols = np.arange(rlo, rhi, rst), np.arange(clo, chi, cst)
            block = x[lo["b"]:hi["b"], lo["c"]:hi["c"]][:, :, rows][:, :, :, cols]
            xin[:, :, (rows - y0)[:, None], (cols - x0)[None, :]] = block
            pixels = ext["b"] * rows.size * cols.size
            dram["input"] += pixels * ext["c"] * eb
            rq, bt = cyc.run_cost(ext["c"] * eb, cfg)  # one run per pixel (NHWC)
            req, beats = req + pixels * rq, beats + pixels * bt
            slots["input"].put(ikey, xin)
        # -- weight tile -----------------------------------------------------------------
        wkey = tuple(lo[a] for a in WEIGHT_LOOPS)
        wt = slots["weight"].get(wkey)
        if wt is None:
            wt = w[lo["k"]:hi["k"], lo["c"]:hi["c"], lo["r"]:hi["r"], lo["s"]:hi["s"]].astype(np.int64)
            wrows = ext["r"] * ext["s"] * ext["c"]
            dram["weight"] += wrows * ext["k"] * eb
            rq, bt = cyc.run_cost(ext["k"] * eb, cfg)  # one run per (krow, kcol, kch) row
            req, beats = req + wrows * rq, beats + wrows * bt
            slots["weight"].put(wkey, wt)
        # -- accumulator: bias (or zeros) on the first reduction tile ----------------------
        first = lo["r"] == 0 and lo["s"] == 0 and lo["c"] == 0
        if first:
            acc = np.zeros((ext["b"], ext["k"], ext["h"], ext["w"]), dtype=np.int64)
            if bias is not None:
                acc += bias[lo["k"]:hi["k"]].astype(np.int64)[None, :, None, None]
                px = ext["b"] * ext["h"] * ext["w"]
                dram["bias"] += px * ext["k"] * ab
                rq, bt = cyc.run_cost(ext["k"] * ab, cfg)
                req, beats = req + px * rq, beats + px * bt
        loads.append(int(cyc.dma_cycles(req, beats, cfg)))
        # -- execute ---------------------------------------------------------------------
        for r in range(ext["r"]):
            for s in range(ext["s"]):
                patch = xin[:, :, dh * r: dh * r + sh * (ext["h"] - 1) + 1: sh,
                            dw * s: dw * s + sw * (ext["w"] - 1) + 1: sw]
                acc += np.einsum("bchw,kc->bkhw", patch, wt[:, :, r, s], optimize=True)
        e, ni = _counted_exec(ext["b"], ext["h"], ext["w"], ext["k"], ext["r"], ext["s"],
                              ext["c"], cfg)
        execs.append(e)
        instructions += ni
        # -- store after the last reduction tile -------------------------------------------
        last = all(lo[a] + tsz[a] >= dims[a] for a in ("r", "s", "c"))
        st = 0
        if last:
            acc32 = checked_cast(acc, "int32")
            region = (slice(lo["b"], hi["b"]), slice(lo["k"], hi["k"]),
                      slice(lo["h"], hi["h"]), slice(lo["w"], hi["w"]))
            out[region] = acc32 if raw else requantize(acc32, scale, relu)
            nbytes, rq, bt = store_cost(ext["b"] * ext["h"] * ext["w"], ext["k"], raw, cfg)
            dram["output"] += int(nbytes)
            st = int(cyc.dma_cycles(rq, bt, cfg))
        stores.append(st)

    dram = {k: int(v) for k, v in dram.items()}
    dram["total"] = sum(dram.values())
    return SimResult(out, dram, cyc.pipeline_cycles(loads, execs, stores), sum(loads),
                     sum(execs), sum(stores), len(loads), instructions)


def reference_output(spec: ConvSpec, x: np.ndarray, w: np.ndarray,
                     bias: np.ndarray | None = None, scale: float = 1.0, relu: bool = False,
                     raw: bool = False) -> np.ndarray:
    """What Gemmini must produce: :func:`parconv.reference.conv2d_reference` in int32,
    plus bias, then :func:`requantize` (or the raw int32 sum)."""
    from ..reference import conv2d_reference

    acc = conv2d_reference(x, w, spec.stride, spec.padding, spec.dilation, "int32").astype(np.int64)
    if bias is not None:
        acc += bias.astype(np.int64)[None, :, None, None]
    acc32 = checked_cast(acc, "int32")
    return acc32 if raw else requantize(acc32, scale, relu)
