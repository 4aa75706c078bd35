"""The cycle model shared by the analytic tiler and the simulator.

Three pieces, all from ``docs/gemmini.md``:

* **DMA** (:func:`dma_cycles`): a transfer phase of ``req`` requests carrying ``beats``
  16-byte beats takes ``latency + max(beats, ceil(req·latency / inflight))`` cycles: at
  most one beat per cycle, at most ``inflight`` requests outstanding, and the first data
  after one latency. A contiguous run of n bytes is ``ceil(n / max_request)`` requests
  and ``ceil(n / beat)`` beats (:func:`run_cost`).
* **Execute** (:func:`exec_cycles`): ``loop_conv_ws`` order och/DIM, krow, kcol,
  kch/DIM, b, orow, ocol/DIM; each DIM×DIM weight block is preloaded once; a
  preload+compute pair costs ``max(I, K_rows if new weights else 1, 4)`` cycles with
  I ≤ DIM output pixels and K_rows ≤ DIM input channels of the block.
* **Pipeline** (:func:`pipeline_cycles`): two slots; tile t costs
  ``max(load of t+1, execute of t, store of t−1)``, plus the first load and last store.
"""

from __future__ import annotations

import numpy as np

from .config import GemminiConfig


def _ceil(a, b):
    return -(-a // b)


def run_cost(nbytes, cfg: GemminiConfig):
    """(requests, beats) of one contiguous DRAM run of ``nbytes`` bytes (array-friendly)."""
    return _ceil(nbytes, cfg.dma_max_request_bytes), _ceil(nbytes, cfg.dma_beat_bytes)


def dma_cycles(req, beats, cfg: GemminiConfig):
    """Cycles of one DMA phase moving ``req`` requests / ``beats`` beats (0 when empty)."""
    req = np.asarray(req, dtype=np.int64)
    beats = np.asarray(beats, dtype=np.int64)
    lat = cfg.dram_latency
    t = lat + np.maximum(beats, _ceil(req * lat, cfg.dma_inflight))
    return np.where(req > 0, t, 0)


def compute_row_cycles(ocols, cfg: GemminiConfig):
    """Σ over the ocol/DIM blocks of one output row of max(I, min_compute_cycles)."""
    ocols = np.asarray(ocols, dtype=np.int64)
    d, m = cfg.dim, cfg.min_compute_cycles
    full, rem = ocols // d, ocols % d
    return full * max(d, m) + np.where(rem > 0, np.maximum(rem, m), 0)


def _preload_extra(i0, k_rows, cfg: GemminiConfig):
    """Extra cycles of the first pair after a weight preload: max(I0, K, 4) − max(I0, 4)."""
    m = cfg.min_compute_cycles
    return np.maximum(np.maximum(i0, k_rows), m) - np.maximum(i0, m)


def exec_cycles(batches, orows, ocols, ochs, krows, kcols, kchs, cfg: GemminiConfig):
    """Execute cycles of one ``loop_conv_ws`` tile (closed form; array-friendly)."""
    d = cfg.dim
    batches, orows, ocols, ochs, krows, kcols, kchs = (
        np.asarray(v, dtype=np.int64) for v in (batches, orows, ocols, ochs, krows, kcols, kchs))
    i0 = np.minimum(ocols, d)
    full, rem = kchs // d, kchs % d
    n_cblk = full + (rem > 0)
    per_block = batches * orows * compute_row_cycles(ocols, cfg)
    inner = (n_cblk * per_block + full * _preload_extra(i0, d, cfg)
             + np.where(rem > 0, _preload_extra(i0, rem, cfg), 0))
    return _ceil(ochs, d) * krows * kcols * inner


def pipeline_cycles(load, execute, store) -> int:
    """Total cycles of a tile sequence with two slots.

    ``load[0] + Σ_t max(load[t+1], execute[t], store[t−1]) + store[-1]``.
    """
    load = np.asarray(load, dtype=np.int64)
    execute = np.asarray(execute, dtype=np.int64)
    store = np.asarray(store, dtype=np.int64)
    if load.size == 0:
        return 0
    nxt = np.append(load[1:], 0)
    prev = np.insert(store[:-1], 0, 0)
    return int(load[0] + np.maximum(np.maximum(nxt, execute), prev).sum() + store[-1])
