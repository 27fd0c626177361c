#!/usr/bin/env bash
# The prepared GPU check, one command for a session lent a GPU (run from the repository root):
#
#   bash scripts/gpu_check.sh            # e.g. through the device tool: run(command="bash scripts/gpu_check.sh",
#                                        #   carry=[".whl"], timeout_s=600)
#
# Before: `bash scripts/gpu_check_wheels.sh` here fetches the wheels the GPU machine lacks into the
# git-ignored .whl/ (4.3 MiB; 23.3 MiB with the tracked tree, under the 64 MiB limit), which the tool carries (carry: .whl). Installs them into /tmp/site,
# then runs scripts/gpu_check.py (paper scale, bf16) under a hard 540 s limit; results in $OUT
# (gpu_check.json, gpu_check.md; ./gpu_check_out without $OUT), written after every part.
# Extra arguments go to gpu_check.py (e.g. --parts policy_sft policy_grpo).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
    echo "[gpu_check] no wheels in .whl/ (run scripts/gpu_check_wheels.sh and carry .whl): using the installed packages"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/nvidia_smi.csv"
timeout -k 10 540 python3 scripts/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "[gpu_check] stopped at 540 s: $OUT/gpu_check.json holds the parts finished before"
exit "$rc"
