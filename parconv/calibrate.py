"""Measure a :class:`parconv.timemodel.Machine` on this machine (or a cluster node).

Run under ``mpiexec -n N parconv calibrate`` (N ≥ 2 for the network figures):

* **network**, per collective kind, on the world communicator (and on the node's
  shared-memory communicator when the world spans nodes): the runtime's own MPI calls
  (``Allgatherv``, ``Reduce_scatter`` of float32 sums, ``Alltoallv`` with every peer)
  over a sweep of block sizes; each point is the best over repeats of the slowest
  rank's time. α and β are the non-negative least-squares fit of
  ``T = α·steps + β·bytes`` with the steps and bytes :mod:`parconv.timemodel` charges
  for that call (so its algorithm choice is part of the fit). A ping-pong latency
  between ranks 0 and 1 is recorded beside them;
* **kernel rates** γ (seconds per multiply-accumulate) of the local numba kernel for
  each dtype class, on a few ResNet-50-like local blocks, every rank timing its own
  kernels at once (as the runtime's ranks compute at once; numba warmed first);
* **copy**: seconds per byte written by a ``(c, b, h, w) → (b, c, h, w)`` copy, the
  runtime's packing pattern;
* **setup**: the wall time of a tiny ``conv2d_distributed`` call on one rank outside
  its timed phases.

A single rank measures the kernel, copy and set-up figures only; the network figures
then come from ``network`` (a preset), else from the built-in ``this-machine``.
"""

from __future__ import annotations

import math
import platform
import time
from typing import Any

import numpy as np

from .timemodel import KINDS, THIS_MACHINE, Machine, collective_steps, load_machine

#: Bytes per member of the network sweeps.
SIZES = [8, 64, 512, 4096, 32768, 131072, 524288, 2097152]
QUICK_SIZES = [64, 4096, 131072, 1048576]

#: Local blocks (b, C, K, H_in, kernel, stride) timed for the kernel rates.
SHAPES = [(4, 64, 64, 28, 3, 1), (4, 256, 64, 14, 1, 1), (2, 128, 128, 14, 3, 1),
          (2, 3, 64, 56, 7, 2), (2, 512, 256, 7, 1, 1)]
QUICK_SHAPES = [(2, 64, 64, 14, 3, 1), (2, 256, 64, 7, 1, 1)]
CLASSES = {"fp32": ("float32", "float32"), "int8": ("int8", "int8"),
           "bf16": ("bfloat16", "bfloat16"), "fp16": ("float16", "float16"),
           "fp64": ("float64", "float64")}


def fit_alpha_beta(steps: np.ndarray, nbytes: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Non-negative least squares of ``t ≈ α·steps + β·nbytes`` (relative errors: each
    point weighted by ``1/t``, so small and large messages count alike).

    With two unknowns the non-negative solution is the unconstrained one when both are
    ≥ 0, else the best fit with one of them zero."""
    w = 1.0 / np.maximum(t, 1e-12)
    A = np.stack([steps, nbytes], axis=1).astype(float) * w[:, None]
    y = t * w
    sol, *_ = np.linalg.lstsq(A, y, rcond=None)
    if (sol >= 0).all():
        return float(sol[0]), float(sol[1])
    best = None
    for j in range(2):
        col = A[:, j]
        x = max(0.0, float(col @ y) / float(col @ col)) if col @ col > 0 else 0.0
        err = float(((col * x - y) ** 2).sum())
        cand = (x, 0.0) if j == 0 else (0.0, x)
        if best is None or err < best[0]:
            best = (err, cand)
    return best[1]


def _timed(comm, fn, repeats: int) -> float:
    """Best over repeats of the slowest rank's time of ``fn()`` (the best, not the median:
    on a machine shared with other jobs a descheduled rank adds milliseconds to some
    repeats; the least-disturbed repeat is the machine's figure)."""
    times = []
    fn()   # warm-up (connection set-up, buffer registration)
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(comm.allreduce(dt, op=_max()))
    return float(np.min(times))


def _max():
    from mpi4py import MPI

    return MPI.MAX


def sweep(comm, kind: str, sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """Time one collective kind over ``sizes`` (bytes per member) on ``comm``."""
    from mpi4py import MPI

    q = comm.Get_size()
    points = []
    for m in sizes:
        if kind == "allgather":
            send = np.ones(m, np.uint8)
            recv = np.empty(m * q, np.uint8)
            counts = [m] * q
            displs = [m * j for j in range(q)]

            def fn(send=send, recv=recv, counts=counts, displs=displs):
                comm.Allgatherv([send, MPI.BYTE], [recv, (counts, displs), MPI.BYTE])
            total, recv_b, peers = m * q, m * (q - 1), 0
        elif kind == "reduce_scatter":
            n = max(1, m // 4)
            send = np.ones(n * q, np.float32)
            recv = np.empty(n, np.float32)

            def fn(send=send, recv=recv, n=n):
                comm.Reduce_scatter(send, recv, recvcounts=[n] * q, op=MPI.SUM)
            total, recv_b, peers = 4 * n * q, 4 * n * (q - 1), 0
        else:
            counts = [0 if j == comm.Get_rank() else m for j in range(q)]
            displs = [sum(counts[:j]) for j in range(q)]
            send = np.ones(sum(counts), np.uint8)
            recv = np.empty(sum(counts), np.uint8)

            def fn(send=send, recv=recv, counts=counts, displs=displs):
                comm.Alltoallv([send, (counts, displs), MPI.BYTE],
                               [recv, (counts, displs), MPI.BYTE])
            total, recv_b, peers = 0, m * (q - 1), q - 1
        reps = repeats if m <= 131072 else max(3, repeats // 4)
        t = _timed(comm, fn, reps)
        points.append({"bytes_per_member": m, "seconds": t, "recv_bytes": recv_b,
                       "steps": collective_steps(kind, q, total, peers)})
    return points


def fit_points(points: list[dict[str, Any]]) -> dict[str, float]:
    steps = np.array([p["steps"] for p in points], float)
    nb = np.array([p["recv_bytes"] for p in points], float)
    t = np.array([p["seconds"] for p in points], float)
    alpha, beta = fit_alpha_beta(steps, nb, t)
    pred = alpha * steps + beta * nb
    return {"alpha": alpha, "beta": beta,
            "max_rel_error": float(np.max(np.abs(pred - t) / t))}


def ping_pong(comm, repeats: int) -> float:
    """Half the round-trip time of an 8-byte message between ranks 0 and 1."""
    from mpi4py import MPI

    buf = np.zeros(8, np.uint8)
    r = comm.Get_rank()
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(repeats):
        if r == 0:
            comm.Send([buf, MPI.BYTE], 1)
            comm.Recv([buf, MPI.BYTE], 1)
        elif r == 1:
            comm.Recv([buf, MPI.BYTE], 0)
            comm.Send([buf, MPI.BYTE], 0)
    dt = (time.perf_counter() - t0) / (2 * repeats)
    return float(comm.bcast(dt, root=0))


def kernel_rates(shapes, repeats: int) -> dict[str, dict[str, Any]]:
    """Seconds per MAC of :func:`parconv.kernels.conv2d_window` per dtype class: total
    best time over ``shapes`` ÷ their total MACs (this rank's measurement)."""
    from . import dtypes
    from .kernels import accumulator_dtype, conv2d_window, warmup

    rng = np.random.default_rng(0)
    warmup([(dtypes.numpy_dtype(a), dtypes.numpy_dtype(b)) for a, b in CLASSES.values()])
    out = {}
    for cls, (xa, wa) in CLASSES.items():
        xd, wd = dtypes.numpy_dtype(xa), dtypes.numpy_dtype(wa)
        tot_t = tot_macs = 0.0
        for b, c, k, hin, ker, stride in shapes:
            hout = (hin - ker) // stride + 1
            x = rng.integers(-3, 4, (b, c, hin, hin)).astype(xd)
            w = rng.integers(-3, 4, (k, c, ker, ker)).astype(wd)
            o = np.zeros((b, k, hout, hout), accumulator_dtype(x.dtype, w.dtype))
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                conv2d_window(x, w, o, stride, 1, (0, 0))
                best = min(best, time.perf_counter() - t0)
            tot_t += best
            tot_macs += b * k * c * hout * hout * ker * ker
        out[cls] = {"seconds_per_mac": tot_t / tot_macs, "gmac_per_s": tot_macs / tot_t / 1e9}
    return out


def copy_rate(repeats: int) -> float:
    """Seconds per byte written by a channel-major → batch-major 4-D copy (float32)."""
    src = np.ones((64, 8, 28, 28), np.float32)
    dst = np.empty((8, 64, 28, 28), np.float32)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst[...] = src.swapaxes(0, 1)
        z = np.zeros(src.shape, np.float32)
        best = min(best, time.perf_counter() - t0)
    del z
    return best / (2 * dst.nbytes)


def setup_seconds(repeats: int) -> float:
    """Wall time of a tiny one-rank ``conv2d_distributed`` call outside its timed phases
    (validation, communicator and schedule set-up), best of ``repeats``."""
    from mpi4py import MPI

    from .dtypes import PRESETS
    from .planner.partition import Grid
    from .runtime.api import conv2d_distributed, seeded_operands_local
    from .spec import ConvSpec

    spec = ConvSpec(1, 4, 4, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), PRESETS["fp32"], "tiny")
    grid = Grid(1, 1, 1, 1, 1)
    x, w = seeded_operands_local(spec, grid, 0)
    best = math.inf
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        res = conv2d_distributed(spec, grid, x, w, MPI.COMM_SELF)
        wall = time.perf_counter() - t0
        best = min(best, wall - sum(res.stats.seconds.values()))
    return max(0.0, best)


def calibrate(comm, quick: bool = False, network: str | None = None,
              name: str = "this-machine") -> tuple[Machine, dict[str, Any]]:
    """Measure the machine (collective over ``comm``); returns the machine and the raw
    measurements (every sweep point, fits, kernel rates)."""
    from mpi4py import MPI

    sizes = QUICK_SIZES if quick else SIZES
    repeats = 5 if quick else 20
    q, rank = comm.Get_size(), comm.Get_rank()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    rpn = comm.allreduce(node.Get_size(), op=MPI.MAX)
    spans = rpn < q
    raw: dict[str, Any] = {"world_size": q, "ranks_per_node": rpn, "quick": quick,
                           "host": platform.node(), "processor": platform.processor()}
    base = load_machine(network) if network else Machine.from_dict(THIS_MACHINE)
    intra = {k: base.intra[k] for k in KINDS}
    inter = {k: base.inter[k] for k in KINDS}
    from .timemodel import Link

    if q >= 2:
        raw["ping_pong_latency_s"] = ping_pong(comm, 200 if quick else 2000)
        for label, c in (("inter" if spans else "intra", comm),
                         *((("intra", node),) if spans and node.Get_size() >= 2 else ())):
            for kind in KINDS:
                pts = sweep(c, kind, sizes, repeats)
                fit = fit_points(pts)
                raw.setdefault("sweeps", {}).setdefault(label, {})[kind] = {"points": pts, **fit}
                (inter if label == "inter" else intra)[kind] = Link(fit["alpha"], fit["beta"])
        if not spans and network is None:
            inter = dict(intra)   # one node, no preset: nothing else known
    node.Free()
    shapes = QUICK_SHAPES if quick else SHAPES
    rates = kernel_rates(shapes, 2 if quick else 4)
    all_rates = comm.gather(rates, root=0)
    copy = comm.allreduce(copy_rate(5 if quick else 20), op=MPI.MAX)
    setup = comm.allreduce(setup_seconds(2 if quick else 5), op=MPI.MAX)
    gamma = None
    if rank == 0:
        gamma = {cls: float(np.median([r[cls]["seconds_per_mac"] for r in all_rates]))
                 for cls in CLASSES}
        raw["kernel_rates"] = all_rates
    gamma = comm.bcast(gamma, root=0)
    cores = _cores()
    src = (f"parconv calibrate on {platform.node()} ({q} ranks, {rpn} per node"
           + (", --quick" if quick else "") + ")"
           + (f"; inter-node figures from {network}" if network and not spans else ""))
    m = Machine(name, rpn if q >= 2 else base.ranks_per_node, cores, intra, inter, gamma,
                float(copy), float(setup), base.nics_per_node, src,
                {"ping_pong_latency_s": raw.get("ping_pong_latency_s")})
    return m, raw


def _cores() -> int:
    import os

    try:
        return os.cpu_count() or 1
    except Exception:  # pragma: no cover
        return 1
