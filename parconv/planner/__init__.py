"""The pure planning layer for training and networks (no MPI, no data).

:mod:`.adjoint` names the operations each pass of one layer runs: every backward
operation is the adjoint of a forward one. The precision of each pass is
:mod:`parconv.passes`.
"""
