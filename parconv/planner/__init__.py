"""The pure planning layer for training and networks (no MPI, no data).

:mod:`.passes` names the passes of one layer and their operations: every backward
operation is the adjoint of a forward one.
"""
