"""Replay of a tiling's loop nest against an explicit fast memory: the ground truth.

The replay walks the tile loops in the given order and, for every tile, derives the
elements it needs by enumerating its iterations one index at a time (independently of
the per-axis tables :mod:`parconv.tiling` uses). Fast memory is an explicit set of
resident elements per array with a capacity of ``M`` bits. Moving to a tile:

1. evict resident elements the tile does not need (an output is written back: a
   *partial* store if some of its reduction is still to come, else a *final* store);
2. load the needed elements that are not resident (an output is loaded only if it was
   touched before; its first touch starts from zero);
3. check the occupancy against the capacity (``ValueError`` when exceeded);
4. optionally compute the tile from the resident values only (``compute=True``), so
   that the schedule is checked to produce the convolution.

At the end every resident output is written back. Every load and store is counted, per
array, in elements and bits (input ``p_I``, filter ``p_F``, partial-sum stores and
reloads ``p_O`` = the accumulator precision, final stores the output precision).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from .spec import ConvSpec
from .tiling import DIMS, check_tile, extents, loop_order, tile_counts

ARRAYS = ("input", "filter", "output")


@dataclass
class ReplayResult:
    """Counts of one replay.

    Attributes
    ----------
    loads, stores : elements moved per array (``input``, ``filter``, ``output``).
    partial_stores : output stores of unfinished partial sums (included in ``stores``).
    bits : bits moved per array (loads + stores).
    total_bits : sum of ``bits``.
    peak_bits : largest fast-memory occupancy reached.
    tiles : number of tiles executed.
    output : the computed output (accumulator dtype) when run with ``compute=True``.
    """

    loads: dict[str, int]
    stores: dict[str, int]
    partial_stores: int
    bits: dict[str, int]
    total_bits: int
    peak_bits: int
    tiles: int
    output: np.ndarray | None = field(default=None, repr=False)


def _ranges(extent: int, t: int, i: int) -> range:
    return range(i * t, min((i + 1) * t, extent))


def _axis_indices(axis, outs: range, taps: range) -> list[int]:
    """Distinct real input indices read by output indices ``outs`` with taps ``taps``
    (enumerated one iteration at a time)."""
    seen = set()
    for h in outs:
        for r in taps:
            x = axis.stride * h + axis.dilation * r - axis.padding
            if 0 <= x < axis.in_size:
                seen.add(x)
    return sorted(seen)


def replay_traffic_bits(spec: ConvSpec, tile: dict, order: str, memory_bytes: int,
                        compute: bool = False, seed: int = 0) -> ReplayResult:
    """Run the tiling's loop nest against a fast memory of ``memory_bytes`` and count.

    Parameters
    ----------
    spec : the layer (keep it small: every element is tracked).
    tile, order : as for :func:`parconv.tiling.tiling_traffic_bits`.
    memory_bytes : fast-memory capacity.
    compute : also compute the convolution from resident data (random operands from
        :func:`parconv.reference.random_operands` with ``seed``) and return it.

    Raises
    ------
    ValueError
        For an invalid tile/order, or when a tile's working set exceeds the capacity.
    """
    t = check_tile(spec, tile)
    perm = loop_order(order)
    ext = extents(spec)
    n = tile_counts(spec, t)
    p = spec.precision
    width = {"input": p.p_input, "filter": p.p_filter, "output": p.p_accum}
    cap = 8 * int(memory_bytes)
    B, K, C, H, W, R, S = (ext[d] for d in "bkchwrs")
    IH, IW = spec.in_size
    ah, aw = spec.axes
    resident = {a: set() for a in ARRAYS}
    loads = dict.fromkeys(ARRAYS, 0)
    stores = dict.fromkeys(ARRAYS, 0)
    partial = 0
    done = {}  # output flat index -> reduction iterations accumulated so far
    full = C * R * S
    peak = 0
    tiles = 0
    if compute:
        from .reference import random_operands

        x, wt = random_operands(spec, seed)
        acc_dt = np.int64 if p.is_integer else np.float64
        slow_out = np.zeros((B, K, H, W), dtype=acc_dt)
        fast_val: dict[int, float] = {}

    def oflat(b, k, h, w):
        return ((b * K + k) * H + h) * W + w

    def write_back(e):
        nonlocal partial
        stores["output"] += 1
        if done[e] < full:
            partial += 1
        if compute:
            slow_out.flat[e] = fast_val.pop(e)

    for idx in itertools.product(*(range(n[d]) for d in perm)):
        tiles += 1
        i = dict(zip(perm, idx))
        rg = {d: _ranges(ext[d], t[d], i[d]) for d in DIMS}
        rows = _axis_indices(ah, rg["h"], rg["r"])
        cols = _axis_indices(aw, rg["w"], rg["s"])
        need = {
            "input": {((b * C + c) * IH + y) * IW + z
                      for b in rg["b"] for c in rg["c"] for y in rows for z in cols},
            "filter": {((k * C + c) * R + r) * S + s
                       for k in rg["k"] for c in rg["c"] for r in rg["r"] for s in rg["s"]},
            "output": {oflat(b, k, h, w) for b in rg["b"] for k in rg["k"]
                       for h in rg["h"] for w in rg["w"]},
        }
        for a in ARRAYS:
            gone = resident[a] - need[a]
            if a == "output":
                for e in sorted(gone):
                    write_back(e)
            fresh = need[a] - resident[a]
            if a == "output":
                for e in fresh:
                    if e in done:
                        loads["output"] += 1
                        if compute:
                            fast_val[e] = slow_out.flat[e]
                    elif compute:
                        fast_val[e] = 0
                    done.setdefault(e, 0)
            else:
                loads[a] += len(fresh)
            resident[a] = need[a]
        occ = sum(width[a] * len(resident[a]) for a in ARRAYS)
        if occ > cap:
            raise ValueError(f"tile {i} needs {occ} bits of fast memory, capacity is {cap} "
                             f"({memory_bytes} bytes): the tiling does not fit")
        peak = max(peak, occ)
        red = len(rg["c"]) * len(rg["r"]) * len(rg["s"])
        for e in need["output"]:
            done[e] += red
        if compute:
            _compute_tile(spec, rg, x, wt, resident, fast_val, oflat)
    for e in sorted(resident["output"]):
        write_back(e)
    bits = {a: width[a] * (loads[a] + stores[a]) for a in ARRAYS}
    # final values leave in the output precision, partial sums in the accumulator's
    bits["output"] = p.p_accum * (loads["output"] + partial) + p.p_output * (stores["output"] - partial)
    return ReplayResult(loads, stores, partial, bits, sum(bits.values()), peak, tiles,
                        slow_out if compute else None)


def _compute_tile(spec, rg, x, wt, resident, fast_val, oflat):
    """Accumulate the tile's iterations into the resident outputs, reading operands
    only through the resident sets (a missing element raises)."""
    C, R, S = spec.C, spec.R, spec.S
    IH, IW = spec.in_size
    ah, aw = spec.axes
    for b, k, h, w in itertools.product(rg["b"], rg["k"], rg["h"], rg["w"]):
        e = oflat(b, k, h, w)
        acc = fast_val[e]
        for c, r, s in itertools.product(rg["c"], rg["r"], rg["s"]):
            y, z = ah.input_index(h, r), aw.input_index(w, s)
            if not (0 <= y < IH and 0 <= z < IW):
                continue  # padding: a zero, not data
            fi = ((k * C + c) * R + r) * S + s
            xi = ((b * C + c) * IH + y) * IW + z
            if xi not in resident["input"] or fi not in resident["filter"]:
                raise AssertionError(f"operand not resident at output {(b, k, h, w)}, tap {(c, r, s)}")
            acc = acc + x.flat[xi].item() * wt.flat[fi].item()
        fast_val[e] = acc
