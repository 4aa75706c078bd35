#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine, then runs the lint and the
# whole test suite (the MPI tests launch their own `mpiexec` runs, under timeouts).
# Extra arguments go to pytest, e.g. `bash launch/test.sh -k partition`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$PARCONV_ROOT"
ruff check parconv tests bench launch
python -m pytest -q --timeout=900 "$@"
