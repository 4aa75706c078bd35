#!/usr/bin/env bash
# The main job: sets everything up on a fresh machine, then shows the plan and bounds
# for the default layer. Extra arguments go to `parconv plan`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$PARCONV_ROOT"
parconv plan --layer resnet50/layer3.1.conv2 --batch 8 --procs 4 "$@"
