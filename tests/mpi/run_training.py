"""Run distributed training steps (forward + backward) inside ONE ``mpiexec`` launch.

Usage: ``mpiexec -n P python tests/mpi/run_training.py CASES.json RESULTS.json``

Each case ``{"name", "spec": {...ConvSpec fields, "dtype"}, "grid", "seed"}`` runs a
:class:`parconv.runtime.DistributedConv2d` forward and backward twice on blocks sliced
from global seeded arrays, then checks on rank 0:

* output, input gradient and filter gradient against a float64 numpy reference;
* the adjoint identities <A x, g> = <x, Aᵀ g> (dgrad) and = <w, ∂/∂w ...> (wgrad),
  evaluated as distributed dot products (every element owned by one rank);
* every rank's measured bytes per operation equal the schedule's and the pure
  derivation from the forward volumes (``planner.adjoint.pass_volume``);
* the second call builds no schedule and no communicator.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from mpi4py import MPI

from parconv import dtypes
from parconv.dtypes import parse_precision
from parconv.planner.adjoint import pass_volume
from parconv.planner.partition import Grid, rank_volume
from parconv.runtime import gather_blocks, seeded_operands_global
from parconv.runtime import layer as layer_mod
from parconv.runtime.api import block_ranges
from parconv.runtime.errors import RunInputError, abort_on_exception
from parconv.spec import ConvSpec


def make_spec(d: dict) -> ConvSpec:
    d = dict(d)
    prec = parse_precision(d.pop("dtype", "fp32"))
    return ConvSpec(precision=prec, **d)


def reference(spec: ConvSpec, x, w, g):
    """float64 forward output, input gradient and filter gradient (numpy, slices)."""
    x, w, g = (a.astype(np.float64) for a in (x, w, g))
    (sh, sw), (ph, pw), (dh, dw) = spec.stride, spec.padding, spec.dilation
    B, C, hi, wi = x.shape
    K, _, R, S = w.shape
    H, W = spec.out_size
    rows = max(hi + 2 * ph, (H - 1) * sh + (R - 1) * dh + 1)
    cols = max(wi + 2 * pw, (W - 1) * sw + (S - 1) * dw + 1)
    xp = np.zeros((B, C, rows, cols))
    xp[:, :, ph:ph + hi, pw:pw + wi] = x
    gxp = np.zeros_like(xp)
    y = np.zeros((B, K, H, W))
    gw = np.zeros(w.shape)
    for r in range(R):
        for s in range(S):
            sl = (slice(None), slice(None), slice(r * dh, r * dh + (H - 1) * sh + 1, sh),
                  slice(s * dw, s * dw + (W - 1) * sw + 1, sw))
            xs = xp[sl]
            y += np.einsum("bchw,kc->bkhw", xs, w[:, :, r, s])
            gw[:, :, r, s] = np.einsum("bchw,bkhw->kc", xs, g)
            gxp[sl] += np.einsum("bkhw,kc->bchw", g, w[:, :, r, s])
    return y, gxp[:, :, ph:ph + hi, pw:pw + wi], gw


def _slice(a, ranges):
    return np.ascontiguousarray(a[tuple(slice(lo, hi) for lo, hi in ranges)])


def close(got, want, rtol) -> tuple[bool, float]:
    err = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0))
    scale = float(np.max(np.abs(want), initial=0.0)) or 1.0
    return err <= rtol * scale, err / scale


def run_case(c: dict, comm) -> dict:
    rank = comm.Get_rank()
    spec, grid = make_spec(c["spec"]), Grid.parse(c["grid"])
    x, w = seeded_operands_global(spec, c.get("seed", 0))
    rng = np.random.default_rng(c.get("seed", 0) + 7)
    g = rng.uniform(-1, 1, spec.output_shape).astype(dtypes.numpy_dtype(spec.precision.output))
    xl, wl = _slice(x, block_ranges(spec, grid, rank, "input")), \
        _slice(w, block_ranges(spec, grid, rank, "filter"))
    gl = _slice(g, block_ranges(spec, grid, rank, "output"))
    try:
        layer = layer_mod.DistributedConv2d(spec, grid, comm)
    except RunInputError as exc:
        return {"name": c["name"], "error": str(exc)}
    builds = {"schedule": 0, "comm": 0}
    real_build, real_create = layer_mod.build_schedule, layer_mod.__dict__.get("GridComm")

    def counting_build(*a, **k):
        builds["schedule"] += 1
        return real_build(*a, **k)

    layer_mod.build_schedule = counting_build
    from parconv.runtime import comm as comm_mod

    orig_create = comm_mod.GridComm.create

    def counting_create(*a, **k):
        builds["comm"] += 1
        return orig_create(*a, **k)

    comm_mod.GridComm.create = counting_create
    try:
        for _ in range(2):  # the second call must build nothing and give the same result
            y = layer.forward(xl, wl)
            gx, gw = layer.backward(gl)
    finally:
        layer_mod.build_schedule = real_build
        comm_mod.GridComm.create = orig_create
    del real_create
    measured = layer.measured()
    planned = layer.volume("step")
    derived = pass_volume(rank_volume(spec, grid, layer.rank), spec.precision, "step")
    dots = np.array([np.vdot(y.astype(np.float64), gl.astype(np.float64)),
                     np.vdot(xl.astype(np.float64), gx.astype(np.float64)),
                     np.vdot(wl.astype(np.float64), gw.astype(np.float64))])
    dots = comm.allreduce(dots, op=MPI.SUM)
    info = comm.gather({"measured": measured, "planned": planned, "derived": derived,
                        "builds": builds}, root=0)
    yg = gather_blocks(spec, grid, "output", y, comm)
    gxg = gather_blocks(spec, grid, "input", gx, comm)
    gwg = gather_blocks(spec, grid, "filter", gw, comm)
    layer.free()
    if rank != 0:
        return {}
    ry, rgx, rgw = reference(spec, x, w, g)
    rtol = {"float64": 1e-12, "float32": 2e-5}.get(spec.precision.input, 2e-2)
    checks = {"output": close(yg, ry, rtol), "grad_input": close(gxg, rgx, rtol),
              "grad_filter": close(gwg, rgw, rtol)}
    scale = max(abs(dots[0]), 1e-300)
    adj = {"dgrad": abs(dots[0] - dots[1]) / scale, "wgrad": abs(dots[0] - dots[2]) / scale}
    return {"name": c["name"], "ok": all(v[0] for v in checks.values()),
            "errors": {k: v[1] for k, v in checks.items()}, "adjoint": adj,
            "grad_input_dtype": str(gxg.dtype), "grad_filter_dtype": str(gwg.dtype),
            "ranks": [{k: ({op: list(v) for op, v in d[k].items()} if k != "builds" else d[k])
                       for k in d} for d in info]}


def main() -> None:
    comm = MPI.COMM_WORLD
    cases = json.loads(open(sys.argv[1]).read())
    results = []
    with abort_on_exception(comm):
        for c in cases:
            results.append(run_case(c, comm))
    if comm.Get_rank() == 0:
        with open(sys.argv[2], "w") as fh:
            json.dump(results, fh)


if __name__ == "__main__":
    main()
