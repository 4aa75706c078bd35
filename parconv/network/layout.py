"""Distributions of a 4-D activation ``(b, c, h, w)`` over the ranks (pure; no MPI).

A :class:`Layout` is a *product layout*: along each tensor axis ``a`` the indices are
split into ``m_a`` parts (``owners[a][i]`` is the part holding index ``i``), and the rank
owning block ``(j_b, j_c, j_h, j_w)`` is ``rank_of[j_b, j_c, j_h, j_w]``. When ``rank_of``
is a permutation of ``0..P-1`` every element has exactly one owner.

A convolution on grid ``P_b×P_k×P_c×P_h×P_w`` (:mod:`parconv.planner.partition`) consumes
:func:`conv_input_layout` (rank owns ``In[batch, input_channels_owned, own_rows,
own_cols]``: the c-block split over the k-fiber) and produces :func:`conv_output_layout`
(``Out[batch, output_out_channels_owned, out_rows, out_cols]``: the k-block split over the
c-fiber). A :class:`Placement` adds the order in which grid axes are raveled into world
ranks: ``("b","k","c","h","w")`` is ``MPI.Comm.Create_cart``'s row-major order; a layer
run on a communicator whose ranks are reordered (``comm.Split(0, key)``) can use another
order, so that e.g. a k-split layer's output is exactly a c-split next layer's input.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..planner.partition import GRID_AXES, Grid
from ..spec import ConvSpec

Range = tuple[int, int]
DEFAULT_ORDER = GRID_AXES


def block_index(idx: np.ndarray, n, p) -> np.ndarray:
    """Balanced block (``p`` blocks over ``n`` items, first ``n mod p`` one larger) holding
    each index (vectorised over ``idx``, ``n``, ``p``)."""
    idx, n, p = (np.asarray(v, dtype=np.int64) for v in (idx, n, p))
    q, rem = n // p, n % p
    big = rem * (q + 1)
    return np.where(idx < big, idx // (q + 1), rem + (idx - big) // np.maximum(q, 1))


def balanced_owner(n: int, p: int) -> np.ndarray:
    """Owner part of each of ``n`` indices split into ``p`` balanced blocks."""
    return block_index(np.arange(n), n, p)


def nested_owner(n: int, p1: int, p2: int) -> np.ndarray:
    """Part ``i1·p2 + i2`` of each index: block ``i1`` of ``p1`` balanced blocks of ``n``,
    then sub-block ``i2`` of that block split ``p2`` ways (balanced)."""
    idx = np.arange(n, dtype=np.int64)
    i1 = block_index(idx, n, p1)
    q, rem = divmod(n, p1)
    lo = i1 * q + np.minimum(i1, rem)
    size = q + (i1 < rem)
    return i1 * p2 + block_index(idx - lo, size, p2)


@dataclass(frozen=True)
class Placement:
    """A convolution's grid and the order in which its axes are raveled into world ranks."""

    grid: Grid
    order: tuple[str, ...] = DEFAULT_ORDER

    def __post_init__(self) -> None:
        if sorted(self.order) != sorted(GRID_AXES):
            raise ValueError(f"order {self.order!r} must be a permutation of {GRID_AXES}")
        object.__setattr__(self, "order", tuple(self.order))

    @property
    def procs(self) -> int:
        return self.grid.size

    def world_ranks(self) -> np.ndarray:
        """World rank of every grid position, indexed ``[ib, ik, ic, ih, iw]``."""
        dims = self.grid.dims
        perm = [GRID_AXES.index(a) for a in self.order]
        a = np.arange(self.grid.size, dtype=np.int64).reshape([dims[i] for i in perm])
        return a.transpose([self.order.index(ax) for ax in GRID_AXES])

    def transposed(self) -> Placement:
        """The grid with ``k`` and ``c`` swapped and the order swapped with them: its
        conv input layout equals this placement's conv output layout (same shapes)."""
        g = self.grid
        swap = {"k": "c", "c": "k"}
        return Placement(Grid(g.b, g.c, g.k, g.h, g.w), tuple(swap.get(a, a) for a in self.order))

    def __str__(self) -> str:
        s = str(self.grid)
        return s if self.order == DEFAULT_ORDER else f"{s}@{''.join(self.order)}"

    def to_dict(self) -> dict:
        return {"grid": self.grid.as_dict(), "order": "".join(self.order), "label": str(self)}


class Layout:
    """A product distribution of a ``(B, C, H, W)`` tensor over ``P`` ranks.

    Parameters
    ----------
    shape: the global shape.
    owners: per axis, the part (0..m_a-1) holding each index.
    rank_of: int array of shape ``(m_b, m_c, m_h, m_w)``: the rank owning each block.
    label: a description (e.g. ``conv-in 2x1x2x1x1``).
    """

    def __init__(self, shape, owners, rank_of: np.ndarray, label: str = "") -> None:
        self.shape = tuple(int(s) for s in shape)
        self.owners = tuple(np.asarray(o, dtype=np.int64) for o in owners)
        self.rank_of = np.asarray(rank_of, dtype=np.int64)
        self.label = label
        if len(self.shape) != 4 or len(self.owners) != 4 or self.rank_of.ndim != 4:
            raise ValueError("a layout has four axes (b, c, h, w)")
        for a, (n, o, m) in enumerate(zip(self.shape, self.owners, self.rank_of.shape)):
            if o.shape != (n,) or (n and (o.min() < 0 or o.max() >= m)):
                raise ValueError(f"axis {'bchw'[a]}: owners must be {n} parts in 0..{m - 1}")

    @property
    def blocks(self) -> tuple[int, int, int, int]:
        """Parts per axis ``(m_b, m_c, m_h, m_w)``."""
        return tuple(int(m) for m in self.rank_of.shape)

    @property
    def procs(self) -> int:
        return int(self.rank_of.size)

    @cached_property
    def key(self) -> tuple:
        """Hashable identity: equal keys mean identical ownership of every element."""
        return (self.shape, tuple(o.tobytes() for o in self.owners), self.rank_of.shape,
                self.rank_of.tobytes())

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Layout({self.label or '?'}, shape={self.shape}, blocks={self.blocks})"

    def is_partition(self) -> bool:
        """True when every element has exactly one owner (``rank_of`` a permutation)."""
        return self._is_partition

    @cached_property
    def _is_partition(self) -> bool:
        r = np.sort(self.rank_of.ravel())
        return bool(np.array_equal(r, np.arange(r.size)))

    @cached_property
    def part_bounds(self) -> tuple[tuple[np.ndarray, np.ndarray] | None, ...]:
        """Per axis, ``(lo, hi)`` arrays of each part when the parts are contiguous and in
        order (owners non-decreasing), else None."""
        out = []
        for o, n in zip(self.owners, self.sizes):
            if o.size > 1 and np.any(np.diff(o) < 0):
                out.append(None)
                continue
            hi = np.cumsum(n)
            out.append((hi - n, hi))
        return tuple(out)

    @cached_property
    def sizes(self) -> tuple[np.ndarray, ...]:
        """Per axis, the number of indices in each part."""
        return tuple(np.bincount(o, minlength=m) for o, m in zip(self.owners, self.blocks))

    @cached_property
    def rank_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(lo, hi)``, each ``(4, P)``: every rank's half-open range per axis, when all
        parts are contiguous (else None)."""
        if any(b is None for b in self.part_bounds):
            return None
        j = self.block_of_rank
        lo = np.stack([self.part_bounds[a][0][j[:, a]] for a in range(4)])
        hi = np.stack([self.part_bounds[a][1][j[:, a]] for a in range(4)])
        return lo, hi

    @cached_property
    def block_of_rank(self) -> np.ndarray:
        """``(P, 4)``: the block indices of each rank (requires a partition)."""
        if not self.is_partition():
            raise ValueError(f"{self!r}: rank_of is not a permutation of the ranks")
        out = np.empty((self.procs, 4), dtype=np.int64)
        grid = np.indices(self.blocks, dtype=np.int64).reshape(4, -1).T
        out[self.rank_of.ravel()] = grid
        return out

    def owned_elems(self) -> np.ndarray:
        """Elements owned by each rank (length P)."""
        return self._owned

    @cached_property
    def _owned(self) -> np.ndarray:
        j = self.block_of_rank
        s = self.sizes
        return s[0][j[:, 0]] * s[1][j[:, 1]] * s[2][j[:, 2]] * s[3][j[:, 3]]

    def indices(self, rank: int) -> tuple[np.ndarray, ...]:
        """Sorted global indices owned by ``rank`` along each axis (its block is their product)."""
        j = self.block_of_rank[rank]
        return tuple(np.flatnonzero(self.owners[a] == j[a]) for a in range(4))

    def ranges(self, rank: int) -> tuple[Range, ...]:
        """Half-open ranges of ``rank``'s block per axis.

        Raises
        ------
        ValueError
            If the block is not contiguous along some axis (use :meth:`indices`).
        """
        out = []
        j = self.block_of_rank[rank]
        for a, idx in enumerate(self.indices(rank)):
            pb = self.part_bounds[a]
            if pb is not None:                 # in-order parts (empty ones at their place)
                out.append((int(pb[0][j[a]]), int(pb[1][j[a]])))
                continue
            if idx.size == 0:
                out.append((0, 0))
                continue
            if idx[-1] - idx[0] + 1 != idx.size:
                raise ValueError(f"{self!r}: rank {rank}'s block is not contiguous on axis "
                                 f"{'bchw'[a]}")
            out.append((int(idx[0]), int(idx[-1]) + 1))
        return tuple(out)

    def owner_array(self) -> np.ndarray:
        """The owning rank of every element, shape ``self.shape`` (for small tensors)."""
        return self.rank_of[np.ix_(*self.owners)]

    def to_dict(self) -> dict:
        return {"label": self.label, "shape": list(self.shape), "blocks": list(self.blocks)}


def _conv_layouts(spec: ConvSpec, pl: Placement, which: str) -> Layout:
    g = pl.grid
    w5 = pl.world_ranks()
    if which == "input":
        c_own = nested_owner(spec.C, g.c, g.k)               # part ic·P_k + ik
        rank_of = w5.transpose(0, 2, 1, 3, 4).reshape(g.b, g.c * g.k, g.h, g.w)
        rows, cols = spec.in_size
        shape = spec.input_shape
    else:
        c_own = nested_owner(spec.K, g.k, g.c)               # part ik·P_c + ic
        rank_of = w5.reshape(g.b, g.k * g.c, g.h, g.w)
        rows, cols = spec.out_size
        shape = spec.output_shape
    owners = (balanced_owner(spec.B, g.b), c_own, balanced_owner(rows, g.h),
              balanced_owner(cols, g.w))
    return Layout(shape, owners, rank_of, f"conv-{'in' if which == 'input' else 'out'} {pl}")


def conv_input_layout(spec: ConvSpec, placement: Placement | Grid) -> Layout:
    """Where a convolution on ``placement`` expects its input (as
    :func:`parconv.runtime.api.block_ranges` ``"input"``, ranks in placement order)."""
    pl = placement if isinstance(placement, Placement) else Placement(placement)
    return _conv_layouts(spec, pl, "input")


def conv_output_layout(spec: ConvSpec, placement: Placement | Grid) -> Layout:
    """Where a convolution on ``placement`` leaves its output (``block_ranges`` ``"output"``)."""
    pl = placement if isinstance(placement, Placement) else Placement(placement)
    return _conv_layouts(spec, pl, "output")


def window_output_layout(src: Layout, out_hw: tuple[int, int], label: str = "") -> Layout:
    """Output of a window op (pooling) run on ``src``: same batch and channel parts and
    ranks; rows and columns of the output split into ``m_h``, ``m_w`` balanced blocks."""
    b, c, _, _ = src.shape
    owners = (src.owners[0], src.owners[1], balanced_owner(out_hw[0], src.blocks[2]),
              balanced_owner(out_hw[1], src.blocks[3]))
    return Layout((b, c, *out_hw), owners, src.rank_of, label or f"window({src.label})")


def reduce_hw_layout(src: Layout, label: str = "") -> Layout:
    """Output ``(B, C, 1, 1)`` of a reduction over ``h, w`` (global average pool) done as a
    reduce-scatter over the ``q = m_h·m_w`` ranks sharing a (b, c) block: the rank at
    spatial position ``t = j_h·m_w + j_w`` keeps sub-block ``t`` (balanced, by position) of
    the channel part ``j_c``; new channel part ``j_c·q + t``."""
    mb, mc, mh, mw = src.blocks
    q = mh * mw
    oc = src.owners[1]
    order = np.argsort(oc, kind="stable")
    pos = np.empty_like(oc)
    starts = np.concatenate([[0], np.cumsum(src.sizes[1])[:-1]])
    pos[order] = np.arange(oc.size) - starts[oc[order]]
    sub = block_index(pos, src.sizes[1][oc], q)
    b, c, _, _ = src.shape
    return Layout((b, c, 1, 1), (src.owners[0], oc * q + sub, np.zeros(1, np.int64),
                                 np.zeros(1, np.int64)),
                  src.rank_of.reshape(mb, mc * q, 1, 1), label or f"reduce-hw({src.label})")


def flatten_layout(src: Layout, label: str = "") -> Layout:
    """``(B, C, H, W) -> (B, C·H·W, 1, 1)`` without moving data: the flattened index
    ``c·H·W + h·W + w`` belongs to part ``(j_c·m_h + j_h)·m_w + j_w``."""
    b, c, h, w = src.shape
    mb, mc, mh, mw = src.blocks
    oc, oh, ow = src.owners[1:]
    flat = ((oc[:, None, None] * mh + oh[None, :, None]) * mw + ow[None, None, :]).ravel()
    z = np.zeros(1, np.int64)
    return Layout((b, c * h * w, 1, 1), (src.owners[0], flat, z, z),
                  src.rank_of.reshape(mb, mc * mh * mw, 1, 1), label or f"flatten({src.label})")


def with_channels(src: Layout, channels: int, label: str = "") -> Layout:
    """``src``'s batch/row/column parts and ranks for a tensor of ``channels`` channels,
    split into ``m_c`` balanced parts (a concat input's target)."""
    b, _, h, w = src.shape
    return Layout((b, channels, h, w), (src.owners[0], balanced_owner(channels, src.blocks[1]),
                                        *src.owners[2:]), src.rank_of, label or src.label)


def concat_layout(parts: list[Layout], label: str = "") -> Layout:
    """Channel concatenation of layouts with equal batch/row/column parts and ranks (the
    channel owners are concatenated)."""
    first = parts[0]
    for p in parts[1:]:
        if (p.rank_of.shape != first.rank_of.shape or not np.array_equal(p.rank_of, first.rank_of)
                or any(not np.array_equal(p.owners[a], first.owners[a]) for a in (0, 2, 3))):
            raise ValueError("concat: inputs must share batch/row/column parts and ranks")
    b, _, h, w = first.shape
    oc = np.concatenate([p.owners[1] for p in parts])
    return Layout((b, oc.size, h, w), (first.owners[0], oc, *first.owners[2:]), first.rank_of,
                  label or "concat")
