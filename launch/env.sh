#!/usr/bin/env bash
# Source me: creates (or refreshes) the project's virtual environment in .venv with
# MPI from PyPI (mpich), installs parconv with its dev extras, and sets up the numba
# on-disk cache. Idempotent and quick when nothing changed.
#   PARCONV_VENV   where the venv lives (default: <repo>/.venv)
#   PARCONV_PYTHON the interpreter to build it with (default: python3)
#   PARCONV_EXTRAS pip extras to install (default: mpi,dev)
PARCONV_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PARCONV_VENV="${PARCONV_VENV:-$PARCONV_ROOT/.venv}"
PARCONV_EXTRAS="${PARCONV_EXTRAS:-mpi,dev}"
if [ ! -x "$PARCONV_VENV/bin/python" ]; then
    echo "[parconv] creating virtual environment $PARCONV_VENV" >&2
    "${PARCONV_PYTHON:-python3}" -m venv "$PARCONV_VENV" || return 1 2>/dev/null || exit 1
fi
_stamp="$PARCONV_VENV/.parconv-installed"
_want="$( (cat "$PARCONV_ROOT/pyproject.toml"; echo "$PARCONV_EXTRAS") | sha256sum | cut -c1-16)"
if [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_want" ]; then
    echo "[parconv] installing parconv[$PARCONV_EXTRAS] into $PARCONV_VENV" >&2
    # No pipe here: under `set -o pipefail` a filter that prints nothing (grep -v on a
    # quiet, successful install) would fail the caller.
    if "$PARCONV_VENV/bin/python" -m pip install -q --disable-pip-version-check \
            -e "$PARCONV_ROOT[$PARCONV_EXTRAS]" >&2 \
        && "$PARCONV_VENV/bin/python" -c "import parconv, mpi4py, numba" 2>/dev/null; then
        echo "$_want" > "$_stamp"
    else
        echo "[parconv] installation failed" >&2
        return 1 2>/dev/null || exit 1
    fi
fi
export PATH="$PARCONV_VENV/bin:$PATH"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PARCONV_ROOT/.numba_cache}"
# One thread per rank by default: ranks fill the cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" \
       MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}" NUMBA_NUM_THREADS="${NUMBA_NUM_THREADS:-1}"
unset _stamp _want
