"""An α-β-γ time model of the grid algorithm, evaluated on its exact message schedule.

A :class:`Machine` describes where the layer runs: per collective kind (``allgather``,
``reduce_scatter``, ``alltoallv``) a latency ``alpha`` (seconds per algorithm step) and an
inverse bandwidth ``beta`` (seconds per byte received), inside a node (``intra``) and
across nodes (``inter``, per NIC, shared by the ranks of a node); ``gamma`` (seconds per
multiply-accumulate of the local kernel) per dtype class; ``copy`` (seconds per byte
written when packing buffers); ranks and cores per node. Built-in presets
(:data:`PRESETS`): ``ib-hdr`` and ``ib-ndr`` (published InfiniBand figures,
docs/timemodel.md cites them) and ``this-machine`` (calibrated here with ``parconv
calibrate``). :func:`load_machine` reads a preset name or a JSON/TOML file.

:func:`predict` builds every rank's schedule (:mod:`parconv.planner.schedule`, the one
the MPI runtime executes; one schedule per block class at large P, as
:mod:`parconv.planner.simulate`) and charges each operation of each rank by the algorithm MPICH
uses for that collective (:func:`collective_seconds`), plus the local kernel and the
packing copies of the runtime, phase by phase. The step time is the maximum over ranks
of the sum of its phases (the runtime runs them one after another); with ``overlap`` the
communication of a rank is hidden behind its compute (``packing + max(comm, compute)``),
an idealised overlap model.

:func:`best_grid_by_time` searches the planner's candidate grids
(:func:`parconv.planner.plan.candidate_grids`) for the least predicted step time. It is exact
over all candidates: grids are visited in increasing order of a lower bound on their
predicted time (mean compute + the cheapest β times the mean received bytes, both ≤ the
busiest rank's) and the search stops once the bound exceeds the best time found.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .planner.partition import Grid, check_grid
from .spec import ConvSpec

#: Collective kinds of the runtime's operations (:data:`parconv.planner.schedule.KINDS`).
KINDS = ("allgather", "reduce_scatter", "alltoallv")

#: Phases the runtime times in the forward pass (``parconv run --json``'s ``phase_seconds``).
FORWARD_PHASES = ("setup", "input_allgather", "input_halo", "filter_allgather", "compute",
                  "output_reduce_scatter", "cast")
#: Collectives of one call's set-up (the block agreement, the Cartesian communicator and
#: its four fiber sub-communicators), each charged as a ``⌈log2 P⌉``-step allgather.
SETUP_COLLECTIVES = 6

#: MPICH (3.x/4.x) default thresholds of its collective algorithm selection, in bytes of
#: the whole gathered / reduced buffer (MPIR_CVAR_ALLGATHER_SHORT_MSG_SIZE,
#: MPIR_CVAR_ALLGATHER_LONG_MSG_SIZE, MPIR_CVAR_REDSCAT_COMMUTATIVE_LONG_MSG_SIZE).
ALLGATHER_SHORT = 81920
ALLGATHER_LONG = 524288
REDSCAT_LONG = 524288


def dtype_class(spec: ConvSpec) -> str:
    """The kernel-rate class of a layer's precision: ``int8`` (int8/uint8 inputs),
    ``fp32``, ``bf16``, ``fp16`` or ``fp64`` (by the input type)."""
    name = spec.precision.input
    return {"int8": "int8", "uint8": "int8", "float32": "fp32", "bfloat16": "bf16",
            "float16": "fp16", "float64": "fp64"}.get(name, name)


@dataclass(frozen=True)
class Link:
    """Latency ``alpha`` (s per algorithm step) and ``beta`` (s per byte)."""

    alpha: float
    beta: float


@dataclass(frozen=True)
class Machine:
    """A node type and its network, for :func:`predict`.

    Attributes
    ----------
    name : preset or file name.
    ranks_per_node : MPI ranks placed on one node (consecutive ranks share a node).
    cores_per_node : cores of a node; more ranks than cores slow every rank's compute
        and packing by ``ranks on the node / cores`` (oversubscription).
    intra, inter : ``{kind: Link}`` within a node and across nodes. ``inter`` betas are
        per NIC: a rank's share is ``beta × ranks_per_node / nics_per_node``.
    gamma : ``{dtype class: seconds per multiply-accumulate}`` of the local kernel.
    copy : seconds per byte written by the runtime's packing copies.
    setup : seconds of one call's local set-up (schedule, validation; the ``setup``
        phase adds :data:`SETUP_COLLECTIVES` latency-only collectives; the runtime times
        it as the wall time outside its phases).
    nics_per_node : network adapters per node.
    source : where the figures come from.
    """

    name: str
    ranks_per_node: int
    cores_per_node: int
    intra: dict[str, Link]
    inter: dict[str, Link]
    gamma: dict[str, float]
    copy: float
    setup: float = 0.0
    nics_per_node: int = 1
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def link(self, kind: str, spans_nodes: bool, procs: int) -> Link:
        """The per-rank α, β of ``kind``: ``inter`` (β shared by the node's ranks on its
        NICs) when the communicator spans nodes, else ``intra``."""
        if not spans_nodes:
            return self.intra[kind]
        lk = self.inter[kind]
        share = max(1, min(self.ranks_per_node, procs)) / max(1, self.nics_per_node)
        return Link(lk.alpha, lk.beta * share)

    def oversubscription(self, procs: int) -> float:
        """Slow-down of compute and packing: ranks on a node ÷ its cores (≥ 1)."""
        return max(1.0, min(self.ranks_per_node, procs) / max(1, self.cores_per_node))

    def gamma_for(self, spec: ConvSpec) -> float:
        """Seconds per MAC for the layer's dtype class.

        Raises
        ------
        ValueError
            If the machine has no rate for that class.
        """
        cls = dtype_class(spec)
        if cls not in self.gamma:
            raise ValueError(f"machine {self.name!r} has no kernel rate for {cls} "
                             f"(it has {', '.join(sorted(self.gamma))}); calibrate it")
        return self.gamma[cls]

    def with_ranks_per_node(self, n: int) -> Machine:
        """A copy with ``ranks_per_node = n`` (cores grow with it when they were equal)."""
        if n < 1:
            raise ValueError(f"ranks per node must be positive, got {n}")
        cores = n if self.cores_per_node == self.ranks_per_node else self.cores_per_node
        return Machine(self.name, n, cores, self.intra, self.inter, self.gamma, self.copy,
                       self.setup, self.nics_per_node, self.source, self.extra)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["intra"] = {k: asdict(v) for k, v in self.intra.items()}
        d["inter"] = {k: asdict(v) for k, v in self.inter.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Machine:
        """Build from :meth:`to_dict`'s form (JSON or TOML).

        Raises
        ------
        ValueError
            For a missing kind or a negative / non-finite figure.
        """
        try:
            links = {}
            for side in ("intra", "inter"):
                links[side] = {k: Link(float(v["alpha"]), float(v["beta"]))
                               for k, v in d[side].items()}
                missing = [k for k in KINDS if k not in links[side]]
                if missing:
                    raise ValueError(f"{side} lacks {', '.join(missing)}")
            m = cls(str(d.get("name", "machine")), int(d["ranks_per_node"]),
                    int(d.get("cores_per_node", d["ranks_per_node"])), links["intra"],
                    links["inter"], {k: float(v) for k, v in d["gamma"].items()},
                    float(d["copy"]), float(d.get("setup", 0.0)), int(d.get("nics_per_node", 1)),
                    str(d.get("source", "")),
                    dict(d.get("extra", {})))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"machine description: missing or bad field {exc}") from None
        figures = [m.copy, m.setup, *m.gamma.values()] + [x for s in (m.intra, m.inter)
                                                 for lk in s.values() for x in (lk.alpha, lk.beta)]
        if not all(math.isfinite(x) and x >= 0 for x in figures):
            raise ValueError("machine description: every alpha, beta, gamma and copy must be "
                             "a finite number >= 0")
        if m.ranks_per_node < 1 or m.cores_per_node < 1 or m.nics_per_node < 1:
            raise ValueError("machine description: ranks, cores and NICs per node must be >= 1")
        return m

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _uniform(alpha: float, beta: float, reduce_beta: float = 0.0) -> dict[str, Link]:
    return {"allgather": Link(alpha, beta), "alltoallv": Link(alpha, beta),
            "reduce_scatter": Link(alpha, beta + reduce_beta)}


#: Kernel rates (s/MAC) of this machine's cores (AMD EPYC, AVX2, one thread; fp32 ≈ 69
#: GFLOP/s, bench/results/kernels.md) and a packing copy rate of 0.25 ns per byte written
#: (4 GB/s: the runtime writes freshly allocated buffers, first touch included; a copy
#: into warm, cached memory runs at ≈ 0.05 ns/B). The cluster presets assume cores as
#: fast as these.
_THIS_GAMMA = {"fp32": 2.9e-11, "int8": 3.0e-11, "bf16": 3.3e-11, "fp16": 3.6e-11,
               "fp64": 5.8e-11}
_THIS_COPY = 2.5e-10
#: Shared-memory MPI inside a node (typical MPICH/Open MPI figures: ~0.4 µs, ~8 GB/s per
#: rank pair), and the local reduction of reduce-scatter (≈ 0.1 ns/B, memory bound).
_SHM = (0.4e-6, 1 / 8e9)
_REDUCE = 1e-10

PRESETS: dict[str, dict[str, Any]] = {
    "ib-hdr": {
        "name": "ib-hdr", "ranks_per_node": 64, "cores_per_node": 64, "nics_per_node": 1,
        "intra": {k: asdict(v) for k, v in _uniform(*_SHM, _REDUCE).items()},
        "inter": {k: asdict(v) for k, v in _uniform(1.0e-6, 1 / 24e9, _REDUCE).items()},
        "gamma": _THIS_GAMMA, "copy": _THIS_COPY,
        "source": "InfiniBand HDR 200 Gb/s fat tree (ConnectX-6: 200 Gb/s, sub-600 ns "
                  "adapter latency; alpha 1.0 us = adapter + switch hops + MPI software; "
                  "beta = 1/24 GB/s per NIC shared by 64 ranks); docs/timemodel.md",
    },
    "ib-ndr": {
        "name": "ib-ndr", "ranks_per_node": 112, "cores_per_node": 112, "nics_per_node": 1,
        "intra": {k: asdict(v) for k, v in _uniform(*_SHM, _REDUCE).items()},
        "inter": {k: asdict(v) for k, v in _uniform(0.9e-6, 1 / 48e9, _REDUCE).items()},
        "gamma": _THIS_GAMMA, "copy": _THIS_COPY,
        "source": "InfiniBand NDR 400 Gb/s fat tree (ConnectX-7: 400 Gb/s; alpha 0.9 us; "
                  "beta = 1/48 GB/s per NIC shared by 112 ranks); docs/timemodel.md",
    },
}


def this_machine() -> dict[str, Any]:
    """The ``this-machine`` preset: the file named by ``$PARCONV_MACHINE`` (what
    ``parconv calibrate --out FILE`` wrote) when set, else :data:`THIS_MACHINE`."""
    import os

    path = os.environ.get("PARCONV_MACHINE")
    if path:
        try:
            return json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"PARCONV_MACHINE={path}: cannot read: {exc}") from None
    return dict(THIS_MACHINE)


#: ``this-machine`` without ``$PARCONV_MACHINE``: the network, copy and set-up figures of
#: ``mpiexec -n 2 parconv calibrate`` on the development machine (AMD EPYC, 2 cores shared
#: with other jobs, MPICH 5 shared memory; bench/results/timemodel_machine.json), and the
#: kernel rates of bench/results/kernels.md (single thread, thread CPU time: the rates of
#: an undisturbed core; the calibration's own, taken under load, are slower).
_THIS_LINKS = {"allgather": {"alpha": 4.32e-06, "beta": 6.95e-10}, "reduce_scatter": {"alpha": 2.8e-05, "beta": 6.03e-10}, "alltoallv": {"alpha": 2.71e-05, "beta": 2.69e-10}}
THIS_MACHINE: dict[str, Any] = {
    "name": "this-machine", "ranks_per_node": 2, "cores_per_node": 2, "nics_per_node": 1,
    "intra": _THIS_LINKS, "inter": _THIS_LINKS,
    "gamma": _THIS_GAMMA, "copy": _THIS_COPY, "setup": 0.000653,
    "source": "parconv calibrate, 2 ranks, this machine (kernel rates: bench/results/kernels.md)",
}


def load_machine(text: str) -> Machine:
    """A preset name (``ib-hdr``, ``ib-ndr``, ``this-machine``) or a JSON / TOML file.

    Raises
    ------
    ValueError
        For an unknown preset, an unreadable file or a bad description.
    """
    if text in PRESETS:
        return Machine.from_dict(PRESETS[text])
    if text == "this-machine":
        return Machine.from_dict(this_machine())
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"--machine {text!r}: not a preset ({', '.join([*PRESETS, 'this-machine'])}) "
                         "and not a file")
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--machine {text}: cannot read: {exc}") from None
    return Machine.from_dict(data)


# ----------------------------------------------------------------------------- collectives


def _log2(q: int) -> int:
    return max(0, math.ceil(math.log2(q))) if q > 1 else 0


def collective_steps(kind: str, q: int, total_bytes: int, peers: int = 0) -> int:
    """Latency steps of one collective as MPICH selects its algorithm.

    * ``allgather`` (``MPI_Allgatherv``, total gathered bytes ``n``): recursive doubling
      (``log2 q`` steps) when ``q`` is a power of two and ``n`` < 512 KiB; Bruck
      (``⌈log2 q⌉``) when ``n`` < 80 KiB; otherwise the ring (``q − 1``).
    * ``reduce_scatter`` (commutative sum): recursive halving (``⌈log2 q⌉`` steps, one
      more for non-powers of two) when the whole buffer is < 512 KiB, else pairwise
      exchange (``q − 1``).
    * ``alltoallv``: one message per peer with a non-empty count (``peers``; MPICH's
      scattered algorithm posts no message for a zero count).
    """
    if q <= 1:
        return 0
    pow2 = q & (q - 1) == 0
    if kind == "allgather":
        if pow2 and total_bytes < ALLGATHER_LONG:
            return _log2(q)
        if total_bytes < ALLGATHER_SHORT:
            return _log2(q)
        return q - 1
    if kind == "reduce_scatter":
        if total_bytes < REDSCAT_LONG:
            return _log2(q) + (0 if pow2 else 1)
        return q - 1
    if kind == "alltoallv":
        return peers
    raise ValueError(f"unknown collective kind {kind!r}")


def collective_seconds(kind: str, link: Link, q: int, recv_bytes: int, send_bytes: int,
                       total_bytes: int, peers: int = 0) -> float:
    """α·steps + β·bytes of one rank in one collective.

    Bytes: the rank's received bytes for allgather and reduce-scatter (the runtime's
    payload, :mod:`parconv.planner.schedule`; a ring or pairwise schedule forwards as
    much as it receives), the larger of received and sent for the alltoallv (sends and
    receives proceed concurrently on a full-duplex link). ``total_bytes`` (the gathered or
    reduced buffer) selects the algorithm (:func:`collective_steps`).
    """
    if q <= 1:
        return 0.0
    steps = collective_steps(kind, q, total_bytes, peers)
    moved = max(recv_bytes, send_bytes) if kind == "alltoallv" else recv_bytes
    return link.alpha * steps + link.beta * moved


def op_seconds(o, machine: Machine, procs: int, spans: bool | None = None
               ) -> tuple[float, int]:
    """(seconds, latency steps) of one rank's :class:`~parconv.planner.schedule.OpSchedule`.

    The communicator spans nodes when its first and last members (global ranks,
    ascending) sit on different nodes (consecutive ranks fill a node), unless ``spans``
    says."""
    q = len(o.members)
    if q <= 1:
        return 0.0, 0
    rpn = machine.ranks_per_node
    if spans is None:
        spans = o.members[0] // rpn != o.members[-1] // rpn
    total = sum(o.counts)
    own = o.counts[o.index]
    if o.kind == "allgather":
        recv, send, peers = total - own, own * (q - 1), 0
        buf = total
    elif o.kind == "reduce_scatter":
        recv, send, peers = own * (q - 1), total - own, 0
        buf = total
    else:
        recv = total - own
        send = sum(o.send_counts) - o.send_counts[o.index]
        peers = max(sum(1 for j, c in enumerate(o.counts) if c and j != o.index),
                    sum(1 for j, c in enumerate(o.send_counts) if c and j != o.index))
        buf = 0
    it = o.itemsize
    lk = machine.link(o.kind, spans, procs)
    steps = collective_steps(o.kind, q, buf * it, peers)
    return collective_seconds(o.kind, lk, q, recv * it, send * it, buf * it, peers), steps


# ----------------------------------------------------------------------------- prediction


@dataclass
class Prediction:
    """Predicted seconds of one layer on one grid, per rank and phase.

    Attributes
    ----------
    comm, pack, compute : ``{phase: float array over ranks}``: the collective's α-β time,
        the packing copies, the local kernel (``compute`` phase only).
    steps : ``{phase: int array over ranks}`` latency steps charged.
    overlap : whether the rank's time is ``pack + max(comm, compute)`` instead of the sum.
    """

    spec: ConvSpec
    grid: Grid
    machine: Machine
    pass_: str
    comm: dict[str, np.ndarray]
    pack: dict[str, np.ndarray]
    compute: dict[str, np.ndarray]
    steps: dict[str, np.ndarray]
    overlap: bool = False

    @property
    def phases(self) -> tuple[str, ...]:
        return tuple(self.comm)

    def phase_seconds(self, phase: str) -> np.ndarray:
        return self.comm[phase] + self.pack[phase] + self.compute[phase]

    @property
    def rank_seconds(self) -> np.ndarray:
        """Predicted time of each rank."""
        comm = sum(self.comm.values())
        pack = sum(self.pack.values())
        comp = sum(self.compute.values())
        return pack + (np.maximum(comm, comp) if self.overlap else comm + comp)

    @property
    def step_seconds(self) -> float:
        """Predicted step time: the slowest rank's."""
        return float(self.rank_seconds.max())

    @property
    def busiest_rank(self) -> int:
        return int(np.argmax(self.rank_seconds))

    def summary(self) -> dict[str, dict[str, float]]:
        """``{phase or "total": {"max", "mean", "min"}}`` of predicted seconds over ranks,
        plus the busiest rank's split into communication, packing and compute."""
        out = {}
        for ph in self.phases:
            v = self.phase_seconds(ph)
            out[ph] = {"max": float(v.max()), "mean": float(v.mean()), "min": float(v.min())}
        t = self.rank_seconds
        out["total"] = {"max": float(t.max()), "mean": float(t.mean()), "min": float(t.min())}
        return out

    def rank(self, r: int) -> dict[str, Any]:
        return {"rank": r, "seconds": float(self.rank_seconds[r]),
                "phases": {ph: {"comm": float(self.comm[ph][r]), "pack": float(self.pack[ph][r]),
                                "compute": float(self.compute[ph][r]),
                                "steps": int(self.steps[ph][r])} for ph in self.phases}}

    def to_dict(self, include_ranks: bool = False) -> dict[str, Any]:
        b = self.busiest_rank
        d = {"machine": self.machine.name, "pass": self.pass_, "overlap": self.overlap,
             "grid": self.grid.as_dict(), "step_seconds": self.step_seconds,
             "busiest_rank": self.rank(b), "summary": self.summary()}
        if include_ranks:
            d["ranks"] = [self.rank(r) for r in range(self.grid.size)]
        return d


def fiber_geometry(grid: Grid, keep, ranks_per_node: int) -> tuple[np.ndarray, np.ndarray]:
    """For every rank: its position in the communicator of the fiber varying the axes
    ``keep`` (row-major over the kept axes, as :func:`~parconv.planner.schedule.fiber_members`)
    and whether that communicator spans nodes (its first and last members, the ranks
    with the kept coordinates all 0 / all maximal, sit on different nodes)."""
    dims = grid.dims
    strides = [int(np.prod(dims[i + 1:])) for i in range(5)]
    kdims = [d for d, k in zip(dims, keep) if k]
    kstrides = {i: int(np.prod(kdims[j + 1:])) for j, i in enumerate(i for i in range(5) if keep[i])}
    shp = [[1] * 5 for _ in range(5)]
    pos = np.zeros(dims, dtype=np.int64)
    first = np.zeros(dims, dtype=np.int64)
    span = 0
    for i in range(5):
        shp[i][i] = dims[i]
        c = np.arange(dims[i], dtype=np.int64).reshape(shp[i])
        if keep[i]:
            pos = pos + c * kstrides[i]
            span += (dims[i] - 1) * strides[i]
        else:
            first = first + c * strides[i]
    pos = np.broadcast_to(pos, dims).ravel()
    first = np.broadcast_to(first, dims).ravel()
    return pos, (first // ranks_per_node) != ((first + span) // ranks_per_node)


def _class_schedules(spec: ConvSpec, grid: Grid):
    """(representative schedules, class of each rank): one
    :func:`~parconv.planner.schedule.build_schedule` per block class
    (:func:`parconv.planner.simulate.block_classes`, whose derivation of members and
    positions from the grid is checked there)."""
    from .planner import schedule as sched_mod
    from .planner.simulate import block_classes

    rep, cls = block_classes(spec, grid)
    reps = [sched_mod.build_schedule(spec, grid, int(r)) for r in rep]
    return reps, cls


def _pack_bytes(s, spec: ConvSpec) -> dict[str, int]:
    """Bytes the runtime's forward pass writes when packing, per phase (execute.py):
    the allgather send block; the zeroed window, its self part, the halo send segments
    (packed, then concatenated) and the received pieces; the zeroed partial output; the
    cast (read the accumulator, write the output)."""
    p = spec.precision
    pi, pa, po = p.p_input // 8, p.p_accum // 8, p.p_output // 8
    z = s.sizes
    b, c_blk, k_blk = z["b"], z["c_blk"], z["k_blk"]
    (wr0, wr1), (wc0, wc1) = s.window
    halo = s.ops["input_halo"]
    h_recv, h_send = halo.recv_bytes, halo.send_bytes
    out_hw = z["out_h"] * z["out_w"]
    n_out = z["k_o"] * b * out_hw
    return {
        "input_allgather": pi * z["c_own"] * b * len(s.used_rows) * len(s.used_cols),
        "input_halo": pi * b * c_blk * ((wr1 - wr0) * (wc1 - wc0) + len(s.self_rows)
                                        * len(s.self_cols)) + 2 * h_send + h_recv,
        "filter_allgather": 0,
        "compute": pa * k_blk * b * out_hw,
        "output_reduce_scatter": 0,
        "cast": n_out * (pa + po) + (2 * n_out * pa if p.is_integer else 0),
    }


def local_macs(s, spec: ConvSpec) -> int:
    """Multiply-accumulates of one rank's local kernel (every tap of every output of its
    block, padding taps included: the kernel's panels hold them as zeros)."""
    z = s.sizes
    return z["b"] * z["k_blk"] * z["c_blk"] * z["out_h"] * z["out_w"] * spec.R * spec.S


def _op_arrays(o, pos: np.ndarray, spans: np.ndarray, machine: Machine, procs: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, steps) arrays of one operation for ranks of one block class that sit at
    positions ``pos`` of their communicators, which span nodes where ``spans``
    (vectorised :func:`op_seconds`; equal to it rank by rank, tested)."""
    q = len(o.members)
    n = len(pos)
    if q <= 1:
        return np.zeros(n), np.zeros(n, dtype=np.int64)
    counts = np.asarray(o.counts, dtype=np.int64)
    total = int(counts.sum())
    it = o.itemsize
    if o.kind == "alltoallv":   # the class fixes the plane position: one value
        secs = np.empty(n)
        stp = np.empty(n, dtype=np.int64)
        for flag in (False, True):
            sel = spans == flag
            if sel.any():
                t, k = op_seconds(o, machine, procs, spans=flag)
                secs[sel], stp[sel] = t, k
        return secs, stp
    own = counts[pos]
    recv = (total - own) if o.kind == "allgather" else own * (q - 1)
    steps = collective_steps(o.kind, q, total * it)
    alpha = np.empty(n)
    beta = np.empty(n)
    for flag in (False, True):
        lk = machine.link(o.kind, flag, procs)
        alpha[spans == flag], beta[spans == flag] = lk.alpha, lk.beta
    return alpha * steps + beta * (recv * it), np.full(n, steps, dtype=np.int64)


def predict(spec: ConvSpec, grid: Grid, machine: Machine, pass_: str = "forward",
            overlap: bool = False, keep_window: bool = True) -> Prediction:
    """Predicted seconds per rank and phase of one layer on one grid.

    Every rank's operations come from its exact schedule (the runtime's); ranks of one
    block class share element counts and differ only in their communicators' members
    and their position, which decide their own block and whether a communicator spans
    nodes. ``pass_`` other than ``forward`` charges the pass's operations
    (:func:`parconv.planner.schedule.derive_pass_ops`) and one kernel per compute pass
    (dgrad, wgrad: 1 each, step: 3); backward packing is not modelled.

    Raises
    ------
    ValueError
        For a grid that does not fit the layer, or a machine without the layer's kernel rate.
    """
    from .planner.adjoint import forward_source
    from .planner.schedule import FIBERS, derive_pass_ops, pass_operations

    check_grid(spec, grid)
    gamma = machine.gamma_for(spec)
    P = grid.size
    slow = machine.oversubscription(P)
    reps, cls = _class_schedules(spec, grid)
    ops_names = pass_operations(pass_, keep_window)
    phases = (FORWARD_PHASES if pass_ == "forward"
              else (*dict.fromkeys(ops_names), "compute"))
    comm = {ph: np.zeros(P) for ph in phases}
    pack = {ph: np.zeros(P) for ph in phases}
    comp = {ph: np.zeros(P) for ph in phases}
    steps = {ph: np.zeros(P, dtype=np.int64) for ph in phases}
    n_kernels = {"forward": 1, "dgrad": 1, "wgrad": 1, "step": 3}.get(pass_, 1)
    geo = {op: fiber_geometry(grid, keep, machine.ranks_per_node) for op, keep in FIBERS.items()}
    if pass_ == "forward":   # one call's set-up: local work + latency-bound collectives
        setup_link = machine.link("allgather", P > machine.ranks_per_node, P)
        comm["setup"][:] = SETUP_COLLECTIVES * _log2(P) * setup_link.alpha
        pack["setup"][:] = machine.setup * slow
    order = np.argsort(cls, kind="stable")
    bounds = np.searchsorted(cls[order], np.arange(len(reps) + 1))
    for c, s in enumerate(reps):
        ranks = order[bounds[c]:bounds[c + 1]]
        ops = derive_pass_ops(s.ops, spec, pass_, keep_window) if pass_ != "forward" else s.ops
        for op, o in ops.items():
            src = forward_source(op)
            t, n = _op_arrays(o, geo[src][0][ranks], geo[src][1][ranks], machine, P)
            comm[op][ranks] += t
            steps[op][ranks] += n
        comp["compute"][ranks] = gamma * local_macs(s, spec) * n_kernels * slow
        if pass_ == "forward":
            for ph, nb in _pack_bytes(s, spec).items():
                pack[ph][ranks] = machine.copy * nb * slow
    return Prediction(spec, grid, machine, pass_, comm, pack, comp, steps, overlap)


# ----------------------------------------------------------------------------- search


@dataclass(frozen=True)
class TimeSearch:
    """Result of :func:`best_grid_by_time`.

    ``prediction`` is the time-optimal grid's; ``bytes_grid`` / ``bytes_prediction`` the
    planner's (bytes objective) grid and its predicted time for comparison; ``evaluated``
    grids were predicted out of ``candidates``.
    """

    grid: Grid
    prediction: Prediction
    bytes_grid: Grid
    bytes_prediction: Prediction
    candidates: int
    evaluated: int
    exact: bool = True

    @property
    def speedup_over_bytes(self) -> float:
        """Predicted time of the bytes-optimal grid ÷ that of the time-optimal grid (≥ 1)."""
        return self.bytes_prediction.step_seconds / self.prediction.step_seconds

    def to_dict(self) -> dict[str, Any]:
        return {"grid": self.grid.as_dict(), "grid_text": str(self.grid),
                "step_seconds": self.prediction.step_seconds,
                "bytes_grid": self.bytes_grid.as_dict(), "bytes_grid_text": str(self.bytes_grid),
                "bytes_grid_step_seconds": self.bytes_prediction.step_seconds,
                "speedup_over_bytes": self.speedup_over_bytes,
                "candidates": self.candidates, "evaluated": self.evaluated, "exact": self.exact}


def time_lower_bound(spec: ConvSpec, grid: Grid, machine: Machine, overlap: bool = False,
                     pass_: str = "forward") -> float:
    """A lower bound on :func:`predict`'s step time for ``grid`` without building
    schedules: the mean over ranks of compute (γ × all MACs ÷ P, each MAC done once) and,
    for the forward pass, the cheapest β of the machine times the mean received bytes
    (:func:`parconv.planner.plan.total_recv_bytes` ÷ P). The busiest rank's time is at least the
    mean, and every operation is charged at least β·received (α, packing ≥ 0)."""
    from .planner.plan import total_recv_bytes

    P = grid.size
    n_kernels = {"forward": 1, "dgrad": 1, "wgrad": 1, "step": 3}.get(pass_, 1)
    macs = spec.B * spec.K * spec.C * spec.H * spec.W * spec.R * spec.S
    comp = machine.gamma_for(spec) * macs * n_kernels * machine.oversubscription(P) / P
    if pass_ != "forward":
        return comp
    betas = [machine.link(k, s, P).beta for k in KINDS for s in (False, True)]
    comm = min(betas) * total_recv_bytes(spec, grid) / P
    return max(comp, comm) if overlap else comp + comm


def rank_time_lower_bounds(spec: ConvSpec, grid: Grid, machine: Machine,
                           overlap: bool = False) -> np.ndarray:
    """Per-rank lower bounds on :func:`predict`'s forward time, without schedules: the
    rank's kernel (γ × its MACs, from its block sizes) and, per operation, β of its
    communicator (intra or inter node) × its received bytes (the planner's exact per-rank
    bytes, as :meth:`parconv.planner.plan.Plan.rank_volumes`). α steps and packing (≥ 0) are left out."""
    from .planner.partition import OPERATIONS, block_sizes
    from .planner.plan import _all_indices, _volumes
    from .planner.schedule import FIBERS
    from .planner.schedule import KINDS as OP_KINDS

    P = grid.size
    vols = _volumes(spec, grid, _all_indices(grid), send=False)
    comm = np.zeros(P)
    for op in OPERATIONS:
        _, spans = fiber_geometry(grid, FIBERS[op], machine.ranks_per_node)
        kind = OP_KINDS[op]
        beta = np.where(spans, machine.link(kind, True, P).beta, machine.link(kind, False, P).beta)
        comm += beta * np.broadcast_to(vols[op][0], grid.dims).ravel()
    sizes = [block_sizes(n, p) for n, p in zip((spec.B, spec.K, spec.C, spec.H, spec.W),
                                                 grid.dims)]
    macs = np.einsum("a,b,c,d,e->abcde", *sizes).ravel() * spec.R * spec.S
    comp = machine.gamma_for(spec) * macs * machine.oversubscription(P)
    return np.maximum(comm, comp) if overlap else comm + comp


def best_grid_by_time(spec: ConvSpec, procs: int, machine: Machine,
                      memory_bytes: int | None = None, pass_: str = "forward",
                      overlap: bool = False, max_evaluations: int | None = None) -> TimeSearch:
    """The grid of ``procs`` ranks with the least predicted step time (:func:`predict`).

    Candidates: :func:`parconv.planner.plan.candidate_grids` (the planner's), minus those whose
    busiest rank needs more than ``memory_bytes``. Visited in increasing
    :func:`time_lower_bound`; the search stops when the bound reaches the best predicted
    time, so the result is exact over all candidates (ties: the planner's tie order); a
    grid is predicted only when its per-rank bound (:func:`rank_time_lower_bounds`, the
    forward pass) does not already exceed the best time.
    ``max_evaluations`` caps the grids predicted (then the result is the best of those).

    Raises
    ------
    ValueError
        If no grid of ``procs`` ranks fits (the planner's messages).
    """
    from .planner.plan import _tie_key, candidate_grids, max_rank_memory_bytes, plan

    bytes_plan = plan(spec, procs, memory_bytes)   # raises the planner's errors
    grids = candidate_grids(spec, procs)
    bounds = sorted(((time_lower_bound(spec, g, machine, overlap, pass_), _tie_key(g), g)
                     for g in grids), key=lambda t: (t[0], t[1]))
    best: tuple[float, tuple, Prediction] | None = None
    bytes_pred = predict(spec, bytes_plan.grid, machine, pass_, overlap)
    evaluated, exact = 0, True
    for lb, tie, g in bounds:
        if best is not None and lb > best[0]:
            break
        if max_evaluations is not None and evaluated >= max_evaluations:
            exact = False
            break
        if memory_bytes is not None and max_rank_memory_bytes(spec, g) > memory_bytes:
            continue
        if (best is not None and pass_ == "forward"
                and rank_time_lower_bounds(spec, g, machine, overlap).max() > best[0]):
            continue
        pred = bytes_pred if g == bytes_plan.grid else predict(spec, g, machine, pass_, overlap)
        evaluated += 1
        key = (pred.step_seconds, tie)
        if best is None or key < best[:2]:
            best = (pred.step_seconds, tie, pred)
    if best is None or (bytes_pred.step_seconds, _tie_key(bytes_plan.grid)) < best[:2]:
        best = (bytes_pred.step_seconds, _tie_key(bytes_plan.grid), bytes_pred)
    return TimeSearch(best[2].grid, best[2], bytes_plan.grid, bytes_pred, len(grids), evaluated,
                      exact)
