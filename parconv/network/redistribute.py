"""Exact redistribution of an activation between two layouts (pure; no MPI).

For product layouts ``S`` (producer) and ``D`` (consumer) of one tensor over the same
``P`` ranks, rank ``r`` (block ``s(r)`` in ``S``, ``d(r)`` in ``D``) sends rank ``r'`` the
elements of ``S``-block ``s(r)`` inside ``D``-block ``d(r')``. Along each axis the overlap
of two parts is a 1-D count ``n_a(s_a, d_a)``, so the message has
``Π_a n_a(s_a(r), d_a(r'))`` elements. Data a rank keeps (``r' = r``) moves nothing::

    kept(r) = Π_a n_a(s_a(r), d_a(r))
    send(r) = |S-block of r| − kept(r),   recv(r) = |D-block of r| − kept(r)

The per-axis tables ``n_a`` are sparse (a band for contiguous parts) and built in
``O(n_a log n_a)`` from the owner arrays; all per-rank figures are ``O(P)`` numpy, never a
loop over pairs of ranks. :meth:`Redistribution.messages` lists one rank's peers (the
product of its per-axis partner lists) for an ``Alltoallv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .layout import Layout


@dataclass(frozen=True)
class AxisOverlap:
    """Sparse per-axis overlap table: non-zero ``(src part, dst part, count)`` rows, sorted
    by src then dst."""

    src: np.ndarray
    dst: np.ndarray
    count: np.ndarray
    m_dst: int

    @classmethod
    def build(cls, src_owner: np.ndarray, dst_owner: np.ndarray, m_dst: int) -> AxisOverlap:
        keys, cnt = np.unique(src_owner * m_dst + dst_owner, return_counts=True)
        return cls(keys // m_dst, keys % m_dst, cnt.astype(np.int64), m_dst)

    def lookup(self, s: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Overlap counts at the part pairs ``(s, d)`` (vectorised; 0 where none)."""
        keys = self.src * self.m_dst + self.dst
        q = np.asarray(s, dtype=np.int64) * self.m_dst + np.asarray(d, dtype=np.int64)
        pos = np.minimum(np.searchsorted(keys, q), max(keys.size - 1, 0))
        hit = keys[pos] == q if keys.size else np.zeros(q.shape, bool)
        return np.where(hit, self.count[pos] if keys.size else 0, 0)

    def partners(self, part: int, of_src: bool) -> tuple[np.ndarray, np.ndarray]:
        """(other parts, counts) overlapping ``part`` (a src part if ``of_src``, else dst)."""
        sel = (self.src == part) if of_src else (self.dst == part)
        return (self.dst[sel] if of_src else self.src[sel]), self.count[sel]


def _check_pair(src: Layout, dst: Layout) -> None:
    if src.shape != dst.shape:
        raise ValueError(f"redistribution between different shapes {src.shape} and {dst.shape}")
    if src.procs != dst.procs:
        raise ValueError(f"redistribution between {src.procs} and {dst.procs} ranks")
    for lay in (src, dst):
        if not lay.is_partition():
            raise ValueError(f"{lay!r}: not every element has exactly one owner")


def _kept(src: Layout, dst: Layout) -> np.ndarray:
    """Elements each rank holds in both layouts (vectorised over ranks)."""
    a, b = src.rank_bounds, dst.rank_bounds
    if a is None or b is None:
        return Redistribution._kept_general(_Pair(src, dst))
    ov = np.minimum(a[1], b[1]) - np.maximum(a[0], b[0])
    np.maximum(ov, 0, out=ov)
    return ov[0] * ov[1] * ov[2] * ov[3]


@dataclass
class _Pair:
    src: Layout
    dst: Layout

    @cached_property
    def axes(self) -> tuple[AxisOverlap, ...]:
        return tuple(AxisOverlap.build(self.src.owners[a], self.dst.owners[a],
                                       self.dst.blocks[a]) for a in range(4))


def max_rank_traffic_bytes(src: Layout, dst: Layout, elem_bytes: int) -> int:
    """max over ranks of received + sent bytes of the move ``src -> dst`` (no object)."""
    _check_pair(src, dst)
    if src == dst:
        return 0
    kept = _kept(src, dst)
    return int((src.owned_elems() + dst.owned_elems() - 2 * kept).max()) * int(elem_bytes)


class Redistribution:
    """Moving a tensor from layout ``src`` to layout ``dst`` (elements of ``elem_bytes``).

    Attributes (arrays over ranks, rank order): ``send_elems``, ``recv_elems``,
    ``kept_elems``; bytes via :attr:`send_bytes`, :attr:`recv_bytes`.
    """

    def __init__(self, src: Layout, dst: Layout, elem_bytes: int) -> None:
        _check_pair(src, dst)
        self.src, self.dst, self.elem_bytes = src, dst, int(elem_bytes)
        if src == dst:
            own = src.owned_elems()
            self.kept_elems = own
            self.send_elems = self.recv_elems = np.zeros_like(own)
            return
        self.kept_elems = kept = _kept(src, dst)
        self.send_elems = src.owned_elems() - kept
        self.recv_elems = dst.owned_elems() - kept

    def _kept_general(self) -> np.ndarray:
        src, dst = self.src, self.dst
        js, jd = src.block_of_rank, dst.block_of_rank
        kept = np.ones(src.procs, dtype=np.int64)
        for a in range(4):
            bs, bd = src.part_bounds[a], dst.part_bounds[a]
            if bs is not None and bd is not None:     # contiguous parts: interval overlap
                lo = np.maximum(bs[0][js[:, a]], bd[0][jd[:, a]])
                hi = np.minimum(bs[1][js[:, a]], bd[1][jd[:, a]])
                kept *= np.maximum(hi - lo, 0)
            else:
                kept *= self.axes[a].lookup(js[:, a], jd[:, a])
        return kept

    @cached_property
    def axes(self) -> tuple[AxisOverlap, ...]:
        """The per-axis sparse overlap tables."""
        return tuple(AxisOverlap.build(self.src.owners[a], self.dst.owners[a],
                                       self.dst.blocks[a]) for a in range(4))

    @property
    def moves(self) -> bool:
        """False when no rank sends anything (the layouts agree on every element)."""
        return bool(self.send_elems.any())

    @property
    def send_bytes(self) -> np.ndarray:
        return self.send_elems * self.elem_bytes

    @property
    def recv_bytes(self) -> np.ndarray:
        return self.recv_elems * self.elem_bytes

    @cached_property
    def max_rank_traffic_bytes(self) -> int:
        """max over ranks of received + sent bytes."""
        return int((self.send_elems + self.recv_elems).max()) * self.elem_bytes

    @property
    def max_rank_recv_bytes(self) -> int:
        return int(self.recv_elems.max()) * self.elem_bytes

    @property
    def total_bytes(self) -> int:
        """Sum over ranks of sent bytes (= of received bytes)."""
        return int(self.send_elems.sum()) * self.elem_bytes

    def _peers(self, rank: int, sending: bool) -> tuple[np.ndarray, np.ndarray]:
        me = (self.src if sending else self.dst).block_of_rank[rank]
        other = self.dst if sending else self.src
        parts, counts = zip(*(self.axes[a].partners(int(me[a]), sending) for a in range(4)))
        ranks = other.rank_of[np.ix_(*parts)].ravel()
        cnt = np.einsum("i,j,k,l->ijkl", *counts).ravel() if ranks.size else ranks
        keep = (ranks != rank) & (cnt > 0)
        return ranks[keep], cnt[keep]

    def messages(self, rank: int) -> dict[str, dict[int, int]]:
        """``{"send": {peer: elems}, "recv": {peer: elems}}`` of one rank (self excluded)."""
        out = {}
        for key, sending in (("send", True), ("recv", False)):
            peers, cnt = self._peers(rank, sending)
            out[key] = dict(zip(peers.tolist(), cnt.tolist()))
        return out

    def alltoallv_counts(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-peer send and receive element counts of ``rank`` (length P, self entry 0:
        the kept block is copied locally)."""
        out = []
        for sending in (True, False):
            c = np.zeros(self.src.procs, dtype=np.int64)
            peers, cnt = self._peers(rank, sending)
            c[peers] = cnt
            out.append(c)
        return out[0], out[1]

    def to_dict(self) -> dict:
        return {"src": self.src.label, "dst": self.dst.label, "elem_bytes": self.elem_bytes,
                "moves": self.moves, "max_rank_traffic_bytes": self.max_rank_traffic_bytes,
                "max_rank_recv_bytes": self.max_rank_recv_bytes, "total_bytes": self.total_bytes}


def redistribute(src: Layout, dst: Layout, elem_bytes: int) -> Redistribution:
    """The exact redistribution from ``src`` to ``dst`` (see the module docstring)."""
    return Redistribution(src, dst, elem_bytes)
