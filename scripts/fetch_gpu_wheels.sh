#!/usr/bin/env bash
# Download, on this machine (package registries reachable), the wheels the GPU machine lacks, into .whl/
# (ignored by git): the device tool's machine has torch but no bitsandbytes, and older transformers/peft
# than memprof pins. check_gpu_wheels.py then proves them against that machine's Python 3.12, torch 2.11
# and packages (one line per problem, non-zero exit). They travel with `carry: [".whl"]` (about 55 MiB
# of the 64 MiB a call may carry).
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file: ask git where its excludes live
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
# the machine's Python and platforms have one home, check_gpu_wheels.py, which then checks what came
# shellcheck disable=SC2046
python3 -m pip download -q --no-deps $(python3 scripts/check_gpu_wheels.py --pip-args) -d .whl \
    bitsandbytes==0.50.2 transformers==5.23.0 peft==0.21.2
ls -la .whl
python3 scripts/check_gpu_wheels.py .whl
