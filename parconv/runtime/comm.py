"""The processor grid as MPI communicators: a Cartesian communicator of the planned
``b × k × c × h × w`` grid and one sub-communicator per fiber the algorithm uses."""

from __future__ import annotations

from dataclasses import dataclass

from ..planner.partition import Grid
from ..planner.schedule import FIBERS


@dataclass
class GridComm:
    """A Cartesian communicator over ``grid`` plus its fiber sub-communicators.

    Ranks are numbered row-major over ``(i_b, i_k, i_c, i_h, i_w)`` (``reorder=False``),
    as :mod:`parconv.planner.partition` assumes; each fiber communicator numbers its members
    row-major over the kept axes, as :func:`parconv.planner.schedule.fiber_members`.

    Attributes
    ----------
    cart : the Cartesian communicator.
    fibers : ``{operation: sub-communicator}`` for the four operations.
    """

    grid: Grid
    cart: object
    fibers: dict

    @classmethod
    def create(cls, comm, grid: Grid) -> GridComm:
        """Build the grid over ``comm`` (collective over ``comm``).

        Raises
        ------
        ValueError
            If the grid's size differs from ``comm``'s (checked before any collective).
        """
        if grid.size != comm.Get_size():
            raise ValueError(f"grid {grid} has {grid.size} ranks but the job has {comm.Get_size()}")
        cart = comm.Create_cart(list(grid.dims), periods=[False] * 5, reorder=False)
        fibers = {op: cart.Sub(list(keep)) for op, keep in FIBERS.items()}
        return cls(grid, cart, fibers)

    @property
    def rank(self) -> int:
        return self.cart.Get_rank()

    @property
    def coords(self) -> tuple[int, ...]:
        return tuple(self.cart.Get_coords(self.rank))

    def free(self) -> None:
        """Release the communicators."""
        for c in self.fibers.values():
            c.Free()
        self.cart.Free()
        self.fibers = {}
