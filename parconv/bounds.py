"""Communication lower bounds for convolution (THEORY.md §3 and §5; proofs in
``docs/theory.md``).

All bounds are in **bits** internally (memory arguments are in **bytes** at the API and
M = 8·bytes). Every bound counts only the *real* iterations (those reading a non-padding
input element) and weights an output element by ``min(p_accum, p_output)``; both choices
keep the bounds valid for schedules that skip padding taps or store finished outputs in a
narrower type.

The core solver is :func:`min_footprint_cost`: the least weighted footprint
``p_I·I + p_F·F + p_O·O`` that admits ``v`` real iterations under (I1)-(I3) and the box
limits. In log coordinates this is a convex program in 3 variables; it is solved by an
exact closed form in (F, O) for fixed I and a convex 1-D search over log I. The result is
shrunk by a relative safety margin so that it is a lower bound on the true minimum; that
makes :func:`vstar` an upper bound on V*(Z), as validity requires.

Each bound is also computed with the stride-class inequality (I1w) of
:mod:`parconv.inequalities` (weighted work ``G_w``), and the larger valid value is
reported; for stride-1 layers the two coincide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .inequalities import (
    I1,
    I1W,
    NAMES,
    Counts,
    counts,
    inequalities,
    max_iterations,
    real_iterations,
    weighted_work,
)
from .spec import ConvSpec

__all__ = [
    "Bound", "max_iterations", "vstar", "compulsory_bits", "sequential_bound",
    "parallel_memory_dependent_bound", "parallel_memory_independent_bound",
    "min_footprint_cost", "waterfill", "owned_bits", "real_iterations", "pass_bounds",
    "step_bounds", "step_compulsory_bits", "step_owned_bits", "traffic_average_bound",
]

#: Relative margin by which the numerically minimised footprint cost is shrunk (so it is a
#: lower bound on the exact minimum; the 1-D search converges to ~1e-13).
SAFETY = 1e-9
#: Relative margin on the closed-form minima (water-filling, stride-class equal split): they
#: are exact but computed in floating point, and real executions meet them exactly (1x1
#: layers on cube grids), so a last-ulp rounding up must not put the bound above them.
ROUNDING = 1e-14
#: Binding name of the averaging bound (:func:`traffic_average_bound`).
AVERAGE = "average: every received bit is sent"
_GRID = 17      # points per zoom round of the 1-D convex search
_ROUNDS = 16    # zoom rounds: the bracket shrinks by (GRID-1)/2 = 8 per round


@dataclass(frozen=True)
class Bound:
    """A lower bound on data movement.

    Attributes
    ----------
    bits:
        The lower bound in bits (may be <= 0: then it says nothing).
    binding:
        Which inequality / regime binds, e.g. ``"I1 (Loomis-Whitney, rho)"``,
        ``"I2: |V|<=O*C*R*S"``, ``"compulsory"``, ``"3D"``, ``"2D"``, ``"1D"``.
    vacuous:
        True when ``bits <= 0`` (report it; never divide by it).
    details:
        Supporting numbers (optimal T, V*, footprints, water-filling y_j, λ, ...).
    """

    bits: float
    binding: str
    vacuous: bool
    details: dict = field(default_factory=dict)

    @property
    def bytes(self) -> float:
        """The bound in bytes."""
        return self.bits / 8.0

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {"bits": self.bits, "bytes": self.bytes, "binding": self.binding,
                "vacuous": self.vacuous, "details": self.details}


# --------------------------------------------------------------------------------------
# the footprint-cost solver
# --------------------------------------------------------------------------------------
def _inner(c: Counts, v: np.ndarray, i: np.ndarray):
    """Exact min of p_F·F + p_O·O for fixed I (broadcast with v): returns (cost, F, O)."""
    lo_f = np.maximum(v / c.bhw, v / i)                     # (I2) filter, (I3) F·I >= v
    lo_o = np.maximum(v / c.crs, v / i)                     # (I2) output, (I3) O·I >= v
    q = np.maximum(v * v / (c.rho * i), v)                  # (I1) and (I3) O·F >= v
    corner = lo_f * lo_o >= q
    fa = np.maximum(lo_f, q / c.out_used)
    fb = np.maximum(fa, np.minimum(c.filter_used, q / lo_o))
    fh = np.clip(np.sqrt(c.p_out * q / c.p_filter), fa, fb)
    f = np.where(corner, lo_f, fh)
    o = np.where(corner, lo_o, q / fh)
    return c.p_in * i + c.p_filter * f + c.p_out * o, f, o


def _solve(c: Counts, v: np.ndarray):
    """Min footprint cost for each v (1-D array, 0 < v <= G_real): (cost, I, F, O)."""
    v = np.asarray(v, dtype=float)
    i_lo = np.maximum.reduce([v / (c.K * c.rho), v / c.filter_used, v / c.out_used,
                              v * v / (c.rho * float(c.filter_used) * c.out_used)])
    i_lo = np.minimum(i_lo, c.in_used)
    a, b = np.log(i_lo), np.full_like(v, math.log(c.in_used))
    t = np.linspace(0.0, 1.0, _GRID)
    rows = np.arange(v.size)
    for _ in range(_ROUNDS):
        u = a[:, None] + (b - a)[:, None] * t[None, :]
        g, _, _ = _inner(c, v[:, None], np.exp(u))
        j = np.argmin(g, axis=1)
        a = u[rows, np.maximum(j - 1, 0)]
        b = u[rows, np.minimum(j + 1, _GRID - 1)]
    u = a[:, None] + (b - a)[:, None] * t[None, :]
    g, f, o = _inner(c, v[:, None], np.exp(u))
    j = np.argmin(g, axis=1)
    return g[rows, j], np.exp(u[rows, j]), f[rows, j], o[rows, j]


def min_footprint_cost(spec: ConvSpec, v, *, pass_: str = "forward") -> np.ndarray | float:
    """Lower bound (in bits) on ``min p_I·I + p_F·F + p_O·O`` over footprints that admit
    ``v`` real iterations under (I1)-(I3) and the box limits; ``inf`` for v > G_real,
    0 for v <= 0. Vectorised over ``v``. ``pass_`` selects the per-projection weights
    (``forward``, ``dgrad``, ``wgrad``; :mod:`parconv.passes`)."""
    return _min_cost(counts(spec, pass_), v)


def _min_cost(c: Counts, v) -> np.ndarray | float:
    """:func:`min_footprint_cost` for given counts."""
    varr = np.atleast_1d(np.asarray(v, dtype=float))
    out = np.zeros_like(varr)
    ok = (varr > 0) & (varr <= c.g_real)
    out[varr > c.g_real] = np.inf
    if ok.any():
        out[ok] = _solve(c, varr[ok])[0] * (1.0 - SAFETY)
    return float(out[0]) if np.ndim(v) == 0 else out


def vstar(spec: ConvSpec, z_bits: float, *, pass_: str = "forward") -> float:
    """V*(Z): an upper bound on the number of real iterations any set of iterations with
    weighted footprint ``p_I·I + p_F·F + p_O·O <= Z`` (bits) can perform (THEORY.md §3).

    Found by bracketing log v of the (strictly increasing) minimum footprint cost; the
    returned v always has ``min_footprint_cost(v) > Z``, so it over-estimates V*.
    """
    c = counts(spec, pass_)
    if z_bits <= 0:
        return 0.0
    if _min_cost(c, float(c.g_real)) <= z_bits:
        return float(c.g_real)
    # bracket [lo, hi] in log v with cost(e^lo) <= Z < cost(e^hi); zoom with vector grids
    lo, hi = -60.0, math.log(c.g_real)
    while hi - lo > 1e-13 * max(1.0, abs(hi)):
        u = np.linspace(lo, hi, 65)
        ok = _min_cost(c, np.exp(u)) <= z_bits
        j = int(np.argmin(ok)) if not ok.all() else 64   # first v whose cost exceeds Z
        lo_new, hi_new = u[max(j - 1, 0)], u[j]
        if (lo_new, hi_new) == (lo, hi):
            break
        lo, hi = lo_new, hi_new
    return math.exp(hi)


def compulsory_bits(spec: ConvSpec, *, pass_: str = "forward") -> int:
    """X_comp: every used element of the two read arrays loaded once, every element of the
    accumulated array stored once (forward: ``p_I·|In_used| + p_F·|F_used| +
    min(p_accum, p_output)·|Out|``; dgrad: ``p_dOut·|Out_used| + p_F·|F_used| + w_dIn·|In|``;
    wgrad: ``p_I·|In_used| + p_dOut·|Out_used| + w_dF·|F|``)."""
    return int(_compulsory(counts(spec, pass_)))


def _compulsory(c: Counts) -> float:
    return sum(c.weight(j) * (c.total(j) if j == c.accumulated else c.used(j))
               for j in ("input", "filter", "output"))


def _tight(spec: ConvSpec, v: float, i: float, f: float, o: float) -> list[str]:
    """Inequalities tight (within 1e-6) at footprint (i, f, o) for v iterations."""
    vals = inequalities(spec, i, f, o)
    return [n for n in NAMES if float(vals[n]) <= v * (1 + 1e-6)]


def _segment_bound(c: Counts, g_work: float, m_bits: float, resident: float = 2.0):
    """sup over T of (T - p_max)·(g_work / V*(r·M + T) - 1) with r = ``resident``,
    parametrised by v = V*: T = cost(v) - r·M. Returns (bits, v, T, footprint)."""
    if g_work <= 0:
        return 0.0, 0.0, 0.0, (0.0, 0.0, 0.0)
    vmax = min(float(c.g_real), g_work)
    best = (-math.inf, 0.0, 0.0)

    def scan(vs: np.ndarray):
        nonlocal best
        vs = vs[(vs > 0) & (vs <= vmax)]
        if vs.size == 0:
            return
        cost = _min_cost(c, vs)
        t = cost - resident * m_bits
        val = np.where(t > c.p_max, (t - c.p_max) * (g_work / vs - 1.0), -math.inf)
        k = int(np.argmax(val))
        if val[k] > best[0]:
            best = (float(val[k]), float(vs[k]), float(t[k]))

    grid = np.geomspace(min(1.0, vmax), vmax, 241)
    scan(grid)
    for _ in range(3):
        if best[1] <= 0:
            break
        lv = math.log(best[1])
        step = (math.log(grid[1]) - math.log(grid[0])) if grid.size > 1 else 0.0
        grid = np.exp(np.linspace(lv - step, lv + step, 41))
        scan(grid)
    bits, v, t = best
    if not math.isfinite(bits):
        return 0.0, 0.0, 0.0, (0.0, 0.0, 0.0)
    _, i, f, o = _solve(c, np.array([v]))
    return bits, v, t, (float(i[0]), float(f[0]), float(o[0]))


def _closed_form_i1(c: Counts, g_work: float, m_bits: float, resident: float = 2.0) -> float:
    """The segment bound with (I1) alone at its optimum T = 2rM (r = ``resident``, footprint
    3rM): V_I1(Z) = sqrt(ρZ³/(27 p_I p_F p_O)), X >= (2rM − p_max)(G/V_I1(3rM) − 1)
    ≈ (2/√r)·G·sqrt(p_I p_F p_O/(ρ M)) − 2rM (r = 2: √2·G·... − 4M). Valid ((I1) alone
    over-estimates V*) but never stronger than the numeric bound."""
    if m_bits <= 0 or g_work <= 0:
        return 0.0
    z = 3.0 * resident * m_bits
    v1 = math.sqrt(c.rho * z**3 / (27.0 * c.p_in * c.p_filter * c.p_out))
    return (2.0 * resident * m_bits - c.p_max) * (g_work / v1 - 1.0)


def _caps_bits(c: Counts) -> list[float]:
    """Box limits of the footprints in bits, ascending."""
    return sorted([c.p_in * c.in_used, c.p_filter * c.filter_used, c.p_out * c.out_used])


def _max_sqrt_ifo(c: Counts, z: np.ndarray) -> np.ndarray:
    """U(Z) = max sqrt(I·F·O) subject to p_I·I + p_F·F + p_O·O <= Z and the box limits
    (exact: fill the smallest cap first, split the rest equally)."""
    z = np.asarray(z, dtype=float)
    rem, prod = z.copy(), np.ones_like(z)
    for k, cap in enumerate(_caps_bits(c)):
        y = np.minimum(cap, rem / (3 - k))
        prod, rem = prod * y, rem - y
    return np.sqrt(prod / (c.p_in * c.p_filter * c.p_out))


def _min_sum_for_product(target: float, caps: list[float]) -> float:
    """min y1+y2+y3 s.t. y1·y2·y3 >= target, y_j <= caps_j (ascending): equal split, a
    variable whose cap is below the common level sits at its cap."""
    lam = target ** (1.0 / 3.0)
    if lam <= caps[0]:
        return 3.0 * lam
    lam = math.sqrt(target / caps[0])
    if lam <= caps[1]:
        return caps[0] + 2.0 * lam
    return caps[0] + caps[1] + target / (caps[0] * caps[1])


def _weighted_segment_bound(c: Counts, gw: float, m_bits: float,
                            resident: float = 2.0) -> tuple[float, float]:
    """(I1w) segment bound: sup_T (T − p_max)·(gw / U(r·M + T) − 1), where gw is the
    weighted work to do (each segment does at most U(r·M+T) of it). Returns (bits, T)."""
    total = sum(_caps_bits(c))
    if gw <= 0 or total <= 0:
        return 0.0, 0.0
    return _segment_sup(lambda t: _max_sqrt_ifo(c, resident * m_bits + t), gw, c.p_max,
                        total)


def _segment_sup(work, g: float, p_max: float, span: float) -> tuple[float, float]:
    """``(sup_T (T − p_max)·(g / U(T) − 1), its T)`` on a grid of ``T = p_max + t``,
    ``t`` geometric over ``[1, max(span, 2)]`` (400 points), refined twice around the best
    (41 points); ``work(T)`` = U(T) (vectorised), taken 1e-12 relatively high. Every grid
    point is a valid ``T``, so the value is a valid bound."""
    best, best_t = 0.0, 0.0
    tt = np.geomspace(1.0, max(span, 2.0), 400)
    for _ in range(3):
        t = tt + p_max
        u = work(t) * (1.0 + 1e-12)
        val = (t - p_max) * (g / u - 1.0)
        k = int(np.argmax(val))
        if val[k] > best:
            best, best_t = float(val[k]), float(t[k])
        lo, hi = tt[max(k - 1, 0)], tt[min(k + 1, tt.size - 1)]
        tt = np.geomspace(lo, hi, 41) if hi > lo else tt
    return best, best_t


def _check_memory(memory_bytes: float) -> float:
    m = float(memory_bytes)
    if not math.isfinite(m) or m <= 0:
        raise ValueError(f"memory must be a positive number of bytes, got {memory_bytes!r}")
    return 8.0 * m


def _check_procs(procs: int) -> int:
    if isinstance(procs, bool) or int(procs) != procs or procs < 1:
        raise ValueError(f"procs must be a positive integer, got {procs!r}")
    return int(procs)


def sequential_bound(spec: ConvSpec, memory_bytes: float, *, single_chain: bool = False,
                     pass_: str = "forward") -> Bound:
    """Single processor with a fast memory of ``memory_bytes`` (THEORY.md §3):
    ``max(X_comp, sup_T (T − p_max)·(G_real/V*(2M+T) − 1))`` bits moved between slow and
    fast memory (loads + stores), and the same with the stride-class inequality (I1w).

    Parameters
    ----------
    single_chain:
        If True, return the stronger bound with segment footprint ``M + T`` instead of
        ``2M + T``, valid only for schedules in which every output element has a single
        accumulation chain (one partial sum at a time, created at its first update; no
        independently created partial sums merged later). Every box tiling with any
        tile-loop order is such a schedule. Whether the restriction loses generality is
        **open**; the default bound makes no such assumption. (For dgrad/wgrad read
        "output" as the accumulated array dIn/dF.)
    pass_:
        ``forward`` (default), ``dgrad`` or ``wgrad`` (:mod:`parconv.passes`).

    Raises
    ------
    ValueError
        If ``memory_bytes`` is not positive.
    """
    m = _check_memory(memory_bytes)
    c = counts(spec, pass_)
    r = 1.0 if single_chain else 2.0
    xc = float(int(_compulsory(c)))
    seg, v, t, (i, f, o) = _segment_bound(c, float(c.g_real), m, r)
    gw = weighted_work(spec)
    segw, tw = _weighted_segment_bound(c, gw, m, r)
    details = {
        "memory_bits": m, "compulsory_bits": xc, "segment_bits": seg, "T_bits": t,
        "vstar": v, "footprint": {"I": i, "F": f, "O": o}, "g_real": c.g_real,
        "rho": c.rho, "closed_form_I1_bits": _closed_form_i1(c, float(c.g_real), m, r),
        "stride_class_bits": segw, "stride_class_T_bits": tw, "weighted_work": gw,
        "segment_footprint": "M + T (single accumulation chain per output)" if single_chain
        else "2M + T",
    }
    if segw > max(seg * (1 + 1e-6), xc):   # (near-)ties keep the (I1)-(I3) label
        return Bound(segw, I1W, segw <= 0, details)
    if seg > xc:
        tight = _tight(spec, v, i, f, o)
        details["tight"] = tight
        return Bound(seg, " + ".join(tight) or I1, seg <= 0, details)
    return Bound(xc, "compulsory", xc <= 0, details)


def parallel_memory_dependent_bound(spec: ConvSpec, procs: int, memory_bytes: float, *,
                                    pass_: str = "forward") -> Bound:
    """P processors with ``memory_bytes`` each (THEORY.md §5): the segment bound of §3 for
    the busiest processor, which performs at least G_real/P real iterations. No
    compulsory term (a processor may own its data).

    It counts every bit crossing the boundary of a processor's memory of M bits: bits it
    receives and sends, **plus** loads and stores from any local memory beyond M. Only
    if M is a processor's whole memory (its owned share included) is that its network
    traffic alone; that needs ``P·M >= p_I·|In| + p_F·|F|`` and ``P·M >= p_output·|Out|``
    (``details["network_only"]``). When that fails (e.g. M read as a cache size), no
    one-level execution exists, the bound says nothing about network bytes alone, and
    ``binding`` says so: the data-parallel grid can move less over the network.
    ``pass_`` selects the training pass (read arrays and the delivered one swap roles).

    Raises
    ------
    ValueError
        If ``procs`` or ``memory_bytes`` is not positive.
    """
    p = _check_procs(procs)
    m = _check_memory(memory_bytes)
    c = counts(spec, pass_)
    g_work = c.g_real / p
    seg, v, t, (i, f, o) = _segment_bound(c, g_work, m)
    gw = weighted_work(spec) / p
    segw, tw = _weighted_segment_bound(c, gw, m)
    network_only = p * m >= max(sum(c.weight(j) * c.total(j) for j in ("input", "filter",
                                                                       "output")
                                    if j != c.accumulated),
                                c.p_output * c.total(c.accumulated))
    details = {"memory_bits": m, "procs": p, "iterations_per_proc": g_work, "T_bits": t,
               "vstar": v, "footprint": {"I": i, "F": f, "O": o}, "rho": c.rho,
               "closed_form_I1_bits": _closed_form_i1(c, g_work, m), "segment_bits": seg,
               "stride_class_bits": segw, "stride_class_T_bits": tw,
               "weighted_work_per_proc": gw, "network_only": network_only}
    note = "" if network_only else " [P*M < data: network + local-memory bits]"
    if segw > seg * (1 + 1e-6):
        details["tight"] = [I1W]
        return Bound(segw, I1W + note, segw <= 0, details)
    tight = _tight(spec, v, i, f, o) if seg > 0 else []
    details["tight"] = tight
    label = " + ".join(tight) + note if tight else "none (vacuous)"
    return Bound(seg, label, seg <= 0, details)


def waterfill(spec: ConvSpec, procs: int, *, pass_: str = "forward") -> dict:
    """The (I1)+(I2) water-filling of THEORY.md §5 for G_real/P iterations.

    Returns
    -------
    dict
        ``y_I, y_F, y_O`` (bits), ``c_I, c_F, c_O`` (the (I2) floors, bits), ``lambda``,
        ``regime`` ("3D": no floor binds, "2D": one, "1D": two) and ``total`` (bits).
    """
    p = _check_procs(procs)
    c = counts(spec, pass_)
    return _waterfill_at(c, c.g_real / p)


def _waterfill_at(c: Counts, g: float) -> dict:
    """:func:`waterfill` for ``g`` iterations on one processor: the exact minimum of
    ``y_I + y_F + y_O`` subject to the (I2) floors ``y_j >= c_j`` (linear in ``g``) and
    the (I1) product ``y_I·y_F·y_O >= p_I·p_F·p_O·g²/ρ``."""
    if g <= 0:
        return {"y_I": 0.0, "y_F": 0.0, "y_O": 0.0, "c_I": 0.0, "c_F": 0.0, "c_O": 0.0,
                "lambda": 0.0, "regime": "3D", "total": 0.0}
    floors = {"I": c.p_in * g / (c.K * c.rho), "F": c.p_filter * g / c.bhw,
              "O": c.p_out * g / c.crs}
    target = c.p_in * c.p_filter * c.p_out * g * g / c.rho   # Π y_j must reach this
    order = sorted(floors, key=floors.get, reverse=True)
    lam = target ** (1.0 / 3.0)
    nbind = 0
    if lam < floors[order[0]]:
        nbind = 1
        lam = math.sqrt(target / floors[order[0]])
        if lam < floors[order[1]]:
            nbind = 2
            lam = target / (floors[order[0]] * floors[order[1]])
    y = {j: max(floors[j], lam) for j in floors}
    return {"y_I": y["I"], "y_F": y["F"], "y_O": y["O"], "c_I": floors["I"],
            "c_F": floors["F"], "c_O": floors["O"], "lambda": lam,
            "regime": ("3D", "2D", "1D")[nbind], "total": y["I"] + y["F"] + y["O"]}


def traffic_average_bound(c: Counts, procs: int, owned: float) -> tuple[float, float]:
    """The averaging bound on the busiest processor's received + sent bits (docs/theory.md
    §5, "Sharper: every received bit is sent"), for ``procs`` processors each owning at
    most ``owned`` bits of the pass's arrays.

    With ``h(g)`` the water-filling footprint of ``g`` iterations (:func:`_waterfill_at`,
    ``h(g)/g`` non-increasing) and ``g*`` the most iterations one processor performs:
    the busiest processor moves at least ``A(g*) = h(g*) − owned``, and, since every bit
    one processor receives another sends, the average processor moves at least
    ``C(g*) = 2·(G/P)·h(g*)/g* − 2·owned``. ``A`` rises and ``C`` falls with ``g*`` in
    ``[G/P, G]``, so ``min over g* of max(A, C)`` bounds every execution; it is found by
    bisection and returned as ``A(lo)`` for the last ``lo`` with ``A(lo) <= C(lo)``
    (never above the minimum).

    Returns
    -------
    (bits, g_ratio)
        The bound (bits, may be <= 0) and ``lo / (G/P)``, the busiest processor's work
        relative to the average at the minimum (1.0 when ``A >= C`` already at ``G/P``).
    """
    p = _check_procs(procs)
    G = c.g_real
    if G <= 0 or p == 1:
        return 0.0, 1.0
    g0 = G / p

    def a_and_c(g: float) -> tuple[float, float]:
        h = _waterfill_at(c, g)["total"] * (1.0 - ROUNDING)
        return h - owned, 2.0 * g0 * h / g - 2.0 * owned

    a, avg = a_and_c(g0)
    if a >= avg:
        return a, 1.0
    lo, hi = g0, float(G)
    a_hi, avg_hi = a_and_c(hi)
    if a_hi <= avg_hi:
        return a_hi, hi / g0
    a_lo = a
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if not lo < mid < hi:
            break
        a_mid, avg_mid = a_and_c(mid)
        if a_mid <= avg_mid:
            lo, a_lo = mid, a_mid
        else:
            hi = mid
    return a_lo, lo / g0


def owned_bits(spec: ConvSpec, procs: int, *, pass_: str = "forward") -> float:
    """The most one processor owns under an even initial/final distribution:
    ``p_I·⌈|In|/P⌉ + p_F·⌈|F|/P⌉ + p_O·⌈|Out|/P⌉`` (full arrays: the conservative share)."""
    p = _check_procs(procs)
    c = counts(spec, pass_)
    return (c.p_in * -(-c.in_total // p) + c.p_filter * -(-c.filter_total // p)
            + c.p_out * -(-c.out_total // p))


def parallel_memory_independent_bound(spec: ConvSpec, procs: int, *,
                                      pass_: str = "forward") -> Bound:
    """Memory-independent bound for P processors (THEORY.md §5): the busiest processor
    performs >= G_real/P real iterations, so it touches footprints costing at least the
    minimum footprint cost, of which it owns at most :func:`owned_bits`; the rest it must
    receive (inputs, filters) or send (output contributions).

    The lemma: ``max(water-filling total, full solver) − owned``: the closed-form
    water-filling uses (I1)+(I2) only; the full solver adds (I3) and the box limits
    (i <= |In_used|, ...), so it is >= the water-filling and also valid. ``bits`` is the
    larger of the lemma and :func:`traffic_average_bound` (every bit received is sent, so
    the average processor moves twice what all processors must receive; binding
    :data:`AVERAGE` when it wins). Both bound the busiest processor's received + sent
    bits, not its received bits alone.
    ``details`` has ``y_I, y_F, y_O`` (bits), ``lambda``, ``regime``, ``owned_bits``,
    ``lemma_bits``, ``average_bits`` and ``average_busiest_work_ratio``.
    ``pass_`` selects the training pass (``I, F, O`` are then the projections).

    Raises
    ------
    ValueError
        If ``procs`` is not a positive integer.
    """
    p = _check_procs(procs)
    c = counts(spec, pass_)
    wf = waterfill(spec, p, pass_=pass_)
    g = c.g_real / p
    full = float(_min_cost(c, g))
    i, f, o = (np.zeros(1),) * 3
    if g > 0:
        _, i, f, o = _solve(c, np.array([g]))
    owned = owned_bits(spec, p, pass_=pass_)
    gw = weighted_work(spec) / p
    need_w = _min_sum_for_product(c.p_in * c.p_filter * c.p_out * gw * gw, _caps_bits(c)) \
        if gw > 0 else 0.0
    need = max(wf["total"] * (1.0 - ROUNDING), full, need_w * (1.0 - ROUNDING))
    lemma = need - owned
    average, g_ratio = traffic_average_bound(c, p, owned)
    bits = max(lemma, average)
    binding = wf["regime"]
    if need_w > max(wf["total"], full) * (1 + 1e-6):
        binding = I1W                       # details["regime"] keeps the water-filling regime
    elif full > wf["total"] * (1 + 1e-6):
        binding += " + box/I3 limits"
    lemma_binding = binding
    if average > lemma:
        binding = f"{AVERAGE} (lemma: {lemma_binding})"
    details = dict(wf)
    details.update({"procs": p, "iterations_per_proc": g, "owned_bits": owned,
                    "lemma_bits": lemma, "lemma_binding": lemma_binding,
                    "average_bits": average,
                    "average_busiest_work_ratio": g_ratio,
                    "waterfill_bits": wf["total"], "full_solver_bits": full,
                    "stride_class_bits": need_w, "weighted_work_per_proc": gw,
                    "footprint": {"I": float(i[0]), "F": float(f[0]), "O": float(o[0])},
                    "rho": c.rho})
    return Bound(bits, binding, bits <= 0, details)


# --------------------------------------------------------------------------------------
# training passes and the training step (THEORY.md §7; docs/theory.md §8)
# --------------------------------------------------------------------------------------
#: Names of the union inequalities of a training step (docs/theory.md §8).
U_IN = "U: v_f+v_d+v_w <= sqrt(rho*(2I+dI)*(F+dF)*(O+dO))"
U_FILTER = "U: v_f+v_d+v_w <= sqrt(rho*(I+dI)*(2F+dF)*(O+dO))"
U_OUTPUT = "U: v_f+v_d+v_w <= sqrt(rho*(I+dI)*(F+dF)*(2dO+O))"


def pass_bounds(spec: ConvSpec, pass_: str, procs: int = 1,
                memory_bytes: float = 256 * 1024) -> dict:
    """All lower bounds of one training pass, or of a training step.

    Parameters
    ----------
    spec:
        The layer; ``spec.precision`` is the *forward* precision (for training use
        ``training_precision(name).forward_precision``, :mod:`parconv.passes`).
    pass_:
        ``forward``, ``dgrad``, ``wgrad`` or ``step``.
    procs, memory_bytes:
        Processors and memory per processor (bytes; the fast memory when ``procs == 1``).

    Returns
    -------
    dict
        For one pass: ``{"pass", "precision" (PassPrecision.to_dict()), "sequential",
        "sequential_single_chain"}`` and, for ``procs > 1``, ``"parallel_memory_dependent"``,
        ``"parallel_memory_independent"`` (:class:`Bound` values; the forward ones are
        exactly :func:`sequential_bound` etc.). For ``step``: ``{"pass": "step", "passes":
        {forward, dgrad, wgrad: the per-pass dicts}, "separate": {...}, "keep": {...}}``
        where ``separate`` and ``keep`` map the same bound names to the step bounds of
        :func:`step_bounds` (what each assumes: its docstring).

    Raises
    ------
    ValueError
        Unknown pass; dgrad/wgrad/step of an integer precision; bad procs/memory.
    """
    from .passes import check_pass, pass_precision

    name = check_pass(pass_, allow_step=True)
    p = _check_procs(procs)
    _check_memory(memory_bytes)
    if name == "step":
        per = {j: pass_bounds(spec, j, p, memory_bytes) for j in ("forward", "dgrad", "wgrad")}
        sb = step_bounds(spec, p, memory_bytes, _per_pass=per)
        return {"pass": "step", "passes": per, "separate": sb["separate"], "keep": sb["keep"]}
    out: dict = {
        "pass": name,
        "precision": pass_precision(spec.precision, name).to_dict(),
        "sequential": sequential_bound(spec, memory_bytes, pass_=name),
        "sequential_single_chain": sequential_bound(spec, memory_bytes, single_chain=True,
                                                    pass_=name),
    }
    if p > 1:
        out["parallel_memory_dependent"] = parallel_memory_dependent_bound(
            spec, p, memory_bytes, pass_=name)
        out["parallel_memory_independent"] = parallel_memory_independent_bound(
            spec, p, pass_=name)
    return out


def _step_counts(spec: ConvSpec) -> dict[str, Counts]:
    """Counts of the three passes, each with ``p_transfer`` = the widest transfer of the step."""
    from dataclasses import replace

    cs = {j: counts(spec, j) for j in ("forward", "dgrad", "wgrad")}
    pmax = max(c.p_max for c in cs.values())
    return {j: replace(c, p_transfer=pmax) for j, c in cs.items()}


def _union_factors(cs: dict[str, Counts]) -> list[tuple[str, float, list[float]]]:
    """The three union inequalities as (name, ρ·r1·r2·r3, caps in bits ascending): each
    bounds v_f + v_d + v_w by sqrt(ρ·Π factor_i) where factor_i <= min(r_i·z_i, cap value_i)
    with z_i the bits spent on that factor's two arrays (docs/theory.md §8)."""
    f, d, w = cs["forward"], cs["dgrad"], cs["wgrad"]
    # arrays: In (f.p_in), dIn (d.p_in), F (f.p_filter), dF (w.p_filter), Out (f.p_out),
    # dOut (d.p_out); used element counts are the same in every pass
    pairs = {"input": (f.p_in, d.p_in, f.in_used), "filter": (f.p_filter, w.p_filter,
                                                                 f.filter_used),
             "output": (d.p_out, f.p_out, f.out_used)}   # shared array first: dOut, then Out
    out = []
    for name, doubled in ((U_IN, "input"), (U_FILTER, "filter"), (U_OUTPUT, "output")):
        rate, caps = 1.0, []
        for proj, (w_shared, w_other, used) in pairs.items():
            k = 2.0 if proj == doubled else 1.0
            r = max(k / w_shared, 1.0 / w_other)
            rate *= r
            caps.append((k + 1.0) * used / r)
        out.append((name, f.rho * rate, sorted(caps)))
    return out


def _union_max_work(factors, z: np.ndarray) -> np.ndarray:
    """U(Z): upper bound on the real iterations of all three passes that a union footprint
    of Z bits admits (the smallest of the three union inequalities, caps included)."""
    z = np.asarray(z, dtype=float)
    best = np.full_like(z, np.inf)
    for _, coef, caps in factors:
        rem, prod = z.copy(), np.ones_like(z)
        for k, cap in enumerate(caps):
            y = np.minimum(cap, rem / (3 - k))
            prod, rem = prod * y, rem - y
        best = np.minimum(best, np.sqrt(coef * prod))
    return best


def _union_segment_bound(factors, g_union: float, m_bits: float, p_max: float,
                         cap_bits: float) -> tuple[float, float]:
    """sup_T (T − p_max)·(g_union / U(2M + T) − 1) on a grid of T (every point valid)."""
    if g_union <= 0:
        return 0.0, 0.0
    return _segment_sup(lambda t: _union_max_work(factors, 2.0 * m_bits + t), g_union, p_max,
                        cap_bits)


def _union_min_footprint(factors, v: float) -> tuple[float, str]:
    """Least union footprint (bits) admitting v real iterations of the three passes together:
    the largest over the union inequalities of min Σz s.t. coef·Π min(z_i, cap_i) >= v²."""
    if v <= 0:
        return 0.0, ""
    vals = [(_min_sum_for_product(v * v / coef, caps), name) for name, coef, caps in factors]
    return max(vals)


def step_compulsory_bits(spec: ConvSpec) -> float:
    """Compulsory traffic of a training step when data may be kept between passes: each
    used element of In, F and dOut loaded once, each element of Out, dIn and dF stored once
    (at its accumulated weight)."""
    cs = {j: counts(spec, j) for j in ("forward", "dgrad", "wgrad")}
    f, d, w = cs["forward"], cs["dgrad"], cs["wgrad"]
    return (f.p_in * f.in_used + f.p_filter * f.filter_used + d.p_out * d.out_used
            + f.p_out * f.out_total + d.p_in * d.in_total + w.p_filter * w.filter_total)


def step_bounds(spec: ConvSpec, procs: int = 1, memory_bytes: float = 256 * 1024, *,
                _per_pass: dict | None = None) -> dict[str, dict[str, Bound]]:
    """Lower bounds for a training step of one layer (forward + dgrad + wgrad), for two
    classes of algorithms (proofs: docs/theory.md §8).

    ``separate``: the passes run one after another and nothing is kept between them: each
    pass starts with its operands in slow memory (parallel: in the owned layout) and ends
    with its result there. The bound is the **sum** of the per-pass bounds (each clipped at
    0). Sequential: on the total loads + stores. Parallel: on the sum over the passes of
    each pass's busiest processor (the cost of passes separated by synchronisation, as
    layers are summed in THEORY.md §8) -- not on the busiest processor's step total.

    ``keep``: any algorithm performing the real iterations of the three passes, in any
    order (interleaved, fused), keeping any data between passes (e.g. the forward input
    window for wgrad, dOut between dgrad and wgrad); inputs In, F, dOut start in slow
    memory (parallel: spread, at most ⌈|A|/P⌉ per processor), results Out, dIn, dF end
    there. Sequential: the max of the step's compulsory traffic, each pass's segment bound
    applied to the whole step, and the union segment bound (3·G_real iterations against
    the union inequalities). Parallel: on the busiest processor's step total: the max of
    the per-pass bounds and the union bound for the processor doing >= 3·G_real/P.

    Returns
    -------
    dict
        ``{"separate": {name: Bound}, "keep": {name: Bound}}`` with names
        ``sequential``, ``sequential_single_chain`` (separate only), and for ``procs > 1``
        ``parallel_memory_dependent``, ``parallel_memory_independent``.
    """
    p = _check_procs(procs)
    m = _check_memory(memory_bytes)
    per = _per_pass or {j: pass_bounds(spec, j, p, memory_bytes)
                        for j in ("forward", "dgrad", "wgrad")}
    names = ["sequential", "sequential_single_chain"]
    if p > 1:
        names += ["parallel_memory_dependent", "parallel_memory_independent"]
    separate = {}
    for key in names:
        parts = {j: per[j][key].bits for j in per}
        bits = sum(max(b, 0.0) for b in parts.values())
        details = {"per_pass_bits": parts, "class": "separate"}
        label = "sum of per-pass bounds"
        if key == "parallel_memory_dependent":
            nets = [per[j][key].details["network_only"] for j in per]
            details["network_only"] = all(nets)
            if not all(nets):
                label += " [P*M < data: network + local-memory bits]"
        separate[key] = Bound(bits, label, bits <= 0, details)

    cs = _step_counts(spec)
    pmax = next(iter(cs.values())).p_max
    factors = _union_factors(cs)
    g3 = 3.0 * cs["forward"].g_real
    data = sum(c.weight(j) * c.used(j) for c in cs.values() for j in ("input", "filter",
                                                                        "output"))
    keep = {}
    # sequential
    xc = step_compulsory_bits(spec)
    cand = {"compulsory (step)": xc}
    for j, c in cs.items():
        cand[f"{j} segment"] = _segment_bound(c, float(c.g_real), m)[0]
        cand[f"{j} stride-class segment"] = _weighted_segment_bound(c, weighted_work(spec), m)[0]
    useg, ut = _union_segment_bound(factors, g3, m, pmax, data)
    cand["union segment"] = useg
    key, bits = max(cand.items(), key=lambda kv: kv[1])
    keep["sequential"] = Bound(bits, key, bits <= 0,
                               {"class": "keep", "candidates_bits": cand, "union_T_bits": ut,
                                "memory_bits": m})
    if p > 1:
        cand = {}
        for j, c in cs.items():
            g = c.g_real / p
            cand[f"{j} segment"] = _segment_bound(c, g, m)[0]
            cand[f"{j} stride-class segment"] = _weighted_segment_bound(
                c, weighted_work(spec) / p, m)[0]
        cand["union segment"] = _union_segment_bound(factors, g3 / p, m, pmax, data)[0]
        key, bits = max(cand.items(), key=lambda kv: kv[1])
        nets = [per[j]["parallel_memory_dependent"].details["network_only"] for j in per]
        label = key + ("" if all(nets) else " [P*M < data: network + local-memory bits]")
        keep["parallel_memory_dependent"] = Bound(
            bits, label, bits <= 0, {"class": "keep", "candidates_bits": cand,
                                     "network_only": all(nets), "memory_bits": m})
        keep["parallel_memory_independent"] = _step_independent_keep(
            spec, p, {j: per[j]["parallel_memory_independent"] for j in per}, factors, g3)
    # a separate algorithm is also a "keep" algorithm, and the keep bounds bound a quantity
    # (sequential: the same total; parallel: the busiest processor's step total) that is at
    # most the separate quantity: so the separate bound is the larger of the two
    for key, kb in keep.items():
        if kb.bits > separate[key].bits:
            d = dict(separate[key].details, keep_bits=kb.bits)
            separate[key] = Bound(kb.bits, f"step (keep): {kb.binding}", kb.bits <= 0, d)
    return {"separate": separate, "keep": keep}


def _step_independent_keep(spec: ConvSpec, p: int, per: dict[str, Bound], factors,
                           g3: float) -> Bound:
    """The ``keep`` memory-independent step bound (:func:`step_bounds`): the max of the
    per-pass bounds and the union bound for the processor doing >= 3·G_real/P."""
    owned = step_owned_bits(spec, p)
    need, uname = _union_min_footprint(factors, g3 / p)
    cand = {f"{j} (per pass)": per[j].bits for j in per}
    cand["union"] = need * (1.0 - ROUNDING) - owned
    key, bits = max(cand.items(), key=lambda kv: kv[1])
    if key == "union":
        key = f"union ({uname})"
    # the busiest-processor lemma alone (no averaging): the received-only figure's yardstick
    lemma = max([per[j].details["lemma_bits"] for j in per] + [cand["union"]])
    return Bound(bits, key, bits <= 0, {"class": "keep", "candidates_bits": cand,
                                        "union_footprint_bits": need, "step_owned_bits": owned,
                                        "lemma_bits": lemma})


def step_memory_independent_bounds(spec: ConvSpec, procs: int) -> dict[str, Bound]:
    """Only the parallel memory-independent bounds of :func:`step_bounds` (the same
    values, without the sequential and memory-dependent ones): ``{"keep": Bound,
    "separate": Bound}``; the planner's step bound.

    Raises
    ------
    ValueError
        If ``procs`` < 2 or for integer precisions.
    """
    p = _check_procs(procs)
    if p < 2:
        raise ValueError("the parallel step bounds need at least 2 processors")
    per = {j: parallel_memory_independent_bound(spec, p, pass_=j)
           for j in ("forward", "dgrad", "wgrad")}
    cs = _step_counts(spec)
    keep = _step_independent_keep(spec, p, per, _union_factors(cs),
                                  3.0 * cs["forward"].g_real)
    parts = {j: b.bits for j, b in per.items()}
    bits = sum(max(b, 0.0) for b in parts.values())
    details = {"per_pass_bits": parts, "class": "separate"}
    sep = Bound(bits, "sum of per-pass bounds", bits <= 0, details)
    if keep.bits > bits:     # as in step_bounds: a separate algorithm is a keep algorithm
        sep = Bound(keep.bits, f"step (keep): {keep.binding}", keep.bits <= 0,
                    dict(details, keep_bits=keep.bits))
    return {"keep": keep, "separate": sep}


def step_owned_bits(spec: ConvSpec, procs: int) -> float:
    """The most one processor owns of the six arrays of a step (In, F, dOut at the start;
    Out, dIn, dF at the end), ⌈|A|/P⌉ elements each, at the bounds' weights."""
    p = _check_procs(procs)
    f, d, w = (counts(spec, j) for j in ("forward", "dgrad", "wgrad"))
    share = lambda n: -(-n // p)  # noqa: E731
    return (f.p_in * share(f.in_total) + f.p_filter * share(f.filter_total)
            + d.p_out * share(d.out_total) + f.p_out * share(f.out_total)
            + d.p_in * share(d.in_total) + w.p_filter * share(w.filter_total))
