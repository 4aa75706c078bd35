# Shared by the parconv sbatch templates (slurm/*.sbatch); source it, don't run it.
#
# Variables (all optional; defaults in brackets):
#   PARCONV_ROOT       repository root [found from the template, else $SLURM_SUBMIT_DIR]
#   PARCONV_PYTHON     interpreter with parconv installed [$PARCONV_ROOT/.venv/bin/python]
#   PARCONV_OUT        directory for the JSON results [$PARCONV_ROOT/results/slurm/<kind>-<job id>]
#   PARCONV_LAUNCHER   auto | srun | mpirun [auto: srun when it offers $PARCONV_SRUN_MPI,
#                      else mpirun]
#   PARCONV_SRUN_MPI   pmix | pmi2 | none (what `srun --mpi=list` offers and your MPI was
#                      built for) [pmix]
#   PARCONV_SRUN_FLAGS extra srun flags [--cpu-bind=cores --kill-on-bad-exit=1]
#   PARCONV_MPIRUN     mpirun fallback command [$PARCONV_ROOT/.venv/bin/mpiexec if present,
#                      else mpirun]
#   PARCONV_MPIRUN_FLAGS extra mpirun flags (binding ...) []
#   PARCONV_LAYER PARCONV_BATCH PARCONV_DTYPE PARCONV_GRID
#                      layer, batch, precision preset, grid [resnet50/layer3.1.conv2, 8, fp32, auto]
#   PARCONV_RUN_ARGS   extra `parconv run` flags, e.g. "--verify --seed 1" []
#   PARCONV_NTASKS     ranks [$SLURM_NTASKS]
#   PARCONV_DRY_RUN=1  print the commands instead of running them

parconv_init() {  # parconv_init KIND: set defaults, create the output directory
    local kind="$1" job="${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local}}"
    : "${PARCONV_PYTHON:=$PARCONV_ROOT/.venv/bin/python}"
    : "${PARCONV_OUT:=$PARCONV_ROOT/results/slurm/$kind-$job}"
    : "${PARCONV_LAUNCHER:=auto}"
    : "${PARCONV_SRUN_MPI:=pmix}"
    : "${PARCONV_SRUN_FLAGS:=--cpu-bind=cores --kill-on-bad-exit=1}"
    : "${PARCONV_MPIRUN_FLAGS:=}"
    if [ -z "${PARCONV_MPIRUN:-}" ]; then
        if [ -x "$PARCONV_ROOT/.venv/bin/mpiexec" ]; then
            PARCONV_MPIRUN="$PARCONV_ROOT/.venv/bin/mpiexec"
        else
            PARCONV_MPIRUN=mpirun
        fi
    fi
    : "${PARCONV_LAYER:=resnet50/layer3.1.conv2}"
    : "${PARCONV_BATCH:=8}"
    : "${PARCONV_DTYPE:=fp32}"
    : "${PARCONV_GRID:=auto}"
    : "${PARCONV_RUN_ARGS:=}"
    : "${PARCONV_DRY_RUN:=0}"
    if [ "$PARCONV_DRY_RUN" = 0 ]; then
        mkdir -p "$PARCONV_OUT"
        # one thread per rank: ranks fill the cores
        export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
        export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PARCONV_ROOT/.numba_cache}"
    fi
}

parconv_ntasks() {  # the number of ranks of this job
    local n="${PARCONV_NTASKS:-${SLURM_NTASKS:-}}"
    if [ -z "$n" ]; then
        echo "parconv: not inside a SLURM job and PARCONV_NTASKS is not set" >&2
        return 1
    fi
    echo "$n"
}

parconv_launcher() {  # print which launcher is used: srun or mpirun
    case "$PARCONV_LAUNCHER" in
        srun|mpirun) echo "$PARCONV_LAUNCHER" ;;
        auto)
            # (captured first: with pipefail, `srun ... | grep -q` can fail on SIGPIPE)
            local plugins=""
            command -v srun >/dev/null 2>&1 && plugins="$(srun --mpi=list 2>&1 || true)"
            if command -v srun >/dev/null 2>&1 &&
               { [ "$PARCONV_SRUN_MPI" = none ] || grep -qw -- "$PARCONV_SRUN_MPI" <<< "$plugins"; }; then
                echo srun
            else
                echo mpirun
            fi ;;
        *) echo "parconv: PARCONV_LAUNCHER=$PARCONV_LAUNCHER: expected auto, srun or mpirun" >&2
           return 1 ;;
    esac
}

parconv_do() {  # run a command, or print it under PARCONV_DRY_RUN=1
    if [ "$PARCONV_DRY_RUN" != 0 ]; then
        printf '%q ' "$@" | sed 's/ $//'
        echo
    else
        echo "+ $*" >&2
        "$@"
    fi
}

parconv_run() {  # parconv_run NTASKS NODES JSON [extra parconv run flags]: one MPI run
    local ntasks="$1" nodes="$2" json="$3" launcher
    shift 3
    launcher="$(parconv_launcher)" || return 1
    local -a cmd
    if [ "$launcher" = srun ]; then
        cmd=(srun "--ntasks=$ntasks")
        [ -n "$nodes" ] && cmd+=("--nodes=$nodes")
        [ "$PARCONV_SRUN_MPI" != none ] && cmd+=("--mpi=$PARCONV_SRUN_MPI")
        # shellcheck disable=SC2206
        cmd+=($PARCONV_SRUN_FLAGS)
    else
        # shellcheck disable=SC2206
        cmd=($PARCONV_MPIRUN -n "$ntasks" $PARCONV_MPIRUN_FLAGS)
    fi
    # shellcheck disable=SC2206
    cmd+=("$PARCONV_PYTHON" -m parconv run --batch "$PARCONV_BATCH" --dtype "$PARCONV_DTYPE"
          --grid "$PARCONV_GRID" "$@" --json "$json" $PARCONV_RUN_ARGS)
    parconv_do "${cmd[@]}"
}
