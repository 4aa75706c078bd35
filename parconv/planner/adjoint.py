"""The passes of one convolution layer and the operations each runs (pure).

THEORY.md §7: the backward schedule is the adjoint of the forward one on the same grid:
allgather <-> reduce-scatter along the same fiber, halo exchange <-> send-back-and-add.
This module only names the operations; :mod:`parconv.planner.schedule` derives each
backward operation's blocks from the forward operation it is the adjoint of, and
:mod:`parconv.planner.plan` its bytes.
"""

from __future__ import annotations

from ..passes import PASSES as _PASSES
from ..passes import STEP
from .partition import OPERATIONS

#: What a plan or a run can execute: one pass (:data:`parconv.passes.PASSES`) or the
#: training ``step`` (forward, then dgrad and wgrad).
PASSES = (*_PASSES, STEP)

#: Backward operations: each is the adjoint of one forward operation (same communicator,
#: same block sizes, receive and send exchanged) and moves the named array:
#: ``grad_output`` in the output dtype, partial gradients in the accumulator dtype.
ADJOINT_OF: dict[str, tuple[str, str]] = {
    "grad_output_allgather": ("output_reduce_scatter", "grad_output"),
    "grad_input_halo": ("input_halo", "accum"),
    "grad_input_reduce_scatter": ("input_allgather", "accum"),
    "grad_filter_reduce_scatter": ("filter_allgather", "accum"),
}

#: Forward operations run again in the backward pass when the input window is not kept
#: (``keep_window=False``): the same messages under their own names.
RECOMPUTED = {"recompute_input_allgather": "input_allgather",
              "recompute_input_halo": "input_halo"}


def pass_operations(pass_: str, keep_window: bool = True) -> tuple[str, ...]:
    """Operation names of one pass, in execution order.

    ``forward``: the four operations of THEORY.md §6. ``dgrad`` alone gathers the filter,
    then runs the adjoints that produce the input gradient; ``wgrad`` alone gathers the
    input window, then reduce-scatters the filter gradient. ``step`` runs forward, then
    both backward passes, reusing the forward's filter and (with ``keep_window``) its
    input window; without it the window is gathered again (``recompute_*``).

    Raises
    ------
    ValueError
        For an unknown pass.
    """
    if pass_ == "forward":
        return OPERATIONS
    if pass_ == "dgrad":
        return ("filter_allgather", "grad_output_allgather", "grad_input_halo",
                "grad_input_reduce_scatter")
    if pass_ == "wgrad":
        return ("input_allgather", "input_halo", "grad_output_allgather",
                "grad_filter_reduce_scatter")
    if pass_ == "step":
        again = () if keep_window else tuple(RECOMPUTED)
        return (*OPERATIONS, "grad_output_allgather", "grad_input_halo",
                "grad_input_reduce_scatter", *again, "grad_filter_reduce_scatter")
    raise ValueError(f"unknown pass {pass_!r}: expected one of {', '.join(PASSES)}")


def forward_source(op: str) -> str:
    """The forward operation whose communicator and blocks ``op`` uses."""
    if op in ADJOINT_OF:
        return ADJOINT_OF[op][0]
    return RECOMPUTED.get(op, op)



def itemsize(precision, op: str) -> int:
    """Bytes per element that operation ``op`` moves: input and filter blocks in their
    dtypes, the output gradient in the output dtype, partial sums in the accumulator."""
    if op in ADJOINT_OF:
        role = ADJOINT_OF[op][1]
        return (precision.p_output if role == "grad_output" else precision.p_accum) // 8
    src = RECOMPUTED.get(op, op)
    bits = {"input_allgather": precision.p_input, "input_halo": precision.p_input,
            "filter_allgather": precision.p_filter, "output_reduce_scatter": precision.p_accum}
    return bits[src] // 8


def pass_volume(forward: dict, precision, pass_: str, keep_window: bool = True) -> dict:
    """``{op: (recv, send)}`` bytes of one pass from the forward ``{op: (recv, send)}``
    (ints or arrays over ranks): an adjoint receives what its forward operation sends and
    sends what it receives, rescaled to its own element size."""
    out = {}
    for op in pass_operations(pass_, keep_window):
        src = forward_source(op)
        recv, send = forward[src]
        if op in ADJOINT_OF:
            old, new = itemsize(precision, src), itemsize(precision, op)
            recv, send = send // old * new, recv // old * new
        out[op] = (recv, send)
    return out


__all__ = ["ADJOINT_OF", "PASSES", "RECOMPUTED", "forward_source", "itemsize", "pass_operations",
           "pass_volume"]
