"""Network plan: a grid per convolution chosen jointly with the redistributions between
layers, by dynamic programming over per-layer candidates (pure; no MPI).

Cost model (all exact, see :mod:`parconv.network.costs` and
:mod:`parconv.network.redistribute`): layers run one after another; each communication
step (a redistribution, a convolution's collectives, a pooling halo exchange, a
reduce-scatter) costs the **busiest rank's received + sent bytes** of that step; the
network's cost is the sum over steps. The per-layer lower bound is the memory-independent
bound of :mod:`parconv.bounds` for that convolution on ``P`` ranks (0 for other layers);
their sum bounds the sum over layers of the busiest rank's bytes of any algorithm running
the layers one after another (each layer's bound holds for its own busiest rank).

DP: nodes are visited in topological order; the state is the layout of every *live*
tensor (produced, with a consumer not yet visited), each named by a hashable key. A
convolution's decision is its :class:`~parconv.network.layout.Placement` from a candidate
list; an ``add``'s decision is which input's layout the sum keeps (the other inputs are
redistributed to it); other nodes follow their input's layout. Transitions charge exactly
the steps they cause, so the DP optimum is the cheapest plan over the candidate sets, and
since the candidate sets contain each baseline's choices, it is never worse than:
every layer on its own best grid, one grid for the whole network, data parallel
(``b = P``, when ``P ≤ batch``) and spatial-only (only b, h, w split; layers with no
such grid take their own best grid).

The network input is loaded in the first convolution's input layout (no charge); a
non-convolution reading the input directly is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from ..dtypes import PRESETS, Precision
from ..planner.partition import Grid, check_grid
from ..planner.plan import candidate_grids
from ..spec import ConvSpec
from .costs import (
    StepCost,
    best_grids,
    canonical,
    conv_cost,
    conv_max_traffic,
    reduce_hw_cost,
    window_cost,
)
from .graph import WINDOW_OPS, Graph
from .layout import (
    Layout,
    Placement,
    concat_layout,
    conv_input_layout,
    conv_output_layout,
    flatten_layout,
    reduce_hw_layout,
    with_channels,
)
from .redistribute import Redistribution
from .redistribute import max_rank_traffic_bytes as redistribution_traffic

FREE = ("free",)


@lru_cache(maxsize=512)
def _bound_bytes(spec: ConvSpec, procs: int) -> tuple[float, float]:
    """(the layer's memory-independent bound, its busiest-processor lemma alone), bytes,
    0 when vacuous."""
    from ..bounds import parallel_memory_independent_bound

    b = parallel_memory_independent_bound(spec, procs)
    lemma = float(b.details["lemma_bits"]) / 8.0
    return (0.0 if b.vacuous or b.bytes <= 0 else float(b.bytes)), max(lemma, 0.0)


@dataclass
class LayerPlan:
    """One node of the plan.

    ``placement`` (conv/fc): grid and rank order; ``in_layouts``: the layout each input is
    consumed in; ``out_layout``: where the output lives; ``redistributions``: per input
    name, the move from the producer's layout to ``in_layouts`` (absent when they agree);
    ``step``: the layer's own per-rank bytes; ``layer_bytes`` / ``redistribution_bytes``:
    busiest rank's received + sent bytes of the layer and of its redistributions;
    ``bound_bytes``: the layer's lower bound (0 for non-convolutions); ``lemma_bytes``:
    its busiest-processor lemma alone (the yardstick of the received-only figure).
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    shape: tuple[int, int, int, int]
    placement: Placement | None
    spec: ConvSpec | None
    in_layouts: tuple[Layout, ...]
    out_layout: Layout
    redistributions: dict[str, Redistribution]
    step: StepCost
    layer_bytes: int
    redistribution_bytes: int
    bound_bytes: float
    lemma_bytes: float = 0.0

    @property
    def total_bytes(self) -> int:
        return self.layer_bytes + self.redistribution_bytes

    @property
    def recv_bytes(self) -> int:
        """Busiest rank's *received* bytes of the layer plus of each redistribution (a
        grid-family figure: the bound bounds received + sent, not received alone)."""
        return self.step.max_rank_recv_bytes + sum(r.max_rank_recv_bytes
                                                   for r in self.redistributions.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "op": self.op, "inputs": list(self.inputs),
            "shape": list(self.shape),
            "placement": None if self.placement is None else self.placement.to_dict(),
            "in_layouts": [lay.to_dict() for lay in self.in_layouts],
            "out_layout": self.out_layout.to_dict(),
            "redistributions": {k: r.to_dict() for k, r in self.redistributions.items()},
            "layer_bytes": self.layer_bytes, "redistribution_bytes": self.redistribution_bytes,
            "recv_bytes": self.recv_bytes, "bound_bytes": self.bound_bytes,
            "lemma_bytes": self.lemma_bytes,
        }


@dataclass
class NetworkPlan:
    """A whole network's plan: per node, placement, layouts, redistributions and bytes.

    ``total_bytes`` = Σ layer_bytes + Σ redistribution_bytes (busiest rank per step);
    ``bound_bytes`` = Σ per-layer lower bounds; ``baselines``: the totals of the reference
    plans (None where infeasible); ``seconds``: planning time.
    """

    model: str
    batch: int
    precision: Precision
    procs: int
    layers: list[LayerPlan]
    baselines: dict[str, int | None] = field(default_factory=dict)
    candidates: int = 0
    seconds: float = 0.0
    search: dict[str, Any] = field(default_factory=dict)

    @property
    def layer_bytes(self) -> int:
        return sum(lp.layer_bytes for lp in self.layers)

    @property
    def redistribution_bytes(self) -> int:
        return sum(lp.redistribution_bytes for lp in self.layers)

    @property
    def total_bytes(self) -> int:
        return self.layer_bytes + self.redistribution_bytes

    @property
    def bound_bytes(self) -> float:
        return sum(lp.bound_bytes for lp in self.layers)

    @property
    def lemma_bytes(self) -> float:
        """Σ per-layer busiest-processor lemmas (the received-only figure's yardstick)."""
        return sum(lp.lemma_bytes for lp in self.layers)

    @property
    def ratio_to_bound(self) -> float | None:
        """total_bytes / bound_bytes (received + sent against the bound of that quantity)."""
        return self.total_bytes / self.bound_bytes if self.bound_bytes > 0 else None

    @property
    def recv_bytes(self) -> int:
        """Σ over steps of the busiest rank's received bytes (grid-family figure)."""
        return sum(lp.recv_bytes for lp in self.layers)

    def layer(self, name: str) -> LayerPlan:
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "batch": self.batch, "precision": self.precision.label(),
            "procs": self.procs, "metric": "busiest rank's received + sent bytes per step",
            "total_bytes": self.total_bytes, "layer_bytes": self.layer_bytes,
            "redistribution_bytes": self.redistribution_bytes,
            "bound_bytes": self.bound_bytes, "ratio_to_bound": self.ratio_to_bound,
            "recv_bytes": self.recv_bytes,
            "lemma_bytes": self.lemma_bytes,
            "recv_ratio_grid_family": (self.recv_bytes / self.lemma_bytes
                                       if self.lemma_bytes > 0 else None),
            "baselines": self.baselines, "candidates": self.candidates, "search": self.search,
            "seconds": self.seconds, "layers": [lp.to_dict() for lp in self.layers],
        }


class _Planner:
    """Layouts and step costs by key (memoised), the DP and the final evaluation."""

    def __init__(self, graph: Graph, batch: int, precision: Precision, procs: int) -> None:
        self.g, self.batch, self.prec, self.procs = graph, int(batch), precision, int(procs)
        self.act_bytes = precision.p_input // 8
        self.acc_bytes = precision.p_accum // 8
        self.specs = {n.name: graph.conv_spec(n.name, batch, precision)
                      for n in graph.conv_nodes()}
        self._layouts: dict[tuple, Layout] = {}
        self._redist: dict[tuple, Redistribution] = {}
        self._steps: dict[tuple, StepCost] = {}
        self._conv: dict[tuple, int] = {}
        self._ids: dict[tuple, int] = {}
        self._keys: list[tuple] = []
        self._rbytes: dict[tuple[int, int], int] = {}
        self.max_states = 0
        self.pruned = False
        self.canon = {n: canonical(s) for n, s in self.specs.items()}
        cons = graph.consumers()
        names = list(graph.nodes)
        pos = {n: i for i, n in enumerate(names)}
        self.order = names
        self.last_use = {n: max((pos[c] for c in cons[n]), default=-1) for n in names}

    # -- layouts and steps by key -------------------------------------------------
    def kid(self, key: tuple) -> int:
        """Interned id of a layout key (states and caches use ids, not nested tuples)."""
        i = self._ids.get(key)
        if i is None:
            i = self._ids[key] = len(self._keys)
            self._keys.append(key)
        return i

    def layout(self, key: tuple) -> Layout:
        lay = self._layouts.get(key)
        if lay is None:
            lay = self._layouts[key] = self._make_layout(key)
        return lay

    def _make_layout(self, key: tuple) -> Layout:
        kind = key[0]
        if kind == "conv-out":
            return conv_output_layout(self.specs[key[1]], key[2])
        if kind == "conv-in":
            return conv_input_layout(self.specs[key[1]], key[2])
        node, src = self.g[key[1]], key[2]
        if kind == "window":
            return self.step(key)[0]
        if kind == "reduce":
            return reduce_hw_layout(self.layout(src), f"reduce-hw {node.name}")
        if kind == "flatten":
            return flatten_layout(self.layout(src), f"flatten {node.name}")
        if kind == "concat-target":       # key[2]: the input, key[3]: the first input
            return with_channels(self.layout(key[3]), self.layout(src).shape[1],
                                 f"concat-in {node.name}")
        if kind == "concat":
            parts = [self.layout(k) for k in self._concat_targets(key[1], key[2])]
            return concat_layout(parts, f"concat {node.name}")
        raise ValueError(f"unknown layout key {key!r}")

    def step(self, key: tuple) -> tuple[Layout, StepCost]:
        """(output layout, per-rank bytes) of a window op or a reduce, by output key."""
        hit = self._steps.get(key)
        if hit is None:
            node, src = self.g[key[1]], self.layout(key[2])
            if key[0] == "window":
                hit = window_cost(src, node.windows(self.g.in_shape(node.name)),
                                  self.act_bytes, f"{node.op} {node.name}")
            else:
                hit = (self.layout(key), reduce_hw_cost(src, self.acc_bytes))
            self._steps[key] = hit
        return hit

    def redist(self, src_key: tuple, dst_key: tuple) -> Redistribution | None:
        """The move from ``src_key`` to ``dst_key`` (None when the keys agree or the source
        is the free network input)."""
        if src_key == dst_key or src_key == FREE:
            return None
        k = (src_key, dst_key)
        r = self._redist.get(k)
        if r is None:
            r = self._redist[k] = Redistribution(self.layout(src_key), self.layout(dst_key),
                                                 self.act_bytes)
        return r

    def redist_bytes(self, src: int, dst: int) -> int:
        """Busiest rank's received + sent bytes moving key id ``src`` to key id ``dst``."""
        k = (src, dst)
        v = self._rbytes.get(k)
        if v is None:
            a, b = self._keys[src], self._keys[dst]
            v = 0 if (src == dst or a == FREE) else redistribution_traffic(
                self.layout(a), self.layout(b), self.act_bytes)
            self._rbytes[k] = v
        return v

    def conv_bytes(self, name: str, grid: Grid) -> int:
        """Busiest rank's received + sent bytes of convolution ``name`` on ``grid``."""
        k = (name, grid)
        v = self._conv.get(k)
        if v is None:
            v = self._conv[k] = conv_max_traffic(self.canon[name], grid)
        return v

    def _concat_targets(self, name: str, keys: tuple) -> list[tuple]:
        first = self.layout(keys[0])
        out = [keys[0]]
        for k in keys[1:]:
            lay = self.layout(k)
            same = (lay.blocks == first.blocks and np.array_equal(lay.rank_of, first.rank_of)
                    and all(np.array_equal(lay.owners[a], first.owners[a]) for a in (0, 2, 3)))
            out.append(k if same else ("concat-target", name, k, keys[0]))
        return out

    # -- transitions ----------------------------------------------------------------
    def transitions(self, name: str, in_ids: tuple, cands: dict[str, list[Placement]]):
        """Yield (decision, output key id, cost) of node ``name`` given its inputs' key ids."""
        node = self.g[name]
        kid = self.kid
        if node.op == "input":
            yield None, kid(FREE), 0
            return
        if node.is_conv:
            for pl in cands[name]:
                cost = (self.redist_bytes(in_ids[0], kid(("conv-in", name, pl)))
                        + self.conv_bytes(name, pl.grid))
                yield pl, kid(("conv-out", name, pl)), cost
            return
        in_keys = tuple(self._keys[i] for i in in_ids)
        if FREE in in_keys:
            raise ValueError(f"{name}: a {node.op} reading the network input directly is not "
                             "supported (the input is loaded in the first convolution's layout)")
        if node.op == "relu":
            yield None, in_ids[0], 0
        elif node.op in WINDOW_OPS or node.op == "global_avgpool":
            key = ("window" if node.op in WINDOW_OPS else "reduce", name, in_keys[0])
            yield None, kid(key), self.step(key)[1].max_rank_traffic_bytes
        elif node.op == "flatten":
            yield None, kid(("flatten", name, in_keys[0])), 0
        elif node.op == "add":
            for i in range(len(in_ids)):
                if in_ids[i] in in_ids[:i]:
                    continue
                yield i, in_ids[i], sum(self.redist_bytes(k, in_ids[i]) for k in in_ids)
        elif node.op == "concat":
            tg = self._concat_targets(name, in_keys)
            yield None, kid(("concat", name, in_keys)), sum(
                self.redist_bytes(k, kid(t)) for k, t in zip(in_ids, tg))
        else:
            raise ValueError(f"{name}: unsupported op {node.op!r}")

    def solve(self, cands: dict[str, list[Placement]], beam: int | None = None
              ) -> tuple[int, dict[str, Any]]:
        """DP over the candidate sets: (total cost, decision per node).

        Exact over the candidates when no node has more than ``beam`` states (``None``: no
        limit); otherwise only the ``beam`` cheapest states survive each node (recorded in
        ``pruned``). Either way the returned cost is exactly what the decisions cost.
        """
        states: dict[tuple, tuple[int, Any]] = {(): (0, None)}   # live key ids -> (cost, back)
        live: list[str] = []
        for i, name in enumerate(self.order):
            node = self.g[name]
            new_live = [t for t in live if self.last_use[t] > i]
            keep_out = self.last_use[name] > i
            nxt: dict[tuple, tuple[int, Any]] = {}
            for state, (cost, back) in states.items():
                keys = dict(zip(live, state))
                in_ids = tuple(keys[x] for x in node.inputs)
                base = tuple(keys[t] for t in new_live)
                for dec, out_id, c in self.transitions(name, in_ids, cands):
                    ns = base + (out_id,) if keep_out else base
                    tot = cost + c
                    old = nxt.get(ns)
                    if old is None or tot < old[0]:
                        nxt[ns] = (tot, (back, name, dec))
            if keep_out:
                new_live.append(name)
            self.max_states = max(self.max_states, len(nxt))
            if beam is not None and len(nxt) > beam:
                self.pruned = True
                nxt = dict(sorted(nxt.items(), key=lambda kv: kv[1][0])[:beam])
            states, live = nxt, new_live
        cost, back = min(states.values(), key=lambda v: v[0])
        decisions: dict[str, Any] = {}
        while back is not None:
            back, name, dec = back
            decisions[name] = dec
        return cost, decisions

    # -- final evaluation -----------------------------------------------------------
    def evaluate(self, decisions: dict[str, Any]) -> list[LayerPlan]:
        """Per-node details of a decision set (the same charges as the DP)."""
        keys: dict[str, tuple] = {}
        out: list[LayerPlan] = []
        for name in self.order:
            node = self.g[name]
            in_keys = tuple(keys[x] for x in node.inputs)
            b = self.batch
            shape = (b, *node.shape)
            pl, spec, redists, in_lays = None, None, {}, []
            step = StepCost.zero(self.procs)
            if node.op == "input":       # loaded where its first reader wants it
                first = next(n for n in self.order if name in self.g[n].inputs)
                keys[name] = ("conv-in", first, decisions[first])
                out.append(LayerPlan(name, "input", (), shape, None, None, (),
                                     self.layout(keys[name]), {}, step, 0, 0, 0.0))
                continue
            if node.is_conv:
                pl, spec = decisions[name], self.specs[name]
                dst = ("conv-in", name, pl)
                out_key = ("conv-out", name, pl)
                targets = [dst]
                step = conv_cost(spec, pl)
            elif node.op == "add":
                out_key = in_keys[decisions[name]]
                targets = [out_key] * len(in_keys)
            elif node.op == "concat":
                out_key = ("concat", name, in_keys)
                targets = self._concat_targets(name, in_keys)
            else:
                ids = tuple(self.kid(k) for k in in_keys)
                out_key = self._keys[next(k for _, k, _ in self.transitions(name, ids, {}))]
                targets = list(in_keys)
                if node.op in WINDOW_OPS or node.op == "global_avgpool":
                    step = self.step(out_key)[1]
            for x, k, t in zip(node.inputs, in_keys, targets):
                r = self.redist(k, t)
                if r is not None and r.moves:
                    redists[x] = r
                in_lays.append(self.layout(t))
            keys[name] = out_key
            bound, lemma = (_bound_bytes(canonical(spec), self.procs) if spec is not None
                            else (0.0, 0.0))
            out.append(LayerPlan(name, node.op, node.inputs, shape, pl, spec, tuple(in_lays),
                                 self.layout(out_key), redists, step,
                                 step.max_rank_traffic_bytes,
                                 sum(r.max_rank_traffic_bytes for r in redists.values()), bound,
                                 lemma))
        return out


def _valid(spec: ConvSpec, grid: Grid) -> bool:
    try:
        check_grid(spec, grid)
        return True
    except ValueError:
        return False


def global_grids(graph: Graph, batch: int, procs: int) -> list[Grid]:
    """Grids of ``procs`` ranks valid for every convolution of the network."""
    specs = [graph.conv_spec(n.name, batch) for n in graph.conv_nodes()]
    lim = ConvSpec(batch, min(s.C for s in specs), min(s.K for s in specs),
                   (min(s.H for s in specs), min(s.W for s in specs)), 1)
    return candidate_grids(lim, procs)


def plan_network(graph: Graph, batch: int, procs: int, precision: Precision | None = None,
                 own: int = 3, neighbours: int = 2, baselines: bool = True,
                 beam: int | None = 64) -> NetworkPlan:
    """Plan a whole network on ``procs`` ranks (see the module docstring).

    Parameters
    ----------
    graph: the layer graph (e.g. :func:`parconv.network.models.build`).
    batch, procs, precision: batch size, ranks, element types (default fp32).
    own: per convolution, how many of its own best grids (by its busiest rank's received +
        sent bytes) are candidates.
    neighbours: how many of each neighbouring convolution's best grids are also offered
        (as they are and transposed — k and c swapped with the rank order — so that an
        output can be consumed where it lies).
    baselines: also compute the reference plans (totals in ``baselines``); their choices
        join the candidates, and the plan is the cheapest of the joint DP and them.
    beam: the most DP states kept per node (None: all; exact over the candidates).

    Raises
    ------
    ValueError
        If ``procs`` is not positive or some convolution has no grid of ``procs`` ranks.
    """
    t0 = time.perf_counter()
    if not isinstance(procs, (int, np.integer)) or procs < 1:
        raise ValueError(f"procs must be a positive integer, got {procs!r}")
    if not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    precision = precision or PRESETS["fp32"]
    pl = _Planner(graph, batch, precision, int(procs))
    convs = [n.name for n in graph.conv_nodes()]
    top: dict[str, list[Grid]] = {}
    for n in convs:
        bg = best_grids(pl.specs[n], procs, max(own, neighbours, 1))
        if not bg:
            s = pl.specs[n]
            raise ValueError(f"no grid of {procs} ranks fits {n} (B={s.B}, K={s.K}, C={s.C}, "
                             f"H={s.H}, W={s.W})")
        top[n] = [g for g, _ in bg]

    def single(choice: dict[str, Grid]) -> dict[str, list[Placement]]:
        return {n: [Placement(choice[n])] for n in convs}

    base: dict[str, Any] = {}
    sols: list[tuple[int, dict[str, Any], str]] = []     # (cost, decisions, which)
    extra: dict[str, list[Placement]] = {n: [] for n in convs}

    def baseline(label: str, choice: dict[str, Grid]) -> int:
        c, d = pl.solve(single(choice))
        sols.append((c, d, label))
        return c

    if baselines:
        base["own_best"] = baseline("own_best", {n: top[n][0] for n in convs})
        # one grid: visit grids by the sum of their layer costs (a lower bound on the
        # network cost with that grid), stop when it reaches the best full cost
        gg = global_grids(graph, batch, procs)
        lbs = [sum(pl.conv_bytes(n, g) for n in convs) for g in gg]
        best_one: tuple[int, Grid] | None = None
        for i in np.argsort(lbs, kind="stable"):
            if best_one is not None and lbs[i] >= best_one[0]:
                break
            c = baseline("one_grid", {n: gg[i] for n in convs})
            if best_one is None or c < best_one[0]:
                best_one = (c, gg[i])
        base["one_grid"] = None if best_one is None else best_one[0]
        base["one_grid_grid"] = None if best_one is None else str(best_one[1])
        base["data_parallel"] = None
        if procs <= batch:
            dp = Grid(procs, 1, 1, 1, 1)
            base["data_parallel"] = baseline("data_parallel", {n: dp for n in convs})
        sp = {}
        for n in convs:
            bs = best_grids(pl.specs[n], procs, 1, ("b", "h", "w"))
            sp[n] = bs[0][0] if bs else top[n][0]
        base["spatial_only"] = baseline("spatial_only", sp)
        for n in convs:
            extra[n].append(Placement(sp[n]))
            if best_one is not None:
                extra[n].append(Placement(best_one[1]))
            if procs <= batch:
                extra[n].append(Placement(Grid(procs, 1, 1, 1, 1)))
    # joint candidates: own best, neighbours' best as they are and transposed, baselines'
    cands: dict[str, list[Placement]] = {}
    for i, n in enumerate(convs):
        c = [Placement(g) for g in top[n][:own]]
        for j in (i - 1, i + 1):
            if 0 <= j < len(convs):
                for g in top[convs[j]][:neighbours]:
                    p = Placement(g)
                    c += [p, p.transposed()]
        c += extra[n]
        seen: dict[Placement, None] = {}
        for p in c:
            if p not in seen and _valid(pl.specs[n], p.grid):
                seen[p] = None
        cands[n] = list(seen)
    cost, decisions = pl.solve(cands, beam)
    sols.append((cost, decisions, "joint"))
    cost, decisions, chosen = min(sols, key=lambda t: (t[0], t[2] != "joint"))
    layers = pl.evaluate(decisions)
    plan = NetworkPlan(graph.name, int(batch), precision, int(procs), layers, base,
                       sum(len(v) for v in cands.values()))
    plan.search = {"candidates": plan.candidates, "max_states": pl.max_states,
                   "beam": beam, "beam_pruned": pl.pruned, "chosen": chosen,
                   "redistributions_evaluated": len(pl._rbytes)}
    if plan.total_bytes != cost:
        raise AssertionError(f"plan evaluation {plan.total_bytes} != DP cost {cost}")
    plan.seconds = time.perf_counter() - t0
    return plan


def plan_fixed(graph: Graph, batch: int, procs: int, placements: dict[str, Placement | Grid],
               precision: Precision | None = None) -> NetworkPlan:
    """The plan with the given placement of every convolution (only the layout each
    ``add`` keeps is chosen, optimally): e.g. a hand-picked or a baseline assignment.

    Raises
    ------
    ValueError
        If a convolution has no placement or a placement does not fit its layer.
    """
    t0 = time.perf_counter()
    precision = precision or PRESETS["fp32"]
    pl = _Planner(graph, batch, precision, int(procs))
    cands = {}
    for n in pl.specs:
        if n not in placements:
            raise ValueError(f"no placement given for {n}")
        p = placements[n]
        p = p if isinstance(p, Placement) else Placement(p)
        if p.grid.size != procs:
            raise ValueError(f"{n}: grid {p.grid} has {p.grid.size} ranks, not {procs}")
        check_grid(pl.specs[n], p.grid)
        cands[n] = [p]
    cost, decisions = pl.solve(cands)
    plan = NetworkPlan(graph.name, int(batch), precision, int(procs), pl.evaluate(decisions),
                       {}, len(cands))
    plan.search = {"chosen": "fixed", "max_states": pl.max_states}
    if plan.total_bytes != cost:
        raise AssertionError(f"plan evaluation {plan.total_bytes} != DP cost {cost}")
    plan.seconds = time.perf_counter() - t0
    return plan


__all__ = ["LayerPlan", "NetworkPlan", "plan_network", "plan_fixed", "global_grids"]
