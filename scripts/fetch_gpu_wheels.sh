#!/usr/bin/env bash
# Download, on this machine (package registries reachable), the wheels the GPU machine lacks, into .whl/
# (ignored by git): the device tool's machine has torch but no bitsandbytes, and older transformers/peft
# than memprof pins. They travel with `carry: [".whl"]` (about 55 MiB of the 64 MiB a call may carry).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    bitsandbytes==0.50.2 transformers==5.23.0 peft==0.21.2
ls -la .whl
