#!/usr/bin/env bash
# The main job: sets everything up on a fresh machine, then runs ResNet-50 layer3.1.conv2
# (batch 4, fp32) on 4 MPI ranks on the planner's grid, verifies the result against the
# numpy reference and checks that every rank's measured bytes equal the planned bytes;
# then the same layer in int8 on a 2x2 spatial grid (halo exchange, bit-exact).
# Then a whole network: ResNet-18 (batch 2, 64x64, fp32) on 4 ranks on the joint network
# plan, verified against the single-process reference, with the per-layer, per-rank
# communication report (bench/results/main_net.json).
# Per-rank reports go to stdout and bench/results/main_run*.json.
# PARCONV_MAIN_PROCS overrides the rank count (default 4); extra arguments go to the
# first `parconv run`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$PARCONV_ROOT"
mkdir -p bench/results
P="${PARCONV_MAIN_PROCS:-4}"
echo "== mpiexec -n $P parconv run --layer resnet50/layer3.1.conv2 --batch 4 --grid auto --verify"
mpiexec -n "$P" parconv run --layer resnet50/layer3.1.conv2 --batch 4 --grid auto --verify \
    --json bench/results/main_run.json "$@"
if [ "$P" = 4 ] && [ $# -eq 0 ]; then
    echo
    echo "== mpiexec -n 4 parconv run --layer resnet50/layer3.1.conv2 --batch 4 --dtype int8 --grid 1x1x1x2x2 --verify"
    mpiexec -n 4 parconv run --layer resnet50/layer3.1.conv2 --batch 4 --dtype int8 \
        --grid 1x1x1x2x2 --verify --quiet --json bench/results/main_run_int8_spatial.json
fi
echo
echo "== mpiexec -n $P parconv net run --model resnet18 --batch 2 --image 64,64 --verify"
mpiexec -n "$P" parconv net run --model resnet18 --batch 2 --image 64,64 --verify \
    --json bench/results/main_net.json
