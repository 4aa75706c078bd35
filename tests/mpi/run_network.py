"""Run network cases under MPI (one launch per rank count): each case plans (or fixes
random placements for) a graph, runs it with NetworkRunner, gathers the output and
compares it with the single-process reference on rank 0; every rank's measured bytes
are compared with the plan per layer and per redistribution.

Usage: mpiexec -n P python run_network.py cases.json results.json
"""

from __future__ import annotations

import itertools
import json
import random
import sys

import numpy as np
from mpi4py import MPI

from parconv.dtypes import PRESETS
from parconv.network.graph import Graph
from parconv.network.layout import Placement
from parconv.network.models import build
from parconv.network.plan import plan_fixed, plan_network
from parconv.network.reference import forward, seeded_input
from parconv.network.runtime import NetworkRunner, gather_layout
from parconv.network.weights import seeded_weights
from parconv.planner.plan import candidate_grids


def op_graph(op: str) -> Graph:
    """conv -> the op (-> a second conv where the op needs two inputs)."""
    g = Graph(f"op-{op}")
    x = g.input("x", (3, 13, 11))
    c = g.conv("c1", x, 6, 3, padding=1, bias=True, bn="bn1")
    if op == "maxpool":
        g.maxpool("pool", c, 3, 2, 1, ceil_mode=True)
    elif op == "maxpool2":
        g.maxpool("pool", c, 2, 2)
    elif op == "avgpool":
        g.avgpool("pool", c, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    elif op == "avgpool_pad":
        g.avgpool("pool", c, 3, 1, 1)
    elif op == "adaptive":
        g.adaptive_avgpool("pool", c, (5, 4))
    elif op == "global":
        g.fc("fc", g.flatten("flatten", g.global_avgpool("gap", c)), 7)
    elif op == "flatten_fc":
        g.fc("fc", g.flatten("flatten", g.adaptive_avgpool("pool", c, (3, 2))), 5)
    elif op == "relu":
        g.conv("c2", g.relu("relu", c), 4, 1)
    elif op == "add":
        g.add("add", c, g.conv("c2", c, 6, 3, padding=1))
    elif op == "concat":
        g.concat("cat", c, g.conv("c2", c, 5, 1))
    else:
        raise ValueError(op)
    return g


def _random_placements(g: Graph, batch: int, P: int, rng: random.Random, case: dict) -> dict:
    """Random grids and rank orders; an op case's first conv splits h or w when it can
    (halos, reduce-scatters, non-contiguous flatten parts)."""
    orders = list(itertools.permutations("bkchw"))
    pls: dict[str, Placement] = {}
    for n in g.conv_nodes():
        gs = candidate_grids(g.conv_spec(n.name, batch), P)
        spatial = [q for q in gs if q.h * q.w > 1]
        if case["kind"] == "ops" and n.name == "c1" and spatial:
            pool = spatial
        else:
            pool = spatial if spatial and rng.random() < 0.6 else gs
        pls[n.name] = Placement(rng.choice(pool), rng.choice(orders))
    return pls


def run_case(case: dict, comm) -> dict:
    P = comm.Get_size()
    if case["kind"] == "model":
        g = build(case["model"], tuple(case["image"]))
    else:
        g = op_graph(case["op"])
    prec = PRESETS[case.get("dtype", "fp32")]
    batch = case.get("batch", 2)
    if case.get("placements", "auto") == "auto":
        plan = plan_network(g, batch, P, prec)
    else:
        rng = random.Random(case["seed"] * 1000 + P)
        want_move = case["kind"] == "ops" and case["op"] in ("add", "concat", "flatten_fc")
        for _ in range(50):    # two-input ops and the fc: until their inputs are moved
            plan = plan_fixed(g, batch, P, _random_placements(g, batch, P, rng, case), prec)
            if P == 1 or not want_move or any(lp.redistributions for lp in plan.layers
                                              if lp.op in ("add", "concat", "fc")):
                break
    w = seeded_weights(g, case.get("seed", 0))
    x = seeded_input((batch, *g[next(iter(g.nodes))].shape), case.get("seed", 0))
    runner = NetworkRunner(g, plan, w, comm, timeout=60)
    out = runner.run(runner.input_block(x))
    out2 = runner.run(runner.input_block(x))        # plan once, run many: same result
    same = bool(np.array_equal(out, out2))
    full = gather_layout(runner.output_layout(), out, comm)
    mism = comm.gather(runner.mismatches(), root=0)
    layers = {lp.name: lp for lp in plan.layers}
    moved = {"redistributions": sum(1 for lp in plan.layers for _ in lp.redistributions),
             "halo_bytes": int(sum(lp.step.max_rank_traffic_bytes for lp in plan.layers
                                   if lp.op in ("maxpool", "avgpool", "adaptive_avgpool"))),
             "reduce_bytes": int(sum(lp.step.max_rank_traffic_bytes for lp in plan.layers
                                     if lp.op == "global_avgpool"))}
    measured_any = comm.allreduce(sum(sum(s.layer) + sum(sum(v) for v in s.redistributions.values())
                                      for s in runner.stats.values()))
    runner.free()
    del layers
    if comm.Get_rank() != 0:
        return {}
    ref = forward(g, w, x, prec)
    got = full.reshape(ref.shape)
    err = float(np.abs(got.astype(np.float64) - ref).max())
    return {"name": case["name"], "max_err": err, "scale": float(np.abs(ref).max()),
            "mismatches": [f"rank {r}: {m}" for r, ms in enumerate(mism) for m in ms],
            "same_twice": same, "measured_any": int(measured_any), **moved}


def main() -> None:
    comm = MPI.COMM_WORLD
    cases = json.load(open(sys.argv[1]))
    results = []
    for case in cases:
        try:
            res = run_case(case, comm)
        except Exception as exc:  # noqa: BLE001 - reported per case (same on every rank)
            res = {"name": case["name"], "error": f"{type(exc).__name__}: {exc}"}
        results.append(res)
    if comm.Get_rank() == 0:
        json.dump(results, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
