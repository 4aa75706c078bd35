"""The pure planning layer: everything computed without MPI and without data.

:mod:`.partition` (the grid, each rank's blocks, the reference per-rank bytes and
memory), :mod:`.plan` (exact per-rank volumes and the grid search), :mod:`.strategies`
(the fixed strategies in the same accounting), :mod:`.schedule` (each rank's message
schedule, which the MPI runtime follows verbatim), :mod:`.adjoint` (the operations of
each pass: every backward operation is the adjoint of a forward one) and
:mod:`.simulate` (every rank's schedule checked and counted without MPI). The precision
of each pass is :mod:`parconv.passes`; network plans are :mod:`parconv.network`.
"""
